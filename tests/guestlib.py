"""Assembling small test guests (keystone) and the conventions they share.

x86 guests are raw 64-bit images loaded at X86_BASE and entered in long mode (the loader stub
leaves the first 4 GiB identity-mapped); they keep data at X86_DATA and their IDT at X86_IDT.
arm64 guests are raw images at ARM_BASE whose first 0x800 bytes are the VBAR_EL1 vector
table (16 slots of 0x80 bytes, each holding its handler inline, since keystone cannot pad
between labels); the code starts at ARM_ENTRY.
"""

from __future__ import annotations

from keystone import KS_ARCH_ARM64, KS_ARCH_X86, KS_MODE_32, KS_MODE_64, KS_MODE_LITTLE_ENDIAN, Ks

X86_BASE = 0x10_0000
X86_DATA = 0x20_0000
X86_IDT = 0x30_0000
X86_STACK = 0x18_0000

ARM_BASE = 0x4008_0000
ARM_ENTRY = ARM_BASE + 0x800
ARM_DATA = 0x4020_0000
ARM_STACK = 0x4018_0000
PL011 = 0x0900_0000

# Vector-table slots (Arm ARM D1.10.2): current EL with SPx, then lower EL AArch64.
SLOT_CUR_SPX_SYNC, SLOT_CUR_SPX_IRQ, SLOT_CUR_SPX_FIQ, SLOT_CUR_SPX_SERROR = 4, 5, 6, 7
SLOT_LOWER_SYNC, SLOT_LOWER_IRQ = 8, 9

# PSCI SYSTEM_OFF over HVC: the arm64 guests' way to end the run (status 0).
ARM_SYSTEM_OFF = "movz w0, #0x0008\nmovk w0, #0x8400, lsl #16\nhvc #0"

# An arm64 guest turning its MMU on, with stage-1 tables at 0x4180_0000 (L1, 4 KiB granule,
# 39-bit VAs): VA 0x4000_0000 + 1 GiB maps RAM one to one as Normal memory; VA 0x8000_0000 +
# 1 GiB maps PA 0 + 1 GiB (the devices) as Device-nGnRnE, never executable. Everything else
# faults at level 1. Clobbers X1-X3.
ARM_MMU_ON = """
    movz x1, #0x4180, lsl #16       // L1 table
    movz x2, #0x4000, lsl #16
    movz x3, #0x0705                // block: AF, inner shareable, AttrIndx 1, valid
    orr x2, x2, x3
    str x2, [x1, #8]                // L1[1] = 0x4000_0000, normal
    movz x2, #0x0401                // block: AF, AttrIndx 0, valid
    movk x2, #0x0060, lsl #48       // UXN, PXN
    str x2, [x1, #16]               // L1[2] = 0x0000_0000, device
    movz x3, #0xff00
    msr mair_el1, x3                // attr0 device-nGnRnE, attr1 normal write-back
    movz x3, #0x3519                // T0SZ 25, IRGN0/ORGN0 WB, SH0 inner, TG0 4K
    movk x3, #0x0080, lsl #16       // EPD1
    movk x3, #0x0002, lsl #32       // IPS 40 bits
    msr tcr_el1, x3
    msr ttbr0_el1, x1
    isb
    mrs x3, sctlr_el1
    orr x3, x3, #1
    msr sctlr_el1, x3
    isb
"""


# An arm64 guest bringing up the GICv3 for the virtual timer on vCPU 0 (QEMU virt's layout):
# the redistributor woken (GICR_WAKER.ProcessorSleep cleared), PPI 27 in group 1 and enabled,
# the distributor's affinity routing and group 1 on, ICC_PMR_EL1 and ICC_IGRPEN1_EL1 open.
# Clobbers X1, X2, X24. The guest acknowledges with ICC_IAR1_EL1 (S3_0_C12_C12_0) and ends
# with ICC_EOIR1_EL1 (S3_0_C12_C12_1).
ARM_GIC_TIMER_ON = """
    movz x24, #0x080a, lsl #16        // GICR of vCPU 0 (RD_base)
    ldr w1, [x24, #0x14]
    bic w1, w1, #2
    str w1, [x24, #0x14]              // GICR_WAKER: ProcessorSleep off
    add x2, x24, #0x10, lsl #12
    mov w1, #-1
    str w1, [x2, #0x80]               // GICR_IGROUPR0
    mov w1, #0x8000000
    str w1, [x2, #0x100]              // GICR_ISENABLER0: INTID 27
    movz x2, #0x0800, lsl #16
    mov w1, #0x12
    str w1, [x2]                      // GICD_CTLR: ARE | EnableGrp1
    mov x1, #0xf0
    msr S3_0_C4_C6_0, x1              // ICC_PMR_EL1
    mov x1, #1
    msr S3_0_C12_C12_7, x1            // ICC_IGRPEN1_EL1
"""


ARCH_FAMILY = {"intel_vtx": "x86", "amd_svm": "x86", "arm_el2": "arm64"}


def x86_64(src: str, base: int = X86_BASE) -> bytes:
    return bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm(src, base)[0])


def x86_32(src: str, base: int) -> bytes:
    return bytes(Ks(KS_ARCH_X86, KS_MODE_32).asm(src, base)[0])


def arm64(src: str, base: int = ARM_ENTRY) -> bytes:
    return bytes(Ks(KS_ARCH_ARM64, KS_MODE_LITTLE_ENDIAN).asm(src, base)[0])


def arm64_image(main: str, vectors: dict[int, str] | None = None) -> bytes:
    """A raw image: the vector table at ARM_BASE, ``main`` at ARM_ENTRY."""
    table = bytearray()
    for slot in range(16):
        src = (vectors or {}).get(slot, "b .")
        code = arm64(src, ARM_BASE + slot * 0x80)
        if len(code) > 0x80:
            raise ValueError(f"vector slot {slot} handler is {len(code)} bytes; 128 fit")
        table += code.ljust(0x80, b"\0")
    return bytes(table) + arm64(main, ARM_ENTRY)


def x86_idt_setup(gates: dict[int, str]) -> str:
    """Instructions that fill 64-bit interrupt gates at X86_IDT and load the IDTR."""
    lines = []
    for vector, label in gates.items():
        lines += [f"lea rax, [rip + {label}]", f"mov rsi, {X86_IDT + 16 * vector:#x}",
                  "mov word ptr [rsi], ax", "mov word ptr [rsi + 2], 0x18",
                  "mov word ptr [rsi + 4], 0x8e00", "shr rax, 16", "mov word ptr [rsi + 6], ax",
                  "shr rax, 16", "mov dword ptr [rsi + 8], eax", "mov dword ptr [rsi + 12], 0"]
    lines += [f"mov rax, {X86_DATA + 0xFF0:#x}", "mov word ptr [rax], 0xfff",
              f"mov qword ptr [rax + 2], {X86_IDT:#x}", "lidt [rax]"]
    return "\n".join(lines)


def x86_hypercall(arch: str) -> str:
    return "vmcall" if arch == "intel_vtx" else "vmmcall"
