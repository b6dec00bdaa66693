"""The I/O and MSR permission maps (AMD APM Vol. 2, 15.10.1 "I/O Permissions Map" and 15.11
"MSR Intercepts").

IOPM: 12 KiB at VMCB.IOPM_BASE_PA, one bit per I/O port (bit p of the map is port p). With the
IOIO_PROT intercept on, an IN/OUT/INS/OUTS of 1, 2 or 4 bytes at port p is intercepted if any of
the bits p .. p+size-1 is set; an access at 0xFFFF of 2 or 4 bytes reads bits 0x10000-0x10002,
which is why the map has a third page.

MSRPM: 8 KiB at VMCB.MSRPM_BASE_PA, two bits per MSR (the even one intercepts RDMSR, the odd
one WRMSR) for three ranges of 8192 MSRs each; with the MSR_PROT intercept on, RDMSR/WRMSR of
any MSR outside those ranges is always intercepted.

Both base addresses ignore bits 11:0 (Table B-1). The functions here take the map's memory
(anything with ``read``/``write``) and its base; ``*_checker`` return closures over a
memoryview for the run loop's I/O hot path.
"""

from __future__ import annotations

from collections.abc import Callable

from .vmcb import direct_view

IOPM_SIZE = 0x3000
MSRPM_SIZE = 0x2000
IOPM_BITS = 0x10000 + 3  # 64K ports and the three bits a 4-byte access at 0xFFFF reaches
_PAGE_MASK = ~0xFFF

# (first MSR, byte offset of its two bits in the MSRPM); each range holds 0x2000 MSRs in 0x800 bytes.
MSRPM_RANGES = ((0x0000_0000, 0x000), (0xC000_0000, 0x800), (0xC001_0000, 0x1000))
MSRS_PER_RANGE = 0x2000
IO_SIZES = (1, 2, 4)


def map_base(base_pa: int) -> int:
    """IOPM_BASE_PA / MSRPM_BASE_PA as the processor uses them: bits 11:0 ignored."""
    return base_pa & _PAGE_MASK


def _check_io(port: int, size: int) -> None:
    if not 0 <= port <= 0xFFFF or size not in IO_SIZES:
        raise ValueError(f"an I/O access is 1, 2 or 4 bytes at a port 0-0xFFFF, not {size} at {port:#x}")


# -- IOPM ----------------------------------------------------------------------------------------
def iopm_intercepted(mem, base_pa: int, port: int, size: int) -> bool:
    """True if an access of ``size`` bytes at ``port`` is intercepted: any of its port bits set."""
    _check_io(port, size)
    base = map_base(base_pa)
    raw = int.from_bytes(mem.read(base + (port >> 3), 2), "little")  # bits p .. p+3 span <= 2 bytes
    return bool(raw >> (port & 7) & ((1 << size) - 1))


def iopm_set(mem, base_pa: int, port: int, intercept: bool = True, count: int = 1) -> None:
    """Set (or clear) the bits of ``count`` ports from ``port`` (up to bit 0x10002)."""
    base = map_base(base_pa)
    if port < 0 or count < 0 or port + count > IOPM_BITS:
        raise ValueError(f"IOPM bits {port:#x}+{count} are outside the map")
    for p in range(port, port + count):
        at = base + (p >> 3)
        byte = mem.read(at, 1)[0]
        byte = byte | 1 << (p & 7) if intercept else byte & ~(1 << (p & 7))
        mem.write(at, bytes([byte]))


def iopm_checker(mem, base_pa: int) -> Callable[[int, int], bool]:
    """``intercepted(port, size)`` over the map's bytes, bounds-checked once: ~0.2 us a call.

    The map is read at each call, as the processor reads it at each I/O instruction, so a VMM
    that changes the map is seen at once."""
    view, base = direct_view(mem, map_base(base_pa), IOPM_SIZE)
    if view is None:
        return lambda port, size: iopm_intercepted(mem, base_pa, port, size)

    def intercepted(port: int, size: int) -> bool:
        at = base + (port >> 3)
        return bool((view[at] | view[at + 1] << 8) >> (port & 7) & ((1 << size) - 1))

    return intercepted


# -- MSRPM ---------------------------------------------------------------------------------------
def msrpm_position(msr: int, is_write: bool) -> tuple[int, int] | None:
    """(byte offset, bit) of the MSR's read or write bit in the MSRPM, or None if it has none."""
    for first, offset in MSRPM_RANGES:
        if first <= msr < first + MSRS_PER_RANGE:
            bit = 2 * (msr - first) + (1 if is_write else 0)
            return offset + (bit >> 3), bit & 7
    return None


def msrpm_intercepted(mem, base_pa: int, msr: int, is_write: bool) -> bool:
    """True if RDMSR (``is_write`` False) or WRMSR of ``msr`` is intercepted."""
    pos = msrpm_position(msr, is_write)
    if pos is None:
        return True  # 15.11: MSRs outside the three ranges are always intercepted
    offset, bit = pos
    return bool(mem.read(map_base(base_pa) + offset, 1)[0] >> bit & 1)


def msrpm_set(mem, base_pa: int, msr: int, read: bool | None = None, write: bool | None = None) -> None:
    """Set or clear the read and/or write intercept bit of one MSR (None leaves a bit as it is)."""
    for is_write, value in ((False, read), (True, write)):
        if value is None:
            continue
        pos = msrpm_position(msr, is_write)
        if pos is None:
            raise ValueError(f"MSR {msr:#x} has no bits in the MSRPM: it is always intercepted")
        at = map_base(base_pa) + pos[0]
        byte = mem.read(at, 1)[0]
        byte = byte | 1 << pos[1] if value else byte & ~(1 << pos[1])
        mem.write(at, bytes([byte]))


def msrpm_checker(mem, base_pa: int) -> Callable[[int, bool], bool]:
    """``intercepted(msr, is_write)`` over the map's bytes, bounds-checked once."""
    view, base = direct_view(mem, map_base(base_pa), MSRPM_SIZE)
    if view is None:
        return lambda msr, is_write: msrpm_intercepted(mem, base_pa, msr, is_write)

    def intercepted(msr: int, is_write: bool) -> bool:
        high = msr & 0xFFFF_E000
        if high == 0:
            offset = 0x000
        elif high == 0xC000_0000:
            offset = 0x800
        elif high == 0xC001_0000:
            offset = 0x1000
        else:
            return True
        bit = 2 * (msr & 0x1FFF) + is_write
        return bool(view[base + offset + (bit >> 3)] >> (bit & 7) & 1)

    return intercepted
