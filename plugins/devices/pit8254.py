"""The Intel 8254 programmable interval timer (8254 datasheet; QEMU hw/timer/i8254.c) at ports
0x40-0x43, and the PC's port 0x61 (system control port B: channel 2's gate, the speaker's
data enable, OUT2 in bit 5).

The counters run at 1.193182 MHz on the VM's clock (deterministic mode stays deterministic).
Channel 0's OUT is ISA IRQ 0 (an edge on each rising OUT); channel 1 (DRAM refresh) counts
but drives nothing; channel 2's gate is port 0x61 bit 0 and its OUT reads back in bit 5, which
is how kernels calibrate the TSC (Linux ``pit_calibrate_tsc``: mode 0 on channel 2, poll bit 5).

Modes: 0 (interrupt on terminal count), 1 (hardware one-shot), 2 (rate generator), 3 (square
wave), 4 (software strobe), 5 (hardware strobe); 6 and 7 are 2 and 3. Binary counting only
(BCD is accepted and counted in binary, as QEMU does). Control word 0x43: counter select,
read/write mode (latch, LSB, MSB, LSB then MSB), mode, BCD; counter select 3 is read-back
(latch count and/or status of the selected counters).
"""

from __future__ import annotations

PIT_HZ = 1_193_182
RW_LATCH, RW_LSB, RW_MSB, RW_WORD = 0, 1, 2, 3


class _Channel:
    def __init__(self, pit: "Pit8254", index: int) -> None:
        self.pit, self.index = pit, index
        self.mode = 0
        self.rw = RW_WORD
        self.bcd = False
        self.count = 0x10000  # the reload value; 0 written means 65536
        self.load_ns = 0
        self.gate = index != 2  # channels 0 and 1 are gated on
        self.latched: list[int] = []  # bytes of a latched count, read first
        self.status_latched: int | None = None
        self.read_msb = False  # LSB-then-MSB flip-flops
        self.write_msb = False
        self.write_lsb = 0
        self.null_count = True
        self.armed = False  # a count was written (OUT follows the mode from then on)
        self.frozen_ticks: int | None = None  # ticks counted when the gate fell (modes 0, 2-4)

    def ticks(self) -> int:
        if self.frozen_ticks is not None:
            return self.frozen_ticks
        return (self.pit.clock.now_ns() - self.load_ns) * PIT_HZ // 1_000_000_000

    def value(self) -> int:
        """The counting element now (QEMU's pit_get_count)."""
        if not self.armed:
            return 0
        d, count = self.ticks(), self.count
        mode = self.mode
        if mode in (0, 1, 4, 5):
            return (count - d) & 0xFFFF
        if mode == 3:
            return (count - ((2 * d) % count)) & 0xFFFF
        return (count - (d % count)) & 0xFFFF  # mode 2

    def out(self) -> bool:
        """The OUT pin now (QEMU's pit_get_out)."""
        if not self.armed:
            return self.mode != 0  # after the control word: OUT low in mode 0, high otherwise
        d, count = self.ticks(), self.count
        mode = self.mode
        if mode == 0:
            return d >= count
        if mode == 1:
            return d >= count if self.gate_triggered else True
        if mode == 2:
            return d % count != count - 1 if count > 1 else True
        if mode == 3:
            return (d % count) < ((count + 1) >> 1)
        return d != count  # modes 4, 5: one low tick at terminal count

    gate_triggered = True

    def next_edge_ns(self) -> int | None:
        """When OUT next rises (channel 0's IRQ), or None."""
        if not self.armed or self.frozen_ticks is not None:
            return None
        d, count = self.ticks(), self.count
        mode = self.mode
        if mode == 0:
            if d >= count:
                return None
            target = count
        elif mode == 2:
            target = (d // count + 1) * count
        elif mode == 3:
            target = (d // count + 1) * count
        elif mode == 4:
            if d > count:
                return None
            target = count + 1
        else:
            return None
        return self.load_ns + -(-target * 1_000_000_000 // PIT_HZ)

    def control(self, value: int) -> None:
        rw = (value >> 4) & 3
        if rw == RW_LATCH:
            self.latch_count()
            return
        self.rw = rw
        self.mode = (value >> 1) & 7
        if self.mode >= 6:
            self.mode -= 4
        self.bcd = bool(value & 1)
        self.read_msb = self.write_msb = False
        self.armed = False
        self.null_count = True
        self.frozen_ticks = None
        self.pit.changed()

    def latch_count(self) -> None:
        if not self.latched:  # a second latch before reading is ignored
            v = self.value()
            self.latched = [v & 0xFF, v >> 8] if self.rw == RW_WORD else [v & 0xFF if self.rw == RW_LSB else v >> 8]

    def latch_status(self) -> None:
        if self.status_latched is None:
            self.status_latched = ((0x80 if self.out() else 0) | (0x40 if self.null_count else 0)
                                   | self.rw << 4 | self.mode << 1 | int(self.bcd))

    def read(self) -> int:
        if self.status_latched is not None:
            v, self.status_latched = self.status_latched, None
            return v
        if self.latched:
            return self.latched.pop(0)
        v = self.value()
        if self.rw == RW_LSB:
            return v & 0xFF
        if self.rw == RW_MSB:
            return v >> 8
        self.read_msb = not self.read_msb
        return v & 0xFF if self.read_msb else v >> 8

    def write(self, value: int) -> None:
        if self.rw == RW_WORD:
            if not self.write_msb:
                self.write_lsb = value
                self.write_msb = True
                if self.mode == 0:
                    self.armed = False  # writing the first byte stops the count in mode 0
                return
            self.write_msb = False
            self.load(self.write_lsb | value << 8)
        elif self.rw == RW_LSB:
            self.load(value)
        else:
            self.load(value << 8)

    def load(self, count: int) -> None:
        self.count = count or 0x10000
        self.load_ns = self.pit.clock.now_ns()
        self.armed = True
        self.null_count = False
        self.frozen_ticks = None if self.gate or self.mode in (1, 5) else 0
        self.pit.changed()

    def set_gate(self, gate: bool) -> None:
        if gate == self.gate:
            return
        self.gate = gate
        now = self.pit.clock.now_ns()
        if self.mode in (1, 5, 2, 3) and gate:  # a rising gate (re)starts these modes
            self.load_ns = now
            self.frozen_ticks = None
        elif self.mode in (0, 4):
            if not gate and self.frozen_ticks is None and self.armed:
                self.frozen_ticks = self.ticks()
            elif gate and self.frozen_ticks is not None:
                self.load_ns = now - self.frozen_ticks * 1_000_000_000 // PIT_HZ
                self.frozen_ticks = None
        elif not gate and self.armed:
            self.frozen_ticks = self.ticks()
        self.pit.changed()


class Pit8254:
    """Ports 0x40-0x43 (offsets 0-3). ``irq0(level)`` drives ISA IRQ 0."""

    def __init__(self, clock, irq0=lambda level: None) -> None:
        self.clock = clock
        self.irq0 = irq0
        self.channels = [_Channel(self, i) for i in range(3)]
        self.speaker_data = False
        self.refresh = False
        self.deadline_ns: int | None = None  # channel 0's next rising OUT
        self.on_change = None  # the platform's: the deadline moved

    def read(self, offset: int, size: int) -> int:
        if offset < 3:
            return self.channels[offset].read()
        return 0xFF  # the control word register cannot be read

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset < 3:
            self.channels[offset].write(value)
            return
        if offset != 3:
            return
        select = value >> 6
        if select == 3:  # read-back (8254 only): bit 5 clear latches counts, bit 4 clear status
            for i in range(3):
                if value & (2 << i):
                    if not value & 0x20:
                        self.channels[i].latch_count()
                    if not value & 0x10:
                        self.channels[i].latch_status()
            return
        self.channels[select].control(value)

    # -- port 0x61 (system control port B) ----------------------------------------------------
    def read_port61(self) -> int:
        self.refresh = not self.refresh  # bit 4 toggles (DRAM refresh request, per read as QEMU)
        ch2 = self.channels[2]
        return (int(ch2.gate) | (0x02 if self.speaker_data else 0) | (0x10 if self.refresh else 0)
                | (0x20 if ch2.out() else 0))

    def write_port61(self, value: int) -> None:
        self.speaker_data = bool(value & 2)
        self.channels[2].set_gate(bool(value & 1))

    # -- channel 0's interrupt -------------------------------------------------------------------
    def changed(self) -> None:
        self.deadline_ns = self.channels[0].next_edge_ns()
        if self.on_change is not None:
            self.on_change()

    def poll(self) -> bool:
        """At or past channel 0's rising OUT: IRQ 0 gets its edge; True if it did."""
        if self.deadline_ns is None or self.clock.now_ns() < self.deadline_ns:
            return False
        self.irq0(True)
        self.irq0(False)
        self.deadline_ns = self.channels[0].next_edge_ns()
        return True


class Port61:
    """Port 0x61 as a bus device (offset 0)."""

    def __init__(self, pit: Pit8254) -> None:
        self.pit = pit

    def read(self, offset: int, size: int) -> int:
        return self.pit.read_port61() if offset == 0 else 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.pit.write_port61(value)
