"""Stage 2 of the EL1&0 translation regime: IPA -> PA, as EL2 programs it (VMSAv8-64).

Arm ARM (DDI 0487) D8 "The AArch64 Virtual Memory System Architecture": VTTBR_EL2 names the
stage-2 base table (BADDR, bits [47:1]) and the VMID (bits [63:48] with VTCR_EL2.VS = 1, else
[55:48]); VTCR_EL2 gives the IPA size (T0SZ [5:0]), the start level (SL0 [7:6]), the granule
(TG0 [15:14]: 0b00 4 KiB, 0b10 16 KiB, 0b01 64 KiB), the output size (PS [18:16]) and hardware
Access flag update (HA [21]). Up to 16 tables may be concatenated at the start level.

Stage-2 block and page descriptors: MemAttr [5:2], S2AP [7:6] (bit 6 reads, bit 7 writes
allowed), SH [9:8], AF [10], XN [54:53] (FEAT_XNX: 0b00 executable at EL1 and EL0, 0b01 not at
EL1, 0b10 at neither, 0b11 not at EL0). Faults carry the fault status codes of ESR_EL2.DFSC:
address size 0b0000LL, translation 0b0001LL, access flag 0b0010LL, permission 0b0011LL.

hvsim is the hypervisor: :func:`build_identity` writes the tables KVM would (a 40-bit IPA
space, 4 KiB granule, walk from level 1; each RAM slot mapped to its host-physical backing
with 2 MiB blocks where it can, pages elsewhere; nothing where devices are, so their accesses
abort to EL2 and become MMIO) in the hypervisor's area of host memory.
"""

from __future__ import annotations

import struct

from hvsim.core.memory import WalkStep
from hvsim.core.mmu import PERM_R, PERM_W, PERM_X, Stage2Fault

# VTCR_EL2 fields (D23.2 "VTCR_EL2")
VTCR_T0SZ_MASK = 0x3F
VTCR_SL0_SHIFT = 6
VTCR_TG0_SHIFT = 14
VTCR_PS_SHIFT = 16
VTCR_VS = 1 << 19
VTCR_HA = 1 << 21
VTCR_RES1 = 1 << 31
TG0_4K, TG0_64K, TG0_16K = 0b00, 0b01, 0b10
# What KVM programs for a 40-bit IPA space: T0SZ 24, SL0 1 (start at level 1), inner/outer
# write-back write-allocate, inner shareable, 4 KiB granule, PS 0b010 (40 bits).
VTCR_EL2_DEFAULT = (VTCR_RES1 | (0b010 << VTCR_PS_SHIFT) | (0b11 << 12) | (0b01 << 10) | (0b01 << 8)
                    | (1 << VTCR_SL0_SHIFT) | 24)
VMID_SHIFT = 48
BADDR_MASK = 0x0000_FFFF_FFFF_FFFE  # VTTBR_EL2.BADDR, bits [47:1]

# Stage-2 descriptor bits
DESC_VALID, DESC_TABLE = 1 << 0, 1 << 1
S2AP_R, S2AP_W = 1 << 6, 1 << 7
DESC_AF = 1 << 10
XN_SHIFT = 53
MEMATTR_NORMAL_WB = 0b1111 << 2  # MemAttr: Normal, outer and inner write-back cacheable
MEMATTR_DEVICE_NGNRE = 0b0001 << 2
SH_INNER = 0b11 << 8
PAGE_DEFAULT = MEMATTR_NORMAL_WB | S2AP_R | S2AP_W | SH_INNER | DESC_AF  # KVM's for RAM
_OA_MASK = 0x0000_FFFF_FFFF_F000

# ESR_ELx.DFSC / IFSC fault status codes (level in bits [1:0])
FSC_ADDRESS_SIZE, FSC_TRANSLATION, FSC_ACCESS_FLAG, FSC_PERMISSION = 0x00, 0x04, 0x08, 0x0C
_PS_BITS = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52}
PA_MAX = 44  # ID_AA64MMFR0_EL1.PARange of the engine's CPU (stage1.PA_MAX)
_U64 = struct.Struct("<Q")
_KIND = {FSC_ADDRESS_SIZE: "address size fault", FSC_TRANSLATION: "translation fault",
         FSC_ACCESS_FLAG: "access flag fault", FSC_PERMISSION: "permission fault"}


def vmid(vttbr: int, vtcr: int) -> int:
    """VTTBR_EL2.VMID: 16 bits with VTCR_EL2.VS, else 8."""
    return (vttbr >> VMID_SHIFT) & (0xFFFF if vtcr & VTCR_VS else 0xFF)


def granule_bits(vtcr: int) -> int:
    return {TG0_4K: 12, TG0_16K: 14, TG0_64K: 16}.get((vtcr >> VTCR_TG0_SHIFT) & 3, 12)


def start_level(vtcr: int) -> int:
    """The initial lookup level VTCR_EL2.SL0 selects for the granule (D8 "Determining the
    initial lookup level"): 4 KiB 0b00 -> 2, 0b01 -> 1, 0b10 -> 0; 16 KiB and 64 KiB 0b00 ->
    3, 0b01 -> 2, 0b10 -> 1 (16 KiB 0b11 -> 0)."""
    sl0 = (vtcr >> VTCR_SL0_SHIFT) & 3
    if granule_bits(vtcr) == 12:
        return {0: 2, 1: 1, 2: 0}.get(sl0, -1)
    return {0: 3, 1: 2, 2: 1, 3: 0 if granule_bits(vtcr) == 14 else -1}[sl0]


def _perms(desc: int, el0: bool) -> int:
    xn = (desc >> XN_SHIFT) & 3
    exec_ok = xn in (0b00, 0b01) if el0 else xn in (0b00, 0b11)
    return ((PERM_R if desc & S2AP_R else 0) | (PERM_W if desc & S2AP_W else 0)
            | (PERM_X if exec_ok else 0))


def describe(desc: int, level: int, last: int = 3) -> str:
    if not desc & DESC_VALID:
        return "invalid"
    if level < last and desc & DESC_TABLE:
        return "table"
    ap = ("R" if desc & S2AP_R else "") + ("W" if desc & S2AP_W else "")
    flags = ["page" if level == last else "block", f"S2AP {ap or 'none'}", f"MemAttr {(desc >> 2) & 15:#06b}"]
    flags += [] if desc & DESC_AF else ["!AF"]
    xn = (desc >> XN_SHIFT) & 3
    flags += [f"XN {xn:#04b}"] if xn else []
    return " ".join(flags)


class Stage2:
    """One stage-2 translation (a VTTBR_EL2 and VTCR_EL2) as a PE uses it. ``host`` is host
    physical memory. Stage-2-only translations it walked are cached (``cache``, by IPA page)
    until a TLBI IPAS2E1(IS), VMALLS12E1(IS) or ALLE1(IS) for its VMID: a hypervisor that
    changes a descriptor must invalidate, as on hardware."""

    def __init__(self, host, vttbr: int, vtcr: int) -> None:
        self.host = host
        self.vttbr, self.vtcr = vttbr, vtcr
        self.vmid = vmid(vttbr, vtcr)
        self.granule = granule_bits(vtcr)
        self.stride = self.granule - 3
        self.ipa_bits = 64 - (vtcr & VTCR_T0SZ_MASK)
        self.level0 = start_level(vtcr)
        self.oa_bits = min(_PS_BITS.get((vtcr >> VTCR_PS_SHIFT) & 7, PA_MAX), PA_MAX)  # PS beyond PAMax acts as PAMax
        self.ha = bool(vtcr & VTCR_HA)
        self.root = vttbr & BADDR_MASK
        self._last_shift = 12
        self.cache: dict[tuple[int, bool], tuple[int, int]] = {}  # (IPA page, EL0) -> (PA page, perms)
        # block translations, (block shift, IPA >> shift, EL0) -> (PA base, perms): one walk
        # serves every page of a block, as a TLB entry for the block would
        self.blocks: dict[tuple[int, int, bool], tuple[int, int]] = {}
        self._shifts: list[int] = []
        # the start level resolves the bits left above it, in up to 16 concatenated tables;
        # any other SL0/T0SZ pairing is inconsistent and faults every walk
        bits = self.ipa_bits - (self.granule + self.stride * (3 - self.level0))
        self.inconsistent = self.level0 < 0 or self.ipa_bits > 48 or not 1 <= bits <= self.stride + 4

    def translate(self, ipa: int, write: bool = False, fetch: bool = False, walk: bool = False,
                  el0: bool = False) -> tuple[int, int]:
        """(physical address, permissions at the current EL) of ``ipa``, or Stage2Fault."""
        key = (ipa >> 12, el0)
        hit = self.cache.get(key)
        need = PERM_X if fetch else (PERM_W if write else PERM_R)
        if hit is not None and hit[1] & need:
            return hit[0] | (ipa & 0xFFF), hit[1]
        for shift in self._shifts:
            hit = self.blocks.get((shift, ipa >> shift, el0))
            if hit is not None and hit[1] & need:
                pa = hit[0] | (ipa & ((1 << shift) - 1))
                self.cache[key] = (pa & ~0xFFF, hit[1])
                return pa, hit[1]
        pa, perms = self._walk(ipa, write, fetch, walk, el0, None)
        self.cache[key] = (pa & ~0xFFF, perms)
        shift = self._last_shift
        if shift > 12:
            if shift not in self._shifts:
                self._shifts.append(shift)
            self.blocks[(shift, ipa >> shift, el0)] = (pa & ~((1 << shift) - 1), perms)
        return pa, perms

    def invalidate(self, ipa: int | None = None) -> None:
        """TLBI IPAS2E1 for ``ipa`` (the stage-2 entries for its page, or for the block holding
        it), or all of them. Costs the entries of that page (a block: its pages), not a scan."""
        if ipa is None:
            self.cache.clear()
            self.blocks.clear()
            return
        page = ipa >> 12
        for el0 in (False, True):
            self.cache.pop((page, el0), None)
        for shift in self._shifts:
            dropped = [self.blocks.pop((shift, ipa >> shift, el0), None) for el0 in (False, True)]
            if dropped == [None, None]:
                continue
            # the block's pages were cached one by one too
            first, count = (ipa >> shift) << (shift - 12), 1 << (shift - 12)
            if count <= 2 * len(self.cache):
                for p in range(first, first + count):
                    self.cache.pop((p, False), None)
                    self.cache.pop((p, True), None)
            else:
                for key in [k for k in self.cache if k[0] >> (shift - 12) == ipa >> shift]:
                    del self.cache[key]

    def steps(self, ipa: int) -> tuple[list[WalkStep], int | None, str | None]:
        """The descriptors a walk of ``ipa`` reads, its result and any fault, no side effects."""
        steps: list[WalkStep] = []
        try:
            return steps, self._walk(ipa, False, False, False, False, steps, look_only=True)[0], None
        except Stage2Fault as fault:
            return steps, None, fault.detail

    def descriptor(self, ipa: int) -> tuple[int, int]:
        """(physical address, level) of the descriptor that ends the walk of ``ipa``: what a
        hypervisor edits to change the mapping (then invalidates)."""
        steps, _pa, _fault = self.steps(ipa)
        if not steps:
            raise ValueError(f"stage 2 has no descriptor for IPA {ipa:#x}")
        return steps[-1].address, steps[-1].level

    def _fault(self, ipa, fsc, level, what, write, fetch, walk, allowed=0):
        detail = f"stage-2 {_KIND[fsc]}, level {level}" + (f" ({what})" if what else "")
        return Stage2Fault(ipa, detail, write=write, fetch=fetch, allowed=allowed, walk=walk, level=level,
                           syndrome=fsc | level)

    def _walk(self, ipa, write, fetch, walk, el0, steps, look_only=False):
        g, stride = self.granule, self.stride
        if self.inconsistent:
            raise self._fault(ipa, FSC_TRANSLATION, 0, "VTCR_EL2.SL0 and T0SZ are inconsistent", write, fetch, walk)
        if ipa >> self.ipa_bits:
            raise self._fault(ipa, FSC_TRANSLATION, 0, f"IPA beyond the {self.ipa_bits}-bit input size",
                              write, fetch, walk)
        level, table = self.level0, self.root & ~((1 << 3) - 1)
        host = self.host
        while True:
            shift = g + stride * (3 - level)
            index = (ipa >> shift) & ((1 << (self.ipa_bits - shift if level == self.level0 else stride)) - 1)
            addr = table + 8 * index
            if addr + 8 > host.size:
                raise self._fault(ipa, FSC_ADDRESS_SIZE, level, f"table at {table:#x} outside memory",
                                  write, fetch, walk)
            desc = _U64.unpack_from(host.view, addr)[0]
            if steps is not None:
                steps.append(WalkStep(level, addr, desc, describe(desc, level)))
            if not desc & DESC_VALID:
                raise self._fault(ipa, FSC_TRANSLATION, level, "", write, fetch, walk)
            if level < 3 and desc & DESC_TABLE:
                table = desc & _OA_MASK & ~((1 << g) - 1)
                if table >> self.oa_bits:
                    raise self._fault(ipa, FSC_ADDRESS_SIZE, level, "", write, fetch, walk)
                level += 1
                continue
            if level == 3 and not desc & DESC_TABLE or level < 3 and not _block_allowed(g, level):
                raise self._fault(ipa, FSC_TRANSLATION, level, "reserved descriptor", write, fetch, walk)
            break
        mask = (1 << shift) - 1
        self._last_shift = shift
        pa = (desc & _OA_MASK & ~mask) | (ipa & mask)
        if pa >> self.oa_bits:
            raise self._fault(ipa, FSC_ADDRESS_SIZE, level, "", write, fetch, walk)
        if not desc & DESC_AF:
            if not self.ha:
                raise self._fault(ipa, FSC_ACCESS_FLAG, level, "", write, fetch, walk)
            if not look_only:  # hardware Access flag update (FEAT_HAFDBS)
                desc |= DESC_AF
                _U64.pack_into(host.view, addr, desc)
        perms = _perms(desc, el0)
        need = PERM_X if fetch else (PERM_W if write else PERM_R)
        if not perms & need:
            what = "an instruction fetch" if fetch else "a write" if write else "a read"
            raise self._fault(ipa, FSC_PERMISSION, level, f"the descriptor does not allow {what}",
                              write, fetch, walk, perms)
        return pa, perms


def _block_allowed(granule: int, level: int) -> bool:
    """Block descriptors: 4 KiB granule at levels 1 and 2, 16/64 KiB at level 2 (no FEAT_LPA)."""
    return level in (1, 2) if granule == 12 else level == 2


# -- the tables hvsim builds as the hypervisor ---------------------------------------------------
class Stage2Tables:
    """KVM-style stage-2 tables for one VM in ``[base, base + size)`` of host memory: a 40-bit
    IPA space walked from level 1 (two concatenated level-1 tables), 4 KiB granule. RAM slots
    are mapped to their host-physical backing; :meth:`map_page` / :meth:`set_page` let a
    hypervisor plugin change single pages (a block is split into pages first)."""

    def __init__(self, host, base: int, size: int) -> None:
        self.host, self.base, self.end = host, base, base + size
        self.root = base  # 2 pages: 1024 level-1 entries cover 40 bits
        self._next = base + 0x2000
        host.write(base, bytes(0x2000))
        self.vtcr = VTCR_EL2_DEFAULT

    def vttbr(self, vmid_: int) -> int:
        return (vmid_ << VMID_SHIFT) | self.root

    def _alloc(self) -> int:
        if self._next + 0x1000 > self.end:
            raise MemoryError("the hypervisor area has no room for another stage-2 table")
        table, self._next = self._next, self._next + 0x1000
        self.host.write(table, bytes(0x1000))
        return table

    def _read(self, addr: int) -> int:
        return _U64.unpack_from(self.host.view, addr)[0]

    def _write(self, addr: int, value: int) -> None:
        _U64.pack_into(self.host.view, addr, value)

    def _table(self, ipa: int, level: int, create: bool = True) -> int | None:
        """The table of ``level`` (2 or 3) covering ``ipa``, made (or a block split) if asked."""
        table = self.root
        for lv in range(1, level):
            shift = 12 + 9 * (3 - lv)
            addr = table + 8 * ((ipa >> shift) & (0x3FF if lv == 1 else 0x1FF))
            desc = self._read(addr)
            if desc & 3 == 3:
                table = desc & _OA_MASK
                continue
            if not create:
                return None
            new = self._alloc()
            if desc & 3 == 1:  # a block: the same mapping in the next level's entries
                step, kind = 1 << (shift - 9), 3 if lv + 1 == 3 else 1
                oa, attrs = desc & _OA_MASK & ~((1 << shift) - 1), desc & ~_OA_MASK & ~3
                for i in range(512):
                    self._write(new + 8 * i, (oa + i * step) | attrs | kind)
            self._write(addr, new | 3)
            table = new
        return table

    def map_block(self, ipa: int, pa: int, attrs: int = PAGE_DEFAULT) -> None:
        """A 2 MiB block at level 2."""
        table = self._table(ipa, 2)
        self._write(table + 8 * ((ipa >> 21) & 0x1FF), (pa & _OA_MASK) | attrs | 1)

    def map_page(self, ipa: int, pa: int, attrs: int = PAGE_DEFAULT) -> None:
        table = self._table(ipa, 3)
        self._write(table + 8 * ((ipa >> 12) & 0x1FF), (pa & _OA_MASK) | attrs | 3)

    def page_descriptor(self, ipa: int) -> int:
        """The physical address of the level-3 descriptor of ``ipa`` (a block is split)."""
        return self._table(ipa, 3) + 8 * ((ipa >> 12) & 0x1FF)

    def set_page(self, ipa: int, set_bits: int = 0, clear_bits: int = 0) -> int:
        """Change one page's descriptor (``desc | set_bits & ~clear_bits``); returns it. The
        caller must then invalidate (TLBI IPAS2E1IS + VMALLE1IS, as KVM)."""
        addr = self.page_descriptor(ipa)
        desc = (self._read(addr) | set_bits) & ~clear_bits
        self._write(addr, desc)
        return desc

    def unmap_page(self, ipa: int) -> None:
        self._write(self.page_descriptor(ipa), 0)


def build_identity(vm, base: int, size: int) -> Stage2Tables:
    """Stage-2 tables at host-physical ``base`` mapping every RAM slot of ``vm`` (IPA -> its
    host-physical backing): 2 MiB blocks where a whole aligned 2 MiB is RAM, pages for the
    rest. Devices stay unmapped, as under KVM: their accesses are stage-2 data aborts."""
    tables = Stage2Tables(vm.host, base, size)
    for slot in vm.memory.slots:
        ipa = slot.gpa
        while ipa < slot.end:
            pa = slot.hpa + ipa - slot.gpa
            if not ipa & 0x1F_FFFF and ipa + (1 << 21) <= slot.end and not pa & 0x1F_FFFF:
                tables.map_block(ipa, pa)
                ipa += 1 << 21
            else:
                tables.map_page(ipa, pa)
                ipa += 1 << 12
    return tables
