"""Guest fragments the LAPIC / IOAPIC / PIT / SMP tests share (64-bit raw images, see guestlib)."""

from __future__ import annotations

from guestlib import X86_DATA, x86_idt_setup

LAPIC = 0xFEE0_0000
EXIT = "mov al, 0\nout 0xf4, al\nhlt"
COUNT = X86_DATA  # dword: timer ticks the handler counted
IPIS = X86_DATA + 4  # dword: IPIs the AP counted
AP_ALIVE = X86_DATA + 8
OUT = X86_DATA + 0x40  # scratch results


# Guests keep the xAPIC page's address in R15 (a 32-bit displacement would be sign-extended).
R15 = f"mov r15, {LAPIC:#x}"


def reg(offset: int) -> str:
    return f"dword ptr [r15 + {offset:#x}]"


def xapic_enable(svr_vector: int = 0xFF) -> str:
    return f"{R15}\nmov {reg(0xF0)}, {0x100 | svr_vector:#x}"


def counting_handler(label: str, counter: int, eoi: str = "xapic") -> str:
    """An interrupt handler that counts in ``counter`` and EOIs (xAPIC MMIO or x2APIC MSR)."""
    if eoi == "xapic":
        end = f"mov {reg(0xB0)}, 0"
    elif eoi == "x2apic":
        end = "push rcx\npush rdx\nmov ecx, 0x80b\nxor eax, eax\nxor edx, edx\nwrmsr\npop rdx\npop rcx"
    else:
        end = ""
    return f"""
{label}:
    push rax
    lock inc dword ptr [{counter:#x}]
    {end}
    pop rax
    iretq
"""


def timer_ticks(n: int, vector: int = 0x40, count: int = 1_000_000) -> str:
    """Enable the xAPIC, run the timer periodic at ``count`` bus ticks (1 ns each), divide by
    1, count ``n`` ticks with HLT between them, then exit."""
    return f"""
    {x86_idt_setup({vector: "tick"})}
    {xapic_enable()}
    mov {reg(0x3E0)}, 0xb
    mov {reg(0x320)}, {vector | 1 << 17:#x}
    mov {reg(0x380)}, {count}
    sti
wait:
    hlt
    cmp dword ptr [{COUNT:#x}], {n}
    jb wait
    cli
    mov {reg(0x320)}, 0x10000
    {EXIT}
{counting_handler("tick", COUNT)}
"""


AP_VECTOR = 0x20  # the AP's trampoline at 0x20000 (SIPI vector 0x20)
AP_TRAMPOLINE = AP_VECTOR << 12
AP_STACK = 0x19_0000
BOOT_GDTR = 0x880  # the pseudo-descriptor hvsim's loader left (plugins/x86/layout.py)
IDTR = X86_DATA + 0xFF0  # where x86_idt_setup keeps the IDT's pseudo-descriptor


def ap_trampoline(body64: str) -> bytes:
    """Real mode at AP_VECTOR << 8 : 0 -> long mode with the loader's GDT (64-bit code 0x18,
    data 0x10) and page tables (CR3 0x1000), then ``body64`` (64-bit, at AP_TRAMPOLINE + 0x100)."""
    from keystone import KS_ARCH_X86, KS_MODE_16, Ks
    import struct

    from guestlib import x86_64

    real = bytes(Ks(KS_ARCH_X86, KS_MODE_16).asm(f"""
        cli
        xor ax, ax
        mov ds, ax
        lgdt [{BOOT_GDTR:#x}]
        mov eax, 0x20
        mov cr4, eax
        mov eax, 0x1000
        mov cr3, eax
        mov ecx, 0xc0000080
        rdmsr
        or eax, 0x100
        wrmsr
        mov eax, cr0
        or eax, 0x80000001
        mov cr0, eax
    """, 0)[0])
    real += b"\x66\xea" + struct.pack("<IH", AP_TRAMPOLINE + 0x100, 0x18)  # jmp dword 0x18:long
    code64 = x86_64(f"""
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov rsp, {AP_STACK:#x}
        lidt [{IDTR:#x}]
        {body64}
    """, AP_TRAMPOLINE + 0x100)
    return real.ljust(0x100, b"\x90") + code64
