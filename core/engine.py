"""Fast access to a Unicorn engine from exit handlers.

The Python binding's ``reg_read``/``reg_write`` cost ~2 us a call (measured); the binding's
own ctypes entry points ~0.55 us (argument conversion); the same C functions loaded again
without ``argtypes`` and called with a reused buffer ~0.24 us. Exit handlers run inside engine
hooks, so they use :class:`FastRegs`. See docs/unicorn-notes.md.
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


class _Tb(ctypes.Structure):
    _fields_ = [("pc", ctypes.c_uint64), ("icount", ctypes.c_uint16), ("size", ctypes.c_uint16)]


_CTL_TB_REQUEST_CACHE = ctypes.c_int32((3 << 30 | 2 << 26 | 8) - (1 << 32))  # UC_CTL_IO_READ_WRITE, 2 args


class TbRequest:
    """``uc_ctl(UC_CTL_TB_REQUEST_CACHE)``: the translation block at an address (translated now
    if it was not), as ``Uc.ctl_request_cache`` gives, without the binding's per-call encoding,
    lock and tuple conversion (the run loop asks at every engine entry)."""

    __slots__ = ("_uch", "_tb", "_ref", "_pc")

    def __init__(self, uc: Uc) -> None:
        self._uch = ctypes.c_void_p(uc._uch.value)
        self._tb = _Tb()
        self._ref = ctypes.byref(self._tb)
        self._pc = ctypes.c_uint64()

    def __call__(self, address: int) -> tuple[int, int, int]:
        """(pc, instruction count, size) of the block; UcError where nothing translates."""
        self._pc.value = address
        err = _lib.uc_ctl(self._uch, _CTL_TB_REQUEST_CACHE, self._pc, self._ref)
        if err:
            raise UcError(err)
        tb = self._tb
        return tb.pc, tb.icount, tb.size


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
    engine at a time); ``emu_start`` runs without the GIL, so the thread gets to run.

    Where the stop lands: hvsim's patched Unicorn (tools/unicorn-2.1.4-hvsim.patch) honours a
    stop only at the start of a translation block or before an instruction with a code hook,
    where no part of any instruction has run, so a stop from this thread can never make a
    completed instruction run again (the stock engine also stopped after guest loads and
    stores and then re-ran the instruction). ``uc_emu_start`` clears a stop requested before it
    began, so once the slice is over the thread asks again every :data:`RESEND_S` until the
    vCPU disarms it. A stop that arrives after the engine returned is dropped at the next
    ``emu_start`` (measured). A stop that lands in the block that ends in HLT makes the engine
    return as for the HLT alone: the x86 vCPU tells them apart by an exact-address hook on the
    HLT (plugins/x86/traps.py).

    :meth:`interrupt` (SIGINT, see :class:`SigintWatch`) ends the current slice and every later
    one at once, until :meth:`clear_interrupt`.
    """

    RESEND_S = 0.0005

    def __init__(self) -> None:
        import threading

        self._cv = threading.Condition()
        self._deadline: float | None = None
        self._uch = None
        self._expired = False
        self._waiting_until: float | None = None
        self.interrupted = threading.Event()  # set by interrupt(); naps end when it is
        self._poked = threading.Event()  # set by poke() (console input): ends the current nap
        self.stops = 0  # slices this thread ended (tests and benchmarks count them)
        self.resends = 0  # stops asked again because the engine had not left yet
        threading.Thread(target=self._watch, name="hvsim-slice-timer", daemon=True).start()

    def arm(self, uch, seconds: float) -> None:
        import time

        with self._cv:
            self._uch, self._expired = uch, False
            deadline = time.monotonic() + max(seconds, 0.0)
            if self.interrupted.is_set():
                deadline = 0.0
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

    def poke(self) -> None:
        """End the run loop's current nap (input arrived for a halted guest); safe from any thread."""
        self._poked.set()

    def interrupt(self) -> None:
        """End the running slice now and make every later one end at once."""
        self._poked.set()
        with self._cv:
            self.interrupted.set()
            if self._deadline is not None:
                self._deadline = 0.0
                self._cv.notify()

    def clear_interrupt(self) -> None:
        self.interrupted.clear()

    def nap(self, seconds: float) -> None:
        """Sleep in the run loop (a halted vCPU waiting for its timer); an interrupt or a poke
        (console input) ends it."""
        if seconds > 0 and not self.interrupted.is_set():
            self._poked.wait(seconds)
            self._poked.clear()

    def _watch(self) -> None:
        import time

        with self._cv:
            while True:
                if self._deadline is None:
                    self._waiting_until = None
                    self._cv.wait()
                    continue
                now = time.monotonic()
                remaining = self._deadline - now
                if remaining > 0:
                    self._waiting_until = self._deadline
                    self._cv.wait(remaining)
                    continue
                if not self._expired:
                    self._expired = True
                    self.stops += 1
                else:
                    self.resends += 1
                _emu_stop(self._uch)
                self._deadline = now + self.RESEND_S  # until disarmed: the first may have been dropped


_timer: SliceTimer | None = None


def slice_timer() -> SliceTimer:
    """The process's slice timer, started on first use."""
    global _timer
    if _timer is None:
        _timer = SliceTimer()
    return _timer


class SigintWatch:
    """While a VM runs on the main thread: the first SIGINT calls ``on_interrupt`` at once, from
    a thread of its own (the main thread may be inside ``emu_start`` for a whole slice, and a
    Python signal handler only runs when it comes back); the second ends the process with status
    130. Python's C-level handler writes the signal number to a pipe (``signal.set_wakeup_fd``),
    which the thread reads. Elsewhere than on the main thread it does nothing."""

    # One kill(SIGINT) was seen to put two signal bytes in the pipe (7 of 80 runs under pytest):
    # only a Ctrl-C this long after the first counts as the second.
    SECOND_AFTER_S = 0.3

    def __init__(self, on_interrupt) -> None:
        self.on_interrupt = on_interrupt
        self._saved = None

    def __enter__(self) -> "SigintWatch":
        import os
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        r, w = os.pipe()
        os.set_blocking(w, False)
        try:
            old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            old_handler = signal.signal(signal.SIGINT, lambda _sig, _frame: None)
        except (ValueError, OSError):  # not allowed here (an embedding interpreter): no watch
            os.close(r)
            os.close(w)
            return self
        self._saved = (old_fd, old_handler, r, w)
        threading.Thread(target=self._read, args=(r,), name="hvsim-sigint", daemon=True).start()
        return self

    def _read(self, r: int) -> None:
        import os
        import signal
        import time

        first = None
        while True:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum != signal.SIGINT:
                    continue
                now = time.monotonic()
                if first is None:
                    first = now
                    self.on_interrupt()
                elif now - first >= self.SECOND_AFTER_S:
                    os._exit(130)  # a second Ctrl-C: now, whatever the run is doing

    def __exit__(self, *exc) -> None:
        import os
        import signal

        if self._saved is None:
            return
        old_fd, old_handler, r, w = self._saved
        self._saved = None
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGINT, old_handler)
        os.close(w)  # the reader sees end-of-file and ends
        os.close(r)


def exact_stops_level() -> int:
    """The patch level of hvsim's Unicorn (tools/unicorn-2.1.4-hvsim.patch), 0 for a stock one."""
    try:
        fn = _lib.uc_hvsim_exact_stops
    except AttributeError:
        return 0
    fn.restype = ctypes.c_int
    return fn()


EXACT_STOPS_NEEDED = 8


def require_exact_stops() -> None:
    """Refuse to run guests on a Unicorn without hvsim's patch: a stock engine re-runs
    completed instructions after a stop, so no result could be trusted."""
    if exact_stops_level() < EXACT_STOPS_NEEDED:
        from .errors import HvsimError

        raise HvsimError(
            f"the installed Unicorn ({uclib._name}) lacks hvsim's patch (exact engine stops, "
            f"level {EXACT_STOPS_NEEDED}), without which a stopped guest can run an instruction twice: install it with "
            "`make install`, or `python tools/build_unicorn.py PYTHON` for another environment")
