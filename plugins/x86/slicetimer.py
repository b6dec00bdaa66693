"""Ending a vCPU's time slice without ``emu_start(timeout=...)``.

Unicorn implements ``timeout`` by starting a new host thread on every ``emu_start`` (measured:
~120-150 us per call against ~1.4 us without), which every entry that follows an exit leaving
the engine (HLT, windows, the event stops of plugins/x86/events.py) would pay. One process-wide
thread does the same job for every engine: it waits for the earliest deadline and calls
``uc_emu_stop`` on that engine, as Unicorn's own timer thread does. ``disarm`` returns only when
no stop for that engine is in flight; a stop that lands after ``emu_start`` returned is
harmless (the next ``emu_start`` clears it, measured).
"""

from __future__ import annotations

import ctypes
import threading
import time

from hvsim.core.engine import _lib

_emu_stop = _lib.uc_emu_stop
_emu_stop.argtypes = [ctypes.c_void_p]


class _Timer:
    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.deadlines: dict[int, tuple[float, object]] = {}  # id(slot) -> (deadline, slot)
        self.thread: threading.Thread | None = None
        self.waiting_until: float | None = None  # what the thread sleeps toward (None: idle)

    def arm(self, slot, seconds: float) -> None:
        with self.cv:
            slot.fired = False
            deadline = time.monotonic() + seconds
            self.deadlines[id(slot)] = (deadline, slot)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="hvsim-slice-timer", daemon=True)
                self.thread.start()
            # Wake the thread only if it would sleep past this deadline: an entry then costs
            # no thread switch (measured: notifying on every entry cost more than it saved).
            if self.waiting_until is None or deadline < self.waiting_until:
                self.cv.notify()

    def disarm(self, slot) -> None:
        with self.cv:
            self.deadlines.pop(id(slot), None)

    def _run(self) -> None:
        with self.cv:
            while True:
                if not self.deadlines:
                    self.waiting_until = None
                    self.cv.wait()
                    continue
                key, (deadline, slot) = min(self.deadlines.items(), key=lambda kv: kv[1][0])
                left = deadline - time.monotonic()
                if left > 0:
                    self.waiting_until = deadline
                    self.cv.wait(left)
                    continue
                del self.deadlines[key]
                slot.fired = True
                _emu_stop(slot.handle)


_TIMER = _Timer()


class SliceTimer:
    """One engine's slice deadline: ``arm(seconds)`` before ``emu_start``, ``disarm()`` after;
    ``fired`` says the slice ran out."""

    def __init__(self, uc) -> None:
        self.handle = ctypes.c_void_p(uc._uch.value)
        self.fired = False

    def arm(self, seconds: float) -> None:
        _TIMER.arm(self, max(seconds, 0.0))

    def disarm(self) -> None:
        _TIMER.disarm(self)
