"""MMIO: stage-2 Data Aborts on IPAs no RAM backs, completed inside the engine.

On hardware a guest access to an IPA that stage 2 leaves unmapped traps to EL2 with
ESR_EL2.EC = 0x24 (Data Abort from a lower EL), FAR_EL2 = the VA, HPFAR_EL2 = the IPA page,
and an instruction syndrome (ISV, SAS, SSE, SRT, SF, AR, WnR) that lets the hypervisor emulate
the access without decoding (Arm ARM D24.2 ESR_EL2, "ISS encoding for an exception from a
Data Abort"; KVM's io_mem_abort()). hvsim does the same: every MMIO claim on the bus is mapped
with Unicorn's ``mmio_map`` at its IPA, and the TLB fill (:mod:`.mmu`) answers a stage-2
translation fault there with that page; each access becomes an ``ExitKind.MMIO`` exit
dispatched through ``vm.dispatch``. Any other IPA that is not RAM is mapped so on first touch:
an access there is "unassigned" (all-ones on read, writes dropped, as QEMU does) unless an
``hvsim_mmio`` plugin answers. A strict VM (``strict_mmio``) without such a plugin leaves it
unmapped: the access is a STAGE2_FAULT exit whose default handler ends the run as a guest
crash, as KVM hands it to a VMM with no device there.

Which instruction made the access: hvsim's Unicorn (tools/unicorn-2.1.4-hvsim.patch) restores
the CPU state to the instruction making an access before it calls an MMIO callback, so the
callback reads the exact PC and decodes that instruction (once per PC and instruction word).
Nothing is undone or run again, and no hook runs anywhere else. An instruction that makes an
access its decoding did not foresee (an atomic's read and write, say) is taken as undecoded
from then on: each access its own exit with ISV = 0.

Unicorn cuts accesses wider than 4 bytes, and unaligned ones, into pieces; a single-register
access (ISV = 1) is put back together into one exit, as the hardware traps once. Accesses with
ISV = 0 (pairs, SIMD&FP, writeback forms) are completed piecewise, one exit per piece: KVM
would refuse them. (An unaligned access to Device memory would take an alignment fault on
hardware; hvsim, like Unicorn, lets it through.)
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

from unicorn import UC_MEM_FETCH_UNMAPPED

from hvsim.core.engine import _lib
from hvsim.core.exits import Exit, ExitKind

from .decode import ADDR_UNKNOWN, LoadStore, decode
from .exits import ESR_ELx_EC_DABT_LOW, ESR_ELx_WNR, El2Record, esr, fsc_translation, hpfar

PAGE = 0x1000
_OFFSET = PAGE - 1
_DABT_LOW = esr(ESR_ELx_EC_DABT_LOW)
_REASON = "ESR_ELx_EC_DABT_LOW"
_MMIO = ExitKind.MMIO
_GIB, _2MIB = 1 << 30, 1 << 21

_decode = lru_cache(maxsize=65536)(decode)


class Site:
    """A load or store instruction known to reach MMIO, and the syndrome it last produced."""

    __slots__ = ("insn", "pc", "is_load", "size", "total", "single", "ipa", "va", "rec")

    def __init__(self, insn: LoadStore, pc: int) -> None:
        self.insn, self.pc, self.size, self.total = insn, pc, insn.size, insn.total
        self.is_load = insn.is_load
        # True: a one-register load, False: a one-register store, None: anything else.
        self.single = insn.is_load if insn.regs == 1 and insn.is_load is not None else None
        self.ipa = self.va = -1  # the first access's IPA and VA last time, and its record
        self.rec: El2Record | None = None


class MmioTrap:
    """The MMIO side of one vCPU's engine."""

    def __init__(self, vcpu) -> None:
        self.vcpu = vcpu
        self.vm = vcpu.vm
        self.uc = vcpu.uc
        self.hooks = vcpu.hooks
        self._dispatch = vcpu.vm.dispatch
        self._pc = -1  # the instruction whose accesses are arriving (-1: none in progress)
        self._site: Site | None = None  # ... and what it is
        self._left = 0  # bytes it still has to move
        self._va = 0  # its first access's VA (FAR_EL2)
        self._rec: El2Record | None = None  # its first access's record
        self._first = 0  # its first access's IPA
        self._acc = 0  # a single-register access put together from Unicorn's pieces
        self._sites: dict[int, Site] = {}
        _lib.uc_hvsim_io_pc.restype = ctypes.c_void_p
        self._io_pc = ctypes.c_uint64.from_address(_lib.uc_hvsim_io_pc(vcpu.hooks._uch))
        self._lazy: set[int] = set()  # unbacked pages mapped on first touch
        self._claims_seen = 0
        self.sync_claims()

    # -- mapping -----------------------------------------------------------------------------
    def fault_level(self, ipa: int) -> int:
        """The lookup level at which stage 2 finds no entry for ``ipa``.

        hvsim models the stage-2 tables KVM builds for a 40-bit IPA space (4 KiB granule,
        VTCR_EL2.SL0 = 1: the walk starts at level 1) holding entries only where RAM is.
        """
        slots = self.vm.memory.slots
        for level, span in ((1, _GIB), (2, _2MIB)):
            lo = ipa & ~(span - 1)
            if not any(s.gpa < lo + span and lo < s.end for s in slots):
                return level
        return 3

    def map_region(self, base: int, size: int) -> None:
        """``mmio_map`` [base, base + size). Each callback first tries the common case inline:
        the one access of a one-register load or store, of the size its instruction makes, at
        the IPA that instruction touched last time, so its record can be reused; otherwise it
        goes through :meth:`_access`."""
        dfsc = fsc_translation(self.fault_level(base))
        trap, vcpu, dispatch, access, fail = self, self.vcpu, self._dispatch, self._access, self.hooks.fail
        take, sites = vcpu.take_trap, self._sites
        # The accessing instruction's PC, where hvsim's engine put it before this callback
        # (uc_hvsim_io_pc): a memory load instead of a register read (~0.24 us of a ~2.6 us exit).
        io_pc = self._io_pc

        def read(_uc, offset, size_, _ud):
            try:
                pc, ipa = io_pc.value, base + offset
                site = sites.get(pc)
                if (site is not None and site.single is True and ipa == site.ipa and size_ == site.size
                        and trap._pc < 0):
                    exit = Exit(_MMIO, _REASON, site.rec, ipa, size_, False, None)
                    take(site.rec, pc)
                    dispatch(vcpu, exit)
                    return exit.value or 0
                return access(pc, ipa, size_, False, 0, dfsc)
            except BaseException as exc:  # noqa: BLE001 (re-raised by the vCPU's run)
                fail(exc)
                return 0

        def write(_uc, offset, size_, value, _ud):
            try:
                pc, ipa = io_pc.value, base + offset
                site = sites.get(pc)
                if (site is not None and site.single is False and ipa == site.ipa and size_ == site.size
                        and trap._pc < 0):
                    take(site.rec, pc)
                    dispatch(vcpu, Exit(_MMIO, _REASON, site.rec, ipa, size_, True, value))
                    return
                access(pc, ipa, size_, True, value, dfsc)
            except BaseException as exc:  # noqa: BLE001
                fail(exc)

        self.hooks.mmio_map(base, size, read, write)

    def sync_claims(self) -> None:
        """Map claims added since the last call (plugins may add devices after vCPUs exist)."""
        claims = self.vm.bus.mmio_claims
        for claim in claims[self._claims_seen:]:
            for page in [p for p in self._lazy if claim.base <= p < claim.end]:
                self.uc.mem_unmap(page, PAGE)
                self._lazy.discard(page)
            self.map_region(claim.base, claim.size)
        self._claims_seen = len(claims)

    def map_lazy(self, page: int) -> None:
        """Make one unbacked page MMIO (an hvsim_mmio plugin answers for any address)."""
        if page not in self._lazy:
            self.map_region(page, PAGE)
            self._lazy.add(page)

    def on_unmapped(self, _uc, access, address, size, value, _ud) -> bool:
        """UC_HOOK_MEM_UNMAPPED: a data access to an unbacked IPA becomes MMIO (retry it)."""
        if access == UC_MEM_FETCH_UNMAPPED:
            return False  # handled after emu_start returns: an instruction abort
        try:
            page = address & ~_OFFSET
            self.map_region(page, PAGE)
            self._lazy.add(page)
            return True
        except BaseException as exc:  # noqa: BLE001
            self.hooks.fail(exc)
            return False

    # -- the hot path ------------------------------------------------------------------------
    def forget(self) -> None:
        """No instruction is in progress (an exception was taken, or the engine stopped)."""
        self._pc, self._site, self._left = -1, None, 0

    def _access(self, pc: int, ipa: int, size: int, is_write: bool, value: int, dfsc: int) -> int:
        if pc != self._pc:  # an instruction's first access
            site = self._sites.get(pc)
            word = self.vcpu.read_insn(pc)
            if site is None or site.insn.word != word:
                site = self._sites[pc] = Site(_decode(word) or _widen(word), pc)
            if site.is_load is is_write or not self._check(site, ipa, is_write, dfsc):
                site = self._sites[pc] = Site(_widen(word), pc)  # not what its decoding said
            self._pc, self._site, self._left = pc, site, site.total
            self._va, self._rec, self._first, self._acc = site.va, site.rec, ipa, 0
            first = True
        else:
            site = self._site
            first = False
        insn = site.insn
        if site.is_load is None:  # undecoded: each access its own exit, FAR_EL2 = the IPA
            self.forget()
            rec = El2Record(_DABT_LOW | (ESR_ELx_WNR if is_write else 0) | dfsc, ipa, hpfar(ipa))
            return self._exit(pc, rec, ipa, size, is_write, value if is_write else None)
        left = self._left - size
        self._left = left
        if left <= 0:
            self.forget()
        if insn.merge and size != insn.size:  # one register in pieces: one exit for it
            shift = 8 * (ipa - self._first)
            if is_write:
                self._acc |= value << shift
                if left > 0:
                    return 0
                return self._exit(pc, self._rec, self._first, insn.size, True, self._acc)
            if first:
                self._acc = self._exit(pc, self._rec, self._first, insn.size, False, None)
            acc = self._acc
            return (acc >> shift) & ((1 << (8 * size)) - 1)
        rec = self._rec if first else None
        if rec is None:  # a later piece of a multi-register access
            rec = El2Record(_DABT_LOW | insn.iss | (ESR_ELx_WNR if is_write else 0) | dfsc,
                            (self._va & ~_OFFSET) | (ipa & _OFFSET), hpfar(ipa))
        return self._exit(pc, rec, ipa, size, is_write, value if is_write else None)

    def _exit(self, pc: int, rec, ipa: int, size: int, is_write: bool, value) -> int:
        exit = Exit(_MMIO, _REASON, rec, ipa, size, is_write, value)
        self.vcpu.take_trap(rec, pc)
        self._dispatch(self.vcpu, exit)
        return exit.value or 0

    def _check(self, site: Site, ipa: int, is_write: bool, dfsc: int) -> bool:
        """Does the decoded address recipe give this access? Rebuild its VA (FAR_EL2) from the
        registers (the instruction has not written any yet) and translate it; keep the record
        for the fast path when it does."""
        insn = site.insn
        if insn.is_load is None:
            return True
        va = insn.address(self.vcpu.xreg, site.pc)
        if va != site.va or ipa != site.ipa:
            pa = self.vcpu.engine_address(va, is_write)  # MMIO pages sit at their IPA
            if pa is None or not 0 <= ipa - pa < insn.total:
                return False
            site.va, site.ipa = va, ipa
            site.rec = El2Record(_DABT_LOW | insn.iss | (ESR_ELx_WNR if is_write else 0) | dfsc,
                                 va, hpfar(ipa))
        return True


def _widen(word: int) -> LoadStore:
    """``word`` as an instruction hvsim does not decode: any number of accesses in either
    direction, each its own exit with ISV = 0 and FAR_EL2 = the IPA."""
    wide = LoadStore(word, True, 1, addr=ADDR_UNKNOWN)
    wide.is_load = None  # matches neither direction test: reads and writes both belong to it
    return wide
