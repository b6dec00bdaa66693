"""MMIO: stage-2 Data Aborts on IPAs no RAM backs, completed inside the engine.

On hardware a guest access to an IPA that stage 2 leaves unmapped traps to EL2 with
ESR_EL2.EC = 0x24 (Data Abort from a lower EL), FAR_EL2 = the VA, HPFAR_EL2 = the IPA page,
and an instruction syndrome (ISV, SAS, SSE, SRT, SF, AR, WnR) that lets the hypervisor emulate
the access without decoding (Arm ARM D24.2 ESR_EL2, "ISS encoding for an exception from a
Data Abort"; KVM's io_mem_abort()). hvsim does the same: every MMIO claim on the bus, and every
other unbacked page the guest touches, is mapped with Unicorn's ``mmio_map``; each access
becomes an ``ExitKind.MMIO`` exit dispatched through ``vm.dispatch``. An access nobody claims
therefore reaches the core's MMIO handler and ends the run as a guest crash, as KVM hands it to
a VMM that has no device there (QEMU's TCG would instead answer with an external abort).

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

Unicorn splits accesses wider than 4 bytes; an 8-byte single-register access is merged back
into one 8-byte exit, as the hardware traps once. Accesses with ISV = 0 (pairs, SIMD&FP,
writeback forms) are completed piecewise, one exit per piece: KVM would refuse them.
"""

from __future__ import annotations

from functools import lru_cache

from unicorn import UC_HOOK_CODE, UC_MEM_FETCH_UNMAPPED
from unicorn.arm64_const import UC_ARM64_REG_PC

from hvsim.core.exits import Exit, ExitKind

from .decode import LoadStore, decode
from .exits import ESR_ELx_EC_DABT_LOW, ESR_ELx_WNR, El2Record, esr, fsc_translation

PAGE = 0x1000
_DABT_LOW = esr(ESR_ELx_EC_DABT_LOW)
_REASON = "ESR_ELx_EC_DABT_LOW"
_GIB, _2MIB = 1 << 30, 1 << 21

_decode = lru_cache(maxsize=65536)(decode)


class MmioTrap:
    """The MMIO side of one vCPU's engine."""

    def __init__(self, vcpu) -> None:
        self.vcpu = vcpu
        self.vm = vcpu.vm
        self.uc = vcpu.uc
        self._dispatch = vcpu.vm.dispatch
        self._insn: LoadStore | None = None  # the instruction whose accesses are arriving
        self._pc = 0
        self._left = 0  # MMIO callbacks it still has to make
        self._va_page = -1  # its VA's page, computed at its first access (FAR_EL2)
        self._half = 0  # merged 8-byte access: the low word written or the high word read
        self._half_ipa = 0
        self._hooks: dict[int, tuple[LoadStore, int]] = {}  # pc -> (decoded, hook handle)
        self.pending: dict[int, LoadStore] = {}  # code hooks to add once the engine is out
        self.discovering = False
        self._snapshot: list[int] = []
        self._lazy: set[int] = set()  # unbacked pages mapped on first touch
        self._claims_seen = 0
        self._keep: list = []  # the binding needs the callbacks alive
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
        dfsc = fsc_translation(self.fault_level(base))
        access = self._access

        def read(uc, offset, size_, _ud):
            return access(base + offset, size_, False, 0, dfsc)

        def write(uc, offset, size_, value, _ud):
            access(base + offset, size_, True, value, dfsc)

        self.uc.mmio_map(base, size, read, None, write, None)
        self._keep.append((read, write))

    def sync_claims(self) -> None:
        """Map claims added since the last call (plugins may add devices after vCPUs exist)."""
        claims = self.vm.bus.mmio_claims
        for claim in claims[self._claims_seen:]:
            for page in [p for p in self._lazy if claim.base <= p < claim.end]:
                self.uc.mem_unmap(page, PAGE)
                self._lazy.discard(page)
            self.map_region(claim.base, claim.size)
        self._claims_seen = len(claims)

    def on_unmapped(self, uc, access, address, size, value, _ud) -> bool:
        """UC_HOOK_MEM_UNMAPPED: a data access to an unbacked IPA becomes MMIO (retry it)."""
        if access == UC_MEM_FETCH_UNMAPPED:
            return False  # handled after emu_start returns: an instruction abort
        page = address & ~(PAGE - 1)
        self.map_region(page, PAGE)
        self._lazy.add(page)
        return True

    # -- the hot path ------------------------------------------------------------------------
    def on_insn(self, uc, address, size, insn) -> None:
        """Exact-address code hook on a known MMIO instruction: name it before it runs."""
        self._insn = insn
        self._pc = address
        self._left = insn.accesses
        self._va_page = -1

    def _access(self, ipa: int, size: int, is_write: bool, value: int, dfsc: int) -> int:
        insn = self._insn
        if insn is None or insn.is_load is is_write or self.discovering:
            return self._unknown()
        if self._va_page < 0:  # its first access: FAR_EL2's page, and a check it is this one
            va = insn.address(self.vcpu.xreg, self._pc)
            if (va ^ ipa) & (PAGE - 1):  # a stale hook (it went to RAM): not this instruction
                return self._unknown()
            self._va_page = va & ~(PAGE - 1)
        left = self._left - 1
        self._left = left
        if left <= 0:
            self._insn = None
        if insn.merge:
            if left == 1:  # the first half of an 8-byte access
                if is_write:
                    self._half, self._half_ipa = value, ipa
                    return 0
                value = self._exit(insn, ipa, 8, False, None, dfsc)
                self._half = value >> 32
                return value & 0xFFFF_FFFF
            if is_write:
                return self._exit(insn, self._half_ipa, 8, True, self._half | value << 32, dfsc)
            return self._half
        return self._exit(insn, ipa, size, is_write, value if is_write else None, dfsc)

    def _exit(self, insn: LoadStore, ipa: int, size: int, is_write: bool, value, dfsc: int) -> int:
        rec = El2Record(_DABT_LOW | insn.iss | (ESR_ELx_WNR if is_write else 0) | dfsc,
                        self._va_page | (ipa & (PAGE - 1)), (ipa >> 12) << 4)
        exit = Exit(ExitKind.MMIO, _REASON, rec, ipa, size, is_write, value)
        self._dispatch(self.vcpu, exit)
        return exit.value or 0

    # -- finding an instruction the first time ----------------------------------------------
    def _unknown(self) -> int:
        """An access from an instruction without a hook: undo it and learn its PC."""
        if not self.discovering:
            self.discovering = True
            self._snapshot = [self.vcpu.xreg(n) for n in range(32)]  # X0-X30, SP
            self.uc.emu_stop()
        return 0  # discarded: the registers are restored and the instruction runs again

    def finish_discovery(self) -> None:
        """After emu_start returned from :meth:`_unknown`'s stop: PC is the instruction."""
        vcpu = self.vcpu
        self.discovering = False
        for n, value in enumerate(self._snapshot):
            vcpu.write_xreg(n, value)
        pc = vcpu.regs.read(UC_ARM64_REG_PC)
        old = self._hooks.get(pc)
        if old is not None:  # it made more accesses than expected: accept any, once more
            insn = _widen(old[0], old[0].accesses + 1)
            if insn.accesses > old[0].accesses + 8:
                raise RuntimeError(f"MMIO instruction at {pc:#x} keeps making unexpected accesses")
        else:
            word = vcpu.read_insn(pc)
            insn = _decode(word) or _widen(LoadStore(word, True, 4), 1)
        self.pending[pc] = insn
        self._insn = None

    def install_pending(self) -> None:
        """Add the code hooks discovery asked for; the engine must be stopped."""
        for pc, insn in self.pending.items():
            old = self._hooks.get(pc)
            if old is not None:
                if old[0] is insn:
                    continue
                self.uc.hook_del(old[1])
            handle = self.uc.hook_add(UC_HOOK_CODE, self.on_insn, insn, pc, pc)
            self._hooks[pc] = (insn, handle)
            self.uc.ctl_remove_cache(pc, pc + 4)  # hooks bind at translation time
        self.pending.clear()


def _widen(insn: LoadStore, accesses: int) -> LoadStore:
    """A copy of ``insn`` that accepts ``accesses`` accesses in either direction, ISV = 0."""
    wide = LoadStore(insn.word, True, insn.size, regs=insn.regs, rn=insn.rn, imm=insn.imm,
                     addr=insn.addr, rm=insn.rm, option=insn.option, shift=insn.shift)
    wide.is_load = None  # matches neither direction test: reads and writes both belong to it
    wide.accesses = accesses
    return wide
