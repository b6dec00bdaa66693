"""System registers by their Arm ARM encodings, and a fast way to reach them in Unicorn.

An encoding is ``(op0, op1, CRn, CRm, op2)`` as the Arm ARM writes ``S3_4_C1_C1_0`` (D23,
"AArch64 System Register Descriptions"). Unicorn reaches registers without an id of their
own through ``UC_ARM64_REG_CP_REG`` and a ``uc_arm64_cp_reg`` struct; the Python binding's
path costs ~2 us a call, so :class:`SysRegs` calls the C function directly with one reused
struct, as :class:`hvsim.core.engine.FastRegs` does for the general registers.

A write through ``UC_ARM64_REG_CP_REG`` also makes Unicorn rebuild its cached CPU state
(hflags), which a PSTATE write alone does not: exception entry depends on that.
"""

from __future__ import annotations

import ctypes

from unicorn import Uc, UcError
from unicorn.arm64_const import UC_ARM64_REG_CP_REG
from unicorn.unicorn_py3.unicorn import uclib

_lib = ctypes.CDLL(uclib._name)
_reg_read = _lib.uc_reg_read
_reg_write = _lib.uc_reg_write

# (op0, op1, CRn, CRm, op2)
SCR_EL3 = (3, 6, 1, 1, 0)
HCR_EL2 = (3, 4, 1, 1, 0)
VPIDR_EL2 = (3, 4, 0, 0, 0)
VMPIDR_EL2 = (3, 4, 0, 0, 5)
SCTLR_EL1 = (3, 0, 1, 0, 0)
TTBR0_EL1 = (3, 0, 2, 0, 0)
TTBR1_EL1 = (3, 0, 2, 0, 1)
TCR_EL1 = (3, 0, 2, 0, 2)
SPSR_EL1 = (3, 0, 4, 0, 0)
ELR_EL1 = (3, 0, 4, 0, 1)
ESR_EL1 = (3, 0, 5, 2, 0)
FAR_EL1 = (3, 0, 6, 0, 0)
VBAR_EL1 = (3, 0, 12, 0, 0)
MPIDR_EL1 = (3, 0, 0, 0, 5)
ACTLR_EL1 = (3, 0, 1, 0, 1)
AFSR0_EL1 = (3, 0, 5, 1, 0)
AFSR1_EL1 = (3, 0, 5, 1, 1)
MAIR_EL1 = (3, 0, 10, 2, 0)
AMAIR_EL1 = (3, 0, 10, 3, 0)
CONTEXTIDR_EL1 = (3, 0, 13, 0, 1)
REVIDR_EL1 = (3, 0, 0, 0, 6)
AIDR_EL1 = (3, 1, 0, 0, 7)
CCSIDR_EL1 = (3, 1, 0, 0, 0)
CLIDR_EL1 = (3, 1, 0, 0, 1)
CSSELR_EL1 = (3, 2, 0, 0, 0)
CTR_EL0 = (3, 3, 0, 0, 1)
ID_AA64PFR0_EL1 = (3, 0, 0, 4, 0)
ID_AA64ISAR0_EL1 = (3, 0, 0, 6, 0)
ID_AA64MMFR0_EL1 = (3, 0, 0, 7, 0)
MIDR_EL1 = (3, 0, 0, 0, 0)
CPACR_EL1 = (3, 0, 1, 0, 2)
CPACR_EL1_FPEN_RESET = 0b00  # FP/SIMD trapped at EL1 and EL0 until the guest enables it (QEMU's reset)
CPTR_EL2 = (3, 4, 1, 1, 2)
CNTVOFF_EL2 = (3, 4, 14, 0, 3)
PMCR_EL0 = (3, 3, 9, 12, 0)
# Debug registers (op0 = 2), D23.3 "Debug registers".
MDSCR_EL1 = (2, 0, 0, 2, 2)
MDCCINT_EL1 = (2, 0, 0, 2, 0)
MDCCSR_EL0 = (2, 3, 0, 1, 0)
DBGDTR_EL0 = (2, 3, 0, 4, 0)
DBGDTRRX_EL0 = (2, 3, 0, 5, 0)  # DBGDTRTX_EL0 for writes
OSDTRRX_EL1 = (2, 0, 0, 0, 2)
OSDTRTX_EL1 = (2, 0, 0, 3, 2)
OSECCR_EL1 = (2, 0, 0, 6, 2)
DBGBVR0_EL1 = (2, 0, 0, 0, 4)
DBGCLAIMSET_EL1 = (2, 0, 7, 8, 6)
DBGCLAIMCLR_EL1 = (2, 0, 7, 9, 6)
DBGAUTHSTATUS_EL1 = (2, 0, 7, 14, 6)
OSLAR_EL1 = (2, 0, 1, 0, 4)
OSLSR_EL1 = (2, 0, 1, 1, 4)
OSDLR_EL1 = (2, 0, 1, 3, 4)
DBGPRCR_EL1 = (2, 0, 1, 4, 4)
MDRAR_EL1 = (2, 0, 1, 0, 0)
# The generic timer (D23.8 "Generic Timer registers").
CNTFRQ_EL0 = (3, 3, 14, 0, 0)
CNTPCT_EL0 = (3, 3, 14, 0, 1)
CNTVCT_EL0 = (3, 3, 14, 0, 2)
CNTP_TVAL_EL0 = (3, 3, 14, 2, 0)
CNTP_CTL_EL0 = (3, 3, 14, 2, 1)
CNTP_CVAL_EL0 = (3, 3, 14, 2, 2)
CNTV_TVAL_EL0 = (3, 3, 14, 3, 0)
CNTV_CTL_EL0 = (3, 3, 14, 3, 1)
CNTV_CVAL_EL0 = (3, 3, 14, 3, 2)
FPCR = (3, 3, 4, 4, 0)
FPSR = (3, 3, 4, 4, 1)

# SCR_EL3 (D23.2 "SCR_EL3"): NS, HCE (HVC enabled), RW (the next lower level is AArch64).
SCR_EL3_NS = 1 << 0
SCR_EL3_HCE = 1 << 8
SCR_EL3_RW = 1 << 10
# HCR_EL2.RW: EL1 is AArch64. Without it and SCR_EL3.RW Unicorn treats EL1 as AArch32 in
# places: HVC arrives as an undefined instruction and a guest MMU faults every fetch.
HCR_EL2_RW = 1 << 31

SCTLR_EL1_M = 1 << 0  # stage-1 MMU enable


class _CpReg(ctypes.Structure):
    _fields_ = [("crn", ctypes.c_uint32), ("crm", ctypes.c_uint32), ("op0", ctypes.c_uint32),
                ("op1", ctypes.c_uint32), ("op2", ctypes.c_uint32), ("val", ctypes.c_uint64)]


class SysRegs:
    """Read and write system registers of one engine by encoding."""

    __slots__ = ("_uch", "_reg", "_ref")

    def __init__(self, uc: Uc) -> None:
        self._uch = ctypes.c_void_p(uc._uch.value)
        self._reg = _CpReg()
        self._ref = ctypes.byref(self._reg)

    def _select(self, enc: tuple[int, int, int, int, int]) -> None:
        r = self._reg
        r.op0, r.op1, r.crn, r.crm, r.op2 = enc

    def read(self, enc: tuple[int, int, int, int, int]) -> int:
        self._select(enc)
        err = _reg_read(self._uch, UC_ARM64_REG_CP_REG, self._ref)
        if err:
            raise UcError(err)
        return self._reg.val

    def write(self, enc: tuple[int, int, int, int, int], value: int) -> None:
        self._select(enc)
        self._reg.val = value & 0xFFFF_FFFF_FFFF_FFFF
        err = _reg_write(self._uch, UC_ARM64_REG_CP_REG, self._ref)
        if err:
            raise UcError(err)
