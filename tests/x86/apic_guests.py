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
