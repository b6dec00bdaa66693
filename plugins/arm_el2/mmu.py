"""The arm64 vCPU's MMU: Unicorn's TLB misses filled by the guest's stage 1, every descriptor
read and the final IPA translated by stage 2, through a tagged TLB (core/mmu.py).

Arm ARM (DDI 0487) D8: with SCTLR_EL1.M = 0 the VA is the IPA; with HCR_EL2.VM = 1 stage 2
(:mod:`.stage2`, VTTBR_EL2 / VTCR_EL2 as hvsim programs them) maps IPAs to physical memory;
with HCR_EL2.VM = 0 there is no stage 2 and hvsim takes IPAs as the VM's physical map.

TLB rules modelled (D8.13 "Translation Lookaside Buffers"): entries are tagged with the VMID
and, for nG entries, the ASID (TTBR0_EL1 or, with TCR_EL1.A1, TTBR1_EL1 bits [63:48]); global
entries match any ASID. Nothing is dropped until an invalidation: the guest's TLBI
VMALLE1/VAE1/VALE1/ASIDE1/VAAE1/VAALE1 (and IS/OS forms, broadcast to the VM's vCPUs) run
natively and :mod:`.tlbi` reports each one before it executes; the hypervisor's TLBI
VMALLS12E1(IS), IPAS2E1(IS), ALLE1(IS) are :meth:`Arm64Mmu.tlbi`. As on hardware, IPAS2E1
drops stage-2 entries only: KVM follows it with VMALLE1IS for the combined ones.

Faults: a stage-1 fault is the guest's (an abort to its VBAR_EL1, :func:`deliver_stage1`);
a stage-2 fault is an exit to EL2 (:func:`stage2_exit`). Unicorn's fill reports only the page,
so the faulting load/store is decoded for the exact VA (FAR_ELx).
"""

from __future__ import annotations

import os
import struct

from unicorn.arm64_const import UC_ARM64_REG_MAIR_EL1, UC_ARM64_REG_PC, UC_ARM64_REG_PSTATE, UC_ARM64_REG_VBAR_EL1

from hvsim.core.exits import Exit, ExitKind
from hvsim.core.memory import Access, Walk
from hvsim.core.mmu import (ACCESS_FETCH, ACCESS_WRITE, HOST_PHYS_BASE, PERM_R, PERM_W, PERM_X, WALK_SLOTS, CWalk,
                            EngineTlb, Stage2Fault, TaggedTlb, TlbEntry, TraceStep, TranslationTrace)

from . import el2, exceptions, stage1, sysregs
from .decode import ADDR_UNKNOWN, decode
from .exits import (ESR_ELx_EC_DABT_CUR, ESR_ELx_EC_DABT_LOW, ESR_ELx_EC_IABT_CUR, ESR_ELx_EC_IABT_LOW,
                    ESR_ELx_S1PTW, ESR_ELx_WNR, El2Record, esr, hpfar)
from .stage2 import Stage2, Stage2Tables

# emu_start's end address: never reached (runs end on WFI, a slice or a stop) and no VA: bits
# [55:52] are not all equal, so it is outside both TTBR ranges for every T0SZ/T1SZ (and beyond
# PAMax with stage 1 off). Unicorn translates its page when a run starts (measured): the fill
# answers with a private page of zeros (UDF). A guest that branches there itself gets the
# Instruction Abort its own translation gives (:func:`run_end_abort`), not the private page.
UNTIL = 0x0040_0000_0000_0000
SENTINEL_PAGE = HOST_PHYS_BASE - 0x1000
_UNTIL_PAGES = (UNTIL >> 12, (UNTIL - 1) >> 12)
_MMU_OFF = -1  # the "ASID" of translations made with stage 1 off (VA = IPA)
_NO_STAGE2 = -1  # the tag of translations made with HCR_EL2.VM = 0
PA_BITS = stage1.PA_MAX  # with stage 1 off, a VA at or above 2^PAMax is an address size fault, level 0
_U64 = struct.Struct("<Q")
_PA_MASK = 0x0000_FFFF_FFFF_F000
_NEED = {ACCESS_WRITE: PERM_W, ACCESS_FETCH: PERM_X}
_MODE = {PERM_R: int(Access.READ), PERM_W: int(Access.WRITE), PERM_X: int(Access.EXECUTE)}
_USER = int(Access.USER)
_WALK_CACHE_MAX = 1 << 16
_KEY_VPN = (1 << 37) - 1  # the C walk's filled-set key: VA[48:12], the ASID from bit 37


def cwalk_default() -> bool:
    """The C walk is on unless HVSIM_CWALK=0 (then every TLB miss is filled in Python)."""
    return os.environ.get("HVSIM_CWALK", "1") != "0"


def _cw_key(vpn: int, asid: int) -> int:
    """The C walk's key of page ``vpn`` in address space ``asid`` (-1, stage 1 off: 0x1FFFF)."""
    return (vpn & _KEY_VPN) | ((asid & 0x1FFFF) << 37)


def stage2_slots(host, s2: Stage2) -> list[tuple[int, int, int, bool]] | None:
    """Stage 2 as (IPA, size, PA, read-only) ranges for the C walk, read from the stage-2 tables:
    the block and page descriptors that allow every access at EL1 and EL0 (S2AP read and write,
    XN 0b00), have the Access flag set and map Normal memory inside host memory, merged where
    they are contiguous; the largest WALK_SLOTS of them. Anything else (unmapped IPAs, devices,
    restricted pages) is left out: a miss there goes to Python's exact walk. None when stage 2
    is not a 4 KiB-granule hierarchy without hardware Access flag update."""
    if s2.granule != 12 or s2.ha or s2.inconsistent:
        return None
    view, size, u64 = host.view, host.size, _U64.unpack_from
    oa_limit = 1 << s2.oa_bits
    runs: list[list[int]] = []  # [ipa, size, pa]

    def visit(table: int, level: int, ipa_base: int, entries: int) -> None:
        shift = 12 + 9 * (3 - level)
        if table + 8 * entries > size:
            return
        for i in range(entries):
            desc = u64(view, table + 8 * i)[0]
            if not desc & 1:
                continue
            ipa = ipa_base + (i << shift)
            if level < 3 and desc & 3 == 3:
                nxt = desc & _PA_MASK
                if nxt < oa_limit:
                    visit(nxt, level + 1, ipa, 512)
                continue
            if level == 3 and desc & 3 != 3 or level < 3 and level not in (1, 2):
                continue
            if desc & 0xC0 != 0xC0 or (desc >> 53) & 3 or not desc & (1 << 10) or not (desc >> 4) & 3:
                continue  # S2AP not RW, XN set, Access flag clear, or Device memory (MemAttr[3:2] 0b00)
            pa = desc & _PA_MASK & ~((1 << shift) - 1)
            if pa >= oa_limit or pa + (1 << shift) > size:
                continue
            last = runs[-1] if runs else None
            if last is not None and last[0] + last[1] == ipa and last[2] + last[1] == pa:
                last[1] += 1 << shift
            else:
                runs.append([ipa, 1 << shift, pa])

    shift0 = 12 + 9 * (3 - s2.level0)
    visit(s2.root & _PA_MASK, s2.level0, 0, 1 << (s2.ipa_bits - shift0))
    runs.sort(key=lambda r: -r[1])
    return [(ipa, n, pa, False) for ipa, n, pa in runs[:WALK_SLOTS]]

# The guest's TLBI operations by (op1, CRm, op2) of SYS #op1, C8, Cm, #op2 (C5.5 "A64 system
# instructions for TLB maintenance"): (name, scope, last level only, inner/outer shareable).
TLBI_OPS = {}
for _crm, _suffix, _bcast in ((7, "", False), (3, "IS", True), (1, "OS", True)):
    for _op2, _name, _scope in ((0, "VMALLE1", "all"), (1, "VAE1", "va"), (2, "ASIDE1", "asid"),
                                (3, "VAAE1", "vaa"), (5, "VALE1", "va"), (7, "VAALE1", "vaa")):
        TLBI_OPS[(0, _crm, _op2)] = (_name + _suffix, _scope, _bcast)


class Stage1Abort(Exception):
    """A stage-1 fault found while filling the TLB: the guest's own Data / Instruction Abort."""

    def __init__(self, va: int, fsc: int, write: bool, fetch: bool, detail: str) -> None:
        super().__init__(detail)
        self.va, self.fsc, self.write, self.fetch, self.detail = va, fsc, write, fetch, detail


class Arm64Mmu:
    """One vCPU's translation: the engine's fill, the TLB model, the stage-2 context."""

    def __init__(self, vcpu, hooks, tables: Stage2Tables | None, vmid: int = 1) -> None:
        self.vcpu = vcpu
        self.vm = vcpu.vm
        self.host = vcpu.vm.host
        self.regs = vcpu.regs
        self.sysregs = vcpu.sysregs
        self.tlb = TaggedTlb()
        self.tables = tables
        # VTTBR_EL2 / VTCR_EL2 as hvsim (the hypervisor) programs them (set_stage2 changes them)
        self.VTTBR_EL2 = tables.vttbr(vmid) if tables is not None else 0  # noqa: N815
        self.VTCR_EL2 = tables.vtcr if tables is not None else 0  # noqa: N815
        self._stage2s: dict[tuple[int, int], Stage2] = {}
        # A walk cache (D8.13: intermediate entries may be cached): valid table descriptors by
        # their IPA, dropped on any TLB invalidation, the guest's or the hypervisor's.
        self.walk_cache: dict[int, int] = {}
        self.pending: Exception | None = None  # the fault a refused fill left for the vCPU
        self._ctx: tuple | None = None
        self._fast: tuple | None = None  # stage1.fast_params of the context, when it applies
        self._pstate = UC_ARM64_REG_PSTATE
        vcpu.uc.mem_map(SENTINEL_PAGE, 0x1000)
        self.engine = EngineTlb(vcpu.uc, hooks, self.fill, self.tlb)
        # The stage-1 walk in C (core/mmu.CWalk), on while stage 2 is a plain slot map
        self.cwalk = CWalk(hooks._uch, self.host) if CWalk.available and cwalk_default() else None
        self._cw_s2: Stage2 | None = None  # the stage 2 the C walk's slots and filled set are for
        self._cw_tag = _NO_STAGE2  # its tag (VMID) in the model
        self._cw_slots: dict[int, list | None] = {}  # id(Stage2) -> its slot map
        self._cw_asids: list[int] = []
        if self.cwalk is not None:
            self.cwalk.desc.rsvd = stage1.PA_MAX  # the arm64 walk reads PAMax here
            self.tlb.sync, self.tlb.pre, self.tlb.post = self._drain, self._pre_invalidate, self._post_invalidate

    # -- the C walk (core/mmu.CWalk) ---------------------------------------------------------
    def _drain(self) -> None:
        """Move the fills the engine made in C into the model (the C walk's tag, each fill's
        ASID)."""
        cw = self.cwalk
        if not cw.desc.ring_len:
            return
        insert, tag = self.tlb.insert, self._cw_tag
        for vpn, paddr, _leaf, gpa, perms, flags in cw.records():
            insert(tag, flags >> 16, vpn, bool(flags & 1),
                   TlbEntry(paddr, perms, bool(flags & 16), bool(flags & 4), 1 << ((flags >> 8) & 0xFF), True,
                            None, gpa))

    def _cw_renote(self) -> None:
        """The filled set anew: every page the model holds for the C walk's tag."""
        cw, tag = self.cwalk, self._cw_tag
        cw.clear()
        for (t, a), sp in self.tlb.spaces.items():
            if t == tag:
                for vpn, _user in sp.map:
                    cw.note_now(_cw_key(vpn, a), False)

    def _cw_follow(self, s2: Stage2 | None) -> None:
        """Stage 2 is now ``s2``: the C walk's slots and filled set follow it."""
        if s2 is self._cw_s2:
            return
        self._drain()  # the recorded fills belong to the old stage 2
        self._cw_s2 = s2
        self._cw_tag = s2.vmid if s2 is not None else _NO_STAGE2
        self._cw_renote()
        self._cw_refresh()

    def _cw_refresh(self) -> None:
        """Turn the C walk on when stage 2 is a plain slot map and no dirty logging needs to see
        every fill; else off."""
        cw, s2 = self.cwalk, self._cw_s2
        if s2 is None or self.vm.dirty_log.enabled:
            cw.set_slots(None)
            return
        key = id(s2)
        if key not in self._cw_slots:
            self._cw_slots[key] = stage2_slots(self.host, s2)
        cw.set_slots(self._cw_slots[key])

    def _pre_invalidate(self, tag, asid, address, keep_global, match) -> int:
        self._drain()
        if address is not None:
            cur = self._cw_tag
            self._cw_asids = [a for (t, a) in self.tlb.spaces if t == cur]
        return 0

    def _post_invalidate(self, tag, asid, address, keep_global, match, pages) -> None:
        cur = self._cw_tag
        if not ((match is None or match(cur)) and (tag is ... or tag == cur)):
            return
        cw = self.cwalk
        if pages is None:
            # The current tag lost every entry (VMALLE1, VMALLS12E1, ALLE1): an empty set. An
            # ASID's invalidation leaves the keys of its dropped entries in the set: a miss there
            # goes to Python, which walks again (a key without an entry only costs speed; Linux
            # reuses an ASID only after a rollover, which invalidates everything).
            if not any(t == cur for t, _a in self.tlb.spaces):
                cw.clear()
        else:
            spaces = self.tlb.spaces
            for vpn in set(pages):
                for a in self._cw_asids:
                    sp = spaces.get((cur, a))
                    if sp is None or ((vpn, False) not in sp.map and (vpn, True) not in sp.map):
                        cw.forget(_cw_key(vpn, a))
        self._cw_refresh()  # dirty logging starts with an invalidation

    # -- the translation context ---------------------------------------------------------------
    def stage2(self) -> Stage2 | None:
        """The stage 2 in use (None when HCR_EL2.VM is clear)."""
        if not self.vcpu.el2.hcr & el2.HCR_VM or self.tables is None and not self.VTTBR_EL2:
            return None
        key = (self.VTTBR_EL2, self.VTCR_EL2)
        s2 = self._stage2s.get(key)
        if s2 is None:
            s2 = self._stage2s[key] = Stage2(self.host, *key)
        return s2

    def _context(self) -> tuple:
        s = self.sysregs
        sctlr, tcr = s.read(sysregs.SCTLR_EL1), s.read(sysregs.TCR_EL1)
        ttbr0, ttbr1 = s.read(sysregs.TTBR0_EL1), s.read(sysregs.TTBR1_EL1)
        s2 = self.stage2()
        asid = stage1.asid(tcr, ttbr0, ttbr1) if sctlr & sysregs.SCTLR_EL1_M else _MMU_OFF
        self._ctx = ctx = (sctlr, tcr, ttbr0, ttbr1, asid, s2.vmid if s2 is not None else _NO_STAGE2, s2)
        self._fast = stage1.fast_params(tcr, ttbr0, sctlr) if sctlr & sysregs.SCTLR_EL1_M and s2 is not None else None
        if self.cwalk is not None:
            self._cw_follow(s2)
        return ctx

    def context_changed(self) -> None:
        """SCTLR_EL1, TCR_EL1, TTBR0/1_EL1, HCR_EL2 or VTTBR/VTCR_EL2 may have changed."""
        self._ctx = None
        if self.cwalk is not None:
            self._cw_follow(self.stage2())

    def set_stage2(self, vttbr: int, vtcr: int) -> None:
        """Program VTTBR_EL2 and VTCR_EL2 (the hypervisor's writes; the TLB keeps what it has)."""
        self.VTTBR_EL2, self.VTCR_EL2 = vttbr, vtcr
        self.walk_cache.clear()
        self._ctx = None
        if self.cwalk is not None:
            self._cw_follow(self.stage2())

    # -- stage 2 as the walk sees it ---------------------------------------------------------
    def ipa_to_pa(self, ipa: int, write: bool = False, fetch: bool = False, walk: bool = False,
                  el0: bool = False, s2: Stage2 | None = ...) -> tuple[int, int]:
        """(host-physical address, stage-2 permissions) of ``ipa``, or Stage2Fault."""
        if s2 is ...:
            s2 = (self._ctx or self._context())[6]
        if s2 is None:  # no stage 2: the VM's physical map, its RAM slots
            for slot in self.vm.memory.slots:
                if slot.gpa <= ipa < slot.end:
                    return slot.hpa + ipa - slot.gpa, PERM_R | PERM_W | PERM_X
            raise Stage2Fault(ipa, f"physical address {ipa:#x} is not RAM", write=write, fetch=fetch, walk=walk,
                              syndrome=0x04)
        pa, perms = s2.translate(ipa, write, fetch, walk, el0)
        if pa + 8 > self.host.size:
            raise Stage2Fault(ipa, f"stage 2 maps IPA {ipa:#x} beyond host memory ({pa:#x})", write=write,
                              fetch=fetch, walk=walk, syndrome=0x00)
        return pa, perms

    def stage2_lookup(self, ipa: int, access: Access) -> int | None:
        """``hvsim_stage2_translate`` on arm64: the physical address stage 2 (VTTBR_EL2 and
        VTCR_EL2 as programmed, or the RAM slots with HCR_EL2.VM clear) gives ``ipa`` for
        ``access`` (Access.USER: at EL0, for XN), or None where the guest's access would be a
        stage-2 abort. Looks only: nothing cached, no Access flag set."""
        access = int(access)
        write, fetch = bool(access & int(Access.WRITE)), bool(access & int(Access.EXECUTE))
        s2 = (self._ctx or self._context())[6]
        try:
            if s2 is None:
                return self.ipa_to_pa(ipa, write, fetch, s2=None)[0]
            pa = s2._walk(ipa, write, fetch, False, bool(access & _USER), None, look_only=True)[0]
        except Stage2Fault:
            return None
        return pa if pa < self.host.size else None

    def _walker(self, s2, el0: bool, look_only: bool):
        view, u64, cache = self.host.view, _U64, self.walk_cache

        def read_u64(ipa: int) -> int:
            value = cache.get(ipa)
            if value is not None:
                return value
            return u64.unpack_from(view, self.ipa_to_pa(ipa, walk=True, el0=el0, s2=s2)[0])[0]

        def write_u64(ipa: int, value: int) -> None:  # the hardware Access flag update
            u64.pack_into(view, self.ipa_to_pa(ipa, write=True, walk=True, el0=el0, s2=s2)[0], value)
            if self.vm.dirty_log.enabled:
                self.vm.dirty_log.pages.add(ipa >> 12)

        return read_u64, (None if look_only else write_u64)

    def walk(self, va: int, access: Access, look_only: bool = True, describe: bool = True) -> tuple[Walk, int]:
        """The guest's stage-1 walk of ``va`` (Access.USER: at EL0), descriptors read through
        stage 2 (a Stage2Fault on a descriptor propagates). Returns the Walk and what the
        translation allows (PERM_*)."""
        sctlr, tcr, ttbr0, ttbr1, _asid, _tag, s2 = self._ctx or self._context()
        if not sctlr & sysregs.SCTLR_EL1_M:
            if va >> PA_BITS:
                return Walk(None, [], "address size fault, level 0 (stage 1 off)", 0x00), 0
            return Walk(va, global_=True), PERM_R | PERM_W | PERM_X
        read_u64, write_u64 = self._walker(s2, bool(access & _USER), look_only)
        return stage1.translate(read_u64, va, tcr, ttbr0, ttbr1, access, write_u64, sctlr, describe)

    def trace(self, va: int) -> TranslationTrace:
        """The full walk of ``va`` for ``hvsim translate``: every stage-1 descriptor with the
        stage-2 walk of its IPA, then the final IPA's. Looks only (no Access flag set)."""
        s2 = (self._ctx or self._context())[6]
        trace = TranslationTrace(va, stage2_name="stage 2" if s2 is not None else "none (HCR_EL2.VM clear)",
                                 stage2_levels={n: f"stage-2 level {n}" for n in range(-1, 4)})

        def s2_steps(ipa):
            if s2 is None:
                try:
                    return [], self.ipa_to_pa(ipa, s2=None)[0], None
                except Stage2Fault as fault:
                    return [], None, fault.detail
            return s2.steps(ipa)

        try:
            w, _perms = self.walk(va, Access.READ)
        except Stage2Fault as fault:
            trace.fault = fault.detail
            return trace
        for step in w.steps:
            steps, pa, _fault = s2_steps(step.address)
            trace.stage1.append(TraceStep(f"level {step.level} descriptor", step.address, step.value, step.flags,
                                          steps, pa))
        if w.fault:
            trace.fault = w.fault
            return trace
        trace.gpa = w.address
        trace.stage2, trace.hpa, fault = s2_steps(w.address)
        trace.fault = fault
        return trace

    # -- Unicorn's TLB miss ------------------------------------------------------------------------
    def fill(self, vaddr: int, access: int):
        """Unicorn's TLB has no entry for ``vaddr``: the model's, or a two-stage walk."""
        vpn = vaddr >> 12
        if vpn in _UNTIL_PAGES:
            return SENTINEL_PAGE, PERM_X
        ctx = self._ctx or self._context()
        el0 = not self.regs.read(self._pstate) & 0xC  # PSTATE.EL == 0
        need = _NEED.get(access, PERM_R)
        tag, asid = ctx[5], ctx[4]
        e = self.tlb.lookup(tag, asid, vpn, el0)
        if e is not None and e.perms & need:
            self.engine.refilled()  # the engine's TLB had dropped it: it may be too small
            return e.paddr, e.perms
        # A miss, or an entry that does not allow this access: walk again (a fault is never
        # cached; a changed descriptor may now allow it).
        fast = self._fast_walk(vaddr, need, el0, self._fast, ctx[6]) if self._fast is not None else None
        try:
            if fast is None:
                w, perms1 = self.walk(vaddr, _MODE[need] | (_USER if el0 else 0), look_only=False, describe=False)
                if w.fault:
                    self.pending = Stage1Abort(vaddr, w.error_code, need == PERM_W, need == PERM_X, w.fault)
                    return None
                ipa, s1_user, global_, size = w.address, w.user, w.global_, w.page_size
                cache = self.walk_cache
                if len(cache) > _WALK_CACHE_MAX:
                    cache.clear()
                for step in w.steps[:-1]:  # the table descriptors this walk went through
                    cache[step.address] = step.value
            else:
                ipa, perms1, s1_user, global_, size = fast
            pa, perms2 = self.ipa_to_pa(ipa, need == PERM_W, need == PERM_X, False, el0, ctx[6])
        except Stage2Fault as fault:
            if fault.walk:
                fault.fetch = need == PERM_X  # the walk was for a fetch: an Instruction Abort
            else:
                mmio = self._mmio_page(fault)
                if mmio is not None:  # what stage 1 allows: a write to a read-only VA walks again
                    return mmio, perms1 & (PERM_R | PERM_W)
            fault.gla = vaddr
            self.pending = fault
            return None
        perms = perms1 & perms2
        log = self.vm.dirty_log
        if log.enabled:  # logging: write permission only on a write, which is recorded
            if need != PERM_W:
                perms &= ~PERM_W
            elif perms & PERM_W:
                log.pages.add(ipa >> 12)
        paddr = HOST_PHYS_BASE + (pa & ~0xFFF)
        self.tlb.insert(tag, asid, vpn, el0, TlbEntry(paddr, perms, s1_user, global_, size))
        if self.cwalk is not None and tag == self._cw_tag:
            self.cwalk.note(_cw_key(vpn, asid), False)
        return paddr, perms

    def _fast_walk(self, va: int, need: int, el0: bool, params: tuple, s2: Stage2):
        """The common refill (TTBR0_EL1, 4 KiB granule, stage 2 on) without the full walk's
        bookkeeping: descriptors from the walk cache or read where stage 2's cached translation
        of their page puts them, every one valid with no hierarchical control set, the leaf's
        Access flag set and the access allowed. Anything else (a fault to report, a flag to set,
        a stage-2 walk to make) returns None and :func:`stage1.translate` runs. Returns (IPA,
        stage-1 permissions, EL0 access, global, page size)."""
        inputsize, level, table, oa_bits, top, wxn = params
        if (va & ((1 << top) - 1)) >> inputsize:
            return None  # TTBR1_EL1's range, or outside both: the full walk
        cache, s2get = self.walk_cache, s2.cache.get
        view, hsize = self.host.view, self.host.size
        fresh = []
        while True:
            shift = 12 + 9 * (3 - level)
            addr = table + 8 * ((va >> shift) & ((1 << min(9, inputsize - shift)) - 1))
            desc = cache.get(addr)
            if desc is None:
                hit = s2get((addr >> 12, el0))
                if hit is None or not hit[1] & PERM_R:
                    return None
                pa = hit[0] | (addr & 0xFFF)
                if pa + 8 > hsize:
                    return None
                desc = _U64.unpack_from(view, pa)[0]
                if level < 3:
                    fresh.append((addr, desc))
            if level < 3 and desc & 3 == 3:  # a table descriptor
                table = desc & _PA_MASK
                if desc >> 59 or table >> oa_bits:  # APTable/XNTable/PXNTable/NSTable, or too far
                    return None
                level += 1
                continue
            break
        if not desc & stage1.DESC_VALID or level == 3 and not desc & stage1.DESC_TABLE or level == 0 \
                or not desc & stage1.DESC_AF:
            return None
        mask = (1 << shift) - 1
        oa = desc & _PA_MASK & ~mask
        if oa >> oa_bits:
            return None
        el0_ok = bool(desc & stage1.DESC_AP1)
        writable = not desc & stage1.DESC_AP2
        if el0:
            readable, can_write, executable = el0_ok, el0_ok and writable, not desc & stage1.DESC_UXN
        else:
            readable, can_write = True, writable
            executable = not desc & stage1.DESC_PXN and not (el0_ok and writable)
        if wxn and can_write:
            executable = False
        perms = (PERM_R if readable else 0) | (PERM_W if can_write else 0) | (PERM_X if executable else 0)
        if not perms & need:
            return None
        if fresh:
            if len(cache) > _WALK_CACHE_MAX:
                cache.clear()
            for addr, desc_ in fresh:
                cache[addr] = desc_
        return oa | (va & mask), perms, el0_ok, not desc & stage1.DESC_NG, mask + 1

    def fetchable(self, pc: int) -> bool:
        """Can the engine fetch at ``pc``? Asked before anything makes Unicorn translate a block
        outside ``emu_start`` (``ctl_request_cache``): a refused fill there crashes the process
        (measured), where inside ``emu_start`` it is the fault the run loop takes."""
        ok = self.fill(pc & ~0xFFF, ACCESS_FETCH) is not None
        if self.cwalk is not None:
            self.cwalk.flush_note()  # made outside the engine: no fill callback reads the note
        self.pending = None
        return ok

    def _mmio_page(self, fault: Stage2Fault) -> int | None:
        """A stage-2 translation fault where a device sits is MMIO, as under KVM: the page is the
        device's ``mmio_map`` range, whose callbacks are the MMIO exits (:mod:`.mmio`); with an
        hvsim_mmio plugin any IPA that is not RAM becomes MMIO."""
        if fault.fetch or fault.syndrome & 0x3C != 0x04:
            return None
        ipa, vm = fault.gpa, self.vm
        page = ipa & ~0xFFF
        if vm.bus.mmio(ipa) is not None:
            return page
        if vm.mmio_fallback and not vm.memory.is_ram(ipa) and ipa < HOST_PHYS_BASE - 0x1000:
            self.vcpu.mmio.map_lazy(page)
            return page
        return None

    def take_pending(self) -> Exception | None:
        fault, self.pending = self.pending, None
        return fault

    # -- exact fault addresses -----------------------------------------------------------------
    def exact_address(self, page: int, fetch: bool) -> tuple[int, object]:
        """The VA a refused fill was for, and the decoded load/store (or None). Unicorn's fill
        reports only the page; FAR_ELx holds the byte, so the instruction at PC is decoded and
        its address rebuilt; an access that starts on the page before faults at this page's
        first byte."""
        vcpu = self.vcpu
        pc = self.regs.read(UC_ARM64_REG_PC)
        if fetch:
            return (pc if pc >> 12 == page >> 12 else page), None
        insn = decode(vcpu.read_insn(pc))
        if insn is None or insn.addr == ADDR_UNKNOWN:
            return page, insn
        va = insn.address(vcpu.xreg, pc)
        if va >> 12 == page >> 12:
            return va, insn
        return page, insn

    # -- invalidation ------------------------------------------------------------------------------
    def on_guest_tlbi(self, key: tuple[int, int, int], xt: int) -> None:
        """The guest is about to execute TLBI ``key`` with Xt = ``xt`` (from :mod:`.tlbi`)."""
        name, scope, broadcast = TLBI_OPS[key]
        # VALE1 / VAALE1 ("last level"): only the final level's entries; cached table
        # descriptors (the walk cache) may stay (Arm ARM D8.13, C5.5)
        last_level = name.startswith(("VALE1", "VAALE1"))
        targets = [v.mmu for v in self.vm.vcpus if getattr(v, "mmu", None) is not None] if broadcast else [self]
        for mmu in targets:
            mmu._stage1_invalidate(scope, xt, last_level)

    def _stage1_invalidate(self, scope: str, xt: int, last_level: bool = False) -> None:
        if not last_level:
            self.walk_cache.clear()
        ctx = self._ctx or self._context()
        tag, tcr = ctx[5], ctx[1]
        asid = (xt >> 48) & (0xFFFF if tcr & stage1.TCR_AS else 0xFF)
        va = (xt & ((1 << 44) - 1)) << 12
        if va >> 55 & 1:
            va |= 0xFF00_0000_0000_0000  # VA[55:12] in Xt[43:0]: bits above follow bit 55
        if scope == "all":
            self.tlb.invalidate(tag)
        elif scope == "asid":
            self.tlb.invalidate(tag, asid, keep_global=True)
        elif scope == "va":
            self.tlb.invalidate(tag, asid, address=va)
            self.tlb.invalidate(tag, _MMU_OFF, address=va)
        else:  # VAAE1 / VAALE1: the address in every ASID
            self.tlb.invalidate(tag, address=va)

    def tlbi(self, op: str, ipa: int | None = None) -> None:
        """The hypervisor's TLB maintenance, for VMM plugins (C5.5): ``IPAS2E1`` / ``IPAS2E1IS``
        (stage-2 entries for ``ipa``; combined stage 1+2 entries stay, as the Arm ARM allows:
        follow with VMALLE1IS, as KVM's __kvm_tlb_flush_vmid_ipa does), ``VMALLE1`` /
        ``VMALLE1IS`` (stage-1 entries of the current VMID), ``VMALLS12E1`` /
        ``VMALLS12E1IS`` (stage 1 and 2 of the current VMID), ``ALLE1`` / ``ALLE1IS`` (every
        VMID). The IS forms reach every vCPU of the VM (its inner shareable domain)."""
        op = op.upper()
        base = op[:-2] if op.endswith("IS") else op
        if base not in ("IPAS2E1", "VMALLE1", "VMALLS12E1", "ALLE1"):
            raise ValueError(f"unknown TLBI operation {op!r}")
        if base == "IPAS2E1" and ipa is None:
            raise ValueError("TLBI IPAS2E1 needs the IPA")
        targets = [v.mmu for v in self.vm.vcpus if getattr(v, "mmu", None) is not None] \
            if op.endswith("IS") else [self]
        for mmu in targets:
            mmu._hyp_invalidate(base, ipa)

    def _hyp_invalidate(self, base: str, ipa: int | None) -> None:
        self.walk_cache.clear()
        ctx = self._ctx or self._context()
        s2, tag = ctx[6], ctx[5]
        if base == "IPAS2E1":
            if s2 is not None:
                s2.invalidate(ipa)
        elif base == "VMALLE1":
            self.tlb.invalidate(tag)
        elif base == "VMALLS12E1":
            if s2 is not None:
                s2.invalidate()
            self.tlb.invalidate(tag)
        else:
            for each in self._stage2s.values():
                each.invalidate()
            self.tlb.invalidate()
        if self.cwalk is not None:  # the hypervisor may have changed its stage-2 tables
            self._cw_slots.clear()
            self._cw_refresh()
        self.engine.flush()

    # -- address translation instructions ------------------------------------------------------
    def at_stage2_fault(self, op2: int, va: int) -> Stage2Fault | None:
        """The stage-2 fault the stage-1 walk of AT (op2 0-3) of ``va`` meets, if any."""
        access = (Access.WRITE if op2 & 1 else Access.READ) | (Access.USER if op2 & 2 else 0)
        try:
            self.walk(va, access)
        except Stage2Fault as fault:
            return fault
        return None

    def par_for(self, op2: int, va: int) -> int:
        """PAR_EL1 after AT S1E1R/S1E1W/S1E0R/S1E0W (op2 0-3) of ``va`` (D23.2 "PAR_EL1"):
        F = 0 with PA [47:12] (the IPA, stage 1 only), SH [8:7], NS [9], ATTR [63:56] from
        MAIR_EL1; or F = 1 with FST [6:1]; bit 11 is RES1. The engine's own AT walks QEMU's
        tables on the engine's physical space, so hvsim computes the result from its walk. A
        stage-2 fault on the walk is no PAR result: :mod:`.tlbi` takes it to EL2 as a Data
        Abort first (:meth:`at_stage2_fault`); here it would read PTW [8] and S [9]."""
        access = (Access.WRITE if op2 & 1 else Access.READ) | (Access.USER if op2 & 2 else 0)
        try:
            w, _perms = self.walk(va, access)
        except Stage2Fault as fault:
            return (1 << 11) | (1 << 9) | (1 << 8) | ((fault.syndrome & 0x3F) << 1) | 1
        if w.fault:
            return (1 << 11) | ((w.error_code & 0x3F) << 1) | 1
        if not w.steps:  # stage 1 off: Device-nGnRnE, outer shareable
            return (1 << 11) | (1 << 9) | (0b10 << 7) | (w.address & _PA_MASK)
        desc = w.steps[-1].value
        mair = self.regs.read(UC_ARM64_REG_MAIR_EL1)
        attr = (mair >> (8 * ((desc >> 2) & 7))) & 0xFF
        return (attr << 56) | (1 << 11) | (1 << 9) | (((desc >> 8) & 3) << 7) | (w.address & _PA_MASK)

    # -- Python's own accesses at virtual addresses ------------------------------------------------
    def va_to_ipa(self, va: int, access: Access) -> int | None:
        """For the tools and the MMIO path: the IPA of ``va`` (None when stage 1 faults), with no
        side effects."""
        try:
            w, _perms = self.walk(va, access)
        except Stage2Fault:
            return None
        return None if w.fault else w.address


# -- the two kinds of fault ---------------------------------------------------------------------
def deliver_stage1(vcpu, abort: Stage1Abort) -> bool:
    """A stage-1 fault: the guest's Data Abort (EC 0x24/0x25) or Instruction Abort (EC 0x20/
    0x21) at its VBAR_EL1 with ESR_EL1 (DFSC/IFSC with the level, WnR) and FAR_EL1 = the exact
    VA (D1.3 and "ISS encoding for an exception from a Data Abort"; ISV is 0 for aborts taken to
    EL1). Returns False when the fault is on the vector itself (it would repeat forever)."""
    regs = vcpu.regs
    pc = regs.read(UC_ARM64_REG_PC)
    pstate = regs.read(UC_ARM64_REG_PSTATE)
    lower = exceptions.current_el(pstate) == 0
    far, _insn = vcpu.mmu.exact_address(abort.va, abort.fetch)
    if abort.fetch:
        vbar = regs.read(UC_ARM64_REG_VBAR_EL1)
        if vbar <= pc < vbar + 0x800:
            return False
        syndrome = esr(ESR_ELx_EC_IABT_LOW if lower else ESR_ELx_EC_IABT_CUR, abort.fsc)
    else:
        syndrome = esr(ESR_ELx_EC_DABT_LOW if lower else ESR_ELx_EC_DABT_CUR,
                       abort.fsc | (ESR_ELx_WNR if abort.write else 0))
    exceptions.take_exception(vcpu, exceptions.SYNC, pc, syndrome, far)
    return True


def in_run_end_pages(pc: int) -> bool:
    """Is ``pc`` on the pages hvsim keeps for emu_start's end address (``UNTIL``)?"""
    return pc >> 12 in _UNTIL_PAGES


def run_end_abort(vcpu, pc: int) -> bool:
    """The guest fetched from hvsim's run-end pages (a branch to ``UNTIL`` or near it): the
    Instruction Abort its stage 1 gives for that VA (translation fault, level 0, outside both
    TTBR ranges; address size fault, level 0, with stage 1 off), at its VBAR_EL1."""
    el0 = exceptions.current_el(vcpu.regs.read(UC_ARM64_REG_PSTATE)) == 0
    try:
        w, _perms = vcpu.mmu.walk(pc, Access.EXECUTE | (Access.USER if el0 else 0))
        fsc = w.error_code if w.fault else stage1.fsc_translation(0)
    except Stage2Fault:
        fsc = stage1.fsc_translation(0)
    return deliver_stage1(vcpu, Stage1Abort(pc, fsc, False, True, "fetch from the run-end pages"))


def stage2_exit(vcpu, fault: Stage2Fault) -> Exit:
    """A stage-2 fault as the exit to EL2 (D24.2 ESR_EL2, FAR_EL2, HPFAR_EL2): EC 0x24 Data
    Abort or 0x20 Instruction Abort from a lower EL; ISS with DFSC/IFSC and its level, S1PTW
    when the access was a stage-1 descriptor (then WnR only for a hardware descriptor update),
    WnR, and the instruction syndrome (ISV, SAS, SSE, SRT, SF, AR) only for a single-register
    load/store at the final address, as the architecture provides; FnV 0 (FAR_EL2 is valid);
    FAR_EL2 = the VA; HPFAR_EL2.FIPA = IPA[47:12]. ``Exit.address`` is the faulting IPA."""
    va = fault.gla if fault.gla is not None else fault.gpa
    fetch = fault.fetch and not fault.walk
    far, insn = vcpu.mmu.exact_address(va, fault.fetch)
    if not fault.walk:
        fault.gpa = (fault.gpa & ~0xFFF) | (far & 0xFFF)
    fsc = fault.syndrome & 0x3F
    if fault.walk:
        iss = fsc | ESR_ELx_S1PTW | (ESR_ELx_WNR if fault.write else 0)
    elif fetch:
        iss = fsc
    else:
        iss = fsc | (ESR_ELx_WNR if fault.write else 0) | (insn.iss if insn is not None else 0)
    is_iabt = fault.fetch  # a stage-1 walk for a fetch is still an Instruction Abort
    ec = ESR_ELx_EC_IABT_LOW if is_iabt else ESR_ELx_EC_DABT_LOW
    rec = El2Record(esr(ec, iss), far, hpfar(fault.gpa))
    size = insn.size if insn is not None and not fault.walk and not is_iabt else 0
    return Exit(ExitKind.STAGE2_FAULT, "ESR_ELx_EC_IABT_LOW" if is_iabt else "ESR_ELx_EC_DABT_LOW", rec,
                fault.gpa, size, fault.write, None, detail=fault.detail)
