"""Arm PrimeCell UART PL011 (PL011 TRM, ARM DDI 0183, 'Register descriptions'), as QEMU's
``virt`` board has it at 0x0900_0000 (hw/char/pl011.c).

32-bit registers at word-aligned offsets in a 4 KiB frame. A byte or halfword access at an
aligned offset reaches the register (``strb`` to UARTDR is common); an 8-byte access covers
two registers; unaligned offsets are not decoded. Transmission is instant, so UARTFR always
shows the transmit FIFO empty and the UART not busy. Bytes given to :meth:`Pl011.feed` wait
in the receive FIFO (unbounded, standing in for a flow-controlled host).

Interrupts follow QEMU: RXRIS is set while received data waits (trigger level 1), TXRIS after
each transmitted byte; UARTICR clears raw bits; UARTMIS = UARTRIS & UARTIMSC; ``irq(level)``
is called when the combined UARTINTR output (any bit of UARTMIS) changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

UARTDR = 0x000  # data
UARTRSR = 0x004  # receive status (read) / error clear UARTECR (write)
UARTFR = 0x018  # flags (read-only)
UARTILPR = 0x020  # IrDA low-power counter
UARTIBRD = 0x024  # integer baud rate divisor, bits 15:0
UARTFBRD = 0x028  # fractional baud rate divisor, bits 5:0
UARTLCR_H = 0x02C  # line control
UARTCR = 0x030  # control
UARTIFLS = 0x034  # interrupt FIFO level select
UARTIMSC = 0x038  # interrupt mask set/clear
UARTRIS = 0x03C  # raw interrupt status (read-only)
UARTMIS = 0x040  # masked interrupt status (read-only)
UARTICR = 0x044  # interrupt clear (write-only, 1 clears)
UARTDMACR = 0x048  # DMA control
UARTPERIPHID0 = 0xFE0  # PrimeCell identification: four peripheral IDs, four cell IDs

# UARTPeriphID0-3 (part number 0x011, designer 0x41 = Arm, revision field 1, as QEMU reports)
# then UARTPCellID0-3, the PrimeCell signature 0xB105F00D.
PL011_ID = (0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)

FR_RXFE = 0x10  # receive FIFO empty
FR_TXFF = 0x20  # transmit FIFO full
FR_RXFF = 0x40  # receive FIFO full
FR_TXFE = 0x80  # transmit FIFO empty
FR_BUSY = 0x08

LCR_H_FEN = 0x10  # FIFOs enabled: 16 deep, else 1

INT_RX = 1 << 4  # receive
INT_TX = 1 << 5  # transmit
INT_MASK = 0x7FF  # the eleven interrupt bits

IBRD_MASK = 0xFFFF
FBRD_MASK = 0x3F
FIFO_DEPTH = 16

CR_RESET = 0x300  # TXE | RXE
IFLS_RESET = 0x12  # both FIFOs at half full


class Pl011:
    def __init__(self, output: Callable[[int], None],
                 irq: Callable[[bool], None] = lambda level: None) -> None:
        self.output = output
        self.irq = irq
        self.rx: deque[int] = deque()
        self.rsr = 0
        self.ilpr = 0
        self.ibrd = 0
        self.fbrd = 0
        self.lcr_h = 0
        self.cr = CR_RESET
        self.ifls = IFLS_RESET
        self.imsc = 0
        self.ris = 0
        self.dmacr = 0
        self.irq_level = False

    @property
    def fr(self) -> int:
        depth = FIFO_DEPTH if self.lcr_h & LCR_H_FEN else 1
        return (FR_TXFE | (0 if self.rx else FR_RXFE)
                | (FR_RXFF if len(self.rx) >= depth else 0))

    @property
    def receive_interrupt_enabled(self) -> bool:
        """Whether received data raises the interrupt (a halted guest can be woken by input)."""
        return bool(self.imsc & INT_RX)

    def feed(self, data: bytes) -> None:
        """Bytes arriving on the serial line, for the guest to read from UARTDR."""
        self.rx.extend(bytes(data))
        if self.rx:
            self.ris |= INT_RX
        self._update_irq()

    def read(self, offset: int, size: int) -> int:
        if size in (1, 2, 4):
            return self._read32(offset) & ((1 << (8 * size)) - 1)
        if size == 8:
            return self._read32(offset) | self._read32(offset + 4) << 32
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == UARTDR and size in (1, 2, 4):  # the hot path: a byte out; TXRIS is set (and stays)
            self.output(value & 0xFF)
            if not self.ris & INT_TX:
                self.ris |= INT_TX
                self._update_irq()
            return
        if size in (1, 2, 4):
            self._write32(offset, value & ((1 << (8 * size)) - 1))
        elif size == 8:
            self._write32(offset, value & 0xFFFF_FFFF)
            self._write32(offset + 4, (value >> 32) & 0xFFFF_FFFF)

    def _update_irq(self) -> None:
        level = bool(self.ris & self.imsc)
        if level != self.irq_level:
            self.irq_level = level
            self.irq(level)

    def _read32(self, offset: int) -> int:
        if offset == UARTDR:
            if not self.rx:
                return 0
            byte = self.rx.popleft()
            self.rsr = 0  # no framing, parity, break or overrun errors arrive with it
            if not self.rx:
                self.ris &= ~INT_RX
                self._update_irq()
            return byte
        if UARTPERIPHID0 <= offset < 0x1000 and offset % 4 == 0:
            return PL011_ID[(offset - UARTPERIPHID0) // 4]
        return {
            UARTRSR: self.rsr, UARTFR: self.fr, UARTILPR: self.ilpr, UARTIBRD: self.ibrd,
            UARTFBRD: self.fbrd, UARTLCR_H: self.lcr_h, UARTCR: self.cr, UARTIFLS: self.ifls,
            UARTIMSC: self.imsc, UARTRIS: self.ris, UARTMIS: self.ris & self.imsc,
            UARTDMACR: self.dmacr,
        }.get(offset, 0)

    def _write32(self, offset: int, value: int) -> None:
        if offset == UARTDR:
            self.output(value & 0xFF)
            self.ris |= INT_TX
            self._update_irq()
        elif offset == UARTRSR:
            self.rsr = 0  # UARTECR: any write clears the error bits
        elif offset == UARTILPR:
            self.ilpr = value & 0xFF
        elif offset == UARTIBRD:
            self.ibrd = value & IBRD_MASK
        elif offset == UARTFBRD:
            self.fbrd = value & FBRD_MASK
        elif offset == UARTLCR_H:
            if (self.lcr_h ^ value) & LCR_H_FEN:  # switching FIFO mode flushes the FIFOs
                self.rx.clear()
                self.ris &= ~INT_RX
            self.lcr_h = value & 0xFF
            self._update_irq()
        elif offset == UARTCR:
            self.cr = value & 0xFFFF
        elif offset == UARTIFLS:
            self.ifls = value & 0x3F
        elif offset == UARTIMSC:
            self.imsc = value & INT_MASK
            self._update_irq()
        elif offset == UARTICR:
            self.ris &= ~value
            self._update_irq()
        elif offset == UARTDMACR:
            self.dmacr = value & 0x7
        # UARTFR, UARTRIS, UARTMIS and the ID registers are read-only.
