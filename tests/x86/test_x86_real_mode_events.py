"""Events in real-address mode, reached through real guest instructions (a Multiboot kernel
loads a 16-bit code segment, clears CR0.PE and far-jumps to real mode): an injected interrupt
is delivered through the IVT with the 16-bit FLAGS, CS, IP frame (SDM 20.1.4), and a queued
interrupt waits for the end of the STI shadow there too, on both vendors."""

from __future__ import annotations

import struct

import pytest
from keystone import KS_ARCH_X86, KS_MODE_16, Ks

from eventvmm import Script
from guestlib import X86_DATA
from test_x86_platform import multiboot_kernel
from hvsim.core.exits import Event, EventType

BLOB, ENTRY16, REAL, HANDLER, IDTR = 0x8000, 0x8000, 0x8040, 0x8100, 0x80F0
DATA16 = 0x9000
GDTR_AT, GDT_AT, BLOB_AT = X86_DATA + 0xF00, X86_DATA + 0x1000, X86_DATA + 0x2000
# null, flat 32-bit code 0x08 and data 0x10, 16-bit code 0x18 and data 0x20 (base 0, 64 KiB)
GDT = struct.pack("<QQQQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00009A000000FFFF, 0x000092000000FFFF)
_KS16 = Ks(KS_ARCH_X86, KS_MODE_16)


def a16(src: str, base: int) -> bytes:
    return bytes(_KS16.asm(src, base)[0])


TO_REAL_MODE = f"""
    mov ax, 0x20
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr0
    and eax, 0xfffffffe
    mov cr0, eax
    .byte 0xea
    .word {REAL:#x}
    .word 0
"""
HANDLER_SRC = f"""
    mov byte ptr [{DATA16:#x}], 0x21
    mov bx, sp
    mov ax, word ptr [bx]
    mov word ptr [{DATA16 + 2:#x}], ax
    mov ax, word ptr [bx + 2]
    mov word ptr [{DATA16 + 4:#x}], ax
    mov ax, word ptr [bx + 4]
    mov word ptr [{DATA16 + 6:#x}], ax
    pushf
    pop ax
    mov word ptr [{DATA16 + 8:#x}], ax
    iret
"""


def real_mode_vm(make_vm, arch, real_src: str):
    """A VM whose guest switches to real mode and runs ``real_src`` at REAL (IVT entry 0x20 is
    the handler, which records IP, CS, FLAGS from its frame and its own FLAGS)."""
    blob = bytearray(0x200)
    head = a16(TO_REAL_MODE, ENTRY16)
    real = a16(f"""
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7000
        mov word ptr [0x80], {HANDLER:#x}
        mov word ptr [0x82], 0
        lidt [{IDTR:#x}]
        {real_src}
        mov al, byte ptr [{DATA16:#x}]
        out 0xf4, al
        hlt""", REAL)
    handler = a16(HANDLER_SRC, HANDLER)
    assert len(head) <= REAL - BLOB and len(real) <= IDTR - REAL
    blob[0:len(head)] = head
    blob[REAL - BLOB:REAL - BLOB + len(real)] = real
    blob[IDTR - BLOB:IDTR - BLOB + 6] = struct.pack("<HI", 0x3FF, 0)
    blob[HANDLER - BLOB:HANDLER - BLOB + len(handler)] = handler
    kernel = multiboot_kernel(f"""
        cli
        lgdt [{GDTR_AT:#x}]
        mov esi, {BLOB_AT:#x}
        mov edi, {BLOB:#x}
        mov ecx, {len(blob)}
        rep movsb
        .byte 0xea
        .long {ENTRY16:#x}
        .word 0x18""")
    vm = make_vm(arch)
    vm.load(kernel)
    vm.memory.write(GDTR_AT, struct.pack("<HI", len(GDT) - 1, GDT_AT))
    vm.memory.write(GDT_AT, GDT)
    vm.memory.write(BLOB_AT, bytes(blob))
    return vm


def frame(vm):
    ip, cs, flags, inside = struct.unpack("<HHHH", vm.memory.read(DATA16 + 2, 8))
    return ip, cs, flags, inside


@pytest.fixture(params=["intel_vtx", "amd_svm"])
def arch(request):
    return request.param


def test_an_injected_interrupt_in_real_mode_goes_through_the_ivt_with_a_16_bit_frame(make_vm, hvsim_pm, arch):
    hvsim_pm.register(Script(lambda v: v.inject_external(0x20)))
    vm = real_mode_vm(make_vm, arch, "sti\nhlt")
    assert vm.run(timeout=10).status == (0x21 << 1) | 1
    ip, cs, flags, inside = frame(vm)
    after_hlt = REAL + len(a16("xor ax, ax\nmov ds, ax\nmov es, ax\nmov ss, ax\nmov sp, 0x7000\n"
                               f"mov word ptr [0x80], {HANDLER:#x}\nmov word ptr [0x82], 0\n"
                               f"lidt [{IDTR:#x}]\nsti\nhlt", REAL))
    assert (ip, cs) == (after_hlt, 0)
    assert flags & 0x200 and not inside & 0x200  # IF was set when interrupted; cleared in the handler


def test_in_real_mode_a_queued_interrupt_waits_for_the_end_of_the_sti_shadow(make_vm, hvsim_pm, arch):
    hvsim_pm.register(Script(lambda v: v.vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, 0x20))))
    vm = real_mode_vm(make_vm, arch, f"""
        cli
        hlt
        sti
        mov byte ptr [{DATA16 + 1:#x}], 1
        mov byte ptr [{DATA16 + 10:#x}], 2""")
    assert vm.run(timeout=10).status == (0x21 << 1) | 1
    ip, _cs, _flags, _inside = frame(vm)
    code = vm.memory.read(ip, 5)
    assert code == a16(f"mov byte ptr [{DATA16 + 10:#x}], 2", ip)  # after the shadowed store
