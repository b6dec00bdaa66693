"""16550A UART as QEMU's ``serial`` models it (hw/char/serial.c); PC16550D datasheet, table 2.

Eight byte-wide registers at offsets 0-7. LCR.DLAB switches offsets 0 and 1 from
RBR/THR and IER to the divisor latch DLL/DLM. Transmission is instant: a byte written to THR
goes straight to ``output``, so LSR always reports THRE and TEMT. Bytes given to
:meth:`Uart16550.feed` wait in the receive FIFO (unbounded, standing in for a flow-controlled
host) and set LSR.DR.

The interrupt output is a level: ``irq(level)`` is called each time it changes. As in QEMU,
a THR write drops the THRE interrupt and raises it again once the byte is sent, so an
edge-triggered PIC sees a new edge per byte. Line-status, modem-status and character-timeout
interrupts are not generated (no errors, no modem lines, no timers).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

# Register offsets (datasheet table 2). DLAB is LCR bit 7.
RBR = 0  # receiver buffer (read, DLAB=0)
THR = 0  # transmitter holding (write, DLAB=0)
DLL = 0  # divisor latch LSB (DLAB=1)
IER = 1  # interrupt enable (DLAB=0)
DLM = 1  # divisor latch MSB (DLAB=1)
IIR = 2  # interrupt identification (read)
FCR = 2  # FIFO control (write)
LCR = 3  # line control
MCR = 4  # modem control
LSR = 5  # line status
MSR = 6  # modem status
SCR = 7  # scratch

IER_RDI = 0x01  # received data available
IER_THRI = 0x02  # transmitter holding register empty
IER_MASK = 0x0F  # bits 7:4 are always 0

IIR_NO_INT = 0x01  # bit 0 set: no interrupt pending
IIR_THRI = 0x02  # THR empty (priority 3)
IIR_RDI = 0x04  # received data available (priority 2)
IIR_FIFO = 0xC0  # bits 7:6 = 11 when FCR.FE is set

FCR_FE = 0x01  # FIFO enable
FCR_RFR = 0x02  # clear the receive FIFO (self-clearing)
FCR_XFR = 0x04  # clear the transmit FIFO (self-clearing)
FCR_STICKY = 0xC9  # FE, DMA mode and trigger level stay set

LCR_DLAB = 0x80  # divisor latch access

MCR_OUT2 = 0x08  # QEMU resets MCR to OUT2
MCR_MASK = 0x1F  # bits 7:5 are always 0

LSR_DR = 0x01  # data ready
LSR_THRE = 0x20  # THR empty
LSR_TEMT = 0x40  # transmitter empty

MSR_CTS, MSR_DSR, MSR_DCD = 0x10, 0x20, 0x80  # a modem that is always there

BAUD_BASE = 115200  # 1.8432 MHz clock / 16
RESET_DIVISOR = 12  # 9600 baud, QEMU's reset value


class Uart16550:
    def __init__(self, output: Callable[[int], None],
                 irq: Callable[[bool], None] = lambda level: None) -> None:
        self.output = output
        self.irq = irq
        self.ier = 0
        self.fcr = 0
        self.lcr = 0
        self.mcr = MCR_OUT2
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS
        self.scr = 0
        self.dll, self.dlm = RESET_DIVISOR, 0
        self.rbr = 0  # last byte received, which RBR keeps showing in non-FIFO mode
        self.rx: deque[int] = deque()
        self.thr_ipending = False  # THRE interrupt, cleared by reading IIR or writing THR
        self.irq_level = False

    @property
    def baud(self) -> int:
        divisor = self.dlm << 8 | self.dll
        return BAUD_BASE // divisor if divisor else 0

    @property
    def receive_interrupt_enabled(self) -> bool:
        """Whether received data raises the interrupt (a halted guest can be woken by input)."""
        return bool(self.ier & IER_RDI)

    def feed(self, data: bytes) -> None:
        """Bytes arriving on the serial line, for the guest to read from RBR."""
        self.rx.extend(bytes(data))
        self._update_irq()

    # Wider accesses reach consecutive registers a byte at a time, as QEMU's
    # impl.max_access_size = 1 splits them.
    def read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4, 8):
            return 0
        return sum(self._read8(offset + i) << (8 * i) for i in range(size))

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4, 8):
            return
        for i in range(size):
            self._write8(offset + i, (value >> (8 * i)) & 0xFF)

    def _iir(self) -> int:
        if self.ier & IER_RDI and self.rx:
            ident = IIR_RDI
        elif self.ier & IER_THRI and self.thr_ipending:
            ident = IIR_THRI
        else:
            ident = IIR_NO_INT
        return ident | (IIR_FIFO if self.fcr & FCR_FE else 0)

    def _update_irq(self) -> None:
        level = not self._iir() & IIR_NO_INT
        if level != self.irq_level:
            self.irq_level = level
            self.irq(level)

    def _read8(self, reg: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if reg == RBR:
            if dlab:
                return self.dll
            if self.rx:
                self.rbr = self.rx.popleft()
                self._update_irq()
                return self.rbr
            return 0 if self.fcr & FCR_FE else self.rbr
        if reg == IER:
            return self.dlm if dlab else self.ier
        if reg == IIR:
            iir = self._iir()
            if iir & 0x0F == IIR_THRI:  # reading IIR acknowledges THRE
                self.thr_ipending = False
                self._update_irq()
            return iir
        if reg == LSR:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self.rx else 0)
        return {LCR: self.lcr, MCR: self.mcr, MSR: self.msr, SCR: self.scr}.get(reg, 0)

    def _write8(self, reg: int, value: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if reg == THR:
            if dlab:
                self.dll = value
                return
            self.thr_ipending = False
            self._update_irq()
            self.output(value)
            self.thr_ipending = True  # the byte left at once: THR is empty again
            self._update_irq()
        elif reg == IER:
            if dlab:
                self.dlm = value
                return
            self.ier = value & IER_MASK
            self.thr_ipending = True  # THR is always empty, so enabling THRI fires at once
            self._update_irq()
        elif reg == FCR:
            self._write_fcr(value)
        elif reg == LCR:
            self.lcr = value
        elif reg == MCR:
            self.mcr = value & MCR_MASK  # loopback (bit 4) is kept but not modelled
        elif reg == SCR:
            self.scr = value
        # LSR and MSR are read-only; offsets past 7 are not ours.

    def _write_fcr(self, value: int) -> None:
        if value == self.fcr:
            return
        if (value ^ self.fcr) & FCR_FE:  # switching FIFO mode flushes both FIFOs
            value |= FCR_RFR | FCR_XFR
        if value & FCR_RFR:
            self.rx.clear()
        self.fcr = value & FCR_STICKY
        self._update_irq()
