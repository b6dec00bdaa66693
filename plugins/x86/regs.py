"""x86 registers whose Unicorn value is a structure, read without the binding's ~2 us a call.

``uc_reg_read`` of GDTR/IDTR/LDTR/TR fills a ``uc_x86_mmr`` (selector, base, limit, flags) and
of ``UC_X86_REG_MSR`` a ``uc_x86_msr`` (MSR index in, value out): unicorn/x86.h. Reading them
into reused ctypes structures costs what a general register does (~0.25 us).
"""

from __future__ import annotations

import ctypes

from unicorn import UcError
from unicorn import x86_const as X

from hvsim.core.engine import FastRegs


class _Mmr(ctypes.Structure):
    _fields_ = [("selector", ctypes.c_uint16), ("base", ctypes.c_uint64), ("limit", ctypes.c_uint32),
                ("flags", ctypes.c_uint32)]


class _Msr(ctypes.Structure):
    _fields_ = [("rid", ctypes.c_uint32), ("value", ctypes.c_uint64)]


class X86Regs(FastRegs):
    """:class:`FastRegs` plus the descriptor-table registers and MSRs."""

    __slots__ = ("_mmr", "_mmr_ref", "_msr", "_msr_ref")

    def __init__(self, uc) -> None:
        super().__init__(uc)
        self._mmr = _Mmr()
        self._mmr_ref = ctypes.byref(self._mmr)
        self._msr = _Msr()
        self._msr_ref = ctypes.byref(self._msr)

    def mmr(self, reg: int) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of GDTR, IDTR, LDTR or TR, as ``Uc.reg_read`` gives."""
        err = self._read(self._uch, reg, self._mmr_ref)
        if err:
            raise UcError(err)
        m = self._mmr
        return m.selector, m.base, m.limit, m.flags

    def msr(self, index: int) -> int:
        """The value of MSR ``index`` (what ``Uc.reg_read(UC_X86_REG_MSR, index)`` gives)."""
        self._msr.rid = index
        err = self._read(self._uch, X.UC_X86_REG_MSR, self._msr_ref)
        if err:
            raise UcError(err)
        return self._msr.value
