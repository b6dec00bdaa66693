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


# Hook callbacks registered with the C library directly. The binding wraps every callback in
# two Python frames (~0.26 us per call, measured); the exits that run millions of times a
# second (IN, OUT, CPUID) use these instead. A callback must catch its own exceptions
# (see RawHooks.fail): an exception escaping a ctypes callback is printed and lost.
INSN_OUT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                               ctypes.c_void_p)
INSN_IN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p)
INSN_SKIP_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)  # CPUID: return 1 to skip
_hook_add = _lib.uc_hook_add


class RawHooks:
    """Registers C-level hooks on one engine and carries the first exception a hook raised."""

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self._uch = ctypes.c_void_p(uc._uch.value)
        self._keep: list = []  # the CFUNCTYPE objects must outlive the engine's use of them
        self.error: BaseException | None = None

    def add_insn(self, prototype, fn, insn: int) -> None:
        cfn = prototype(fn)
        handle = ctypes.c_size_t()
        from unicorn import UC_HOOK_INSN

        err = _hook_add(self._uch, ctypes.byref(handle), ctypes.c_int(UC_HOOK_INSN), cfn, ctypes.c_void_p(0),
                        ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(insn))
        if err:
            raise UcError(err)
        self._keep.append(cfn)

    def fail(self, exc: BaseException) -> None:
        """Called by a hook's ``except``: remember the error and stop the engine."""
        if self.error is None:
            self.error = exc
        self.uc.emu_stop()

    def reraise(self) -> None:
        if self.error is not None:
            exc, self.error = self.error, None
            raise exc
