"""QEMU's isa-debug-exit (hw/misc/debugexit.c): a guest ends the run with a status it chooses.

A write of ``v`` ends the run with status ``(v << 1) | 1``, so a guest's status is always odd
and never collides with hvsim's own even ones. QEMU accepts 1- to 4-byte writes at any offset
of its range (``iosize``; the PC platform uses iobase=0xf4, iosize=0x04) and reads return 0.
QEMU's own default is iobase=0x501, iosize=0x02.
"""

from __future__ import annotations

from collections.abc import Callable


class IsaDebugExit:
    def __init__(self, stop: Callable[[int, str], None]) -> None:
        self.stop = stop

    def read(self, offset: int, size: int) -> int:
        return 0  # QEMU's debug_exit_read

    def write(self, offset: int, size: int, value: int) -> None:
        if not 1 <= size <= 4:  # QEMU's valid.min/max_access_size
            return
        v = value & ((1 << (8 * size)) - 1)
        self.stop((v << 1) | 1, f"isa-debug-exit: guest wrote {v:#x}")
