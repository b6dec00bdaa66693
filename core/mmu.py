"""The simulated MMU inside the engine: Unicorn's virtual TLB, filled by a two-stage walk.

Every vCPU engine runs in ``UC_TLB_VIRTUAL`` mode: Unicorn's own guest MMU is bypassed and,
on each miss in its TLB, it asks the architecture plugin's ``fill(vaddr, access)`` for the
Unicorn-physical page and permissions. The plugin walks the guest's stage-1 tables, each
table read translated by stage 2 (EPT, NPT, Arm stage 2), then stage 2 for the final address:
Python runs only on TLB misses (docs/unicorn-notes.md, "Virtual TLB mode").

Measured on Unicorn 2.1.4 (docs/unicorn-notes.md, "Virtual TLB"):

- host memory is mapped once into every engine at :data:`HOST_PHYS_BASE`; a fill answers
  ``HOST_PHYS_BASE + hpa``; MMIO ranges stay mapped at their guest-physical address;
- a fill that returns False ends ``emu_start`` with ``UC_ERR_EXCEPTION`` and the PC at the
  faulting instruction, before it changed anything: the fault is then taken in Python (a #PF
  or data abort to the guest, an EPT violation / NPF / stage-2 abort to the hypervisor);
- a write to a page filled without write permission calls the fill again (dirty bits);
- QEMU's TLB starts at 256 entries and grows only when it is flushed while well used: a
  working set larger than that misses on nearly every access until a flush lets it double.
  :class:`EngineTlb` flushes after a slice whose fills were mostly re-fills of translations the
  model still held (thrashing), which is architecturally invisible (a TLB may drop entries).

:class:`TaggedTlb` is the architectural TLB: entries tagged by VPID / ASID / VMID plus the
stage-1 PCID / ASID, kept until the guest or the hypervisor invalidates them as the manuals
require. A guest that changes its page tables without the required flush keeps seeing the old
translation, deterministically, because fills consult this model before walking.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field

from unicorn import UC_HOOK_TLB_FILL, UC_TLB_VIRTUAL
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH
from unicorn.unicorn_py3.unicorn import uc_tlb_entry

from .engine import _emu_stop, _lib

try:  # hvsim's Unicorn patch level 6: one page out of the engine's TLB
    _flush_page = _lib.uc_hvsim_tlb_flush_page
    _flush_page.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    _flush_page.restype = ctypes.c_int
except AttributeError:  # an older build: full flushes only (require_exact_stops says so)
    _flush_page = None

try:  # hvsim's Unicorn patch level 7 (x86) and 8 (arm64): the guest's stage-1 walk in C (CWalk)
    _set_walk = _lib.uc_hvsim_set_walk
    _set_walk.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    _walk_forget = _lib.uc_hvsim_walk_forget
    _walk_forget.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    _walk_forget.restype = None
    _walk_clear = _lib.uc_hvsim_walk_clear
    _walk_clear.argtypes = [ctypes.c_void_p, ctypes.c_int]
    _walk_clear.restype = None
    _walk_note = _lib.uc_hvsim_walk_note
    _walk_note.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
    _walk_note.restype = None
except AttributeError:
    _set_walk = None

HOST_PHYS_BASE = 1 << 44  # host memory's place in every engine's physical space
PERM_R, PERM_W, PERM_X = 1, 2, 4  # Unicorn's TLB entry permissions
# Unicorn's access codes in the fill callback (UC_MEM_READ, UC_MEM_WRITE, UC_MEM_FETCH)
ACCESS_READ, ACCESS_WRITE, ACCESS_FETCH = 16, 17, 18

_FILL_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                            ctypes.POINTER(uc_tlb_entry), ctypes.c_void_p)
_ENGINE_TLB_MAX = 1 << 20  # QEMU's CPU_TLB_DYN_MAX_BITS for 4 KiB pages
_MAX_ENTRIES = 1 << 20  # the model drops everything past this, as a TLB may
# An invalidation dropping up to this many 4 KiB pages flushes them one by one in the engine
# (a 2 MiB page is 512); beyond, one full flush is cheaper.
_PAGE_FLUSH_MAX = 64


WALK_SLOTS = 16  # HVSIM_SLOTS in the patch
_RING = 1 << 15  # C fills recorded before the engine hands misses to Python (which drains them)
_REC = struct.Struct("<QQQQII")  # struct hvsim_fill_rec


class _WalkDesc(ctypes.Structure):
    """struct hvsim_walk_desc of the Unicorn patch (section 8)."""

    _fields_ = [("enabled", ctypes.c_uint32), ("nslots", ctypes.c_uint32),
                ("slot_gpa", ctypes.c_uint64 * WALK_SLOTS), ("slot_end", ctypes.c_uint64 * WALK_SLOTS),
                ("slot_hpa", ctypes.c_uint64 * WALK_SLOTS), ("slot_ro", ctypes.c_uint64 * WALK_SLOTS),
                ("host", ctypes.c_uint64), ("host_size", ctypes.c_uint64), ("phys_base", ctypes.c_uint64),
                ("addr_mask", ctypes.c_uint64), ("rsvd", ctypes.c_uint64),
                ("ring", ctypes.c_uint64), ("ring_cap", ctypes.c_uint32), ("ring_len", ctypes.c_uint32),
                ("fills", ctypes.c_uint64), ("note_vpn", ctypes.c_uint64), ("note", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


class CWalk:
    """The engine's own stage-1 walk (hvsim's Unicorn patch, section 8): on a TLB miss the engine
    walks the guest's tables in C when stage 2 is a plain slot map (guest-physical ranges backed
    by host memory with every permission), and the walk needs nothing written (accessed and
    dirty flags already set) and allows the access. It records each fill in a ring, which
    :meth:`records` hands to the architecture's model (TaggedTlb) before the model is consulted,
    and keeps a set of the pages the model holds: a miss on one of those goes to Python, which
    serves the model's (maybe stale) entry as before. Anything else goes to Python too.

    ``available``: False on a Unicorn without the patch's section 8 (every miss goes to Python).
    """

    available = _set_walk is not None

    def __init__(self, uch, host) -> None:
        self.uch = uch
        self.desc = d = _WalkDesc()
        self._ring = (ctypes.c_char * (_RING * _REC.size))()
        self._view = memoryview(self._ring)
        d.host, d.host_size, d.phys_base = host.ptr, host.size, HOST_PHYS_BASE
        d.ring, d.ring_cap = ctypes.addressof(self._ring), _RING
        _set_walk(uch, ctypes.byref(d))

    def set_slots(self, slots: list[tuple[int, int, int, bool]] | None) -> None:
        """Stage 2 as (gpa, size, hpa, read-only) ranges (at most WALK_SLOTS are used; read-only:
        the final page of a read or fetch only, stage 2's dirty flag being clear there); None
        turns the C walk off (every miss goes to Python)."""
        d = self.desc
        if not slots:
            d.enabled = 0
            return
        slots = slots[:WALK_SLOTS]
        for i, (gpa, size, hpa, ro) in enumerate(slots):
            d.slot_gpa[i], d.slot_end[i], d.slot_hpa[i], d.slot_ro[i] = gpa, gpa + size, hpa, 1 if ro else 0
        d.nslots = len(slots)
        d.enabled = 1

    def records(self, keep=None):
        """The C fills recorded since the last call, as (vpn, paddr, leaf, gpa page, perms, flags)
        tuples (flags: user key | global << 2 | dirty << 3 | user << 4 | writable << 5 |
        log2(page size) << 8, and on arm64 the ASID << 16); the ring is empty afterwards."""
        d = self.desc
        n = d.ring_len
        if not n:
            return ()
        recs = list(_REC.iter_unpack(self._view[:n * _REC.size]))
        d.ring_len = 0
        return recs

    def discard(self) -> int:
        """Drop the recorded fills (the invalidation being made covers them all)."""
        d = self.desc
        n, d.ring_len = d.ring_len, 0
        return n

    def note(self, vpn: int, global_: bool) -> None:
        """The model now holds a translation of ``vpn`` made in Python: the next miss of the
        engine on it goes to Python (through the fill callback, which reads ``desc.note``)."""
        d = self.desc
        if d.note:  # one left by a fill made outside the engine (no callback consumed it)
            _walk_note(self.uch, d.note_vpn, d.note == 2)
        d.note_vpn, d.note = vpn, 2 if global_ else 1

    def flush_note(self) -> None:
        """After a fill made outside the engine: the noted page goes in the set now (before the
        engine runs and might walk it in C)."""
        d = self.desc
        if d.note:
            _walk_note(self.uch, d.note_vpn, d.note == 2)
            d.note = 0

    def forget(self, vpn: int) -> None:
        _walk_forget(self.uch, vpn)

    def clear(self, keep_global: bool = False) -> None:
        _walk_clear(self.uch, 1 if keep_global else 0)

    def note_now(self, vpn: int, global_: bool) -> None:
        _walk_note(self.uch, vpn, 1 if global_ else 0)


class Stage2Fault(Exception):
    """Stage 2 (EPT, NPT, Arm stage 2) refused a guest-physical access; the architecture turns
    it into its exit (EPT violation or misconfiguration, #VMEXIT(NPF), stage-2 abort).

    ``write`` / ``fetch`` say what was tried; ``allowed`` is what the translation permits
    (PERM_R | PERM_W | PERM_X, ANDed over its levels; 0 when an entry was not present);
    ``walk`` is True when the access was to a guest paging-structure entry during the stage-1
    walk (or an update of its accessed/dirty bits); ``level`` is the stage-2 level that faulted;
    ``misconfig`` marks an entry the hardware cannot use (EPT misconfiguration); ``syndrome`` is
    an architecture-specific fault code (NPT: the #PF-style error code); ``pml_full`` marks
    Intel's page-modification-log-full event (SDM 29.3.6), which is not a translation fault.
    """

    def __init__(self, gpa: int, detail: str, *, write: bool = False, fetch: bool = False,
                 allowed: int = 0, walk: bool = False, level: int = 0, misconfig: bool = False,
                 syndrome: int = 0, pml_full: bool = False) -> None:
        super().__init__(detail)
        self.pml_full = pml_full
        self.gpa, self.detail, self.write, self.fetch = gpa, detail, write, fetch
        self.allowed, self.walk, self.level, self.misconfig, self.syndrome = allowed, walk, level, misconfig, syndrome
        self.gla: int | None = None  # set by the stage-1 side when a linear address caused it


@dataclass
class TraceStep:
    """One stage-1 table entry read: where it is (guest-physical), what it holds, and how its
    own address went through stage 2."""

    level: str  # the manual's name of the entry (PML4E, PTE, level-1 descriptor ...)
    gpa: int
    value: int
    flags: str
    stage2: list = field(default_factory=list)  # WalkStep of the stage-2 walk of ``gpa``
    hpa: int | None = None


@dataclass
class TranslationTrace:
    """A full GVA -> GPA -> HPA walk as ``hvsim translate`` prints it."""

    address: int
    stage1: list[TraceStep] = field(default_factory=list)
    gpa: int | None = None
    stage2: list = field(default_factory=list)  # WalkStep of the final address's stage-2 walk
    stage2_name: str = "stage 2"  # EPT, NPT, stage 2, or "none" (guest-physical is host-physical)
    stage2_levels: dict = field(default_factory=dict)  # level number -> the manual's entry name
    hpa: int | None = None
    fault: str | None = None

    def as_json(self) -> dict:
        def steps(ws):
            return [{"level": w.level, "address": w.address, "value": w.value, "flags": w.flags} for w in ws]

        return {"address": self.address, "gpa": self.gpa, "hpa": self.hpa, "fault": self.fault,
                "stage2_name": self.stage2_name,
                "stage1": [{"level": t.level, "gpa": t.gpa, "value": t.value, "flags": t.flags, "hpa": t.hpa,
                            "stage2": steps(t.stage2)} for t in self.stage1],
                "stage2": steps(self.stage2)}


class DirtyLog:
    """Which guest-physical pages a VM's guests wrote since the last :meth:`collect`, for live
    migration (KVM's KVM_GET_DIRTY_LOG over write-protected pages).

    While logging, the MMUs give a translation write permission only on a write access and
    record its guest-physical page then; :meth:`collect` returns the pages and write-protects
    everything again by dropping every vCPU's cached translations (a TLB flush), so the next
    write to any page is seen. Device DMA is not logged here.
    """

    def __init__(self, vm) -> None:
        self.vm = vm
        self.enabled = False
        self.pages: set[int] = set()  # guest-physical page numbers

    def start(self) -> None:
        self.enabled = True
        self.pages.clear()
        self._protect()

    def stop(self) -> None:
        self.enabled = False

    def collect(self) -> list[int]:
        """Guest-physical addresses of the pages written since the last call (or ``start``)."""
        pages, self.pages = sorted(self.pages), set()
        self._protect()
        return [p << 12 for p in pages]

    def _protect(self) -> None:
        for vcpu in self.vm.vcpus:
            mmu = getattr(vcpu, "mmu", None)
            if mmu is not None:
                mmu.tlb.invalidate()
                shadow = getattr(mmu, "shadow", None)  # a VMM's shadow page tables (x86)
                if shadow is not None:
                    shadow.write_protect_all()


@dataclass(slots=True)
class TlbEntry:
    """One cached translation: the page's Unicorn-physical base, what it allows, and the stage-1
    facts invalidation depends on (global, page size)."""

    paddr: int
    perms: int  # PERM_R | PERM_W | PERM_X as the combined translation allows them
    user: bool  # stage 1 allows user-mode access (x86 U/S, Arm AP[1])
    global_: bool  # survives a stage-1 address-space switch (x86 G, Arm nG clear)
    size: int  # page size of the stage-1 translation (invalidation covers the whole page)
    dirty: bool = True  # False: write permission withheld until the dirty bit is set
    leaf: tuple[int, int] | None = None  # where that dirty bit lives: (address, size) of the leaf entry
    gpa: int = 0  # the guest-physical page (dirty logging)


class _Space:
    """The entries of one (tag, asid): ``(vpn, user)`` -> :class:`TlbEntry`, with the keys of its
    global entries and of its large pages indexed, so that an address-space switch and an
    invalidation by address never scan the whole TLB."""

    __slots__ = ("map", "glob", "large", "users")

    def __init__(self) -> None:
        self.map: dict[tuple, TlbEntry] = {}
        self.glob: set[tuple] = set()  # keys of global entries
        self.large: dict[int, dict[int, set[tuple]]] = {}  # page size -> {page number at that size: keys}
        self.users: set = set()  # the "user" key values seen (x86: False, True, 2; Arm: EL0 or not)

    def add(self, key: tuple, entry: TlbEntry) -> None:
        old = self.map.get(key)
        if old is not None:
            self.unindex(key, old)
        self.map[key] = entry
        self.users.add(key[1])
        if entry.global_:
            self.glob.add(key)
        if entry.size > 0x1000:
            self.large.setdefault(entry.size, {}).setdefault(key[0] // (entry.size >> 12), set()).add(key)

    def unindex(self, key: tuple, entry: TlbEntry) -> None:
        if entry.global_:
            self.glob.discard(key)
        if entry.size > 0x1000:
            groups, number = self.large[entry.size], key[0] // (entry.size >> 12)
            keys = groups.get(number)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del groups[number]

    def page_keys(self, address: int) -> list[tuple]:
        """The keys of every entry whose page (of its own size) holds ``address``."""
        vpn = address >> 12
        keys = [(vpn, u) for u in self.users if (vpn, u) in self.map]
        for size, groups in self.large.items():
            group = groups.get(address // size)
            if group:
                keys.extend(group)
        return keys


class TaggedTlb:
    """A vCPU's TLB: ``(tag, asid, vpn, user)`` -> :class:`TlbEntry` per 4 KiB page.

    ``tag`` names the translation regime (VMX: VPID and EPTP; SVM: guest ASID; Arm: VMID);
    ``asid`` the stage-1 address space (PCID, ASID; 0 when the architecture has none enabled).
    Entries for large pages are stored per 4 KiB page with their page size, so invalidating one
    address drops the whole large page, as the architectures require.

    Entries live in one :class:`_Space` per (tag, asid): an invalidation by address costs the
    entries of that page in each space of the tag, one of an address space (MOV CR3, TLBI
    ASIDE1) the entries of that space, one of a regime (INVVPID single context, TLBI VMALLE1)
    the spaces of that tag; nothing scans the whole TLB. Engines drop their own copies through
    ``on_flush`` callbacks: ``flush(pages)`` with the virtual pages dropped, or None for all.
    """

    def __init__(self) -> None:
        self.spaces: dict[tuple, _Space] = {}
        self.count = 0  # entries inserted since the last full clear (an upper bound of the size)
        self.hits = self.misses = self.invalidations = 0
        self.on_flush: list = []  # called after any invalidation: engines drop their own copies
        # A C walk's hooks (plugins/x86/mmu.py): ``sync()`` moves the fills the engine made in C
        # into the model; ``pre(...)`` runs before an invalidation with its criteria and returns
        # how many recorded C fills it dropped without moving them (the invalidation covered
        # them); ``post(..., pages)`` runs after it.
        self.sync = self.pre = self.post = None

    def __len__(self) -> int:
        if self.sync is not None:
            self.sync()
        return sum(len(sp.map) for sp in self.spaces.values())

    def lookup(self, tag, asid: int, vpn: int, user: bool) -> TlbEntry | None:
        if self.sync is not None:
            self.sync()
        sp = self.spaces.get((tag, asid))
        e = sp.map.get((vpn, user)) if sp is not None else None
        if e is None:
            self.misses += 1
        else:
            self.hits += 1
        return e

    def insert(self, tag, asid: int, vpn: int, user: bool, entry: TlbEntry) -> None:
        self.count += 1
        if self.count > _MAX_ENTRIES:
            self.count = len(self)
            if self.count >= _MAX_ENTRIES:
                self.clear()  # a full TLB drops entries; the engines drop their copies too
        sp = self.spaces.get((tag, asid))
        if sp is None:
            sp = self.spaces[(tag, asid)] = _Space()
        sp.add((vpn, user), entry)

    def clear(self) -> int:
        """Drop everything (and the engines' copies)."""
        return self.invalidate()

    def invalidate(self, tag=..., asid=..., address: int | None = None, keep_global: bool = False,
                   match=None) -> int:
        """Drop the entries that match every given criterion (``...`` matches anything):
        ``tag`` (a value, or a predicate on the tag when ``match`` is given), ``asid``,
        ``address`` (the page containing it, whatever the page size; global entries of other
        address spaces too), ``keep_global``. Returns how many were dropped."""
        self.invalidations += 1
        pages: list[int] | None = None  # the virtual pages dropped, when only some were
        extra = self.pre(tag, asid, address, keep_global, match) if self.pre is not None else 0
        if tag is ... and asid is ... and address is None and not keep_global and match is None:
            n = len(self)
            self.spaces.clear()
            self.count = 0
        else:
            n = 0
            if address is not None:
                pages = []
            for skey in list(self.spaces):
                t, a = skey
                if match is not None and not match(t):
                    continue
                if tag is not ... and t != tag:
                    continue
                sp = self.spaces[skey]
                own = asid is ... or a == asid
                if address is None:
                    if not own:
                        continue
                    if keep_global and sp.glob:
                        # drop the non-global entries in place (an address space holds the
                        # kernel's many global pages and few of its own)
                        glob, smap = sp.glob, sp.map
                        for key in [k for k in smap if k not in glob]:
                            sp.unindex(key, smap.pop(key))
                            n += 1
                    else:
                        n += len(sp.map)
                        del self.spaces[skey]
                    continue
                for key in sp.page_keys(address):
                    e = sp.map.get(key)
                    if e is None or (keep_global and e.global_) or (not own and not e.global_):
                        continue
                    del sp.map[key]
                    sp.unindex(key, e)
                    pages.append(key[0])
                    n += 1
                if not sp.map:
                    del self.spaces[skey]
        n += extra
        if n:  # the engines hold at most what the model holds
            for flush in self.on_flush:
                flush(pages if not extra else None)
        if self.post is not None:
            self.post(tag, asid, address, keep_global, match, pages)
        return n


class EngineTlb:
    """Puts one Unicorn engine in virtual-TLB mode with ``fill(vaddr, access) -> (paddr, perms)
    | None`` as its miss handler (None: the access faults; the plugin kept the reason).

    The callback is a C-level one (core/engine.RawHooks); it must not raise, so an exception is
    handed to ``hooks.fail`` and re-raised by the vCPU after ``emu_start``.

    Growing the engine's TLB: QEMU doubles it when a flush finds it more than 70% used. The
    plugin's fill calls :meth:`refilled` when the model already held the translation (Unicorn
    had evicted it); after twice the engine's estimated size of those, the engine is stopped at
    the end of its block, and the vCPU calls :meth:`service` before re-entering, which flushes.
    """

    def __init__(self, uc, hooks, fill, tlb: TaggedTlb) -> None:
        self.uc = uc
        self.fills = 0
        self.flushes_to_grow = 0
        self.full_flushes = self.page_flushes = 0
        self.size = 256  # QEMU's initial TLB size (CPU_TLB_DYN_DEFAULT_BITS), doubled per growth flush
        self._refills = 0
        self.want_flush = False
        self.tlb = tlb
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        fail, uch = hooks.fail, hooks._uch

        def on_fill(_uch, vaddr, access, entry_p, _ud):
            self.fills += 1
            try:
                result = fill(vaddr, access)
            except BaseException as exc:
                fail(exc)
                return False
            if result is None:
                return False
            e = entry_p[0]
            e.paddr, e.perms = result
            return True

        self._uch = uch
        # the engine's own page (x86: 4 KiB; arm64: 1 KiB): a 4 KiB page is flushed in those
        self._engine_page = min(uc.ctl_get_page_size(), 0x1000)
        hooks.add(UC_HOOK_TLB_FILL, _FILL_CB, on_fill)
        tlb.on_flush.append(self.flush)

    def flush(self, pages: list[int] | None = None) -> None:
        """Drop the translations the engine cached (its copy of the model): of the virtual
        ``pages`` (page numbers) when given and few, else all of them."""
        if pages is not None and len(pages) <= _PAGE_FLUSH_MAX and _flush_page is not None:
            uch, step = self._uch, self._engine_page
            for vpn in pages:
                for address in range(vpn << 12, (vpn + 1) << 12, step):  # arm64: 1 KiB engine pages
                    _flush_page(uch, address)
            self.page_flushes += len(pages)
            return
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        self.full_flushes += 1
        self._refills = 0

    def refilled(self) -> None:
        """A fill the model answered: the engine's TLB had dropped that translation."""
        self._refills += 1
        if self._refills > 2 * self.size and not self.want_flush and self.size < _ENGINE_TLB_MAX:
            self.want_flush = True
            _emu_stop(self._uch)

    def service(self) -> bool:
        """After ``emu_start`` returned: True if it stopped only so the TLB could grow (flushed
        now; the vCPU re-enters)."""
        if not self.want_flush:
            return False
        self.want_flush = False
        self.flush()
        self.size *= 2
        self.flushes_to_grow += 1
        return True
