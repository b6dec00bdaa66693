"""The rate of the time-stamp counter the guest reads (Intel SDM Vol. 3B 18.17, AMD APM Vol. 2
13.2.4): Unicorn's RDTSC follows the host's counter, so hvsim measures that rate once per
process (about 20 ms) to turn TSC-counted quantities (the VMX-preemption timer, SVM's PAUSE
filter threshold) into the host time the engine runs for. In deterministic mode the TSC is
virtual (core/clock.py): RDTSC/RDTSCP are emulated from the VM's clock at VIRTUAL_TSC_HZ.
"""

from __future__ import annotations

import time
from functools import cache

from unicorn import UC_PROT_ALL, Uc
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_ARCH_X86, UC_MODE_64

from hvsim.core.clock import VIRTUAL_TSC_HZ


def _reader():
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x1000, UC_PROT_ALL)
    uc.mem_write(0, b"\x0f\x31")  # rdtsc

    def tsc() -> int:
        uc.emu_start(0, 2)
        return (uc.reg_read(X.UC_X86_REG_RDX) & 0xFFFF_FFFF) << 32 | uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFF_FFFF

    return tsc


def guest_tsc_hz(clock) -> float:
    """TSC ticks per second of ``clock`` (a VM's): virtual, or the host's measured rate."""
    return VIRTUAL_TSC_HZ if clock.deterministic else tsc_hz()


def guest_tsc(clock) -> int:
    """The TSC a guest reads now in deterministic mode (virtual ns at VIRTUAL_TSC_HZ)."""
    return clock.now_ns() * VIRTUAL_TSC_HZ // 1_000_000_000


@cache
def tsc_hz() -> float:
    """TSC ticks per second as the guest sees them."""
    tsc = _reader()
    t0, w0 = tsc(), time.perf_counter()
    time.sleep(0.02)
    t1, w1 = tsc(), time.perf_counter()
    return max((t1 - t0) / (w1 - w0), 1e6)
