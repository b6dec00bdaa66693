"""MRS/MSR trapped to EL2 by HCR_EL2 (ESR_EL2.EC 0x18, ESR_ELx_EC_SYS64).

Arm ARM (DDI 0487) D23.2 "HCR_EL2" (the TVM, TRVM, TID1, TID2, TID3 and TACR fields list the
registers each traps) and D24.2 ESR_EL2, "ISS encoding for an exception from MSR, MRS, or
System instruction execution in AArch64 state". KVM handles these in
arch/arm64/kvm/sys_regs.c (``kvm_handle_sys_reg``).

Unicorn calls a ``UC_HOOK_INSN`` callback for an MRS (``UC_ARM64_INS_MRS``) or MSR
(``UC_ARM64_INS_MSR``) with the register's encoding, before the access; returning 1 skips the
engine's own access. A hook for all addresses costs ~0.3 us on *every* MRS/MSR the guest
executes, trapped or not (an untrapped ``mrs x0, tpidr_el1`` loop ran ~20x slower; a Linux
guest reads SP_EL0 and TPIDR_EL1 this way all the time). So each trapped MRS/MSR gets its own
hook, bounded to its address (begin == end): the engine checks hook bounds when it translates,
and an MRS/MSR with no hook at its address is translated as plain code and runs natively
(measured with callgrind: a loop of 1,000,000 untrapped MRS costs the same host instructions
with KVM's HCR_EL2, TID1/TID2/TID3/TACR set, as with HCR_EL2.RW alone). The trapped
instructions are found at translation time (:class:`SysregTraps`). The callbacks are C-level
(``RawHooks``); the encoding is looked up as the 20 bytes Unicorn passes, read with one
``from_address`` (0.08 us; ``ctypes.string_at`` costs 0.3 us).

A trapped access becomes ``Exit(SYSREG, "ESR_ELx_EC_SYS64", El2Record, address, 8, is_write,
value)``: ``address`` is the register's encoding as Linux's ``sys_reg(op0, op1, CRn, CRm,
op2)`` packs it; for an MSR ``value`` is the value written, for an MRS it is None. After the
handler: an MRS reads the register of hvsim's CPU model unless the handler set ``exit.value``
(then Xt gets that); an MSR writes ``exit.value`` (unchanged: the guest's value, performed by
the engine itself so its side effects happen, e.g. a TLB flush on TTBR0_EL1), or nothing if
the handler set it to None. The default handler (:func:`handle_sysreg`) leaves both alone: the
guest's access is performed, as KVM's for TVM/TRVM and for the ID registers it does not hide.
As on hardware after ``kvm_incr_pc``, the guest continues after the instruction.
"""

from __future__ import annotations

import ctypes
import struct

from unicorn import UC_HOOK_EDGE_GENERATED, UC_HOOK_INSN, UC_PROT_EXEC
from unicorn.arm64_const import (
    UC_ARM64_INS_MRS,
    UC_ARM64_INS_MSR,
    UC_ARM64_REG_PC,
    UC_ARM64_REG_X0,
    UC_ARM64_REG_X29,
    UC_ARM64_REG_X30,
    UC_ARM64_REG_XZR,
)

from hvsim.core.engine import _lib
from hvsim.core.exits import Exit, ExitKind

from . import el2
from . import sysregs as sr
from .exits import El2Record, ESR_ELx_EC_SYS64, esr, sys64_iss

REASON = "ESR_ELx_EC_SYS64"

# uc_cb_insn_sys_t: uint32_t (uc_engine *uc, uc_arm64_reg reg, const uc_arm64_cp_reg *cp, void *ud)
INSN_SYS_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p,
                               ctypes.c_void_p)

# The registers HCR_EL2.TVM (writes) and TRVM (reads) trap, D23.2 "HCR_EL2" (FEAT_AA64 base
# set; TCR2_EL1 and the FEAT_S1PIE/S1POE registers are not in hvsim's CPU model).
TVM_REGS = (sr.SCTLR_EL1, sr.TTBR0_EL1, sr.TTBR1_EL1, sr.TCR_EL1, sr.ESR_EL1, sr.FAR_EL1,
            sr.AFSR0_EL1, sr.AFSR1_EL1, sr.MAIR_EL1, sr.AMAIR_EL1, sr.CONTEXTIDR_EL1)
# ID group 3: op0 = 3, op1 = 0, CRn = 0, CRm = 1..7, any op2 (ID_PFR0_EL1 .. ID_AA64MMFR4_EL1,
# the reserved encodings of that space included, as the Arm ARM has TID3 trap them too).
ID_GROUP3 = tuple((3, 0, 0, crm, op2) for crm in range(1, 8) for op2 in range(8))

# (HCR_EL2 control, registers whose MRS it traps, registers whose MSR it traps)
SYSREG_TRAPS = [
    (el2.HCR_TVM, (), TVM_REGS),
    (el2.HCR_TRVM, TVM_REGS, ()),
    (el2.HCR_TID1, (sr.REVIDR_EL1, sr.AIDR_EL1), ()),
    (el2.HCR_TID2, (sr.CTR_EL0, sr.CCSIDR_EL1, sr.CLIDR_EL1, sr.CSSELR_EL1), (sr.CSSELR_EL1,)),
    (el2.HCR_TID3, ID_GROUP3, ()),
    (el2.HCR_TACR, (sr.ACTLR_EL1,), (sr.ACTLR_EL1,)),
]

# uc_cb_edge_gen_t: void (uc_engine *uc, uc_tb *cur, uc_tb *prev, void *ud)
class _UcTb(ctypes.Structure):
    _fields_ = [("pc", ctypes.c_uint64), ("icount", ctypes.c_uint16), ("size", ctypes.c_uint16)]


EDGE_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(_UcTb), ctypes.POINTER(_UcTb), ctypes.c_void_p)

_vmem_read = _lib.uc_vmem_read
_vmem_read.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_vmem_read.restype = ctypes.c_int
_MAX_BLOCK = 4096  # bytes of a translation block scanned (QEMU ends a block at a page)

_CP_KEY = ctypes.c_char * 20  # crn, crm, op0, op1, op2 of a uc_arm64_cp_reg, as bytes

# Unicorn's register id for Xt -> t (XZR is 31 in the ISS, as in the instruction).
_RT = {UC_ARM64_REG_X0 + n: n for n in range(29)}
_RT.update({UC_ARM64_REG_X29: 29, UC_ARM64_REG_X30: 30, UC_ARM64_REG_XZR: 31})


def cp_key(enc: tuple[int, int, int, int, int]) -> bytes:
    """The first 20 bytes of Unicorn's ``uc_arm64_cp_reg`` (crn, crm, op0, op1, op2) for ``enc``."""
    op0, op1, crn, crm, op2 = enc
    return struct.pack("<5I", crn, crm, op0, op1, op2)


def sys_reg(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """Linux's ``sys_reg()`` packing of an encoding (arch/arm64/include/asm/sysreg.h)."""
    return (op0 << 19) | (op1 << 16) | (crn << 12) | (crm << 8) | (op2 << 5)


def trapped(hcr: int) -> tuple[set, set]:
    """The encodings whose MRS, and whose MSR, trap to EL2 under ``hcr``."""
    reads, writes = set(), set()
    for bit, r, w in SYSREG_TRAPS:
        if hcr & bit:
            reads.update(r)
            writes.update(w)
    return reads, writes


def handle_sysreg(vcpu, exit: Exit) -> None:
    """The SYSREG exit handler: the guest's access is performed (see the module docstring)."""


def decode_sys(word: int) -> tuple[tuple[int, int, int, int, int], int, bool] | None:
    """MRS/MSR (register), C6.2 "MRS"/"MSR (register)": (encoding, Rt, is_read) or None.

    1101 0101 00 L 1 o0 op1:3 CRn:4 CRm:4 op2:3 Rt:5, op0 = 2 + o0, L = 1 for MRS."""
    if word & 0xFFD0_0000 != 0xD510_0000:
        return None
    enc = (2 + (word >> 19 & 1), word >> 16 & 7, word >> 12 & 15, word >> 8 & 15, word >> 5 & 7)
    return enc, word & 31, bool(word >> 21 & 1)


class SysregTraps:
    """One vCPU's MRS/MSR trapping. :meth:`update` follows HCR_EL2 at once (which registers
    trap); :meth:`sync_hooks` adds or removes the engine hooks, outside ``emu_start``.

    Only the MRS/MSR instructions whose register is trapped have a hook, a ``UC_HOOK_INSN``
    bounded to the instruction's address (begin == end): the engine checks the bounds when it
    translates, so an unhooked MRS/MSR is translated as plain code and runs natively (measured:
    a bounded hook elsewhere leaves an untrapped MRS loop at bare-engine speed; a global one
    makes it ~20x slower). The instructions are found when Unicorn translates a block
    (``UC_HOOK_EDGE_GENERATED``, once per translation) by decoding its words, as
    plugins/x86/traps.py does: a block whose new trapped sites were hooked after it was
    translated is dropped (``ctl_remove_cache``) and PC rewritten so it does not run stale; the
    first block after ``emu_start`` is not reported, :meth:`prescan` covers it. Every MRS/MSR
    seen is kept (``sites``, by address and instruction), so a change of HCR_EL2 hooks and
    unhooks them all at the next entry, with the translated code flushed. A site's hook is
    keyed by the instruction kind: code rewritten in place or another address space is
    rescanned when translated again; a hook on an instruction that no longer traps does
    nothing (the callback looks the register up again) until the next re-evaluation."""

    def __init__(self, vcpu) -> None:
        self.vcpu = vcpu
        self._reads: dict[bytes, tuple] = {}  # cp key -> encoding, for trapped MRS
        self._writes: dict[bytes, tuple] = {}
        self._trapped: tuple[frozenset, frozenset] = (frozenset(), frozenset())
        self._synced: tuple[frozenset, frozenset] | None = None  # what the hooks follow
        self._records: dict[tuple, tuple] = {}  # (cp key, reg id, is_read) -> (El2Record, address)
        self.sites: dict[tuple[int, int], tuple] = {}  # (address, insn id) -> encoding
        self._handles: dict[tuple[int, int], int] = {}  # (address, insn id) -> hook handle
        self._callbacks = {UC_ARM64_INS_MRS: self._mrs_hook(), UC_ARM64_INS_MSR: self._msr_hook()}
        self._uch = ctypes.c_void_p(vcpu.uc._uch.value)
        self._buf = ctypes.create_string_buffer(_MAX_BLOCK)
        vcpu.hooks.add(UC_HOOK_EDGE_GENERATED, EDGE_CB, self._on_edge)

    def update(self, hcr: int) -> bool:
        """Follow ``hcr``; True when the engine's hooks must change (:meth:`sync_hooks`)."""
        reads, writes = trapped(hcr)
        self._reads.clear()
        self._reads.update({cp_key(e): e for e in reads})
        self._writes.clear()
        self._writes.update({cp_key(e): e for e in writes})
        self._records.clear()
        self._trapped = (frozenset(reads), frozenset(writes))
        return self.hooks_stale()

    def hooks_stale(self) -> bool:
        return self._synced != self._trapped

    def _wanted(self, insn: int, enc: tuple) -> bool:
        return enc in self._trapped[0 if insn == UC_ARM64_INS_MRS else 1]

    def _hook(self, site: tuple[int, int]) -> None:
        address, insn = site
        self._handles[site] = self.vcpu.hooks.add(UC_HOOK_INSN, INSN_SYS_CB, self._callbacks[insn],
                                                  address, address, insn)

    def sync_hooks(self) -> None:
        """Hook exactly the known sites trapped under the current HCR_EL2 (outside emu_start)."""
        changed = False
        for site, enc in self.sites.items():
            wanted, handle = self._wanted(site[1], enc), self._handles.get(site)
            if wanted and handle is None:
                self._hook(site)
                changed = True
            elif not wanted and handle is not None:
                self.vcpu.hooks.delete(self._handles.pop(site))
                changed = True
        self._synced = self._trapped
        if changed or self.sites:
            # Translated code looked the hooks up already. Flushed even when no hook changed:
            # ``sites`` keeps the last instruction seen at an address, and a block of another
            # address space with another MRS/MSR there is rescanned only when retranslated.
            self.vcpu.uc.ctl_flush_tb()

    def _scan(self, pc: int, size: int) -> bool:
        """Record the MRS/MSR in the block at ``pc``; True when one got a new hook."""
        size = min(size, _MAX_BLOCK)
        if size < 4 or _vmem_read(self._uch, pc, UC_PROT_EXEC, self._buf, size):
            return False
        code = self._buf.raw[:size]
        if 0xD5 not in code[3::4]:  # every MRS/MSR word has 0xD5 as its top byte
            return False
        new = False
        sites, handles = self.sites, self._handles
        for i, word in enumerate(struct.unpack_from(f"<{size // 4}I", code)):
            decoded = decode_sys(word)
            if decoded is None:
                continue
            enc, _rt, is_read = decoded
            site = (pc + 4 * i, UC_ARM64_INS_MRS if is_read else UC_ARM64_INS_MSR)
            sites[site] = enc
            if site not in handles and self._wanted(site[1], enc):
                self._hook(site)
                new = True
        return new

    def _on_edge(self, _uch, cur, _prev, _ud) -> None:
        try:
            tb = cur.contents
            pc, size = tb.pc, tb.size
            if self._scan(pc, size):
                self.vcpu.uc.ctl_remove_cache(pc, pc + size)
                self.vcpu.regs.write(UC_ARM64_REG_PC, pc)  # leave the stale block before it runs
        except BaseException as exc:  # noqa: BLE001 (re-raised by the vCPU's run)
            self.vcpu.hooks.fail(exc)

    def prescan(self, pc: int) -> None:
        """Scan the block at ``pc`` before ``emu_start`` (the edge hook does not report it)."""
        try:
            tb_pc, _icount, size = self.vcpu.uc.ctl_request_cache(pc)
        except Exception:  # nothing translatable there: the guest will fault on its own
            return
        if self._scan(tb_pc, size):
            self.vcpu.uc.ctl_remove_cache(tb_pc, tb_pc + size)

    def _record(self, key: bytes, reg: int, is_read: bool) -> tuple:
        enc = (self._reads if is_read else self._writes)[key]
        op0, op1, crn, crm, op2 = enc
        rec = El2Record(esr(ESR_ELx_EC_SYS64, sys64_iss(op0, op1, crn, crm, op2, _RT.get(reg, 31), is_read)))
        args = self._records[(key, reg, is_read)] = (rec, sys_reg(*enc), enc)
        return args

    def _mrs_hook(self):
        reads, records, record = self._reads, self._records, self._record
        vcpu = self.vcpu
        dispatch, fail, write = vcpu.vm.dispatch, vcpu.hooks.fail, vcpu.regs.write
        cp_bytes, kind, xzr = _CP_KEY.from_address, ExitKind.SYSREG, UC_ARM64_REG_XZR

        def on_mrs(_uch, reg, cp, _ud):
            try:
                key = cp_bytes(cp).raw
                if key not in reads:
                    return 0  # not trapped: the engine performs it
                args = records.get((key, reg, True))
                if args is None:
                    args = record(key, reg, True)
                exit = Exit(kind, REASON, args[0], args[1], 8, False, None)
                dispatch(vcpu, exit)
                if exit.value is None:
                    return 0  # the CPU model's own value
                if reg != xzr:
                    write(reg, exit.value)
                return 1
            except BaseException as exc:  # noqa: BLE001 (re-raised by the vCPU's run)
                fail(exc)
                return 1

        return on_mrs

    def _msr_hook(self):
        writes, records, record = self._writes, self._records, self._record
        vcpu = self.vcpu
        dispatch, fail = vcpu.vm.dispatch, vcpu.hooks.fail
        cp_bytes, from_address, kind = _CP_KEY.from_address, ctypes.c_uint64.from_address, ExitKind.SYSREG

        def on_msr(_uch, reg, cp, _ud):
            try:
                key = cp_bytes(cp).raw
                if key not in writes:
                    return 0
                args = records.get((key, reg, False))
                if args is None:
                    args = record(key, reg, False)
                value = from_address(cp + 24).value
                exit = Exit(kind, REASON, args[0], args[1], 8, True, value)
                dispatch(vcpu, exit)
                if exit.value == value:
                    return 0  # the engine performs the guest's write
                if exit.value is not None:  # the hypervisor wrote another value
                    vcpu.sysregs.write(args[2], exit.value)
                    vcpu.uc.ctl_flush_tlb()  # a raw register write does not flush, the MSR would
                return 1
            except BaseException as exc:  # noqa: BLE001
                fail(exc)
                return 1

        return on_msr
