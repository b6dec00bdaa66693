"""The GICv3 distributor and redistributors as a guest reads and writes them (GIC spec IHI
0069, chapter 12 "GIC register descriptions"), at QEMU virt's addresses: identification,
GICR_TYPER affinity and Last, GICR_WAKER, the enable/pending/priority/config banks, IROUTER,
read-only registers and reserved offsets; and the PL011's interrupt, SPI 1 (INTID 33),
routed by GICD_IROUTER33."""

from __future__ import annotations

import struct

import pytest
from el2guest import SYSTEM_OFF
from gicguest import (DATA, GIC_ON, GICD, GICR, ICC_EOIR1_EL1, ICC_HPPIR1_EL1, ICC_IAR1_EL1, UNEXPECTED, gic_guest,
                      gicr_of, mov32)
from hvsim.core.vm import STATUS_OFF


def run(arm_vm, main: str, slots: int, **kw) -> list[int]:
    vm = arm_vm(gic_guest(f"""
    {mov32("x25", DATA)}
    {mov32("x26", GICD)}
    {mov32("x27", GICR)}
    {main}
    {SYSTEM_OFF}
irq:
    {SYSTEM_OFF}
"""), **kw)
    result = vm.run(timeout=10)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    return list(struct.unpack(f"<{slots}Q", vm.memory.read(DATA, 8 * slots)))


def test_identification_and_typer(arm_vm):
    typer, pidr2, iidr, r0_typer, r1_typer, r0_pidr2, ctlr = run(arm_vm, """
    ldr w1, [x26, #4]               // GICD_TYPER
    str x1, [x25]
    movz x2, #0xffe8
    ldr w1, [x26, x2]               // GICD_PIDR2
    str x1, [x25, #8]
    ldr w1, [x26, #8]               // GICD_IIDR
    str x1, [x25, #16]
    ldr x1, [x27, #8]               // GICR_TYPER of vCPU 0 (64-bit)
    str x1, [x25, #24]
    add x3, x27, #0x20, lsl #12
    ldr x1, [x3, #8]                // GICR_TYPER of vCPU 1
    str x1, [x25, #32]
    ldr w1, [x27, x2]               // GICR_PIDR2
    str x1, [x25, #40]
    ldr w1, [x26]                   // GICD_CTLR: DS
    str x1, [x25, #48]
""", 7, vcpus=2)
    assert typer & 0x1F == 8  # ITLinesNumber: 288 INTIDs
    assert typer >> 5 & 7 == 1  # CPUNumber: two CPUs
    assert typer >> 19 & 0x1F == 15 and not typer >> 16 & 3  # IDbits 16; no LPIs, no MBIS
    assert pidr2 >> 4 & 0xF == 3 and r0_pidr2 >> 4 & 0xF == 3  # ArchRev: GICv3
    assert iidr & 0xFFF == 0x43B  # Implementer: Arm
    assert r0_typer >> 32 == 0 and r0_typer >> 8 & 0xFFFF == 0 and not r0_typer & 0x10
    assert r1_typer >> 32 == 1 and r1_typer >> 8 & 0xFFFF == 1 and r1_typer & 0x10  # Last
    assert ctlr == 0x40  # DS: one security state


def test_waker_read_only_registers_and_reserved_offsets(arm_vm):
    waker0, waker1, typer_after, reserved_d, reserved_r, reserved_sgi = run(arm_vm, """
    ldr w1, [x27, #0x14]
    str x1, [x25]                   // GICR_WAKER at reset: ProcessorSleep | ChildrenAsleep
    mov w1, #0
    str w1, [x27, #0x14]
    ldr w1, [x27, #0x14]
    str x1, [x25, #8]               // awake: 0
    mov w1, #-1
    str w1, [x26, #4]               // GICD_TYPER is read-only
    ldr w1, [x26, #4]
    str x1, [x25, #16]
    mov w2, #-1
    str w2, [x26, #0x20]            // reserved
    ldr w1, [x26, #0x20]
    str x1, [x25, #24]
    str w2, [x27, #0x40]            // reserved in RD_base
    ldr w1, [x27, #0x40]
    str x1, [x25, #32]
    add x3, x27, #0x10, lsl #12
    str w2, [x3, #0x10]             // reserved in SGI_base
    ldr w1, [x3, #0x10]
    str x1, [x25, #40]
""", 6)
    assert waker0 == 0b110 and waker1 == 0
    assert typer_after & 0x1F == 8
    assert (reserved_d, reserved_r, reserved_sgi) == (0, 0, 0)


def test_enable_pending_priority_config_and_irouter_banks(arm_vm):
    values = run(arm_vm, """
    movz w1, #0x0006
    str w1, [x26, #0x104]           // GICD_ISENABLER1: INTIDs 33, 34
    mov w1, #4
    str w1, [x26, #0x184]           // GICD_ICENABLER1: 34 off again
    ldr w1, [x26, #0x104]
    str x1, [x25]                   // 0b10
    mov w1, #0xab
    strb w1, [x26, #0x421]          // GICD_IPRIORITYR byte 33
    ldr w1, [x26, #0x420]
    str x1, [x25, #8]               // 0xa8 << 8: five priority bits
    mov w1, #8
    str w1, [x26, #0xc08]           // GICD_ICFGR2: INTID 33 edge
    ldr w1, [x26, #0xc08]
    str x1, [x25, #16]
    movz x1, #0x0201
    movk x1, #0x0003, lsl #16
    movk x1, #0x0004, lsl #32       // Aff3 4, Aff2 3, Aff1 2, Aff0 1
    movz x2, #0x6108
    str x1, [x26, x2]               // GICD_IROUTER33
    ldr x1, [x26, x2]
    str x1, [x25, #24]
    mov w1, #2
    str w1, [x26, #0x204]           // GICD_ISPENDR1: 33 pending
    ldr w1, [x26, #0x204]
    str x1, [x25, #32]
    str w1, [x26, #0x284]           // GICD_ICPENDR1
    ldr w1, [x26, #0x204]
    str x1, [x25, #40]
    add x3, x27, #0x10, lsl #12
    ldr w1, [x3, #0xc00]            // GICR_ICFGR0: SGIs edge, read-only
    str x1, [x25, #48]
    str wzr, [x3, #0xc00]
    ldr w1, [x3, #0xc00]
    str x1, [x25, #56]
    ldr w1, [x26, #0x100]           // GICD_ISENABLER0 with ARE: SGIs/PPIs are the GICR's, RAZ
    str x1, [x25, #64]
""", 9)
    assert values[0] == 0b10
    assert values[1] == 0xA8 << 8
    assert values[2] == 8
    assert values[3] == 0x4_0003_0201
    assert values[4] == 0b10 and values[5] == 0
    assert values[6] == values[7] == 0xAAAA_AAAA
    assert values[8] == 0


UART_IRQ = f"""
    mov x0, #0
    {gicr_of("x0")}
    {GIC_ON}
    {mov32("x25", DATA)}
    {mov32("x26", GICD)}
    mov w1, #0x80
    strb w1, [x26, #0x421]          // GICD_IPRIORITYR: INTID 33
    mov w1, #2
    str w1, [x26, #0x84]            // GICD_IGROUPR1: 33 in group 1
    movz x2, #0x6108
    mov x1, #{{route}}
    str x1, [x26, x2]               // GICD_IROUTER33
    mov w1, #2
    str w1, [x26, #0x104]
    movz x20, #0x0900, lsl #16
    mov w1, #0x20
    str w1, [x20, #0x38]            // UARTIMSC: TXIM
    mov x19, #0
    msr daifclr, #2
    mov w1, #0x41
    strb w1, [x20]                  // 'A': TXRIS, UARTINTR rises
    mov x3, #4000
spin:
    subs x3, x3, #1
    b.ne spin
    mrs x1, {ICC_HPPIR1_EL1}
    str x1, [x25, #8]
    str x19, [x25]
    {SYSTEM_OFF}
irq:
    mrs x0, {ICC_IAR1_EL1}
    str x0, [x25, #16]
    mov w1, #0x20
    str w1, [x20, #0x44]            // UARTICR: clear TX, the line drops
    add x19, x19, #1
    msr {ICC_EOIR1_EL1}, x0
    eret
"""


def test_the_pl011_interrupts_through_spi_1_routed_to_vcpu_0(arm_vm):
    vm = arm_vm(gic_guest(UART_IRQ.format(route=0)))
    result = vm.run(timeout=10)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    count, hppir, intid = struct.unpack("<3Q", vm.memory.read(DATA, 24))
    assert (count, intid, hppir) == (1, 33, 1023)
    assert vm.console.text.startswith("A")


@pytest.mark.parametrize("route", [7, 0x100])
def test_an_irouter_naming_no_cpu_leaves_the_spi_undelivered(arm_vm, route):
    vm = arm_vm(gic_guest(UART_IRQ.format(route=route)))
    result = vm.run(timeout=10)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    count, hppir, _ = struct.unpack("<3Q", vm.memory.read(DATA, 24))
    assert (count, hppir) == (0, 1023)
    spi = vm.arch.vgic.irq(0, 33)
    assert spi.pending and spi.enabled  # pending at the distributor, forwarded to no PE


def test_no_access_to_the_gic_frames_raises(arm_vm):
    """Every offset of GICD and both GICR frames, every access size, read and written with
    all-ones and zero: what the device model answers is a value, never an exception."""
    vm = arm_vm(vcpus=2)
    gic = vm.arch.vgic
    for read, write, span in ((gic.dist_read, gic.dist_write, 0x1_0000), (gic.redist_read, gic.redist_write, 0x4_0000)):
        for offset in range(0, span, 4):
            for size in (1, 2, 4, 8):
                for value in (0xFFFF_FFFF_FFFF_FFFF >> (64 - 8 * size), 0):
                    write(offset, size, value)
                    assert read(offset, size) >= 0


@pytest.mark.parametrize("args, message", [
    (["--gic", "v2"], "bad --gic 'v2': use v3 or none"),
    (["--gic", "none", "--arch", "intel_vtx"], "--gic applies to arm_el2 only, not intel_vtx"),
])
def test_a_bad_gic_option_is_one_line_and_status_2(tmp_path, capsys, args, message):
    from hvsim.core.cli import main

    image = tmp_path / "guest.bin"
    image.write_bytes(b"\0" * 16)
    argv = ["run", str(image)] + (args if "--arch" in args else args + ["--arch", "arm_el2"])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_an_intid_injected_through_the_hook_reaches_the_guest_at_its_spi(arm_vm, hvsim_pm):
    """``vm.inject(vcpu, Event(VIRTUAL_IRQ, vector=40))`` (hvsim_inject_event) makes SPI 8
    pending at the vGIC's distributor; the guest, which enabled and routed it, acknowledges
    INTID 40. The hvsim_interrupt_acknowledged hook sees the exception taken with that INTID."""
    from el2guest import w0
    from hvsim import hookimpl
    from hvsim.core.exits import Event, EventType, ExitKind
    from hvsim.plugins.arm_el2 import psci

    taken = []

    class Device:
        @hookimpl
        def hvsim_exit_handlers(self, vm, registry):
            def on_hvc(vcpu, exit):
                if vcpu.smccc_x0 & 0xFFFF_FFFF != 0x8600_00E0:
                    return psci.handle_hvc(vcpu, exit)
                vm.inject(vcpu, Event(EventType.VIRTUAL_IRQ, vector=40))
                vcpu.smccc_return(0)

            registry.add(ExitKind.HYPERCALL, on_hvc)

        @hookimpl
        def hvsim_interrupt_acknowledged(self, vcpu, event):
            taken.append(event.vector)

    hvsim_pm.register(Device())
    vm = arm_vm(gic_guest(f"""
    mov x0, #0
    {gicr_of("x0")}
    {GIC_ON}
    {mov32("x25", DATA)}
    {mov32("x26", GICD)}
    mov w1, #0x80
    strb w1, [x26, #0x428]          // GICD_IPRIORITYR: INTID 40
    mov w1, #0x100
    str w1, [x26, #0x84]            // GICD_IGROUPR1: 40 in group 1
    str w1, [x26, #0x104]           // GICD_ISENABLER1: 40
    movz x2, #0x6140
    str xzr, [x26, x2]              // GICD_IROUTER40: vCPU 0
    msr daifclr, #2
    {w0(0x8600_00E0)}
    hvc #0
    nop
    ldr x1, [x25]
    {SYSTEM_OFF}
irq:
    mrs x0, {ICC_IAR1_EL1}
    str x0, [x25]
    msr {ICC_EOIR1_EL1}, x0
    eret
"""))
    result = vm.run(timeout=10)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    assert vm.memory.read_u64(DATA) == 40
    assert taken == [40]


def test_uart_input_wakes_a_wfi_guest_through_spi_1(arm_vm):
    """Console input (sent from another thread, handed to the PL011 by the run loop) raises
    UARTINTR with the receive interrupt enabled: SPI 1 (INTID 33) wakes the guest from WFI;
    its handler acknowledges it, drains the receive FIFO (the line drops) and ends it."""
    import threading

    vm = arm_vm(gic_guest(f"""
    mov x0, #0
    {gicr_of("x0")}
    {GIC_ON}
    {mov32("x25", DATA)}
    {mov32("x26", GICD)}
    mov w1, #0x80
    strb w1, [x26, #0x421]          // GICD_IPRIORITYR: INTID 33
    mov w1, #2
    str w1, [x26, #0x84]            // GICD_IGROUPR1
    str w1, [x26, #0x104]           // GICD_ISENABLER1
    movz x2, #0x6108
    str xzr, [x26, x2]              // GICD_IROUTER33: vCPU 0
    movz x20, #0x0900, lsl #16
    mov w1, #0x10
    str w1, [x20, #0x38]            // UARTIMSC: RXIM
    mov x19, #0                     // interrupts taken
    msr daifclr, #2
idle:
    wfi
    ldrb w1, [x25, #8]
    cmp w1, #10                     // the newline ends it
    b.ne idle
    str x19, [x25]
    {SYSTEM_OFF}
irq:
    mrs x0, {ICC_IAR1_EL1}
    add x19, x19, #1
drain:
    ldr w1, [x20, #0x18]            // UARTFR
    tbnz w1, #4, drained            // RXFE
    ldr w1, [x20]
    strb w1, [x25, #8]
    sub w1, w1, #32
    strb w1, [x20]                  // echo in upper case
    b drain
drained:
    msr {ICC_EOIR1_EL1}, x0
    eret
"""))
    vm.console.input_open = True  # as hvsim run's stdin pump: more input may come while all are halted
    threading.Timer(0.05, vm.console.send, (b"gic",)).start()
    threading.Timer(0.15, vm.console.send, (b"\n",)).start()
    result = vm.run(timeout=20)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    assert vm.console.text.startswith("GIC")
    assert 2 <= vm.memory.read_u64(DATA) <= 4  # an interrupt per arrival (each drains what came)
