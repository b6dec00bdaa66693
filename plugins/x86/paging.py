"""The x86 stage-1 walk: 32-bit, PAE, 4-level and 5-level paging (Intel SDM Vol. 3A ch. 4,
AMD APM Vol. 2 ch. 5), with the #PF error code the processor would report.

Used to reach guest-virtual addresses from Python (exception delivery pushes a frame on the
guest stack), by ``hvsim_stage1_walk`` and by the translation tools. ``read_u32``/``read_u64``
read guest-physical memory, so a stage-2 translation can sit underneath.
"""

from __future__ import annotations

from collections.abc import Callable

from hvsim.core.memory import Access, Walk, WalkStep

CR0_PG = 1 << 31
CR0_WP = 1 << 16
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_PGE = 1 << 7
CR4_PCIDE = 1 << 17
CR4_LA57 = 1 << 12
CR4_SMEP = 1 << 20
CR4_SMAP = 1 << 21
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11

P, RW, US, A, D, PS, G = 1, 2, 4, 0x20, 0x40, 0x80, 0x100
XD = 1 << 63

# #PF error code bits (SDM Vol. 3A 4.7)
PFEC_P, PFEC_W, PFEC_U, PFEC_RSVD, PFEC_I = 1, 2, 4, 8, 16

MAXPHYADDR = 40
_ADDR = ((1 << MAXPHYADDR) - 1) & ~0xFFF
_RSVD64 = ((1 << 52) - 1) & ~((1 << MAXPHYADDR) - 1)  # bits MAXPHYADDR..51 must be zero

LEVEL_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}


def _flags(entry: int) -> str:
    names = [("P", P), ("RW", RW), ("US", US), ("A", A), ("D", D), ("PS", PS), ("G", G)]
    out = [n for n, bit in names if entry & bit]
    if entry & XD:
        out.append("XD")
    return "|".join(out)


def walk(gva: int, access: Access, cr0: int, cr3: int, cr4: int, efer: int, cpl: int,
         read_u32: Callable[[int], int], read_u64: Callable[[int], int],
         update: Callable[[int, int, int], None] | None = None, record: bool | str = True,
         ac: bool = False) -> Walk:
    """Translate ``gva``; a fault comes back as ``Walk.fault`` with ``error_code`` set.

    ``read_u32``/``read_u64`` read a paging-structure entry at a guest-physical address (a
    stage-2 translation may sit underneath and raise its own fault). With ``update(gpa, size,
    value)`` the walk sets the accessed flag of every entry it uses and the dirty flag of the
    leaf on a write, as the processor does (SDM 4.8); without it the walk only looks. A
    successful Walk also says what the translation allows at this CPL (``writable``,
    ``executable``, ``user``), whether it is global, its page size, and the leaf's dirty flag.
    ``record=False`` (a TLB fill) keeps only the leaf entry's value in ``Walk.entry`` instead of
    every step with its decoded flags; ``record="entries"`` keeps the steps without decoding
    their flags (a shadow-paging VMM needs where each entry was, not its description).
    ``ac``: RFLAGS.AC, which lifts SMAP for explicit supervisor data accesses (SDM 4.6.1).
    """
    if not cr0 & CR0_PG:
        return Walk(gva & 0xFFFF_FFFF if not efer & EFER_LMA else gva, page_size=1 << 30)
    user = cpl == 3
    write = bool(access & Access.WRITE)
    fetch = bool(access & Access.EXECUTE)
    nxe = bool(efer & EFER_NXE)
    ec = (PFEC_W if write else 0) | (PFEC_U if user else 0)
    if fetch and (nxe or cr4 & CR4_SMEP):
        ec |= PFEC_I
    steps: list[WalkStep] = []
    note = steps.append if record else _ignore

    def fault(why: str, extra: int = 0) -> Walk:
        return Walk(None, steps, f"#PF: {why}", ec | extra)

    allowed_w = allowed_u = True
    nx = False
    used: list[tuple[int, int, int]] = []  # (entry address, size, value): A/D bits go here
    if efer & EFER_LMA or cr4 & CR4_PAE:
        if efer & EFER_LMA:
            levels = 5 if cr4 & CR4_LA57 else 4
            table = cr3 & _ADDR
        else:  # PAE: four PDPTEs at CR3[31:5] (loaded with CR3; no accessed flag)
            idx = (gva >> 30) & 3
            addr = (cr3 & 0xFFFF_FFE0) + idx * 8
            pdpte = read_u64(addr)
            record and note(WalkStep(3, addr, pdpte, _flags(pdpte) if record is True else ""))
            if not pdpte & P:
                return fault("PDPTE not present")
            if pdpte & (0x1E6 | _RSVD64 | XD):
                return fault("reserved bit set in PDPTE", PFEC_P | PFEC_RSVD)
            table = pdpte & _ADDR
            levels = 2
        for level in range(levels, 0, -1):
            shift = 12 + 9 * (level - 1)
            addr = table + ((gva >> shift) & 0x1FF) * 8
            entry = read_u64(addr)
            record and note(WalkStep(level, addr, entry, _flags(entry) if record is True else ""))
            if not entry & P:
                return _done(fault(f"{LEVEL_NAMES[level]} not present"), used, update)
            if entry & _RSVD64 or (entry & XD and not nxe):
                return _done(fault(f"reserved bit set in {LEVEL_NAMES[level]}", PFEC_P | PFEC_RSVD), used, update)
            allowed_w &= bool(entry & RW)
            allowed_u &= bool(entry & US)
            nx |= bool(entry & XD)
            if level == 1 or (entry & PS and level in (2, 3)):
                if level > 1 and entry & PS:
                    mask = (1 << shift) - 1
                    if entry & (mask & ~0x1FFF) & _ADDR:  # base bits below the page size
                        return _done(fault(f"reserved bit set in {LEVEL_NAMES[level]}", PFEC_P | PFEC_RSVD),
                                     used, update)
                    gpa = (entry & _ADDR & ~mask) | (gva & mask)
                    size = mask + 1
                else:
                    gpa = (entry & _ADDR) | (gva & 0xFFF)
                    size = 0x1000
                leaf = entry
                used.append((addr, 8, entry))
                break
            if entry & PS and level in (4, 5):
                return _done(fault("PS set in a PML4E/PML5E", PFEC_P | PFEC_RSVD), used, update)
            used.append((addr, 8, entry))
            table = entry & _ADDR
    else:  # 32-bit paging
        addr = (cr3 & 0xFFFF_F000) + ((gva >> 22) & 0x3FF) * 4
        pde = read_u32(addr)
        record and note(WalkStep(2, addr, pde, _flags(pde) if record is True else ""))
        if not pde & P:
            return fault("PDE not present")
        allowed_w, allowed_u = bool(pde & RW), bool(pde & US)
        used.append((addr, 4, pde))
        if pde & PS and cr4 & CR4_PSE:
            gpa = (pde & 0xFFC0_0000) | (((pde >> 13) & 0xFF) << 32) | (gva & 0x3F_FFFF)
            size, leaf = 0x40_0000, pde
        else:
            addr = (pde & 0xFFFF_F000) + ((gva >> 12) & 0x3FF) * 4
            pte = read_u32(addr)
            record and note(WalkStep(1, addr, pte, _flags(pte) if record is True else ""))
            if not pte & P:
                return _done(fault("PTE not present"), used, update)
            allowed_w &= bool(pte & RW)
            allowed_u &= bool(pte & US)
            gpa = (pte & 0xFFFF_F000) | (gva & 0xFFF)
            size, leaf = 0x1000, pte
            used.append((addr, 4, pte))
    # Permissions (SDM 4.6): user needs U everywhere; writes need RW unless a supervisor
    # write with CR0.WP clear; fetches fault on XD; SMEP guards user pages from CPL < 3.
    writable = allowed_w or (not user and not cr0 & CR0_WP)
    executable = not (nx and nxe) and not (not user and allowed_u and cr4 & CR4_SMEP)
    if user and not allowed_u:
        return _done(fault("user access to a supervisor page", PFEC_P), used, update)
    if write and not writable:
        return _done(fault("write to a read-only page", PFEC_P), used, update)
    if fetch and nx and nxe:
        return _done(fault("instruction fetch from an XD page", PFEC_P), used, update)
    if fetch and not executable:
        return _done(fault("SMEP: supervisor fetch from a user page", PFEC_P), used, update)
    smap = not user and allowed_u and cr4 & CR4_SMAP and not ac  # SMAP: no supervisor data access
    if smap and not fetch:
        return _done(fault("SMAP: supervisor data access to a user page with RFLAGS.AC clear", PFEC_P),
                     used, update)
    _done(None, used, update, dirty_leaf=write)  # the write the translation allows sets D
    return Walk(gpa, steps, writable=writable, executable=executable, user=allowed_u,
                global_=bool(leaf & G and cr4 & CR4_PGE), page_size=size, dirty=bool(leaf & D) or write,
                leaf=used[-1][:2], entry=leaf)


def _ignore(_step) -> None:
    pass


def _done(result: Walk | None, used: list[tuple[int, int, int]], update, dirty_leaf: bool = False) -> Walk | None:
    """Set the accessed flag of every entry the walk used, and the leaf's dirty flag."""
    if update is not None:
        last = len(used) - 1
        for i, (addr, size, value) in enumerate(used):
            new = value | A | (D if dirty_leaf and i == last else 0)
            if new != value:
                update(addr, size, new)
    return result
