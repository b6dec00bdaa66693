"""Guest image formats: detection and parsing, independent of where an architecture puts them.

Recognised, in this order: ELF (32 or 64-bit; an ELF32 with a Multiboot header is a Multiboot
kernel), a Multiboot kernel using the header's a.out-kludge addresses, a Linux arm64 ``Image``
(magic ``ARM\\x64`` at 0x38), and anything else as a raw image. A truncated or inconsistent file
raises :class:`ImageError`, which the CLI turns into one line and status 2.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ImageError

MULTIBOOT_HEADER_MAGIC = 0x1BADB002
MULTIBOOT_SEARCH = 8192
MULTIBOOT_AOUT_KLUDGE = 1 << 16

EM_386 = 3
EM_X86_64 = 62
EM_AARCH64 = 183
_MACHINES = {EM_386: "x86", EM_X86_64: "x86", EM_AARCH64: "arm64"}
PT_LOAD = 1

ARM64_IMAGE_MAGIC = b"ARM\x64"
MAX_IMAGE = 1 << 30


@dataclass(slots=True)
class Segment:
    address: int  # physical load address
    data: bytes
    memsz: int  # bytes in memory; the part past len(data) is zeroed (bss)


@dataclass(slots=True)
class MultibootHeader:
    offset: int
    flags: int


@dataclass(slots=True)
class Image:
    path: str
    format: str  # "multiboot", "elf32", "elf64", "arm64-image", "bzimage", "raw"
    machine: str | None  # "x86", "arm64", or None when the format does not say
    data: bytes
    entry: int | None = None
    segments: list[Segment] = field(default_factory=list)
    multiboot: MultibootHeader | None = None
    text_offset: int = 0  # arm64 Image
    image_size: int = 0  # arm64 Image


def read_file(path: str | Path, what: str, limit: int = MAX_IMAGE) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes. A device or a pipe (/dev/zero,
    say) is refused before anything is read: it may never end."""
    p = Path(path)
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"cannot read {what} {p}: it is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"cannot read {what} {p}: it is not a regular file (a device, pipe or socket)")
        if st.st_size > limit:
            raise ImageError(f"{what} {p} is larger than {limit >> 20} MiB")
        with p.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ImageError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if len(data) > limit:  # it grew while being read
        raise ImageError(f"{what} {p} is larger than {limit >> 20} MiB")
    return data


def read_image(path: str | Path) -> Image:
    return parse_image(read_file(path, "image"), str(path))


def parse_image(data: bytes, name: str = "<image>") -> Image:
    if not data:
        raise ImageError(f"image {name} is empty")
    if len(data) > MAX_IMAGE:
        raise ImageError(f"image {name} is larger than {MAX_IMAGE >> 20} MiB")
    if data[:4] == b"\x7fELF":
        return _parse_elf(data, name)
    if len(data) >= 0x264 and data[0x202:0x206] == b"HdrS":  # Linux/x86 setup header (boot.rst)
        return Image(name, "bzimage", "x86", data)
    mb = _find_multiboot(data)
    if mb is not None:
        return _parse_multiboot_aout(data, name, mb)
    if len(data) >= 64 and data[0x38:0x3C] == ARM64_IMAGE_MAGIC:
        text_offset, image_size = struct.unpack_from("<QQ", data, 8)
        if text_offset % 4096 or text_offset > 0x1000_0000:
            raise ImageError(f"image {name}: arm64 Image header has a bad text_offset {text_offset:#x}")
        return Image(name, "arm64-image", "arm64", data, text_offset=text_offset,
                     image_size=image_size or len(data))
    return Image(name, "raw", None, data)


def _find_multiboot(data: bytes) -> MultibootHeader | None:
    for off in range(0, min(len(data), MULTIBOOT_SEARCH) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == MULTIBOOT_HEADER_MAGIC and (magic + flags + checksum) & 0xFFFF_FFFF == 0:
            return MultibootHeader(off, flags)
    return None


def _parse_multiboot_aout(data: bytes, name: str, mb: MultibootHeader) -> Image:
    if not mb.flags & MULTIBOOT_AOUT_KLUDGE:
        raise ImageError(f"image {name}: Multiboot header without load addresses in a non-ELF file")
    if mb.offset + 32 > len(data):
        raise ImageError(f"image {name} is truncated inside its Multiboot header")
    header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from("<IIIII", data, mb.offset + 12)
    file_start = mb.offset - (header_addr - load_addr)
    if header_addr < load_addr or file_start < 0:
        raise ImageError(f"image {name}: Multiboot header_addr {header_addr:#x} is below load_addr")
    size = (load_end - load_addr) if load_end else len(data) - file_start
    if size < 0 or file_start + size > len(data):
        raise ImageError(f"image {name} is truncated: the Multiboot header asks for {size:#x} bytes")
    memsz = max(size, bss_end - load_addr) if bss_end else size
    seg = Segment(load_addr, data[file_start:file_start + size], memsz)
    return Image(name, "multiboot", "x86", data, entry=entry, segments=[seg], multiboot=mb)


def _parse_elf(data: bytes, name: str) -> Image:
    if len(data) < 52:
        raise ImageError(f"image {name} is truncated: {len(data)} bytes is less than an ELF header")
    ei_class, ei_data = data[4], data[5]
    if ei_data != 1:
        raise ImageError(f"image {name}: big-endian ELF is not supported")
    if ei_class == 1:
        hdr = struct.unpack_from("<HHIIIIIHHHHHH", data, 16)
        e_machine, e_entry, e_phoff, e_phentsize, e_phnum = hdr[1], hdr[3], hdr[4], hdr[8], hdr[9]
        ph_fmt, bits = "<IIIIIIII", 32
    elif ei_class == 2:
        if len(data) < 64:
            raise ImageError(f"image {name} is truncated: {len(data)} bytes is less than an ELF64 header")
        hdr = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
        e_machine, e_entry, e_phoff, e_phentsize, e_phnum = hdr[1], hdr[3], hdr[4], hdr[8], hdr[9]
        ph_fmt, bits = "<IIQQQQQQ", 64
    else:
        raise ImageError(f"image {name}: unknown ELF class {ei_class}")
    machine = _MACHINES.get(e_machine)
    if machine is None:
        raise ImageError(f"image {name}: ELF machine {e_machine} is neither x86 nor arm64")
    if e_phnum == 0:
        raise ImageError(f"image {name}: ELF file has no program headers")
    if e_phentsize < struct.calcsize(ph_fmt) or e_phoff + e_phnum * e_phentsize > len(data):
        raise ImageError(f"image {name} is truncated: its program headers run past the end of the file")
    segments = []
    for i in range(e_phnum):
        ph = struct.unpack_from(ph_fmt, data, e_phoff + i * e_phentsize)
        if bits == 32:
            p_type, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = ph[:6]
        else:
            p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = ph[:7]
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_offset + p_filesz > len(data):
            raise ImageError(f"image {name} is truncated: segment {i} needs bytes "
                             f"{p_offset:#x}-{p_offset + p_filesz:#x} of a {len(data):#x}-byte file")
        if p_filesz > p_memsz:
            raise ImageError(f"image {name}: segment {i} has p_filesz > p_memsz")
        segments.append(Segment(p_paddr, data[p_offset:p_offset + p_filesz], p_memsz))
    if not segments:
        raise ImageError(f"image {name}: ELF file has no loadable segment")
    mb = _find_multiboot(data) if bits == 32 and e_machine == EM_386 else None
    fmt = "multiboot" if mb is not None else f"elf{bits}"
    return Image(name, fmt, machine, data, entry=e_entry, segments=segments, multiboot=mb)
