"""Events taken from user mode read the IDT, the GDT and the TSS as implicit supervisor-mode
accesses (Intel SDM Vol. 3A 4.6, AMD APM Vol. 2 5.6), and push their frame on the inner stack
at the new privilege level: a kernel may map all of them supervisor-only, as Linux does with
page-table isolation (its IDT and entry stacks live in the CPU entry area)."""

from __future__ import annotations

import pytest

from guestlib import X86_DATA, X86_IDT, X86_STACK, x86_64, x86_idt_setup

TABLES = 0x60_0000  # PML4, PDPT, PD
GDT = X86_DATA + 0x800
TSS = X86_DATA + 0x900
USER = 0x40_0000  # the only user-accessible 2 MiB page
OUT = X86_DATA + 0x10
KSTACK = 0x17_0000

GUEST = f"""
    mov rsp, {X86_STACK}
    {x86_idt_setup({14: 'pf'})}
    mov rdi, {TABLES}
    mov ecx, 0x600
    xor eax, eax
    rep stosq
    mov rax, {TABLES + 0x1007}
    mov qword ptr [{TABLES}], rax
    mov rax, {TABLES + 0x2007}
    mov qword ptr [{TABLES + 0x1000}], rax
    mov qword ptr [{TABLES + 0x2000}], 0x83          # 0-2 MiB: code, kernel stack; supervisor
    mov qword ptr [{TABLES + 0x2008}], 0x200083      # 2-4 MiB: data, GDT, TSS, IDT; supervisor
    mov qword ptr [{TABLES + 0x2010}], 0x400087      # 4-6 MiB: user
    mov qword ptr [{TABLES + 0x2018}], 0x600083      # 6-8 MiB: the tables; supervisor
    mov rdi, {GDT}
    mov qword ptr [rdi], 0
    mov rax, 0x00af9a000000ffff
    mov qword ptr [rdi + 0x08], rax
    mov rax, 0x00cf92000000ffff
    mov qword ptr [rdi + 0x10], rax
    mov rax, 0x00af9a000000ffff
    mov qword ptr [rdi + 0x18], rax
    mov rax, 0x00cff2000000ffff
    mov qword ptr [rdi + 0x20], rax                  # user data, DPL 3
    mov rax, 0x00affa000000ffff
    mov qword ptr [rdi + 0x28], rax                  # user code, 64-bit, DPL 3
    mov rax, {(0x67 | (TSS & 0xFFFFFF) << 16 | 0x89 << 40 | (TSS >> 24 & 0xFF) << 56):#x}
    mov qword ptr [rdi + 0x30], rax                  # 64-bit TSS, available
    mov qword ptr [rdi + 0x38], 0
    mov rax, {KSTACK}
    mov qword ptr [{TSS + 4}], rax                   # RSP0
    mov word ptr [rdi + 0x80], 0x3f
    mov qword ptr [rdi + 0x82], rdi
    lgdt [rdi + 0x80]
    mov ax, 0x30
    ltr ax
    mov rax, {TABLES}
    mov cr3, rax
    lea rsi, [rip + user]
    mov rdi, {USER}
    mov ecx, 64
    rep movsb
    push 0x23
    push {USER + 0x10_0000}
    push 0x2
    push 0x2b
    push {USER}
    iretq
user:
    mov rax, qword ptr [{X86_DATA}]                  # a supervisor page: #PF
    jmp user
pf:
    pop rax
    mov qword ptr [{OUT}], rax                       # error code
    mov rax, cr2
    mov qword ptr [{OUT + 8}], rax
    mov rax, qword ptr [rsp + 8]
    mov qword ptr [{OUT + 16}], rax                  # CS pushed: the user's
    mov qword ptr [{OUT + 24}], rsp                  # on the TSS's RSP0 stack
    mov al, 0
    out 0xf4, al
    hlt
"""


@pytest.mark.parametrize("arch", ["intel_vtx", "amd_svm"])
def test_user_mode_page_fault_is_delivered_through_a_supervisor_only_idt(make_vm, arch):
    vm = make_vm(arch)
    vm.load(x86_64(GUEST))
    r = vm.run(timeout=20)
    assert r.status == 1, r.reason
    error, cr2, cs, rsp = (vm.memory.read_u64(OUT + 8 * i) for i in range(4))
    assert error == 0b101  # present, read, user (SDM 4.7)
    assert cr2 == X86_DATA
    assert cs == 0x2b
    assert rsp == KSTACK - 5 * 8  # SS, RSP, RFLAGS, CS, RIP pushed on RSP0's stack
