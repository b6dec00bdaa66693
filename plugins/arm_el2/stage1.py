"""The guest's own stage-1 translation (VMSAv8-64, EL1&0 regime), walked in software.

Arm ARM (DDI 0487) D8 "The AArch64 Virtual Memory System Architecture": translation table
selection by VA bit 55 (TTBR0_EL1 / TTBR1_EL1), TCR_EL1.{T0SZ, T1SZ, TG0, TG1, EPD0, EPD1,
TBI0, TBI1, HA, HPD0, HPD1}, the 4 KiB, 16 KiB and 64 KiB granules, descriptors (invalid, table,
block, page), the Access flag (a fault, or a hardware update with TCR_EL1.HA), the data access
permissions AP[2:1], UXN and PXN, the hierarchical APTable / UXNTable / PXNTable controls, nG.
It fills the engine's TLB (:mod:`.mmu`: every descriptor read through stage 2), explains a
fault Unicorn reported (the fault status code the hardware would give) and answers
``hvsim_stage1_walk``. Address size faults (D8 "Address size configuration"; KVM's
arch/arm64/kvm/at.c follows the same rules): the output size is the smaller of TCR_EL1.IPS and
PAMax (the CPU's ID_AA64MMFR0_EL1.PARange); a TTBR base address beyond it faults at level 0, a
table or block/page descriptor whose address is beyond it faults at the descriptor's level. An
output address within that size but beyond stage 2's input size is stage 2's business (a
stage-2 translation fault at level 0). Not modelled: FEAT_LPA/LPA2 52-bit addresses, the dirty
state (DBM).
"""

from __future__ import annotations

from collections.abc import Callable

from hvsim.core.memory import Access, GuestMemoryError, Walk, WalkStep
from hvsim.core.mmu import PERM_R, PERM_W, PERM_X

from .exits import fsc_translation

FSC_ADDRESS_SIZE = 0x00  # 0b0000LL
FSC_ACCESS_FLAG = 0x08  # 0b0010LL
FSC_PERMISSION = 0x0C  # 0b0011LL
FSC_WALK_EXTABT = 0x14  # 0b0101LL: synchronous external abort on a table walk
FSC_ALIGNMENT = 0x21

_OA_MASK = 0x0000_FFFF_FFFF_F000  # output address bits [47:12]
DESC_VALID, DESC_TABLE, DESC_AF = 1 << 0, 1 << 1, 1 << 10
DESC_AP1, DESC_AP2 = 1 << 6, 1 << 7  # AP[1]: EL0 access; AP[2]: read-only
DESC_NG = 1 << 11
DESC_PXN, DESC_UXN = 1 << 53, 1 << 54
# Table descriptor controls for the levels below (D8 "Hierarchical permissions")
TABLE_PXN, TABLE_UXN, TABLE_AP1, TABLE_AP2 = 1 << 59, 1 << 60, 1 << 61, 1 << 62
TCR_A1, TCR_AS, TCR_HA = 1 << 22, 1 << 36, 1 << 39
TCR_HPD0, TCR_HPD1 = 1 << 41, 1 << 42
SCTLR_WXN = 1 << 19
# TCR_EL1.TG0 and TG1 encode the granule differently (D23.2 "TCR_EL1")
_TG0 = {0b00: 12, 0b10: 14, 0b01: 16}
_TG1 = {0b10: 12, 0b01: 14, 0b11: 16}
_USER, _WRITE, _EXECUTE = int(Access.USER), int(Access.WRITE), int(Access.EXECUTE)
# PAMax: ID_AA64MMFR0_EL1.PARange of the engine's CPU reads 0b0100, 44 bits (measured)
PA_MAX = 44
# TCR_EL1.IPS [34:32] (and VTCR_EL2.PS): the output address size
PS_BITS = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52}


def output_bits(ps: int) -> int:
    """The output address size for an IPS/PS encoding: never more than PAMax (a larger or
    reserved value is treated as PAMax, as the Arm ARM has it)."""
    return min(PS_BITS.get(ps & 7, PA_MAX), PA_MAX)


def asid(tcr: int, ttbr0: int, ttbr1: int) -> int:
    """The current ASID: TTBR0_EL1 or, with TCR_EL1.A1, TTBR1_EL1 bits [63:48]; 8 bits unless
    TCR_EL1.AS."""
    return ((ttbr1 if tcr & TCR_A1 else ttbr0) >> 48) & (0xFFFF if tcr & TCR_AS else 0xFF)


def fast_params(tcr: int, ttbr0: int, sctlr: int) -> tuple | None:
    """What a fill's fast walk (Arm64Mmu._fast_walk) needs for TTBR0_EL1 with the 4 KiB
    granule, the common configuration: (input size, start level, table, output size, top VA bit
    used, WXN); None for anything else (the full walk, :func:`translate`, handles it)."""
    if (tcr >> 14) & 3 != 0b00 or (tcr >> 7) & 1:  # TG0 not 4 KiB, or EPD0
        return None
    inputsize = 64 - min(max(tcr & 0x3F, 16), 39)
    level = 4 - -(-(inputsize - 12) // 9)
    table = ttbr0 & 0x0000_FFFF_FFFF_FFFE & ~7
    oa_bits = output_bits(tcr >> 32)
    if table >> oa_bits:
        return None
    return inputsize, level, table, oa_bits, 56 if (tcr >> 37) & 1 else 64, bool(sctlr & SCTLR_WXN)


def walk(read_u64: Callable[[int], int], va: int, tcr: int, ttbr0: int, ttbr1: int,
         access: Access, write_u64: Callable[[int, int], None] | None = None, sctlr: int = 0) -> Walk:
    """Translate ``va`` (``access`` with Access.USER for EL0); the Walk's ``error_code`` is the
    FSC when ``fault`` is set. ``read_u64`` reads a descriptor at its IPA (it may raise a
    Stage2Fault); ``write_u64`` is the hardware Access flag update (None: the walk only looks)."""
    return translate(read_u64, va, tcr, ttbr0, ttbr1, access, write_u64, sctlr)[0]


def translate(read_u64, va, tcr, ttbr0, ttbr1, access, write_u64=None, sctlr=0,
              describe: bool = True) -> tuple[Walk, int]:
    """:func:`walk`, plus what the translation allows at the access's EL (PERM_R|W|X).
    ``describe``: decode each step's flags for display (the TLB fill does without)."""
    access = int(access)  # plain ints from here: Flag operators cost ~1 us each
    upper = (va >> 55) & 1
    if upper:  # TTBR1_EL1: T1SZ [21:16], EPD1 [23], TG1 [31:30], TBI1 [38]
        txsz, epd, tbi, ttbr = (tcr >> 16) & 0x3F, (tcr >> 23) & 1, (tcr >> 38) & 1, ttbr1
        granule, hpd = _TG1.get((tcr >> 30) & 3, 12), tcr & TCR_HPD1
    else:  # TTBR0_EL1: T0SZ [5:0], EPD0 [7], TG0 [15:14], TBI0 [37]
        txsz, epd, tbi, ttbr = tcr & 0x3F, (tcr >> 7) & 1, (tcr >> 37) & 1, ttbr0
        granule, hpd = _TG0.get((tcr >> 14) & 3, 12), tcr & TCR_HPD0
    steps: list[WalkStep] = []
    top = 56 if tbi else 64
    inputsize = 64 - min(max(txsz, 16), 39)  # TxSZ is used as if 16..39 (48-bit to 25-bit VAs)
    high = (va & ((1 << top) - 1)) >> inputsize
    if epd or high != (((1 << (top - inputsize)) - 1) if upper else 0):
        return Walk(None, steps, "translation fault, level 0 (VA outside the table's range)",
                    fsc_translation(0)), 0
    stride = granule - 3
    level = 4 - -(-(inputsize - granule) // stride)  # the start level for the granule
    table = ttbr & 0x0000_FFFF_FFFF_FFFE & ~((1 << 3) - 1)
    oa_bits = output_bits(tcr >> 32)
    if table >> oa_bits:
        return Walk(None, steps, f"address size fault, level 0 (TTBR{upper}_EL1 beyond the {oa_bits}-bit "
                    f"output size)", FSC_ADDRESS_SIZE), 0
    pxn_t = uxn_t = ro_t = no_el0_t = False  # hierarchical controls gathered from table entries
    user = bool(access & _USER)
    while True:
        shift = granule + stride * (3 - level)
        index = (va >> shift) & ((1 << min(stride, inputsize - shift)) - 1)
        addr = table + 8 * index
        try:
            desc = read_u64(addr)
        except GuestMemoryError:
            return Walk(None, steps, f"external abort on the table walk, level {level}",
                        FSC_WALK_EXTABT | level), 0
        steps.append(WalkStep(level, addr, desc, _flags(desc, level) if describe else ""))
        is_table = level < 3 and desc & DESC_TABLE
        if not desc & DESC_VALID or (level == 3 and not desc & DESC_TABLE) \
                or (not is_table and level < 3 and not _block_allowed(granule, level)):
            return Walk(None, steps, f"translation fault, level {level}", fsc_translation(level)), 0
        if is_table:
            if not hpd:
                pxn_t |= bool(desc & TABLE_PXN)
                uxn_t |= bool(desc & TABLE_UXN)
                no_el0_t |= bool(desc & TABLE_AP1)
                ro_t |= bool(desc & TABLE_AP2)
            table = desc & _OA_MASK & ~((1 << granule) - 1)
            if table >> oa_bits:
                return Walk(None, steps, f"address size fault, level {level} (next table beyond the "
                            f"{oa_bits}-bit output size)", FSC_ADDRESS_SIZE | level), 0
            level += 1
            continue
        break
    offset_mask = (1 << shift) - 1
    if (desc & _OA_MASK & ~offset_mask) >> oa_bits:
        return Walk(None, steps, f"address size fault, level {level} (output address beyond the "
                    f"{oa_bits}-bit output size)", FSC_ADDRESS_SIZE | level), 0
    if not desc & DESC_AF:
        if not tcr & TCR_HA:
            return Walk(None, steps, f"access flag fault, level {level}", FSC_ACCESS_FLAG | level), 0
        if write_u64 is not None:  # FEAT_HAFDBS: the walk sets the flag (a descriptor write)
            desc |= DESC_AF
            write_u64(addr, desc)
    el0_ok = bool(desc & DESC_AP1) and not no_el0_t
    writable = not desc & DESC_AP2 and not ro_t
    if user:
        readable, can_write = el0_ok, el0_ok and writable
        executable = not desc & DESC_UXN and not uxn_t
    else:
        readable, can_write = True, writable
        # EL1 never executes what EL0 may write (D8 "Instruction execution permissions")
        executable = not desc & DESC_PXN and not pxn_t and not (el0_ok and writable)
    if sctlr & SCTLR_WXN and can_write:
        executable = False
    perms = (PERM_R if readable else 0) | (PERM_W if can_write else 0) | (PERM_X if executable else 0)
    need = PERM_X if access & _EXECUTE else PERM_W if access & _WRITE else PERM_R
    if not perms & need:
        return Walk(None, steps, f"permission fault, level {level}", FSC_PERMISSION | level), perms
    w = Walk((desc & _OA_MASK & ~offset_mask) | (va & offset_mask), steps,
             writable=can_write, executable=executable, user=el0_ok, global_=not desc & DESC_NG,
             page_size=1 << shift)
    return w, perms


def _block_allowed(granule: int, level: int) -> bool:
    """Block descriptors: 4 KiB granule at levels 1 and 2, 16/64 KiB at level 2 (no FEAT_LPA)."""
    return level in (1, 2) if granule == 12 else level == 2


def _flags(desc: int, level: int) -> str:
    if not desc & DESC_VALID:
        return "invalid"
    kind = "table" if level < 3 and desc & DESC_TABLE else ("page" if level == 3 else "block")
    if kind == "table":
        return kind
    bits = [kind, "AF" if desc & DESC_AF else "!AF", "RO" if desc & DESC_AP2 else "RW"]
    bits += ["EL0"] if desc & DESC_AP1 else []
    bits += ["nG"] if desc & DESC_NG else []
    bits += ["UXN"] if desc & DESC_UXN else []
    bits += ["PXN"] if desc & DESC_PXN else []
    return " ".join(bits)
