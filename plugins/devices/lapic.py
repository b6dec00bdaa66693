"""The local APIC each x86 vCPU has (Intel SDM Vol. 3A chapter 11, "Advanced Programmable
Interrupt Controller"), as a VMM emulates it for its guest (the role of KVM's lapic.c).

One :class:`LocalApic` per vCPU (``vcpu.lapic``), one :class:`ApicBus` per VM
(``vm.arch.apic_bus``) that routes interrupt messages between them (IPIs, the IOAPIC's
redirection entries). The register file is ``regs``, a 4 KiB page laid out as the xAPIC MMIO
page (SDM Table 11-1): each register a 32-bit value at a 16-byte-aligned offset. xAPIC mode
reaches it through MMIO at IA32_APIC_BASE, x2APIC mode through MSRs 0x800 + offset / 16
(SDM 11.12.1.2), with the ICR as one 64-bit MSR (0x830) and SELF IPI at 0x83F.

The API other code (device models, an APIC-virtualization plugin) uses:

- ``accept_irq(vector, level_triggered=False, mode=FIXED)``: an interrupt message arrived;
- ``highest_irr()`` / ``highest_isr()``: the vector or -1; ``ppr()``;
- ``ack()``: the processor took the highest deliverable vector (IRR -> ISR), returns it;
- ``eoi()``: what a write to the EOI register does;
- ``read(offset, size)`` / ``write(offset, size, value)``: the xAPIC MMIO page;
- ``rdmsr(msr)`` / ``wrmsr(msr, value)``: x2APIC MSRs, IA32_APIC_BASE, IA32_TSC_DEADLINE
  (they return None / False for an access that is #GP(0)).

Interrupts reach the processor as ``EventType.EXTERNAL_INTERRUPT`` events on the vCPU's queue
(at most one from the APIC at a time: the highest vector in IRR above the PPR), so
plugins/x86/events.py takes them at the right boundary (RFLAGS.IF, the STI / MOV SS shadow,
the VMM's interrupt-exiting and window controls); when the guest takes one,
``hvsim_interrupt_acknowledged`` moves it from IRR to ISR.

The timer counts the VM's clock (``vcpu.clock``; deterministic mode stays deterministic) at one
bus tick per nanosecond, as KVM's (APIC_BUS_CYCLE_NS = 1), divided by the divide configuration.
A periodic timer's period is at least ``MIN_PERIOD_NS`` (KVM's min_timer_period_us, 200 us).

Errors (ESR, SDM 11.5.3): send / receive illegal vector (a fixed or lowest-priority message
with a vector below 16, an LVT that fires with one), illegal register address (an xAPIC access
to an offset with no register). The send / receive accept and checksum errors belong to the
P6 / Pentium APIC bus and never occur: an IPI to an APIC ID nobody has is simply not
delivered. A write to ESR latches the errors seen since the previous write (the register reads
them until the next write); a new error also fires the error LVT. LVT and ICR messages with a
reserved delivery mode are dropped.
"""

from __future__ import annotations

from hvsim.core.exits import Event, EventType

# Register offsets (SDM Table 11-1)
ID, VERSION, TPR, APR, PPR, EOI, RRD, LDR, DFR, SVR = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0
ISR, TMR, IRR, ESR = 0x100, 0x180, 0x200, 0x280
LVT_CMCI, ICR, ICR2 = 0x2F0, 0x300, 0x310
LVT_TIMER, LVT_THERMAL, LVT_PMC, LVT_LINT0, LVT_LINT1, LVT_ERROR = 0x320, 0x330, 0x340, 0x350, 0x360, 0x370
TIMER_ICR, TIMER_CCR, TIMER_DCR, SELF_IPI = 0x380, 0x390, 0x3E0, 0x3F0
LVTS = (LVT_TIMER, LVT_THERMAL, LVT_PMC, LVT_LINT0, LVT_LINT1, LVT_ERROR)

APIC_VERSION = 0x14 | (len(LVTS) - 1) << 16  # 0x50014: integrated APIC, max LVT entry 5 (KVM's)

# IA32_APIC_BASE (MSR 0x1B, SDM 11.4.4)
MSR_APIC_BASE, MSR_TSC_DEADLINE, MSR_X2APIC_FIRST, MSR_X2APIC_LAST = 0x1B, 0x6E0, 0x800, 0x8FF
BASE_BSP, BASE_EXTD, BASE_EN = 1 << 8, 1 << 10, 1 << 11
DEFAULT_BASE = 0xFEE0_0000

# Delivery modes (ICR / LVT / redirection entry bits 10:8)
FIXED, LOWEST, SMI, NMI, INIT, STARTUP, EXTINT = 0, 1, 2, 4, 5, 6, 7
LVT_MASKED, LVT_PENDING, LVT_LEVEL, LVT_REMOTE_IRR = 1 << 16, 1 << 12, 1 << 15, 1 << 14
ICR_PENDING, ICR_LOGICAL, ICR_ASSERT, ICR_LEVEL = 1 << 12, 1 << 11, 1 << 14, 1 << 15
SH_NONE, SH_SELF, SH_ALL, SH_OTHERS = 0, 1, 2, 3
SVR_ENABLE, SVR_FOCUS_DISABLED = 1 << 8, 1 << 9
TIMER_ONESHOT, TIMER_PERIODIC, TIMER_TSC_DEADLINE = 0, 1, 2

# Error status register bits (SDM 11.5.3, Figure 11-9)
ESR_SEND_ILLEGAL_VECTOR, ESR_RECV_ILLEGAL_VECTOR, ESR_ILLEGAL_REGISTER = 1 << 5, 1 << 6, 1 << 7

MIN_PERIOD_NS = 200_000

# Writable bits of each LVT (SDM Figure 11-8): vector, delivery mode, polarity, trigger, mask, timer mode
_LVT_BITS = {LVT_TIMER: 0x7_00FF, LVT_THERMAL: 0x1_07FF, LVT_PMC: 0x1_07FF, LVT_LINT0: 0x1_A7FF,
             LVT_LINT1: 0x1_A7FF, LVT_ERROR: 0x1_00FF}
_READABLE = ({ID, VERSION, TPR, APR, PPR, RRD, LDR, DFR, SVR, ESR, ICR, ICR2, TIMER_ICR, TIMER_CCR, TIMER_DCR}
             | set(LVTS) | {ISR + 16 * i for i in range(8)} | {TMR + 16 * i for i in range(8)}
             | {IRR + 16 * i for i in range(8)})


_tsc_reader = None


def _host_tsc() -> int:
    """The TSC the guest reads with RDTSC outside deterministic mode: the host's."""
    global _tsc_reader
    if _tsc_reader is None:
        from hvsim.plugins.x86.tsc import _reader

        _tsc_reader = _reader()
    return _tsc_reader()


class ApicBus:
    """The VM's interrupt-message fabric (the system bus in SDM 11.1): every local APIC and
    who sends to them; the IOAPIC hears EOI broadcasts through ``eoi_listeners``."""

    def __init__(self, vm) -> None:
        self.vm = vm
        self.lapics: list[LocalApic] = []
        self.eoi_listeners: list = []  # f(vector): a level-triggered vector was EOIed
        self.platform_timers: list = []  # .deadline_ns, .poll(): polled by the BSP's vCPU
        self.pic = None  # the master 8259, which LINT0 in ExtINT mode acknowledges

    def add(self, vcpu) -> "LocalApic":
        apic = LocalApic(vcpu, self)
        self.lapics.append(apic)
        return apic

    def destinations(self, dest: int, logical: bool, shorthand: int, source: "LocalApic | None") -> list["LocalApic"]:
        """The APICs a message addresses (SDM 11.6.2). A destination nothing matches is no one."""
        enabled = [a for a in self.lapics if a.hw_enabled]
        if shorthand == SH_SELF:
            return [source] if source is not None else []
        if shorthand == SH_ALL:
            return enabled
        if shorthand == SH_OTHERS:
            return [a for a in enabled if a is not source]
        x2 = source.x2apic if source is not None else False
        return [a for a in enabled if a.matches(dest, logical, x2)]

    def deliver(self, dest: int, logical: bool, shorthand: int, mode: int, vector: int,
                level: bool = False, source: "LocalApic | None" = None) -> bool:
        """Send one interrupt message; True if some APIC took it."""
        targets = self.destinations(dest, logical, shorthand, source)
        if mode == LOWEST and targets:  # the lowest-priority processor among them (SDM 11.6.2.4)
            targets = [min(targets, key=lambda a: (a.ppr(), a.index))]
        for apic in targets:
            apic.accept_irq(vector, level, mode)
        return bool(targets)


class LocalApic:
    def __init__(self, vcpu, bus: ApicBus) -> None:
        self.vcpu, self.bus, self.index = vcpu, bus, vcpu.index
        self.clock = vcpu.clock
        self.regs = bytearray(4096)
        self.base = DEFAULT_BASE | BASE_EN | (BASE_BSP if vcpu.index == 0 else 0)
        self._timer_ns: int | None = None  # the timer's next expiry on self.clock
        self._period_ns = 0
        self._tsc_deadline = 0
        self._esr_pending = 0
        self._queued: Event | None = None  # the APIC's interrupt on the vCPU's queue
        self.wait_for_sipi = vcpu.index != 0  # APs wait for INIT-SIPI (SDM 9.4)
        self.reset()

    # -- state -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Power-up / INIT state (SDM 11.4.7.1): everything 0 but the ID, version, DFR all ones,
        SVR 0xFF, every LVT masked."""
        self.regs[:] = bytes(4096)
        self._set(ID, self.index << 24)
        self._set(VERSION, APIC_VERSION)
        self._set(DFR, 0xFFFF_FFFF)
        self._set(SVR, 0xFF)
        for lvt in LVTS:
            self._set(lvt, LVT_MASKED)
        self._timer_ns = None
        self._tsc_deadline = 0
        self._esr_pending = 0
        self._unqueue()

    def _get(self, off: int) -> int:
        return int.from_bytes(self.regs[off:off + 4], "little")

    def _set(self, off: int, value: int) -> None:
        self.regs[off:off + 4] = (value & 0xFFFF_FFFF).to_bytes(4, "little")

    @property
    def hw_enabled(self) -> bool:
        return bool(self.base & BASE_EN)

    @property
    def x2apic(self) -> bool:
        return bool(self.base & BASE_EXTD)

    @property
    def sw_enabled(self) -> bool:
        return bool(self._get(SVR) & SVR_ENABLE)

    @property
    def apic_id(self) -> int:
        return self.index if self.x2apic else self._get(ID) >> 24

    def _bit(self, base: int, vector: int) -> tuple[int, int]:
        return base + (vector >> 5) * 16, 1 << (vector & 31)

    def _test(self, base: int, vector: int) -> bool:
        off, bit = self._bit(base, vector)
        return bool(self._get(off) & bit)

    def _change(self, base: int, vector: int, on: bool) -> None:
        off, bit = self._bit(base, vector)
        v = self._get(off)
        self._set(off, v | bit if on else v & ~bit)

    def _highest(self, base: int) -> int:
        for i in range(7, -1, -1):
            v = self._get(base + 16 * i)
            if v:
                return i * 32 + v.bit_length() - 1
        return -1

    def highest_irr(self) -> int:
        return self._highest(IRR)

    def highest_isr(self) -> int:
        return self._highest(ISR)

    def ppr(self) -> int:
        """SDM 11.8.3.1: the TPR if its class is at least the highest in-service class."""
        tpr, isrv = self._get(TPR) & 0xFF, max(self.highest_isr(), 0)
        return tpr if (tpr >> 4) >= (isrv >> 4) else isrv & 0xF0

    def deliverable(self) -> int:
        """The vector the APIC presents to the processor, or -1 (SDM 11.8.3.1)."""
        irr = self.highest_irr()
        if irr < 0 or (irr & 0xF0) <= (self.ppr() & 0xF0):
            return -1
        return irr

    # -- the processor's side ----------------------------------------------------------------------
    def _unqueue(self) -> None:
        q, self._queued = self._queued, None
        if q is not None:
            events = self.vcpu.events
            for i, e in enumerate(events):
                if e is q:
                    del events[i]
                    break

    def update(self) -> None:
        """Present the highest deliverable vector to the processor (one event on its queue)."""
        vector = self.deliverable()
        if self._queued is not None:
            if self._queued.vector == vector:
                return
            self._unqueue()
        if vector >= 0:
            self._queued = Event(EventType.EXTERNAL_INTERRUPT, vector)
            self.vcpu.inject(self._queued)

    def acknowledged(self, event) -> bool:
        """``hvsim_interrupt_acknowledged``: the processor took ``event``; if it is the APIC's,
        the vector moves from IRR to ISR (SDM 11.8.4)."""
        if event is not self._queued or event is None:
            return False
        self._queued = None
        self.ack(event.vector)
        return True

    def ack(self, vector: int | None = None) -> int:
        """INTA: the vector (the highest deliverable one unless given) leaves IRR for ISR."""
        if vector is None:
            vector = self.deliverable()
        if vector < 0:
            return -1
        self._change(IRR, vector, False)
        self._change(ISR, vector, True)
        self._set(PPR, self.ppr())
        self.update()
        return vector

    def accept_irq(self, vector: int, level_triggered: bool = False, mode: int = FIXED) -> bool:
        """An interrupt message for this APIC (SDM 11.6, 10.8.4): fixed and lowest priority set
        IRR (and TMR for level triggered); NMI, SMI, INIT and start-up go to the processor."""
        if not self.hw_enabled:
            return False
        vcpu = self.vcpu
        if mode in (FIXED, LOWEST):
            if vector < 16:
                self.error(ESR_RECV_ILLEGAL_VECTOR)
                return False
            if not self.sw_enabled:  # a software-disabled APIC takes no fixed interrupts (KVM)
                return False
            self._change(IRR, vector, True)
            self._change(TMR, vector, level_triggered)
            self.update()
            return True
        if mode == NMI:
            vcpu.vm.inject(vcpu, Event(EventType.NMI, 2))
            return True
        if mode == SMI:
            vcpu.vm.inject(vcpu, Event(EventType.SMI))
            return True
        if mode == INIT:
            self.init()
            return True
        if mode == STARTUP:
            self.startup(vector)
            return True
        if mode == EXTINT:
            vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, vector))
            return True
        return False

    def init(self) -> None:
        """INIT (SDM 9.4.2): an AP goes to wait-for-SIPI; its APIC keeps its ID and base."""
        from hvsim.core.arch import VcpuState

        vcpu = self.vcpu
        if vcpu.index == 0:  # the BSP's INIT would reset the processor; hvsim does not model it
            vcpu.vm.crash("an INIT IPI reached the bootstrap processor (a processor reset), which hvsim does not model")
            return
        self.reset()
        self.wait_for_sipi = True
        vcpu.state = VcpuState.OFF
        vcpu.events.clear()
        if getattr(vcpu, "_in_engine", False):
            vcpu.request_stop()

    def startup(self, vector: int) -> None:
        """A start-up IPI: honoured only in wait-for-SIPI, else ignored (SDM 9.4.4)."""
        from hvsim.core.arch import VcpuState

        if not self.wait_for_sipi:
            return
        vcpu = self.vcpu
        self.wait_for_sipi = False
        vcpu.sipi_vector = vector & 0xFF  # its next entry starts there (X86Vcpu.run)
        vcpu.state = VcpuState.RUNNABLE

    def eoi(self) -> None:
        """EOI (SDM 11.8.5): the highest in-service vector is done; a level-triggered one (TMR)
        is broadcast to the IOAPICs, which clear their remote IRR."""
        vector = self.highest_isr()
        if vector < 0:
            return
        self._change(ISR, vector, False)
        self._set(PPR, self.ppr())
        if self._test(TMR, vector):
            for listener in self.bus.eoi_listeners:
                listener(vector)
        self.update()

    def error(self, bits: int) -> None:
        """An error (SDM 11.5.3): recorded for the next ESR write, and the error LVT fires."""
        new = bits & ~self._esr_pending
        self._esr_pending |= bits
        lvt = self._get(LVT_ERROR)
        if new and not lvt & LVT_MASKED and (lvt & 0xFF) >= 16:
            self._change(IRR, lvt & 0xFF, True)
            self._change(TMR, lvt & 0xFF, False)
            self.update()

    def lint(self, pin: int, level: bool = True) -> None:
        """LINT0 / LINT1 asserted (edge): as its LVT entry says (ExtINT asks the 8259)."""
        lvt = self._get(LVT_LINT0 if pin == 0 else LVT_LINT1)
        if lvt & LVT_MASKED or not self.hw_enabled:
            return
        mode = (lvt >> 8) & 7
        if mode == EXTINT:
            pic = getattr(self.bus, "pic", None)
            vector = pic.acknowledge() if pic is not None else None
            if vector is not None:
                self.vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, vector))
            return
        self._lvt_fire(lvt, level_ok=True)

    def _lvt_fire(self, lvt: int, level_ok: bool = False) -> None:
        if lvt & LVT_MASKED or not self.sw_enabled:
            return
        mode = (lvt >> 8) & 7
        if mode == FIXED:
            vector = lvt & 0xFF
            if vector < 16:
                self.error(ESR_RECV_ILLEGAL_VECTOR)
                return
            self.accept_irq(vector, level_ok and bool(lvt & LVT_LEVEL))
        elif mode in (NMI, SMI):
            self.accept_irq(0, False, mode)
        # other delivery modes in an LVT are reserved: nothing is delivered

    # -- the timer (SDM 11.5.4) -------------------------------------------------------------------
    def _divisor(self) -> int:
        dcr = self._get(TIMER_DCR)
        return 1 << ((((dcr & 3) | ((dcr & 8) >> 1)) + 1) & 7)

    def _timer_mode(self) -> int:
        return (self._get(LVT_TIMER) >> 17) & 3

    def _start_timer(self) -> None:
        count = self._get(TIMER_ICR)
        if self._timer_mode() == TIMER_TSC_DEADLINE or count == 0:
            self._timer_ns = None
            return
        self._period_ns = count * self._divisor()
        if self._timer_mode() == TIMER_PERIODIC:
            self._period_ns = max(self._period_ns, MIN_PERIOD_NS)
        self._start_ns = self.clock.now_ns()
        self._timer_ns = self._start_ns + self._period_ns
        self._changed_deadline()

    def _changed_deadline(self) -> None:
        hook = getattr(self.vcpu, "apic_timer_changed", None)
        if hook is not None:
            hook()

    def _current_count(self) -> int:
        if self._timer_ns is None or self._timer_mode() == TIMER_TSC_DEADLINE:
            return 0
        left = max(0, self._timer_ns - self.clock.now_ns())
        return min(self._get(TIMER_ICR), -(-left // self._divisor()))

    @property
    def deadline_ns(self) -> int | None:
        """When the vCPU must next look at its timers: this APIC's timer and, on the BSP, the
        platform's (the PIT's channel 0): the run loop ends a slice there and wakes a HLT."""
        own = self._timer_ns
        if self.index == 0 and self.bus.platform_timers:
            for t in self.bus.platform_timers:
                d = t.deadline_ns
                if d is not None and (own is None or d < own):
                    own = d
        return own

    def poll_timer(self) -> bool:
        """Fire what is due (this APIC's timer, the BSP's platform timers); True if any fired."""
        fired = False
        if self.index == 0:
            for t in self.bus.platform_timers:
                fired |= t.poll()
        return self._poll_own() or fired

    def _poll_own(self) -> bool:
        if self._timer_ns is None or self.clock.now_ns() < self._timer_ns:
            return False
        lvt = self._get(LVT_TIMER)
        mode = self._timer_mode()
        if mode == TIMER_PERIODIC and self._period_ns:
            now = self.clock.now_ns()
            nxt = self._timer_ns + self._period_ns
            self._timer_ns = nxt if nxt > now else now + self._period_ns  # missed ticks coalesce
        else:
            self._timer_ns = None
            if mode == TIMER_TSC_DEADLINE:
                self._tsc_deadline = 0  # the MSR reads 0 once the timer fired (SDM 11.5.4.1)
        self._lvt_fire(lvt)
        return True

    def _tsc_now(self) -> int:
        from hvsim.plugins.x86.tsc import guest_tsc

        return guest_tsc(self.clock) if self.clock.deterministic else _host_tsc()

    def _set_tsc_deadline(self, value: int) -> None:
        from hvsim.plugins.x86.tsc import guest_tsc_hz

        self._tsc_deadline = value
        if self._timer_mode() != TIMER_TSC_DEADLINE:
            return  # written in another mode: ignored (SDM 11.5.4.1)
        if value == 0:
            self._timer_ns = None
            return
        delta = value - self._tsc_now()
        self._timer_ns = self.clock.now_ns() + max(0, int(delta * 1e9 / guest_tsc_hz(self.clock)))
        self._changed_deadline()

    # -- registers ------------------------------------------------------------------------------------
    def read_reg(self, off: int) -> int | None:
        """A register's value; None for an offset that names no register."""
        if off not in _READABLE:
            return None
        if off == PPR:
            return self.ppr()
        if off == TIMER_CCR:
            return self._current_count()
        if off == ID and self.x2apic:
            return self.index
        if off == LDR and self.x2apic:
            return ((self.index >> 4) << 16) | (1 << (self.index & 0xF))
        return self._get(off)

    def write_reg(self, off: int, value: int) -> bool:
        """Write a register; False when the offset or value is not writable (x2APIC: #GP)."""
        value &= 0xFFFF_FFFF
        x2 = self.x2apic
        if off == ID:
            if not x2:
                self._set(ID, value & 0xFF00_0000)
                return True
            return False
        if off == TPR:
            self._set(TPR, value & 0xFF)
            self._set(PPR, self.ppr())
            self.update()
        elif off == EOI:
            if x2 and value:
                return False  # x2APIC: a non-zero EOI write is #GP (SDM 11.12.1.2)
            self.eoi()
        elif off == LDR:
            if x2:
                return False
            self._set(LDR, value & 0xFF00_0000)
        elif off == DFR:
            if x2:
                return False
            self._set(DFR, value | 0x0FFF_FFFF)
        elif off == SVR:
            self._set(SVR, value & (0xFF | SVR_ENABLE | SVR_FOCUS_DISABLED))
            if not value & SVR_ENABLE:  # software disable masks every LVT (SDM 11.4.7.2)
                for lvt in LVTS:
                    self._set(lvt, self._get(lvt) | LVT_MASKED)
            self.update()
        elif off == ESR:
            if x2 and value:
                return False
            self._set(ESR, self._esr_pending)  # the write latches the errors since the last one
            self._esr_pending = 0
        elif off in _LVT_BITS:
            bits = value & _LVT_BITS[off]
            if not self.sw_enabled:
                bits |= LVT_MASKED  # stays masked while software-disabled (SDM 11.4.7.2)
            old_mode = self._timer_mode()
            self._set(off, bits | (self._get(off) & (LVT_PENDING | LVT_REMOTE_IRR)))
            if off == LVT_TIMER and self._timer_mode() != old_mode:
                self._timer_ns = None  # a mode change disarms the timer (SDM 11.5.4.1)
                self._tsc_deadline = 0
                self._set(TIMER_ICR, 0)  # (mode 3 is reserved: it never counts)
        elif off == TIMER_ICR:
            if self._timer_mode() == TIMER_TSC_DEADLINE:
                return True  # ignored in TSC-deadline mode
            self._set(TIMER_ICR, value)
            self._start_timer()
        elif off == TIMER_DCR:
            self._set(TIMER_DCR, value & 0xB)
        elif off == ICR:
            self._set(ICR, value & ~ICR_PENDING)
            self._send_ipi(value, self._get(ICR2) if not x2 else self._icr_high)
        elif off == ICR2:
            if x2:
                return False
            self._set(ICR2, value & 0xFF00_0000)
        elif off == SELF_IPI and x2:
            self._self_ipi(value & 0xFF)
        elif off in _READABLE:
            return not x2  # read-only registers: xAPIC writes are ignored, x2APIC ones #GP
        else:
            return False
        return True

    _icr_high = 0

    def _send_ipi(self, low: int, high: int) -> None:
        """ICR write (SDM 11.6.1): deliver at once; the delivery status then reads idle."""
        vector, mode = low & 0xFF, (low >> 8) & 7
        logical, level, trigger = bool(low & ICR_LOGICAL), bool(low & ICR_ASSERT), bool(low & ICR_LEVEL)
        shorthand = (low >> 18) & 3
        dest = high if self.x2apic else high >> 24
        if mode in (3, 7):  # reserved delivery modes: nothing is sent
            return
        if mode == INIT and trigger and not level:
            return  # INIT level de-assert: only synchronizes arbitration IDs (no effect since Pentium 4)
        if mode in (FIXED, LOWEST) and vector < 16:
            self.error(ESR_SEND_ILLEGAL_VECTOR)
            return
        if mode in (INIT, STARTUP) and shorthand == SH_SELF:
            return  # the self shorthand is not valid with INIT or start-up (SDM 11.6.1, ICR)
        self.bus.deliver(dest, logical, shorthand, mode, vector, trigger, source=self)

    def _self_ipi(self, vector: int) -> None:
        if vector < 16:
            self.error(ESR_SEND_ILLEGAL_VECTOR)
            return
        self.accept_irq(vector)

    def matches(self, dest: int, logical: bool, x2: bool) -> bool:
        """Whether this APIC is a destination of ``dest`` (SDM 11.6.2.1-2, 11.12.9-10)."""
        if self.x2apic or x2:
            if not logical:
                return dest == 0xFFFF_FFFF or dest == self.index
            ldr = ((self.index >> 4) << 16) | (1 << (self.index & 0xF))
            return (dest >> 16 == 0xFFFF or dest >> 16 == ldr >> 16) and bool(dest & ldr & 0xFFFF)
        dest &= 0xFF
        if not logical:
            return dest == 0xFF or dest == self.apic_id
        ldr = self._get(LDR) >> 24
        if self._get(DFR) >> 28 == 0xF:  # flat model
            return bool(ldr & dest)
        # cluster model: cluster in bits 7:4 (15 = all clusters), members in bits 3:0
        return ((dest >> 4) == 0xF or (dest >> 4) == (ldr >> 4)) and bool(dest & ldr & 0xF)

    # -- xAPIC MMIO ---------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        off = offset & 0xFF0
        if size != 4 or offset & 0xF:
            return 0  # the registers are 32 bits wide, 16-byte aligned (SDM 11.4.1)
        value = self.read_reg(off)
        if value is None:
            if off != LVT_CMCI:  # (CMCI is an LVT this APIC does not have: reads 0, as KVM's)
                self.error(ESR_ILLEGAL_REGISTER)
            return 0
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        off = offset & 0xFF0
        if size != 4 or offset & 0xF:
            return
        if off == SELF_IPI or (self.read_reg(off) is None and off not in (EOI,)):
            if off != LVT_CMCI:
                self.error(ESR_ILLEGAL_REGISTER)
            return
        self.write_reg(off, value)

    # -- MSRs ------------------------------------------------------------------------------------------
    def rdmsr(self, msr: int) -> int | None:
        if msr == MSR_APIC_BASE:
            return self.base
        if msr == MSR_TSC_DEADLINE:
            return self._tsc_deadline
        if not self.x2apic:
            return None  # x2APIC MSRs outside x2APIC mode: #GP (SDM 11.12.1.2)
        off = (msr - MSR_X2APIC_FIRST) << 4
        if msr == 0x830:
            return (self._icr_high << 32) | self._get(ICR)
        if off in (EOI, SELF_IPI, ICR2, DFR, APR, RRD):
            return None  # write-only or absent in x2APIC mode
        return self.read_reg(off)

    def wrmsr(self, msr: int, value: int) -> bool:
        if msr == MSR_APIC_BASE:
            return self._write_base(value)
        if msr == MSR_TSC_DEADLINE:
            self._set_tsc_deadline(value)
            return True
        if not self.x2apic:
            return False
        off = (msr - MSR_X2APIC_FIRST) << 4
        if msr == 0x830:
            self._icr_high = value >> 32
            self._set(ICR2, self._icr_high)
            return self.write_reg(ICR, value & 0xFFFF_FFFF)
        if value >> 32:
            return False  # reserved high half of a 32-bit register
        if off not in _READABLE and off not in (EOI, SELF_IPI) or off in (APR, RRD, DFR, ICR2):
            return False
        return self.write_reg(off, value)

    def _write_base(self, value: int) -> bool:
        """IA32_APIC_BASE (SDM 11.4.4, 11.12.5): EN and EXTD transitions; reserved bits #GP."""
        from hvsim.plugins.x86.paging import MAXPHYADDR

        writable = BASE_EXTD | BASE_EN | (((1 << MAXPHYADDR) - 1) & ~0xFFF)
        if value & ~(writable | BASE_BSP):
            return False
        new = (value & writable) | (self.base & BASE_BSP)
        old_state = (bool(self.base & BASE_EN), bool(self.base & BASE_EXTD))
        state = (bool(new & BASE_EN), bool(new & BASE_EXTD))
        # Invalid: EXTD without EN; x2APIC -> xAPIC; disabled -> x2APIC (Figure 11-27)
        if state == (False, True) or (old_state == (True, True) and state == (True, False)) or \
                (old_state == (False, False) and state == (True, True)):
            return False
        self.base = new
        if not state[0]:
            self.reset()  # a globally disabled APIC loses its state (SDM 11.4.3)
        elif state[1] and not old_state[1]:
            self._set(ID, self.index)  # x2APIC ID: the initial APIC ID (vCPU index)
            self._set(LDR, ((self.index >> 4) << 16) | (1 << (self.index & 0xF)))
        moved = getattr(self.vcpu, "apic_base_changed", None)
        if moved is not None:
            moved(new & ~0xFFF)
        return True
