"""Shadow paging: memory virtualization without EPT / NPT, the way VMMs did it before them.

With ``VM(..., paging="shadow")`` (``hvsim run --paging shadow``) the VMM turns stage 2 off and
keeps, per vCPU, shadow page tables that map guest-virtual addresses straight to host-physical
ones; the processor walks those instead of the guest's own tables. They are filled lazily (a
"virtual TLB", as such VMMs are often described) and kept coherent with the guest's tables by write
protection, as KVM's shadow MMU does:

- The VMM intercepts #PF (exception bitmap bit 14 / SVM exception intercept 14), MOV to CR3
  (CR3-load exiting / CR3 write intercept), INVLPG and paging-mode changes in CR0/CR4.
- A #PF exit: the VMM walks the guest's tables for the faulting address (setting their accessed
  and dirty bits as the processor would). If the guest's own translation faults, the #PF is
  reflected into the guest with the guest's error code and CR2; otherwise the VMM writes one
  shadow entry (4 KiB; write permission only once the guest's dirty bit is set) and resumes the
  guest at the faulting instruction.
- Write protection: every guest page the walk read a paging-structure entry from is a guest
  page table; every shadow entry mapping such a page is made read-only (and the processor's
  TLB entry for it dropped). A guest write to its own page table is then a #PF exit the guest's
  translation allows: the VMM drops every shadow entry derived from that table (in every
  vCPU's shadow), lifts the protection and lets the write run; the next walk through the table
  protects it again. So the shadow is never staler than the guest's tables, and the VMM keeps
  one shadow root per guest CR3 across MOV CR3 instead of rebuilding it at every process
  switch (the CR3-load exit still happens: the VMM must switch roots).
- A write through a translation that uses the very table it writes (a recursive mapping)
  cannot be protected without emulating the instruction; that table is left writable and
  "unsync" (KVM's word), and the shadow entries derived from it are dropped at the next CR3 load
  or INVLPG of theirs, which is when the architecture lets the guest rely on the new entry.
- MOV to CR0/CR4 changing the paging mode, and INVPCID, drop every root; INVLPG drops one
  entry; a shadow pool that runs out is emptied and refilled, as a vTLB may.
- Dirty logging (``vm.dirty_log``): while it runs, shadow entries get write permission only on
  a write, which the VMM records; ``collect`` takes write permission away again.
- MMIO: a guest page that maps a device gets a shadow entry with ignored bit 62 set (KVM marks
  its MMIO shadow entries too); the processor model sends such accesses to the device range.
- CR0.WP = 0: a supervisor write to a page the guest maps read-only gets a writable shadow
  entry without U/S (KVM's trick), so a later user access faults and is re-shadowed read-only.

The shadow tables are real x86 4-level tables in the hypervisor's area of host memory,
whatever the guest's own paging mode (a 32-bit guest's addresses are a subset), 5-level for a
guest with CR4.LA57; the processor walks them with the guest's CR4.SMEP and LA57.
``hvsim translate`` shows them as stage 1 when shadow paging is on.
"""

from __future__ import annotations

import struct

from unicorn import x86_const as X

from hvsim.core.memory import Access, GuestMemoryError

from . import paging

SHADOW_MMIO = 1 << 62  # ignored by the processor (SDM Table 4-19); hvsim's "device page" mark
_U64 = struct.Struct("<Q")
_ADDR = ((1 << paging.MAXPHYADDR) - 1) & ~0xFFF
_TABLE = paging.P | paging.RW | paging.US
# The processor's paging mode for the shadow tables: 4-level, write protection on, NX on.
HW_CR0, HW_CR4, HW_EFER = paging.CR0_PG | paging.CR0_WP | 1, paging.CR4_PAE, paging.EFER_LMA | paging.EFER_NXE
_CR4_MODE = paging.CR4_PSE | paging.CR4_PAE | paging.CR4_PGE | paging.CR4_SMEP | paging.CR4_SMAP | paging.CR4_LA57
_LEVELS = ((4, 3, 2), (5, 4, 3, 2))  # the shadow's non-leaf levels: 4-level, or 5-level for an LA57 guest
MAX_ROOTS = 16  # shadow roots kept per vCPU (KVM keeps a few cached roots per vCPU too)


class ShadowState:
    """The VM-wide side of write protection, shared by every vCPU's :class:`ShadowMmu` (a
    guest table written on one vCPU may be shadowed by another)."""

    def __init__(self) -> None:
        self.tables: dict[int, set] = {}  # guest table page -> shadow leaves derived from it
        self.rmap: dict[int, set] = {}  # guest page -> shadow leaves that map it
        self.shadows: list[ShadowMmu] = []
        self.unsync: set[int] = set()  # guest tables left writable (written through themselves)
        self.pt_writes = 0  # guest writes to a protected page table (the VMM's #PF exits for them)


def state_of(vm) -> ShadowState:
    state = getattr(vm, "_shadow_state", None)
    if state is None:
        state = vm._shadow_state = ShadowState()
    return state


class ShadowMmu:
    """One vCPU's shadow page tables, in ``pages`` pages of host memory at ``pool``."""

    def __init__(self, vcpu, pool: int, pages: int) -> None:
        self.vcpu = vcpu
        self.host = vcpu.vm.host
        self.state = state_of(vcpu.vm)
        self.state.shadows.append(self)
        self.pool, self.pages = pool, pages
        self.faults = self.fills = self.flushes = self.root_switches = self.roots_reused = 0
        self.leaves: dict[int, tuple[int, int, tuple[int, ...]]] = {}  # leaf address -> (gva, page, tables)
        self.roots: dict[tuple, int] = {}
        self.key: tuple | None = None
        self.reset()
        self.flushes = 0  # counts the pool emptied since, not the first fill of it

    # -- the tables ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop every shadow translation and every root: a fresh, empty pool."""
        self.flushes += 1
        for at in list(self.leaves):
            self._forget(at)
        self._next = 0
        self.roots.clear()
        self.key = None
        self.root = self._alloc()
        self._fresh = True
        self.vcpu.mmu.tlb.invalidate()  # the processor may hold entries of the dropped tables

    def _alloc(self) -> int | None:
        if self._next >= self.pages:
            return None
        page = self.pool + self._next * 0x1000
        self._next += 1
        self.host.write(page, bytes(0x1000))
        return page

    def _root_for(self, key: tuple) -> None:
        """Make the shadow root for the guest address space ``key`` current (a new one, or the
        one kept from when the guest last used that CR3)."""
        self.root_switches += 1
        root = self.roots.get(key)
        if root is not None:
            self.roots_reused += 1
        elif self._fresh:  # the empty root reset() made
            root, self._fresh = self.root, False
        else:
            root = self._alloc() if len(self.roots) < MAX_ROOTS else None
            if root is None:  # too many roots, or no memory left: start again
                self.reset()
                root, self._fresh = self.root, False
        self.roots[key] = root
        self.root, self.key = root, key

    def _leaf_address(self, gva: int, create: bool) -> int | None:
        """Where the shadow PTE for ``gva`` is (building the tables to it when ``create``). Out of
        shadow memory, everything is dropped and the walk starts again, as a vTLB may."""
        while True:
            table = self.root
            for level in _LEVELS[bool(self.key and len(self.key) > 2 and self.key[2] & paging.CR4_LA57)]:
                at = table + ((gva >> (12 + 9 * (level - 1))) & 0x1FF) * 8
                entry = _U64.unpack_from(self.host.view, at)[0]
                if not entry & paging.P:
                    if not create:
                        return None
                    new = self._alloc()
                    if new is None:
                        break
                    entry = new | _TABLE
                    _U64.pack_into(self.host.view, at, entry)
                table = entry & _ADDR
            else:
                return table + ((gva >> 12) & 0x1FF) * 8
            key = self.key
            self.reset()
            self._root_for(key)  # the fresh root

    # -- the shadow entries and their reverse maps ------------------------------------------------
    def _forget(self, at: int) -> None:
        """Unlink the shadow leaf at ``at`` from the reverse maps (its PTE is left alone)."""
        gva, page, tables = self.leaves.pop(at)
        ref = (self, at)
        users = self.state.rmap.get(page)
        if users is not None:
            users.discard(ref)
            if not users:
                del self.state.rmap[page]
        for table in tables:
            derived = self.state.tables.get(table)
            if derived is not None:
                derived.discard(ref)
                if not derived:  # nothing shadowed depends on it now: no longer protected
                    del self.state.tables[table]
                    self.state.unsync.discard(table)

    def _zap(self, at: int) -> None:
        """Remove the shadow leaf at ``at``: its PTE, its reverse-map links, the TLB's copy."""
        gva = self.leaves[at][0]
        self._forget(at)
        _U64.pack_into(self.host.view, at, 0)
        self.vcpu.mmu.tlb.invalidate(address=gva)

    def _current_key(self, cr0: int, cr3: int, cr4: int, efer: int) -> tuple:
        if not cr0 & paging.CR0_PG:
            return (0,)
        base = cr3 & ~0x1F if cr4 & paging.CR4_PAE and not efer & paging.EFER_LMA else cr3 & _ADDR
        return (base, cr0 & paging.CR0_WP, cr4 & _CR4_MODE, efer & (paging.EFER_LMA | paging.EFER_NXE))

    # -- what the processor sees ----------------------------------------------------------------------
    def walk(self, gva: int, access: Access, cpl: int, ctx: tuple, ac: bool = True):
        """The processor's walk of the shadow tables (host-physical), for the MMU's fill.
        ``ctx`` is the guest's (CR0, CR3, CR4, EFER, PCID): it picks the shadow root."""
        key = self._current_key(*ctx[:4])
        if key != self.key:
            self._root_for(key)
        view, size = self.host.view, self.host.size

        def read(hpa: int) -> int:
            return _U64.unpack_from(view, hpa)[0] if hpa + 8 <= size else 0

        hw_cr4 = HW_CR4 | (key[2] & (paging.CR4_SMEP | paging.CR4_SMAP | paging.CR4_LA57) if len(key) > 2 else 0)
        return paging.walk(gva, access, HW_CR0, self.root, hw_cr4, HW_EFER, cpl,
                           lambda a: read(a) & 0xFFFF_FFFF, read, record=False, ac=ac)

    # -- the VMM's exit handling ---------------------------------------------------------------------
    def page_fault(self, gva: int, error_code: int) -> None:
        """A #PF exit: sync one shadow entry from the guest's tables, or reflect the fault."""
        vcpu = self.vcpu
        self.faults += 1
        access = (Access.WRITE if error_code & paging.PFEC_W else Access.READ) | \
            (Access.EXECUTE if error_code & paging.PFEC_I else 0)
        memory = vcpu.vm.memory
        cr0, cr3, cr4, efer = vcpu.cr0(), vcpu.regs.read(X.UC_X86_REG_CR3), vcpu.regs.read(X.UC_X86_REG_CR4), vcpu.efer()
        key = self._current_key(cr0, cr3, cr4, efer)
        if key != self.key:
            self._root_for(key)
        cpl = vcpu.cpl()
        try:
            w = paging.walk(gva, access, cr0, cr3, cr4, efer, cpl, memory.read_u32, memory.read_u64,
                            self._guest_update, record="entries",
                            ac=bool(vcpu.regs.read(X.UC_X86_REG_RFLAGS) & 1 << 18))
        except GuestMemoryError as exc:  # the guest's tables are where no memory slot is
            vcpu.vm.crash(f"guest page-table access: {exc}, which no RAM or device backs (shadow paging)")
            return
        if w.fault:  # the guest's own #PF: CR2 and its error code, through its IDT
            vcpu.regs.write(X.UC_X86_REG_CR2, gva)
            vcpu.deliver_event(14, w.error_code, vcpu.rip())
            return
        self._install(gva, w, bool(access & Access.WRITE), cr0, cr3, cr4, efer, cpl)

    def _install(self, gva: int, w, write: bool, cr0: int, cr3: int, cr4: int, efer: int, cpl: int,
                 prefetch: bool = False) -> None:
        """A shadow entry for ``gva`` from the guest's walk ``w`` (its steps recorded), with the
        reverse maps and write protection that keep it coherent (``prefetch``: RAM only, and
        nothing said about an address the guest has not accessed yet)."""
        vcpu, state, memory = self.vcpu, self.state, self.vcpu.vm.memory
        gpa = w.address
        if prefetch and not memory.is_ram(gpa):
            return
        page = gpa >> 12
        tables = tuple({step.address >> 12 for step in w.steps})
        if write and page in state.tables:  # the guest writes one of its page tables
            self.unprotect(page)
        if memory.is_ram(gpa):
            frame = memory.translate(gpa & ~0xFFF)
        elif vcpu.vm.bus.mmio(gpa) is not None or vcpu.vm.mmio_fallback:
            frame = SHADOW_MMIO | (gpa & ~0xFFF)
        else:
            vcpu.vm.crash(f"access to guest-physical {gpa:#x}, which no RAM or device backs (shadow paging)")
            return
        log = vcpu.vm.dirty_log
        spte = frame | paging.P | paging.A
        user = w.user
        if w.writable and (w.dirty or write) and (write or not log.enabled):
            if write and page in tables:  # written through itself: cannot stay protected
                state.unsync.add(page)
            if page not in state.tables or page in state.unsync:
                spte |= paging.RW | paging.D
                if not cr0 & paging.CR0_WP and cpl < 3 and not self._guest_writable(gva, cr0, cr3, cr4, efer):
                    user = False  # writable only because CR0.WP = 0: a user access must fault
                if log.enabled:
                    log.pages.add(page)
        if user:
            spte |= paging.US
        if efer & paging.EFER_NXE and any(step.value & paging.XD for step in w.steps):
            spte |= paging.XD
        at = self._leaf_address(gva, True)
        if at in self.leaves:
            self._forget(at)
        _U64.pack_into(self.host.view, at, spte)
        ref = (self, at)
        self.leaves[at] = (gva & ~0xFFF, page, tables)
        state.rmap.setdefault(page, set()).add(ref)
        for table in tables:
            derived = state.tables.get(table)
            if derived is None:
                derived = state.tables[table] = set()
                if table not in state.unsync:
                    self._protect(table)
            derived.add(ref)
        self.fills += 1
        vcpu.mmu.tlb.invalidate(address=gva)  # the processor may hold the old shadow entry

    def _guest_writable(self, gva: int, cr0: int, cr3: int, cr4: int, efer: int) -> bool:
        memory = self.vcpu.vm.memory
        return not paging.walk(gva, Access.WRITE, cr0 | paging.CR0_WP, cr3, cr4, efer, 0,
                               memory.read_u32, memory.read_u64, record=False).fault

    def _guest_update(self, gpa: int, size: int, value: int) -> None:
        """The accessed/dirty update the VMM makes for the processor (logged as a write)."""
        vm = self.vcpu.vm
        (vm.memory.write_u32 if size == 4 else vm.memory.write_u64)(gpa, value)
        if vm.dirty_log.enabled:
            vm.dirty_log.pages.add(gpa >> 12)

    def _protect(self, page: int) -> None:
        """``page`` is now a guest page table: no shadow entry in any vCPU may let the guest
        write it without a #PF exit."""
        for shadow, at in list(self.state.rmap.get(page, ())):
            spte = _U64.unpack_from(shadow.host.view, at)[0]
            if spte & paging.RW:
                _U64.pack_into(shadow.host.view, at, spte & ~(paging.RW | paging.D))
                shadow.vcpu.mmu.tlb.invalidate(address=shadow.leaves[at][0])

    def unprotect(self, page: int) -> None:
        """The guest writes its page table ``page``: drop every shadow entry derived from it,
        in every vCPU's shadow, and let the write through."""
        state = self.state
        state.pt_writes += 1
        for shadow, at in list(state.tables.pop(page, ())):
            if at in shadow.leaves:
                shadow._zap(at)
        state.unsync.discard(page)

    def write_protect_all(self) -> None:
        """Dirty logging starts or collects: take write permission from every shadow entry."""
        view = self.host.view
        for at in self.leaves:
            spte = _U64.unpack_from(view, at)[0]
            if spte & paging.RW:
                _U64.pack_into(view, at, spte & ~(paging.RW | paging.D))
        self.vcpu.mmu.tlb.invalidate()

    def cr3_load(self) -> None:
        """MOV to CR3: the guest may now rely on the entries it wrote in unsync tables."""
        state = self.state
        for page in list(state.unsync):
            for shadow, at in list(state.tables.pop(page, ())):
                if at in shadow.leaves:
                    shadow._zap(at)
        state.unsync.clear()

    def invlpg(self, gva: int) -> None:
        """INVLPG: drop the shadow entry for ``gva``, then sync it again from the guest's
        current PTE when that needs no flag set (KVM's sync of the spte on INVLPG): the access
        that usually follows an INVLPG then costs no #PF exit."""
        at = self._leaf_address(gva, False)
        if at is not None:
            if at in self.leaves:
                self._zap(at)
            else:
                _U64.pack_into(self.host.view, at, 0)
        self._prefetch(gva)

    def _prefetch(self, gva: int) -> None:
        """Install the shadow entry for ``gva`` from the guest's tables as they are, when the
        walk succeeds and every entry it uses has its accessed flag set already (4- and 5-level
        paging; anything else waits for the #PF exit, which sets flags and reflects faults)."""
        vcpu = self.vcpu
        cr0, cr3, cr4, efer = vcpu.cr0(), vcpu.regs.read(X.UC_X86_REG_CR3), vcpu.regs.read(X.UC_X86_REG_CR4), vcpu.efer()
        if not efer & paging.EFER_LMA or not cr0 & paging.CR0_PG or self._current_key(cr0, cr3, cr4, efer) != self.key:
            return
        memory = vcpu.vm.memory
        try:
            w = paging.walk(gva, Access.READ, cr0, cr3, cr4, efer, 0, memory.read_u32, memory.read_u64,
                            None, record="entries", ac=True)
        except GuestMemoryError:
            return
        if w.fault or any(not step.value & paging.A for step in w.steps):
            return
        self._install(gva, w, False, cr0, cr3, cr4, efer, 0, prefetch=True)

    def stats(self) -> dict[str, int]:
        """This vCPU's counters (the page-table writes caught are VM-wide: ``state.pt_writes``)."""
        return {"shadow #PF exits": self.faults, "shadow entries filled": self.fills, "roots kept": len(self.roots),
                "root switches": self.root_switches, "roots reused": self.roots_reused,
                "shadow flushes": self.flushes}
