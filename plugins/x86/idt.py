"""Event delivery through the guest's IDT (Intel SDM Vol. 3A ch. 6, AMD APM Vol. 2 ch. 8).

Unicorn reports a guest exception through ``UC_HOOK_INTR`` and carries on without vectoring, so
the simulated processor does it: find the gate (IVT in real mode, 8-byte gates in protected
mode, 16-byte gates in long mode), switch stacks for a privilege change (TSS SS0:ESP0 / RSP0 /
IST), push the frame the manual prescribes, clear IF for interrupt gates, load CS:RIP.

A failure while delivering (gate beyond the IDT limit, not present, stack not writable) is a
#GP / #PF on the way in; a second failure is a double fault (#DF, vector 8), and a failure to
deliver #DF is a triple fault: the processor shuts down (VM exit 2 / #VMEXIT SHUTDOWN).
"""

from __future__ import annotations

import struct
from contextlib import contextmanager

from hvsim.core.memory import GuestMemoryError

# Exceptions that push an error code (SDM Table 6-1).
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
DF, GP, PF, NP = 8, 13, 14, 11
RFLAGS_IF, RFLAGS_TF, RFLAGS_RF, RFLAGS_NT, RFLAGS_VM = 1 << 9, 1 << 8, 1 << 16, 1 << 14, 1 << 17
RFLAGS_AC = 1 << 18

EXCEPTION_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
                   8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
                   17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP"}


class DeliveryFault(Exception):
    """Delivering an event raised another exception (vector, error code)."""

    def __init__(self, vector: int, error_code: int | None, why: str) -> None:
        super().__init__(why)
        self.vector = vector
        self.error_code = error_code
        self.why = why


class DeliveryIntercepted(Exception):
    """An exception raised while delivering an event is one the VMM intercepts: a VM exit for
    that exception, with the event being delivered reported as IDT-vectoring information (VMX,
    SDM 28.2.4) / EXITINTINFO (SVM, APM 15.7.2). ``original`` is (vector, error code, type) of
    that event when it is not the one first asked for."""

    def __init__(self, vector: int, error_code: int | None, original: tuple | None) -> None:
        super().__init__(f"exception {vector} during event delivery")
        self.vector = vector
        self.error_code = error_code
        self.original = original


class TripleFault(Exception):
    """The processor could not deliver a double fault: shutdown."""


def _benign_or_contributory(vector: int) -> str:
    if vector in (0, 10, 11, 12, 13):
        return "contributory"
    if vector == PF:
        return "page-fault"
    return "benign"


def deliver(cpu, vector: int, error_code: int | None, return_rip: int, software: bool = False,
            intercepted=None, original: tuple | None = None) -> None:
    """Deliver ``vector`` to the guest, escalating to #DF and triple fault per SDM Table 6-5.
    ``intercepted(vector, error_code)``, if given, says whether an exception raised on the way
    is the VMM's (it then ends delivery with :class:`DeliveryIntercepted`)."""
    try:
        _deliver_once(cpu, vector, error_code, return_rip, software)
        return
    except DeliveryFault as second:
        if intercepted is not None and intercepted(second.vector, second.error_code):
            raise DeliveryIntercepted(second.vector, second.error_code, original) from None
        first_class = _benign_or_contributory(vector)
        second_class = _benign_or_contributory(second.vector)
        if vector == DF:
            raise TripleFault(f"while delivering #DF: {second.why}") from None
        double = (first_class == "contributory" and second_class == "contributory") or (
            first_class == "page-fault" and second_class in ("contributory", "page-fault"))
        if not double:
            return deliver(cpu, second.vector, second.error_code, return_rip, intercepted=intercepted,
                           original=(second.vector, second.error_code, 3))
        if intercepted is not None and intercepted(DF, 0):
            raise DeliveryIntercepted(DF, 0, original) from None
        try:
            _deliver_once(cpu, DF, 0, return_rip, False)
        except DeliveryFault as third:
            if intercepted is not None and intercepted(third.vector, third.error_code):
                raise DeliveryIntercepted(third.vector, third.error_code, (DF, 0, 3)) from None
            raise TripleFault(f"{EXCEPTION_NAMES.get(vector, vector)} then {second.why}, "
                              f"then #DF failed: {third.why}") from None


def _deliver_once(cpu, vector: int, error_code: int | None, return_rip: int, software: bool) -> None:
    cr0 = cpu.cr0()
    if not cr0 & 1:
        return _deliver_real(cpu, vector, return_rip)
    if cpu.long_mode():
        return _deliver_long(cpu, vector, error_code, return_rip, software)
    return _deliver_protected(cpu, vector, error_code, return_rip, software)


def _gate_fault(vector: int, why: str, software: bool = False) -> DeliveryFault:
    # Error code for an IDT reference: index << 3 | IDT (bit 1) | EXT (bit 0); EXT is clear when
    # the event being delivered is INT n, INT3 or INTO (SDM 6.13), set for any other event.
    return DeliveryFault(GP, (vector << 3) | 2 | (0 if software else 1), why)


@contextmanager
def _supervisor(cpu, on: bool = True):
    """Implicit supervisor-mode accesses (SDM Vol. 3A 4.6: those to the GDT, LDT, IDT and TSS,
    whatever the CPL; the frame pushed on a privilege change goes to the new, inner stack): the
    walk checks them as CPL 0. A kernel that maps them supervisor-only (Linux's page-table
    isolation maps the IDT and the entry stacks in the CPU entry area so) takes interrupts and
    faults from user mode through them."""
    saved = cpu.implicit_supervisor
    cpu.implicit_supervisor = saved or on
    try:
        yield
    finally:
        cpu.implicit_supervisor = saved


def _read_gate(cpu, vector: int, size: int, software: bool = False) -> bytes:
    _sel, base, limit, _flags = cpu.idtr()
    if vector * size + size - 1 > limit:
        raise _gate_fault(vector, f"vector {vector} is beyond the IDT limit {limit:#x}", software)
    try:
        with _supervisor(cpu):
            return cpu.read_linear(base + vector * size, size)
    except DeliveryFault:
        raise
    except GuestMemoryError:
        raise _gate_fault(vector, f"IDT entry for vector {vector} is outside guest memory", software) from None


def _push_frame(cpu, rsp: int, words: list[int], width: int, stack_mask: int) -> int:
    data = b"".join(struct.pack("<Q" if width == 8 else ("<I" if width == 4 else "<H"),
                                w & ((1 << (8 * width)) - 1)) for w in reversed(words))
    rsp = (rsp - len(data)) & stack_mask
    cpu.write_stack(rsp, data)
    return rsp


def _deliver_real(cpu, vector: int, return_rip: int) -> None:
    """Real mode: the IVT entry is offset:segment; push FLAGS, CS, IP (SDM 20.1.4)."""
    _sel, base, limit, _f = cpu.idtr()
    if vector * 4 + 3 > limit:
        raise DeliveryFault(GP, 0, f"vector {vector} is beyond the real-mode IVT limit {limit:#x}")
    off, seg = struct.unpack("<HH", cpu.read_linear(base + vector * 4, 4))
    flags = cpu.rflags()
    ss_base = cpu.segment_base("ss")
    sp = cpu.rsp() & 0xFFFF
    frame = struct.pack("<HHH", return_rip & 0xFFFF, cpu.cs() & 0xFFFF, flags & 0xFFFF)
    sp = (sp - 6) & 0xFFFF
    cpu.write_linear(ss_base + sp, frame)
    cpu.set_rsp((cpu.rsp() & ~0xFFFF) | sp)
    cpu.set_rflags(flags & ~(RFLAGS_IF | RFLAGS_TF | RFLAGS_AC))
    cpu.load_cs_real(seg)
    cpu.set_rip(off)


def _deliver_protected(cpu, vector, error_code, return_rip, software) -> None:
    gate = _read_gate(cpu, vector, 8, software)
    lo, hi = struct.unpack("<II", gate)
    selector = lo >> 16
    offset = (lo & 0xFFFF) | (hi & 0xFFFF_0000)
    gtype, dpl, present = (hi >> 8) & 0xF, (hi >> 13) & 3, hi >> 15 & 1
    cpl = cpu.cpl()
    if gtype not in (0xE, 0xF, 0x6, 0x7):
        raise _gate_fault(vector, f"IDT entry {vector} has gate type {gtype:#x} (task gates are not modelled)",
                          software)
    if software and dpl < cpl:
        raise _gate_fault(vector, f"INT {vector:#x} from CPL {cpl} through a DPL {dpl} gate", True)
    if not present:
        raise DeliveryFault(NP, (vector << 3) | 2 | (0 if software else 1), f"IDT entry {vector} is not present")
    with _supervisor(cpu):
        target_dpl = cpu.code_segment_dpl(selector)
    flags = cpu.rflags()
    words = []
    esp = cpu.rsp() & 0xFFFF_FFFF
    if target_dpl < cpl:
        with _supervisor(cpu):
            ss, new_esp = cpu.tss_stack32(target_dpl)
        cpu.enter_privilege(target_dpl)
        words += [cpu.ss(), esp]
        esp = new_esp
        cpu.load_ss(ss)
    words += [flags, cpu.cs(), return_rip]
    if error_code is not None and vector in ERROR_CODE_VECTORS and not software:
        words.append(error_code)
    width = 4 if gtype in (0xE, 0xF) else 2
    with _supervisor(cpu, target_dpl < cpl):
        esp = _push_frame(cpu, esp, words, width, 0xFFFF_FFFF)
    cpu.set_rsp(esp)
    clear = RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM
    if gtype in (0xE, 0x6):
        clear |= RFLAGS_IF
    cpu.set_rflags(flags & ~clear)
    cpu.load_cs(selector)
    cpu.set_rip(offset)


def _deliver_long(cpu, vector, error_code, return_rip, software) -> None:
    gate = _read_gate(cpu, vector, 16, software)
    lo, hi, upper, _ = struct.unpack("<IIII", gate)
    selector = lo >> 16
    offset = (lo & 0xFFFF) | (hi & 0xFFFF_0000) | (upper << 32)
    ist, gtype, dpl, present = hi & 7, (hi >> 8) & 0xF, (hi >> 13) & 3, hi >> 15 & 1
    cpl = cpu.cpl()
    if gtype not in (0xE, 0xF):
        raise _gate_fault(vector, f"IDT entry {vector} has type {gtype:#x}; long mode allows 0xE/0xF", software)
    if software and dpl < cpl:
        raise _gate_fault(vector, f"INT {vector:#x} from CPL {cpl} through a DPL {dpl} gate", True)
    if not present:
        raise DeliveryFault(NP, (vector << 3) | 2 | (0 if software else 1), f"IDT entry {vector} is not present")
    with _supervisor(cpu):
        target_dpl = cpu.code_segment_dpl(selector)
        flags = cpu.rflags()
        old_ss, old_rsp = cpu.ss(), cpu.rsp()
        if ist:
            rsp = cpu.tss_stack64(ist=ist)
        elif target_dpl < cpl:
            rsp = cpu.tss_stack64(dpl=target_dpl)
        else:
            rsp = old_rsp
    if target_dpl < cpl:
        cpu.enter_privilege(target_dpl)
        cpu.load_ss(target_dpl)  # a privilege change loads a null SS, RPL the new CPL (SDM 6.14.2)
    rsp &= ~0xF  # the processor aligns RSP to 16 bytes before pushing (SDM 6.14.2)
    words = [old_ss, old_rsp, flags, cpu.cs(), return_rip]
    if error_code is not None and vector in ERROR_CODE_VECTORS and not software:
        words.append(error_code)
    with _supervisor(cpu, target_dpl < cpl):
        rsp = _push_frame(cpu, rsp, words, 8, (1 << 64) - 1)
    cpu.set_rsp(rsp)
    clear = RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM
    if gtype == 0xE:
        clear |= RFLAGS_IF
    cpu.set_rflags(flags & ~clear)
    cpu.load_cs(selector)
    cpu.set_rip(offset)

