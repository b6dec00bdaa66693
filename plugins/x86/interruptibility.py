"""Interruptibility state of an x86 vCPU: blocking by STI, by MOV SS / POP SS, by NMI (Intel SDM
Vol. 3A 6.8.3 and 6.7.1, Vol. 3C 24.4.2 Table 24-3; AMD APM Vol. 2 15.21.5 INTERRUPT_SHADOW).

STI executed with RFLAGS.IF = 0, and a load of SS, inhibit maskable interrupts (and, for SS,
NMIs and debug traps) until the end of the *next* instruction: the interrupt shadow. The engine
models that shadow itself (QEMU's ``HF_INHIBIT_IRQ_MASK`` in ``CPUX86State.hflags``; it ends the
block after the STI and translates the next block as a single instruction), so hvsim reads the
flag through the engine's context image rather than guessing; its offset differs between Unicorn
builds and is found once per process by watching it appear after an STI (measured: the flag is
set at the boundary before the shadowed instruction, clear after it).

The engine keeps one flag for both causes; which one it was is read from the bytes before RIP
(STI is FB; MOV SS is 8E /2, POP SS 17): what the VMCS field and the VMCB record need.
NMI blocking (set by NMI delivery, cleared by IRET, SDM 6.7.1) is Python's own bit, since
Unicorn never delivers NMIs.
"""

from __future__ import annotations

import ctypes
import struct
from functools import cache

from unicorn import UC_HOOK_CODE, UC_PROT_ALL, Uc
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_ARCH_X86, UC_MODE_64

# GUEST_INTERRUPTIBILITY_INFO bits (SDM Table 24-3): the same numbers the VMCS stores.
BLOCKING_BY_STI, BLOCKING_BY_MOV_SS, BLOCKING_BY_SMI, BLOCKING_BY_NMI = 1, 2, 4, 8
SHADOW = BLOCKING_BY_STI | BLOCKING_BY_MOV_SS
HF_INHIBIT_IRQ_MASK = 1 << 3  # QEMU target/i386/cpu.h

_CLI_NOP = bytes.fromhex("fa909090")  # cli; nop; nop; nop
_CLI_STI = bytes.fromhex("fafb9090")  # cli; sti; nop; nop


def _snapshot_at(code: bytes, at: int) -> bytes:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000, UC_PROT_ALL)
    uc.mem_write(0x1000, code)
    uc.reg_write(X.UC_X86_REG_RSP, 0x8000)
    ctx = uc.context_save()
    seen = []

    def on_code(uc_, _address, _size, _ud):
        uc_.context_update(ctx)
        seen.append(ctypes.string_at(ctx.context, ctx.size))

    uc.hook_add(UC_HOOK_CODE, on_code, None, at, at)
    uc.emu_start(0x1000, 0x1000 + len(code), timeout=1_000_000)
    return seen[0] if seen else b""


@cache
def hflags_offset() -> int | None:
    """Offset of ``hflags`` in this build's context image: the one 32-bit word that differs by
    exactly HF_INHIBIT_IRQ_MASK between the instruction after NOP and the one after STI."""
    plain, shadowed = _snapshot_at(_CLI_NOP, 0x1002), _snapshot_at(_CLI_STI, 0x1002)
    size = min(len(plain), len(shadowed))
    found = [off for off in range(0, size - 3, 4)
             if struct.unpack_from("<I", plain, off)[0] ^ struct.unpack_from("<I", shadowed, off)[0]
             == HF_INHIBIT_IRQ_MASK]
    return found[0] if len(found) == 1 else None


class InterruptShadow:
    """Reads and sets the engine's interrupt shadow (about 0.4 us per read: a context copy)."""

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self.offset = hflags_offset()
        self.ctx = uc.context_save() if self.offset is not None else None
        self._fast: tuple | None = None

    def _hflags(self) -> ctypes.c_uint32:
        return ctypes.c_uint32.from_address(ctypes.cast(self.ctx.context, ctypes.c_void_p).value + self.offset)

    def active(self) -> bool:
        if self.ctx is None:
            return False
        fast = self._fast
        if fast is None:  # the context image stays where it is: its hflags word is read in place
            from hvsim.core.engine import _lib

            fast = self._fast = (_lib.uc_context_save, ctypes.c_void_p(self.uc._uch.value),
                                 ctypes.c_void_p(ctypes.cast(self.ctx.context, ctypes.c_void_p).value),
                                 self._hflags())
        save, uch, image, hflags = fast
        if save(uch, image):  # every state save at an exit asks: one raw call, no binding wrapper
            self.uc.context_update(self.ctx)  # (raises the engine's error)
        return bool(hflags.value & HF_INHIBIT_IRQ_MASK)

    def set(self, on: bool) -> None:
        """Put the shadow on or off for the next instruction (a VMM's interruptibility state at
        VM entry, VMRUN with INTERRUPT_SHADOW set)."""
        if self.ctx is None:
            return
        self.uc.context_update(self.ctx)
        flags = self._hflags()
        new = flags.value | HF_INHIBIT_IRQ_MASK if on else flags.value & ~HF_INHIBIT_IRQ_MASK
        if new != flags.value:
            flags.value = new
            self.uc.context_restore(self.ctx)

    def set_cpl(self, cpl: int) -> bool:
        """Put the engine's CPL (``hflags`` bits 1:0, QEMU's ``HF_CPL_MASK``) at ``cpl`` before an
        event delivery loads an inner code and stack segment: the engine checks a segment
        register write against the CPL it has (from CPL 3 it refuses a DPL-0 CS and a null SS),
        while the processor's delivery switches privilege first (SDM 6.12.1). False if the
        image has no known hflags word."""
        if self.ctx is None:
            return False
        self.uc.context_update(self.ctx)
        flags = self._hflags()
        new = (flags.value & ~3) | (cpl & 3)
        if new != flags.value:
            flags.value = new
            self.uc.context_restore(self.ctx)
        return True


def shadow_cause(before: bytes, long_mode: bool) -> int:
    """BLOCKING_BY_STI or BLOCKING_BY_MOV_SS for a shadow whose instruction ends where ``before``
    (the bytes just below RIP) ends: MOV SS, r (8E D0-D7) and POP SS (17, not in 64-bit mode)
    are recognised; STI is FB; anything else (MOV SS from memory) counts as MOV SS."""
    if len(before) >= 2 and before[-2] == 0x8E and (before[-1] >> 3) & 7 == 2 and before[-1] >> 6 == 3:
        return BLOCKING_BY_MOV_SS
    if before[-1:] == b"\x17" and not long_mode:
        return BLOCKING_BY_MOV_SS
    if before[-1:] == b"\xfb":
        return BLOCKING_BY_STI
    return BLOCKING_BY_MOV_SS
