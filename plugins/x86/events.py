"""Recognising events at instruction boundaries (Intel SDM Vol. 3A 6.9, Vol. 3C 25.2, 26.7;
AMD APM Vol. 2 8.5, 15.21): which pending event is taken, exits or is delivered, and when.

At each boundary the run loop stops at, :func:`boundary` goes through the pending events in the
manuals' priority order (SDM Table 6-2 with 25.2 / 25.5 / 26.7 placing the VMX exits): INIT, a
pending MTF VM exit, the VMX-preemption timer, the NMI window, NMI, the interrupt window,
external interrupts, then SVM's virtual interrupt (V_IRQ, below physical interrupts, APM 15.21.4).
Each is either blocked (RFLAGS.IF, the STI / MOV SS shadow, NMI blocking), or causes the exit
the VMM's controls ask for (``EventControls``), or is delivered through the guest's IDT.

The boundary at which a blocked event becomes deliverable must be exact, without a hook on
every instruction. Only a few instructions can end the blocking: STI, POPF, IRET, SYSRET
(RFLAGS.IF) and IRET (NMI blocking); the shadow itself lasts one instruction. So while
something waits, :class:`WindowWatch` puts exact-address code hooks on those instructions
(found with capstone when blocks are translated, as plugins/x86/traps.py does); a hook stops the
engine *before* the instruction (``emu_stop`` plus a RIP write leave at once, measured), the
run loop executes it alone (``emu_start(count=1)``), then looks again. Nothing is hooked while
nothing waits, so ordinary guest code runs at the engine's speed.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import capstone
from capstone import x86_const as CX
from unicorn import UC_HOOK_CODE, UC_HOOK_EDGE_GENERATED
from unicorn import x86_const as X

from hvsim.core.engine import TbRequest
from hvsim.core.exits import EventType

from . import idt
from .interruptibility import BLOCKING_BY_MOV_SS, BLOCKING_BY_NMI, BLOCKING_BY_STI, SHADOW
from .traps import SETS_IF, read_code  # SETS_IF: the instructions that can open a window

IRETS = frozenset({CX.X86_INS_IRET, CX.X86_INS_IRETD, CX.X86_INS_IRETQ})
WATCH_IF, WATCH_IRET = "if", "iret"
def _disassembler(mode):
    md = capstone.Cs(capstone.CS_ARCH_X86, mode)
    md.detail = True  # instruction groups: which instructions branch
    return md


_DISASM = {bits: _disassembler(mode) for bits, mode in
           ((16, capstone.CS_MODE_16), (32, capstone.CS_MODE_32), (64, capstone.CS_MODE_64))}
_LITE = {bits: capstone.Cs(capstone.CS_ARCH_X86, mode) for bits, mode in
         ((16, capstone.CS_MODE_16), (32, capstone.CS_MODE_32), (64, capstone.CS_MODE_64))}
_WATCH_IDS = {_DISASM[64].insn_name(i): i for i in SETS_IF}  # mnemonic -> capstone id


@dataclass
class EventControls:
    """What the VMM's controls make of each pending event, set at every VM entry / VMRUN.

    VMX: external-interrupt exiting (ignores RFLAGS.IF, SDM 25.2), NMI exiting, virtual NMIs,
    interrupt-window and NMI-window exiting, MTF, the preemption timer; INIT always exits in
    VMX non-root, SMIs never do (default treatment). SVM: the INTR / NMI / SMI / INIT / VINTR intercepts, V_INTR_MASKING (the guest's
    IF then masks only virtual interrupts), V_IRQ with its vector, priority and V_TPR."""

    intr_exits: bool = False
    intr_exit_ignores_if: bool = False
    nmi_exits: bool = False
    virtual_nmis: bool = False
    init_exits: bool = False
    smi_exits: bool = False
    intr_window: bool = False
    nmi_window: bool = False
    mtf: bool = False
    vintr: tuple[int, int, bool, int] | None = None  # vector, V_INTR_PRIO, V_IGN_TPR, V_TPR
    vintr_exits: bool = False
    vgif: bool = True  # SVM virtual GIF (V_GIF with V_GIF_ENABLE): 0 holds virtual interrupts
    # VMX virtual-interrupt delivery (SDM 30.2), posted interrupts (30.6): an object with
    # ``recognized``, ``deliver()``, ``nv`` (notification vector or None), ``process_posted()``.
    virtual_apic: object | None = None

    @property
    def active(self) -> bool:
        """Whether a boundary must be looked at even with no event queued."""
        return (self.intr_window or self.nmi_window or self.mtf or self.vintr is not None
                or (self.virtual_apic is not None and self.virtual_apic.recognized))

    def waits_for_if(self) -> bool:
        return (self.intr_window or (self.vintr is not None and self.vgif and _vintr_above_tpr(self.vintr))
                or (self.virtual_apic is not None and self.virtual_apic.recognized))


def _vintr_above_tpr(vintr) -> bool:
    """APM 15.21.4: a virtual interrupt is taken if V_IGN_TPR or V_INTR_PRIO > V_TPR[3:0]."""
    _vector, prio, ign_tpr, tpr = vintr
    return ign_tpr or prio > (tpr & 0xF)


def boundary(vcpu, ctl: EventControls):
    """At this instruction boundary: the exit a pending event causes (returned, not yet
    recorded), or None after delivering what the guest can take (or nothing). Reads the
    interruptibility state (STI / MOV SS shadow, NMI blocking) into ``vcpu.blocking``."""
    context, events = vcpu.context, vcpu.events
    for i, event in enumerate(events):
        if event.type is EventType.INIT:
            del events[i]
            if ctl.init_exits:
                return context.event_exit("init")
            vcpu.vm.crash("an INIT signal reached the guest without the INIT intercept: the "
                          "processor would reset, which hvsim does not model")
            return None
    for i, event in enumerate(events):
        if event.type is EventType.SMI:
            del events[i]
            if ctl.smi_exits:  # SVM's SMI intercept: the host's SMM takes it once GIF is set again
                return context.event_exit("smi")
            # Otherwise SMM takes it (VMX: the default treatment of SMIs, SDM 34.14.1; SVM
            # without the intercept) and RSM resumes the guest where it was, halted or not
            # (auto-HALT restart): nothing the guest or the VMM can see, as hvsim has no SMM.
            vcpu.smis_taken += 1
            break
    if vcpu.mtf_pending:  # below INIT / SMI, above debug traps and everything after (SDM 6.9, 25.5.2)
        vcpu.mtf_pending = False
        return context.event_exit("mtf")
    blocking = vcpu.interruptibility()
    if vcpu.timer_expired():
        return context.event_exit("preemption_timer")
    rflags_if = vcpu.rflags() & idt.RFLAGS_IF
    # NMI-window exits come before NMIs, interrupt-window exits before external interrupts.
    if ctl.nmi_window and not blocking & (SHADOW | BLOCKING_BY_NMI):
        return context.window_exit("nmi")
    nmi = next((e for e in events if e.type is EventType.NMI), None)
    if nmi is not None and not blocking & BLOCKING_BY_MOV_SS:
        if ctl.nmi_exits:
            # Virtual-NMI blocking does not hold back physical NMIs (SDM 25.3).
            if ctl.virtual_nmis or not blocking & BLOCKING_BY_NMI:
                events.remove(nmi)
                vcpu.vm.pm.hook.hvsim_interrupt_acknowledged(vcpu=vcpu, event=nmi)
                return context.event_exit("nmi", 2)
        elif not blocking & BLOCKING_BY_NMI:
            events.remove(nmi)
            vcpu.deliver_event(2, None, vcpu.rip(), event_type=EventType.NMI.value)
            vcpu.vm.pm.hook.hvsim_interrupt_acknowledged(vcpu=vcpu, event=nmi)
            return None
    va = ctl.virtual_apic
    if va is not None and not blocking & SHADOW:
        if va.nv is not None:  # SDM 30.6: the notification vector is processed, not an exit
            posted = next((e for e in events if e.type is EventType.EXTERNAL_INTERRUPT and e.vector == va.nv), None)
            if posted is not None:
                events.remove(posted)
                vcpu.vm.pm.hook.hvsim_interrupt_acknowledged(vcpu=vcpu, event=posted)
                va.process_posted()
        # SDM 30.2.2: same priority as interrupt-window exiting, which holds it back
        if va.recognized and rflags_if and not ctl.intr_window:
            vcpu.deliver_event(va.deliver(), None, vcpu.rip(), event_type=EventType.EXTERNAL_INTERRUPT.value)
            return None
    if ctl.intr_window and rflags_if and not blocking & SHADOW:
        return context.window_exit("interrupt")
    intr = next((e for e in events if e.type is EventType.EXTERNAL_INTERRUPT), None)
    if intr is not None and not blocking & SHADOW:
        if ctl.intr_exits:
            if rflags_if or ctl.intr_exit_ignores_if:
                # The host takes the interrupt: acknowledged on exit (VMX with "acknowledge
                # interrupt on exit", the vector then in the exit record) or by the host's own
                # handler once it sets GIF / IF again; either way it leaves the guest's queue.
                events.remove(intr)
                vcpu.vm.pm.hook.hvsim_interrupt_acknowledged(vcpu=vcpu, event=intr)
                return context.event_exit("external", intr.vector)
        elif rflags_if:
            events.remove(intr)
            vcpu.deliver_event(intr.vector, None, vcpu.rip(), event_type=EventType.EXTERNAL_INTERRUPT.value)
            vcpu.vm.pm.hook.hvsim_interrupt_acknowledged(vcpu=vcpu, event=intr)
            return None
    if rflags_if and not blocking & SHADOW:
        if ctl.vintr is not None and ctl.vgif and _vintr_above_tpr(ctl.vintr):
            if ctl.vintr_exits:
                return context.window_exit("vintr")
            vector = ctl.vintr[0]
            context.take_virtual_interrupt()
            vcpu.deliver_event(vector, None, vcpu.rip(), event_type=EventType.EXTERNAL_INTERRUPT.value)
            return None
    # Software events queued for the guest (a VMM's INT n, exceptions) are not masked by IF.
    other = next((e for e in events if e.type not in (EventType.NMI, EventType.EXTERNAL_INTERRUPT)), None)
    if other is not None:
        events.remove(other)
        software = other.type in (EventType.SOFTWARE_INTERRUPT, EventType.SOFTWARE_EXCEPTION)
        vcpu.deliver_event(other.vector, other.error_code, vcpu.rip(), software, other.type.value)
        vcpu.vm.pm.hook.hvsim_interrupt_acknowledged(vcpu=vcpu, event=other)
    return None


def waiting(vcpu, ctl: EventControls) -> tuple[bool, frozenset[str]]:
    """After :func:`boundary` took nothing: (single-step the next instruction?, what to watch).
    Stepping covers the shadow (the event may be taken after one instruction) and MTF; the
    watch covers RFLAGS.IF = 0 and NMI blocking, which only a few instructions end."""
    blocking = vcpu.blocking
    watch = {WATCH_IRET} if blocking & BLOCKING_BY_NMI else set()
    events = vcpu.events
    external = any(e.type is EventType.EXTERNAL_INTERRUPT for e in events)
    wants_if = ctl.waits_for_if() or (external and not (ctl.intr_exits and ctl.intr_exit_ignores_if))
    wants_nmi = ctl.nmi_window or any(e.type is EventType.NMI for e in events)
    step = ctl.mtf
    if blocking & SHADOW and (wants_if or wants_nmi or external):
        step = True
    if wants_if and not vcpu.rflags() & idt.RFLAGS_IF:
        watch.add(WATCH_IF)
    return step, frozenset(watch)


class WindowWatch:
    """Exact-address hooks on the instructions that can open an interrupt or NMI window, present
    only while some event waits for one."""

    def __init__(self, uc, regs, code_bits, reenter) -> None:
        self.uc, self.regs, self.code_bits, self.reenter = uc, regs, code_bits, reenter
        self._request_cache = TbRequest(uc)
        self.kinds: frozenset[str] = frozenset()
        self.sites: dict[int, tuple[int, bytes]] = {}  # address -> (capstone id, bytes)
        self._hooks: dict[int, int] = {}
        self._edge = None
        self.hit: int | None = None  # the site the engine stopped before
        self.stepping = False  # the run loop is executing a site itself
        self._uch = ctypes.c_void_p(uc._uch.value)
        self._buf = ctypes.create_string_buffer(4096 + 16)

    def arm(self, kinds: frozenset[str]) -> None:
        if kinds == self.kinds:
            return
        if not kinds:
            return self.disarm()
        if self._edge is None:
            # The scanner stays once started (it costs only at translation time); blocks
            # translated before it existed were never scanned: translate them again, once.
            self._edge = self.uc.hook_add(UC_HOOK_EDGE_GENERATED, self._on_edge)
            self.uc.ctl_flush_tb()
        if not self.kinds:
            for address in self.sites:
                self._hook(address)
        self.kinds = kinds

    def disarm(self) -> None:
        """No more hooks on the sites (so they run at native speed); the scanner keeps
        recording them for the next time something waits."""
        for handle in self._hooks.values():
            self.uc.hook_del(handle)
        self._hooks, self.kinds = {}, frozenset()

    def _hook(self, address: int) -> None:
        self._hooks[address] = self.uc.hook_add(UC_HOOK_CODE, self._on_site, None, address, address)
        self.uc.ctl_remove_cache(address, address + 1)  # its block must call the new hook

    def _read(self, address: int, size: int) -> bytes | None:
        return read_code(self._uch, self._buf, address, size)

    def _scan(self, pc: int, size: int) -> bool:
        code = self._read(pc, size)
        if code is None:
            return False
        new = False
        # Capstone without details (mnemonics only) decodes several times faster, and every
        # block of a Linux kernel's is scanned (a 120 s profile: 56 s in the detailed scan).
        for address, length, mnemonic, _ops in _LITE[self.code_bits()].disasm_lite(code, pc):
            insn_id = _WATCH_IDS.get(mnemonic.rpartition(" ")[2])
            if insn_id is not None and address not in self.sites:
                self.sites[address] = (insn_id, code[address - pc:address - pc + length])
                if self.kinds:
                    self._hooks[address] = self.uc.hook_add(UC_HOOK_CODE, self._on_site, None, address, address)
                    new = True
        return new

    def _on_edge(self, uc, cur, _prev, _ud):
        if self._scan(cur.pc, cur.size):
            uc.ctl_remove_cache(cur.pc, cur.pc + cur.size)
            self.reenter()  # leave before the stale block runs (as SensitiveTraps._on_edge)

    def prescan(self, rip: int) -> None:
        if not self.kinds:
            return
        try:
            pc, _icount, size = self._request_cache(rip)
        except Exception:
            return
        if self._scan(pc, size):
            self.uc.ctl_remove_cache(pc, pc + size)

    def _on_site(self, uc, address, _size, _ud):
        site = self.sites.get(address)
        if self.stepping or site is None or self._read(address, len(site[1])) != site[1]:
            return
        if WATCH_IF in self.kinds or (WATCH_IRET in self.kinds and site[0] in IRETS):
            self.hit = address
            uc.emu_stop()
            self.regs.write(X.UC_X86_REG_RIP, address)  # leaves the block now, before the instruction

    def is_iret(self, address: int) -> bool:
        site = self.sites.get(address)
        return site is not None and site[0] in IRETS


_BRANCH_GROUPS = frozenset({capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL, capstone.CS_GRP_RET,
                            capstone.CS_GRP_INT, capstone.CS_GRP_IRET})
_BRANCH_IDS = frozenset({CX.X86_INS_SYSCALL, CX.X86_INS_SYSRET, CX.X86_INS_SYSRETQ, CX.X86_INS_SYSENTER,
                         CX.X86_INS_SYSEXIT, CX.X86_INS_LOOP, CX.X86_INS_LOOPE, CX.X86_INS_LOOPNE,
                         CX.X86_INS_LJMP, CX.X86_INS_LCALL})


def fallthrough(code: bytes, address: int, bits: int) -> tuple[int | None, int]:
    """(the address after the instruction at ``address`` if execution surely continues there,
    else None; the shadow it starts: BLOCKING_BY_STI for STI, BLOCKING_BY_MOV_SS for a load of
    SS, else 0). Stepping to a known address with ``emu_start(until=...)`` costs no
    translation-cache flush, unlike ``count=1``, but the engine drops its shadow flag at such a
    stop (measured), so the caller sets it again."""
    for insn in _DISASM[bits].disasm(code, address, 1):
        if insn.id in _BRANCH_IDS or _BRANCH_GROUPS.intersection(insn.groups):
            return None, 0
        shadow = 0
        if insn.id == CX.X86_INS_STI:
            shadow = BLOCKING_BY_STI
        elif insn.id in (CX.X86_INS_MOV, CX.X86_INS_POP) and insn.operands and \
                insn.operands[0].type == CX.X86_OP_REG and insn.operands[0].reg == CX.X86_REG_SS:
            shadow = BLOCKING_BY_MOV_SS
        return address + insn.size, shadow
    return None, 0
