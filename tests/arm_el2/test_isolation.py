"""Isolation on arm64: three VMs on one host memory, and VM A's guest attacking the others.

Arm ARM (DDI 0487) D8 (VMSAv8-64: address size configuration, the stage-2 input range,
translation table walks through stage 2), D24.2 ESR_EL2 / FAR_EL2 / HPFAR_EL2 and ESR_ELx's
"ISS encoding for an exception from a Data Abort". VM A's guest builds stage-1 tables that
point everywhere it should not reach (the host-physical addresses of VM B's RAM and of A's own
stage-2 tables, IPAs beyond VTCR_EL2's 40-bit input size, output addresses beyond TCR_EL1.IPS,
tables there), runs AT, DC ZVA and page-crossing stores, branches to hvsim's private run-end
addresses and keeps a translation of a page the hypervisor takes away. Every attempt must end
in the architected fault: a stage-1 abort at A's own VBAR_EL1, or a stage-2 abort exit to EL2
(the test's VMM records it and steps over the instruction, as a VMM that refuses the access
would), and no byte outside A's RAM may change.
"""

from __future__ import annotations

import hashlib

from el2guest import LOG, SYSTEM_OFF, guest, log_records, w0
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.core.memory import HostMemory
from hvsim.core.vm import HV_AREA, STATUS_OFF, VM
from hvsim.plugins.arm_el2 import mmu as arm_mmu
from hvsim.plugins.arm_el2 import psci
from test_stage2 import mov64

MEM = 32 << 20
RAM = 0x4000_0000
L1, L2 = 0x4180_0000, 0x4180_1000
RESULT = 0x4140_0000
REVOKED = 0x4180_8000  # a page of A's RAM the hypervisor unmaps while A has it in its TLB
HVC_REVOKE = 0x8600_00A0  # the test VMM's vendor hypercall: unmap REVOKED (and invalidate)
EC_DABT_LOW, EC_DABT_CUR, EC_IABT_CUR = 0x24, 0x25, 0x21
ISV, SAS_DW, SF, CM, S1PTW, WNR = 1 << 24, 3 << 22, 1 << 15, 1 << 8, 1 << 7, 1 << 6
CUR_SPX_SYNC = 0x200
IPA_HUGE = 1 << 42  # within TCR_EL1.IPS (44 bits), beyond VTCR_EL2.T0SZ (40 bits)
OA_TOO_BIG = 1 << 44  # beyond TCR_EL1.IPS and PAMax


def esr(ec: int, iss: int) -> int:
    return (ec << 26) | (1 << 25) | iss


class RefusingVmm:
    """A VMM that backs nothing beyond a VM's RAM: each stage-2 abort is recorded and the guest
    resumes after the instruction; HVC_REVOKE takes REVOKED away (stage-2 descriptor cleared,
    TLBI IPAS2E1IS + TLBI VMALLE1IS as KVM's unmap does)."""

    def __init__(self) -> None:
        self.aborts: list[tuple[int, int, int]] = []

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def on_stage2(vcpu, exit):
            rec = exit.raw
            self.aborts.append((rec.ESR_EL2, rec.FAR_EL2, rec.HPFAR_EL2))
            vcpu.el2.ELR_EL2 += 4  # the hypervisor's ERET skips the aborting instruction

        def on_hvc(vcpu, exit):
            if vcpu.smccc_x0 & 0xFFFF_FFFF != HVC_REVOKE:
                return psci.handle_hvc(vcpu, exit)
            vm.arch.stage2_tables.unmap_page(REVOKED)
            vcpu.mmu.tlbi("IPAS2E1IS", REVOKED)
            vcpu.mmu.tlbi("VMALLE1IS")
            vcpu.smccc_return(0)

        registry.add(ExitKind.STAGE2_FAULT, on_stage2)
        registry.add(ExitKind.HYPERCALL, on_hvc)


def attack(n: int, setup: str, insn: str) -> str:
    """``insn`` after ``setup``; X20 tells the guest's handler where to return to."""
    return f"""
    {setup}
    adr x20, after_{n}
    {insn}
after_{n}:
    mov x20, #0"""


def attacker(b_ram: int, a_tables: int) -> str:
    """A's guest: attacks with the MMU off (VA = IPA), then with its own stage 1 on."""
    l1 = {1: RAM | 0x705,  # its RAM, one to one (a 1 GiB block: IPAs past the 32 MiB too)
          2: 0x0 | 0x705,  # VA 0x8000_0000 + x -> IPA x: the host-physical addresses
          3: IPA_HUGE | 0x705,
          4: OA_TOO_BIG | 0x705,
          5: OA_TOO_BIG | 3,  # a table beyond the output size
          6: b_ram | 3,  # a table at B's RAM
          7: IPA_HUGE | 3}  # a table beyond stage 2's input size
    tables = "\n".join(f"{mov64('x2', value)}\nstr x2, [x1, #{8 * n}]" for n, value in l1.items())
    tcr = 0x3519 | (25 << 16) | (0b10 << 30) | (0b100 << 32)  # T0SZ = T1SZ = 25, 4K, IPS 44 bits
    mmu_off = [("ldr x5, [x4]", b_ram + 0x100), ("str x5, [x4]", a_tables + 0x10),
               ("ldr x5, [x4]", IPA_HUGE + 0x18), ("ldr x5, [x4]", OA_TOO_BIG + 0x20)]
    mmu_on = [("str x5, [x4]", 0x8000_0000 + b_ram + 0x200), ("str x5, [x4]", 0x8000_0000 + a_tables + 0x8),
              ("ldr x5, [x4]", 0xC000_0000 + 0x28), ("str x5, [x4]", 0x1_0000_0000 + 0x30),
              ("ldr x5, [x4]", 0x1_4000_0000 + 0x38), ("str x5, [x4]", 0x1_8000_0000 + 0x40),
              ("ldr x5, [x4]", 0x1_C000_0000 + 0x48),
              ("str x5, [x4]", RAM + MEM + 0x50),  # the page after A's RAM (A's hypervisor area)
              ("str x5, [x4]", RAM + MEM - 4),  # 8 bytes across the end of A's RAM
              ("dc zva, x4", 0x8000_0000 + b_ram + 0x1000),
              ("at s1e1w, x4", 0x1_8000_0000 + 0x58),  # the walk reads B's RAM: an exit, not a PAR
              ("ldr x5, [x4]", 0xFFFF_FF80_0000_0060),  # TTBR1_EL1 = B's RAM
              ("br x4", arm_mmu.UNTIL - 0x1000), ("br x4", arm_mmu.UNTIL)]  # hvsim's run-end pages
    code = [attack(i, mov64("x4", va), insn) for i, (insn, va) in enumerate(mmu_off)]
    code.append(f"""
    {mov64('x1', L1)}
    {tables}
    movz x3, #0xff00
    msr mair_el1, x3
    {mov64('x3', tcr)}
    msr tcr_el1, x3
    msr ttbr0_el1, x1
    {mov64('x3', b_ram)}
    msr ttbr1_el1, x3
    isb
    mrs x3, sctlr_el1
    orr x3, x3, #1
    msr sctlr_el1, x3
    isb""")
    code += [attack(10 + i, mov64("x4", va), insn) for i, (insn, va) in enumerate(mmu_on)]
    code.append(attack(30, f"{mov64('x3', OA_TOO_BIG)}\nmsr ttbr1_el1, x3\nisb\n{mov64('x4', 0xFFFF_FF80_0000_0068)}",
                       "ldr x5, [x4]"))
    code.append(f"""
    {mov64('x4', 0x8000_0000 + b_ram + 0x300)}
    at s1e1r, x4
    isb
    mrs x5, par_el1
    {mov64('x19', RESULT)}
    str x5, [x19]
    {mov64('x4', REVOKED)}
    ldr x5, [x4]
    {w0(HVC_REVOKE)}
    hvc #0""")
    code.append(attack(31, "", "ldr x5, [x4, #8]"))
    return "\n".join(code) + "\n" + SYSTEM_OFF


def digest(host: HostMemory, skip: list[tuple[int, int]]) -> list[str]:
    """Hashes of host memory outside the ``skip`` ranges."""
    out, at = [], 0
    for start, end in sorted(skip) + [(host.size, host.size)]:
        out.append(hashlib.sha256(host.read(at, start - at)).hexdigest() if start > at else "")
        at = end
    return out


def test_a_guest_reaches_nothing_outside_its_ram_and_every_attempt_faults_architecturally(hvsim_pm):
    vmm = RefusingVmm()
    hvsim_pm.register(vmm, name="refusing-vmm")
    host = HostMemory(3 * (MEM + HV_AREA))
    a, b, c = (VM("arm_el2", mem="32M", host=host, pm=hvsim_pm, strict_mmio=True) for _ in range(3))
    for other in (b, c):
        other.memory.write(RAM, b"\xB2" * 0x4000)
    b_ram = b.memory.translate(RAM)
    tables = a.arch.stage2_tables
    a_ram = a.memory.translate(RAM)
    tables.page_descriptor(REVOKED)  # split its 2 MiB block now: the revocation writes one descriptor
    a.load(guest(attacker(b_ram, tables.root)))
    revoked_desc = tables.page_descriptor(REVOKED)
    skip = [(a_ram, a_ram + MEM), (revoked_desc, revoked_desc + 8)]
    before = digest(host, skip)

    result = a.run(timeout=10)

    assert result.status == STATUS_OFF, result.reason
    assert digest(host, skip) == before
    # Stage-1 faults: the guest's own Data / Instruction Aborts at its VBAR_EL1 (EC 0x25 / 0x21)
    records = [(vector, esr_el1, far) for vector, esr_el1, _elr, far, _spsr in log_records(a, 6)]
    assert records == [
        (CUR_SPX_SYNC, esr(EC_DABT_CUR, 0x00), OA_TOO_BIG + 0x20),  # MMU off, VA >= 2^PAMax: address size, level 0
        (CUR_SPX_SYNC, esr(EC_DABT_CUR, WNR | 0x01), 0x1_0000_0000 + 0x30),  # block OA beyond IPS: level 1
        (CUR_SPX_SYNC, esr(EC_DABT_CUR, 0x01), 0x1_4000_0000 + 0x38),  # next table beyond IPS: level 1
        (CUR_SPX_SYNC, esr(EC_IABT_CUR, 0x04), arm_mmu.UNTIL - 0x1000),  # outside both TTBRs' ranges
        (CUR_SPX_SYNC, esr(EC_IABT_CUR, 0x04), arm_mmu.UNTIL),
        (CUR_SPX_SYNC, esr(EC_DABT_CUR, 0x00), 0xFFFF_FF80_0000_0068),  # TTBR1_EL1 beyond IPS: level 0
    ]
    assert int.from_bytes(a.memory.read(LOG + 8 * 5 * 6, 8), "little") == 0  # nothing more
    # Stage-2 faults: exits to EL2 with ESR_EL2 (ISV and the syndrome only for a single register
    # at the final address), FAR_EL2 = the VA, HPFAR_EL2 = the IPA's page
    ldr, strx = ISV | SAS_DW | (5 << 16) | SF, ISV | SAS_DW | (5 << 16) | SF | WNR

    def hp(ipa):
        return (ipa >> 12) << 4

    assert vmm.aborts == [
        (esr(EC_DABT_LOW, ldr | 0x05), b_ram + 0x100, hp(b_ram)),  # MMU off: IPA = B's RAM
        (esr(EC_DABT_LOW, strx | 0x05), tables.root + 0x10, hp(tables.root)),  # A's own stage-2 tables
        (esr(EC_DABT_LOW, ldr | 0x04), IPA_HUGE + 0x18, hp(IPA_HUGE)),  # beyond the 40-bit IPA: level 0
        (esr(EC_DABT_LOW, strx | 0x05), 0x8000_0000 + b_ram + 0x200, hp(b_ram)),
        (esr(EC_DABT_LOW, strx | 0x05), 0x8000_0000 + tables.root + 0x8, hp(tables.root)),
        (esr(EC_DABT_LOW, ldr | 0x04), 0xC000_0000 + 0x28, hp(IPA_HUGE)),
        (esr(EC_DABT_LOW, S1PTW | 0x05), 0x1_8000_0000 + 0x40, hp(b_ram)),  # its table at B's RAM
        (esr(EC_DABT_LOW, S1PTW | 0x04), 0x1_C000_0000 + 0x48, hp(IPA_HUGE)),
        (esr(EC_DABT_LOW, strx | 0x06), RAM + MEM + 0x50, hp(RAM + MEM)),
        (esr(EC_DABT_LOW, strx | 0x06), RAM + MEM, hp(RAM + MEM)),  # the part past the end
        (esr(EC_DABT_LOW, WNR | 0x05), 0x8000_0000 + b_ram + 0x1000, hp(b_ram + 0x1000)),  # DC ZVA
        (esr(EC_DABT_LOW, CM | S1PTW | WNR | 0x05), 0x1_8000_0000 + 0x58, hp(b_ram)),  # AT's walk
        (esr(EC_DABT_LOW, S1PTW | 0x05), 0xFFFF_FF80_0000_0060, hp(b_ram)),
        (esr(EC_DABT_LOW, ldr | 0x07), REVOKED + 8, hp(REVOKED)),  # no stale translation survives
    ]
    # AT S1E1R of a VA whose IPA is B's RAM tells A only its own mapping (PAR_EL1.F = 0)
    assert int.from_bytes(a.memory.read(RESULT, 8), "little") & ((1 << 48) - 1) == (b_ram + 0x300) & ~0xFFF | 0xB80
