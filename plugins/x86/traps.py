"""Trapping the sensitive instructions Unicorn runs natively (RDMSR, WRMSR, ...), without a
Python hook on every instruction.

``UC_HOOK_INSN`` refuses RDMSR/WRMSR/RDTSC, so hvsim finds them itself: when Unicorn translates
a new block (``UC_HOOK_EDGE_GENERATED``, once per translation, not per execution), the block's
bytes are decoded with capstone and every instruction of a kind we trap gets an exact-address
``UC_HOOK_CODE`` (begin == end). Measured details this depends on:

- a block translated before its hooks existed must be dropped (``ctl_remove_cache``), and the
  edge callback stops the engine, which leaves before that block runs (``X86Vcpu._reenter``:
  a RIP write there left the engine's mark for the next stop), so it is not run once untrapped;
- the first block after ``emu_start`` is not reported: :meth:`prescan` covers it;
- a hooked address can later hold other code (self-modifying code, another address space): the
  code hook compares the bytes before treating it as the instruction it was.

The code hook fires with RIP at the instruction, before it executes. The vCPU's handler returns
True when it emulated the instruction (the hook then skips it by writing RIP past it), False to
let it run natively, or None when it already moved RIP (it delivered an exception instead).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import capstone
from capstone import x86_const as CX
from unicorn import UC_HOOK_CODE, UC_HOOK_EDGE_GENERATED, UC_PROT_EXEC, Uc
from unicorn import x86_const as X

from hvsim.core.engine import FastRegs, TbRequest, _lib

from .operands import operands

_vmem_read = _lib.uc_vmem_read
_vmem_read.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_vmem_read.restype = ctypes.c_int

# capstone instruction id -> the name hvsim's handlers use
TRAPPABLE = {CX.X86_INS_RDMSR: "rdmsr", CX.X86_INS_WRMSR: "wrmsr", CX.X86_INS_RDTSC: "rdtsc",
             CX.X86_INS_RDTSCP: "rdtscp", CX.X86_INS_INVLPG: "invlpg", CX.X86_INS_WBINVD: "wbinvd",
             CX.X86_INS_INVD: "invd", CX.X86_INS_PAUSE: "pause", CX.X86_INS_XSETBV: "xsetbv",
             CX.X86_INS_CLTS: "clts", CX.X86_INS_LMSW: "lmsw", CX.X86_INS_SMSW: "smsw",
             CX.X86_INS_SGDT: "sgdt", CX.X86_INS_SIDT: "sidt", CX.X86_INS_LGDT: "lgdt",
             CX.X86_INS_LIDT: "lidt", CX.X86_INS_SLDT: "sldt", CX.X86_INS_STR: "str",
             CX.X86_INS_LLDT: "lldt", CX.X86_INS_LTR: "ltr", CX.X86_INS_RDRAND: "rdrand",
             CX.X86_INS_RDSEED: "rdseed", CX.X86_INS_HLT: "hlt",
             # far JMP / CALL (EA, 9A): a task switch when the selector names a TSS or task gate
             CX.X86_INS_LJMP: "far_jmp", CX.X86_INS_LCALL: "far_call"}
# JMP / CALL m16:16/32/64 (FF /5, FF /3), which capstone names as the near forms.
_FAR_INDIRECT = {CX.X86_INS_JMP: ("far_jmp", 5), CX.X86_INS_CALL: ("far_call", 3)}
# IRET / IRETD outside 64-bit code: a task return when EFLAGS.NT is 1 (SDM 7.3).
_TASK_IRETS = {CX.X86_INS_IRET: "iret_task", CX.X86_INS_IRETD: "iret_task"}
# Kinds whose decoded operands (plugins/x86/operands.py) the exit information needs.
WITH_OPERANDS = frozenset({"lmsw", "smsw", "sgdt", "sidt", "lgdt", "lidt", "sldt", "str", "lldt", "ltr",
                           "rdrand", "rdseed"})
# Frequent instructions trapped only while some intercept wants them (SVM PUSHF/POPF/IRET):
# a hook on every PUSHF of a guest that nobody intercepts would cost an exit's time each.
OPTIONAL = {CX.X86_INS_PUSHF: "pushf", CX.X86_INS_PUSHFD: "pushf", CX.X86_INS_PUSHFQ: "pushf",
            CX.X86_INS_POPF: "popf", CX.X86_INS_POPFD: "popf", CX.X86_INS_POPFQ: "popf",
            CX.X86_INS_IRET: "iret", CX.X86_INS_IRETD: "iret", CX.X86_INS_IRETQ: "iret"}
# Kinds of TRAPPABLE (and MOV DR) that the engine runs correctly itself: hooked, like OPTIONAL,
# only while some control intercepts them (callgrind: a hooked MOV DR in a loop cost a Python
# call per iteration even with no intercept set).
# Instructions after which a blocked event may have become deliverable (events.WindowWatch
# hooks them while an event waits).
SETS_IF = frozenset({CX.X86_INS_STI, CX.X86_INS_POPF, CX.X86_INS_POPFD, CX.X86_INS_POPFQ,
                     CX.X86_INS_IRET, CX.X86_INS_IRETD, CX.X86_INS_IRETQ, CX.X86_INS_SYSRET,
                     CX.X86_INS_SYSRETQ})
# Instructions whose engine hooks read RIP (the exit records are per RIP). In a block holding
# an exact-address code hook, the engine's RIP is that of the last hooked instruction (or the
# block's start) until the next hook (measured), so these get a hook of their own that only
# brings RIP up to date.
READS_RIP = frozenset({CX.X86_INS_IN, CX.X86_INS_OUT, CX.X86_INS_INSB, CX.X86_INS_INSW, CX.X86_INS_INSD,
                       CX.X86_INS_OUTSB, CX.X86_INS_OUTSW, CX.X86_INS_OUTSD, CX.X86_INS_CPUID})
ON_DEMAND = frozenset({"mov_to_dr", "mov_from_dr", "clts", "lmsw", "smsw", "sgdt", "sidt", "lgdt", "lidt",
                       "sldt", "str", "lldt", "ltr", "rdrand", "rdseed"})


def _disassembler(mode):
    md = capstone.Cs(capstone.CS_ARCH_X86, mode)
    md.detail = True  # operands: INVLPG's address, MOV CR's registers
    return md


_DISASM = {bits: _disassembler(mode)
           for bits, mode in ((16, capstone.CS_MODE_16), (32, capstone.CS_MODE_32), (64, capstone.CS_MODE_64))}
_LITE = {bits: capstone.Cs(capstone.CS_ARCH_X86, mode)
         for bits, mode in ((16, capstone.CS_MODE_16), (32, capstone.CS_MODE_32), (64, capstone.CS_MODE_64))}
# The mnemonics of what _scan traps (MOV to/from CR/DR is told by its operands): _may_trap.
_TRAP_NAMES = frozenset(_DISASM[64].insn_name(i) for i in TRAPPABLE)
_OPTIONAL_NAMES = frozenset(_DISASM[64].insn_name(i) for i in OPTIONAL)
_WATCH_NAMES = frozenset(_DISASM[64].insn_name(i) for i in SETS_IF)
_READS_RIP_NAMES = frozenset(_DISASM[64].insn_name(i) for i in READS_RIP)


def _far_indirect(md, insn) -> tuple[str | None, object]:
    """JMP / CALL with a memory operand and ModRM.reg 5 / 3 (FF /5, FF /3): far, through an
    m16:16/32/64 pointer; (kind, (memory Operand,)), or (None, None) for the near forms."""
    kind, reg = _FAR_INDIRECT[insn.id]
    raw = bytes(insn.bytes)
    at = raw.find(0xFF)
    if at < 0 or at + 1 >= len(raw) or (raw[at + 1] >> 3) & 7 != reg or raw[at + 1] >> 6 == 3:
        return None, None
    ops = operands(md, insn)
    return (kind, ops) if ops and ops[0].memory else (None, None)


def _sync_pc(_uc, _address, _size, _ud) -> None:
    """A code hook that does nothing: the engine writes RIP before calling it (READS_RIP)."""


def mov_cr_operands(raw: bytes) -> tuple[str, int, int] | None:
    """MOV to/from CRn (0F 22 /r, 0F 20 /r): (kind, CR number, GPR number), GPRs numbered as the
    SDM's exit qualification does (0 RAX, 1 RCX, ... 15 R15); None for any other instruction."""
    i = raw.find(b"\x0f")
    if i < 0 or i + 2 >= len(raw) or raw[i + 1] not in (0x20, 0x22):
        return None
    rex = raw[i - 1] if i and 0x40 <= raw[i - 1] <= 0x4F else 0
    modrm = raw[i + 2]
    cr = (modrm >> 3) & 7 | (rex & 4) << 1
    gpr = modrm & 7 | (rex & 1) << 3
    return ("mov_to_cr" if raw[i + 1] == 0x22 else "mov_from_cr"), cr, gpr


def mov_dr_operands(raw: bytes) -> tuple[str, int, int] | None:
    """MOV to/from DRn (0F 23 /r, 0F 21 /r): (kind, DR number, GPR number) as mov_cr_operands."""
    i = raw.find(b"\x0f")
    if i < 0 or i + 2 >= len(raw) or raw[i + 1] not in (0x21, 0x23):
        return None
    rex = raw[i - 1] if i and 0x40 <= raw[i - 1] <= 0x4F else 0
    modrm = raw[i + 2]
    dr = (modrm >> 3) & 7 | (rex & 4) << 1
    gpr = modrm & 7 | (rex & 1) << 3
    return ("mov_to_dr" if raw[i + 1] == 0x23 else "mov_from_dr"), dr, gpr


class SensitiveTraps:
    """Per-engine trap sites: virtual address -> (kind, instruction bytes)."""

    def __init__(self, uc: Uc, regs: FastRegs, code_bits: Callable[[], int],
                 handler: Callable[[str, int, int, object], bool | None],
                 reenter: Callable[[], None]) -> None:
        self.uc = uc
        self._request_cache = TbRequest(uc)  # the prescan's, at every engine entry
        self.reenter = reenter
        self.regs = regs
        self.code_bits = code_bits
        self.handler = handler
        self.sites: dict[int, tuple[str, bytes, object]] = {}  # kind, bytes, operands
        self.optional: frozenset[str] = frozenset()  # the OPTIONAL kinds trapped now
        self._hooks: dict[int, int] = {}
        self._scanned: dict[tuple[int, int, int], bytes] = {}  # (pc, code bits, size) -> the bytes scanned there
        self._syncs: dict[int, int] = {}  # READS_RIP instructions in hooked blocks -> their hook
        self._uch = ctypes.c_void_p(uc._uch.value)
        self._buf = ctypes.create_string_buffer(4096 + 16)
        uc.hook_add(UC_HOOK_EDGE_GENERATED, self._on_edge)

    def _read(self, address: int, size: int) -> bytes | None:
        return read_code(self._uch, self._buf, address, size)

    def _scan(self, pc: int, size: int) -> bool:
        code = self._read(pc, size)
        if code is None:
            return False
        bits = self.code_bits()
        key = (pc, bits, len(code))  # blocks of two lengths at one address (a stop in between) alternate
        if self._scanned.get(key) == code:
            return False  # the same bytes were scanned before (prescan at every entry): no new site
        if len(self._scanned) > 65536:
            self._scanned.clear()
        self._scanned[key] = code
        if not self._may_trap(code, pc, bits):
            return False
        new = hooked = False
        reading_rip: list[int] = []
        md = _DISASM[bits]
        for insn in md.disasm(code, pc):
            if insn.id in READS_RIP:
                reading_rip.append(insn.address)
            elif insn.id in SETS_IF:
                hooked = True  # WindowWatch may hook it
            kind, info = TRAPPABLE.get(insn.id), None
            if kind is None and insn.id == CX.X86_INS_MOV:
                mov = mov_cr_operands(bytes(insn.bytes)) or mov_dr_operands(bytes(insn.bytes))
                if mov is not None and (mov[0] not in ON_DEMAND or mov[0] in self.optional):
                    kind, info = mov[0], mov[1:]
            elif kind is None:
                kind = OPTIONAL.get(insn.id)
                if kind not in self.optional:
                    kind = None
                if kind is None and insn.id in _FAR_INDIRECT:
                    kind, info = _far_indirect(md, insn)
                elif kind is None and bits != 64:
                    kind = _TASK_IRETS.get(insn.id)
            elif kind in ON_DEMAND and kind not in self.optional:
                kind = None
            elif kind in WITH_OPERANDS:
                info = operands(md, insn)
            elif kind in ("far_jmp", "far_call"):
                info = (insn.operands[0].imm & 0xFFFF,)  # ptr16:16/32: the selector
            elif kind == "invlpg":
                m = insn.operands[0].mem if insn.operands else None
                info = (m.base, m.index, m.scale, m.disp) if m is not None else None
            if kind is not None and insn.address not in self.sites:
                self.sites[insn.address] = (kind, bytes(insn.bytes), info)
                self._hooks[insn.address] = self.uc.hook_add(UC_HOOK_CODE, self._on_site, None,
                                                             insn.address, insn.address)
                new = True
            hooked = hooked or insn.address in self._hooks
        if hooked:
            for address in reading_rip:
                if address not in self._syncs:
                    self._syncs[address] = self.uc.hook_add(UC_HOOK_CODE, _sync_pc, None, address, address)
                    new = True
        return new

    def _may_trap(self, code: bytes, pc: int, bits: int) -> bool:
        """Whether the block holds an instruction _scan may trap, by mnemonic: capstone without
        details decodes ~3.5x faster, and most blocks hold none (measured: 14 us -> 4 us)."""
        names = _TRAP_NAMES if not self.optional else _TRAP_NAMES | _OPTIONAL_NAMES
        watch = reads_rip = False
        for _address, _size, mnemonic, op_str in _LITE[bits].disasm_lite(code, pc):
            mnemonic = mnemonic.rpartition(" ")[2]  # "rep outsb": the instruction, not its prefix
            if mnemonic in names or mnemonic == "mov" and ("cr" in op_str or "dr" in op_str):
                return True
            if mnemonic in ("jmp", "call") and "ptr [" in op_str or bits != 64 and mnemonic in ("iret", "iretd"):
                return True  # may be far (FF /5, FF /3) / a task return
            watch = watch or mnemonic in _WATCH_NAMES
            reads_rip = reads_rip or mnemonic in _READS_RIP_NAMES
        return watch and reads_rip  # a window-watch site may be hooked there later

    def want_optional(self, kinds: frozenset[str]) -> None:
        """Trap these OPTIONAL kinds from now on; code translated before is translated again
        (scanned anew) when a kind is added. Kinds are never dropped: their hooks stay and let
        the instruction run once the vCPU's handler finds it no longer intercepted."""
        if kinds - self.optional:
            self.optional |= kinds
            self._scanned.clear()
            self.uc.ctl_flush_tb()

    def _on_edge(self, uc, cur, _prev, _ud):
        if self._scan(cur.pc, cur.size):
            uc.ctl_remove_cache(cur.pc, cur.pc + cur.size)
            self.reenter()  # leave before the stale block runs, RIP at its start (X86Vcpu._reenter)

    def prescan(self, rip: int) -> None:
        """Scan the block at ``rip`` before ``emu_start`` (the edge hook does not report it)."""
        try:
            pc, _icount, size = self._request_cache(rip)
        except Exception:  # nothing translatable there: the guest will fault on its own
            return
        if self._scan(pc, size):
            self.uc.ctl_remove_cache(pc, pc + size)

    def _on_site(self, uc, address, _size, _ud):
        kind, raw, info = self.sites[address]
        if self._read(address, len(raw)) != raw:
            return  # the code there changed: it runs as whatever it is now
        if self.handler(kind, address, len(raw), info) is True:
            self.regs.write(X.UC_X86_REG_RIP, address + len(raw))


def read_code(uch, buf, address: int, size: int) -> bytes | None:
    """Up to ``len(buf)`` bytes of code at virtual ``address``, through the engine's MMU (a
    fill, for a page it has not cached), or None if they do not translate."""
    size = min(size, len(buf))
    if _vmem_read(uch, address, UC_PROT_EXEC, buf, size):
        return None
    return buf.raw[:size]


@functools.lru_cache(maxsize=None)
def reg_id(bits: int, capstone_reg: int) -> int | None:
    """The Unicorn register id for a capstone register id (by name), or None (cached: INVLPG's
    operand is decoded at every execution)."""
    if not capstone_reg:
        return None
    return getattr(X, f"UC_X86_REG_{_DISASM[bits].reg_name(capstone_reg).upper()}", None)
