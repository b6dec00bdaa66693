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

Which instruction made the access: Unicorn does not update PC before an MMIO callback (PC is
wherever it was last synced, measured), so the syndrome cannot come from reading PC there. But
``emu_stop`` called inside an MMIO callback makes ``emu_start`` return with the CPU state rolled
back to that very instruction (measured: exact PC, the base register not yet written back).
So the first access an unknown instruction makes is not performed: hvsim saves X0-X30 and SP,
stops the engine, reads the exact PC, restores the registers (a load may already have written
Xt), puts an exact-address ``UC_HOOK_CODE`` on the instruction and runs it again. From then on
the hook names the instruction before each execution, at the cost of one small callback; no
hook runs anywhere else. An instruction that makes more accesses than its decoding said (an
atomic, say) is widened and run again once more: its earlier accesses then happen twice.

Unicorn cuts accesses wider than 4 bytes, and unaligned ones, into pieces; a single-register
access (ISV = 1) is put back together into one exit, as the hardware traps once. Accesses with
ISV = 0 (pairs, SIMD&FP, writeback forms) are completed piecewise, one exit per piece: KVM
would refuse them. (An unaligned access to Device memory would take an alignment fault on
hardware; hvsim, like Unicorn, lets it through.)
"""

from __future__ import annotations

from functools import lru_cache

from unicorn import UC_HOOK_CODE, UC_MEM_FETCH_UNMAPPED
from unicorn.arm64_const import UC_ARM64_REG_PC

from hvsim.core.engine import HOOK_CODE
from hvsim.core.exits import Exit, ExitKind

from .decode import ADDR_UNKNOWN, WB_NONE, WB_POST, LoadStore, decode
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

    __slots__ = ("insn", "pc", "is_load", "size", "total", "single", "handle", "ipa", "va", "rec")

    def __init__(self, insn: LoadStore, pc: int) -> None:
        self.insn, self.pc, self.size, self.total = insn, pc, insn.size, insn.total
        self.is_load = insn.is_load
        # True: a one-register load, False: a one-register store, None: anything else.
        self.single = insn.is_load if insn.regs == 1 and insn.is_load is not None else None
        self.handle = 0
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
        self._site: Site | None = None  # the instruction whose accesses are arriving
        self._left = 0  # bytes it still has to move
        self._va = 0  # its first access's VA (FAR_EL2)
        self._rec: El2Record | None = None  # its first access's record
        self._first = 0  # its first access's IPA
        self._acc = 0  # a single-register access put together from Unicorn's pieces
        self._unknown_size = 0
        self._sites: dict[int, Site] = {}
        self.pending: dict[int, LoadStore] = {}  # code hooks to add once the engine is out
        self.discovering = False
        self._snapshot: list[int] = []
        self.rollback: tuple[LoadStore, int, int, int] | None = None
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
        a one-access load or store, of the size its instruction makes, at the IPA that
        instruction touched last time, so its record can be reused; otherwise it goes through
        :meth:`_access`. (The shortcut trusts the code hook: were a hooked instruction to touch
        RAM and an unhooked one then make the same access, the record would name the first.
        The access itself is always right: Unicorn performs it.)"""
        dfsc = fsc_translation(self.fault_level(base))
        trap, vcpu, dispatch, access, fail = self, self.vcpu, self._dispatch, self._access, self.hooks.fail
        take = vcpu.take_trap

        def read(_uc, offset, size_, _ud):
            try:
                site, ipa = trap._site, base + offset
                if site is not None and site.single is True and ipa == site.ipa and size_ == site.size:
                    trap._site = None
                    exit = Exit(_MMIO, _REASON, site.rec, ipa, size_, False, None)
                    take(site.rec, site.pc)
                    dispatch(vcpu, exit)
                    if vcpu.stop_requested:
                        trap.rollback = (site.insn, site.pc, site.va, exit.value or 0)
                    return exit.value or 0
                return access(ipa, size_, False, 0, dfsc)
            except BaseException as exc:  # noqa: BLE001 (re-raised by the vCPU's run)
                fail(exc)
                return 0

        def write(_uc, offset, size_, value, _ud):
            try:
                site, ipa = trap._site, base + offset
                if site is not None and site.single is False and ipa == site.ipa and size_ == site.size:
                    trap._site = None
                    take(site.rec, site.pc)
                    dispatch(vcpu, Exit(_MMIO, _REASON, site.rec, ipa, size_, True, value))
                    if vcpu.stop_requested:
                        trap.rollback = (site.insn, site.pc, site.va, 0)
                    return
                access(ipa, size_, True, value, dfsc)
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
        self._site = None

    def _access(self, ipa: int, size: int, is_write: bool, value: int, dfsc: int) -> int:
        site = self._site
        if site is None or site.is_load is is_write or self.discovering:
            return self._unknown(size)
        left = self._left
        first = left == site.total
        if first:  # the instruction's first piece
            if not self._check(site, ipa, is_write, dfsc):
                return self._unknown(size)  # a stale hook (that execution went to RAM)
            self._va, self._rec, self._first, self._acc = site.va, site.rec, ipa, 0
        left -= size
        self._left = left
        if left <= 0:
            self._site = None
        insn = site.insn
        if insn.merge and size != insn.size:  # one register in pieces: one exit for it
            shift = 8 * (ipa - self._first)
            if is_write:
                self._acc |= value << shift
                if left > 0:
                    return 0
                return self._exit(site, self._rec, self._first, insn.size, True, self._acc)
            if first:
                self._acc = self._exit(site, self._rec, self._first, insn.size, False, None)
            return (self._acc >> shift) & ((1 << (8 * size)) - 1)
        rec = self._rec if first else None
        if rec is None:  # a later piece of a multi-register access, or an undecoded one
            rec = El2Record(_DABT_LOW | insn.iss | (ESR_ELx_WNR if is_write else 0) | dfsc,
                            (self._va & ~_OFFSET) | (ipa & _OFFSET), hpfar(ipa))
        return self._exit(site, rec, ipa, size, is_write, value if is_write else None)

    def _exit(self, site: Site, rec, ipa: int, size: int, is_write: bool, value) -> int:
        exit = Exit(_MMIO, _REASON, rec, ipa, size, is_write, value)
        self.vcpu.take_trap(rec, site.pc)
        self._dispatch(self.vcpu, exit)
        if self.vcpu.stop_requested:  # Unicorn will roll this instruction back: see run()
            self.rollback = (site.insn, site.pc, self._va, exit.value or 0)
        return exit.value or 0

    def _check(self, site: Site, ipa: int, is_write: bool, dfsc: int) -> bool:
        """Is this first access really the hooked instruction's? Rebuild its VA (FAR_EL2) from
        the registers and translate it; keep the record for the fast path when it is."""
        insn = site.insn
        if insn.addr == ADDR_UNKNOWN:
            va = ipa
        else:
            va = insn.address(self.vcpu.xreg, site.pc)
            if va != site.va or ipa != site.ipa:
                pa = self.vcpu.engine_address(va, is_write)  # MMIO pages sit at their IPA
                if pa is None or not 0 <= ipa - pa < insn.total:
                    return False
        if insn.is_load is None:  # either direction: no record to reuse
            site.va, site.ipa, site.rec = va, -1, None
        elif va != site.va or ipa != site.ipa:
            site.va, site.ipa = va, ipa
            site.rec = El2Record(_DABT_LOW | insn.iss | (ESR_ELx_WNR if is_write else 0) | dfsc,
                                 va, hpfar(ipa))
        return True

    # -- finding an instruction the first time ----------------------------------------------
    def _unknown(self, size: int) -> int:
        """An access from an instruction without a hook: undo it and learn its PC."""
        self._site = None
        if not self.discovering:
            self.discovering = True
            self._unknown_size = size
            self._snapshot = [self.vcpu.xreg(n) for n in range(32)]  # X0-X30, SP
            self.uc.emu_stop()
        return 0  # discarded: the registers are restored and the instruction runs again

    def finish_discovery(self) -> None:
        """After emu_start returned from :meth:`_unknown`'s stop: PC is the instruction."""
        vcpu = self.vcpu
        self.discovering = False
        self._site = None
        for n, value in enumerate(self._snapshot):
            vcpu.write_xreg(n, value)
        pc = vcpu.regs.read(UC_ARM64_REG_PC)
        word = vcpu.read_insn(pc)
        old = self._sites.get(pc)
        if old is None or old.insn.word != word:
            insn = _decode(word) or _widen(LoadStore(word, True, 1), self._unknown_size)
        elif old.total >= 64:
            self.vm.crash(f"the instruction at {pc:#x} keeps making MMIO accesses hvsim "
                          f"cannot attribute (word {word:#010x})")
            return
        else:  # more accesses than its decoding said: accept any number, and run it again
            insn = _widen(old.insn, old.total + self._unknown_size)
        self.pending[pc] = insn

    def install_pending(self) -> None:
        """Add the code hooks discovery asked for; the engine must be stopped."""
        for pc, insn in self.pending.items():
            old = self._sites.get(pc)
            if old is not None:
                self.hooks.delete(old.handle)
            site = self._sites[pc] = Site(insn, pc)
            site.handle = self.hooks.add(UC_HOOK_CODE, HOOK_CODE, self._code_hook(site), pc, pc)
            self.uc.ctl_remove_cache(pc, pc + 4)  # hooks bind when a block is translated
        self.pending.clear()

    def _code_hook(self, site: Site):
        trap = self

        def on_insn(_uc, _address, _size, _ud):  # names the instruction before it runs
            trap._site = site
            trap._left = site.total

        return on_insn

    def complete_rollback(self) -> bool:
        """A stop requested while an MMIO access was being handled makes Unicorn roll the
        instruction back to its start (measured). The device has seen the access, so running
        it again would repeat it: finish it here instead, as KVM's kvm_handle_mmio_return()
        does (Xt from the value read, the base register's writeback, PC + 4). Returns False
        for instructions hvsim cannot finish (pairs, SIMD&FP)."""
        insn, pc, va, value = self.rollback
        self.rollback = None
        vcpu = self.vcpu
        if vcpu.regs.read(UC_ARM64_REG_PC) != pc:
            return True  # Unicorn had already moved past it
        if insn.regs != 1 or insn.simd or insn.is_load is None:
            return False
        if insn.is_load and insn.rt != 31:
            bits = 8 * insn.size
            value &= (1 << bits) - 1
            if insn.sse and value >> (bits - 1):
                value -= 1 << bits
            vcpu.write_xreg(insn.rt, value & (0xFFFF_FFFF_FFFF_FFFF if insn.sf else 0xFFFF_FFFF))
        if insn.wb != WB_NONE:
            vcpu.write_xreg(insn.rn, va + insn.wb_imm if insn.wb == WB_POST else va)
        vcpu.regs.write(UC_ARM64_REG_PC, pc + 4)
        return True


def _widen(insn: LoadStore, total: int) -> LoadStore:
    """A copy of ``insn`` that moves ``total`` bytes in either direction, piece by piece,
    ISV = 0, FAR_EL2 = the IPA (its address recipe is what failed)."""
    wide = LoadStore(insn.word, True, insn.size, regs=insn.regs, simd=insn.simd,
                     addr=ADDR_UNKNOWN)
    wide.is_load = None  # matches neither direction test: reads and writes both belong to it
    wide.total = total
    return wide
