"""Unicorn callbacks registered through its C API, without the Python binding's wrapper.

The binding wraps every callback in a generic Python layer; for the exits hvsim completes
inside the engine (HVC, MMIO) that layer costs more than the rest of the exit (measured on
HVC: 0.37 us per empty hook through the binding, 0.14 us for a bare ``CFUNCTYPE``).
Callbacks given here must not raise: they catch their own exceptions and hand them to
:meth:`RawHooks.fail`, which stops the engine; the vCPU re-raises after ``emu_start``.
The C signatures are unicorn.h's ``uc_cb_hookintr_t``, ``uc_cb_hookcode_t``,
``uc_cb_eventmem_t``, ``uc_cb_mmio_read_t`` and ``uc_cb_mmio_write_t``.
"""

from __future__ import annotations

import ctypes
from ctypes import CFUNCTYPE, c_bool, c_int, c_int64, c_size_t, c_uint, c_uint32, c_uint64, c_void_p

from unicorn import Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib

HOOK_INTR = CFUNCTYPE(None, c_void_p, c_uint32, c_void_p)
HOOK_CODE = CFUNCTYPE(None, c_void_p, c_uint64, c_uint32, c_void_p)
HOOK_MEM_EVENT = CFUNCTYPE(c_bool, c_void_p, c_int, c_uint64, c_int, c_int64, c_void_p)
MMIO_READ = CFUNCTYPE(c_uint64, c_void_p, c_uint64, c_uint, c_void_p)
MMIO_WRITE = CFUNCTYPE(None, c_void_p, c_uint64, c_uint, c_uint64, c_void_p)

_lib = ctypes.CDLL(uclib._name)
_emu_stop = _lib.uc_emu_stop


class RawHooks:
    """Hooks and MMIO ranges of one engine, with the C function pointers kept alive."""

    def __init__(self, uc: Uc) -> None:
        self._uch = c_void_p(uc._uch.value)
        self._keep: dict[int, object] = {}
        self._mmio: list[object] = []
        self.error: BaseException | None = None

    def add(self, htype: int, ctype, fn, begin: int = 1, end: int = 0) -> int:
        """``uc_hook_add`` with ``fn`` wrapped as ``ctype``; begin > end hooks everything."""
        fptr = ctype(fn)
        handle = c_size_t()
        err = _lib.uc_hook_add(self._uch, ctypes.byref(handle), htype, fptr, None,
                               c_uint64(begin), c_uint64(end))
        if err:
            raise UcError(err)
        self._keep[handle.value] = fptr
        return handle.value

    def delete(self, handle: int) -> None:
        err = _lib.uc_hook_del(self._uch, c_size_t(handle))
        if err:
            raise UcError(err)
        self._keep.pop(handle, None)

    def mmio_map(self, base: int, size: int, read_fn, write_fn) -> None:
        fptrs = (MMIO_READ(read_fn), MMIO_WRITE(write_fn))
        err = _lib.uc_mmio_map(self._uch, c_uint64(base), c_size_t(size), fptrs[0], None,
                               fptrs[1], None)
        if err:
            raise UcError(err)
        self._mmio.append(fptrs)

    def fail(self, exc: BaseException) -> None:
        """Record the first exception raised inside a callback and stop the engine."""
        if self.error is None:
            self.error = exc
        _emu_stop(self._uch)

    def take_error(self) -> BaseException | None:
        exc, self.error = self.error, None
        return exc
