"""The guest's serial console: output goes to stdout by default (kept for tests and the demo);
input (``hvsim run``'s stdin, or :meth:`Console.send` from a test or another thread) reaches the
platform's UART receive path (COM1's 16550 on x86, the PL011 on arm64), with its interrupt.

Input arrives from any thread into a queue; the run loop hands it to the UART between slices
(:meth:`Console.deliver`), so the device only ever runs on the run loop's thread, and a halted
guest waiting for a keystroke is woken (its nap ends).
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from typing import BinaryIO


class Console:
    def __init__(self, stream: BinaryIO | None = None, keep: bool = True) -> None:
        self.stream = stream
        self.keep = keep
        self.output = bytearray()
        self._pending = bytearray()
        self.uart = None  # the device whose feed() receives input; the platform sets it
        self._input: deque[bytes] = deque()
        self.input_open = False  # an input source may still send (the run then waits for it)
        self._lock = threading.Lock()

    # -- input ------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue bytes for the guest's UART; safe from any thread. Wakes a napping run loop."""
        if data:
            with self._lock:
                self._input.append(bytes(data))
            from .engine import slice_timer
            slice_timer().poke()

    @property
    def has_input(self) -> bool:
        return bool(self._input)

    def deliver(self) -> None:
        """Hand queued input to the UART (the run loop calls this between slices)."""
        if not self._input or self.uart is None:
            return
        with self._lock:
            data = b"".join(self._input)
            self._input.clear()
        self.uart.feed(data)

    def pump(self, stream: BinaryIO) -> threading.Thread:
        """Read ``stream`` (stdin) in a daemon thread and send what arrives, until end of file."""
        self.input_open = True

        def reader() -> None:
            import os
            fd = stream.fileno()
            try:
                while True:
                    data = os.read(fd, 4096)
                    if not data:
                        break
                    self.send(data)
            except OSError:
                pass
            finally:
                self.input_open = False
                from .engine import slice_timer
                slice_timer().poke()

        thread = threading.Thread(target=reader, name="hvsim-console-input", daemon=True)
        thread.start()
        return thread

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
