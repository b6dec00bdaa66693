"""Where guest serial output goes: stdout by default, kept for tests and the demo."""

from __future__ import annotations

import sys
from typing import BinaryIO


class Console:
    def __init__(self, stream: BinaryIO | None = None, keep: bool = True) -> None:
        self.stream = stream
        self.keep = keep
        self.output = bytearray()
        self._pending = bytearray()

    @classmethod
    def stdout(cls) -> Console:
        return cls(sys.stdout.buffer)

    def write_byte(self, byte: int) -> None:
        if self.keep:
            self.output.append(byte)
        if self.stream is not None:
            self._pending.append(byte)
            if byte == 0x0A or len(self._pending) >= 4096:
                self.flush()

    def flush(self) -> None:
        if self.stream is not None and self._pending:
            self.stream.write(self._pending)
            self.stream.flush()
            self._pending.clear()

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")
