"""One Intel 8259A programmable interrupt controller (8259A datasheet; QEMU hw/intc/i8259.c).

The PC has two, master at ports 0x20-0x21 and slave at 0xA0-0xA1; each is an instance of this
class and sees offsets 0 and 1: the initialization sequence ICW1-ICW4, the mask register and
the OCW2/OCW3 commands. :class:`PicPair` cascades them (the slave on the master's IR2) and
wires them to the ISA IRQ lines (``set_irq``); the master's INT output goes to the BSP's local
APIC LINT0, where an ExtINT LVT makes the processor acknowledge it (``acknowledge``: INTA,
the vector from ICW2). Inputs are edge-triggered unless ICW1.LTIM (level).

Offset 0, bit 4 set: ICW1. It clears IMR and ISR and starts the sequence, in which offset 1
takes ICW2 (vector base), ICW3 unless ICW1.SNGL, and ICW4 if ICW1.IC4.
Offset 0, bits 4:3 = 00: OCW2 (EOI and rotation). Bits 4:3 = 01: OCW3 (read IRR/ISR, poll,
special mask). Offset 1 outside the sequence: OCW1, the interrupt mask (IMR).
Reads: offset 0 gives IRR or ISR as OCW3 chose, offset 1 gives IMR.
"""

from __future__ import annotations

CMD = 0  # ICW1, OCW2, OCW3; reads IRR/ISR
DATA = 1  # ICW2-4, OCW1 (IMR); reads IMR

ICW1_IC4 = 0x01  # ICW4 follows
ICW1_SNGL = 0x02  # single 8259: no ICW3
ICW1_LTIM = 0x08  # level-triggered inputs
ICW1_INIT = 0x10  # this is ICW1

OCW3_SELECT = 0x08  # bits 4:3 = 01 mark OCW3
OCW3_RIS = 0x01  # read ISR (else IRR), when RR is set
OCW3_RR = 0x02  # read register command
OCW3_POLL = 0x04
OCW3_SMM = 0x20  # special mask mode, when ESMM is set
OCW3_ESMM = 0x40

ICW4_AEOI = 0x02  # automatic end of interrupt
ICW4_SFNM = 0x10  # special fully nested mode

OCW2_EOI = 1  # non-specific EOI   (OCW2 bits 7:5)
OCW2_SPECIFIC_EOI = 3
OCW2_ROTATE_EOI = 5
OCW2_SET_PRIORITY = 6
OCW2_ROTATE_SPECIFIC_EOI = 7

# Which data-port write comes next.
READY, EXPECT_ICW2, EXPECT_ICW3, EXPECT_ICW4 = range(4)


class Pic8259:
    def __init__(self) -> None:
        self.elcr = 0  # not reset by ICW1 (QEMU keeps it apart)
        self._reset()

    def _reset(self) -> None:
        """What ICW1 does: datasheet, 'Initialization Command Words'."""
        self.imr = 0
        self.irr = 0
        self.isr = 0
        self.vector_base = 0  # ICW2 bits 7:3
        self.icw3 = 0  # master: which inputs have slaves; slave: its cascade ID
        self.icw4 = 0
        self.init_state = READY
        self.ic4 = False
        self.single = False
        self.level_triggered = False
        self.read_isr = False  # OCW3: offset 0 reads IRR until told otherwise
        self.poll = False
        self.special_mask = False
        self.rotate_on_aeoi = False
        self.priority_add = 0  # lowest-priority input is priority_add - 1

    @property
    def auto_eoi(self) -> bool:
        return bool(self.icw4 & ICW4_AEOI)

    def read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4, 8):
            return 0
        # Byte-wide registers: a wider access covers the next port too (QEMU splits it).
        return sum(self._read8(offset + i) << (8 * i) for i in range(size))

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4, 8):
            return
        for i in range(size):
            self._write8(offset + i, (value >> (8 * i)) & 0xFF)

    def _read8(self, reg: int) -> int:
        if reg in (CMD, DATA) and self.poll:  # poll: bit 7 = pending, bits 2:0 its input; acknowledges it
            self.poll = False
            irq = self.pending()
            if irq is None:
                return 0
            self.intack(irq)
            return 0x80 | irq
        if reg == CMD:
            return self.isr if self.read_isr else self.irr
        if reg == DATA:
            return self.imr
        return 0

    # -- the interrupt lines ------------------------------------------------------------------
    lines = 0
    on_change = None  # called when IRR / IMR / ISR change (the pair recomputes INT)

    def set_irq(self, irq: int, level: bool) -> None:
        bit = 1 << irq
        was = bool(self.lines & bit)
        self.lines = self.lines | bit if level else self.lines & ~bit
        if self.level_triggered or self.elcr & bit:
            self.irr = self.irr | bit if level else self.irr & ~bit
        elif level and not was:
            self.irr |= bit  # edge-triggered: the rising edge is remembered
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def pending(self) -> int | None:
        """The input INT is raised for: the highest-priority unmasked request above every
        in-service input (fully nested mode; special mask mode ignores masked ISR bits)."""
        requests = self.irr & ~self.imr
        if not requests:
            return None
        isr = self.isr & ~self.imr if self.special_mask else self.isr
        for i in range(8):
            irq = (i + self.priority_add) & 7
            if isr & (1 << irq) and not (self.icw4 & ICW4_SFNM and irq == 2 and requests & 4):
                return None  # something of higher priority is in service
            if requests & (1 << irq):
                return irq
        return None

    def intack(self, irq: int) -> int:
        """INTA for input ``irq``: ISR set (unless automatic EOI), an edge request cleared."""
        bit = 1 << irq
        if not (self.level_triggered or self.elcr & bit):
            self.irr &= ~bit
        if self.auto_eoi:
            if self.rotate_on_aeoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= bit
        self._changed()
        return self.vector_base | irq

    def _write8(self, reg: int, value: int) -> None:
        if reg == CMD:
            if value & ICW1_INIT:
                self._reset()
                self.init_state = EXPECT_ICW2
                self.ic4 = bool(value & ICW1_IC4)
                self.single = bool(value & ICW1_SNGL)
                self.level_triggered = bool(value & ICW1_LTIM)
            elif value & OCW3_SELECT:
                self._ocw3(value)
            else:
                self._ocw2(value)
        elif reg == DATA:
            if self.init_state == READY:
                self.imr = value  # OCW1
                self._changed()
            elif self.init_state == EXPECT_ICW2:
                self.vector_base = value & 0xF8  # bits 2:0 are the input number in x86 mode
                self.init_state = EXPECT_ICW4 if self.single and self.ic4 else (
                    READY if self.single else EXPECT_ICW3)
            elif self.init_state == EXPECT_ICW3:
                self.icw3 = value
                self.init_state = EXPECT_ICW4 if self.ic4 else READY
            else:
                self.icw4 = value
                self.init_state = READY

    def _ocw3(self, value: int) -> None:
        if value & OCW3_POLL:
            self.poll = True
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)

    def _ocw2(self, value: int) -> None:
        self._ocw2_apply(value)
        self._changed()

    def _ocw2_apply(self, value: int) -> None:
        cmd = value >> 5
        if cmd in (0, 4):  # rotate in automatic EOI mode: clear (0) or set (4)
            self.rotate_on_aeoi = cmd == 4
        elif cmd in (OCW2_EOI, OCW2_ROTATE_EOI):
            irq = self._highest_in_service()
            if irq is not None:
                self.isr &= ~(1 << irq)
                if cmd == OCW2_ROTATE_EOI:
                    self.priority_add = (irq + 1) & 7
        elif cmd == OCW2_SPECIFIC_EOI:
            self.isr &= ~(1 << (value & 7))
        elif cmd == OCW2_SET_PRIORITY:
            self.priority_add = (value + 1) & 7
        elif cmd == OCW2_ROTATE_SPECIFIC_EOI:
            self.isr &= ~(1 << (value & 7))
            self.priority_add = (value + 1) & 7

    def _highest_in_service(self) -> int | None:
        for i in range(8):
            irq = (i + self.priority_add) & 7
            if self.isr & (1 << irq):
                return irq
        return None


class PicPair:
    """Master and slave 8259A as the PC cascades them: ISA IRQs 0-7 on the master, 8-15 on the
    slave, whose INT is the master's IR2. ``output(level)`` follows the master's INT."""

    def __init__(self, master: Pic8259, slave: Pic8259, output=lambda level: None) -> None:
        self.master, self.slave, self.output = master, slave, output
        self.level = False
        master.on_change = slave.on_change = self._update

    def set_irq(self, irq: int, level: bool) -> None:
        if irq < 8:
            self.master.set_irq(irq, level)
        else:
            self.slave.set_irq(irq - 8, level)

    def _update(self) -> None:
        cascade = self.slave.pending() is not None
        if bool(self.master.lines & 4) != cascade:
            self.master.set_irq(2, cascade)
            return  # (set_irq called back here)
        level = self.master.pending() is not None
        if level != self.level:
            self.level = level
            self.output(level)

    def acknowledge(self) -> int | None:
        """The processor's INTA cycle: the vector, or None if nothing is pending any more (a
        spurious IRQ 7 / 15 on hardware; hvsim then delivers nothing)."""
        irq = self.master.pending()
        if irq is None:
            return None
        if irq == 2:
            sirq = self.slave.pending()
            self.master.intack(2)
            if sirq is None:
                return None
            return self.slave.intack(sirq)
        return self.master.intack(irq)
