"""The flattened device tree an arm_el2 guest finds in x0, shaped like QEMU ``virt``'s.

Devicetree Specification v0.4 (nodes, ``reg``, ``/chosen``), the bindings in Linux's
Documentation/devicetree/bindings (arm/psci.yaml, serial/pl011.yaml, clock/fixed-clock.yaml,
arm/cpus.yaml), and QEMU hw/arm/virt.c for names, phandles and property order, so a kernel
that boots on ``qemu-system-aarch64 -M virt`` reads the same tree here. Nodes appear only for
what hvsim models. The GICv3 node is QEMU's (``intc@8000000``, compatible "arm,gic-v3",
``#interrupt-cells = <3>``, ``reg`` = GICD then the redistributor frames of the vCPUs there
are, ``#redistributor-regions = <1>``, ``interrupts`` = the maintenance PPI 9, level high), the
root names it ``interrupt-parent``, and the PL011 has ``interrupts = <0 1 4>`` (SPI 1, level
high). A VM built with ``gic="none"`` has none of these.

The ``timer`` node follows Linux's arm,armv8-timer binding (timer/arm,arch_timer.yaml) as QEMU
writes it: four PPIs in the order secure physical, non-secure physical, virtual, hypervisor
physical, each ``<GIC_PPI n IRQ_TYPE_LEVEL_HIGH>`` (cells: 1 = PPI, the PPI number, 4 = level
high; with GICv3 no CPU mask), and ``always-on`` for an ARMv8 CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import fdt

from . import layout, psci

CLOCK_PHANDLE = 0x8000  # QEMU allocates phandles from 0x8000; the UART clock is the first
GIC_FDT_IRQ_TYPE_PPI = 1  # the GIC binding's first interrupt cell
IRQ_TYPE_LEVEL_HIGH = 4  # its third cell (dt-bindings/interrupt-controller/irq.h)
GIC_FDT_IRQ_TYPE_SPI = 0
GIC_PHANDLE = 0x8001  # the next phandle QEMU allocates, for the GIC
GIC_MAINTENANCE_PPI = 9  # ARCH_GIC_MAINT_IRQ: INTID 25


@dataclass(slots=True)
class DeviceTreeConfig:
    ram_base: int
    ram_size: int
    cpus: int
    bootargs: str = ""
    initrd: tuple[int, int] | None = None  # (start, end) guest-physical
    cpu_compatible: str = "arm,cortex-a72"  # Unicorn's default arm64 CPU model
    gic: bool = True  # the GICv3 node, the root's interrupt-parent, the UART's interrupt


def _reg(address: int, size: int) -> fdt.PropWords:
    """A ``reg`` entry with #address-cells = #size-cells = 2 (the root node's)."""
    return fdt.PropWords("reg", address >> 32, address & 0xFFFF_FFFF, size >> 32, size & 0xFFFF_FFFF)


def build(cfg: DeviceTreeConfig) -> bytes:
    """Return the DTB (version 17) for ``cfg``."""
    tree = fdt.FDT(entries=[])
    root = tree.root
    root.append(fdt.PropStrings("compatible", "linux,dummy-virt"))
    root.append(fdt.PropWords("#address-cells", 2))
    root.append(fdt.PropWords("#size-cells", 2))
    root.append(fdt.PropStrings("model", "linux,dummy-virt"))
    if cfg.gic:
        root.append(fdt.PropWords("interrupt-parent", GIC_PHANDLE))

    root.append(fdt.Node(
        "psci",
        fdt.PropWords("migrate", psci.PSCI_0_2_FN64_MIGRATE),
        fdt.PropWords("cpu_on", psci.PSCI_0_2_FN64_CPU_ON),
        fdt.PropWords("cpu_off", psci.PSCI_0_2_FN_CPU_OFF),
        fdt.PropWords("cpu_suspend", psci.PSCI_0_2_FN64_CPU_SUSPEND),
        fdt.PropStrings("method", "hvc"),
        fdt.PropStrings("compatible", "arm,psci-1.0", "arm,psci-0.2", "arm,psci"),
    ))

    root.append(fdt.Node(
        f"memory@{cfg.ram_base:x}",
        _reg(cfg.ram_base, cfg.ram_size),
        fdt.PropStrings("device_type", "memory"),
    ))

    cpus = fdt.Node("cpus", fdt.PropWords("#size-cells", 0), fdt.PropWords("#address-cells", 1))
    for i in range(cfg.cpus):
        aff = layout.mpidr_affinity(layout.mpidr(i))
        cpus.append(fdt.Node(
            f"cpu@{aff:x}",
            fdt.PropWords("reg", aff),
            fdt.PropStrings("enable-method", "psci"),
            fdt.PropStrings("compatible", cfg.cpu_compatible),
            fdt.PropStrings("device_type", "cpu"),
        ))
    root.append(cpus)

    if cfg.gic:
        redist_size = layout.GICR_STRIDE * cfg.cpus
        root.append(fdt.Node(
            f"intc@{layout.GICD_BASE:x}",
            fdt.PropWords("phandle", GIC_PHANDLE),
            fdt.PropWords("#interrupt-cells", 3),
            fdt.Property("interrupt-controller"),
            fdt.PropWords("#address-cells", 2),
            fdt.PropWords("#size-cells", 2),
            fdt.Property("ranges"),
            fdt.PropStrings("compatible", "arm,gic-v3"),
            fdt.PropWords("#redistributor-regions", 1),
            fdt.PropWords("reg", 0, layout.GICD_BASE, 0, 0x1_0000, 0, layout.GICR_BASE, 0, redist_size),
            fdt.PropWords("interrupts", GIC_FDT_IRQ_TYPE_PPI, GIC_MAINTENANCE_PPI, IRQ_TYPE_LEVEL_HIGH),
        ))

    cells = []
    for ppi in layout.TIMER_PPIS:
        cells += [GIC_FDT_IRQ_TYPE_PPI, ppi, IRQ_TYPE_LEVEL_HIGH]
    root.append(fdt.Node(
        "timer",
        fdt.Property("always-on"),
        fdt.PropWords("interrupts", *cells),
        fdt.PropStrings("compatible", "arm,armv8-timer", "arm,armv7-timer"),
    ))

    root.append(fdt.Node(
        "apb-pclk",
        fdt.PropWords("phandle", CLOCK_PHANDLE),
        fdt.PropStrings("clock-output-names", "clk24mhz"),
        fdt.PropWords("clock-frequency", layout.PL011_CLOCK_HZ),
        fdt.PropWords("#clock-cells", 0),
        fdt.PropStrings("compatible", "fixed-clock"),
    ))

    uart = f"pl011@{layout.PL011_BASE:x}"
    uart_irq = [fdt.PropWords("interrupts", GIC_FDT_IRQ_TYPE_SPI, layout.PL011_SPI, IRQ_TYPE_LEVEL_HIGH)] if cfg.gic else []
    root.append(fdt.Node(
        uart,
        fdt.PropStrings("clock-names", "uartclk", "apb_pclk"),
        fdt.PropWords("clocks", CLOCK_PHANDLE, CLOCK_PHANDLE),
        *uart_irq,
        _reg(layout.PL011_BASE, layout.PL011_SIZE),
        fdt.PropStrings("compatible", "arm,pl011", "arm,primecell"),
    ))

    root.append(fdt.Node("aliases", fdt.PropStrings("serial0", f"/{uart}")))

    chosen = fdt.Node("chosen", fdt.PropStrings("stdout-path", f"/{uart}"))
    if cfg.bootargs:
        # UTF-8 bytes as given (QEMU's qemu_fdt_setprop_string); the library's string type is ASCII-only
        chosen.append(fdt.PropBytes("bootargs", data=list(cfg.bootargs.encode("utf-8") + b"\0")))
    if cfg.initrd is not None:
        start, end = cfg.initrd
        chosen.append(fdt.PropWords("linux,initrd-start", start >> 32, start & 0xFFFF_FFFF))
        chosen.append(fdt.PropWords("linux,initrd-end", end >> 32, end & 0xFFFF_FFFF))
    root.append(chosen)

    return tree.to_dtb(version=17)
