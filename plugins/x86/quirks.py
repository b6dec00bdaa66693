"""Work-arounds for Unicorn's x86 engine, each measured (see docs/unicorn-notes.md).

Unicorn raises guest exceptions through QEMU's ``raise_interrupt2``, which records the vector
in ``CPUX86State.old_exception`` to detect double faults; the reset of that field lives in
``do_interrupt``, which Unicorn never runs. So after one exception delivered by hvsim the next
contributory fault or #PF arrives as #DF, and the third shuts the engine down silently. We put
the field back to -1 after every exception we deliver, through the engine's context image.

The field's offset depends on the Unicorn build, so it is found once per process by watching
it change across two divide errors.
"""

from __future__ import annotations

import ctypes
import struct
from functools import cache

from unicorn import UC_HOOK_INTR, UC_PROT_ALL, Uc
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_ARCH_X86, UC_MODE_64

def _context_bytes(uc: Uc, ctx) -> bytes:
    uc.context_update(ctx)
    return ctypes.string_at(ctx.context, ctx.size)


_TWO_DIVIDE_ERRORS = bytes.fromhex("31c9f7f1f7f1")  # xor ecx, ecx; div ecx; div ecx


@cache
def old_exception_offset() -> int | None:
    """Offset of ``old_exception`` in this build's context image, or None if not found.

    Two #DE in a row: the field goes -1 (fresh), 0 (first #DE), 8 (the second became #DF).
    """
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000, UC_PROT_ALL)
    uc.mem_write(0x1000, _TWO_DIVIDE_ERRORS)
    uc.reg_write(X.UC_X86_REG_RSP, 0x8000)
    ctx = uc.context_save()
    snaps = [_context_bytes(uc, ctx)]

    def on_intr(uc_, intno, _ud):
        snaps.append(_context_bytes(uc_, ctx))
        uc_.reg_write(X.UC_X86_REG_RIP, uc_.reg_read(X.UC_X86_REG_RIP) + 2)
        if len(snaps) == 3:
            uc_.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.emu_start(0x1000, 0x1000 + len(_TWO_DIVIDE_ERRORS), timeout=1_000_000)
    if len(snaps) != 3:
        return None
    size = min(len(s) for s in snaps)
    found = [off for off in range(0, size - 3, 4)
             if [struct.unpack_from("<i", s, off)[0] for s in snaps] == [-1, 0, 8]]
    return found[0] if len(found) == 1 else None


class ExceptionLatch:
    """Clears the engine's double-fault memory after hvsim delivered an exception itself."""

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self.offset = old_exception_offset()
        self.ctx = uc.context_save() if self.offset is not None else None

    def clear(self) -> None:
        if self.ctx is None:
            return
        self.uc.context_update(self.ctx)
        ctypes.c_int32.from_address(ctypes.cast(self.ctx.context, ctypes.c_void_p).value + self.offset).value = -1
        self.uc.context_restore(self.ctx)
