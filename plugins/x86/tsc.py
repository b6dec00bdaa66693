"""The rate of the time-stamp counter the guest reads (Intel SDM Vol. 3B 18.17, AMD APM Vol. 2
13.2.4): Unicorn's RDTSC follows the host's counter, so hvsim measures that rate once per
process (about 20 ms) to turn TSC-counted quantities (the VMX-preemption timer, SVM's PAUSE
filter threshold) into the host time the engine runs for.
"""

from __future__ import annotations

import time
from functools import cache

from unicorn import UC_PROT_ALL, Uc
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_ARCH_X86, UC_MODE_64


def _reader():
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x1000, UC_PROT_ALL)
    uc.mem_write(0, b"\x0f\x31")  # rdtsc

    def tsc() -> int:
        uc.emu_start(0, 2)
        return (uc.reg_read(X.UC_X86_REG_RDX) & 0xFFFF_FFFF) << 32 | uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFF_FFFF

    return tsc


@cache
def tsc_hz() -> float:
    """TSC ticks per second as the guest sees them."""
    tsc = _reader()
    t0, w0 = tsc(), time.perf_counter()
    time.sleep(0.02)
    t1, w1 = tsc(), time.perf_counter()
    return max((t1 - t0) / (w1 - w0), 1e6)
