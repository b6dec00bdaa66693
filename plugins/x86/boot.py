"""Boot protocols for the PC platform: Multiboot v1 (32-bit protected mode, paging off) and
64-bit entry for ELF64 and raw images (long mode, identity-mapped first 4 GiB).

Multiboot Specification 0.6.96, section 3.2 (machine state) and 3.3 (boot information).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hvsim.core.errors import ImageError
from hvsim.core.loader import Image, Segment
from hvsim.core.memory import GuestMemory

from . import layout

MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002

# multiboot_info.flags
MB_INFO_MEMORY = 1 << 0
MB_INFO_CMDLINE = 1 << 2
MB_INFO_MODS = 1 << 3
MB_INFO_MEM_MAP = 1 << 6
MB_INFO_BOOT_LOADER_NAME = 1 << 9

MB_MEMORY_AVAILABLE = 1
MB_MEMORY_RESERVED = 2

# Flat segments: code 0x08, data 0x10 (the Multiboot state), 64-bit code at 0x18.
GDT_ENTRIES = [
    0,
    0x00CF_9A00_0000_FFFF,  # 0x08: 32-bit code, base 0, limit 4 GiB, DPL 0
    0x00CF_9200_0000_FFFF,  # 0x10: data, base 0, limit 4 GiB, writable
    0x00AF_9A00_0000_FFFF,  # 0x18: 64-bit code (L=1, D=0)
]
SEL_CODE32, SEL_DATA, SEL_CODE64 = 0x08, 0x10, 0x18

PTE_P, PTE_RW, PTE_PS = 1, 2, 0x80


@dataclass(slots=True)
class BootState:
    """How the boot vCPU starts: the CPU mode hvsim sets up by register writes, then a few
    loader instructions (``stub``, placed at ``layout.BOOT_STUB``) that load the GDT and the
    segment registers for real and jump to the kernel.

    The stub is there because a segment-register write through Unicorn's API sets only the
    selector, not the descriptor cache (measured): an IRET would then pop from a 16-bit stack.
    Real loaders (GRUB, QEMU's multiboot option ROM) end the same way.
    """

    mode: str  # "protected32" or "long64"
    entry: int
    stub: bytes
    regs: dict[str, int]


def _load_segments() -> bytes:
    # mov ax, 0x10; mov ds, ax; mov es, ax; mov fs, ax; mov gs, ax; mov ss, ax
    return bytes.fromhex("66b81000 8ed8 8ec0 8ee0 8ee8 8ed0".replace(" ", ""))


def stub32(entry: int, eax: int, ebx: int) -> bytes:
    """32-bit loader tail: LGDT, data segments, far JMP to CS 0x08, Multiboot registers, jump."""
    code = bytearray()
    code += b"\x0f\x01\x15" + struct.pack("<I", layout.BOOT_GDTR)  # lgdt [BOOT_GDTR]
    code += _load_segments()
    code += b"\xbc" + struct.pack("<I", layout.BOOT_STACK_TOP)  # mov esp, BOOT_STACK_TOP
    far = layout.BOOT_STUB + len(code) + 7
    code += b"\xea" + struct.pack("<IH", far, SEL_CODE32)  # jmp 0x08:far (loads CS for real)
    code += b"\xb8" + struct.pack("<I", eax) + b"\xbb" + struct.pack("<I", ebx)
    code += bytes.fromhex("31c9 31d2 31f6 31ff 31ed".replace(" ", ""))  # ecx = edx = esi = edi = ebp = 0
    code += b"\x68" + struct.pack("<I", entry) + b"\xc3"  # push entry; ret
    return bytes(code)


def stub64(entry: int) -> bytes:
    """64-bit loader tail: LGDT, data segments, RSP, far return to CS 0x18 at the entry point."""
    code = bytearray()
    code += b"\x0f\x01\x14\x25" + struct.pack("<I", layout.BOOT_GDTR)  # lgdt [BOOT_GDTR]
    code += _load_segments()
    code += b"\x48\xbc" + struct.pack("<Q", layout.BOOT_STACK_TOP)  # mov rsp, BOOT_STACK_TOP
    code += b"\x6a" + bytes([SEL_CODE64])  # push 0x18
    code += b"\x48\xb8" + struct.pack("<Q", entry) + b"\x50"  # mov rax, entry; push rax
    code += b"\x31\xc0\x48\xcb"  # xor eax, eax; retfq
    return bytes(code)


def place_segments(memory: GuestMemory, image: Image, what: str) -> int:
    """Copy every loadable segment into RAM; returns the highest address used."""
    top = 0
    for seg in image.segments:
        if seg.address < layout.BOOT_AREA_END and seg.address + seg.memsz > layout.BOOT_GDT:
            raise ImageError(f"{what} {image.path}: segment at {seg.address:#x} overlaps the boot area "
                             f"{layout.BOOT_GDT:#x}-{layout.BOOT_AREA_END:#x} (link it at 1 MiB or above)")
        if not memory.is_ram(seg.address, max(seg.memsz, 1)):
            raise ImageError(f"{what} {image.path}: segment at {seg.address:#x}+{seg.memsz:#x} "
                             f"does not fit in {memory.ram_size >> 20} MiB of RAM")
        top = max(top, memory.place(seg.address, seg.data, seg.memsz))
    return top


def write_gdt(memory: GuestMemory) -> None:
    """The GDT and, at BOOT_GDTR, the pseudo-descriptor that points at it."""
    memory.write(layout.BOOT_GDT, b"".join(struct.pack("<Q", d) for d in GDT_ENTRIES))
    memory.write(layout.BOOT_GDTR, struct.pack("<HQ", len(GDT_ENTRIES) * 8 - 1, layout.BOOT_GDT))


def multiboot(memory: GuestMemory, image: Image, cmdline: bytes, initrd: bytes | None,
              initrd_name: str) -> BootState:
    """Load a Multiboot kernel and build its boot information (spec section 3.3)."""
    top = place_segments(memory, image, "Multiboot kernel")
    if image.entry is None or not memory.is_ram(image.entry):
        raise ImageError(f"Multiboot kernel {image.path}: entry point {image.entry or 0:#x} is not in RAM")
    low_top = max(s.end for s in memory.slots if s.gpa < layout.HIGH_RAM_BASE)
    info = bytearray(120)
    flags = MB_INFO_MEMORY | MB_INFO_MEM_MAP | MB_INFO_BOOT_LOADER_NAME | MB_INFO_CMDLINE
    # QEMU's multiboot option ROM: mem_upper is the RAM contiguous from 1 MiB, in KiB
    mem_upper_kib = (low_top - 0x10_0000) // 1024
    struct.pack_into("<II", info, 4, layout.LOW_MEM_END // 1024, mem_upper_kib)

    cmd = cmdline + b"\0"
    if len(cmd) > layout.BOOT_AREA_END - layout.BOOT_MB_CMDLINE:
        raise ImageError(f"the Multiboot command line (image path, space, --append) is {len(cmd) - 1} bytes; "
                         f"at most {layout.BOOT_AREA_END - layout.BOOT_MB_CMDLINE - 1} fit")
    memory.write(layout.BOOT_MB_CMDLINE, cmd)
    struct.pack_into("<I", info, 16, layout.BOOT_MB_CMDLINE)

    if initrd is not None:
        start = (top + 0xFFF) & ~0xFFF
        if not memory.is_ram(start, max(len(initrd), 1)):
            raise ImageError(f"initrd {initrd_name} ({len(initrd)} bytes) does not fit in RAM above the kernel")
        memory.write(start, initrd)
        name_addr = layout.BOOT_MB_MODS + 16
        memory.write(name_addr, initrd_name.encode()[:200] + b"\0")
        memory.write(layout.BOOT_MB_MODS, struct.pack("<IIII", start, start + len(initrd), name_addr, 0))
        struct.pack_into("<II", info, 20, 1, layout.BOOT_MB_MODS)
        flags |= MB_INFO_MODS

    # Memory map entries: size (not counting itself), base, length, type.
    ranges = [(0, layout.LOW_MEM_END, MB_MEMORY_AVAILABLE),
              (layout.LOW_MEM_END, 0x10_0000 - layout.LOW_MEM_END, MB_MEMORY_RESERVED),
              (0x10_0000, low_top - 0x10_0000, MB_MEMORY_AVAILABLE)]
    ranges += [(s.gpa, s.size, MB_MEMORY_AVAILABLE) for s in memory.slots if s.gpa >= layout.HIGH_RAM_BASE]
    mmap = b"".join(struct.pack("<IQQI", 20, b, n, t) for b, n, t in ranges)
    memory.write(layout.BOOT_MB_MMAP, mmap)
    struct.pack_into("<II", info, 44, len(mmap), layout.BOOT_MB_MMAP)

    memory.write(layout.BOOT_MB_LOADER_NAME, b"hvsim\0")
    struct.pack_into("<I", info, 64, layout.BOOT_MB_LOADER_NAME)
    struct.pack_into("<I", info, 0, flags)
    memory.write(layout.BOOT_MB_INFO, bytes(info))
    write_gdt(memory)
    stub = stub32(image.entry, MULTIBOOT_BOOTLOADER_MAGIC, layout.BOOT_MB_INFO)
    memory.write(layout.BOOT_STUB, stub)
    return BootState("protected32", image.entry, stub, {})


def identity_page_tables(memory: GuestMemory) -> int:
    """4-level tables mapping the first 4 GiB with 2 MiB pages; returns CR3."""
    pml4 = layout.BOOT_PAGE_TABLES
    pdpt = pml4 + 0x1000
    pds = pdpt + 0x1000
    memory.write_u64(pml4, pdpt | PTE_P | PTE_RW)
    memory.write(pml4 + 8, bytes(0xFF8))
    memory.write(pdpt, b"".join(struct.pack("<Q", (pds + i * 0x1000) | PTE_P | PTE_RW) for i in range(4)))
    memory.write(pdpt + 32, bytes(0x1000 - 32))
    entries = b"".join(struct.pack("<Q", (i << 21) | PTE_P | PTE_RW | PTE_PS) for i in range(2048))
    memory.write(pds, entries)
    return pml4


def long64(memory: GuestMemory, image: Image, load_addr: int | None, entry: int | None) -> BootState:
    """ELF64 or raw image entered in 64-bit mode with the first 4 GiB identity mapped."""
    if image.format == "raw":
        base = layout.RAW_DEFAULT_LOAD if load_addr is None else load_addr
        image.segments = [Segment(base, image.data, len(image.data))]
        image.entry = base if entry is None else entry
    elif entry is not None:
        image.entry = entry
    place_segments(memory, image, "image")
    if image.entry is None or not memory.is_ram(image.entry):
        raise ImageError(f"image {image.path}: entry point {image.entry or 0:#x} is not in RAM")
    cr3 = identity_page_tables(memory)
    write_gdt(memory)
    stub = stub64(image.entry)
    memory.write(layout.BOOT_STUB, stub)
    return BootState("long64", image.entry, stub, {"cr3": cr3})



# -- an application processor's start-up (INIT, then SIPI) -----------------------------------
# Real mode cannot be reached by register writes in the engine (docs/unicorn-notes.md), so the
# state a SIPI gives (SDM 9.4.4 / Table 9-1 after INIT, CS = vector << 8 with base vector << 12,
# IP 0) is reached by a few real instructions run on the AP alone: from 32-bit protected mode,
# a 16-bit code segment, CR0.PE <- 0 (a register write), real-mode segment loads, a far jump to the vector's page.
# They run from guest memory at SIPI_STUB, whose bytes are put back afterwards.
SIPI_STUB = layout.BOOT_STUB
SIPI_GDT = [0, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0x0000_9A00_0000_FFFF, 0x0000_9200_0000_FFFF]


def sipi_stub(vector: int) -> tuple[bytes, int, int]:
    """(the stub's bytes at SIPI_STUB, its entry, where CR0.PE is to be cleared): the GDT and
    its pseudo-descriptor first, then the code. It ends by jumping to vector << 8 : 0."""
    gdt = b"".join(struct.pack("<Q", d) for d in SIPI_GDT)
    gdtr_at = SIPI_STUB + len(gdt)
    data = gdt + struct.pack("<HI", len(gdt) - 1, SIPI_STUB) + b"\0\0"
    entry = SIPI_STUB + len(data)
    code = bytearray()
    code += b"\x0f\x01\x15" + struct.pack("<I", gdtr_at)  # lgdt [gdtr]      (32-bit code)
    code += b"\xea" + struct.pack("<IH", entry + len(code) + 7, 0x18)  # jmp 0x18:next (16-bit)
    code += b"\xb8\x20\x00\x8e\xd8\x8e\xc0\x8e\xd0\x8e\xe0\x8e\xe8"  # mov ax, 0x20; ds es ss fs gs
    real = entry + len(code)  # here the caller clears CR0.PE (a MOV CR0 would be a trap site)
    code += b"\xea" + struct.pack("<HH", entry + len(code) + 5, 0)  # jmp 0:next (real mode)
    code += b"\x31\xc0\x8e\xd8\x8e\xc0\x8e\xd0\x8e\xe0\x8e\xe8"  # xor ax, ax; ds es ss fs gs <- 0
    code += b"\xea" + struct.pack("<HH", 0, (vector & 0xFF) << 8)  # jmp vector<<8:0
    return data + bytes(code), entry, real
