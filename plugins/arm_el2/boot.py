"""Booting an arm64 guest the way QEMU ``virt`` does with ``-kernel`` (hw/arm/boot.c).

Linux ``Image`` files follow Documentation/arch/arm64/booting.rst: the 64-byte header gives
``text_offset`` and ``image_size``; the Image goes at RAM + text_offset (0x80000 when the
header predates ``image_size``), the device tree goes in X0, X1-X3 are 0, the CPU is in EL1h
with D, A, I, F masked and the MMU off.

Where things go is QEMU's ``arm_setup_direct_kernel_boot()``:

- Raw images load at RAM + 0x80000 and are booted exactly like a Linux Image (QEMU: "assume
  that raw images are linux kernels, and ELF images are not"; on AArch64 ``load_aarch64_image``
  takes any non-ELF file).
- For both, the initrd goes at RAM + min(RAM size / 2, 128 MiB), or just above the image if
  that is higher (page aligned), and the device tree after the initrd on a 2 MiB boundary
  ("some AArch64 kernels map the fdt region as [ALIGN_DOWN(fdt, 2MB) ...]"): always above the
  image, so it never overlaps the guest's own stack or bss.
- ELF64 (EM_AARCH64) images load at their physical addresses and are not Linux: the device tree
  goes at the start of RAM when the ELF leaves room for it below its lowest segment (QEMU's
  ``dtb_limit`` is that segment), otherwise after the initrd as above.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hvsim.core.errors import ImageError
from hvsim.core.loader import Image, Segment
from hvsim.core.memory import GuestMemory

from . import fdt, layout

_MZ = b"MZ"
_PE = b"PE\0\0"


@dataclass(slots=True)
class BootState:
    """Where the boot vCPU starts: PC, and X0 = the device tree's guest-physical address."""

    entry: int
    dtb: int
    dtb_size: int
    initrd: tuple[int, int] | None = None


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


def check_arm64_image(image: Image) -> None:
    """Refuse a truncated or inconsistent Linux Image (booting.rst header; PE/COFF sections)."""
    data = image.data
    if len(data) <= 64:
        raise ImageError(f"Linux Image {image.path} is truncated: {len(data)} bytes is only its header")
    if data[:2] != _MZ:
        return  # no EFI stub: the header says nothing about the file's length
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if pe + 24 > len(data) or data[pe:pe + 4] != _PE:
        raise ImageError(f"Linux Image {image.path} is truncated: its PE/COFF header at {pe:#x} is missing")
    nsections = struct.unpack_from("<H", data, pe + 6)[0]  # COFF header after the signature
    opt_size = struct.unpack_from("<H", data, pe + 20)[0]
    table = pe + 24 + opt_size
    if table + 40 * nsections > len(data):
        raise ImageError(f"Linux Image {image.path} is truncated inside its PE/COFF section table")
    for i in range(nsections):
        raw_size, raw_ptr = struct.unpack_from("<II", data, table + 40 * i + 16)
        if raw_ptr + raw_size > len(data):
            name = data[table + 40 * i:table + 40 * i + 8].rstrip(b"\0").decode("ascii", "replace")
            raise ImageError(f"Linux Image {image.path} is truncated: section {name or i} needs bytes "
                             f"up to {raw_ptr + raw_size:#x} of a {len(data):#x}-byte file")


def _place(memory: GuestMemory, seg: Segment, what: str) -> int:
    if not memory.is_ram(seg.address, max(seg.memsz, 1)):
        raise ImageError(f"{what}: {seg.memsz:#x} bytes at {seg.address:#x} do not fit in "
                         f"{memory.ram_size >> 20} MiB of RAM at {layout.RAM_BASE:#x}")
    return memory.place(seg.address, seg.data, seg.memsz)


def load(memory: GuestMemory, image: Image, *, cpus: int, append: str, initrd: bytes | None,
         load_addr: int | None, entry: int | None, gic: bool = True) -> BootState:
    """Place ``image`` (and initrd, device tree) in RAM; return the boot vCPU's state."""
    cmdline = len(append.encode("utf-8"))
    if cmdline >= layout.COMMAND_LINE_SIZE:
        raise ImageError(f"the kernel command line (--append) is {cmdline} bytes; an arm64 kernel takes at most "
                         f"{layout.COMMAND_LINE_SIZE - 1} (Linux's COMMAND_LINE_SIZE, {layout.COMMAND_LINE_SIZE} "
                         f"with the NUL, would cut it)")
    if image.machine == "x86":
        raise ImageError(f"image {image.path} is an x86 {image.format} kernel; the arm_el2 "
                         f"architecture runs arm64 images (try --arch intel_vtx or amd_svm)")
    ram_end = layout.RAM_BASE + memory.ram_size
    linux = image.format == "arm64-image"
    if linux:
        check_arm64_image(image)
        header_size = struct.unpack_from("<Q", image.data, 16)[0]
        offset = image.text_offset if header_size else layout.KERNEL64_LOAD_OFFSET
        base = layout.RAM_BASE + offset
        size = max(image.image_size, len(image.data))
        image.segments = [Segment(base, image.data, size)]
        image.entry = base
    elif image.format == "elf64":
        if entry is not None:
            image.entry = entry
    elif image.format == "raw":
        base = layout.RAM_BASE + layout.KERNEL64_LOAD_OFFSET if load_addr is None else load_addr
        image.segments = [Segment(base, image.data, len(image.data))]
        image.entry = base if entry is None else entry
    else:
        raise ImageError(f"image {image.path}: {image.format} images are not bootable on arm_el2")
    what = f"image {image.path}"
    low = min(s.address for s in image.segments)
    top = max(_place(memory, s, what) for s in image.segments)
    if image.entry is None or not memory.is_ram(image.entry, 4):
        raise ImageError(f"{what}: entry point {image.entry or 0:#x} is not in RAM")

    initrd_range = None
    initrd_start = layout.RAM_BASE + min(memory.ram_size // 2, layout.INITRD_MAX_OFFSET)
    initrd_start = _align_up(max(initrd_start, top), 0x1000)
    if initrd is not None:
        if initrd_start + len(initrd) > ram_end:
            raise ImageError(f"initrd ({len(initrd)} bytes) does not fit in RAM after the kernel")
        memory.write(initrd_start, initrd)
        initrd_range = (initrd_start, initrd_start + len(initrd))

    dtb = fdt.build(fdt.DeviceTreeConfig(layout.RAM_BASE, memory.ram_size, cpus, append, initrd_range, gic=gic))
    if image.format == "elf64" and low >= layout.RAM_BASE + len(dtb):
        dtb_addr = layout.RAM_BASE  # an ELF that leaves the start of RAM free: the DTB goes there
    else:
        dtb_addr = _align_up(initrd_start + (len(initrd) if initrd else 0), layout.DTB_ALIGN)
        if dtb_addr + len(dtb) > ram_end:  # small RAM: just above everything, 8-byte aligned
            dtb_addr = _align_up(initrd_start + (len(initrd) if initrd else 0), 8)
    if dtb_addr + len(dtb) > ram_end:
        raise ImageError(f"no room for the {len(dtb)}-byte device tree in {memory.ram_size >> 20} MiB of RAM")
    memory.write(dtb_addr, dtb)
    return BootState(image.entry, dtb_addr, len(dtb), initrd_range)
