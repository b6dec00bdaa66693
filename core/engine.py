"""Fast access to a Unicorn engine from exit handlers.

The Python binding's ``reg_read``/``reg_write`` cost ~2 us a call (measured); the binding's
own ctypes entry points ~0.55 us (argument conversion); the same C functions loaded again
without ``argtypes`` and called with a reused buffer ~0.24 us. Exit handlers run inside engine
hooks, so they use :class:`FastRegs`. See ../shared/notes/unicorn-facts.md.
"""

from __future__ import annotations

import ctypes
import functools

from unicorn import Uc, UcError
from unicorn.unicorn_py3.unicorn import uclib

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
        buf = self._buf
        buf.value = 0  # the engine writes only a narrower register's own bytes (PSTATE: 32 bits)
        err = self._read(self._uch, reg, self._ref)
        if err:
            raise UcError(err)
        return buf.value

    def read_low32(self, reg: int) -> int:
        """Bits 31:0 of ``reg`` (a 32-bit register such as arm PSTATE), without clearing the
        buffer first: the hot paths' cheaper read."""
        err = self._read(self._uch, reg, self._ref)
        if err:
            raise UcError(err)
        return self._buf.value & 0xFFFF_FFFF

    def write(self, reg: int, value: int) -> None:
        self._buf.value = value  # ctypes wraps to 64 bits, negative values included
        err = self._write(self._uch, reg, self._ref)
        if err:
            raise UcError(err)

    def batch(self, regs: tuple[int, ...]) -> "RegBatch":
        """A reusable batch of registers, read or written in one C call (``uc_reg_*_batch``)."""
        return RegBatch(self._uch, regs)


class RegBatch:
    """``uc_reg_read_batch`` / ``uc_reg_write_batch`` over a fixed register list: one call where
    separate reads or writes would cost ~0.25 us each."""

    __slots__ = ("_uch", "_ids", "_vals", "_ptrs", "_n")

    def __init__(self, uch, regs: tuple[int, ...]) -> None:
        n = len(regs)
        self._uch, self._n = uch, ctypes.c_int(n)
        self._ids = (ctypes.c_int * n)(*regs)
        self._vals = (ctypes.c_uint64 * n)()
        self._ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(self._vals) + 8 * i for i in range(n)))

    def read(self) -> list[int]:
        err = _lib.uc_reg_read_batch(self._uch, self._ids, self._ptrs, self._n)
        if err:
            raise UcError(err)
        return self._vals[:]

    def write(self, values) -> None:
        vals = self._vals
        for i, v in enumerate(values):
            vals[i] = v & 0xFFFF_FFFF_FFFF_FFFF
        err = _lib.uc_reg_write_batch(self._uch, self._ids, self._ptrs, self._n)
        if err:
            raise UcError(err)

    def preset(self, values) -> "functools.partial":
        """A call that writes these fixed ``values`` in one C call, with no Python per register:
        for answers written again and again (CPUID leaves). Returns the engine's error code."""
        n = self._n.value
        vals = (ctypes.c_uint64 * n)(*(v & 0xFFFF_FFFF_FFFF_FFFF for v in values))
        ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(vals) + 8 * i for i in range(n)))
        call = functools.partial(_lib.uc_reg_write_batch, self._uch, self._ids, ptrs, self._n)
        call.keep = vals  # type: ignore[attr-defined]  # the pointers point into it
        return call


# Hooks registered through Unicorn's C API, without the Python binding's wrapper: the binding
# wraps every callback in generic Python frames (measured: 0.37-0.43 us per empty hook call,
# against 0.14-0.17 us for a bare CFUNCTYPE). The exits hvsim completes inside the engine (IN,
# OUT, CPUID, HVC, MMIO) use these. Callbacks must not raise: they catch their own exceptions
# and hand them to RawHooks.fail, which stops the engine; the vCPU re-raises after emu_start.
# C signatures: unicorn.h's uc_cb_insn_out_t, uc_cb_insn_in_t, uc_cb_insn_cpuid_t,
# uc_cb_hookintr_t, uc_cb_hookcode_t, uc_cb_eventmem_t, uc_cb_mmio_read_t, uc_cb_mmio_write_t.
from ctypes import CFUNCTYPE, c_bool, c_int, c_int64, c_size_t, c_uint, c_uint32, c_uint64, c_void_p  # noqa: E402

INSN_OUT_CB = CFUNCTYPE(None, c_void_p, c_uint32, c_int, c_uint32, c_void_p)
INSN_IN_CB = CFUNCTYPE(c_uint32, c_void_p, c_uint32, c_int, c_void_p)
INSN_SKIP_CB = CFUNCTYPE(c_int, c_void_p, c_void_p)  # CPUID: return 1 to skip the engine's own
HOOK_INTR = CFUNCTYPE(None, c_void_p, c_uint32, c_void_p)
HOOK_CODE = CFUNCTYPE(None, c_void_p, c_uint64, c_uint32, c_void_p)
HOOK_MEM_EVENT = CFUNCTYPE(c_bool, c_void_p, c_int, c_uint64, c_int, c_int64, c_void_p)
MMIO_READ = CFUNCTYPE(c_uint64, c_void_p, c_uint64, c_uint, c_void_p)
MMIO_WRITE = CFUNCTYPE(None, c_void_p, c_uint64, c_uint, c_uint64, c_void_p)

_emu_stop = _lib.uc_emu_stop


class RawHooks:
    """Hooks and MMIO ranges of one engine, with the C function pointers kept alive, and the
    first exception a callback raised."""

    def __init__(self, uc: Uc) -> None:
        self._uch = c_void_p(uc._uch.value)
        self._keep: dict[int, object] = {}
        self._mmio: list[object] = []
        self.error: BaseException | None = None

    def add(self, htype: int, ctype, fn, begin: int = 1, end: int = 0, *extra: int) -> int:
        """``uc_hook_add`` with ``fn`` wrapped as ``ctype``; begin > end hooks everything;
        ``extra`` is the instruction id for ``UC_HOOK_INSN``."""
        fptr = ctype(fn)
        handle = c_size_t()
        err = _lib.uc_hook_add(self._uch, ctypes.byref(handle), c_int(htype), fptr, None, c_uint64(begin),
                               c_uint64(end), *(c_int(x) for x in extra))
        if err:
            raise UcError(err)
        self._keep[handle.value] = fptr
        return handle.value

    def add_insn(self, ctype, fn, insn: int) -> int:
        from unicorn import UC_HOOK_INSN

        return self.add(UC_HOOK_INSN, ctype, fn, 1, 0, insn)

    def delete(self, handle: int) -> None:
        err = _lib.uc_hook_del(self._uch, c_size_t(handle))
        if err:
            raise UcError(err)
        self._keep.pop(handle, None)

    def mmio_map(self, base: int, size: int, read_fn, write_fn) -> None:
        fptrs = (MMIO_READ(read_fn), MMIO_WRITE(write_fn))
        err = _lib.uc_mmio_map(self._uch, c_uint64(base), c_size_t(size), fptrs[0], None, fptrs[1], None)
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

    def reraise(self) -> None:
        exc = self.take_error()
        if exc is not None:
            raise exc


class SliceTimer:
    """Ends a vCPU's time slice from a watchdog thread with ``uc_emu_stop``.

    ``emu_start(..., timeout=)`` starts and joins a timer thread on every call: measured 160 us
    per call against 9 us without it, which every exit that leaves the engine (a fault, HLT)
    would pay. One long-lived thread serves every engine of the process (the run loop enters one
    engine at a time); ``emu_start`` runs without the GIL, so the thread gets to run. A stop
    that arrives after the engine returned is a no-op (measured). A stop that lands in the block
    that ends in HLT makes the engine return as for the HLT alone: the x86 vCPU tells them apart
    by an exact-address hook on the HLT (plugins/x86/traps.py, which also keeps RIP right for the
    IN/OUT/CPUID hooks of such blocks).
    """

    def __init__(self) -> None:
        import threading

        self._cv = threading.Condition()
        self._deadline: float | None = None
        self._uch = None
        self._expired = False
        self._waiting_until: float | None = None
        threading.Thread(target=self._watch, name="hvsim-slice-timer", daemon=True).start()

    def arm(self, uch, seconds: float) -> None:
        import time

        with self._cv:
            self._uch, self._expired = uch, False
            deadline = time.monotonic() + max(seconds, 0.0)
            # Wake the thread only if it would sleep past the new deadline (notifying on every
            # entry cost more than it saved, measured by the event work).
            wake = self._waiting_until is None or deadline < self._waiting_until
            self._deadline = deadline
            if wake:
                self._cv.notify()

    def disarm(self) -> bool:
        """Stop watching; True if the slice ran out (the engine was asked to stop)."""
        with self._cv:
            self._deadline = None
            return self._expired

    @property
    def expired(self) -> bool:
        return self._expired

    def _watch(self) -> None:
        import time

        with self._cv:
            while True:
                if self._deadline is None:
                    self._waiting_until = None
                    self._cv.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._waiting_until = self._deadline
                    self._cv.wait(remaining)
                    continue
                self._expired = True
                self._deadline = None
                _emu_stop(self._uch)


_timer: SliceTimer | None = None


def slice_timer() -> SliceTimer:
    """The process's slice timer, started on first use."""
    global _timer
    if _timer is None:
        _timer = SliceTimer()
    return _timer
