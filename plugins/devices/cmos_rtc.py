"""The PC's MC146818 real-time clock and CMOS RAM at ports 0x70 (index; bit 7 disables NMI) and
0x71 (data), as a BIOS leaves it: 24-hour BCD mode (register B = 0x02), the divider running
(register A = 0x26, UIP clear), valid RAM and time (register D bit 7), century in byte 0x32.

The time is guest time from the moment the VM was created (``start`` seconds since the epoch,
the host's time by default; deterministic runs pass a fixed one), so a guest reading it twice
sees it advance. Alarms, periodic and update interrupts are not modelled (register C reads 0).
QEMU's memory-size bytes (0x34/0x35: RAM above 16 MiB in 64 KiB units, up to 4 GiB;
0x5B-0x5D: RAM above 4 GiB) are filled, as some loaders read them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
REG_B_24H, REG_B_BINARY = 0x02, 0x04
CENTURY = 0x32


def _bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


class CmosRtc:
    def __init__(self, now_ns: Callable[[], int], ram_below_4g: int = 0, ram_above_4g: int = 0,
                 start: float | None = None) -> None:
        self.now_ns = now_ns
        self.start = time.time() if start is None else start
        self.t0 = now_ns()
        self.index = 0
        self.ram = bytearray(128)
        self.ram[REG_A] = 0x26
        self.ram[REG_B] = REG_B_24H
        self.ram[REG_D] = 0x80
        above_16m = max(0, min(ram_below_4g, 0xFFFF_0000) - (16 << 20)) >> 16
        self.ram[0x34], self.ram[0x35] = min(above_16m, 0xFFFF) & 0xFF, min(above_16m, 0xFFFF) >> 8
        high = ram_above_4g >> 16
        self.ram[0x5B], self.ram[0x5C], self.ram[0x5D] = high & 0xFF, (high >> 8) & 0xFF, (high >> 16) & 0xFF

    def _time_reg(self, index: int) -> int | None:
        t = time.gmtime(self.start + (self.now_ns() - self.t0) / 1e9)
        values = {0x00: t.tm_sec, 0x02: t.tm_min, 0x04: t.tm_hour, 0x06: (t.tm_wday + 1) % 7 + 1,
                  0x07: t.tm_mday, 0x08: t.tm_mon, 0x09: t.tm_year % 100, CENTURY: t.tm_year // 100}
        if index not in values:
            return None
        v = values[index]
        return v if self.ram[REG_B] & REG_B_BINARY else _bcd(v)

    def read(self, offset: int, size: int) -> int:
        if size != 1:
            return 0xFF
        if offset == 0:
            return 0xFF  # the index register is write-only
        value = self._time_reg(self.index)
        if value is not None:
            return value
        if self.index == REG_C:
            return 0  # no interrupt flags: alarms, periodic and update interrupts not modelled
        return self.ram[self.index]

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1:
            return
        value &= 0xFF
        if offset == 0:
            self.index = value & 0x7F  # bit 7: NMI disable, not modelled
        elif self.index == REG_A:
            self.ram[REG_A] = value & 0x7F  # UIP (bit 7) is read-only
        elif self.index in (REG_C, REG_D):
            return  # read-only
        elif self.index == REG_B or self._time_reg(self.index) is None:
            self.ram[self.index] = value
        # writes to the time registers (setting the clock) are ignored: guest time runs on
