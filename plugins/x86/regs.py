"""x86 registers whose Unicorn value is a structure, read without the binding's ~2 us a call.

``uc_reg_read`` of GDTR/IDTR/LDTR/TR fills a ``uc_x86_mmr`` (selector, base, limit, flags) and
of ``UC_X86_REG_MSR`` a ``uc_x86_msr`` (MSR index in, value out): unicorn/x86.h. Reading them
into reused ctypes structures costs what a general register does (~0.25 us).
"""

from __future__ import annotations

import ctypes

from unicorn import UcError
from unicorn import x86_const as X

from hvsim.core.engine import FastRegs, _lib


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


class StateBatch:
    """General registers and descriptor-table registers read in one ``uc_reg_read_batch`` call:
    the state an exit saves (registers, then GDTR / IDTR / TR as ``mmr`` tuples)."""

    __slots__ = ("_uch", "_ids", "_vals", "_mmrs", "_ptrs", "_n")

    def __init__(self, regs: X86Regs, ids: tuple[int, ...], mmrs: tuple[int, ...]) -> None:
        n = len(ids) + len(mmrs)
        self._uch, self._n = regs._uch, ctypes.c_int(n)
        self._ids = (ctypes.c_int * n)(*ids, *mmrs)
        self._vals = (ctypes.c_uint64 * len(ids))()
        self._mmrs = tuple(_Mmr() for _ in mmrs)
        self._ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(self._vals) + 8 * i for i in range(len(ids))),
                                           *(ctypes.addressof(m) for m in self._mmrs))

    def read(self) -> tuple[list[int], list[tuple[int, int, int, int]]]:
        err = _lib.uc_reg_read_batch(self._uch, self._ids, self._ptrs, self._n)
        if err:
            raise UcError(err)
        return self._vals[:], [(m.selector, m.base, m.limit, m.flags) for m in self._mmrs]
