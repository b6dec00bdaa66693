"""The generic timer as the guest sees it at EL1: the virtual and the EL1 physical timer.

Arm ARM (DDI 0487) D12 "The Generic Timer in AArch64 state": the counter CNTPCT_EL0 counts at
CNTFRQ_EL0; the virtual count is CNTVCT_EL0 = CNTPCT_EL0 - CNTVOFF_EL2 (D12.1.2); each timer
has CNTx_CVAL_EL0 (compare value), CNTx_TVAL_EL0 (a signed 32-bit view of CVAL - count) and
CNTx_CTL_EL0 with ENABLE (bit 0), IMASK (bit 1) and ISTATUS (bit 2, read-only): the timer
condition is met when count - CVAL >= 0 (the count is at or past CVAL, unsigned), ISTATUS is
ENABLE and the condition, and the timer's interrupt output is ISTATUS and not IMASK
(D12.2.4 "Timers"). The interrupts are the PPIs of Linux's arm,armv8-timer binding: virtual
timer INTID 27, EL1 physical timer INTID 30.

What Unicorn does (measured): CNTPCT_EL0 and CNTVCT_EL0 read the host's CLOCK_MONOTONIC in
16 ns ticks (CNTFRQ_EL0 = 62.5 MHz) and honour the engine's CNTVOFF_EL2, so the guest reads
its counters natively; writes to the CNTV_*/CNTP_* registers are ignored and no timer
interrupt is ever raised. So hvsim models the timers themselves: their registers' MRS/MSR
are hooked where the guest's code has them (:mod:`.traps`, bounded hooks, no exit), and the
vCPU evaluates the condition when it enters the guest, when a slice ends, and when a timer
register is written; a slice never runs past the next deadline.

The interrupt output is a level-sensitive PPI of the vGIC (:mod:`.gic`): the line follows
ISTATUS and not IMASK, and the vGIC delivers it through a list register while it is high and
enabled. In a VM built without an interrupt controller (``gic="none"``) the output goes
through ``vm.inject`` (the ``hvsim_inject_event`` hook) as a virtual IRQ carrying the INTID
(``Event.vector``), queued on the vCPU and taken at its IRQ vector when PSTATE.I is clear; a
line that drops again before the guest took it is withdrawn, and it is raised once per rising
edge (not again while it stays high).
CNTHCTL_EL2's event stream (EVNTEN) and CNTKCTL_EL1's EL0 access controls are not modelled:
EL0 reaches the emulated timer registers as EL1 does.
"""

from __future__ import annotations


from hvsim.core.exits import Event, EventType

from . import sysregs as sr

CNTx_CTL_ENABLE = 1 << 0
CNTx_CTL_IMASK = 1 << 1
CNTx_CTL_ISTATUS = 1 << 2

INTID_CNTV = 27  # virtual timer PPI (PPI 11)
INTID_CNTP = 30  # EL1 physical timer PPI (PPI 14)
INTID_CNTHP = 26  # EL2 physical timer (hvsim's own, not the guest's)
INTID_CNTPS = 29  # secure physical timer

CNTFRQ_HZ = 62_500_000  # what the engine's CNTFRQ_EL0 reads (QEMU's default)
_NS_PER_TICK = 1_000_000_000 // CNTFRQ_HZ  # 16
_MASK64 = (1 << 64) - 1


def cntpct(clock) -> int:
    """CNTPCT_EL0 now: ``clock`` (a VM's, core/clock.py) in 16 ns ticks. By default that is
    CLOCK_MONOTONIC, the engine's own counter; in deterministic mode it is virtual, and the
    guest's CNTPCT_EL0 / CNTVCT_EL0 reads are served from it (:class:`Timers`)."""
    return clock.now_ns() // _NS_PER_TICK


_LINE_HIGH = Event(EventType.VIRTUAL_IRQ)  # marks a line high at the vGIC


class Timer:
    """One EL1 timer of one vCPU: CNTx_CTL_EL0 and CNTx_CVAL_EL0, and its interrupt line."""

    __slots__ = ("name", "intid", "vcpu", "ctl", "cval", "virtual", "_event")

    def __init__(self, vcpu, name: str, intid: int, virtual: bool) -> None:
        self.vcpu = vcpu
        self.name = name
        self.intid = intid
        self.virtual = virtual
        self.ctl = 0  # ENABLE and IMASK; their reset value is UNKNOWN, hvsim starts disabled
        self.cval = 0
        self._event: Event | None = None  # the IRQ raised while the line is high

    def offset(self) -> int:
        return self.vcpu.el2.CNTVOFF_EL2 if self.virtual else 0

    def count(self) -> int:
        return (cntpct(self.vcpu.clock) - self.offset()) & _MASK64

    def istatus(self, count: int | None = None) -> bool:
        if not self.ctl & CNTx_CTL_ENABLE:
            return False
        return (self.count() if count is None else count) >= self.cval

    # -- the registers, as MRS/MSR see them ---------------------------------------------------
    def read_ctl(self) -> int:
        return self.ctl | (CNTx_CTL_ISTATUS if self.istatus() else 0)

    def write_ctl(self, value: int) -> None:
        self.ctl = value & (CNTx_CTL_ENABLE | CNTx_CTL_IMASK)  # ISTATUS is read-only
        self.vcpu.timer_changed()

    def read_cval(self) -> int:
        return self.cval

    def write_cval(self, value: int) -> None:
        self.cval = value & _MASK64
        self.vcpu.timer_changed()

    def read_tval(self) -> int:
        return (self.cval - self.count()) & 0xFFFF_FFFF

    def write_tval(self, value: int) -> None:
        tval = value & 0xFFFF_FFFF
        tval -= (tval & 0x8000_0000) << 1  # TVAL is a signed 32-bit value
        self.cval = (self.count() + tval) & _MASK64
        self.vcpu.timer_changed()

    # -- the interrupt line ----------------------------------------------------------------
    def deadline_ns(self) -> int | None:
        """The host CLOCK_MONOTONIC time (ns) at which the line rises, if it is armed."""
        if self.ctl & (CNTx_CTL_ENABLE | CNTx_CTL_IMASK) != CNTx_CTL_ENABLE or self._event is not None:
            return None
        return ((self.cval + self.offset()) & _MASK64) * _NS_PER_TICK

    def update(self) -> bool:
        """Raise or withdraw the interrupt as the line now is; True when it was raised now."""
        high = not self.ctl & CNTx_CTL_IMASK and self.istatus()
        vcpu = self.vcpu
        gic = vcpu.vgic
        if gic is not None:  # a level-sensitive PPI of the vGIC
            if high == (self._event is not None):
                return False
            self._event = _LINE_HIGH if high else None
            gic.set_level(vcpu.index, self.intid, high)
            return high
        if high and self._event is None:
            self._event = Event(EventType.VIRTUAL_IRQ, vector=self.intid)
            vcpu.vm.inject(vcpu, self._event)
            return True
        if not high and self._event is not None:
            for i, e in enumerate(vcpu.events):  # not taken yet: a level that dropped
                if e is self._event:
                    del vcpu.events[i]
                    break
            self._event = None
        return False


class Timers:
    """A vCPU's virtual and EL1 physical timers, with their registers emulated."""

    def __init__(self, vcpu) -> None:
        self.virtual = Timer(vcpu, "CNTV", INTID_CNTV, virtual=True)
        self.physical = Timer(vcpu, "CNTP", INTID_CNTP, virtual=False)
        self.all = (self.virtual, self.physical)
        traps = vcpu.sysreg_traps
        for t, ctl, cval, tval in ((self.virtual, sr.CNTV_CTL_EL0, sr.CNTV_CVAL_EL0, sr.CNTV_TVAL_EL0),
                                   (self.physical, sr.CNTP_CTL_EL0, sr.CNTP_CVAL_EL0, sr.CNTP_TVAL_EL0)):
            traps.emulate(ctl, t.read_ctl, t.write_ctl)
            traps.emulate(cval, t.read_cval, t.write_cval)
            traps.emulate(tval, t.read_tval, t.write_tval)
        if vcpu.clock.deterministic:  # the engine's counter follows the host: serve the VM's
            clock = vcpu.clock
            traps.emulate(sr.CNTPCT_EL0, lambda: cntpct(clock))
            traps.emulate(sr.CNTVCT_EL0, self.virtual.count)

    def poll(self) -> bool:
        """Update both lines; True when an interrupt was raised."""
        raised = False
        for t in self.all:
            raised |= t.update()
        return raised

    def next_deadline_ns(self) -> int | None:
        deadlines = [d for d in (t.deadline_ns() for t in self.all) if d is not None]
        return min(deadlines) if deadlines else None
