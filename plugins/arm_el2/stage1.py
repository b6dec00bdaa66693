"""The guest's own stage-1 translation (VMSAv8-64, 4 KiB granule), walked in software.

Arm ARM (DDI 0487) D8 "The AArch64 Virtual Memory System Architecture": translation table
selection by VA bit 55 (TTBR0_EL1 / TTBR1_EL1), TCR_EL1.{T0SZ,T1SZ,TG0,TG1,EPD0,EPD1,TBI0,
TBI1}, descriptors (invalid, table, block, page), the Access flag and the stage-1 data access
permissions AP[2:1], UXN and PXN. Unicorn's own MMU translates the guest's accesses; this walk
exists to explain a fault it reported (the fault status code the hardware would give) and to
answer ``hvsim_stage1_walk``. Hierarchical APTable/XNTable controls and the 16/64 KiB granules
are not modelled: such walks report what they can.
"""

from __future__ import annotations

from collections.abc import Callable

from hvsim.core.memory import Access, GuestMemoryError, Walk, WalkStep

from .exits import fsc_translation

FSC_ACCESS_FLAG = 0x08  # 0b0010LL
FSC_PERMISSION = 0x0C  # 0b0011LL
FSC_WALK_EXTABT = 0x14  # 0b0101LL: synchronous external abort on a table walk
FSC_ALIGNMENT = 0x21

_OA_MASK = 0x0000_FFFF_FFFF_F000  # output address bits [47:12]
DESC_VALID, DESC_TABLE, DESC_AF = 1 << 0, 1 << 1, 1 << 10
DESC_AP1, DESC_AP2 = 1 << 6, 1 << 7  # AP[1]: EL0 access; AP[2]: read-only
DESC_PXN, DESC_UXN = 1 << 53, 1 << 54


def walk(read_u64: Callable[[int], int], va: int, tcr: int, ttbr0: int, ttbr1: int,
         access: Access) -> Walk:
    """Translate ``va``; the Walk's ``error_code`` is the FSC when ``fault`` is set."""
    upper = (va >> 55) & 1
    if upper:  # TTBR1_EL1: T1SZ [21:16], EPD1 [23], TG1 [31:30] (0b10 = 4 KiB), TBI1 [38]
        txsz, epd, tbi, ttbr = (tcr >> 16) & 0x3F, (tcr >> 23) & 1, (tcr >> 38) & 1, ttbr1
        four_k = (tcr >> 30) & 3 == 0b10
    else:  # TTBR0_EL1: T0SZ [5:0], EPD0 [7], TG0 [15:14] (0b00 = 4 KiB), TBI0 [37]
        txsz, epd, tbi, ttbr = tcr & 0x3F, (tcr >> 7) & 1, (tcr >> 37) & 1, ttbr0
        four_k = (tcr >> 14) & 3 == 0b00
    steps: list[WalkStep] = []
    top = 56 if tbi else 64
    inputsize = 64 - txsz
    high = (va & ((1 << top) - 1)) >> inputsize
    if epd or high != (((1 << (top - inputsize)) - 1) if upper else 0):
        return Walk(None, steps, "translation fault, level 0 (VA outside the table's range)",
                    fsc_translation(0))
    if not four_k:
        return Walk(None, steps, "16/64 KiB granules are not modelled", fsc_translation(0))
    level = 4 - -(-(inputsize - 12) // 9)  # start level for the 4 KiB granule
    table = ttbr & 0x0000_FFFF_FFFF_FFFE
    while True:
        shift = 12 + 9 * (3 - level)
        index = (va >> shift) & ((1 << min(9, inputsize - shift)) - 1)
        addr = table + 8 * index
        try:
            desc = read_u64(addr)
        except GuestMemoryError:
            return Walk(None, steps, f"external abort on the table walk, level {level}",
                        FSC_WALK_EXTABT | level)
        steps.append(WalkStep(level, addr, desc, _flags(desc, level)))
        if not desc & DESC_VALID or (level == 3 and not desc & DESC_TABLE) \
                or (level == 0 and not desc & DESC_TABLE):
            return Walk(None, steps, f"translation fault, level {level}", fsc_translation(level))
        if level < 3 and desc & DESC_TABLE:
            table, level = desc & _OA_MASK, level + 1
            continue
        break
    if not desc & DESC_AF:
        return Walk(None, steps, f"access flag fault, level {level}", FSC_ACCESS_FLAG | level)
    user = bool(access & Access.USER)
    denied = (user and not desc & DESC_AP1) or (access & Access.WRITE and desc & DESC_AP2) \
        or (access & Access.EXECUTE and desc & (DESC_UXN if user else DESC_PXN))
    if denied:
        return Walk(None, steps, f"permission fault, level {level}", FSC_PERMISSION | level)
    offset_mask = (1 << (12 + 9 * (3 - level))) - 1
    return Walk((desc & _OA_MASK & ~offset_mask) | (va & offset_mask), steps)


def _flags(desc: int, level: int) -> str:
    if not desc & DESC_VALID:
        return "invalid"
    kind = "table" if level < 3 and desc & DESC_TABLE else ("page" if level == 3 else "block")
    if kind == "table":
        return kind
    bits = [kind, "AF" if desc & DESC_AF else "!AF", "RO" if desc & DESC_AP2 else "RW"]
    bits += ["EL0"] if desc & DESC_AP1 else []
    bits += ["UXN"] if desc & DESC_UXN else []
    bits += ["PXN"] if desc & DESC_PXN else []
    return " ".join(bits)
