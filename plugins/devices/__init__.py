"""hvsim's built-in device models, registered by name through ``hvsim_register_devices``.

Each device is a small state machine in its own module that knows nothing of the hypervisor:
it sees ``read(offset, size)`` / ``write(offset, size, value)`` with offsets inside the range
a platform claimed for it, and gets what it needs (an output callback, a stop callback,
configuration values) from its constructor. A factory here adapts a VM to those arguments::

    dev = vm.pm.devices.create("uart16550", vm)
    vm.bus.add_port(0x3F8, 8, dev, "COM1")

=================  ======================================  ==================================
name               model                                   where the platforms put it
=================  ======================================  ==================================
uart16550          16550A UART (QEMU ``serial``)           x86 COM1, ports 0x3F8-0x3FF
isa-debug-exit     QEMU isa-debug-exit                     x86 port 0xF4 (iosize 4)
port80             POST code port                          x86 port 0x80
pic8259            one 8259A PIC                           x86 0x20-0x21 and 0xA0-0xA1
fw_cfg             QEMU fw_cfg, I/O-port interface         x86 ports 0x510-0x511
pl011              Arm PL011 UART                          arm virt MMIO 0x0900_0000, 4 KiB
cmos-rtc           MC146818 RTC and CMOS RAM               x86 ports 0x70-0x71
acpi-pm            ACPI PM1a event/control, PM timer       x86 ports 0x600-0x60B
reset-control      PIIX reset control register             x86 port 0xCF9
=================  ======================================  ==================================

Extra keyword arguments to ``create`` reach the device's constructor, e.g. ``irq=`` for the
UARTs or ``max_cpus=`` for fw_cfg.

The x86 interrupt controllers are not created by name: the PC platform builds them with the VM
(``platform.build_pc_interrupts``): a local APIC per vCPU (lapic.py, ``vcpu.lapic``), the
IOAPIC (ioapic.py, MMIO 0xFEC0_0000), the 8254 PIT (pit8254.py, ports 0x40-0x43 and 0x61),
and the wiring of the 8259 pair and COM1's interrupt to them. The hooks below route the xAPIC
page to the accessing vCPU's APIC and let a HLT wait for an armed APIC timer.
"""

from hvsim import hookimpl

from .acpi_pm import AcpiPm, ResetControl
from .cmos_rtc import CmosRtc
from .debug_exit import IsaDebugExit
from .fw_cfg import FwCfg
from .pic8259 import Pic8259
from .pl011 import Pl011
from .port80 import Port80
from .uart16550 import Uart16550

__all__ = ["AcpiPm", "CmosRtc", "ResetControl", "FwCfg", "IsaDebugExit", "Pic8259", "Pl011", "Port80", "Uart16550"]


def _fw_cfg(vm, **params) -> FwCfg:
    config = {"ram_size": vm.config.mem_size, "nb_cpus": vm.config.vcpus, **params}
    return FwCfg(**config)


@hookimpl
def hvsim_register_devices(registry):
    registry.add("uart16550", lambda vm, **p: Uart16550(vm.console.write_byte, **p))
    registry.add("isa-debug-exit", lambda vm, **p: IsaDebugExit(vm.stop, **p))
    registry.add("port80", lambda vm, **p: Port80(**p))
    registry.add("pic8259", lambda vm, **p: Pic8259(**p))
    registry.add("fw_cfg", _fw_cfg)
    registry.add("pl011", lambda vm, **p: Pl011(vm.console.write_byte, **p))
    registry.add("cmos-rtc", _cmos_rtc)
    registry.add("acpi-pm", lambda vm, **p: AcpiPm(vm.stop, vm.clock.now_ns, **p))
    registry.add("reset-control", lambda vm, **p: ResetControl(vm.stop, **p))


def _cmos_rtc(vm, **params) -> CmosRtc:
    from hvsim.plugins.x86.layout import ram_split  # the PC's RAM split (only x86 has a CMOS)
    below, above = ram_split(vm.config.mem_size)
    # deterministic runs read a fixed date (2000-01-01 00:00:00 UTC) so that output repeats
    start = 946_684_800.0 if vm.clock.deterministic else None
    return CmosRtc(vm.clock.now_ns, below, above, **{"start": start, **params})


# -- the x86 platform's interrupt controllers (plugins/devices/lapic.py, platform.py) ----------
# Exits of the processor's own APIC virtualization (the APIC-access page, AVIC's APIC BAR): the
# VMM that turned it on answers them, not the emulated APIC.
_APIC_VIRTUALIZATION_EXITS = frozenset({"EXIT_REASON_APIC_ACCESS", "VMEXIT_AVIC_NOACCEL",
                                        "VMEXIT_AVIC_INCOMPLETE_IPI"})


def _apic_mmio(inner):
    def handle(vcpu, exit):
        apic = getattr(vcpu, "lapic", None)
        if apic is not None and apic.base & 0x800 and not apic.base & 0x400 and \
                exit.address & ~0xFFF == apic.base & ~0xFFF and exit.reason not in _APIC_VIRTUALIZATION_EXITS:
            offset = exit.address & 0xFFF
            if exit.is_write:
                apic.write(offset, exit.size, exit.value)
            else:
                exit.value = apic.read(offset, exit.size)
            return
        inner(vcpu, exit)
    return handle


def _apic_halt(inner):
    def handle(vcpu, exit):
        inner(vcpu, exit)
        if getattr(vcpu, "lapic", None) is not None and vcpu.state.value == "halted":
            vcpu.halt()  # with the APIC timer armed the vCPU waits for it instead
    return handle


@hookimpl(trylast=True)
def hvsim_exit_handlers(vm, registry):
    """On x86 the local APIC decodes its own page before the bus, per vCPU (xAPIC mode), and a
    HLT with its timer armed waits for the timer."""
    from hvsim.core.exits import ExitKind

    if getattr(vm.arch, "apic_bus", None) is None:
        return
    registry.add(ExitKind.MMIO, _apic_mmio(registry.get(ExitKind.MMIO)))
    registry.add(ExitKind.HALT, _apic_halt(registry.get(ExitKind.HALT)))


@hookimpl
def hvsim_interrupt_acknowledged(vcpu, event):
    apic = getattr(vcpu, "lapic", None)
    if apic is not None:
        apic.acknowledged(event)
