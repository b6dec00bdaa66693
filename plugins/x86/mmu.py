"""The x86 vCPU's MMU: Unicorn's TLB misses filled by the guest's paging walk, each table read
and the final address translated by the vendor's stage 2 (EPT or NPT), through a tagged TLB.

Shared by both vendors; the vendor context sets :attr:`X86Mmu.stage2` (an ``Ept`` / ``Npt``,
or None when guest-physical is host-physical) and :attr:`X86Mmu.tag` (VMX: VPID with the
EP4TA; SVM: the guest ASID) at each VM entry.

TLB rules modelled (Intel SDM Vol. 3A 4.10, AMD APM Vol. 2 5.5): translations are cached per
tag and PCID; MOV to CR3 drops the current PCID's non-global entries (unless CR4.PCIDE and
bit 63 say keep them); INVLPG drops one page in every PCID, globals included; MOV to CR0/CR4
that changes paging controls drops everything of the tag; a fault walks again. The guest runs
those instructions natively: :mod:`.traps` reports each site before it executes.
"""

from __future__ import annotations

import functools

import struct

import capstone
from capstone import x86_const as CX
from unicorn import x86_const as X

from hvsim.core.memory import Access, GuestMemoryError, Walk
from hvsim.core.mmu import (ACCESS_FETCH, ACCESS_WRITE, HOST_PHYS_BASE, PERM_R, PERM_W, PERM_X, CWalk, EngineTlb,
                            Stage2Fault, TaggedTlb, TlbEntry, TraceStep, TranslationTrace)

from . import paging
from .idt import RFLAGS_AC
from .shadow import SHADOW_MMIO

MSR_EFER = 0xC000_0080
# emu_start's end address: never reached (runs end on HLT, a slice or a stop), non-canonical so
# no guest code can live there. Unicorn translates its page when a run ends; the fill answers
# with a private page (measured: it translates the page of UNTIL - 1, and a refused fill there
# makes emu_start fail).
UNTIL = 0x8000_0000_0000_0000
SENTINEL_PAGE = HOST_PHYS_BASE - 0x1000
_UNTIL_PAGE = (UNTIL - 1) >> 12  # the page Unicorn translates (measured)
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_ACCESS = {ACCESS_WRITE: Access.WRITE, ACCESS_FETCH: Access.EXECUTE}
_ADDR = ((1 << paging.MAXPHYADDR) - 1) & ~0xFFF  # an entry's address bits
_RSVD64 = ((1 << 52) - 1) & ~((1 << paging.MAXPHYADDR) - 1)  # must be zero (paging.walk's check)
_P_A = paging.P | paging.A
# CR0 / CR4 bits whose change invalidates every translation (SDM 4.10.4.1)
_CR0_PAGING = paging.CR0_PG | paging.CR0_WP | 1
_CR4_PAGING = (paging.CR4_PSE | paging.CR4_PAE | paging.CR4_PGE | paging.CR4_PCIDE | paging.CR4_SMEP
               | paging.CR4_SMAP | paging.CR4_LA57)


def cwalk_default() -> bool:
    """The C walk is on unless HVSIM_CWALK=0 (then every TLB miss is filled in Python)."""
    import os
    return os.environ.get("HVSIM_CWALK", "1") != "0"


class PageFault(Exception):
    """A stage-1 fault found while filling the TLB: #PF with CR2 and the error code."""

    def __init__(self, address: int, error_code: int, detail: str) -> None:
        super().__init__(detail)
        self.address, self.error_code, self.detail = address, error_code, detail


_CS = {}
_decoded: dict = {}  # (bits, rip, bytes) -> capstone instruction: faulting instructions repeat
_STACK_WRITES = {CX.X86_INS_PUSH, CX.X86_INS_CALL, CX.X86_INS_PUSHFQ, CX.X86_INS_PUSHFD, CX.X86_INS_PUSHF}
_STACK_READS = {CX.X86_INS_POP, CX.X86_INS_RET, CX.X86_INS_POPFQ, CX.X86_INS_POPFD, CX.X86_INS_POPF,
                CX.X86_INS_IRETQ, CX.X86_INS_IRETD, CX.X86_INS_IRET, CX.X86_INS_LEAVE}
_STRING_SRC = {CX.X86_INS_MOVSB, CX.X86_INS_MOVSW, CX.X86_INS_MOVSD, CX.X86_INS_MOVSQ, CX.X86_INS_LODSB,
               CX.X86_INS_LODSW, CX.X86_INS_LODSD, CX.X86_INS_LODSQ, CX.X86_INS_CMPSB, CX.X86_INS_CMPSW,
               CX.X86_INS_CMPSD, CX.X86_INS_CMPSQ, CX.X86_INS_OUTSB, CX.X86_INS_OUTSW, CX.X86_INS_OUTSD}
_STRING_DST = {CX.X86_INS_MOVSB, CX.X86_INS_MOVSW, CX.X86_INS_MOVSD, CX.X86_INS_MOVSQ, CX.X86_INS_STOSB,
               CX.X86_INS_STOSW, CX.X86_INS_STOSD, CX.X86_INS_STOSQ, CX.X86_INS_SCASB, CX.X86_INS_SCASW,
               CX.X86_INS_SCASD, CX.X86_INS_SCASQ, CX.X86_INS_CMPSB, CX.X86_INS_CMPSW, CX.X86_INS_CMPSD,
               CX.X86_INS_CMPSQ, CX.X86_INS_INSB, CX.X86_INS_INSW, CX.X86_INS_INSD}


def _disassembler(bits: int):
    md = _CS.get(bits)
    if md is None:
        md = _CS[bits] = capstone.Cs(capstone.CS_ARCH_X86, {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32,
                                                           64: capstone.CS_MODE_64}[bits])
        md.detail = True
    return md


class GeneralProtection(Exception):
    """A non-canonical linear address in 64-bit mode: #GP(0) (SDM 3.3.7.1)."""


class X86Mmu:
    def __init__(self, vcpu, hooks) -> None:
        self.vcpu = vcpu
        self.vm = vcpu.vm
        self.host = vcpu.vm.host
        self.regs = vcpu.regs
        self.tlb = TaggedTlb()
        self.log = vcpu.vm.dirty_log
        self._stage2 = None
        self.shadow = None  # a ShadowMmu (plugins/x86/shadow.py) when the VMM uses shadow paging
        self._tag = 0
        self.pending: Exception | None = None  # the fault a refused fill left for the vCPU
        self._ctx: tuple | None = None
        vcpu.uc.mem_map(SENTINEL_PAGE, 0x1000)
        self.engine = EngineTlb(vcpu.uc, hooks, self.fill, self.tlb)
        # The stage-1 walk in C (core/mmu.CWalk), on while stage 2 is a plain slot map
        self.cwalk = CWalk(hooks._uch, self.host) if CWalk.available and cwalk_default() else None
        self._s2_snapshot: list | None = None  # the stage-2 table pages the slot map came from
        self._s2_retry = False  # some leaves waited for A/D flags: derive the map again later
        self._own = False  # in a stage-1 invalidation of the guest's own (MOV CR3, INVLPG)
        if self.cwalk is not None:
            self.cwalk.desc.addr_mask, self.cwalk.desc.rsvd = _ADDR, _RSVD64
            self.tlb.sync, self.tlb.pre, self.tlb.post = self._drain, self._pre_invalidate, self._post_invalidate

    # -- the C walk (core/mmu.CWalk) ---------------------------------------------------------
    @property
    def stage2(self):
        return self._stage2

    @stage2.setter
    def stage2(self, s2) -> None:
        if s2 is not self._stage2:
            self._stage2 = s2
            if self.cwalk is not None:
                self._s2_snapshot = None
                self._refresh_cwalk()

    @property
    def tag(self):
        return self._tag

    @tag.setter
    def tag(self, tag) -> None:
        if tag == self._tag:
            return
        cw = self.cwalk
        if cw is not None:
            self._drain()  # the recorded fills belong to the old tag
            self._tag = tag
            cw.clear()  # the filled set: the new tag's pages the model holds
            sp = self.tlb.spaces.get((tag, 0))
            if sp is not None:
                for (vpn, _user), e in sp.map.items():
                    cw.note_now(vpn, e.global_)
        else:
            self._tag = tag

    def _drain(self) -> None:
        """Move the fills the engine made in C into the model (tag and PCID 0 of now)."""
        cw = self.cwalk
        if not cw.desc.ring_len:
            return
        insert, tag = self.tlb.insert, self._tag
        for vpn, paddr, leaf, gpa, perms, flags in cw.records():
            key = flags & 3
            insert(tag, 0, vpn, True if key == 1 else (2 if key == 2 else False),
                   TlbEntry(paddr, perms, bool(flags & 16), bool(flags & 4), 1 << (flags >> 8), bool(flags & 8),
                            (leaf, 8) if flags & 32 else None, gpa))

    def _covers(self, tag, asid, match) -> bool:
        """Whether an invalidation with these criteria reaches the current space (tag, PCID 0),
        where the C walk's fills go."""
        cur = self._tag
        return (match is None or match(cur)) and (tag is ... or tag == cur) and (asid is ... or asid == 0)

    def _pre_invalidate(self, tag, asid, address, keep_global, match) -> int:
        cw = self.cwalk
        if not cw.desc.ring_len:
            return 0
        if address is not None or not self._covers(tag, asid, match):
            self._drain()
            return 0
        if not keep_global:
            return cw.discard()  # dropped with the rest of the space
        recs = cw.records()
        kept = [r for r in recs if r[5] & 4]
        insert, cur = self.tlb.insert, self._tag
        for vpn, paddr, leaf, gpa, perms, flags in kept:
            key = flags & 3
            insert(cur, 0, vpn, True if key == 1 else (2 if key == 2 else False),
                   TlbEntry(paddr, perms, bool(flags & 16), True, 1 << (flags >> 8), bool(flags & 8),
                            (leaf, 8) if flags & 32 else None, gpa))
        return len(recs) - len(kept)  # dropped: the engine's copies go with a full flush

    def _post_invalidate(self, tag, asid, address, keep_global, match, pages) -> None:
        cw = self.cwalk
        if self._covers(tag, asid, match):
            sp = self.tlb.spaces.get((self._tag, 0))
            if pages is not None:
                for vpn in set(pages):
                    if sp is None or not any((vpn, u) in sp.map for u in sp.users):
                        cw.forget(vpn)
            elif sp is None:
                cw.clear()
            elif keep_global:
                cw.clear(keep_global=True)
        # A VMM that changes its stage 2 must invalidate (INVEPT, TLB_CONTROL): look again
        # (the guest's own MOV CR3 / INVLPG leave stage 2 alone)
        if not self._own:
            self._refresh_cwalk()

    def _refresh_cwalk(self) -> None:
        """Turn the C walk on when stage 2 is a plain slot map and nothing needs to see every
        fill (no dirty logging, no shadow paging, no EPT A/D flags or PML); else off."""
        cw = self.cwalk
        s2 = self._stage2
        if s2 is None or self.shadow is not None or self.log.enabled:
            cw.set_slots(None)
            return
        snap = self._s2_snapshot
        if snap is not None:
            view = self.host.view
            if all(view[h:h + 0x1000].tobytes() == b for h, b in snap):
                cw.desc.enabled = 1 if cw.desc.nslots else 0
                return
        cw.set_slots(self._stage2_slots(s2))

    def _stage2_slots(self, s2):
        """Stage 2 as (gpa, size, hpa) ranges, read from the EPT / NPT hierarchy: its 2 MiB and
        1 GiB leaves that allow everything and need no flag set (NPT: accessed and dirty set on
        every level; EPT: A/D flags off). Anything else (4 KiB leaves, partial permissions,
        not-present ranges, MMIO) is left out: a miss there goes to Python's exact walk.
        None when stage 2 is not such a hierarchy."""
        from hvsim.plugins.amd_svm.npt import Npt
        from hvsim.plugins.intel_vtx.ept import Ept
        kind = type(s2)
        if kind is Ept:
            if s2.ad or s2.levels != 4 or getattr(s2, "pml", None) is not None:
                return None
            root, high = s2.root, ~(s2.addr_mask | 0xFFF)
            def tables(e):
                return e & 0xFF == 7 and not e & high

            def leaf_ok(e):  # RWX, a valid memory type, no reserved bit: (usable, read-only)
                return e & 7 == 7 and (e >> 3) & 7 in (0, 1, 4, 5, 6) and not e & high, False
            large = s2.large
        elif kind is Npt:
            root, high = s2.ncr3 & _ADDR, ~(_ADDR | 0xFFF)
            need_t = paging.P | paging.RW | paging.US | paging.A
            need_l = need_t | paging.D | paging.PS
            def tables(e):
                return e & (need_t | paging.PS) == need_t and not e & high

            def leaf_ok(e):  # dirty clear: a stage-2 write (a table read, a store) must set it
                return e & (need_l & ~paging.D) == need_l & ~paging.D and not e & high, not e & paging.D
            large = {2: True, 3: True}
        else:
            return None
        view, hsize = self.host.view, self.host.size
        snap, slots, retry = [], [], False
        entries = struct.Struct("<512Q").unpack_from

        def table(hpa):
            if hpa + 0x1000 > hsize:
                return None
            snap.append((hpa, bytes(view[hpa:hpa + 0x1000])))
            return entries(view, hpa)

        pml4 = table(root)
        if pml4 is None:
            return None
        for i4, e4 in enumerate(pml4):
            if not e4 & 7 or not tables(e4):
                retry = retry or bool(e4 & 1)
                continue
            pdpt = table(e4 & _ADDR)
            for i3, e3 in enumerate(pdpt or ()):
                if not e3 & 7:
                    continue
                gpa = (i4 << 39) | (i3 << 30)
                if e3 & paging.PS:
                    ok, ro = leaf_ok(e3)
                    if large[3] and ok and not e3 & 0x3FFFF000 & _ADDR:
                        slots.append((gpa, 1 << 30, e3 & _ADDR, ro))
                    retry = retry or not ok or ro
                    continue
                if not tables(e3):
                    retry = True
                    continue
                pd = table(e3 & _ADDR)
                for i2, e2 in enumerate(pd or ()):
                    if not e2 & 7 or not e2 & paging.PS:
                        continue  # not present, or 4 KiB pages: Python's walk
                    ok, ro = leaf_ok(e2)
                    if large[2] and ok and not e2 & 0x1FF000:
                        slots.append((gpa | (i2 << 21), 1 << 21, e2 & _ADDR, ro))
                    retry = retry or not ok or ro
        merged: list[list] = []
        for gpa, size, hpa, ro in slots:
            last = merged[-1] if merged else None
            if last and last[0] + last[1] == gpa and last[2] + last[1] == hpa and last[3] == ro:
                last[1] += size
            else:
                merged.append([gpa, size, hpa, ro])
        merged = [(g, n, h, ro) for g, n, h, ro in merged if h + n <= hsize]
        self._s2_snapshot, self._s2_retry = snap, retry and kind is Npt
        return merged or None

    # -- the paging context ------------------------------------------------------------------
    def _context(self) -> tuple[int, int, int, int, int]:
        r = self.regs
        cr0, cr3, cr4 = r.read(X.UC_X86_REG_CR0), r.read(X.UC_X86_REG_CR3), r.read(X.UC_X86_REG_CR4)
        efer = self.vcpu.regs.msr(MSR_EFER)
        pcid = cr3 & 0xFFF if cr4 & paging.CR4_PCIDE else 0
        self._ctx = ctx = (cr0, cr3, cr4, efer, pcid)
        return ctx

    def context_changed(self) -> None:
        """CR0/CR3/CR4/EFER may change (a trapped MOV CR or WRMSR, a VM entry)."""
        self._ctx = None

    # -- stage 2 as the walk sees it -----------------------------------------------------------
    def gpa_to_hpa(self, gpa: int, write: bool = False, fetch: bool = False, walk: bool = False) -> int:
        """Guest-physical -> host-physical through the current stage 2 (or Stage2Fault)."""
        s2 = self.stage2
        if s2 is None:
            if self.shadow is not None:  # the VMM's own view of guest memory: its memslots
                try:
                    return self.vm.memory.translate(gpa)
                except GuestMemoryError:
                    raise Stage2Fault(gpa, f"guest-physical {gpa:#x} is not in any memory slot", write=write,
                                      fetch=fetch, walk=walk) from None
            if gpa >= self.host.size:
                raise Stage2Fault(gpa, f"guest-physical {gpa:#x} is beyond host memory", write=write,
                                  fetch=fetch, walk=walk)
            return gpa
        return s2.translate(gpa, write, fetch, walk)[0]

    def _table_u32(self, gpa: int) -> int:
        hpa = self.gpa_to_hpa(gpa, walk=True)
        return _U32.unpack_from(self.host.view, hpa)[0] if hpa + 4 <= self.host.size else 0xFFFF_FFFF

    def _table_u64(self, gpa: int) -> int:
        hpa = self.gpa_to_hpa(gpa, walk=True)
        return _U64.unpack_from(self.host.view, hpa)[0] if hpa + 8 <= self.host.size else (1 << 64) - 1

    def _table_update(self, gpa: int, size: int, value: int) -> None:
        """The processor's accessed/dirty update of a guest paging-structure entry (a write, and
        logged as one)."""
        hpa = self.gpa_to_hpa(gpa, write=True, walk=True)
        if hpa + size <= self.host.size:
            (_U32 if size == 4 else _U64).pack_into(self.host.view, hpa, value)
            if self.log.enabled:
                self.log.pages.add(gpa >> 12)

    def walk(self, linear: int, access: Access, cpl: int | None = None, set_ad: bool = True,
             record: bool = True, ac: bool | None = None) -> Walk:
        """The guest's stage-1 walk of ``linear`` with every table read through stage 2
        (``ac``: RFLAGS.AC for SMAP, read from the vCPU when not given)."""
        cr0, cr3, cr4, efer, _pcid = self._ctx or self._context()
        if cpl is None:
            cpl = self.vcpu.cpl()
        if ac is None:
            ac = bool(cr4 & paging.CR4_SMAP and self.regs.read(X.UC_X86_REG_RFLAGS) & RFLAGS_AC)
        return paging.walk(linear, access, cr0, cr3, cr4, efer, cpl, self._table_u32, self._table_u64,
                           self._table_update if set_ad else None, record, ac)

    # -- Unicorn's TLB miss -----------------------------------------------------------------------
    def fill(self, vaddr: int, access: int):
        """Unicorn's TLB has no entry for ``vaddr``: the model's, or a two-stage walk."""
        if vaddr >> 12 == _UNTIL_PAGE:
            return SENTINEL_PAGE, PERM_X
        cr0, _cr3, cr4, efer, pcid = self._ctx or self._context()
        if efer & paging.EFER_LMA:
            top = vaddr >> (56 if cr4 & paging.CR4_LA57 else 47)
            if top and top != (1 << (8 if cr4 & paging.CR4_LA57 else 17)) - 1:
                self.pending = GeneralProtection(f"non-canonical address {vaddr:#x}")
                return None
        user = bool(cr0 & 1) and self.regs.read(X.UC_X86_REG_CS) & 3 == 3
        # SMAP (SDM 4.6.1): at CPL < 3 with RFLAGS.AC clear, user pages allow no data access.
        # The engine keeps such translations apart (QEMU's KSMAP / KNOSMAP TLB indexes), and so
        # does the model: its "user" key is 2 for them.
        smap = not user and cr4 & paging.CR4_SMAP and not self.regs.read(X.UC_X86_REG_RFLAGS) & RFLAGS_AC
        if smap:
            user = 2
        vpn = vaddr >> 12
        need = PERM_X if access == ACCESS_FETCH else PERM_W if access == ACCESS_WRITE else PERM_R
        if self._s2_retry and not self.engine.fills & 255:
            self._refresh_cwalk()  # NPT flags the Python walks set may complete the slot map
        e = self.tlb.lookup(self._tag, pcid, vpn, user)
        if e is not None:
            if e.perms & need:
                self.engine.refilled()
                return e.paddr, e.perms
            if need == PERM_W and not e.dirty and e.leaf is not None and self._set_dirty(e):
                self._log_write(e)
                return e.paddr, e.perms
        # A miss, or an entry that does not allow this access: walk again (a fault would drop the
        # entry anyway, SDM 4.10.4.1; a changed entry may now allow it).
        if self.shadow is not None:
            return self._fill_shadow(vaddr, _ACCESS.get(access, Access.READ), user, pcid, self._ctx)
        fast = None
        if self.stage2 is not None and efer & paging.EFER_LMA and not cr4 & paging.CR4_LA57:
            fast = self._fast_walk(vaddr, need, user, smap, cr0, self._ctx[1], cr4, efer)
        if fast is None:
            try:
                w = self.walk(vaddr, _ACCESS.get(access, Access.READ), 3 if user is True else 0, record=False,
                              ac=not smap)
            except Stage2Fault as fault:
                fault.gla = vaddr
                self.pending = fault
                return None
            if w.fault:
                self.pending = PageFault(vaddr, w.error_code, w.fault)
                return None
            gpa, writable, executable, s1_user, global_, size, dirty, leaf = \
                w.address, w.writable, w.executable, w.user, w.global_, w.page_size, w.dirty, w.leaf
        else:
            gpa, writable, executable, s1_user, global_, size, dirty, leaf = fast
        try:
            s2 = self.stage2
            if s2 is None:
                hpa, perms2 = self.gpa_to_hpa(gpa, need == PERM_W, need == PERM_X), PERM_R | PERM_W | PERM_X
            else:
                hpa, perms2 = s2.translate(gpa, need == PERM_W, need == PERM_X)
        except Stage2Fault as fault:
            mmio = self._mmio_page(gpa, fault)
            if mmio is not None:
                return mmio, PERM_R | PERM_W
            fault.gla = vaddr
            self.pending = fault
            return None
        writable = writable and perms2 & PERM_W
        if self.log.enabled and need != PERM_W:
            dirty = False  # logging: write permission waits for a write, which is recorded
        perms = (PERM_R | (PERM_W if writable and dirty else 0) | (PERM_X if executable else 0)) & perms2
        if smap and s1_user:
            perms &= PERM_X  # a supervisor fetch found it; data accesses fault (SMAP)
        paddr = HOST_PHYS_BASE + (hpa & ~0xFFF)
        e = TlbEntry(paddr, perms, s1_user, global_, size, dirty, leaf if writable else None, gpa >> 12)
        self.tlb.insert(self._tag, pcid, vpn, user, e)
        if self.cwalk is not None:
            self.cwalk.note(vpn, e.global_)
        if perms & PERM_W:
            self._log_write(e)
        return paddr, perms

    def _fast_walk(self, vaddr: int, need: int, user, smap, cr0: int, cr3: int, cr4: int, efer: int):
        """The common refill, 4-level paging over EPT / NPT, without the general walk's
        bookkeeping: every table page's stage-2 translation already cached (for the walk's
        access: a write when the processor may set stage-2 A/D flags there), every entry present
        with its accessed flag set (and the leaf's dirty flag for a write), no reserved bit, and
        the access allowed. Anything else (a flag to set, a fault to report, a stage-2 walk)
        returns None and the full walk (paging.walk) runs, which sets flags and builds the
        fault exactly. Returns (gpa, writable, executable, user, global, page size, dirty, leaf)."""
        s2 = self.stage2
        get, walk_writes = s2.cache.get, s2.walk_writes
        view, hsize = self.host.view, self.host.size
        rsvd = _RSVD64 if efer & paging.EFER_NXE else _RSVD64 | paging.XD
        table = cr3 & _ADDR
        rw = us = True
        nx = False
        for shift in (39, 30, 21, 12):
            addr = table + ((vaddr >> shift) & 0x1FF) * 8
            hit = get(addr >> 12)
            if hit is None:
                return None
            hpa, perms, s2_dirty = hit
            if not (perms & PERM_W and s2_dirty if walk_writes else perms & PERM_R):
                return None
            hpa |= addr & 0xFFF
            if hpa + 8 > hsize:
                return None
            entry = _U64.unpack_from(view, hpa)[0]
            if entry & _P_A != _P_A or entry & rsvd:
                return None
            rw = rw and entry & paging.RW
            us = us and entry & paging.US
            nx = nx or entry & paging.XD
            if shift == 12:
                break
            if entry & paging.PS:
                if shift == 39 or entry & ((1 << shift) - 1) & ~0x1FFF & _ADDR:
                    return None
                break
            table = entry & _ADDR
        mask = (1 << shift) - 1
        is_user = user is True
        writable = bool(rw) or (not is_user and not cr0 & paging.CR0_WP)
        executable = not (nx and efer & paging.EFER_NXE) and not (not is_user and us and cr4 & paging.CR4_SMEP)
        if is_user and not us or need == PERM_W and (not writable or not entry & paging.D) \
                or need == PERM_X and not executable or smap and us and need != PERM_X:
            return None  # a fault, or a dirty flag to set: the full walk
        return ((entry & _ADDR & ~mask) | (vaddr & mask), writable, executable, bool(us),
                bool(entry & paging.G and cr4 & paging.CR4_PGE), mask + 1, bool(entry & paging.D), (addr, 8))

    def _log_write(self, e: TlbEntry) -> None:
        if self.log.enabled:
            self.log.pages.add(e.gpa)

    def _fill_shadow(self, vaddr: int, mode: Access, user: bool, pcid: int, ctx: tuple):
        """Shadow paging: the processor walks the VMM's shadow tables (host-physical, GVA ->
        HPA); a miss there is a #PF, which the VMM intercepts (plugins/x86/shadow.py)."""
        w = self.shadow.walk(vaddr, mode, 3 if user is True else 0, ctx, ac=user != 2)
        if w.fault:
            self.pending = PageFault(vaddr, w.error_code, w.fault)
            return None
        if w.entry & SHADOW_MMIO:
            return w.address & ~0xFFF, PERM_R | PERM_W
        perms = PERM_R | (PERM_W if w.writable else 0) | (PERM_X if w.executable else 0)
        if user == 2 and w.user:
            perms &= PERM_X  # SMAP, as in fill
        paddr = HOST_PHYS_BASE + (w.address & ~0xFFF)
        self.tlb.insert(self.tag, pcid, vaddr >> 12, user, TlbEntry(paddr, perms, w.user, w.global_, 0x1000))
        return paddr, perms

    def _set_dirty(self, e: TlbEntry) -> bool:
        """The first write through a cached, writable translation whose dirty flag is clear: set
        D in the leaf entry (SDM 4.8), if that entry still maps the page writable; else walk."""
        address, size = e.leaf
        try:
            value = self._table_u64(address) if size == 8 else self._table_u32(address)
            if value & (paging.P | paging.RW) != paging.P | paging.RW:
                return False
            self._table_update(address, size, value | paging.A | paging.D)
        except Stage2Fault:
            return False
        e.dirty, e.perms = True, e.perms | PERM_W
        return True

    def _mmio_page(self, gpa: int, fault: Stage2Fault) -> int | None:
        """A not-present stage-2 entry where a device sits is MMIO, as under KVM (the page is
        mapped to the device's range, whose callbacks are the MMIO exits); any other page no RAM
        backs becomes MMIO too (unassigned: all-ones, or an hvsim_mmio plugin's answer), unless
        the VM is strict (strict_mmio) and no such plugin is there."""
        if fault.misconfig or fault.allowed or fault.fetch:
            return None
        page = gpa & ~0xFFF
        if self.vm.bus.mmio(gpa) is not None:
            return page
        if self.vm.mmio_fallback and gpa < HOST_PHYS_BASE and not self.vm.memory.is_ram(gpa):
            self.vcpu.map_lazy(page)
            return page
        return None

    def exact_address(self, page: int, fetch: bool) -> int:
        """The linear address a refused fill was for. Unicorn's fill reports only the page; the
        processor reports the byte (CR2, the guest-linear and guest-physical addresses), so the
        faulting instruction's memory operands are decoded and the one in that page taken; an
        access that starts on the page before faults at the page's first byte (SDM 4.7)."""
        vcpu = self.vcpu
        rip = vcpu.rip()
        lin_rip = vcpu.segment_base("cs") + rip if not vcpu.long_mode() else rip
        if fetch:
            return lin_rip if lin_rip >> 12 == page >> 12 else page
        bits = vcpu.code_bits()
        try:
            code = vcpu.read_linear(lin_rip, 15)
        except Exception:  # the code itself is unreadable: the page is what is known
            return page
        insn = _decoded.get((bits, rip, code))
        if insn is None:
            insn = next(_disassembler(bits).disasm(code, rip, 1), None)
            if insn is None:
                return page
            if len(_decoded) > 4096:
                _decoded.clear()
            _decoded[(bits, rip, code)] = insn
        mask, r = (1 << bits) - 1, self.regs
        candidates = []
        for op in insn.operands:
            if op.type != CX.X86_OP_MEM:
                continue
            m = op.mem
            ea = m.disp
            if m.base == CX.X86_REG_RIP:
                ea += rip + insn.size
            elif m.base:
                ea += r.read(_reg(bits, m.base))
            if m.index and m.index not in _NO_INDEX:
                ea += r.read(_reg(bits, m.index)) * m.scale
            seg = {CX.X86_REG_FS: "fs", CX.X86_REG_GS: "gs"}.get(m.segment)
            base = _segment_base(vcpu, seg) if seg else 0
            candidates.append(((base + (ea & mask)) & ((1 << 64) - 1), op.size))
        rsp = r.read(X.UC_X86_REG_RSP)
        if insn.id in _STACK_WRITES:
            candidates.append((rsp - 8, 8))
        elif insn.id in _STACK_READS:
            candidates.append((rsp, 8))
        if insn.id in _STRING_SRC:
            candidates.append((r.read(X.UC_X86_REG_RSI), 8))
        if insn.id in _STRING_DST:
            candidates.append((r.read(X.UC_X86_REG_RDI), 8))
        for ea, size in candidates:
            if ea >> 12 == page >> 12:
                return ea
            if (ea + max(size, 1) - 1) >> 12 == page >> 12:
                return page
        return page

    def fetchable(self, address: int) -> bool:
        """Whether an instruction fetch at ``address`` translates now (without faulting)."""
        ok = self.fill(address & ~0xFFF, ACCESS_FETCH) is not None
        if self.cwalk is not None:
            self.cwalk.flush_note()  # made outside the engine: no fill callback reads the note
        self.pending = None
        return ok

    def take_pending(self) -> Exception | None:
        fault, self.pending = self.pending, None
        return fault

    # -- invalidation (the guest's own instructions, reported by traps before they run) ------------
    def on_mov_to_cr(self, cr: int, value: int) -> None:
        self._own = True
        try:
            self._on_mov_to_cr(cr, value)
        finally:
            self._own = False

    def _on_mov_to_cr(self, cr: int, value: int) -> None:
        cr0, _cr3, cr4, _efer, pcid = self._ctx or self._context()
        self._ctx = None
        if cr == 3:
            if cr4 & paging.CR4_PCIDE:
                if value >> 63:
                    return  # bit 63 set: the new PCID's translations are kept (SDM 4.10.4.1)
                self.tlb.invalidate(self.tag, value & 0xFFF, keep_global=True)
            else:
                self.tlb.invalidate(self.tag, 0, keep_global=True)
        elif cr == 0 and (value ^ cr0) & _CR0_PAGING or cr == 4 and (value ^ cr4) & _CR4_PAGING:
            self.tlb.invalidate(self.tag)

    def on_invlpg(self, linear: int) -> None:
        self._own = True
        try:
            self.tlb.invalidate(self._tag, address=linear)
        finally:
            self._own = False

    # -- the translation tool ---------------------------------------------------------------------
    def trace(self, linear: int) -> TranslationTrace:
        """The full walk of ``linear`` for ``hvsim translate``: every guest table entry with its
        own stage-2 walk, then the final address's. Looks only (no A/D bits set)."""
        s2 = self.stage2
        name = "shadow paging (the VMM's memory slots)" if self.shadow is not None else \
            "none" if s2 is None else type(s2).__name__.upper()
        trace = TranslationTrace(linear, stage2_name=name,
                                 stage2_levels={n: f"{name} {e}" for n, e in paging.LEVEL_NAMES.items()})

        def s2_steps(gpa):
            if s2 is None:
                try:
                    return [], self.gpa_to_hpa(gpa), None
                except Stage2Fault as fault:
                    return [], None, fault.detail
            return s2.steps(gpa)

        try:
            walk = self.walk(linear, Access.READ, set_ad=False)
        except Stage2Fault as fault:
            trace.fault = fault.detail
            return trace
        for step in walk.steps:
            steps, hpa, _fault = s2_steps(step.address)
            trace.stage1.append(TraceStep(paging.LEVEL_NAMES.get(step.level, str(step.level)), step.address,
                                          step.value, step.flags, steps, hpa))
        if walk.fault:
            trace.fault = walk.fault
            return trace
        trace.gpa = walk.address
        trace.stage2, trace.hpa, fault = s2_steps(walk.address)
        if fault:
            trace.fault = fault
        return trace

    # -- Python's own accesses at linear addresses ---------------------------------------------------
    def linear_to_hpa(self, linear: int, access: Access) -> int:
        """For exception delivery and the tools: a guest linear address to host-physical, or
        PageFault / GuestMemoryError."""
        try:
            w = self.walk(linear, access)
            if w.fault:
                raise PageFault(linear, w.error_code, w.fault)
            hpa = self.gpa_to_hpa(w.address, bool(access & Access.WRITE), bool(access & Access.EXECUTE))
        except Stage2Fault as fault:
            raise GuestMemoryError(fault.gpa, 1) from None
        return hpa


# Capstone's pseudo index register of a SIB byte with no index (index field 100b): adds 0.
_NO_INDEX = frozenset({CX.X86_REG_RIZ, CX.X86_REG_EIZ})


@functools.lru_cache(maxsize=None)
def _reg(bits: int, capstone_reg: int) -> int:
    return getattr(X, f"UC_X86_REG_{_disassembler(bits).reg_name(capstone_reg).upper()}")


def _segment_base(vcpu, name: str) -> int:
    # FS/GS bases in long mode come from the hidden part (IA32_FS_BASE / IA32_GS_BASE).
    msr = {"fs": 0xC000_0100, "gs": 0xC000_0101}[name]
    if vcpu.long_mode():
        return vcpu.regs.msr(msr)
    return vcpu.segment_base(name)
