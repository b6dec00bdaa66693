"""Guest-visible time, and how a vCPU's slice in the engine ends.

By default guest time is the host's: the arm64 counter is CLOCK_MONOTONIC, the x86 TSC is the
host's (RDTSC runs in the engine), slices end by the wall-clock slice timer, and so SMP
interleaving and timer interrupts differ from run to run.

With ``VM(..., deterministic=True)`` (``hvsim run --deterministic``) guest time is virtual,
advanced by guest progress alone, as QEMU's ``-icount`` does in its round-robin mode: the VM
has one clock, and every translation block a vCPU starts advances it by :data:`BLOCK_NS`
(hvsim's Unicorn counts block starts in the check it already makes at each one). Slices are
block budgets, the engine stops exactly before the block past the budget; the timers' deadlines,
CNTPCT/CNTVCT and RDTSC/RDTSCP are read from that clock; a vCPU that waits for a timer with
nothing else runnable moves the clock to the deadline instead of sleeping. The same image,
arguments and input then give the same serial output, the same exits in the same order and
the same memory on every run and every machine. Only ``timeout`` and SIGINT, which end a run,
stay on the wall clock.
"""

from __future__ import annotations

import ctypes
import math
import time

from .engine import _lib, slice_timer

BLOCK_NS = 16  # virtual time per translation block started: one tick of arm's 62.5 MHz counter
VIRTUAL_TSC_HZ = 1_000_000_000  # the x86 TSC in deterministic mode: one tick per virtual ns

# hvsim's Unicorn only (core.engine.require_exact_stops refuses a VM on any other)
_blocks = getattr(_lib, "uc_hvsim_blocks", None)
_set_limit = getattr(_lib, "uc_hvsim_set_block_limit", None)
if _blocks is not None and _set_limit is not None:
    _blocks.restype, _blocks.argtypes = ctypes.c_uint64, [ctypes.c_void_p]
    _set_limit.restype, _set_limit.argtypes = None, [ctypes.c_void_p, ctypes.c_uint64]


class Clock:
    """The host's time (the default)."""

    deterministic = False

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def now(self) -> float:
        return self.now_ns() / 1e9

    def wait_until_ns(self, deadline_ns: int) -> None:
        """Nothing else can run until ``deadline_ns``: let it come (SIGINT ends the wait)."""
        slice_timer().nap((deadline_ns - self.now_ns()) / 1e9)

    def attach(self, uch) -> None:
        """A vCPU's engine (its blocks advance a virtual clock)."""


class VirtualClock(Clock):
    """Time from guest progress: ``BLOCK_NS`` per block any vCPU's engine started."""

    deterministic = True

    def __init__(self) -> None:
        self._engines: list[ctypes.c_void_p] = []
        self._warped = 0

    def attach(self, uch) -> None:
        self._engines.append(uch)

    def now_ns(self) -> int:
        return self._warped + BLOCK_NS * sum(_blocks(u) for u in self._engines)

    def wait_until_ns(self, deadline_ns: int) -> None:
        self._warped += max(0, deadline_ns - self.now_ns())


class EngineSlice:
    """How one vCPU's stay in the engine ends: the wall-clock slice timer, or in deterministic
    mode a budget of blocks (the timer then only ends the run: ``timeout``, SIGINT)."""

    def __init__(self, vm, uch) -> None:
        self.vm = vm
        self.uch = uch
        self.timer = slice_timer()
        self.deterministic = vm.clock.deterministic
        self._limit = 0
        vm.clock.attach(uch)

    def arm(self, seconds: float) -> None:
        if not self.deterministic:
            self.timer.arm(self.uch, seconds)
            return
        self._limit = _blocks(self.uch) + max(1, math.ceil(seconds * 1e9 / BLOCK_NS))
        _set_limit(self.uch, self._limit)
        self.timer.arm(self.uch, self.vm.wall_left())

    def disarm(self) -> None:
        self.timer.disarm()

    @property
    def expired(self) -> bool:
        """The slice ran out (the engine was stopped for it)."""
        if self.deterministic:
            return _blocks(self.uch) >= self._limit or self.timer.expired
        return self.timer.expired
