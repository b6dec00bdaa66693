"""The Linux/x86 boot protocol for a bzImage (the kernel's Documentation/arch/x86/boot.rst), as
QEMU's ``-kernel`` loads one (hw/i386/x86.c, ``x86_load_linux``), entered through the 32-bit
boot protocol.

What the loader does, in the protocol's terms:

- the real-mode setup code (``setup_sects`` + 1 sectors; 4 when ``setup_sects`` is 0) is not run:
  hvsim is a boot loader that enters the protected-mode kernel directly, so only the setup
  header is read from it;
- the protected-mode kernel (the rest of the file) goes to ``code32_start`` (1 MiB; the kernel
  relocates itself if it is relocatable and wants another place);
- the "zero page" (``struct boot_params``) is built from scratch: the setup header copied from
  the image at offset 0x1F1, then ``type_of_loader`` 0xFF (undefined), CAN_USE_HEAP with the
  heap end, the command line pointer, the initrd (placed as high as ``initrd_addr_max`` and the
  RAM below 4 GiB allow, page aligned), the e820 map (``e820_table`` at 0x2D0, ``e820_entries``
  at 0x1E8) and ``acpi_rsdp_addr`` (0x070) pointing at hvsim's ACPI tables;
- the CPU starts in 32-bit protected mode with paging off, a GDT whose selectors 0x10
  (``__BOOT_CS``) and 0x18 (``__BOOT_DS``) are flat 4 GiB code and data, CS = 0x10,
  DS = ES = SS = 0x18, ESI = the zero page, EBX = EBP = EDI = 0, interrupts off, at
  ``code32_start``.
"""

from __future__ import annotations

import struct

from hvsim.core.errors import ImageError
from hvsim.core.loader import Image
from hvsim.core.memory import GuestMemory

from . import layout
from .boot import BootState

HDRS_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
MIN_PROTOCOL = 0x0206  # 2.06: cmdline_size, and everything the 32-bit entry needs before it

# struct setup_header offsets within the zero page (boot.rst, "The real-mode kernel header")
HDR_START = 0x1F1
OFF_SETUP_SECTS = 0x1F1
OFF_BOOT_FLAG = 0x1FE
OFF_HEADER = 0x202
OFF_VERSION = 0x206
OFF_TYPE_OF_LOADER = 0x210
OFF_LOADFLAGS = 0x211
OFF_CODE32_START = 0x214
OFF_RAMDISK_IMAGE = 0x218
OFF_RAMDISK_SIZE = 0x21C
OFF_HEAP_END_PTR = 0x224
OFF_CMD_LINE_PTR = 0x228
OFF_INITRD_ADDR_MAX = 0x22C
OFF_XLOADFLAGS = 0x236
OFF_CMDLINE_SIZE = 0x238
# struct boot_params offsets (arch/x86/include/uapi/asm/bootparam.h)
OFF_ACPI_RSDP_ADDR = 0x070
OFF_EXT_RAMDISK_IMAGE = 0x0C0
OFF_EXT_RAMDISK_SIZE = 0x0C4
OFF_EXT_CMD_LINE_PTR = 0x0C8
OFF_E820_ENTRIES = 0x1E8
OFF_E820_TABLE = 0x2D0
E820_MAX_ENTRIES_ZEROPAGE = 128

LOADED_HIGH = 0x01  # loadflags: the protected-mode code is loaded at 0x100000
CAN_USE_HEAP = 0x80
TYPE_OF_LOADER_UNDEFINED = 0xFF

E820_RAM, E820_RESERVED = 1, 2

# Linux's boot GDT: __BOOT_CS = 0x10, __BOOT_DS = 0x18 (arch/x86/include/asm/segment.h)
BOOT_CS, BOOT_DS = 0x10, 0x18
LINUX_GDT = [0, 0x00CF_9A00_0000_FFFF, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF]

# Where the loader puts its structures (QEMU uses 0x20000 for the command line too)
ZERO_PAGE = 0x1_4000
CMDLINE = 0x2_0000
CMDLINE_MAX = 0x1_0000
HEAP_END = 0xFE00  # heap_end_ptr: relative to the real-mode code, as boot.rst asks
KERNEL_LOAD = 0x10_0000
INITRD_DEFAULT_MAX = 0x37FF_FFFF  # boot.rst: protocols before 2.03 (and QEMU's fallback)


def is_bzimage(data: bytes) -> bool:
    return len(data) >= 0x264 and data[OFF_HEADER:OFF_HEADER + 4] == HDRS_MAGIC


def _u8(data, off):
    return data[off]


def _u16(data, off):
    return struct.unpack_from("<H", data, off)[0]


def _u32(data, off):
    return struct.unpack_from("<I", data, off)[0]


def load(memory: GuestMemory, image: Image, append: str, initrd: bytes | None, initrd_name: str,
         e820: list[tuple[int, int, int]], rsdp: int | None) -> BootState:
    """Place a bzImage, its zero page, command line and initrd; returns the 32-bit entry state."""
    data = image.data
    what = f"bzImage {image.path}"
    version = _u16(data, OFF_VERSION)
    if _u16(data, OFF_BOOT_FLAG) != BOOT_FLAG:
        raise ImageError(f"{what}: the setup header's boot_flag is {_u16(data, OFF_BOOT_FLAG):#06x}, not 0xaa55")
    if version < MIN_PROTOCOL:
        raise ImageError(f"{what}: boot protocol {version >> 8}.{version & 0xFF:02d} is older than 2.06, "
                         f"which hvsim's 32-bit entry needs")
    if not _u8(data, OFF_LOADFLAGS) & LOADED_HIGH:
        raise ImageError(f"{what}: a zImage (loaded low) is not supported; build a bzImage")
    setup_sects = _u8(data, OFF_SETUP_SECTS) or 4
    kernel_off = (setup_sects + 1) * 512
    if kernel_off >= len(data):
        raise ImageError(f"{what}: truncated: {len(data)} bytes, but the setup code alone is {kernel_off}")
    kernel = data[kernel_off:]
    # The setup header's own length: the jump at 0x200 is followed by the header, whose end
    # is given by the jump's 8-bit displacement (boot.rst: "the end of the setup header").
    hdr_end = 0x202 + data[0x201]
    if hdr_end > len(data) or hdr_end < OFF_CMDLINE_SIZE + 4:
        raise ImageError(f"{what}: the setup header is truncated")

    if not memory.is_ram(KERNEL_LOAD, len(kernel)):
        raise ImageError(f"{what}: the {len(kernel)}-byte kernel does not fit in RAM at {KERNEL_LOAD:#x}")
    memory.write(KERNEL_LOAD, kernel)

    zp = bytearray(0x1000)
    zp[HDR_START:hdr_end] = data[HDR_START:hdr_end]
    zp[OFF_TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED
    zp[OFF_LOADFLAGS] |= CAN_USE_HEAP
    struct.pack_into("<H", zp, OFF_HEAP_END_PTR, HEAP_END)
    struct.pack_into("<I", zp, OFF_CODE32_START, KERNEL_LOAD)

    cmd = append.encode("utf-8")
    limit = min(_u32(data, OFF_CMDLINE_SIZE), CMDLINE_MAX - 1)
    if len(cmd) > limit:
        raise ImageError(f"the kernel command line is {len(cmd)} bytes; {what} takes at most {limit}")
    memory.write(CMDLINE, cmd + b"\0")
    struct.pack_into("<I", zp, OFF_CMD_LINE_PTR, CMDLINE)

    if initrd is not None:
        low_top = max(s.end for s in memory.slots if s.gpa < layout.HIGH_RAM_BASE)
        addr_max = _u32(data, OFF_INITRD_ADDR_MAX) or INITRD_DEFAULT_MAX
        top = min(low_top, addr_max + 1)
        start = (top - len(initrd)) & ~0xFFF
        kernel_end = KERNEL_LOAD + max(len(kernel), _u32(data, 0x260))  # init_size: what the kernel needs
        if start < kernel_end or not memory.is_ram(start, max(len(initrd), 1)):
            raise ImageError(f"initrd {initrd_name} ({len(initrd)} bytes) does not fit in RAM between "
                             f"the kernel (ends at {kernel_end:#x}) and {top:#x}: give the guest more --mem")
        memory.write(start, initrd)
        struct.pack_into("<II", zp, OFF_RAMDISK_IMAGE, start, len(initrd))

    entries = e820[:E820_MAX_ENTRIES_ZEROPAGE]
    zp[OFF_E820_ENTRIES] = len(entries)
    for i, (addr, size, kind) in enumerate(entries):
        struct.pack_into("<QQI", zp, OFF_E820_TABLE + 20 * i, addr, size, kind)
    if rsdp is not None:
        struct.pack_into("<Q", zp, OFF_ACPI_RSDP_ADDR, rsdp)
    memory.write(ZERO_PAGE, bytes(zp))

    memory.write(layout.BOOT_GDT, b"".join(struct.pack("<Q", d) for d in LINUX_GDT))
    memory.write(layout.BOOT_GDTR, struct.pack("<HQ", len(LINUX_GDT) * 8 - 1, layout.BOOT_GDT))
    stub = _stub(KERNEL_LOAD, ZERO_PAGE)
    memory.write(layout.BOOT_STUB, stub)
    return BootState("protected32", KERNEL_LOAD, stub,
                     {"cs": BOOT_CS, "ds": BOOT_DS, "gdt_limit": len(LINUX_GDT) * 8 - 1})


def _stub(entry: int, zero_page: int) -> bytes:
    """LGDT, DS/ES/SS = __BOOT_DS, far JMP to __BOOT_CS, ESI = zero page, the rest 0, jump."""
    code = bytearray()
    code += b"\x0f\x01\x15" + struct.pack("<I", layout.BOOT_GDTR)  # lgdt [BOOT_GDTR]
    code += bytes.fromhex("66b81800 8ed8 8ec0 8ee0 8ee8 8ed0".replace(" ", ""))  # mov ax, 0x18; ds..ss
    code += b"\xbc" + struct.pack("<I", layout.BOOT_STACK_TOP)  # mov esp, BOOT_STACK_TOP
    far = layout.BOOT_STUB + len(code) + 7
    code += b"\xea" + struct.pack("<IH", far, BOOT_CS)  # jmp 0x10:far
    code += b"\xbe" + struct.pack("<I", zero_page)  # mov esi, zero page
    code += bytes.fromhex("31c0 31db 31c9 31d2 31ff 31ed".replace(" ", ""))  # eax..ebp = 0
    code += b"\x68" + struct.pack("<I", entry) + b"\xc3"  # push entry; ret
    return bytes(code)


def e820_map(memory: GuestMemory, reserved: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """The PC's e820 map as a BIOS reports it: conventional memory up to 639 KiB, the
    reserved hole up to 1 MiB (EBDA, VGA, option ROMs, the BIOS with hvsim's firmware tables),
    then the RAM slots; ``reserved`` adds ranges outside RAM (the IOAPIC, the local APIC)."""
    low_top = max(s.end for s in memory.slots if s.gpa < layout.HIGH_RAM_BASE)
    table = [(0, layout.LOW_MEM_END, E820_RAM),
             (layout.LOW_MEM_END, 0x10_0000 - layout.LOW_MEM_END, E820_RESERVED),
             (0x10_0000, low_top - 0x10_0000, E820_RAM)]
    table += [(s.gpa, s.size, E820_RAM) for s in memory.slots if s.gpa >= layout.HIGH_RAM_BASE]
    table += [(a, n, E820_RESERVED) for a, n in reserved]
    return sorted(table)
