"""MRS/MSR trapped to EL2 by HCR_EL2 (ESR_EL2.EC 0x18, ESR_ELx_EC_SYS64).

Arm ARM (DDI 0487) D23.2 "HCR_EL2" (the TVM, TRVM, TID1, TID2, TID3 and TACR fields list the
registers each traps) and D24.2 ESR_EL2, "ISS encoding for an exception from MSR, MRS, or
System instruction execution in AArch64 state". KVM handles these in
arch/arm64/kvm/sys_regs.c (``kvm_handle_sys_reg``).

Unicorn calls a ``UC_HOOK_INSN`` callback for an MRS (``UC_ARM64_INS_MRS``) or MSR
(``UC_ARM64_INS_MSR``) with the register's encoding, before the access; returning 1 skips the
engine's own access. A hook for all addresses costs ~0.3 us on *every* MRS/MSR the guest
executes, trapped or not (an untrapped ``mrs x0, tpidr_el1`` loop ran ~20x slower; a Linux
guest reads SP_EL0 and TPIDR_EL1 this way all the time). So each trapped MRS/MSR gets its own
hook, bounded to its address (begin == end): the engine checks hook bounds when it translates,
and an MRS/MSR with no hook at its address is translated as plain code and runs natively
(measured with callgrind: a loop of 1,000,000 untrapped MRS costs the same host instructions
with KVM's HCR_EL2, TID1/TID2/TID3/TACR set, as with HCR_EL2.RW alone). The trapped
instructions are found at translation time (:class:`SysregTraps`). The callbacks are C-level
(``RawHooks``); the encoding is looked up as the 20 bytes Unicorn passes, read with one
``from_address`` (0.08 us; ``ctypes.string_at`` costs 0.3 us).

A trapped access becomes ``Exit(SYSREG, "ESR_ELx_EC_SYS64", El2Record, address, 8, is_write,
value)``: ``address`` is the register's encoding as Linux's ``sys_reg(op0, op1, CRn, CRm,
op2)`` packs it; for an MSR ``value`` is the value written, for an MRS it is None. After the
handler: an MRS reads the register of hvsim's CPU model unless the handler set ``exit.value``
(then Xt gets that); an MSR writes ``exit.value`` (unchanged: the guest's value, performed by
the engine itself so its side effects happen, e.g. a TLB flush on TTBR0_EL1), or nothing if
the handler set it to None. The default handler (:func:`handle_sysreg`) leaves both alone: the
guest's access is performed, as KVM's for TVM/TRVM and for the ID registers it does not hide.
As on hardware after ``kvm_incr_pc``, the guest continues after the instruction.

The same translation-time scan finds the other instructions EL2 traps (all bounded hooks,
none on untrapped code):

- System instructions (``SYS``, op0 = 1, ``UC_ARM64_INS_SYS``): HCR_EL2.TSW (DC ISW/CSW/CISW),
  TPCP (DC IVAC/CVAC/CIVAC), TPU (IC IVAU/IALLU/IALLUIS, DC CVAU), TTLB (the EL1 TLBI
  operations), TDZ (DC ZVA): EC 0x18 with Op0 = 1, Direction 0, Rt the operand (31 if none).
  The operation is performed after the handler unless it set ``exit.value = None``.
- MDCR_EL2.TDA/TDOSA/TDRA/TPM/TPMCR (debug, OS-lock, debug-ROM and PMU registers) and
  CNTHCTL_EL2.EL1PCTEN/EL1PCEN (CNTPCT_EL0 reads; the CNTP_* registers) trap MRS/MSR like the
  HCR_EL2 controls, EC 0x18; HCR_EL2.TIDCP traps the IMPLEMENTATION DEFINED encodings (op0 3,
  CRn 11 or 15): the CPU hvsim models implements none, so unless the handler supplies a value
  (``exit.value``) the access is UNDEFINED to the guest, as with KVM.
- WFE under HCR_EL2.TWE (``UC_HOOK_CODE`` at its address: Unicorn runs WFE as a NOP and never
  returns from ``emu_start`` for it): an INSTRUCTION exit, EC 0x01 with TI = 0b01, ELR_EL2 the
  WFE. As KVM's ``kvm_handle_wfx`` the WFE then completes and the vCPU yields its slice (when
  there are other vCPUs), which is what a WFE spin loop needs.
- FP/SIMD instructions and FPCR/FPSR accesses under CPTR_EL2.TFP (``UC_HOOK_CODE``; the engine
  never traps FP itself, whatever CPACR_EL1 and CPTR_EL2 say, measured): an EXCEPTION exit, EC
  0x07 with CV = 1, COND = 0b1110 (as QEMU's syn_fp_access_trap for A64), ELR_EL2 the
  instruction. The default handler does what KVM does (``kvm_handle_fpasimd``: the guest's FP
  state is made live and CPTR_EL2.TFP cleared); the instruction is then executed again, and
  traps again while TFP stays set, as on hardware. The guest's own CPACR_EL1.FPEN is checked
  first (its MSR is always hooked; FPEN resets to 0b00 as in QEMU): a trapped FP/SIMD access
  is then the guest's EC 0x07 exception at its VBAR_EL1, with no exit.

The guest's generic-timer registers (CNTV_* and CNTP_*) are emulated here as well, by the
hardware model rather than as exits: Unicorn ignores writes to them (measured), see
:mod:`.timer`.
"""

from __future__ import annotations

import ctypes
import struct

from unicorn import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_HOOK_CODE, UC_HOOK_EDGE_GENERATED, UC_HOOK_INSN, UC_PROT_EXEC
from unicorn.arm64_const import (
    UC_ARM64_INS_MRS,
    UC_ARM64_INS_MSR,
    UC_ARM64_INS_SYS,
    UC_ARM64_REG_PC,
    UC_ARM64_REG_PSTATE,
    UC_ARM64_REG_X0,
    UC_ARM64_REG_X29,
    UC_ARM64_REG_X30,
    UC_ARM64_REG_XZR,
)

from hvsim.core.engine import HOOK_CODE, _lib
from hvsim.core.exits import Exit, ExitKind

from . import el2, exceptions
from . import sysregs as sr
from .exits import (
    ESR_ELx_COND_AL,
    ESR_ELx_CV,
    ESR_ELx_EC_FP_ASIMD,
    ESR_ELx_EC_SYS64,
    ESR_WFE,
    El2Record,
    esr,
    sys64_iss,
)

REASON = "ESR_ELx_EC_SYS64"

# uc_cb_insn_sys_t: uint32_t (uc_engine *uc, uc_arm64_reg reg, const uc_arm64_cp_reg *cp, void *ud)
INSN_SYS_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p,
                               ctypes.c_void_p)

# The registers HCR_EL2.TVM (writes) and TRVM (reads) trap, D23.2 "HCR_EL2" (FEAT_AA64 base
# set; TCR2_EL1 and the FEAT_S1PIE/S1POE registers are not in hvsim's CPU model).
TVM_REGS = (sr.SCTLR_EL1, sr.TTBR0_EL1, sr.TTBR1_EL1, sr.TCR_EL1, sr.ESR_EL1, sr.FAR_EL1,
            sr.AFSR0_EL1, sr.AFSR1_EL1, sr.MAIR_EL1, sr.AMAIR_EL1, sr.CONTEXTIDR_EL1)
# ID group 3: op0 = 3, op1 = 0, CRn = 0, CRm = 1..7, any op2 (ID_PFR0_EL1 .. ID_AA64MMFR4_EL1,
# the reserved encodings of that space included, as the Arm ARM has TID3 trap them too).
ID_GROUP3 = tuple((3, 0, 0, crm, op2) for crm in range(1, 8) for op2 in range(8))

# IMPLEMENTATION DEFINED encodings (HCR_EL2.TIDCP): op0 = 3, CRn = 11 or 15, any op1/CRm/op2.
IMP_DEF = tuple((3, op1, crn, crm, op2) for crn in (11, 15) for op1 in range(8) for crm in range(16)
                for op2 in range(8))
_IMP_DEF = frozenset(IMP_DEF)

# Debug registers (op0 = 2) by the MDCR_EL2 control that traps them (D23.2 "MDCR_EL2").
DEBUG_TDA = ((sr.MDSCR_EL1, sr.MDCCINT_EL1, sr.MDCCSR_EL0, sr.DBGDTR_EL0, sr.DBGDTRRX_EL0,
              sr.OSDTRRX_EL1, sr.OSDTRTX_EL1, sr.OSECCR_EL1, sr.DBGCLAIMSET_EL1, sr.DBGCLAIMCLR_EL1,
              sr.DBGAUTHSTATUS_EL1)
             + tuple((2, 0, 0, n, op2) for n in range(16) for op2 in (4, 5, 6, 7)))  # DBGB/W[VC]R<n>
DEBUG_TDOSA = (sr.OSLAR_EL1, sr.OSLSR_EL1, sr.OSDLR_EL1, sr.DBGPRCR_EL1)
DEBUG_TDRA = (sr.MDRAR_EL1,)
PMU_REGS = ((sr.PMCR_EL0,) + tuple((3, 3, 9, 12, op2) for op2 in range(1, 8))  # PMCNTENSET .. PMCEID1
            + tuple((3, 3, 9, 13, op2) for op2 in range(3))  # PMCCNTR, PMXEVTYPER, PMXEVCNTR
            + ((3, 3, 9, 14, 0), (3, 3, 9, 14, 3), (3, 0, 9, 14, 1), (3, 0, 9, 14, 2))  # PMUSERENR ..
            + tuple((3, 3, 14, crm, op2) for crm in range(8, 16) for op2 in range(8)))  # PMEV*, PMCCFILTR

# The physical counter and timer (CNTHCTL_EL2, E2H = 0).
CNTP_REGS = (sr.CNTP_CTL_EL0, sr.CNTP_CVAL_EL0, sr.CNTP_TVAL_EL0)

# System instructions (op0 = 1) by the HCR_EL2 control that traps them.
SYS_TSW = ((1, 0, 7, 6, 2), (1, 0, 7, 10, 2), (1, 0, 7, 14, 2))  # DC ISW, DC CSW, DC CISW
SYS_TPCP = ((1, 0, 7, 6, 1), (1, 3, 7, 10, 1), (1, 3, 7, 14, 1))  # DC IVAC, DC CVAC, DC CIVAC
SYS_TPU = ((1, 3, 7, 5, 1), (1, 0, 7, 5, 0), (1, 0, 7, 1, 0), (1, 3, 7, 11, 1))  # IC IVAU, IC IALLU, IC IALLUIS, DC CVAU
SYS_TTLB = tuple((1, 0, 8, crm, op2) for crm in (3, 7) for op2 in (0, 1, 2, 3, 5, 7))  # TLBI *E1[IS]
SYS_TDZ = ((1, 3, 7, 4, 1),)  # DC ZVA

# The GIC's SGI generation registers: not virtualized by the GIC's virtual CPU interface, an
# EL1 write traps to EL2 under HCR_EL2.IMO (ICC_SGI1R_EL1, ICC_ASGI1R_EL1) or FMO (ICC_SGI0R_EL1).
ICC_SGI1R_EL1, ICC_ASGI1R_EL1, ICC_SGI0R_EL1 = (3, 0, 12, 11, 5), (3, 0, 12, 11, 6), (3, 0, 12, 11, 7)

# (register, control, registers whose MRS it traps, whose MSR it traps, whose SYS it traps,
# trap when the control bit is set (False: when it is clear, as CNTHCTL_EL2's enables)).
SYSREG_TRAPS = [
    ("HCR_EL2", el2.HCR_TVM, (), TVM_REGS, (), True),
    ("HCR_EL2", el2.HCR_TRVM, TVM_REGS, (), (), True),
    ("HCR_EL2", el2.HCR_TID1, (sr.REVIDR_EL1, sr.AIDR_EL1), (), (), True),
    ("HCR_EL2", el2.HCR_TID2, (sr.CTR_EL0, sr.CCSIDR_EL1, sr.CLIDR_EL1, sr.CSSELR_EL1), (sr.CSSELR_EL1,), (), True),
    ("HCR_EL2", el2.HCR_TID3, ID_GROUP3, (), (), True),
    ("HCR_EL2", el2.HCR_TACR, (sr.ACTLR_EL1,), (sr.ACTLR_EL1,), (), True),
    ("HCR_EL2", el2.HCR_TIDCP, IMP_DEF, IMP_DEF, (), True),
    ("HCR_EL2", el2.HCR_TSW, (), (), SYS_TSW, True),
    ("HCR_EL2", el2.HCR_TPCP, (), (), SYS_TPCP, True),
    ("HCR_EL2", el2.HCR_TPU, (), (), SYS_TPU, True),
    ("HCR_EL2", el2.HCR_TTLB, (), (), SYS_TTLB, True),
    ("HCR_EL2", el2.HCR_TDZ, (), (), SYS_TDZ, True),
    ("MDCR_EL2", el2.MDCR_EL2_TDA, DEBUG_TDA, DEBUG_TDA, (), True),
    ("MDCR_EL2", el2.MDCR_EL2_TDOSA, DEBUG_TDOSA, DEBUG_TDOSA, (), True),
    ("MDCR_EL2", el2.MDCR_EL2_TDRA, DEBUG_TDRA, DEBUG_TDRA, (), True),
    ("MDCR_EL2", el2.MDCR_EL2_TPM, PMU_REGS, PMU_REGS, (), True),
    ("MDCR_EL2", el2.MDCR_EL2_TPMCR, (sr.PMCR_EL0,), (sr.PMCR_EL0,), (), True),
    ("CNTHCTL_EL2", el2.CNTHCTL_EL1PCTEN, (sr.CNTPCT_EL0,), (), (), False),
    ("CNTHCTL_EL2", el2.CNTHCTL_EL1PCEN, CNTP_REGS, CNTP_REGS, (), False),
    ("CPTR_EL2", el2.CPTR_EL2_TCPAC, (sr.CPACR_EL1,), (sr.CPACR_EL1,), (), True),
    ("HCR_EL2", el2.HCR_IMO, (), (ICC_SGI1R_EL1, ICC_ASGI1R_EL1), (), True),
    ("HCR_EL2", el2.HCR_FMO, (), (ICC_SGI0R_EL1,), (), True),
]

# FP/SIMD accesses (CPTR_EL2.TFP, EC 0x07): ISS CV = 1, COND = 0b1110 from AArch64.
FP_RECORD = El2Record(esr(ESR_ELx_EC_FP_ASIMD, ESR_ELx_CV | ESR_ELx_COND_AL))
WFE_RECORD = El2Record(ESR_WFE)
WFE = 0xD503_205F

# Site kinds besides Unicorn's instruction ids: instructions hooked with UC_HOOK_CODE.
SITE_WFE, SITE_FP = -1, -2

# uc_cb_edge_gen_t: void (uc_engine *uc, uc_tb *cur, uc_tb *prev, void *ud)
class _UcTb(ctypes.Structure):
    _fields_ = [("pc", ctypes.c_uint64), ("icount", ctypes.c_uint16), ("size", ctypes.c_uint16)]


EDGE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(_UcTb), ctypes.POINTER(_UcTb), ctypes.c_void_p)

_vmem_read = _lib.uc_vmem_read
_vmem_read.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_vmem_read.restype = ctypes.c_int
_MAX_BLOCK = 4096  # bytes of a translation block scanned (QEMU ends a block at a page)

_CP_KEY = ctypes.c_char * 20  # crn, crm, op0, op1, op2 of a uc_arm64_cp_reg, as bytes

# Unicorn's register id for Xt -> t (XZR is 31 in the ISS, as in the instruction).
_RT = {UC_ARM64_REG_X0 + n: n for n in range(29)}
_RT.update({UC_ARM64_REG_X29: 29, UC_ARM64_REG_X30: 30, UC_ARM64_REG_XZR: 31})


def cp_key(enc: tuple[int, int, int, int, int]) -> bytes:
    """The first 20 bytes of Unicorn's ``uc_arm64_cp_reg`` (crn, crm, op0, op1, op2) for ``enc``."""
    op0, op1, crn, crm, op2 = enc
    return struct.pack("<5I", crn, crm, op0, op1, op2)


def sys_reg(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """Linux's ``sys_reg()`` packing of an encoding (arch/arm64/include/asm/sysreg.h)."""
    return (op0 << 19) | (op1 << 16) | (crn << 12) | (crm << 8) | (op2 << 5)


# ICH_HCR_EL2's trap controls (GIC spec, "ICH_HCR_EL2"): TALL0 / TALL1 trap the EL1 accesses
# of one group's ICC_* registers, TC the common ones, TDIR ICC_DIR_EL1 (MRS and MSR alike).
ICH_HCR_TC, ICH_HCR_TALL0, ICH_HCR_TALL1, ICH_HCR_TDIR = 1 << 10, 1 << 11, 1 << 12, 1 << 14
ICC_GROUP0 = ((3, 0, 12, 8, 0), (3, 0, 12, 8, 1), (3, 0, 12, 8, 2), (3, 0, 12, 8, 3), (3, 0, 12, 12, 6)) \
    + tuple((3, 0, 12, 8, 4 + n) for n in range(4))  # IAR0 EOIR0 HPPIR0 BPR0 IGRPEN0 AP0R<n>
ICC_GROUP1 = ((3, 0, 12, 12, 0), (3, 0, 12, 12, 1), (3, 0, 12, 12, 2), (3, 0, 12, 12, 3), (3, 0, 12, 12, 7)) \
    + tuple((3, 0, 12, 9, n) for n in range(4))  # IAR1 EOIR1 HPPIR1 BPR1 IGRPEN1 AP1R<n>
ICC_DIR_EL1 = (3, 0, 12, 11, 1)
ICC_COMMON = (ICC_SGI0R_EL1, ICC_SGI1R_EL1, ICC_ASGI1R_EL1, (3, 0, 12, 12, 4), ICC_DIR_EL1, (3, 0, 4, 6, 0),
              (3, 0, 12, 11, 3))  # ... CTLR, DIR, PMR, RPR
ICH_TRAPS = ((ICH_HCR_TALL0, ICC_GROUP0), (ICH_HCR_TALL1, ICC_GROUP1), (ICH_HCR_TC, ICC_COMMON),
             (ICH_HCR_TDIR, (ICC_DIR_EL1,)))


def trapped(hcr: int, mdcr: int = 0, cnthctl: int = el2.CNTHCTL_EL1PCTEN | el2.CNTHCTL_EL1PCEN,
            cptr: int = 0, ich_hcr: int = 0) -> tuple[set, set, set]:
    """The encodings whose MRS, whose MSR, and whose SYS trap to EL2 under these controls."""
    if mdcr & el2.MDCR_EL2_TDE:  # TDE: TDA, TDOSA and TDRA act as 1 (D23.2 "MDCR_EL2")
        mdcr |= el2.MDCR_EL2_TDA | el2.MDCR_EL2_TDOSA | el2.MDCR_EL2_TDRA
    values = {"HCR_EL2": hcr, "MDCR_EL2": mdcr, "CNTHCTL_EL2": cnthctl, "CPTR_EL2": cptr}
    reads, writes, sys = set(), set(), set()
    for register, bit, r, w, s, when_set in SYSREG_TRAPS:
        if bool(values[register] & bit) == when_set:
            reads.update(r)
            writes.update(w)
            sys.update(s)
    for bit, regs in ICH_TRAPS:
        if ich_hcr & bit:
            reads.update(regs)
            writes.update(regs)
    return reads, writes, sys


def _no_redirect(vcpu) -> None:
    """A SYSREG handler wrote ELR_EL2 / SPSR_EL2: the trapped MRS/MSR/SYS runs in a hook inside
    its translation block, which would go on with the next instruction whatever PC says."""
    vcpu.vm.crash("a SYSREG exit handler wrote ELR_EL2/SPSR_EL2: hvsim cannot redirect a trapped "
                  "MRS/MSR/SYS yet (set exit.value to emulate it; the guest continues after it)")


def handle_sysreg(vcpu, exit: Exit) -> None:
    """The SYSREG exit handler: the guest's access is performed (see the module docstring)."""


def handle_fp_asimd(vcpu, exit: Exit) -> None:
    """The FP/SIMD trap (EC 0x07) handler, as KVM's lazy FP switch: the guest's FP registers
    are live in the engine already, so only CPTR_EL2.TFP is cleared; the instruction reruns."""
    vcpu.el2.CPTR_EL2 &= ~el2.CPTR_EL2_TFP


def decode_sys(word: int) -> tuple[tuple[int, int, int, int, int], int, bool] | None:
    """MRS/MSR (register), C6.2 "MRS"/"MSR (register)": (encoding, Rt, is_read) or None.

    1101 0101 00 L 1 o0 op1:3 CRn:4 CRm:4 op2:3 Rt:5, op0 = 2 + o0, L = 1 for MRS."""
    if word & 0xFFD0_0000 != 0xD510_0000:
        return None
    enc = (2 + (word >> 19 & 1), word >> 16 & 7, word >> 12 & 15, word >> 8 & 15, word >> 5 & 7)
    return enc, word & 31, bool(word >> 21 & 1)


def decode_sys_insn(word: int) -> tuple[tuple[int, int, int, int, int], int] | None:
    """SYS, C6.2 "SYS": 1101 0101 0000 1 op1:3 CRn:4 CRm:4 op2:3 Rt:5 (DC, IC, TLBI, AT are
    its aliases): (encoding with op0 = 1, Rt) or None."""
    if word & 0xFFF8_0000 != 0xD508_0000:
        return None
    return (1, word >> 16 & 7, word >> 12 & 15, word >> 8 & 15, word >> 5 & 7), word & 31


def is_fp_asimd(word: int) -> bool:
    """An instruction CPTR_EL2.TFP traps (C4.1 "A64 instruction set encoding"): the "Data
    Processing -- Scalar Floating-Point and Advanced SIMD" group (op0 x111), the SIMD&FP loads
    and stores (op0 x1x0 with V, bit 26, set), and MRS/MSR of FPCR or FPSR."""
    op0 = word >> 25 & 0xF
    if op0 & 0b0111 == 0b0111:
        return True
    if op0 & 0b0101 == 0b0100 and word >> 26 & 1:
        return True
    return word & 0xFFDF_FFC0 == 0xD51B_4400  # MRS/MSR S3_3_C4_C4_{0,1}: FPCR, FPSR



def on_new_block(vcpu, scan):
    """A ``UC_HOOK_EDGE_GENERATED`` callback: ``scan(pc, size)`` each newly translated block;
    when it hooked a site there, the block (translated before the hook existed) is dropped and
    PC written so the stale copy does not run once untrapped."""

    def on_edge(_uch, cur, _prev, _ud) -> None:
        try:
            tb = cur.contents
            pc, size = tb.pc, tb.size
            if scan(pc, size):
                vcpu.uc.ctl_remove_cache(pc, pc + size)
                vcpu.regs.write(UC_ARM64_REG_PC, pc)
        except BaseException as exc:  # noqa: BLE001 (re-raised by the vCPU's run)
            vcpu.hooks.fail(exc)

    return on_edge

class SysregTraps:
    """One vCPU's trapped MRS/MSR/SYS, WFE and FP/SIMD instructions, and its emulated
    timer-register accesses. :meth:`update` follows the EL2 controls at once (which accesses
    trap); :meth:`sync_hooks` adds or removes the engine hooks, outside ``emu_start``.

    Only the instructions that trap, or whose register hvsim emulates, have a hook, a
    ``UC_HOOK_INSN`` (or ``UC_HOOK_CODE``) bounded to the instruction's address (begin ==
    end): the engine checks the bounds when it translates, so an unhooked MRS/MSR is
    translated as plain code and runs natively (measured: a bounded hook elsewhere leaves an
    untrapped MRS loop at bare-engine speed; a global one makes it ~20x slower). The
    instructions are found when Unicorn translates a block (``UC_HOOK_EDGE_GENERATED``, once
    per translation) by decoding its words, as plugins/x86/traps.py does: a block whose new
    trapped sites were hooked after it was translated is dropped (``ctl_remove_cache``) and PC
    rewritten so it does not run stale; the first block after ``emu_start`` is not reported,
    :meth:`prescan` covers it. Every MRS/MSR/SYS/WFE seen is kept (``sites``, by address and
    instruction kind; FP/SIMD instructions only while TFP is set), so a change of the
    controls hooks and unhooks them at the next entry, with the translated code flushed. A
    hook on an instruction that no longer traps does nothing (the callbacks look the register
    and the controls up again) until the next re-evaluation."""

    def __init__(self, vcpu) -> None:
        self.vcpu = vcpu
        self._reads: dict[bytes, tuple] = {}  # cp key -> encoding, for trapped MRS
        self._writes: dict[bytes, tuple] = {}
        self._sys: dict[bytes, tuple] = {}
        # Emulated by the hardware model (the timers): cp key -> callable.
        self.emulated_reads: dict[bytes, object] = {}
        self.emulated_writes: dict[bytes, object] = {}
        # Emulated registers the engine does not implement (the GIC's ICC_*): the hook steps
        # over the instruction itself (returning 1 alone would run it again).
        self.unimplemented: set[bytes] = set()
        self.ich_hcr = 0  # ICH_HCR_EL2 (its TC/TALL0/TALL1/TDIR traps), when the VM has a GIC
        self._em_reads: set[tuple] = set()
        self._em_writes: set[tuple] = set()
        self.twe = self.tfp = False
        # CPACR_EL1.FPEN, the guest's own FP trap (to EL1, before CPTR_EL2.TFP): its MSR is
        # hooked always, so hvsim knows when FP/SIMD instructions must be found.
        self.fpen = sr.CPACR_EL1_FPEN_RESET
        self._trapped: tuple = ()
        self._synced: tuple | None = None  # what the hooks follow
        self._records: dict[tuple, tuple] = {}  # (cp key, reg id, kind) -> (El2Record, address, enc)
        self.sites: dict[tuple[int, int], tuple | None] = {}  # (address, kind) -> encoding
        self._handles: dict[tuple[int, int], int] = {}  # (address, kind) -> hook handle
        self._uch = ctypes.c_void_p(vcpu.uc._uch.value)
        self._buf = ctypes.create_string_buffer(_MAX_BLOCK)
        ids = (ctypes.c_int * 2)(UC_ARM64_REG_PC, UC_ARM64_REG_PSTATE)
        self._pc_pstate = (ctypes.c_uint64(), ctypes.c_uint64())
        self._pc_pstate_ptrs = (ctypes.c_void_p * 2)(*(ctypes.addressof(b) for b in self._pc_pstate))
        self._pc_pstate_ids = ids
        self._callbacks = {UC_ARM64_INS_MRS: self._mrs_hook(), UC_ARM64_INS_MSR: self._msr_hook(),
                           UC_ARM64_INS_SYS: self._sys_hook()}
        self._code_callbacks = {SITE_WFE: self._wfe_hook(), SITE_FP: self._fp_hook()}
        vcpu.hooks.add(UC_HOOK_EDGE_GENERATED, EDGE_CB, on_new_block(vcpu, self._scan))

    def watch_cpacr(self) -> None:
        """Hook the guest's MSR CPACR_EL1 (performed, then FPEN followed)."""
        vcpu = self.vcpu

        def write_cpacr(value: int) -> None:
            vcpu.sysregs.write(sr.CPACR_EL1, value)
            fpen = value >> 20 & 3
            if fpen != self.fpen:
                self.fpen = fpen
                if self.update_controls(self._controls) and vcpu._in_engine:
                    vcpu._reenter = True  # FP instructions get (or lose) their hooks
                    vcpu.uc.emu_stop()

        self.emulate(sr.CPACR_EL1, write=write_cpacr)

    def emulate(self, enc: tuple, read=None, write=None) -> None:
        """Have the hardware model perform MRS (``read() -> value``) and MSR (``write(value)``)
        of ``enc`` (for registers the engine does not implement, such as the timers')."""
        key = cp_key(enc)
        if read is not None:
            self.emulated_reads[key] = read
            self._em_reads.add(enc)
        if write is not None:
            self.emulated_writes[key] = write
            self._em_writes.add(enc)
        self.update_controls(self._controls)

    def set_ich_hcr(self, value: int) -> None:
        """Follow ICH_HCR_EL2's trap controls (at once if the guest is in the engine)."""
        if value == self.ich_hcr:
            return
        self.ich_hcr = value
        vcpu = self.vcpu
        if self.update_controls(self._controls) and vcpu._in_engine:
            vcpu._reenter = True
            vcpu.uc.emu_stop()

    def emulate_unimplemented(self, enc: tuple, read=None, write=None) -> None:
        """:meth:`emulate` for a register the engine has no model of (UNDEFINED there)."""
        self.unimplemented.add(cp_key(enc))
        self.emulate(enc, read, write)

    _controls: tuple = (el2.HCR_EL2_DEFAULT, 0, el2.CNTHCTL_EL1PCTEN | el2.CNTHCTL_EL1PCEN, 0)

    def update(self, hcr: int) -> bool:
        """Follow a new HCR_EL2 (the other controls unchanged)."""
        return self.update_controls((hcr,) + self._controls[1:])

    def update_controls(self, controls: tuple[int, int, int, int]) -> bool:
        """Follow (HCR_EL2, MDCR_EL2, CNTHCTL_EL2, CPTR_EL2); True when the engine's hooks must
        change (:meth:`sync_hooks`)."""
        self._controls = controls
        hcr, mdcr, cnthctl, cptr = controls
        reads, writes, sys = trapped(hcr, mdcr, cnthctl, cptr, self.ich_hcr)
        self._reads.clear()
        self._reads.update({cp_key(e): e for e in reads})
        self._writes.clear()
        self._writes.update({cp_key(e): e for e in writes})
        self._sys.clear()
        self._sys.update({cp_key(e): e for e in sys})
        self._records.clear()
        self.twe = bool(hcr & el2.HCR_TWE)
        self.tfp = bool(cptr & el2.CPTR_EL2_TFP)
        self._trapped = (frozenset(reads | self._em_reads), frozenset(writes | self._em_writes),
                         frozenset(sys), self.twe, self.tfp or self.fpen != 0b11)
        return self.hooks_stale()

    def hooks_stale(self) -> bool:
        return self._synced != self._trapped

    def _wanted(self, kind: int, enc) -> bool:
        t = self._trapped
        if kind == UC_ARM64_INS_MRS:
            return enc in t[0]
        if kind == UC_ARM64_INS_MSR:
            return enc in t[1]
        if kind == UC_ARM64_INS_SYS:
            return enc in t[2]
        if kind == SITE_WFE:
            return t[3]
        return t[4]  # SITE_FP

    def _hook(self, site: tuple[int, int]) -> None:
        address, kind = site
        if kind < 0:
            self._handles[site] = self.vcpu.hooks.add(UC_HOOK_CODE, HOOK_CODE, self._code_callbacks[kind],
                                                      address, address)
        else:
            self._handles[site] = self.vcpu.hooks.add(UC_HOOK_INSN, INSN_SYS_CB, self._callbacks[kind],
                                                      address, address, kind)

    def sync_hooks(self) -> None:
        """Hook exactly the known sites trapped under the current controls (outside emu_start)."""
        changed = self._synced is None or self._synced[3:] != self._trapped[3:]
        for site, enc in list(self.sites.items()):
            wanted, handle = self._wanted(site[1], enc), self._handles.get(site)
            if wanted and handle is None:
                self._hook(site)
                changed = True
            elif not wanted and handle is not None:
                self.vcpu.hooks.delete(self._handles.pop(site))
                changed = True
            if not wanted and site[1] == SITE_FP:
                del self.sites[site]  # FP sites are collected only while TFP is set
        self._synced = self._trapped
        if changed or self.sites:
            # Translated code looked the hooks up already. Flushed even when no hook changed:
            # ``sites`` keeps the last instruction seen at an address, and a block of another
            # address space with another MRS/MSR there is rescanned only when retranslated.
            self.vcpu.uc.ctl_flush_tb()

    def _scan(self, pc: int, size: int) -> bool:
        """Record the trappable instructions in the block at ``pc``; True when one got a new hook."""
        size = min(size, _MAX_BLOCK)
        if size < 4 or _vmem_read(self._uch, pc, UC_PROT_EXEC, self._buf, size):
            return False
        code = self._buf.raw[:size]
        fp = self._trapped[4] if self._trapped else False
        if not fp and 0xD5 not in code[3::4]:  # every MRS/MSR/SYS/WFE word has 0xD5 on top
            return False
        new = False
        sites, handles = self.sites, self._handles
        for i, word in enumerate(struct.unpack_from(f"<{size // 4}I", code)):
            site = None
            if fp and is_fp_asimd(word):
                site, enc = (pc + 4 * i, SITE_FP), None
            elif word >> 24 != 0xD5:
                continue
            elif word == WFE:
                site, enc = (pc + 4 * i, SITE_WFE), None
            else:
                decoded = decode_sys(word)
                if decoded is not None:
                    enc, _rt, is_read = decoded
                    site = (pc + 4 * i, UC_ARM64_INS_MRS if is_read else UC_ARM64_INS_MSR)
                else:
                    decoded = decode_sys_insn(word)
                    if decoded is None:
                        continue
                    enc = decoded[0]
                    site = (pc + 4 * i, UC_ARM64_INS_SYS)
            sites[site] = enc
            if site not in handles and self._wanted(site[1], enc):
                self._hook(site)
                new = True
        return new


    def prescan(self, pc: int) -> None:
        """Scan the block at ``pc`` before ``emu_start`` (the edge hook does not report it)."""
        try:
            tb_pc, _icount, size = self.vcpu.request_cache(pc)
        except Exception:  # nothing translatable there: the guest will fault on its own
            return
        if self._scan(tb_pc, size):
            self.vcpu.uc.ctl_remove_cache(tb_pc, tb_pc + size)

    def _record(self, key: bytes, reg: int, kind: int) -> tuple:
        table = self._reads if kind == UC_ARM64_INS_MRS else self._writes if kind == UC_ARM64_INS_MSR else self._sys
        enc = table[key]
        op0, op1, crn, crm, op2 = enc
        is_read = kind == UC_ARM64_INS_MRS
        rec = El2Record(esr(ESR_ELx_EC_SYS64, sys64_iss(op0, op1, crn, crm, op2, _RT.get(reg, 31), is_read)))
        args = self._records[(key, reg, kind)] = (rec, sys_reg(*enc), enc)
        return args

    def _trap_state(self):
        """``take(record)``: set ESR/FAR/HPFAR_EL2 (the record), ELR_EL2 = the instruction and
        SPSR_EL2 = PSTATE, with PC and PSTATE read in one engine call; returns PC."""
        vcpu = self.vcpu
        read2, uch, ids, ptrs = _lib.uc_reg_read_batch, self._uch, self._pc_pstate_ids, self._pc_pstate_ptrs
        pc_buf, pstate_buf = self._pc_pstate
        el2regs = vcpu.el2

        def take(record) -> int:
            read2(uch, ids, ptrs, 2)
            vcpu.redirected = False
            el2regs.record = record
            el2regs._ELR_EL2 = pc = pc_buf.value
            el2regs._SPSR_EL2 = pstate_buf.value & 0xFFFF_FFFF
            return pc

        return take

    def _mrs_hook(self):
        reads, records, record = self._reads, self._records, self._record
        emulated, unimplemented = self.emulated_reads, self.unimplemented
        vcpu = self.vcpu
        read_reg, pstate_reg = vcpu.regs.read, UC_ARM64_REG_PSTATE
        dispatch, fail, write = vcpu.vm.dispatch, vcpu.hooks.fail, vcpu.regs.write
        cp_bytes, kind, xzr, mrs = _CP_KEY.from_address, ExitKind.SYSREG, UC_ARM64_REG_XZR, UC_ARM64_INS_MRS
        pc_reg = UC_ARM64_REG_PC
        read2, uch, ids, ptrs = _lib.uc_reg_read_batch, self._uch, self._pc_pstate_ids, self._pc_pstate_ptrs
        pc_buf, pstate_buf = self._pc_pstate
        el2regs = vcpu.el2

        def on_mrs(_uch, reg, cp, _ud):
            try:
                key = cp_bytes(cp).raw
                if key in unimplemented and not read_reg(pstate_reg) & 0xC:
                    return 0  # at EL0: UNDEFINED, as the engine (which lacks the register) makes it
                if key in reads:
                    args = records.get((key, reg, mrs))
                    if args is None:
                        args = record(key, reg, mrs)
                    read2(uch, ids, ptrs, 2)  # the trap record, inline: this is the hot path
                    el2regs.record = args[0]
                    vcpu.redirected = False
                    el2regs._ELR_EL2 = pc = pc_buf.value
                    el2regs._SPSR_EL2 = pstate_buf.value & 0xFFFF_FFFF
                    exit = Exit(kind, REASON, args[0], args[1], 8, False, None)
                    dispatch(vcpu, exit)
                    if vcpu.redirected:
                        _no_redirect(vcpu)
                        return 1
                    if exit.value is not None:
                        if reg != xzr:
                            write(reg, exit.value)
                        if (args[2] in _IMP_DEF or key in unimplemented) and not vcpu.redirected:
                            write(pc_reg, pc + 4)  # no such register in the engine to skip
                        return 1
                fn = emulated.get(key)
                if fn is None:
                    return 0  # the CPU model's own value
                value = fn()
                if reg != xzr:
                    write(reg, value)
                if key in unimplemented:
                    write(pc_reg, vcpu.regs.read(pc_reg) + 4)
                return 1
            except BaseException as exc:  # noqa: BLE001 (re-raised by the vCPU's run)
                fail(exc)
                return 1

        return on_mrs

    def _msr_hook(self):
        writes, records, record = self._writes, self._records, self._record
        emulated, unimplemented = self.emulated_writes, self.unimplemented
        vcpu = self.vcpu
        read_reg, pstate_reg = vcpu.regs.read, UC_ARM64_REG_PSTATE
        dispatch, fail, write = vcpu.vm.dispatch, vcpu.hooks.fail, vcpu.regs.write
        cp_bytes, from_address, kind, msr = _CP_KEY.from_address, ctypes.c_uint64.from_address, ExitKind.SYSREG, UC_ARM64_INS_MSR
        pc_reg = UC_ARM64_REG_PC
        read2, uch, ids, ptrs = _lib.uc_reg_read_batch, self._uch, self._pc_pstate_ids, self._pc_pstate_ptrs
        pc_buf, pstate_buf = self._pc_pstate
        el2regs = vcpu.el2
        uc = vcpu.uc

        def flush_tlb():
            uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

        def on_msr(_uch, reg, cp, _ud):
            try:
                key = cp_bytes(cp).raw
                if key in unimplemented and not read_reg(pstate_reg) & 0xC:
                    return 0  # at EL0: UNDEFINED
                value = from_address(cp + 24).value
                if key in writes:
                    args = records.get((key, reg, msr))
                    if args is None:
                        args = record(key, reg, msr)
                    read2(uch, ids, ptrs, 2)
                    el2regs.record = args[0]
                    vcpu.redirected = False
                    el2regs._ELR_EL2 = pc = pc_buf.value
                    el2regs._SPSR_EL2 = pstate_buf.value & 0xFFFF_FFFF
                    exit = Exit(kind, REASON, args[0], args[1], 8, True, value)
                    dispatch(vcpu, exit)
                    if vcpu.redirected:
                        _no_redirect(vcpu)
                        return 1
                    if exit.value != value:
                        if exit.value is not None:  # the hypervisor wrote another value
                            value = exit.value
                            if key not in emulated:
                                vcpu.sysregs.write(args[2], value)
                                vcpu.uc.ctl_flush_tlb()  # a raw register write does not flush, the MSR would
                                return 1
                        else:
                            if (args[2] in _IMP_DEF or key in unimplemented) and not vcpu.redirected:
                                write(pc_reg, pc + 4)
                            return 1
                fn = emulated.get(key)
                if fn is None:
                    return 0  # the engine performs the guest's write
                if key in unimplemented:
                    write(pc_reg, vcpu.regs.read(pc_reg) + 4)
                fn(value)
                return 1
            except BaseException as exc:  # noqa: BLE001
                fail(exc)
                return 1

        return on_msr

    def _sys_hook(self):
        systab, records, record = self._sys, self._records, self._record
        vcpu = self.vcpu
        dispatch, fail, xreg = vcpu.vm.dispatch, vcpu.hooks.fail, vcpu.xreg_zr
        cp_bytes, kind, sysk = _CP_KEY.from_address, ExitKind.SYSREG, UC_ARM64_INS_SYS
        take = self._trap_state()

        def on_sys(_uch, reg, cp, _ud):
            try:
                key = cp_bytes(cp).raw
                if key not in systab:
                    return 0
                args = records.get((key, reg, sysk))
                if args is None:
                    args = record(key, reg, sysk)
                take(args[0])
                exit = Exit(kind, REASON, args[0], args[1], 8, True, xreg(_RT.get(reg, 31)))
                dispatch(vcpu, exit)
                if vcpu.redirected:
                    _no_redirect(vcpu)
                    return 1
                return 0 if exit.value is not None else 1  # None: the handler did it instead
            except BaseException as exc:  # noqa: BLE001
                fail(exc)
                return 1

        return on_sys

    def _wfe_hook(self):
        vcpu = self.vcpu
        dispatch, fail = vcpu.vm.dispatch, vcpu.hooks.fail
        take, kind, traps, write, pc_reg = self._trap_state(), ExitKind.INSTRUCTION, self, vcpu.regs.write, UC_ARM64_REG_PC

        def on_wfe(_uch, address, _size, _ud):
            try:
                if not traps.twe:
                    return
                take(WFE_RECORD)
                dispatch(vcpu, Exit(kind, "ESR_ELx_EC_WFx", WFE_RECORD))
                if not vcpu.redirected:
                    write(pc_reg, address + 4)  # the WFE completes (kvm_incr_pc)
                if len(vcpu.vm.vcpus) > 1:
                    vcpu.yield_slice()  # kvm_vcpu_on_spin: let the vCPU it waits for run
            except BaseException as exc:  # noqa: BLE001
                fail(exc)

        return on_wfe

    def _fp_hook(self):
        vcpu = self.vcpu
        dispatch, fail, write = vcpu.vm.dispatch, vcpu.hooks.fail, vcpu.regs.write
        take, kind, traps, pc_reg = self._trap_state(), ExitKind.EXCEPTION, self, UC_ARM64_REG_PC

        def on_fp(_uch, address, _size, _ud):
            try:
                if traps.fpen != 0b11:  # CPACR_EL1.FPEN first (D1.x "Configurable instruction
                    # enables and disables, and trap controls"): to the guest's EL1, EC 0x07
                    el = vcpu.regs.read(UC_ARM64_REG_PSTATE) >> 2 & 3
                    if traps.fpen != 0b01 or el == 0:
                        exceptions.take_exception(vcpu, exceptions.SYNC, address, FP_RECORD.ESR_EL2)
                        return
                if not traps.tfp:
                    return
                take(FP_RECORD)
                dispatch(vcpu, Exit(kind, "ESR_ELx_EC_FP_ASIMD", FP_RECORD, address))
                if traps.tfp and not vcpu.redirected:  # still trapped: the guest traps again, as on hardware
                    write(pc_reg, vcpu.regs.read(pc_reg))
            except BaseException as exc:  # noqa: BLE001
                fail(exc)

        return on_fp
