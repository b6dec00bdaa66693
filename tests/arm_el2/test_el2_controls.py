"""The EL2 trap controls beyond MRS/MSR of the VM and ID registers, each driven by real guest
instructions: HCR_EL2.TWE (WFE), TSW/TPCP/TPU/TTLB/TDZ (system instructions), TIDCP
(IMPLEMENTATION DEFINED registers), MDCR_EL2 (debug and PMU registers), CNTHCTL_EL2
(physical counter and timer), CPTR_EL2.TFP (FP/SIMD), TGE; and the trap record the hypervisor
reads in ESR_EL2/FAR_EL2/HPFAR_EL2/ELR_EL2/SPSR_EL2 (Arm ARM D23.2, D24.2 ESR_EL2)."""

from __future__ import annotations

import pytest
from el2guest import SCRATCH, SYSTEM_OFF, guest, log_records
from hvsim import hookimpl
from hvsim.core.exits import EventType, ExitKind
from hvsim.core.vm import STATUS_GUEST_CRASH, STATUS_OFF
from hvsim.plugins.arm_el2 import el2
from hvsim.plugins.arm_el2 import sysregs as sr
from hvsim.plugins.arm_el2.traps import sys_reg

CUR_SPX_SYNC = 0x200
IL = 1
ALL_MDCR = (el2.MDCR_EL2_TDA | el2.MDCR_EL2_TDOSA | el2.MDCR_EL2_TDRA | el2.MDCR_EL2_TPM
            | el2.MDCR_EL2_TPMCR)


class El2Snapshots:
    """An ``hvsim_vm_exit`` observer keeping, per exit, the EL2 registers the hypervisor reads."""

    def __init__(self) -> None:
        self.seen = []

    @hookimpl
    def hvsim_vm_exit(self, vcpu, exit):
        e = vcpu.el2
        self.seen.append((exit, e.ESR_EL2, e.FAR_EL2, e.HPFAR_EL2, e.ELR_EL2, e.SPSR_EL2))

    def of(self, reason: str):
        return [s for s in self.seen if s[0].reason == reason]


@pytest.fixture
def snaps(hvsim_pm):
    s = El2Snapshots()
    hvsim_pm.register(s)
    return s


def x(vm, n: int) -> int:
    return vm.vcpus[0].xreg(n)


def run(arm_vm, main: str, hcr_set=0, hcr_clear=0, mdcr=None, cnthctl=None, cptr=None, vcpus=1):
    vm = arm_vm(guest(main), vcpus=vcpus)
    e = vm.vcpus[0].el2
    e.HCR_EL2 = (e.HCR_EL2 | hcr_set) & ~hcr_clear
    if mdcr is not None:
        e.MDCR_EL2 = mdcr
    if cnthctl is not None:
        e.CNTHCTL_EL2 = cnthctl
    if cptr is not None:
        e.CPTR_EL2 = cptr
    return vm, vm.run(timeout=10)


def fields(rec):
    return (rec.Op0, rec.Op1, rec.CRn, rec.CRm, rec.Op2)


# -- HCR_EL2.TWE ----------------------------------------------------------------------------
def test_twe_wfe_exits_with_ec_wfx_ti_wfe_and_elr_at_the_wfe(arm_vm, snaps):
    main = "adr x23, the_wfe\nthe_wfe:\nwfe\nmov x22, #1\n" + SYSTEM_OFF
    vm, result = run(arm_vm, main, hcr_set=el2.HCR_TWE)
    assert result.status == STATUS_OFF and x(vm, 22) == 1  # the WFE completed
    [(exit, esr, _far, _hpfar, elr, spsr)] = snaps.of("ESR_ELx_EC_WFx")
    rec = exit.raw
    assert exit.kind is ExitKind.INSTRUCTION
    assert (rec.EC, rec.IL, rec.CV, rec.COND, rec.TI) == (0x01, IL, 1, 0xE, 0b01)
    assert esr == 0x07E0_0001
    assert elr == x(vm, 23) and spsr == 0x3C5


def test_without_twe_wfe_runs_without_an_exit(arm_vm, snaps):
    vm, result = run(arm_vm, "wfe\nwfe\nmov x22, #1\n" + SYSTEM_OFF, hcr_clear=el2.HCR_TWE)
    assert result.status == STATUS_OFF and x(vm, 22) == 1
    assert snaps.of("ESR_ELx_EC_WFx") == []


def test_a_trapped_wfe_yields_so_a_spinning_vcpu_lets_the_other_run(arm_vm):
    """vCPU 0 waits with WFE for a flag vCPU 1 (started with CPU_ON) sets and signals with SEV."""
    main = f"""
    movz w0, #0x0003
    movk w0, #0xc400, lsl #16     // CPU_ON (64-bit)
    mov x1, #1
    adr x2, secondary
    mov x3, #0
    hvc #0
    movz x8, #0x4180, lsl #16
spin:
    wfe
    ldr x6, [x8]
    cbz x6, spin
    {SYSTEM_OFF}
secondary:
    movz x8, #0x4180, lsl #16
    mov x6, #1
    str x6, [x8]
    sev
    b .
    """
    vm, result = run(arm_vm, main, hcr_set=el2.HCR_TWE, vcpus=2)
    assert result.status == STATUS_OFF
    assert vm.stats.counts()["ESR_ELx_EC_WFx"] >= 1


# -- system instructions: TSW, TPCP, TPU, TTLB, TDZ -------------------------------------------
SYS_CASES = [
    (el2.HCR_TSW, "dc isw, x5", (1, 0, 7, 6, 2), 5),
    (el2.HCR_TSW, "dc csw, x5", (1, 0, 7, 10, 2), 5),
    (el2.HCR_TSW, "dc cisw, x5", (1, 0, 7, 14, 2), 5),
    (el2.HCR_TPCP, "dc ivac, x5", (1, 0, 7, 6, 1), 5),
    (el2.HCR_TPCP, "dc cvac, x5", (1, 3, 7, 10, 1), 5),
    (el2.HCR_TPCP, "dc civac, x5", (1, 3, 7, 14, 1), 5),
    (el2.HCR_TPU, "ic ivau, x5", (1, 3, 7, 5, 1), 5),
    (el2.HCR_TPU, "ic iallu", (1, 0, 7, 5, 0), 31),
    (el2.HCR_TPU, "ic ialluis", (1, 0, 7, 1, 0), 31),
    (el2.HCR_TPU, "dc cvau, x5", (1, 3, 7, 11, 1), 5),
    (el2.HCR_TTLB, "tlbi vmalle1", (1, 0, 8, 7, 0), 31),
    (el2.HCR_TTLB, "tlbi vae1, x5", (1, 0, 8, 7, 1), 5),
    (el2.HCR_TTLB, "tlbi aside1is, x5", (1, 0, 8, 3, 2), 5),
    (el2.HCR_TTLB, "tlbi vaale1, x5", (1, 0, 8, 7, 7), 5),
    (el2.HCR_TDZ, "dc zva, x5", (1, 3, 7, 4, 1), 5),
]
SYS_CONTROLS = el2.HCR_TSW | el2.HCR_TPCP | el2.HCR_TPU | el2.HCR_TTLB | el2.HCR_TDZ


@pytest.mark.parametrize("control, insn, enc, rt", SYS_CASES, ids=[c[1] for c in SYS_CASES])
def test_system_instruction_controls_trap_with_ec_sys64_op0_1(arm_vm, snaps, control, insn, enc, rt):
    main = f"movz x5, #{SCRATCH >> 16:#x}, lsl #16\nadr x23, the_insn\nthe_insn:\n{insn}\nmov x22, #1\n" + SYSTEM_OFF
    vm, result = run(arm_vm, main, hcr_set=control, hcr_clear=SYS_CONTROLS & ~control)
    assert result.status == STATUS_OFF and x(vm, 22) == 1
    [(exit, esr, _far, _hpfar, elr, _spsr)] = snaps.of("ESR_ELx_EC_SYS64")
    rec = exit.raw
    assert (rec.EC, rec.IL, rec.Direction, rec.Rt) == (0x18, IL, 0, rt)
    assert fields(rec) == enc and esr == rec.ESR_EL2
    assert exit.address == sys_reg(*enc) and elr == x(vm, 23)
    assert exit.value == (SCRATCH if rt == 5 else 0)  # the operand the hypervisor sees
    # Clear: no exit.
    snaps.seen.clear()
    run(arm_vm, main, hcr_clear=SYS_CONTROLS)
    assert snaps.of("ESR_ELx_EC_SYS64") == []


def test_a_trapped_dc_zva_is_performed_after_the_exit(arm_vm):
    main = (f"movz x5, #{SCRATCH >> 16:#x}, lsl #16\nmov x1, #-1\nstr x1, [x5]\ndc zva, x5\n"
            "ldr x6, [x5]\n" + SYSTEM_OFF)
    vm, _ = run(arm_vm, main, hcr_set=el2.HCR_TDZ)
    assert x(vm, 6) == 0


# -- HCR_EL2.TIDCP --------------------------------------------------------------------------
def test_tidcp_traps_implementation_defined_registers_then_undefined_to_the_guest(arm_vm, snaps):
    main = "adr x20, after\nmov x23, x20\nmrs x5, s3_1_c15_c2_3\nafter:\n" + SYSTEM_OFF
    vm, result = run(arm_vm, main, hcr_set=el2.HCR_TIDCP)
    assert result.status == STATUS_OFF
    [(exit, *_)] = snaps.of("ESR_ELx_EC_SYS64")
    assert fields(exit.raw) == (3, 1, 15, 2, 3) and (exit.raw.Rt, exit.raw.Direction) == (5, 1)
    [(vector, esr, elr, _far, _spsr)] = log_records(vm, 1)
    assert (vector, esr, elr) == (CUR_SPX_SYNC, 0x0200_0000, x(vm, 23) - 4)  # EC 0: UNDEFINED


class ImpDefEmulator:
    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        registry.add(ExitKind.SYSREG, self.on_sysreg)

    def on_sysreg(self, vcpu, exit):
        if exit.address == sys_reg(3, 0, 11, 0, 0):
            exit.value = 0x1234 if not exit.is_write else None  # the write is dropped


def test_a_hypervisor_may_emulate_an_implementation_defined_register(arm_vm, hvsim_pm):
    hvsim_pm.register(ImpDefEmulator())
    main = "mrs x5, s3_0_c11_c0_0\nmsr s3_0_c11_c0_0, x5\nadd x6, x5, #1\n" + SYSTEM_OFF
    vm, result = run(arm_vm, main, hcr_set=el2.HCR_TIDCP)
    assert result.status == STATUS_OFF
    assert (x(vm, 5), x(vm, 6)) == (0x1234, 0x1235)
    assert log_records(vm, 1)[0] == (0, 0, 0, 0, 0)  # nothing reached the guest's vectors


# -- MDCR_EL2 -------------------------------------------------------------------------------
MDCR_CASES = [
    (el2.MDCR_EL2_TDA, "mrs x5, mdscr_el1", sr.MDSCR_EL1, 1),
    (el2.MDCR_EL2_TDA, "msr mdscr_el1, x5", sr.MDSCR_EL1, 0),
    (el2.MDCR_EL2_TDA, "mrs x5, dbgbvr0_el1", sr.DBGBVR0_EL1, 1),
    (el2.MDCR_EL2_TDA, "msr dbgwcr1_el1, x5", (2, 0, 0, 1, 7), 0),
    (el2.MDCR_EL2_TDOSA, "msr oslar_el1, x5", sr.OSLAR_EL1, 0),
    (el2.MDCR_EL2_TDOSA, "mrs x5, oslsr_el1", sr.OSLSR_EL1, 1),
    (el2.MDCR_EL2_TDOSA, "mrs x5, osdlr_el1", sr.OSDLR_EL1, 1),
    (el2.MDCR_EL2_TDRA, "mrs x5, mdrar_el1", sr.MDRAR_EL1, 1),
    (el2.MDCR_EL2_TPM, "mrs x5, pmccntr_el0", (3, 3, 9, 13, 0), 1),
    (el2.MDCR_EL2_TPM, "msr pmcntenset_el0, x5", (3, 3, 9, 12, 1), 0),
    (el2.MDCR_EL2_TPMCR, "mrs x5, pmcr_el0", sr.PMCR_EL0, 1),
]


@pytest.mark.parametrize("control, insn, enc, direction", MDCR_CASES, ids=[c[1] for c in MDCR_CASES])
def test_mdcr_el2_controls_trap_debug_and_pmu_registers(arm_vm, snaps, control, insn, enc, direction):
    main = "mov x5, #0\n" + insn + "\n" + SYSTEM_OFF
    vm, result = run(arm_vm, main, mdcr=el2.PMCR_EL0_N | control)
    assert result.status == STATUS_OFF
    [(exit, *_)] = snaps.of("ESR_ELx_EC_SYS64")
    assert (exit.raw.EC, exit.raw.Direction, exit.raw.Rt) == (0x18, direction, 5)
    assert fields(exit.raw) == enc
    snaps.seen.clear()
    run(arm_vm, main, mdcr=el2.PMCR_EL0_N | (ALL_MDCR & ~control & ~(
        el2.MDCR_EL2_TPM if control == el2.MDCR_EL2_TPMCR else 0)))
    assert snaps.of("ESR_ELx_EC_SYS64") == []


def test_mdcr_el2_starts_as_kvm_programs_it(arm_vm):
    mdcr = arm_vm().vcpus[0].el2.MDCR_EL2
    assert mdcr & el2.MDCR_EL2_HPMN == el2.PMCR_EL0_N
    assert mdcr & ALL_MDCR == ALL_MDCR


# -- CNTHCTL_EL2 ----------------------------------------------------------------------------
def test_el1pcten_clear_traps_cntpct_el0_reads(arm_vm, snaps):
    vm, _ = run(arm_vm, "mrs x5, cntpct_el0\nmrs x6, cntvct_el0\n" + SYSTEM_OFF, cnthctl=el2.CNTHCTL_EL1PCEN)
    [(exit, *_)] = snaps.of("ESR_ELx_EC_SYS64")
    assert fields(exit.raw) == sr.CNTPCT_EL0 and exit.raw.Direction == 1
    assert x(vm, 5) != 0  # performed after the exit: the counter's value


def test_el1pcen_clear_traps_the_physical_timer_and_the_access_is_performed(arm_vm, snaps):
    main = "movz x5, #0x1234, lsl #16\nmsr cntp_cval_el0, x5\nmrs x6, cntp_cval_el0\n" + SYSTEM_OFF
    vm, _ = run(arm_vm, main, cnthctl=el2.CNTHCTL_EL1PCTEN)
    write, read = snaps.of("ESR_ELx_EC_SYS64")
    assert fields(write[0].raw) == fields(read[0].raw) == sr.CNTP_CVAL_EL0
    assert (write[0].raw.Direction, read[0].raw.Direction) == (0, 1)
    assert x(vm, 6) == 0x1234_0000


def test_with_both_enables_set_the_physical_counter_and_timer_do_not_trap(arm_vm, snaps):
    main = "mrs x5, cntpct_el0\nmsr cntp_ctl_el0, xzr\nmrs x6, cntp_ctl_el0\n" + SYSTEM_OFF
    run(arm_vm, main, cnthctl=el2.CNTHCTL_EL1PCTEN | el2.CNTHCTL_EL1PCEN)
    assert snaps.of("ESR_ELx_EC_SYS64") == []


# -- CPTR_EL2.TFP, and the guest's own CPACR_EL1.FPEN ---------------------------------------
FP_ON = "movz x0, #0x30, lsl #16\nmsr cpacr_el1, x0\nisb\n"  # CPACR_EL1.FPEN = 0b11
@pytest.mark.parametrize("insn", ["fmov d0, x1", "add v0.4s, v1.4s, v2.4s", "str q0, [x5]",
                                  "ldr d1, [x5]", "mrs x3, fpcr", "msr fpsr, x1", "fadd s0, s1, s2"])
def test_tfp_traps_fp_and_simd_with_ec_fp_asimd(arm_vm, snaps, insn):
    main = (FP_ON + f"movz x5, #{SCRATCH >> 16:#x}, lsl #16\nmov x1, #7\nadr x23, the_insn\nthe_insn:\n{insn}\n"
            "fmov d0, x1\nfmov x2, d0\n" + SYSTEM_OFF)
    vm, result = run(arm_vm, main, cptr=el2.CPTR_EL2_RES1 | el2.CPTR_EL2_TFP)
    assert result.status == STATUS_OFF
    [(exit, esr, _far, _hpfar, elr, _spsr)] = snaps.of("ESR_ELx_EC_FP_ASIMD")  # then TFP is clear
    assert exit.kind is ExitKind.EXCEPTION
    assert (exit.raw.EC, exit.raw.IL, exit.raw.CV, exit.raw.COND) == (0x07, IL, 1, 0xE)
    assert esr == 0x1FE0_0000 and elr == x(vm, 23)
    assert not vm.vcpus[0].el2.CPTR_EL2 & el2.CPTR_EL2_TFP  # KVM's lazy FP switch
    assert x(vm, 2) == 7  # the FP code then ran natively


def test_without_tfp_fp_runs_without_an_exit(arm_vm, snaps):
    vm, _ = run(arm_vm, FP_ON + "mov x1, #9\nfmov d0, x1\nfmov x2, d0\n" + SYSTEM_OFF)
    assert snaps.of("ESR_ELx_EC_FP_ASIMD") == [] and x(vm, 2) == 9


class LazyTwice:
    """Keeps TFP set for the first two FP traps: the instruction traps again each time."""

    def __init__(self) -> None:
        self.n = 0

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        inner = registry.get(ExitKind.EXCEPTION)

        def on_exception(vcpu, exit):
            self.n += 1
            if self.n > 2:
                inner(vcpu, exit)

        registry.add(ExitKind.EXCEPTION, on_exception)


def test_an_fp_instruction_traps_again_while_tfp_stays_set(arm_vm, hvsim_pm, snaps):
    hvsim_pm.register(LazyTwice())
    vm, _ = run(arm_vm, FP_ON + "mov x1, #9\nadr x23, fp\nfp:\nfmov d0, x1\nfmov x2, d0\n" + SYSTEM_OFF,
                cptr=el2.CPTR_EL2_TFP)
    traps = snaps.of("ESR_ELx_EC_FP_ASIMD")
    assert [s[4] for s in traps] == [x(vm, 23)] * 3
    assert x(vm, 2) == 9


@pytest.mark.parametrize("insn, direction", [("mrs x5, cpacr_el1", 1), ("msr cpacr_el1, x5", 0)])
def test_cptr_tcpac_traps_cpacr_el1_accesses(arm_vm, snaps, insn, direction):
    main = "mrs x5, cpacr_el1\n" if direction == 0 else ""
    vm, _ = run(arm_vm, main + insn + "\n" + SYSTEM_OFF, cptr=el2.CPTR_EL2_TCPAC)
    traps = [s[0] for s in snaps.of("ESR_ELx_EC_SYS64") if s[0].raw.Direction == direction]
    assert [fields(e.raw) for e in traps] == [sr.CPACR_EL1]
    snaps.seen.clear()
    run(arm_vm, main + insn + "\n" + SYSTEM_OFF)
    assert snaps.of("ESR_ELx_EC_SYS64") == []


@pytest.mark.parametrize("tfp", [False, True], ids=["TFP clear", "TFP set"])
def test_cpacr_fpen_clear_traps_fp_to_the_guests_el1_before_cptr_tfp(arm_vm, snaps, tfp):
    """Out of reset FPEN is 0b00: the guest's first FP instruction is its own EC 0x07
    exception (ELR_EL1 the instruction), whatever CPTR_EL2.TFP says; after FPEN = 0b11 the
    same code runs (and traps to EL2 only if TFP is set)."""
    main = ("mov x1, #5\nadr x23, fp_insn\nadr x20, enable\n"  # the guest's handler returns to enable
            "fp_insn:\nfmov d0, x1\nfmov x2, d0\n" + SYSTEM_OFF + "\nenable:\n" + FP_ON + "b fp_insn\n")
    vm, result = run(arm_vm, main, cptr=el2.CPTR_EL2_RES1 | (el2.CPTR_EL2_TFP if tfp else 0))
    assert result.status == STATUS_OFF
    [(vector, esr, elr, _far, _spsr), second] = log_records(vm, 2)
    assert second == (0, 0, 0, 0, 0)
    assert (vector, esr, elr) == (CUR_SPX_SYNC, 0x1FE0_0000, x(vm, 23))
    assert len(snaps.of("ESR_ELx_EC_FP_ASIMD")) == (1 if tfp else 0)  # only after FPEN = 0b11
    assert x(vm, 2) == 5


# -- HCR_EL2.TGE ----------------------------------------------------------------------------
def test_tge_makes_entering_the_guest_an_illegal_exception_return(arm_vm, snaps):
    vm, result = run(arm_vm, SYSTEM_OFF, hcr_set=el2.HCR_TGE)
    assert result.status == STATUS_GUEST_CRASH
    assert "HCR_EL2.TGE" in result.reason and "illegal exception return" in result.reason
    [(exit, esr, *_)] = snaps.seen
    assert exit.kind is ExitKind.INVALID_STATE and esr == 0x3A00_0000  # EC 0x0E, IL


def test_mdcr_tde_makes_tda_tdosa_and_tdra_act_as_set(arm_vm, snaps):
    main = "mrs x5, mdscr_el1\nmrs x6, oslsr_el1\nmrs x7, mdrar_el1\n" + SYSTEM_OFF
    run(arm_vm, main, mdcr=el2.PMCR_EL0_N | el2.MDCR_EL2_TDE)
    assert [fields(s[0].raw) for s in snaps.of("ESR_ELx_EC_SYS64")] == [sr.MDSCR_EL1, sr.OSLSR_EL1, sr.MDRAR_EL1]


# -- the trap record ------------------------------------------------------------------------
def test_hvc_sets_esr_elr_after_the_hvc_and_spsr(arm_vm, snaps):
    main = "adr x23, after\nmsr nzcv, x24\nhvc #0x17\nafter:\n" + SYSTEM_OFF
    vm = arm_vm(guest("movz x24, #0x6000, lsl #16\n" + main))
    vm.run(timeout=5)
    exit, esr, far, hpfar, elr, spsr = snaps.of("ESR_ELx_EC_HVC64")[0]
    assert (esr, far, hpfar) == (0x5A00_0017, 0, 0)
    assert elr == x(vm, 23)
    assert spsr == 0x6000_03C5  # Z and C set by the guest, EL1h, DAIF masked


def test_an_msr_trap_sets_elr_at_the_msr(arm_vm, snaps):
    vm, _ = run(arm_vm, "adr x23, the_msr\nthe_msr:\nmsr far_el1, x1\n" + SYSTEM_OFF, hcr_set=el2.HCR_TVM)
    [(_exit, esr, _far, _hpfar, elr, spsr)] = snaps.of("ESR_ELx_EC_SYS64")
    assert esr >> 26 == 0x18 and elr == x(vm, 23) and spsr == 0x3C5


def test_an_mmio_abort_sets_far_hpfar_and_elr_at_the_access(arm_vm, snaps):
    main = "movz x1, #0x0900, lsl #16\nmov w2, #0x41\nadr x23, the_str\nthe_str:\nstr w2, [x1, #0x20]\n" + SYSTEM_OFF
    vm, _ = run(arm_vm, main)
    [(exit, esr, far, hpfar, elr, _spsr)] = snaps.of("ESR_ELx_EC_DABT_LOW")
    assert esr == exit.raw.ESR_EL2 and esr >> 26 == 0x24
    assert far == 0x0900_0020 and hpfar == (0x0900_0000 >> 12) << 4
    assert elr == x(vm, 23)


def test_a_trapped_wfi_sets_elr_at_the_wfi(arm_vm, snaps):
    vm, _ = run(arm_vm, "adr x23, the_wfi\nthe_wfi:\nwfi\n" + SYSTEM_OFF, hcr_set=el2.HCR_TWI)
    [(_exit, esr, _far, _hpfar, elr, _spsr)] = snaps.of("ESR_ELx_EC_WFx")
    assert esr == 0x07E0_0000 and elr == x(vm, 23)


# -- HCR_EL2.VI / VSE: the virtual exception inputs ------------------------------------------
def test_hcr_vi_is_a_level_taken_until_the_hypervisor_clears_it(arm_vm, hvsim_pm):
    from el2guest import LOG, RECORD

    # (The pending virtual IRQ is taken right after the unmask, at the NOP; the handler's ERET
    # returns there with I clear and VI still set, so it is taken again at once, as on hardware.)
    main = f"""
    msr daifclr, #2
    nop                             // VI's IRQ is taken here, again and again while VI is set
    {SYSTEM_OFF}
    """
    vm = arm_vm(guest(main))
    vm.vcpus[0].el2.HCR_EL2 |= el2.HCR_VI
    # The logging handler returns with ERET (I unmasked again): VI, still set, is taken again,
    # until the hypervisor clears it, here after the second IRQ.
    taken = []

    class Watch:
        @hookimpl
        def hvsim_interrupt_acknowledged(self, vcpu, event):
            taken.append(event.type)
            if len(taken) == 2:
                vcpu.el2.HCR_EL2 &= ~el2.HCR_VI

    hvsim_pm.register(Watch())
    assert vm.run(timeout=10).status == STATUS_OFF
    assert taken == [EventType.VIRTUAL_IRQ] * 2
    assert [r[0] for r in log_records(vm, 2)] == [0x280, 0x280]
    assert vm.memory.read_u64(LOG + 8 * RECORD * 2) == 0  # no third
    assert not vm.vcpus[0].events


def test_hcr_vse_is_cleared_when_the_virtual_serror_is_taken(arm_vm):
    main = "msr daifclr, #4\nnop\n" + SYSTEM_OFF  # taken at the NOP, right after the unmask
    vm = arm_vm(guest(main))
    vm.vcpus[0].el2.HCR_EL2 |= el2.HCR_VSE
    assert vm.run(timeout=10).status == STATUS_OFF
    [(vector, esr, elr, _far, _spsr)] = log_records(vm, 1)
    assert (vector, esr) == (0x380, 0xBE00_0000)  # EC 0x2F, IL, ISS 0 (no FEAT_RAS: no VSESR_EL2)
    assert not vm.vcpus[0].el2.HCR_EL2 & el2.HCR_VSE
