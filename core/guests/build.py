"""Build the bundled demo guests from their sources (the recipe; its outputs are committed).

    python -m hvsim.core.guests.build     # needs keystone-engine (pip install -e .[test])

demo_x86.elf: a Multiboot v1 ELF32 kernel (QEMU: -kernel demo_x86.elf). demo_arm64.img: a
Linux arm64 Image (QEMU virt: -kernel demo_arm64.img). Keystone assembles one mode per call,
so the x86 guest is two pieces at fixed addresses, joined into one PT_LOAD segment.
"""

from __future__ import annotations

import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent

X86_BASE = 0x10_0000
X86_SYMBOLS = {
    "LONG_ENTRY": 0x10_2000,
    "PML4": 0x10_3000,
    "PDPT": 0x10_4000,
    "PD": 0x10_5000,
    "STACK_TOP": 0x10_8000,
}
X86_END = 0x10_8000


def _substitute(text: str, symbols: dict[str, int]) -> str:
    for name, value in sorted(symbols.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(name, hex(value))
    return text


def _asm(source: str, arch: str, mode: str, base: int) -> bytes:
    import keystone as ks

    engine = ks.Ks(getattr(ks, f"KS_ARCH_{arch}"), getattr(ks, f"KS_MODE_{mode}"))
    encoding, _ = engine.asm(source, base)
    return bytes(encoding)


def elf32(segment: bytes, paddr: int, memsz: int, entry: int) -> bytes:
    """An ELF32 i386 executable with one RWX PT_LOAD segment at file offset 0x1000."""
    ehdr = struct.pack("<4sBBBB8sHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, b"", 2, 3, 1, entry,
                       52, 0, 0, 52, 32, 1, 40, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, 0x1000, paddr, paddr, len(segment), memsz, 7, 0x1000)
    return (ehdr + phdr).ljust(0x1000, b"\0") + segment


def build_x86() -> bytes:
    part32 = _asm(_substitute((HERE / "demo_x86_32.S").read_text(), X86_SYMBOLS), "X86", "32", X86_BASE)
    part64 = _asm((HERE / "demo_x86_64.S").read_text(), "X86", "64", X86_SYMBOLS["LONG_ENTRY"])
    gap = X86_SYMBOLS["LONG_ENTRY"] - X86_BASE
    if len(part32) > gap:
        raise SystemExit(f"demo_x86_32.S is {len(part32)} bytes; it must stay below {gap}")
    segment = part32.ljust(gap, b"\0") + part64
    # 0x0c: the multiboot header is first, so the entry point follows it
    return elf32(segment, X86_BASE, X86_END - X86_BASE, X86_BASE + 12)


ARM_BASE = 0x4008_0000  # QEMU virt: RAM 0x4000_0000 + text_offset 0x80000
ARM_SYMBOLS = {"VECTORS": ARM_BASE + 0x800, "SCRATCH": 0x4030_0000, "STACK_TOP": 0x4040_0000}


def arm64_image_header(image_size: int) -> bytes:
    """Linux arm64 Image header (Documentation/arch/arm64/booting.rst): code0 branches over it."""
    code0 = 0x1400_0000 | (0x40 // 4)  # b +0x40
    flags = 0b0010  # little-endian, 4 KiB pages
    # code0, code1, text_offset, image_size, flags, res2, res3, res4, magic (at 0x38), res5
    return struct.pack("<IIQQQQQQ4sI", code0, 0, 0x8_0000, image_size, flags, 0, 0, 0, b"ARM\x64", 0)


def build_arm64() -> bytes:
    main = _asm(_substitute((HERE / "demo_arm64.S").read_text(), ARM_SYMBOLS), "ARM64", "LITTLE_ENDIAN",
                ARM_BASE + 0x40)
    if 0x40 + len(main) > 0x800:
        raise SystemExit(f"demo_arm64.S is {len(main)} bytes; it must end below the vector table")
    slot4 = _asm(_substitute((HERE / "demo_arm64_vectors.S").read_text(), ARM_SYMBOLS), "ARM64",
                 "LITTLE_ENDIAN", ARM_SYMBOLS["VECTORS"] + 0x200)
    hang = _asm("b .", "ARM64", "LITTLE_ENDIAN", 0)  # every other slot: spin where a debugger can see it
    vectors = b"".join((slot4 if i == 4 else hang).ljust(0x80, b"\0") for i in range(16))
    body = main.ljust(0x800 - 0x40, b"\0") + vectors
    return arm64_image_header(0x40 + len(body)) + body


def main() -> None:
    (HERE / "demo_x86.elf").write_bytes(build_x86())
    print("wrote", HERE / "demo_x86.elf")
    (HERE / "demo_arm64.img").write_bytes(build_arm64())
    print("wrote", HERE / "demo_arm64.img")


if __name__ == "__main__":
    main()
