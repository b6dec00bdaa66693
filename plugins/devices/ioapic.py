"""The I/O APIC (Intel 82093AA datasheet; the ICH's IOAPIC; KVM's ioapic.c) at 0xFEC0_0000.

Two MMIO registers: IOREGSEL (offset 0x00, the index) and IOWIN (offset 0x10, the data).
Indirect registers: 0x00 ID (bits 27:24), 0x01 version (0x170011: version 0x11, maximum
redirection entry 23 in bits 23:16), 0x02 arbitration ID, 0x10 + 2n / 0x11 + 2n the low and
high halves of redirection entry n (24 entries).

A redirection entry (82093AA 3.2.4): vector 7:0, delivery mode 10:8 (fixed, lowest priority,
SMI, NMI, INIT, ExtINT; 011 and 110 reserved), destination mode 11, delivery status 12 (RO),
polarity 13, remote IRR 14 (RO), trigger mode 15 (1 level), mask 16, destination 63:56.

An edge-triggered input sends a message on each rising edge; a level-triggered one while it is
asserted and remote IRR is clear, which then stays set until the local APIC that took the
vector broadcasts its EOI (``eoi(vector)``), when a still-asserted line sends again. Input
levels are logical (asserted or not), as KVM's irqchip passes them: polarity is stored, not
applied.
"""

from __future__ import annotations

IOREGSEL, IOWIN = 0x00, 0x10
NUM_PINS = 24
VERSION = 0x11 | (NUM_PINS - 1) << 16  # 0x170011
RTE_DELIVERY_STATUS, RTE_REMOTE_IRR, RTE_LEVEL, RTE_MASKED, RTE_LOGICAL = 1 << 12, 1 << 14, 1 << 15, 1 << 16, 1 << 11
_RTE_WRITABLE = 0xFF00_0000_0001_AFFF  # all but delivery status and remote IRR (read-only)


class IoApic:
    def __init__(self, bus) -> None:
        self.bus = bus  # lapic.ApicBus: delivers the messages
        self.id = 0
        self.select = 0
        self.redirection = [RTE_MASKED] * NUM_PINS  # masked at reset (82093AA 3.2.4)
        self.lines = 0  # the inputs' logical levels
        bus.eoi_listeners.append(self.eoi)

    # -- MMIO -------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == IOREGSEL:
            return self.select
        if offset == IOWIN:
            return self._read_reg(self.select)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == IOREGSEL:
            self.select = value & 0xFF
        elif offset == IOWIN:
            self._write_reg(self.select, value & 0xFFFF_FFFF)

    def _read_reg(self, reg: int) -> int:
        if reg == 0x00:
            return self.id << 24
        if reg in (0x01,):
            return VERSION
        if reg == 0x02:
            return self.id << 24  # arbitration ID
        if 0x10 <= reg < 0x10 + 2 * NUM_PINS:
            entry = self.redirection[(reg - 0x10) >> 1]
            return (entry >> 32) if reg & 1 else entry & 0xFFFF_FFFF
        return 0xFFFF_FFFF  # no register there: reads as all ones (KVM, QEMU)

    def _write_reg(self, reg: int, value: int) -> None:
        if reg == 0x00:
            self.id = (value >> 24) & 0xF
            return
        if not 0x10 <= reg < 0x10 + 2 * NUM_PINS:
            return  # version and arbitration ID are read-only
        pin = (reg - 0x10) >> 1
        old = self.redirection[pin]
        if reg & 1:
            new = (old & 0xFFFF_FFFF) | (value << 32)
        else:
            new = (old & ~0xFFFF_FFFF) | value
        new = (new & _RTE_WRITABLE) | (old & RTE_REMOTE_IRR)
        if not new & RTE_LEVEL:
            new &= ~RTE_REMOTE_IRR  # remote IRR is meaningless for edge entries (KVM clears it)
        self.redirection[pin] = new
        if old & RTE_MASKED and not new & RTE_MASKED and new & RTE_LEVEL and self.lines >> pin & 1:
            self._send(pin)  # unmasked with the line asserted

    # -- inputs ------------------------------------------------------------------------------
    def set_irq(self, pin: int, level: bool) -> None:
        if not 0 <= pin < NUM_PINS:
            return
        bit = 1 << pin
        was = bool(self.lines & bit)
        self.lines = self.lines | bit if level else self.lines & ~bit
        entry = self.redirection[pin]
        if entry & RTE_LEVEL:
            if level:
                self._send(pin)
        elif level and not was:
            self._send(pin)

    def _send(self, pin: int) -> None:
        entry = self.redirection[pin]
        if entry & RTE_MASKED:
            return
        level = bool(entry & RTE_LEVEL)
        if level and entry & RTE_REMOTE_IRR:
            return  # waits for the EOI
        mode = (entry >> 8) & 7
        if mode in (3, 6):
            return  # reserved delivery modes (start-up is not an IOAPIC mode)
        took = self.bus.deliver(entry >> 56, bool(entry & RTE_LOGICAL), 0, mode, entry & 0xFF, level)
        if level and took and mode in (0, 1):
            self.redirection[pin] = entry | RTE_REMOTE_IRR

    def eoi(self, vector: int) -> None:
        """A local APIC's EOI for a level-triggered ``vector``: remote IRR clears in every entry
        with that vector; a line still asserted sends again."""
        for pin, entry in enumerate(self.redirection):
            if entry & 0xFF == vector and entry & RTE_LEVEL and entry & RTE_REMOTE_IRR:
                self.redirection[pin] = entry & ~RTE_REMOTE_IRR
                if self.lines >> pin & 1:
                    self._send(pin)
