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
    """The register state the boot vCPU starts with."""

    mode: str  # "protected32" or "long64"
    entry: int
    regs: dict[str, int]


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
        memory.write(seg.address, seg.data)
        if seg.memsz > len(seg.data):
            memory.write(seg.address + len(seg.data), bytes(seg.memsz - len(seg.data)))
        top = max(top, seg.address + seg.memsz)
    return top


def write_gdt(memory: GuestMemory) -> tuple[int, int]:
    memory.write(layout.BOOT_GDT, b"".join(struct.pack("<Q", d) for d in GDT_ENTRIES))
    return layout.BOOT_GDT, len(GDT_ENTRIES) * 8 - 1


def multiboot(memory: GuestMemory, image: Image, cmdline: str, initrd: bytes | None,
              initrd_name: str) -> BootState:
    """Load a Multiboot kernel and build its boot information (spec section 3.3)."""
    top = place_segments(memory, image, "Multiboot kernel")
    if image.entry is None or not memory.is_ram(image.entry):
        raise ImageError(f"Multiboot kernel {image.path}: entry point {image.entry or 0:#x} is not in RAM")
    ram_top = max(s.end for s in memory.slots)
    info = bytearray(120)
    flags = MB_INFO_MEMORY | MB_INFO_MEM_MAP | MB_INFO_BOOT_LOADER_NAME | MB_INFO_CMDLINE
    mem_upper_kib = (min(ram_top, 0xFFFF_FFFF) - 0x10_0000) // 1024
    struct.pack_into("<II", info, 4, layout.LOW_MEM_END // 1024, mem_upper_kib)

    cmd = cmdline.encode() + b"\0"
    if len(cmd) > layout.BOOT_AREA_END - layout.BOOT_MB_CMDLINE:
        raise ImageError(f"command line is {len(cmd)} bytes; at most "
                         f"{layout.BOOT_AREA_END - layout.BOOT_MB_CMDLINE - 1} fit")
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
              (0x10_0000, ram_top - 0x10_0000, MB_MEMORY_AVAILABLE)]
    mmap = b"".join(struct.pack("<IQQI", 20, b, n, t) for b, n, t in ranges)
    memory.write(layout.BOOT_MB_MMAP, mmap)
    struct.pack_into("<II", info, 44, len(mmap), layout.BOOT_MB_MMAP)

    memory.write(layout.BOOT_MB_LOADER_NAME, b"hvsim\0")
    struct.pack_into("<I", info, 64, layout.BOOT_MB_LOADER_NAME)
    struct.pack_into("<I", info, 0, flags)
    memory.write(layout.BOOT_MB_INFO, bytes(info))
    write_gdt(memory)
    return BootState("protected32", image.entry,
                     {"eax": MULTIBOOT_BOOTLOADER_MAGIC, "ebx": layout.BOOT_MB_INFO})


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
    return BootState("long64", image.entry, {"cr3": cr3})

