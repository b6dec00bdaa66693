"""Extended page tables: the guest-physical -> host-physical walk (Intel SDM Vol. 3C 29.3).

An EPTP names the PML4 (or PML5) table, the memory type used to access the tables, the
page-walk length and whether accessed/dirty flags are enabled (29.3.5). Each entry has read,
write and execute permissions in bits 2:0; a leaf (a PTE, or a PDE / PDPTE with bit 7 set for
2 MiB / 1 GiB pages) has the memory type in bits 5:3, ignore-PAT in bit 6, accessed in bit 8
and dirty in bit 9. An entry with bits 2:0 clear is not present: an EPT violation (29.3.3.2).
An entry the processor cannot use is an EPT misconfiguration (29.3.3.1): write without read,
execute-only without the capability, reserved bits set, or a reserved memory type.
"""

from __future__ import annotations

from collections.abc import Callable

import struct

from hvsim.core.memory import WalkStep
from hvsim.core.mmu import PERM_R, PERM_W, PERM_X, Stage2Fault

from . import msrs

EPT_READ, EPT_WRITE, EPT_EXEC = 1, 2, 4
EPT_IGNORE_PAT = 1 << 6
EPT_PS = 1 << 7  # a 2 MiB (PDE) or 1 GiB (PDPTE) page
EPT_ACCESSED, EPT_DIRTY = 1 << 8, 1 << 9
EPTP_AD = 1 << 6
MEM_TYPE_RESERVED = (2, 3, 7)  # EPT memory types 0 UC, 1 WC, 4 WT, 5 WP, 6 WB are defined
_LEVEL_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
_U64 = struct.Struct("<Q")
_MEM_TYPES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB"}


def ep4ta(eptp: int, maxphyaddr: int = msrs.MAXPHYADDR) -> int:
    """The EPT PML4 table address: bits (MAXPHYADDR-1):12 of the EPTP, which tag combined and
    guest-physical mappings in the TLBs (SDM 29.4.1)."""
    return eptp & ((1 << maxphyaddr) - 1) & ~0xFFF


def describe(entry: int, leaf: bool) -> str:
    flags = [n for n, bit in (("R", EPT_READ), ("W", EPT_WRITE), ("X", EPT_EXEC)) if entry & bit]
    if leaf:
        flags.append(_MEM_TYPES.get((entry >> 3) & 7, f"memtype {(entry >> 3) & 7}"))
        if entry & EPT_IGNORE_PAT:
            flags.append("IPAT")
    for name, bit in (("PS", EPT_PS), ("A", EPT_ACCESSED), ("D", EPT_DIRTY)):
        if entry & bit and (name != "PS" or leaf):
            flags.append(name)
    return "|".join(flags)


class Ept:
    """One EPT hierarchy as a logical processor uses it. ``host`` is host physical memory.

    Guest-physical mappings it derived are cached (``cache``) until an INVEPT for its EP4TA,
    as the processor may (29.4.1): a VMM that changes an entry must invalidate.
    """

    def __init__(self, host, eptp: int, ept_vpid_cap: int = msrs.HVSIM_EPT_VPID_CAP,
                 maxphyaddr: int = msrs.MAXPHYADDR) -> None:
        self.host = host
        self.eptp = eptp
        self.root = ep4ta(eptp, maxphyaddr)
        self.levels = ((eptp >> 3) & 7) + 1
        self.ad = bool(eptp & EPTP_AD)
        # a guest paging-structure access is a stage-2 write when A/D flags are on (29.3.5)
        self.walk_writes = self.ad
        self.execute_only = bool(ept_vpid_cap & msrs.VMX_EPT_EXECUTE_ONLY_BIT)
        self.large = {2: bool(ept_vpid_cap & msrs.VMX_EPT_2MB_PAGE_BIT), 3: bool(ept_vpid_cap & msrs.VMX_EPT_1GB_PAGE_BIT)}
        self.rsvd_high = ((1 << 52) - 1) & ~((1 << maxphyaddr) - 1)
        self.addr_mask = ((1 << maxphyaddr) - 1) & ~0xFFF
        self.cache: dict[int, tuple[int, int, bool]] = {}  # GPA page -> (HPA page, perms, dirty)
        # Page-modification logging (29.3.6), when the VMM enabled it: called before the walk
        # sets an accessed or dirty flag, with whether it sets the leaf's dirty flag; it logs the
        # page, or raises the log-full event.
        self.pml: Callable[[int, bool], None] | None = None

    def translate(self, gpa: int, write: bool = False, fetch: bool = False, walk: bool = False) -> tuple[int, int]:
        """(host-physical address, permissions of the translation) or :class:`Stage2Fault`.
        ``walk``: the access is to a guest paging-structure entry; with A/D flags enabled the
        processor treats it as a write (29.3.5)."""
        if walk and self.ad:
            write = True
        page = gpa >> 12
        hit = self.cache.get(page)
        if hit is not None:
            hpa, perms, dirty = hit
            need = PERM_X if fetch else (PERM_W if write else PERM_R)
            if perms & need and (dirty or not write):
                return hpa | (gpa & 0xFFF), perms if dirty else perms & ~PERM_W
        hpa, perms, dirty = self._walk(gpa, write, fetch, walk, None)
        self.cache[page] = (hpa & ~0xFFF, perms, dirty)
        # Until the leaf's dirty flag is set, a write must walk again (and set it): a translation
        # cached for a read does not allow writes.
        return hpa, perms if dirty else perms & ~PERM_W

    def steps(self, gpa: int) -> tuple[list[WalkStep], int | None, str | None]:
        """The entries a walk of ``gpa`` reads, its result and any fault, without side effects
        (``hvsim translate``)."""
        steps: list[WalkStep] = []
        try:
            hpa, _perms, _dirty = self._walk(gpa, False, False, False, steps, look_only=True)
            return steps, hpa, None
        except Stage2Fault as fault:
            return steps, None, fault.detail

    def _read(self, hpa: int, gpa: int, level: int) -> int:
        if hpa + 8 > self.host.size:
            raise Stage2Fault(gpa, f"EPT {_LEVEL_NAMES[level]} at {hpa:#x} is outside host memory",
                              level=level, misconfig=True)
        return _U64.unpack_from(self.host.view, hpa)[0]

    def _walk(self, gpa, write, fetch, walk, steps, look_only=False):
        table, allowed = self.root, PERM_R | PERM_W | PERM_X
        used = []
        access = dict(write=write, fetch=fetch, walk=walk)
        for level in range(self.levels, 0, -1):
            shift = 12 + 9 * (level - 1)
            addr = table + ((gpa >> shift) & 0x1FF) * 8
            entry = self._read(addr, gpa, level)
            leaf = level == 1 or (level in (2, 3) and bool(entry & EPT_PS))
            if steps is not None:
                steps.append(WalkStep(level, addr, entry, describe(entry, leaf)))
            name = _LEVEL_NAMES[level]
            if not entry & 7:
                raise Stage2Fault(gpa, f"EPT violation: {name} not present", allowed=0, level=level, **access)
            self._check_misconfig(entry, level, leaf, gpa, name)
            allowed &= entry & 7
            used.append((addr, entry))
            if leaf:
                mask = (1 << shift) - 1
                hpa = (entry & self.addr_mask & ~mask) | (gpa & mask)
                break
            table = entry & self.addr_mask
        need = (PERM_R if not (write or fetch) else 0) | (PERM_W if write else 0) | (PERM_X if fetch else 0)
        if need & ~allowed:
            raise Stage2Fault(gpa, f"EPT violation: the translation does not allow "
                                   f"{'an instruction fetch' if fetch else 'a write' if write else 'a read'}",
                              allowed=allowed, level=level, **access)
        dirty = bool(used[-1][1] & EPT_DIRTY) or write
        if self.ad and not look_only:  # accessed in every entry used, dirty in the leaf (29.3.5)
            last = len(used) - 1
            updates = [(addr, entry | EPT_ACCESSED | (EPT_DIRTY if write and i == last else 0), entry)
                       for i, (addr, entry) in enumerate(used)]
            updates = [(addr, new) for addr, new, entry in updates if new != entry]
            if updates and self.pml is not None:
                self.pml(gpa, write and not used[-1][1] & EPT_DIRTY)  # may raise: no flag set then
            for addr, new in updates:
                _U64.pack_into(self.host.view, addr, new)
        if not self.ad:
            dirty = True
        return hpa, allowed, dirty

    def _check_misconfig(self, entry: int, level: int, leaf: bool, gpa: int, name: str) -> None:
        why = None
        if entry & 3 == EPT_WRITE:
            why = "write permission without read"
        elif entry & 7 == EPT_EXEC and not self.execute_only:
            why = "execute-only, which IA32_VMX_EPT_VPID_CAP does not advertise"
        elif entry & self.rsvd_high:
            why = "reserved bits 51:MAXPHYADDR set"
        elif level >= 4 and entry & 0xF8:
            why = "reserved bits 7:3 set"
        elif not leaf and entry & 0x78:
            why = "reserved bits 6:3 set in a non-leaf entry"
        elif leaf and (entry >> 3) & 7 in MEM_TYPE_RESERVED:
            why = f"reserved memory type {(entry >> 3) & 7}"
        elif leaf and level > 1:
            if not self.large[level]:
                why = f"a {'1 GiB' if level == 3 else '2 MiB'} page, which the processor does not support"
            elif entry & ((1 << (12 + 9 * (level - 1))) - 1) & ~0xFFF:
                why = "reserved bits in the large page's address"
        if why is not None:
            raise Stage2Fault(gpa, f"EPT misconfiguration: {name} has {why}", level=level, misconfig=True)
