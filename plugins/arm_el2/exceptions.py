"""Taking exceptions to the guest's own EL1 vectors: the part of the CPU Unicorn leaves out.

Arm ARM (DDI 0487) D1.3 "Exceptions" and the ``AArch64.TakeException()`` pseudocode: save
PSTATE in SPSR_EL1 and the preferred return address in ELR_EL1, write ESR_EL1 (synchronous
exceptions) and FAR_EL1 (aborts), set PSTATE to EL1h with D, A, I and F masked (NZCV kept),
and branch to VBAR_EL1 + the vector offset (D1.3.3 "Exception vectors", table "Vector
offsets from vector table base address").

Unicorn reports guest exceptions through ``UC_HOOK_INTR`` with QEMU's ``EXCP_*`` numbers and
carries on as if nothing happened; :func:`on_exception` turns each into the entry above.
Unicorn also neither swaps the banked stack pointer on a PSTATE write nor refreshes its cached
state, so :func:`take_exception` saves SP to SP_EL0/SP_EL1 itself and ends with a system
register write (see sysregs.py).
"""

from __future__ import annotations

from unicorn.arm64_const import (
    UC_ARM64_REG_ESR_EL1,
    UC_ARM64_REG_FAR_EL1,
    UC_ARM64_REG_PC,
    UC_ARM64_REG_PSTATE,
    UC_ARM64_REG_SP,
    UC_ARM64_REG_SP_EL0,
    UC_ARM64_REG_SP_EL1,
    UC_ARM64_REG_ELR_EL1,
    UC_ARM64_REG_VBAR_EL1,
)

from hvsim.core.memory import Access

from . import exits as e
from .decode import decode
from .sysregs import SPSR_EL1

# Vector offsets: the kind of exception ...
SYNC, IRQ, FIQ, SERROR = 0x000, 0x080, 0x100, 0x180
# ... plus where it came from.
CURRENT_EL_SP0, CURRENT_EL_SPX, LOWER_EL_AARCH64 = 0x000, 0x200, 0x400

# PSTATE (as Unicorn's UC_ARM64_REG_PSTATE shows it, laid out like SPSR_ELx).
PSTATE_NZCV = 0xF000_0000
PSTATE_D, PSTATE_A, PSTATE_I, PSTATE_F = 1 << 9, 1 << 8, 1 << 7, 1 << 6
PSTATE_EL1H = 0x5  # M[3:0] = EL1 with SP_EL1
PSTATE_ENTRY = PSTATE_D | PSTATE_A | PSTATE_I | PSTATE_F | PSTATE_EL1H  # 0x3C5

# Unicorn's interrupt numbers (QEMU target/arm/cpu.h).
EXCP_UDEF = 1
EXCP_SWI = 2
EXCP_PREFETCH_ABORT = 3
EXCP_DATA_ABORT = 4
EXCP_BKPT = 7
EXCP_HVC = 11
EXCP_SMC = 13


def current_el(pstate: int) -> int:
    return (pstate >> 2) & 3


def vector_base(pstate: int) -> int:
    """The vector-table offset for an exception taken to EL1 from state ``pstate``."""
    if current_el(pstate) == 0:
        return LOWER_EL_AARCH64
    return CURRENT_EL_SPX if pstate & 1 else CURRENT_EL_SP0


def take_exception(vcpu, kind: int, elr: int, esr: int | None = None,
                   far: int | None = None) -> int:
    """Enter the guest's EL1 handler for ``kind`` (SYNC/IRQ/FIQ/SERROR); returns the vector."""
    regs = vcpu.regs
    # PSTATE reads fill 32 bits of FastRegs' reused 64-bit buffer (measured): SPSR_EL1's
    # upper half is RES0, not the last register read
    pstate = regs.read(UC_ARM64_REG_PSTATE) & 0xFFFF_FFFF
    sp = regs.read(UC_ARM64_REG_SP)  # the live SP is the banked one PSTATE.SP selects
    regs.write(UC_ARM64_REG_SP_EL1 if (pstate & 1 and current_el(pstate)) else UC_ARM64_REG_SP_EL0, sp)
    regs.write(UC_ARM64_REG_ELR_EL1, elr)
    if esr is not None:
        regs.write(UC_ARM64_REG_ESR_EL1, esr)
    if far is not None:
        regs.write(UC_ARM64_REG_FAR_EL1, far)
    regs.write(UC_ARM64_REG_PSTATE, (pstate & PSTATE_NZCV) | PSTATE_ENTRY)
    regs.write(UC_ARM64_REG_SP, regs.read(UC_ARM64_REG_SP_EL1))
    vcpu.sysregs.write(SPSR_EL1, pstate)  # last: a CP_REG write refreshes Unicorn's hflags
    vector = regs.read(UC_ARM64_REG_VBAR_EL1) + vector_base(pstate) + kind
    regs.write(UC_ARM64_REG_PC, vector)
    return vector


def exception_return(vcpu, spsr: int) -> None:
    """PSTATE = ``spsr`` as an ERET sets it (``AArch64.ExceptionReturn``): the stack pointer
    the old mode used is saved to its bank (SP_EL0 or SP_EL1) and the new mode's is loaded,
    which Unicorn does not do on a PSTATE write; ends with a system register write so Unicorn's
    cached state follows (as :func:`take_exception`)."""
    regs = vcpu.regs
    pstate = regs.read(UC_ARM64_REG_PSTATE) & 0xFFFF_FFFF
    sp = regs.read(UC_ARM64_REG_SP)
    regs.write(UC_ARM64_REG_SP_EL1 if (pstate & 1 and current_el(pstate)) else UC_ARM64_REG_SP_EL0, sp)
    regs.write(UC_ARM64_REG_PSTATE, spsr & 0xFFFF_FFFF)
    regs.write(UC_ARM64_REG_SP, regs.read(UC_ARM64_REG_SP_EL1 if (spsr & 1 and current_el(spsr))
                                          else UC_ARM64_REG_SP_EL0))
    vcpu.sysregs.write(SPSR_EL1, vcpu.sysregs.read(SPSR_EL1))


def _abort_ec(pstate: int, lower: int, current: int) -> int:
    return lower if current_el(pstate) == 0 else current


def on_exception(vcpu, intno: int) -> None:
    """A guest exception Unicorn reported (not HVC): deliver it to the guest's vectors."""
    regs = vcpu.regs
    pc = regs.read(UC_ARM64_REG_PC)
    if intno == EXCP_SWI:  # SVC: PC is already past it, which is the preferred return
        imm16 = (vcpu.read_insn(pc - 4) >> 5) & 0xFFFF
        take_exception(vcpu, SYNC, pc, e.esr(e.ESR_ELx_EC_SVC64, imm16))
    elif intno == EXCP_UDEF:
        from .mmu import in_run_end_pages, run_end_abort

        if in_run_end_pages(pc):  # hvsim's private page, never the guest's memory
            if not run_end_abort(vcpu, pc):
                vcpu.vm.crash(f"instruction fetch from {pc:#x} faults and so would its vector")
                vcpu.request_stop()
            return
        take_exception(vcpu, SYNC, pc, e.esr(e.ESR_ELx_EC_UNKNOWN))
    elif intno == EXCP_BKPT:
        imm16 = (vcpu.read_insn(pc) >> 5) & 0xFFFF
        take_exception(vcpu, SYNC, pc, e.esr(e.ESR_ELx_EC_BRK64, imm16))
    elif intno == EXCP_SMC:
        # PSCI's conduit is HVC and no EL3 firmware exists: SMC is UNDEFINED (as QEMU virt).
        take_exception(vcpu, SYNC, pc - 4, e.esr(e.ESR_ELx_EC_UNKNOWN))
    elif intno == EXCP_DATA_ABORT:
        data_abort(vcpu, pc)
    elif intno == EXCP_PREFETCH_ABORT:
        pstate = regs.read(UC_ARM64_REG_PSTATE)
        fsc = vcpu.stage1_fault(pc, Access.EXECUTE)
        ec = _abort_ec(pstate, e.ESR_ELx_EC_IABT_LOW, e.ESR_ELx_EC_IABT_CUR)
        take_exception(vcpu, SYNC, pc, e.esr(ec, fsc), far=pc)
    else:
        vcpu.vm.crash(f"unsupported CPU exception (Unicorn interrupt {intno}) at PC {pc:#x}")
        vcpu.request_stop()


def data_abort(vcpu, pc: int) -> None:
    """The guest's own stage-1 translation faulted on a load or store at ``pc``."""
    regs = vcpu.regs
    pstate = regs.read(UC_ARM64_REG_PSTATE)
    insn = decode(vcpu.read_insn(pc))
    if insn is None:  # e.g. DC ZVA or a table walk: no address we can rebuild
        vcpu.vm.crash(f"data abort at PC {pc:#x} from an instruction hvsim cannot decode")
        vcpu.request_stop()
        return
    far = insn.address(vcpu.xreg, pc)
    access = Access.READ if insn.is_load else Access.WRITE
    iss = vcpu.stage1_fault(far, access) | (0 if insn.is_load else e.ESR_ELx_WNR)
    ec = _abort_ec(pstate, e.ESR_ELx_EC_DABT_LOW, e.ESR_ELx_EC_DABT_CUR)
    take_exception(vcpu, SYNC, pc, e.esr(ec, iss), far=far)


def instruction_abort_external(vcpu, pc: int) -> bool:
    """A fetch from an IPA no RAM backs: KVM injects a synchronous external abort
    (kvm_inject_pabt, IFSC 0x10). Returns False when the vector itself is unbacked, which
    would loop forever; the caller then ends the run."""
    regs = vcpu.regs
    pstate = regs.read(UC_ARM64_REG_PSTATE)
    vbar = regs.read(UC_ARM64_REG_VBAR_EL1)
    target = vbar + vector_base(pstate) + SYNC
    if vbar <= pc < vbar + 0x800 or not vcpu.is_mapped_code(target):
        return False
    ec = _abort_ec(pstate, e.ESR_ELx_EC_IABT_LOW, e.ESR_ELx_EC_IABT_CUR)
    take_exception(vcpu, SYNC, pc, e.esr(ec, e.ESR_ELx_FSC_EXTABT), far=pc)
    return True

