"""Fast access to a Unicorn engine from exit handlers.

The Python binding's ``reg_read``/``reg_write`` cost ~2 us a call (measured); the binding's
own ctypes entry points ~0.55 us (argument conversion); the same C functions loaded again
without ``argtypes`` and called with a reused buffer ~0.24 us. Exit handlers run inside engine
hooks, so they use :class:`FastRegs`. See ../shared/notes/unicorn-facts.md.
"""

from __future__ import annotations

import ctypes

from unicorn import Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib

_MASK64 = (1 << 64) - 1
_lib = ctypes.CDLL(uclib._name)
_reg_read = _lib.uc_reg_read
_reg_write = _lib.uc_reg_write
_reg_read.restype = _reg_write.restype = ctypes.c_int


class FastRegs:
    """64-bit general and control registers by Unicorn register id, without the binding's checks."""

    __slots__ = ("_uch", "_buf", "_ref", "_read", "_write")

    def __init__(self, uc: Uc) -> None:
        self._uch = ctypes.c_void_p(uc._uch.value)
        self._buf = ctypes.c_uint64()
        self._ref = ctypes.byref(self._buf)
        self._read = _reg_read
        self._write = _reg_write

    def read(self, reg: int) -> int:
        err = self._read(self._uch, reg, self._ref)
        if err:
            raise UcError(err)
        return self._buf.value

    def write(self, reg: int, value: int) -> None:
        self._buf.value = value & _MASK64
        err = self._write(self._uch, reg, self._ref)
        if err:
            raise UcError(err)
