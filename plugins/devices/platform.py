"""The PC's interrupt wiring for both x86 vendors: a local APIC per vCPU on one APIC bus, the
IOAPIC, the 8254 PIT, and the ISA IRQ lines of the devices (QEMU's ``pc`` machine).

ISA IRQs reach the IOAPIC's inputs as QEMU wires them: IRQ n on INTIN n, except the PIT's
IRQ 0, which is on INTIN 2 (the interrupt source override the MP table / MADT describe);
they also reach the 8259 pair, whose output is the BSP's LINT0 (ExtINT when the guest
programs LINT0 so).
"""

from __future__ import annotations

from hvsim.plugins.x86 import layout

from .lapic import ApicBus

ISA_IRQ_TO_GSI = {0: 2}  # the interrupt source override; every other ISA IRQ n is GSI n


class _Unassigned:
    """The xAPIC page while the vCPU's APIC does not decode it (disabled, x2APIC mode): reads
    float high, writes are dropped (the vCPU's own APIC takes the accesses it decodes)."""

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        pass


class IsaIrqs:
    """The ISA interrupt lines: ``raise_irq(n)`` / ``lower_irq(n)`` from device models."""

    def __init__(self, vm, bus: ApicBus) -> None:
        self.vm, self.bus = vm, bus
        self.ioapic = None
        self.pics: list = []
        self.levels = 0

    def set_irq(self, irq: int, level: bool) -> None:
        bit = 1 << irq
        was = bool(self.levels & bit)
        self.levels = self.levels | bit if level else self.levels & ~bit
        if self.ioapic is not None:
            self.ioapic.set_irq(ISA_IRQ_TO_GSI.get(irq, irq), level)
        if self.pics and level != was:
            pic = self.pics[0] if irq < 8 else self.pics[1]
            pic.set_irq(irq & 7, level)

    def pulse(self, irq: int) -> None:
        self.set_irq(irq, True)
        self.set_irq(irq, False)


def build_pc_interrupts(vm, arch) -> None:
    """Called from X86Arch.build: the APIC bus, the LAPIC page, the IOAPIC, the PIT."""
    bus = arch.apic_bus = ApicBus(vm)
    vm.bus.add_mmio(layout.LAPIC_BASE, 0x1000, _Unassigned(), "local APIC (xAPIC page)")
    arch.isa_irqs = IsaIrqs(vm, bus)
