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
        if self.pics and level != was and self.bus.pic is not None:
            self.bus.pic.set_irq(irq, level)

    def pulse(self, irq: int) -> None:
        self.set_irq(irq, True)
        self.set_irq(irq, False)


def build_pc_interrupts(vm, arch) -> None:
    """Called from X86Arch.build once the port devices exist: the APIC bus and the LAPIC page,
    the IOAPIC, the PIT with port 0x61, the 8259 pair on LINT0, COM1 on IRQ 4."""
    from .ioapic import IoApic
    from .pic8259 import PicPair
    from .pit8254 import Pit8254, Port61

    bus = arch.apic_bus = ApicBus(vm)
    isa = arch.isa_irqs = IsaIrqs(vm, bus)
    vm.bus.add_mmio(layout.LAPIC_BASE, 0x1000, _Unassigned(), "local APIC (xAPIC page)")
    isa.ioapic = arch.ioapic = IoApic(bus)
    vm.bus.add_mmio(layout.IOAPIC_BASE, 0x1000, isa.ioapic, "IOAPIC")
    pit = arch.pit = Pit8254(vm.clock, irq0=lambda level: isa.set_irq(0, level))
    vm.bus.add_port(layout.PIT_PORT, 4, pit, "8254 PIT")
    vm.bus.add_port(layout.PORT_B, 1, Port61(pit), "system control port B (0x61)")
    bus.platform_timers.append(pit)

    def pit_changed() -> None:
        if getattr(vm, "vcpus", None):
            vm.vcpus[0].apic_timer_changed()  # the BSP's slice ends by the PIT's next edge
    pit.on_change = pit_changed

    master, slave = vm.bus.port(layout.PIC_MASTER_PORT), vm.bus.port(layout.PIC_SLAVE_PORT)
    if master is not None and slave is not None and hasattr(master.device, "set_irq"):
        def int_output(level: bool) -> None:
            if level and getattr(vm, "vcpus", None):
                bsp = vm.vcpus[0].lapic
                if bsp.hw_enabled:
                    bsp.lint(0)  # LINT0 (ExtINT when the guest programs it so)
                else:  # a globally disabled APIC passes INTR straight to the processor (KVM)
                    vector = pair.acknowledge()
                    if vector is not None:
                        from hvsim.core.exits import Event, EventType

                        vm.inject(vm.vcpus[0], Event(EventType.EXTERNAL_INTERRUPT, vector))
        pair = bus.pic = PicPair(master.device, slave.device, int_output)
        isa.pics = [master.device, slave.device]
    com1 = vm.bus.port(layout.COM1_PORT)
    if com1 is not None and hasattr(com1.device, "irq"):
        com1.device.irq = lambda level: isa.set_irq(4, level)
