"""Two-stage translation on arm64: the guest's own stage 1 and hvsim's stage 2, end to end.

Arm ARM (DDI 0487) D8 (VMSAv8-64), D24.2 ESR_EL2 / FAR_EL2 / HPFAR_EL2 and the ESR_ELx "ISS
encoding for an exception from a Data Abort / Instruction Abort". The guests build their own
stage-1 tables with stores (4 KiB granule, 39-bit VAs, start at level 1) and enable the MMU;
the VMM side is a test plugin that edits hvsim's stage-2 tables and invalidates as KVM does.
"""

from __future__ import annotations

import pytest
from unicorn.arm64_const import UC_ARM64_REG_X23

from el2guest import LOG, SYSTEM_OFF, guest, log_records, u64, w0
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.core.vm import STATUS_GUEST_CRASH, STATUS_OFF
from hvsim.plugins.arm_el2 import psci, stage2

RESULT = 0x4140_0000  # where the guests store what they read
L1, L2, L3 = 0x4180_0000, 0x4180_1000, 0x4180_2000
REMAPPED_VA, REMAPPED_PA = 0x4200_0000, 0x4300_0000  # L3[0]
INVALID_VA = 0x4200_1000  # L3[1] = 0
NO_AF_VA = 0x4200_2000  # L3[2]: AF clear
READ_ONLY_VA = 0x4200_3000  # L3[3]: AP[2] set
UNMAPPED_TABLE_VA, UNMAPPED_TABLE_IPA = 0x4220_0000, 0x43F0_0000  # L2[17] -> an L3 stage 2 lacks
MARK_A, MARK_B = 0xA1A1_A1A1_0000_0001, 0xB2B2_B2B2_0000_0002

EC_IABT_LOW, EC_IABT_CUR, EC_DABT_LOW, EC_DABT_CUR = 0x20, 0x21, 0x24, 0x25
CUR_SPX_SYNC = 0x200
HVC_REMAP, HVC_FLUSH_IPA, HVC_FLUSH_ALL = 0x8600_0001, 0x8600_0002, 0x8600_0003  # vendor hyp calls


def esr(ec: int, iss: int) -> int:
    return (ec << 26) | (1 << 25) | iss


def mmu_on(ha: bool = False) -> str:
    """Stage-1 tables built by the guest, then TCR_EL1/TTBR0_EL1/SCTLR_EL1: VA 0x4000_0000 +
    64 MiB identity (2 MiB blocks) except the 2 MiB at 0x4200_0000 (pages: L3[0] remapped to
    0x4300_0000, L3[1] invalid, L3[2] without AF, L3[3] read-only) and 0x4220_0000, whose L3
    table is at an IPA stage 2 may leave unmapped."""
    tcr_hi = 0x0002 | (0x80 if ha else 0)  # IPS 40 bits, HA (bit 39)
    return f"""
    movz x1, #0x4180, lsl #16
    add x2, x1, #0x1000
    add x7, x1, #0x2000
    orr x3, x2, #3
    str x3, [x1, #8]
    movz x4, #0x4000, lsl #16
    movz x5, #0x0705
    orr x4, x4, x5
    mov x6, #32
    mov x8, x2
l2_loop:
    str x4, [x8], #8
    add x4, x4, #0x200, lsl #12
    subs x6, x6, #1
    b.ne l2_loop
    orr x3, x7, #3
    str x3, [x2, #128]
    movz x3, #0x43f0, lsl #16
    orr x3, x3, #3
    str x3, [x2, #136]
    movz x4, #0x4200, lsl #16
    movz x5, #0x0707
    orr x4, x4, x5
    mov x6, #512
    mov x8, x7
l3_loop:
    str x4, [x8], #8
    add x4, x4, #1, lsl #12
    subs x6, x6, #1
    b.ne l3_loop
    movz x4, #0x4300, lsl #16
    orr x4, x4, x5
    str x4, [x7]
    str xzr, [x7, #8]
    movz x4, #0x4200, lsl #16
    movk x4, #0x2307
    str x4, [x7, #16]
    movz x4, #0x4200, lsl #16
    movk x4, #0x3787
    str x4, [x7, #24]
    movz x3, #0xff00
    msr mair_el1, x3
    movz x3, #0x3519
    movk x3, #0x0080, lsl #16
    movk x3, #{tcr_hi:#x}, lsl #32
    msr tcr_el1, x3
    msr ttbr0_el1, x1
    isb
    mrs x3, sctlr_el1
    orr x3, x3, #1
    msr sctlr_el1, x3
    isb
    movz x19, #0x4140, lsl #16
"""


def mov64(reg: str, value: int) -> str:
    parts = [f"movz {reg}, #{value & 0xFFFF:#x}"]
    parts += [f"movk {reg}, #{(value >> s) & 0xFFFF:#x}, lsl #{s}" for s in (16, 32, 48) if (value >> s) & 0xFFFF]
    return "\n".join(parts)


# -- the guest's own stage 1 ---------------------------------------------------------------------
def test_guest_mmu_with_its_own_tables_reads_through_a_remapped_page(arm_vm):
    main = mmu_on() + f"""
    {mov64('x4', REMAPPED_VA)}
    ldr x5, [x4, #0x10]
    str x5, [x19]
    movz x4, #0x4300, lsl #16
    ldr x5, [x4, #0x10]
    str x5, [x19, #8]
    {SYSTEM_OFF}"""
    vm = arm_vm(guest(main))
    vm.memory.write(REMAPPED_VA + 0x10, MARK_A.to_bytes(8, "little"))
    vm.memory.write(REMAPPED_PA + 0x10, MARK_B.to_bytes(8, "little"))
    assert vm.run(timeout=5).status == STATUS_OFF
    assert (u64(vm, RESULT), u64(vm, RESULT + 8)) == (MARK_B, MARK_B)  # VA 0x4200_0010 is PA 0x4300_0010
    walk = vm.vcpus[0].stage1_walk(REMAPPED_VA + 0x10, 0)
    assert walk.address == REMAPPED_PA + 0x10 and [s.level for s in walk.steps] == [1, 2, 3]


STAGE1_FAULTS = [  # (access, VA offset, ESR_EL1 ISS)
    ("ldr x5, [x4, #0x28]", INVALID_VA, 0x07),  # translation fault, level 3
    ("str x5, [x4, #0x28]", INVALID_VA, 0x47),  # ... WnR
    ("ldrb w5, [x4, #0x28]", NO_AF_VA, 0x0B),  # access flag fault, level 3
    ("str w5, [x4, #0x28]", READ_ONLY_VA, 0x4F),  # permission fault, level 3, WnR
    ("ldp x5, x6, [x4, #0x28]", 0x4400_0000, 0x06),  # L2[32] was never written: level 2
]


@pytest.mark.parametrize("insn, va, iss", STAGE1_FAULTS, ids=[f[0] for f in STAGE1_FAULTS])
def test_stage1_fault_is_a_data_abort_at_the_guest_vector_with_the_exact_far(run_guest, recorder, insn, va, iss):
    main = mmu_on() + f"""
    {mov64('x4', va)}
    adr x20, after
    adr x23, fault
fault:
    {insn}
after:
    nop
    {SYSTEM_OFF}"""
    vm, result = run_guest(guest(main))
    assert result.status == STATUS_OFF
    [(vector, esr_el1, elr, far, _spsr)] = log_records(vm, 1)
    assert vector == CUR_SPX_SYNC
    assert esr_el1 == esr(EC_DABT_CUR, iss)
    assert far == va + 0x28
    assert elr == vm.vcpus[0].regs.read(UC_ARM64_REG_X23)
    assert not recorder.of(ExitKind.STAGE2_FAULT)  # the guest's own business


def test_stage1_fault_on_an_instruction_fetch_is_an_instruction_abort(run_guest):
    main = mmu_on() + f"""
    {mov64('x4', INVALID_VA + 0x40)}
    adr x20, after
    br x4
after:
    {SYSTEM_OFF}"""
    vm, result = run_guest(guest(main))
    assert result.status == STATUS_OFF
    [(vector, esr_el1, elr, far, _spsr)] = log_records(vm, 1)
    assert (vector, esr_el1, elr, far) == (CUR_SPX_SYNC, esr(EC_IABT_CUR, 0x07), INVALID_VA + 0x40, INVALID_VA + 0x40)


def test_hardware_access_flag_update_with_tcr_ha_sets_af_instead_of_faulting(run_guest):
    main = mmu_on(ha=True) + f"""
    {mov64('x4', NO_AF_VA)}
    mov x5, #0x77
    str x5, [x4, #0x30]
    {SYSTEM_OFF}"""
    vm, result = run_guest(guest(main))
    assert result.status == STATUS_OFF
    assert u64(vm, LOG) == 0  # no exception was logged
    assert u64(vm, NO_AF_VA + 0x30) == 0x77
    assert u64(vm, L3 + 16) == NO_AF_VA | 0x707  # the walk set AF in the descriptor


def test_a_descriptor_changed_without_tlbi_keeps_translating_the_old_way(arm_vm):
    """D8.13: a TLB may hold a translation until it is invalidated: the remapped page stays
    remapped after L3[0] is rewritten, until TLBI VAE1 + DSB + ISB."""
    main = mmu_on() + f"""
    {mov64('x4', REMAPPED_VA)}
    ldr x5, [x4]
    str x5, [x19]
    movz x6, #0x4200, lsl #16
    movz x5, #0x0707
    orr x6, x6, x5
    str x6, [x7]
    dsb ish
    isb
    ldr x5, [x4]
    str x5, [x19, #8]
    lsr x6, x4, #12
    tlbi vae1, x6
    dsb ish
    isb
    ldr x5, [x4]
    str x5, [x19, #16]
    {SYSTEM_OFF}"""
    vm = arm_vm(guest(main))
    vm.memory.write(REMAPPED_VA, MARK_A.to_bytes(8, "little"))
    vm.memory.write(REMAPPED_PA, MARK_B.to_bytes(8, "little"))
    assert vm.run(timeout=5).status == STATUS_OFF
    assert [u64(vm, RESULT + 8 * i) for i in range(3)] == [MARK_B, MARK_B, MARK_A]


TLBIS = ["tlbi vae1is, x6", "tlbi vale1, x6", "tlbi vaae1, x6", "tlbi vmalle1", "tlbi vmalle1is",
         "tlbi aside1, xzr"]


@pytest.mark.parametrize("tlbi", TLBIS)
def test_each_tlbi_form_drops_the_stale_translation(arm_vm, tlbi):
    main = mmu_on() + f"""
    {mov64('x4', REMAPPED_VA)}
    ldr x5, [x4]
    movz x6, #0x4200, lsl #16
    movz x5, #0x0f07
    orr x6, x6, x5
    str x6, [x7]
    dsb ish
    lsr x6, x4, #12
    {tlbi}
    dsb ish
    isb
    ldr x5, [x4]
    str x5, [x19]
    {SYSTEM_OFF}"""
    vm = arm_vm(guest(main))
    vm.memory.write(REMAPPED_VA, MARK_A.to_bytes(8, "little"))
    vm.memory.write(REMAPPED_PA, MARK_B.to_bytes(8, "little"))
    assert vm.run(timeout=5).status == STATUS_OFF
    # L3[0] was global (nG clear) when its translation was cached: ASIDE1 invalidates only
    # non-global entries of the ASID, so the old translation survives it
    expected = MARK_A if "aside1" not in tlbi else MARK_B
    assert u64(vm, RESULT) == expected


# -- hvsim's stage 2 -----------------------------------------------------------------------------
def test_stage2_tables_map_ram_as_kvm_and_leave_devices_out(arm_vm):
    vm = arm_vm()
    mmu = vm.vcpus[0].mmu
    assert mmu.VTCR_EL2 == 0x8002_3558  # RES1, PS 40 bits, SH0 inner, WBWA, SL0 1, T0SZ 24
    assert mmu.VTTBR_EL2 >> 48 == 1 and mmu.VTTBR_EL2 & ~(0xFFFF << 48) == vm.arch.stage2_tables.root
    s2 = mmu.stage2()
    assert s2.translate(0x4000_1234)[0] == vm.memory.translate(0x4000_1234)
    steps, pa, fault = s2.steps(0x0900_0000)
    assert pa is None and fault == "stage-2 translation fault, level 1" and [s.level for s in steps] == [1]


def _unmap(vm, ipa):
    vm.arch.stage2_tables.unmap_page(ipa)


def test_unmapped_ipa_is_a_stage2_data_abort_with_esr_far_and_hpfar(arm_vm, recorder):
    vm = arm_vm(guest(f"{mov64('x1', 0x4300_5000)}\nldr w5, [x1, #0x18]\n{SYSTEM_OFF}"))
    _unmap(vm, 0x4300_5000)
    result = vm.run(timeout=5)
    [exit] = recorder.of(ExitKind.STAGE2_FAULT)
    rec = exit.raw
    # EC DABT_LOW, IL, ISV, SAS word, SRT 5, DFSC translation fault level 3
    assert rec.ESR_EL2 == esr(EC_DABT_LOW, (1 << 24) | (2 << 22) | (5 << 16) | 0x07)
    assert (rec.FAR_EL2, rec.HPFAR_EL2, exit.address, exit.is_write) == (0x4300_5018, 0x43005 << 4, 0x4300_5018, False)
    assert result.status == STATUS_GUEST_CRASH
    assert "ESR_ELx_EC_DABT_LOW at guest-physical 0x43005018 that no handler resolved" in result.reason


def test_stage2_abort_under_the_guest_mmu_reports_the_va_and_the_ipa(arm_vm, recorder):
    main = mmu_on() + f"""
    {mov64('x4', REMAPPED_VA)}
    mov x3, #9
    str x3, [x4, #0x40]!
    {SYSTEM_OFF}"""
    vm = arm_vm(guest(main))
    _unmap(vm, REMAPPED_PA)
    vm.run(timeout=5)
    [exit] = recorder.of(ExitKind.STAGE2_FAULT)
    rec = exit.raw
    # writeback form: no instruction syndrome (ISV 0), WnR
    assert rec.ESR_EL2 == esr(EC_DABT_LOW, (1 << 6) | 0x07)
    assert (rec.FAR_EL2, rec.HPFAR_EL2, exit.address) == (REMAPPED_VA + 0x40, REMAPPED_PA >> 8, REMAPPED_PA + 0x40)


def test_stage2_fault_on_a_stage1_table_sets_s1ptw(arm_vm, recorder):
    main = mmu_on() + f"""
    {mov64('x4', UNMAPPED_TABLE_VA)}
    ldr x5, [x4, #0x48]
    {SYSTEM_OFF}"""
    vm = arm_vm(guest(main))
    _unmap(vm, UNMAPPED_TABLE_IPA)
    vm.run(timeout=5)
    [exit] = recorder.of(ExitKind.STAGE2_FAULT)
    rec = exit.raw
    assert rec.ESR_EL2 == esr(EC_DABT_LOW, (1 << 7) | 0x07)  # S1PTW, no ISV, WnR 0, level 3
    assert (rec.FAR_EL2, rec.HPFAR_EL2, exit.address) == (UNMAPPED_TABLE_VA + 0x48, UNMAPPED_TABLE_IPA >> 8,
                                                         UNMAPPED_TABLE_IPA)


class MakeWritable:
    """A VMM that resolves stage-2 permission faults by granting write, as KVM does for a
    dirty-logged page: set S2AP[1], TLBI IPAS2E1IS, TLBI VMALLE1IS, resume."""

    def __init__(self) -> None:
        self.resolved = []

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        default = registry.get(ExitKind.STAGE2_FAULT)

        def handle(vcpu, exit):
            if exit.raw.DFSC & 0x3C != 0x0C:  # not a permission fault
                return default(vcpu, exit)
            vm.arch.stage2_tables.set_page(exit.address, stage2.S2AP_W)
            vcpu.mmu.tlbi("IPAS2E1IS", exit.address)
            vcpu.mmu.tlbi("VMALLE1IS")
            self.resolved.append(exit)

        registry.add(ExitKind.STAGE2_FAULT, handle)


def test_stage2_permission_fault_resolved_by_the_vmm_and_the_store_retried(arm_vm, hvsim_pm, recorder):
    vmm = MakeWritable()
    hvsim_pm.register(vmm, name="make-writable")
    code = f"""
    {mov64('x1', 0x4300_6000)}
    ldr x5, [x1, #8]
    {mov64('x3', 0x1122_3344_5566_7788)}
    str x3, [x1, #8]
    ldr x6, [x1, #8]
    movz x19, #0x4140, lsl #16
    str x6, [x19]
    {SYSTEM_OFF}"""
    vm = arm_vm(guest(code))
    vm.arch.stage2_tables.set_page(0x4300_6000, clear_bits=stage2.S2AP_W)
    assert vm.run(timeout=5).status == STATUS_OFF
    [exit] = vmm.resolved
    rec = exit.raw
    # EC DABT_LOW, ISV, SAS doubleword, SRT 3, SF, WnR, DFSC permission fault level 3
    assert rec.ESR_EL2 == esr(EC_DABT_LOW, (1 << 24) | (3 << 22) | (3 << 16) | (1 << 15) | (1 << 6) | 0x0F)
    assert (rec.FAR_EL2, exit.address, exit.size) == (0x4300_6008, 0x4300_6008, 8)
    assert u64(vm, 0x4300_6008) == u64(vm, RESULT) == 0x1122_3344_5566_7788
    assert len(recorder.of(ExitKind.STAGE2_FAULT)) == 1


class Remapper:
    """A VMM with three vendor hypercalls: point IPA 0x4300_A000 at the memory of IPA 0x4300_B000
    (no invalidation), TLBI IPAS2E1IS for it, TLBI VMALLE1IS."""

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def handle(vcpu, exit):
            fid = vcpu.smccc_x0 & 0xFFFF_FFFF
            tables = vm.arch.stage2_tables
            if fid == HVC_REMAP:
                tables.map_page(0x4300_A000, vm.memory.translate(0x4300_B000))
            elif fid == HVC_FLUSH_IPA:
                vcpu.mmu.tlbi("IPAS2E1IS", 0x4300_A000)
            elif fid == HVC_FLUSH_ALL:
                vcpu.mmu.tlbi("VMALLE1IS")
            else:
                return psci.handle_hvc(vcpu, exit)
            vcpu.smccc_return(0)

        registry.add(ExitKind.HYPERCALL, handle)


def test_a_stage2_change_is_seen_only_after_the_vmm_invalidates(arm_vm, hvsim_pm):
    """Without TLBI the old IPA mapping stays; TLBI IPAS2E1IS drops the stage-2 entry only,
    the combined stage 1+2 entry stays until TLBI VMALLE1IS (KVM issues both)."""
    hvsim_pm.register(Remapper(), name="remapper")
    reads = []
    for n, fid in enumerate((HVC_REMAP, HVC_FLUSH_IPA, HVC_FLUSH_ALL)):
        reads.append(f"{w0(fid)}\nhvc #0\nldr x5, [x1]\nstr x5, [x19, #{8 * (n + 1)}]")
    code = f"""
    {mov64('x1', 0x4300_A000)}
    movz x19, #0x4140, lsl #16
    ldr x5, [x1]
    str x5, [x19]
    {chr(10).join(reads)}
    {SYSTEM_OFF}"""
    vm = arm_vm(guest(code))
    vm.memory.write(0x4300_A000, MARK_A.to_bytes(8, "little"))
    vm.memory.write(0x4300_B000, MARK_B.to_bytes(8, "little"))
    assert vm.run(timeout=5).status == STATUS_OFF
    assert [u64(vm, RESULT + 8 * i) for i in range(4)] == [MARK_A, MARK_A, MARK_A, MARK_B]


def test_stage2_invalidation_rejects_unknown_operations(arm_vm):
    mmu = arm_vm().vcpus[0].mmu
    with pytest.raises(ValueError, match="unknown TLBI"):
        mmu.tlbi("VAE2")
    with pytest.raises(ValueError, match="needs the IPA"):
        mmu.tlbi("IPAS2E1IS")


def test_el0_access_to_a_page_without_ap1_is_a_permission_fault_from_the_lower_el(run_guest):
    """AP[2:1] = 0b00: EL1 only. The EL0 load is a Data Abort from a lower EL (EC 0x24) at
    the lower-EL vector; EL0 still executes that memory (UXN clear)."""
    main = mmu_on() + f"""
    adr x1, el0_code
    msr elr_el1, x1
    msr spsr_el1, xzr
    adr x20, el0_after
    eret
el0_code:
    {mov64('x4', REMAPPED_VA)}
    ldr x5, [x4, #0x50]
el0_after:
    svc #0xffff
"""
    vm, result = run_guest(guest(main))
    assert result.status == STATUS_OFF
    (vector, esr_el1, _elr, far, spsr), (vector2, esr2, *_rest) = log_records(vm, 2)
    assert (vector, esr_el1, far, spsr & 0xF) == (0x400, esr(EC_DABT_LOW, 0x0F), REMAPPED_VA + 0x50, 0)
    assert (vector2, esr2) == (0x400, 0x5600_FFFF)


def asid_switch_guest(evict=lambda: "") -> str:
    """L3[0] nG, cached under ASID 0, remapped without TLBI; loads under ASID 1, back under
    ASID 0, then after TLBI ASIDE1 store at RESULT + 0, 8, 16, 24 (``evict()`` gives code run
    before the loads after each switch: tests/arm_el2/test_arm_cwalk.py drops the engine's
    entries there)."""
    return mmu_on() + f"""
    movz x4, #0x4300, lsl #16
    movz x5, #0x0f07
    orr x4, x4, x5
    str x4, [x7]
    dsb ish
    tlbi vmalle1
    dsb ish
    isb
    {mov64('x4', REMAPPED_VA)}
    ldr x5, [x4]
    str x5, [x19]
    movz x6, #0x4200, lsl #16
    movz x5, #0x0f07
    orr x6, x6, x5
    str x6, [x7]
    dsb ish
    movz x8, #1, lsl #48
    orr x8, x8, x1
    msr ttbr0_el1, x8
    isb
    {evict()}
    ldr x5, [x4]
    str x5, [x19, #8]
    msr ttbr0_el1, x1
    isb
    {evict()}
    ldr x5, [x4]
    str x5, [x19, #16]
    tlbi aside1, xzr
    dsb ish
    isb
    ldr x5, [x4]
    str x5, [x19, #24]
    {SYSTEM_OFF}"""


def test_ng_translations_are_tagged_by_asid_and_survive_an_address_space_switch(arm_vm):
    """nG entries belong to the ASID in TTBR0_EL1[63:48] (TCR_EL1.A1 = 0): switching to ASID 1
    walks the changed tables, switching back finds ASID 0's stale entry, TLBI ASIDE1 drops it."""
    main = asid_switch_guest()
    vm = arm_vm(guest(main))
    vm.memory.write(REMAPPED_VA, MARK_A.to_bytes(8, "little"))
    vm.memory.write(REMAPPED_PA, MARK_B.to_bytes(8, "little"))
    assert vm.run(timeout=5).status == STATUS_OFF
    assert [u64(vm, RESULT + 8 * i) for i in range(4)] == [MARK_B, MARK_A, MARK_B, MARK_A]


def test_a_64k_granule_guest_translates_through_a_512m_block_and_a_64k_page(arm_vm):
    """TCR_EL1.TG0 = 0b01: 64 KiB pages, 13 index bits a level; a 39-bit VA starts at level 2,
    whose entries are 512 MiB blocks. VA 0x6000_0000 + 64 KiB goes through L3[0] to 0x4300_0000."""
    main = f"""
    movz x1, #0x4181, lsl #16
    add x2, x1, #0x10, lsl #12
    movz x3, #0x4000, lsl #16
    movz x5, #0x0705
    orr x3, x3, x5
    str x3, [x1, #16]
    orr x3, x2, #3
    str x3, [x1, #24]
    movz x3, #0x4300, lsl #16
    movz x5, #0x0707
    orr x3, x3, x5
    str x3, [x2]
    movz x3, #0xff00
    msr mair_el1, x3
    movz x3, #0x7519
    movk x3, #0x0080, lsl #16
    movk x3, #0x0002, lsl #32
    msr tcr_el1, x3
    msr ttbr0_el1, x1
    isb
    mrs x3, sctlr_el1
    orr x3, x3, #1
    msr sctlr_el1, x3
    isb
    movz x19, #0x4140, lsl #16
    movz x4, #0x6000, lsl #16
    movk x4, #0x8010
    ldr x5, [x4]
    str x5, [x19]
    {SYSTEM_OFF}"""
    vm = arm_vm(guest(main))
    vm.memory.write(REMAPPED_PA + 0x8010, MARK_B.to_bytes(8, "little"))
    assert vm.run(timeout=5).status == STATUS_OFF
    assert u64(vm, RESULT) == MARK_B
    walk = vm.vcpus[0].stage1_walk(0x6000_8010, 0)
    assert walk.address == REMAPPED_PA + 0x8010 and [s.level for s in walk.steps] == [2, 3]
    assert walk.page_size == 0x1_0000


@pytest.mark.parametrize("change, ifsc", [("unmap", 0x07), ("xn", 0x0F)], ids=["unmapped", "XN"])
def test_a_fetch_stage2_refuses_is_an_instruction_abort_exit(arm_vm, recorder, change, ifsc):
    """Stage 2 has no entry (translation fault) or XN[1:0] = 0b10 (permission fault) for the
    page the guest branches to: EC 0x20, IFSC with level 3, no WnR, FAR_EL2 = the target."""
    target = 0x4300_C000
    vm = arm_vm(guest(f"{mov64('x4', target + 0x20)}\nbr x4\n{SYSTEM_OFF}"))
    vm.memory.write(target + 0x20, (0xD503201F).to_bytes(4, "little"))  # NOP
    tables = vm.arch.stage2_tables
    if change == "unmap":
        tables.unmap_page(target)
    else:
        tables.set_page(target, 0b10 << stage2.XN_SHIFT)
    result = vm.run(timeout=5)
    [exit] = recorder.of(ExitKind.STAGE2_FAULT)
    assert exit.raw.ESR_EL2 == esr(EC_IABT_LOW, ifsc)
    assert (exit.raw.FAR_EL2, exit.raw.HPFAR_EL2, exit.address) == (target + 0x20, target >> 8, target + 0x20)
    assert result.status == STATUS_GUEST_CRASH and "ESR_ELx_EC_IABT_LOW at guest-physical 0x4300c020" in result.reason


@pytest.mark.parametrize("ha", [False, True], ids=["fault", "VTCR_EL2.HA"])
def test_stage2_access_flag_clear_faults_to_el2_or_is_set_by_the_walk(arm_vm, recorder, ha):
    """A stage-2 descriptor with AF = 0: an Access flag fault (DFSC 0b001011) to EL2, or with
    VTCR_EL2.HA (FEAT_HAFDBS) the walk sets AF and the access completes."""
    ipa = 0x4300_D000
    vm = arm_vm(guest(f"{mov64('x1', ipa)}\nmov x2, #5\nstr x2, [x1, #0x10]\n{SYSTEM_OFF}"))
    tables = vm.arch.stage2_tables
    tables.set_page(ipa, clear_bits=stage2.DESC_AF)
    mmu = vm.vcpus[0].mmu
    if ha:
        mmu.set_stage2(mmu.VTTBR_EL2, mmu.VTCR_EL2 | stage2.VTCR_HA)
    result = vm.run(timeout=5)
    faults = recorder.of(ExitKind.STAGE2_FAULT)
    if ha:
        assert result.status == STATUS_OFF and not faults
        assert u64(vm, ipa + 0x10) == 5 and int.from_bytes(vm.host.read(tables.page_descriptor(ipa), 8), "little") & stage2.DESC_AF
    else:
        [exit] = faults
        assert exit.raw.ESR_EL2 == esr(EC_DABT_LOW, (1 << 24) | (3 << 22) | (2 << 16) | (1 << 15) | (1 << 6) | 0x0B)
        assert result.status == STATUS_GUEST_CRASH


def test_a_vmm_can_program_a_64k_granule_stage2_with_512m_blocks(arm_vm, recorder):
    """VTCR_EL2.TG0 = 0b01, T0SZ 24, SL0 = 0b01: the walk starts at level 2 (2048 entries of
    512 MiB blocks). IPA 0x4000_0000 + 512 MiB is one block; IPA 0x6000_0000 has no entry (a
    strict VM, so that fault is not an unassigned access)."""
    code = f"""
    {mov64('x1', 0x4300_0010)}
    ldr x5, [x1]
    movz x19, #0x4140, lsl #16
    str x5, [x19]
    movz x1, #0x6000, lsl #16
    ldr x6, [x1, #0x20]
    {SYSTEM_OFF}"""
    vm = arm_vm(guest(code), strict_mmio=True)
    [slot] = vm.memory.slots
    assert slot.hpa % (512 << 20) == 0
    root = vm.arch.hv_area  # the first half of the hypervisor area is free on arm_el2
    vm.host.write(root, bytes(0x4000))
    vm.host.write(root + 8 * 2, (slot.hpa | stage2.PAGE_DEFAULT | 1).to_bytes(8, "little"))
    vtcr = stage2.VTCR_RES1 | (0b010 << stage2.VTCR_PS_SHIFT) | (stage2.TG0_64K << stage2.VTCR_TG0_SHIFT) \
        | (1 << stage2.VTCR_SL0_SHIFT) | 24
    vm.vcpus[0].mmu.set_stage2((2 << 48) | root, vtcr)
    vm.memory.write(0x4300_0010, MARK_B.to_bytes(8, "little"))
    result = vm.run(timeout=5)
    assert u64(vm, RESULT) == MARK_B
    [exit] = recorder.of(ExitKind.STAGE2_FAULT)
    assert exit.raw.DFSC == 0x06 and (exit.raw.FAR_EL2, exit.address) == (0x6000_0020, 0x6000_0020)
    assert vm.vcpus[0].mmu.stage2().vmid == 2
    assert result.status == STATUS_GUEST_CRASH


def test_an_inconsistent_vtcr_faults_the_first_fetch_at_level_0(arm_vm, recorder):
    """4 KiB granule, T0SZ 24 (40 bits) with SL0 = 0b00 (start at level 2) would need 512
    concatenated tables: every walk is a stage-2 translation fault at level 0."""
    vm = arm_vm(guest(SYSTEM_OFF))
    mmu = vm.vcpus[0].mmu
    mmu.set_stage2(mmu.VTTBR_EL2, mmu.VTCR_EL2 & ~(3 << stage2.VTCR_SL0_SHIFT))
    result = vm.run(timeout=5)
    [exit] = recorder.of(ExitKind.STAGE2_FAULT)
    assert exit.raw.ESR_EL2 == esr(EC_IABT_LOW, 0x04)
    assert exit.raw.FAR_EL2 == vm.arch.boot_state.entry
    assert result.status == STATUS_GUEST_CRASH


def test_at_s1e1r_reports_the_guest_translation_in_par_el1(run_guest):
    """AT S1E1R through hvsim's walk (D23.2 PAR_EL1): F = 0 with the IPA, ATTR = MAIR_EL1
    attribute 1 (0xFF), SH inner (0b11), NS, bit 11 RES1; F = 1 with FST = translation fault
    level 3 for the invalid page; AT S1E1W of the read-only page: permission fault level 3."""
    main = mmu_on() + f"""
    {mov64('x4', REMAPPED_VA + 0x10)}
    at s1e1r, x4
    isb
    mrs x5, par_el1
    str x5, [x19]
    {mov64('x4', INVALID_VA)}
    at s1e1r, x4
    isb
    mrs x5, par_el1
    str x5, [x19, #8]
    {mov64('x4', READ_ONLY_VA)}
    at s1e1w, x4
    isb
    mrs x5, par_el1
    str x5, [x19, #16]
    {SYSTEM_OFF}"""
    vm, result = run_guest(guest(main))
    assert result.status == STATUS_OFF
    assert [u64(vm, RESULT + 8 * i) for i in range(3)] == [
        0xFF << 56 | REMAPPED_PA | 1 << 11 | 1 << 9 | 0b11 << 7, 1 << 11 | 0x07 << 1 | 1, 1 << 11 | 0x0F << 1 | 1]


@pytest.mark.parametrize("tlbi, seen", [("tlbi vae1is, x6", MARK_A), ("tlbi vae1, x6", MARK_B)],
                         ids=["inner-shareable", "local"])
def test_tlbi_is_reaches_the_other_vcpu_and_the_local_form_does_not(arm_vm, tlbi, seen):
    """vCPU 1 caches VA 0x4200_0000 -> 0x4300_0000; vCPU 0 rewrites L3[0] and invalidates:
    the inner shareable TLBI reaches vCPU 1's TLB (it then reads the new mapping), the local
    one leaves it stale (D8.13 "Broadcast TLB maintenance")."""
    enable = """
    movz x1, #0x4180, lsl #16
    movz x3, #0xff00
    msr mair_el1, x3
    movz x3, #0x3519
    movk x3, #0x0080, lsl #16
    movk x3, #0x0002, lsl #32
    msr tcr_el1, x3
    msr ttbr0_el1, x1
    isb
    mrs x3, sctlr_el1
    orr x3, x3, #1
    msr sctlr_el1, x3
    isb
    movz x19, #0x4140, lsl #16
"""
    main = mmu_on() + f"""
    {w0(psci.PSCI_0_2_FN64_CPU_ON)}
    mov x1, #1
    adr x2, secondary
    mov x3, #0
    hvc #0
    movz x19, #0x4140, lsl #16
    movz x7, #0x4180, lsl #16
    add x7, x7, #0x2000
wait_read:
    ldr x6, [x19, #0x100]
    cbz x6, wait_read
    movz x6, #0x4200, lsl #16
    movz x5, #0x0707
    orr x6, x6, x5
    str x6, [x7]
    dsb ish
    {mov64('x4', REMAPPED_VA)}
    lsr x6, x4, #12
    {tlbi}
    dsb ish
    isb
    mov x6, #1
    str x6, [x19, #0x108]
wait_done:
    ldr x6, [x19, #0x110]
    cbz x6, wait_done
    {SYSTEM_OFF}
secondary:
    {enable}
    {mov64('x4', REMAPPED_VA)}
    ldr x5, [x4]
    str x5, [x19, #0x10]
    mov x6, #1
    str x6, [x19, #0x100]
wait_flush:
    ldr x6, [x19, #0x108]
    cbz x6, wait_flush
    ldr x5, [x4]
    str x5, [x19, #0x18]
    mov x6, #1
    str x6, [x19, #0x110]
park:
    wfi
    b park
"""
    vm = arm_vm(guest(main), vcpus=2)
    vm.memory.write(REMAPPED_VA, MARK_A.to_bytes(8, "little"))
    vm.memory.write(REMAPPED_PA, MARK_B.to_bytes(8, "little"))
    assert vm.run(timeout=10).status == STATUS_OFF
    assert (u64(vm, RESULT + 0x10), u64(vm, RESULT + 0x18)) == (MARK_B, seen)


# -- tools: the walk printer and dirty logging --------------------------------------------------

def test_the_translation_trace_shows_both_stages(arm_vm):
    """hvsim translate on arm64: each stage-1 descriptor with the stage-2 walk of its IPA,
    then the final IPA's stage-2 walk and the physical address."""
    vm = arm_vm(guest(mmu_on() + SYSTEM_OFF))
    assert vm.run(timeout=5).status == STATUS_OFF
    trace = vm.vcpus[0].trace_translation(REMAPPED_VA + 0x123)
    assert trace.fault is None and trace.stage2_name == "stage 2"
    assert [t.level for t in trace.stage1] == ["level 1 descriptor", "level 2 descriptor", "level 3 descriptor"]
    assert trace.stage1[0].gpa == L1 + 8 and all(t.stage2 for t in trace.stage1)
    assert trace.gpa == REMAPPED_PA + 0x123 and trace.stage2
    assert trace.hpa == vm.memory.translate(REMAPPED_PA + 0x123)
    missing = vm.vcpus[0].trace_translation(INVALID_VA)
    assert missing.fault and "translation fault" in missing.fault and missing.gpa is None


def test_the_dirty_log_reports_the_pages_an_arm_guest_wrote(arm_vm, hvsim_pm):
    """vm.dirty_log on arm64: with logging on, write permission is granted only on a write,
    which records the page; pages only read are not reported."""
    class StartLogging:
        @hookimpl
        def hvsim_exit_handlers(self, vm, registry):
            handler = registry.get(ExitKind.HYPERCALL)

            def on_hvc(vcpu, exit):
                if vcpu.regs.read(UC_ARM64_REG_X0) == HVC_REMAP:
                    vcpu.vm.dirty_log.start()
                    return
                handler(vcpu, exit)

            registry.add(ExitKind.HYPERCALL, on_hvc)

    from unicorn.arm64_const import UC_ARM64_REG_X0

    hvsim_pm.register(StartLogging())
    vm = arm_vm(guest(f"""
    movz x1, #0x4250, lsl #16
    ldr x2, [x1]
    {mov64('x0', HVC_REMAP)}
    hvc #0
    movz x1, #0x4250, lsl #16
    ldr x2, [x1]
    movz x3, #0x4260, lsl #16
    str x2, [x3, #0x18]
    {SYSTEM_OFF}"""))
    assert vm.run(timeout=5).status == STATUS_OFF
    written = vm.dirty_log.collect()
    assert 0x4260_0000 in written and 0x4250_0000 not in written


@pytest.mark.parametrize("offset", [0, 0xC08])
@pytest.mark.parametrize("tlbi", ["tlbi vae1, x6", "tlbi vale1is, x6", "tlbi vaae1, x6"])
def test_a_tlbi_of_another_page_leaves_the_stale_translation(arm_vm, tlbi, offset):
    """The other side of the TLBI rule: an invalidation by VA drops that page only, so the
    remapped page keeps its old translation (the model keeps it deterministically) until its
    own TLBI, which drops all of the 4 KiB page (the engine's pages are 1 KiB: an offset in
    the page's last quarter must see the new translation too)."""
    main = mmu_on() + f"""
    {mov64('x4', REMAPPED_VA)}
    ldr x5, [x4]
    movz x6, #0x4200, lsl #16
    movz x5, #0x0f07
    orr x6, x6, x5
    str x6, [x7]
    dsb ish
    ldr x5, [x4, #{offset}]
    add x6, x4, #0x10, lsl #12
    lsr x6, x6, #12
    {tlbi}
    dsb ish
    isb
    ldr x5, [x4, #{offset}]
    str x5, [x19]
    lsr x6, x4, #12
    {tlbi}
    dsb ish
    isb
    ldr x5, [x4, #{offset}]
    str x5, [x19, #8]
    {SYSTEM_OFF}"""
    vm = arm_vm(guest(main))
    vm.memory.write(REMAPPED_VA + offset, MARK_A.to_bytes(8, "little"))
    vm.memory.write(REMAPPED_PA + offset, MARK_B.to_bytes(8, "little"))
    assert vm.run(timeout=5).status == STATUS_OFF
    assert [u64(vm, RESULT), u64(vm, RESULT + 8)] == [MARK_B, MARK_A]
