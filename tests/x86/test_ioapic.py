"""The IOAPIC, the 8254 and the 8259 pair routing ISA interrupts to the local APIC, on both
vendors: the PIT's IRQ 0 through the interrupt source override (INTIN 2), COM1's receive and
THR-empty interrupts on IRQ 4, and the 8259 in ExtINT mode through LINT0."""

from __future__ import annotations

import pytest

from apic_guests import COUNT, EXIT, OUT, counting_handler, reg, xapic_enable
from guestlib import X86_STACK, x86_64, x86_idt_setup

VENDORS = ["intel_vtx", "amd_svm"]
IOAPIC = 0xFEC0_0000


@pytest.fixture(params=VENDORS)
def arch(request):
    return request.param


def run64(make_vm, arch, src, before=None, **kw):
    vm = make_vm(arch, deterministic=True, **kw)
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nmov r14, {IOAPIC:#x}\n{src}"))
    if before is not None:
        before(vm)
    return vm, vm.run(timeout=30)


def ioapic_write(index: int, value: int) -> str:
    return f"mov dword ptr [r14], {index:#x}\nmov dword ptr [r14 + 0x10], {value:#x}"


def ioapic_read_to(index: int, at: int) -> str:
    return f"mov dword ptr [r14], {index:#x}\nmov eax, dword ptr [r14 + 0x10]\nmov dword ptr [{at:#x}], eax"


def pit_channel0(mode: int, count: int) -> str:
    return (f"mov al, {0x30 | mode << 1:#x}\nout 0x43, al\nmov al, {count & 0xFF:#x}\nout 0x40, al\n"
            f"mov al, {count >> 8:#x}\nout 0x40, al")


def test_ioapic_registers(make_vm, arch):
    src = f"""
    {ioapic_read_to(0x01, OUT)}
    {ioapic_read_to(0x10, OUT + 4)}
    {ioapic_write(0x12, 0x15834)}
    {ioapic_read_to(0x12, OUT + 8)}
    {ioapic_write(0x01, 0)}
    {ioapic_read_to(0x01, OUT + 12)}
    {EXIT}"""
    vm, r = run64(make_vm, arch, src)
    assert r.status == 1, r.reason
    m = vm.memory
    assert m.read_u32(OUT) == 0x170011  # version 0x11, 24 entries
    assert m.read_u32(OUT + 4) == 0x10000  # masked at reset
    assert m.read_u32(OUT + 8) == 0x10834  # delivery status (12), remote IRR (14) are read-only
    assert m.read_u32(OUT + 12) == 0x170011  # read-only


def test_pit_irq0_reaches_the_lapic_through_intin2(make_vm, arch):
    src = f"""
    {x86_idt_setup({0x30: "tick"})}
    {xapic_enable()}
    {ioapic_write(0x14, 0x30)}
    {ioapic_write(0x15, 0)}
    {pit_channel0(2, 1193)}
    sti
wait:
    hlt
    cmp dword ptr [{COUNT:#x}], 3
    jb wait
    cli
    {ioapic_write(0x14, 0x10030)}
    {EXIT}
{counting_handler("tick", COUNT)}
"""
    vm, r = run64(make_vm, arch, src)
    assert r.status == 1, r.reason
    assert vm.memory.read_u32(COUNT) == 3


def test_com1_receive_and_thr_empty_interrupts_on_irq4(make_vm, arch):
    """16550A IER: received data available (IIR 0x04) first, then THR empty (IIR 0x02), each
    an edge on IRQ 4 -> INTIN 4 -> vector 0x34."""
    src = f"""
    {x86_idt_setup({0x34: "com1"})}
    {xapic_enable()}
    {ioapic_write(0x18, 0x34)}
    {ioapic_write(0x19, 0)}
    sti
    mov dx, 0x3f9
    mov al, 1
    out dx, al                          // IER: received data available
wait1:
    cmp dword ptr [{COUNT:#x}], 1
    jb wait1
    mov dx, 0x3f9
    mov al, 2
    out dx, al                          // IER: THR empty
wait2:
    cmp dword ptr [{COUNT:#x}], 2
    jb wait2
    cli
    {EXIT}
com1:
    push rax
    push rdx
    push rbx
    mov ebx, dword ptr [{COUNT:#x}]
    mov dx, 0x3fa
    in al, dx
    mov byte ptr [{OUT:#x} + rbx], al   // IIR
    test al, 4
    jz no_data
    mov dx, 0x3f8
    in al, dx
    mov byte ptr [{OUT + 8:#x}], al     // the byte received
no_data:
    lock inc dword ptr [{COUNT:#x}]
    mov {reg(0xB0)}, 0
    pop rbx
    pop rdx
    pop rax
    iretq
"""
    vm, r = run64(make_vm, arch, src, before=lambda vm: vm.bus.port(0x3F8).device.feed(b"A"))
    assert r.status == 1, r.reason
    m = vm.memory
    assert m.read_u32(COUNT) == 2
    assert m.read(OUT, 2) == bytes([0x04, 0x02])
    assert m.read(OUT + 8, 1) == b"A"


def test_8259_extint_through_lint0(make_vm, arch):
    """The 8259 pair initialized at vectors 0x20 / 0x28, IRQ 0 unmasked, LINT0 in ExtINT mode:
    the PIT's ticks arrive at vector 0x20 and end with a non-specific EOI to the 8259."""
    src = f"""
    {x86_idt_setup({0x20: "tick"})}
    {xapic_enable()}
    mov {reg(0x350)}, 0x700
    mov al, 0x11
    out 0x20, al
    out 0xa0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xa1, al
    mov al, 4
    out 0x21, al
    mov al, 2
    out 0xa1, al
    mov al, 1
    out 0x21, al
    out 0xa1, al
    mov al, 0xfe
    out 0x21, al
    mov al, 0xff
    out 0xa1, al
    {pit_channel0(2, 1193)}
    sti
wait:
    hlt
    cmp dword ptr [{COUNT:#x}], 3
    jb wait
    cli
    {EXIT}
tick:
    push rax
    lock inc dword ptr [{COUNT:#x}]
    mov al, 0x20
    out 0x20, al
    pop rax
    iretq
"""
    vm, r = run64(make_vm, arch, src)
    assert r.status == 1, r.reason
    assert vm.memory.read_u32(COUNT) == 3


def test_level_triggered_entry_remote_irr_and_eoi_broadcast(make_vm, arch):
    """A level-triggered entry (COM1 with two bytes waiting, IER = received data): remote IRR is
    set while the vector is in service; the local APIC's EOI (TMR set) is broadcast, clears it,
    and the line, still asserted with the second byte, sends again (82093AA, SDM 11.8.5)."""
    src = f"""
    {x86_idt_setup({0x34: "com1"})}
    {xapic_enable()}
    {ioapic_write(0x18, 0x8034)}
    {ioapic_write(0x19, 0)}
    sti
    mov dx, 0x3f9
    mov al, 1
    out dx, al
wait:
    cmp dword ptr [{COUNT:#x}], 2
    jb wait
    cli
    {ioapic_read_to(0x18, OUT + 16)}
    {EXIT}
com1:
    push rax
    push rdx
    push rbx
    mov ebx, dword ptr [{COUNT:#x}]
    mov dword ptr [r14], 0x18
    mov eax, dword ptr [r14 + 0x10]
    mov dword ptr [{OUT:#x} + rbx * 4], eax     // the entry while in service
    mov eax, {reg(0x180 + 0x10)}
    mov dword ptr [{OUT + 8:#x} + rbx * 4], eax // TMR bits 32-63 (vector 0x34)
    mov dx, 0x3f8
    in al, dx                                   // one byte per interrupt
    lock inc dword ptr [{COUNT:#x}]
    mov {reg(0xB0)}, 0
    pop rbx
    pop rdx
    pop rax
    iretq
"""
    vm, r = run64(make_vm, arch, src, before=lambda vm: vm.bus.port(0x3F8).device.feed(b"AB"))
    assert r.status == 1, r.reason
    m = vm.memory
    assert m.read_u32(COUNT) == 2
    assert m.read_u32(OUT) & (1 << 14) and m.read_u32(OUT + 4) & (1 << 14)  # remote IRR in service
    assert m.read_u32(OUT + 8) & (1 << (0x34 - 32))  # TMR: level
    assert not m.read_u32(OUT + 16) & (1 << 14)  # cleared by the last EOI


def test_logical_destinations_flat_and_cluster(make_vm, arch):
    """SDM 11.6.2.2: flat model (LDR bits 31:24 AND the destination), cluster model (cluster in
    bits 7:4, members in 3:0); a lowest-priority IPI goes to the one match; a logical
    destination matching nobody delivers nothing."""
    src = f"""
    {x86_idt_setup({0x55: "h55", 0x56: "h56", 0x57: "h57", 0x58: "h58"})}
    {xapic_enable()}
    mov {reg(0xD0)}, 0x01000000
    mov {reg(0x310)}, 0x01000000
    mov {reg(0x300)}, 0x855             // flat, logical 0x01: self
    mov {reg(0x310)}, 0x02000000
    mov {reg(0x300)}, 0x856             // flat, logical 0x02: nobody
    mov {reg(0xE0)}, 0x0fffffff         // cluster model
    mov {reg(0xD0)}, 0x11000000         // cluster 1, member bit 0
    mov {reg(0x310)}, 0x11000000
    mov {reg(0x300)}, 0x957             // lowest priority, logical 0x11
    mov {reg(0x310)}, 0x21000000
    mov {reg(0x300)}, 0x858             // cluster 2: nobody
    sti
    nop
    nop
    cli
    {EXIT}
{counting_handler("h55", OUT)}
{counting_handler("h56", OUT + 4)}
{counting_handler("h57", OUT + 8)}
{counting_handler("h58", OUT + 12)}
"""
    vm, r = run64(make_vm, arch, src)
    assert r.status == 1, r.reason
    m = vm.memory
    assert [m.read_u32(OUT + 4 * i) for i in range(4)] == [1, 0, 1, 0]


def test_lint0_with_a_reserved_delivery_mode_delivers_nothing(make_vm, arch):
    """LINT0 programmed with delivery mode 011 (reserved): the 8259's requests are dropped and
    the guest sees no interrupt and no error."""
    src = f"""
    {x86_idt_setup({v: "any" for v in range(0x20, 0x100)})}
    {xapic_enable()}
    mov {reg(0x350)}, 0x320
    mov al, 0x11
    out 0x20, al
    mov al, 0x20
    out 0x21, al
    mov al, 4
    out 0x21, al
    mov al, 1
    out 0x21, al
    mov al, 0xfe
    out 0x21, al
    {pit_channel0(2, 1193)}
    sti
    mov ecx, 2000000
spin:
    loop spin
    cli
    mov {reg(0x280)}, 0
    mov eax, {reg(0x280)}
    mov dword ptr [{OUT:#x}], eax
    {EXIT}
any:
    lock inc dword ptr [{COUNT:#x}]
    iretq
"""
    vm, r = run64(make_vm, arch, src)
    assert r.status == 1, r.reason
    assert vm.memory.read_u32(COUNT) == 0 and vm.memory.read_u32(OUT) == 0
    assert vm.clock.now_ns() > 5_000_000  # several PIT periods passed
    assert vm.arch.apic_bus.pic.master.irr & 1  # the 8259 requested IRQ 0; nobody acknowledged it


def test_console_input_raises_com1_interrupts(make_vm, arch):
    """Console input (what ``hvsim run`` reads from stdin) reaches COM1 between slices; with
    IER = received data its IRQ 4 wakes the halted guest through the IOAPIC and the local APIC;
    the handler echoes each byte in upper case until a newline."""
    import threading

    src = f"""
    {x86_idt_setup({0x34: "com1"})}
    {xapic_enable()}
    {ioapic_write(0x18, 0x34)}
    {ioapic_write(0x19, 0)}
    mov dx, 0x3f9
    mov al, 1
    out dx, al
    sti
idle:
    hlt
    jmp idle
com1:
    mov dx, 0x3fd
    in al, dx
    test al, 1
    jz com1_done
    mov dx, 0x3f8
    in al, dx
    cmp al, 10
    je finish
    sub al, 32
    out dx, al
    jmp com1
com1_done:
    mov {reg(0xB0)}, 0
    iretq
finish:
    {EXIT}
"""
    vm = make_vm(arch)
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nmov r14, {IOAPIC:#x}\n{src}"))
    threading.Timer(0.05, vm.console.send, (b"irq",)).start()
    threading.Timer(0.10, vm.console.send, (b"four\n",)).start()
    vm.console.input_open = True  # an input source is attached (as hvsim run's stdin)
    result = vm.run(timeout=20)
    assert result.status == 1, result.reason
    assert vm.console.text == "IRQFOUR"
