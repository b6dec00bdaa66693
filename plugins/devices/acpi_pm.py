"""The PC's ACPI power-management registers (ACPI 6.5, 4.8.3 "PM1 Event and Control
Registers" and 4.8.3.3 "Power Management Timer") and the PIIX reset control register 0xCF9.

Ports, as hvsim's FADT gives them (``plugins/x86/acpi.py``), relative to the block's base:

- 0: PM1_STS (16 bits; write 1 to clear: TMR_STS bit 0, PWRBTN_STS bit 8, WAK_STS bit 15),
- 2: PM1_EN (16 bits),
- 4: PM1_CNT (16 bits: SCI_EN bit 0, always set because the platform has no legacy mode;
  SLP_TYP bits 12:10, SLP_EN bit 13): writing SLP_EN with the \\_S5 sleep type powers the
  machine off, which ends the run with status 0 as QEMU's ``-no-shutdown``-less poweroff does;
- 8: PM_TMR (32 bits, read only): a free-running counter at 3.579545 MHz from guest time.

The reset register (a separate one-byte port, 0xCF9) resets the machine when a write sets bit 2
(RST_CPU) with bit 1 (SYS_RST) or alone; hvsim, like QEMU with ``-no-reboot``, ends the run
with status 0.
"""

from __future__ import annotations

from collections.abc import Callable

PM_TIMER_HZ = 3_579_545
SCI_EN = 1 << 0
SLP_EN = 1 << 13
SLP_TYP_SHIFT, SLP_TYP_MASK = 10, 0x7
WAK_STS = 1 << 15


class AcpiPm:
    def __init__(self, stop: Callable[[int, str], None], now_ns: Callable[[], int],
                 s5_type: int = 0) -> None:
        self.stop, self.now_ns, self.s5_type = stop, now_ns, s5_type
        self.sts = 0
        self.en = 0
        self.cnt = SCI_EN

    def _reg(self, offset: int) -> int:
        if offset < 2:
            return self.sts
        if offset < 4:
            return self.en
        if offset < 6:
            return self.cnt
        if 8 <= offset < 12:
            return (self.now_ns() * PM_TIMER_HZ // 1_000_000_000) & 0xFFFF_FFFF
        return 0

    def read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4):
            return 0
        base = offset & ~1 if offset < 8 else 8
        value = self._reg(base) >> (8 * (offset - base))
        return value & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4) or offset >= 8:
            return  # the timer is read-only
        value &= (1 << (8 * size)) - 1
        if offset < 2:
            self.sts &= ~(value << (8 * offset)) & 0xFFFF  # write 1 to clear
        elif offset < 4:
            shift = 8 * (offset - 2)
            mask = ((1 << (8 * size)) - 1) << shift
            self.en = ((self.en & ~mask) | (value << shift)) & 0xFFFF
        elif offset < 6:
            shift = 8 * (offset - 4)
            mask = ((1 << (8 * size)) - 1) << shift
            cnt = ((self.cnt & ~mask) | (value << shift)) & 0xFFFF
            self.cnt = (cnt & ~SLP_EN) | SCI_EN  # SLP_EN reads as 0; SCI_EN stays set
            if cnt & SLP_EN:
                slp_typ = (cnt >> SLP_TYP_SHIFT) & SLP_TYP_MASK
                if slp_typ == self.s5_type:
                    self.stop(0, "ACPI poweroff (PM1a_CNT: SLP_EN with the S5 sleep type)")
                else:
                    self.sts |= WAK_STS  # a sleep state hvsim does not model: wake at once


class ResetControl:
    """Port 0xCF9 (PIIX/ICH reset control register)."""

    def __init__(self, stop: Callable[[int, str], None]) -> None:
        self.stop = stop
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return self.value if size == 1 else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1:
            return
        self.value = value & 0x0E
        if value & 0x04:  # RST_CPU
            self.stop(0, "reset (port 0xcf9)")
