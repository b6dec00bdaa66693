"""The guest's TLB maintenance, address translation and translation-control writes, seen by
the TLB model.

TLBI (SYS #0, C8, Cm, #op2, Xt; C5.5 "A64 system instructions for TLB maintenance") and MSR to
SCTLR_EL1, TCR_EL1, TTBR0_EL1 and TTBR1_EL1 run natively in the engine; the model in
:mod:`.mmu` must see them before they execute: a TLBI drops what it invalidates, an MSR makes
the next fill read the translation context again; an AT S1E1R/W or S1E0R/W gets its PAR_EL1
from hvsim's walk (hooked at the instruction and the next one). Each such instruction is found when Unicorn
translates its block (``UC_HOOK_EDGE_GENERATED``, once per translation; :meth:`prescan` for
the block ``emu_start`` begins with) and gets a ``UC_HOOK_CODE`` bounded to its own address
(MSR DAIFClr and MSR DAIF one at the next instruction, where a pending virtual interrupt they
unmask is taken), as :mod:`.traps` does for trapped MRS/MSR: no hook runs anywhere else. A block whose new sites
were hooked after it was translated is dropped and PC rewritten so it does not run stale.
"""

from __future__ import annotations

import ctypes
import struct

from unicorn import UC_HOOK_CODE, UC_HOOK_EDGE_GENERATED, UC_PROT_EXEC
from unicorn.arm64_const import UC_ARM64_REG_PAR_EL1, UC_ARM64_REG_PC

from hvsim.core.engine import HOOK_CODE, _lib
from hvsim.core.exits import Exit, ExitKind

from . import sysregs as sr
from .exits import ESR_ELx_CM, ESR_ELx_EC_DABT_LOW, ESR_ELx_S1PTW, ESR_ELx_WNR, El2Record, esr, hpfar
from .mmu import TLBI_OPS
from .traps import EDGE_CB, on_new_block

_vmem_read = _lib.uc_vmem_read
_vmem_read.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_vmem_read.restype = ctypes.c_int
_MAX_BLOCK = 4096

CONTEXT_REGS = frozenset((sr.SCTLR_EL1, sr.TCR_EL1, sr.TTBR0_EL1, sr.TTBR1_EL1))


AT_OPS = {0: "S1E1R", 1: "S1E1W", 2: "S1E0R", 3: "S1E0W"}  # AT: SYS #0, C7, C8, #op2
# Unmasking (C5.2 "DAIF"; C6.2 "MSR (immediate)"): MSR DAIFClr, #imm is 1101 0101 0000 0011
# 0100 CRm 111 11111; MSR DAIF, Xt is the register form of (3, 3, 4, 2, 1).
MSR_DAIFCLR = 0xD503_40FF
_WFI = (0xD503_207F).to_bytes(4, "little")
DAIF = (3, 3, 4, 2, 1)


def decode_site(word: int):
    """("tlbi", (op1, CRm, op2), Rt) for a TLBI the model knows, ("msr", encoding, Rt) for an MSR
    to a translation-control register, else None. SYS is 1101 0101 0000 1 op1 CRn CRm op2 Rt;
    MSR (register) is 1101 0101 0001 o0 op1 CRn CRm op2 Rt (op0 = 2 + o0)."""
    if word & 0xFFF8_0000 == 0xD508_0000:
        key = ((word >> 16) & 7, (word >> 8) & 15, (word >> 5) & 7)
        crn = (word >> 12) & 15
        if crn == 7 and key[0] == 0 and key[1] == 8 and key[2] in AT_OPS:
            return ("at", key[2], word & 31)
        return ("tlbi", key, word & 31) if crn == 8 and key in TLBI_OPS else None
    if word & 0xFFF0_0000 == 0xD510_0000:
        enc = (2 + (word >> 19 & 1), word >> 16 & 7, word >> 12 & 15, word >> 8 & 15, word >> 5 & 7)
        if enc == DAIF:
            return ("unmask", enc, word & 31)
        return ("msr", enc, word & 31) if enc in CONTEXT_REGS else None
    if word & 0xFFFF_F0FF == MSR_DAIFCLR and word >> 8 & 0b0111:  # clears A, I or F
        return ("unmask", None, 31)
    return None


class MaintenanceSites:
    """One vCPU's TLBI / translation-control MSR sites and their exact-address hooks."""

    def __init__(self, vcpu) -> None:
        self.vcpu = vcpu
        self.sites: dict[int, tuple] = {}  # address -> decode_site() result
        self._handles: dict[int, int] = {}
        self._uch = ctypes.c_void_p(vcpu.uc._uch.value)
        self._buf = ctypes.create_string_buffer(_MAX_BLOCK)
        self._at: tuple[int, int, int] | None = None  # (address, op2, VA) of the AT about to run
        self._after: dict[int, int] = {}  # address after an AT -> hook handle
        self._callbacks = {"tlbi": self._code_hook(), "msr": self._msr_hook(), "at": self._code_hook(),
                           "unmask": self._msr_hook()}
        self._after_at = self._after_at_hook()
        self._after_unmask = self._after_unmask_hook()
        vcpu.hooks.add(UC_HOOK_EDGE_GENERATED, EDGE_CB, on_new_block(vcpu, self._scan))

    def _code_hook(self):
        sites, vcpu, fail, owner = self.sites, self.vcpu, self.vcpu.hooks.fail, self

        def on_site(_uch, address, _size, _ud):
            try:
                site = sites.get(address)
                if site is None:
                    return  # no longer a TLBI the model knows (the code there was rewritten)
                kind, what, rt = site
                if kind == "tlbi":
                    vcpu.mmu.on_guest_tlbi(what, vcpu.xreg_zr(rt))
                elif kind == "at":
                    va = vcpu.xreg_zr(rt)
                    if not owner._at_stage2_abort(address, what, va):
                        owner._at = (address, what, va)
            except BaseException as exc:  # noqa: BLE001 (re-raised by the vCPU's run)
                fail(exc)

        return on_site

    def _at_stage2_abort(self, address: int, op2: int, va: int) -> bool:
        """AT S1E1R/W, S1E0R/W executed at EL1 whose stage-1 walk faults at stage 2: not a
        PAR_EL1 result but a Data Abort to EL2 (as QEMU's do_ats_write, per the Arm ARM's
        rules for address translation instructions): ESR_EL2 EC 0x24 with CM, S1PTW and WnR
        set and the stage-2 DFSC, FAR_EL2 = the VA, HPFAR_EL2 = the descriptor's IPA, ELR_EL2 =
        the AT. The AT runs again after the handler unless it moved the guest on."""
        vcpu = self.vcpu
        fault = vcpu.mmu.at_stage2_fault(op2, va)
        if fault is None:
            return False
        rec = El2Record(esr(ESR_ELx_EC_DABT_LOW, ESR_ELx_CM | ESR_ELx_S1PTW | ESR_ELx_WNR | (fault.syndrome & 0x3F)),
                        va, hpfar(fault.gpa))
        vcpu.take_trap(rec, address)
        vcpu.vm.dispatch(vcpu, Exit(ExitKind.STAGE2_FAULT, "ESR_ELx_EC_DABT_LOW", rec, fault.gpa, 0, False, None,
                                    detail=f"{fault.detail} on the stage-1 walk of AT for {va:#x}"))
        if vcpu.vm.status is None and not vcpu.redirected:
            vcpu.regs.write(UC_ARM64_REG_PC, address)  # retried, as after any stage-2 abort
        return True

    def _after_at_hook(self):
        """At the instruction after an AT: the engine's PAR_EL1 is replaced by hvsim's."""
        vcpu, fail, owner = self.vcpu, self.vcpu.hooks.fail, self

        def on_after(_uch, address, _size, _ud):
            try:
                at, owner._at = owner._at, None
                if at is not None and at[0] == address - 4:
                    vcpu.regs.write(UC_ARM64_REG_PAR_EL1, vcpu.mmu.par_for(at[1], at[2]))
            except BaseException as exc:  # noqa: BLE001
                fail(exc)

        return on_after

    def _next_is_wfi(self, address: int) -> bool:
        mmu = self.vcpu.mmu
        pending = mmu.pending  # a refused fill here must not leave a fault for the run loop
        try:
            return self.vcpu.read_code(address + 4, 4) == _WFI
        finally:
            mmu.pending = pending

    def _after_unmask_hook(self):
        """At the instruction after MSR DAIFClr / MSR DAIF: a virtual interrupt pending while
        PSTATE masked it (HCR_EL2.VI/VF/VSE, or one injected) is taken now, with ELR_EL1 = this
        instruction, not at the next entry into the guest (D1.3.6). Not after an unmask that a
        WFI follows (the ``msr daifclr; wfi`` idle idiom): the WFI completes at once, as an
        interrupt is pending, and the interrupt is taken after it."""
        vcpu, fail = self.vcpu, self.vcpu.hooks.fail

        def on_after(_uch, _address, _size, _ud):
            try:
                if vcpu.events:
                    vcpu.deliver_pending()
            except BaseException as exc:  # noqa: BLE001
                fail(exc)

        return on_after

    def _msr_hook(self):
        mmu = self.vcpu.mmu

        def on_msr(_uch, _address, _size, _ud):  # the next fill reads the context again
            mmu._ctx = None

        return on_msr

    def _scan(self, pc: int, size: int) -> bool:
        """Record the sites in the block at ``pc``; True when one got a new hook."""
        size = min(size, _MAX_BLOCK)
        if size < 4 or _vmem_read(self._uch, pc, UC_PROT_EXEC, self._buf, size):
            return False
        code = self._buf.raw[:size]
        if 0xD5 not in code[3::4]:  # TLBI and MSR words have 0xD5 as their top byte
            return False
        new = False
        for i, word in enumerate(struct.unpack_from(f"<{size // 4}I", code)):
            if word >> 24 != 0xD5:
                continue
            site = decode_site(word)
            if site is None:
                continue
            address = pc + 4 * i
            old = self.sites.get(address)
            self.sites[address] = site
            if old is not None and old[0] != site[0]:  # code rewritten: the other callback
                self.vcpu.hooks.delete(self._handles.pop(address))
            if address not in self._handles:
                self._handles[address] = self.vcpu.hooks.add(UC_HOOK_CODE, HOOK_CODE, self._callbacks[site[0]],
                                                             address, address)
                new = True
            if site[0] == "unmask" and self._next_is_wfi(address):
                continue  # WFI completes at once with an interrupt pending; it is taken after it
            if site[0] in ("at", "unmask") and address + 4 not in self._after:
                after = self._after_at if site[0] == "at" else self._after_unmask
                self._after[address + 4] = self.vcpu.hooks.add(UC_HOOK_CODE, HOOK_CODE, after,
                                                               address + 4, address + 4)
                new = True
        return new


    def prescan(self, pc: int) -> None:
        """Scan the block at ``pc`` before ``emu_start`` (the edge hook does not report it)."""
        try:
            tb_pc, _icount, size = self.vcpu.request_cache(pc)
        except Exception:  # nothing translatable there: the guest will fault on its own
            return
        if self._scan(tb_pc, size):
            self.vcpu.uc.ctl_remove_cache(tb_pc, tb_pc + size)
