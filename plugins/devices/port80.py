"""The PC's POST code port 0x80: firmware writes progress codes here; nothing reads them back.

Writes are kept in ``last`` (None until the first write) so a learner or a test can see the
last code; reads get the open-bus all-ones, as QEMU's ``ioport80_read`` answers.
"""

from __future__ import annotations


class Port80:
    def __init__(self) -> None:
        self.last: int | None = None

    def read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4, 8):
            return 0
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4, 8):
            return
        self.last = value & ((1 << (8 * size)) - 1)
