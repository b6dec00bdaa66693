"""Generic timer virtualization (Arm ARM D12): the guest's virtual timer through CNTVOFF_EL2,
its CNTV_CTL/CVAL/TVAL_EL0 registers, and the virtual timer PPI (INTID 27) raised toward the
interrupt controller and taken at the guest's IRQ vector.

These VMs are built without an interrupt controller (``gic="none"``): the PPI is raised
straight at the vCPU as a virtual IRQ. With the GICv3 (the default) a guest must enable it
and acknowledge the level-sensitive PPI, see test_gic_timer.py."""

from __future__ import annotations

import pytest
from el2guest import SYSTEM_OFF, guest, log_records
from hvsim import hookimpl
from hvsim.core.exits import EventType
from hvsim.core.vm import STATUS_OFF
from hvsim.plugins.arm_el2 import el2, timer

CUR_SPX_IRQ = 0x280
TICKS_1MS = timer.CNTFRQ_HZ // 1000
TICKS = 20 * TICKS_1MS  # long enough that a loaded machine reads CNTV_CTL before it fires


class Acks:
    """Records every interrupt the guest took (``hvsim_interrupt_acknowledged``)."""

    def __init__(self) -> None:
        self.events = []

    @hookimpl
    def hvsim_interrupt_acknowledged(self, vcpu, event):
        self.events.append(event)


@pytest.fixture
def acks(hvsim_pm):
    a = Acks()
    hvsim_pm.register(a)
    return a


def x(vm, n: int) -> int:
    return vm.vcpus[0].xreg(n)


WAIT_FOR_TIMER = f"""
    movz x1, #{TICKS & 0xFFFF:#x}
    movk x1, #{TICKS >> 16:#x}, lsl #16
    msr cntv_tval_el0, x1           // fire in 20 ms
    mrs x4, cntv_ctl_el0            // not enabled yet: 0
    mov x1, #1
    msr cntv_ctl_el0, x1            // ENABLE, IMASK clear
    mrs x3, cntv_ctl_el0            // the condition is not met yet: 1
    mrs x7, cntvct_el0
    adr x23, after_wfi
    msr daifclr, #2
    wfi
after_wfi:
    mrs x6, cntv_ctl_el0            // ISTATUS: ENABLE | ISTATUS = 5
    mrs x8, cntvct_el0
    mrs x10, cntv_cval_el0
    mov x1, #3
    msr cntv_ctl_el0, x1            // IMASK: the line drops
    {SYSTEM_OFF}
"""


@pytest.mark.parametrize("twi", [True, False], ids=["TWI", "no-TWI"])
def test_the_virtual_timer_wakes_wfi_with_its_ppi_at_the_irq_vector(arm_vm, acks, twi):
    vm = arm_vm(guest(WAIT_FOR_TIMER), gic="none")
    if not twi:
        vm.vcpus[0].el2.HCR_EL2 &= ~el2.HCR_TWI
    result = vm.run(timeout=10)
    assert result.status == STATUS_OFF
    [(vector, _esr, elr, _far, _spsr)] = log_records(vm, 1)
    assert (vector, elr) == (CUR_SPX_IRQ, x(vm, 23))  # taken when WFI ended
    [event] = acks.events
    assert (event.type, event.vector) == (EventType.VIRTUAL_IRQ, timer.INTID_CNTV)
    assert (x(vm, 4), x(vm, 3), x(vm, 6)) == (0, 1, 5)
    assert 0 < x(vm, 10) - x(vm, 7) <= TICKS  # CVAL = the count at the TVAL write + 20 ms
    assert x(vm, 8) >= x(vm, 10)  # the IRQ came at or after CVAL
    assert x(vm, 8) - x(vm, 7) < 200 * TICKS_1MS  # and not a whole slice late


def test_the_timer_fires_while_the_guest_computes(arm_vm, acks):
    """No WFI: the slice is cut at the deadline, the IRQ taken between two instructions."""
    main = f"""
    movz x1, #{TICKS_1MS:#x}
    msr cntv_tval_el0, x1
    mov x1, #1
    msr cntv_ctl_el0, x1
    movz x19, #0x4120, lsl #16
    msr daifclr, #2
spin:
    ldr x2, [x19]                   // the handler's log record
    cbz x2, spin
    mrs x6, cntv_ctl_el0
    {SYSTEM_OFF}
    """
    vm = arm_vm(guest(main), gic="none")
    assert vm.run(timeout=10).status == STATUS_OFF
    assert log_records(vm, 1)[0][0] == CUR_SPX_IRQ
    assert [e.vector for e in acks.events] == [timer.INTID_CNTV]


def test_a_masked_timer_sets_istatus_without_an_interrupt(arm_vm, acks):
    main = "msr cntv_cval_el0, xzr\nmov x1, #3\nmsr cntv_ctl_el0, x1\nmrs x6, cntv_ctl_el0\nmsr daifclr, #2\nnop\n" + SYSTEM_OFF
    vm = arm_vm(guest(main), gic="none")
    vm.run(timeout=5)
    assert x(vm, 6) == 7  # ENABLE | IMASK | ISTATUS
    assert acks.events == []


def test_tval_reads_cval_minus_the_virtual_count(arm_vm):
    main = ("movz x1, #0x4000, lsl #16\nmsr cntv_tval_el0, x1\nmrs x5, cntv_tval_el0\nmrs x8, cntpct_el0\nmrs x6, cntvct_el0\n"
            "mrs x7, cntv_cval_el0\n" + SYSTEM_OFF)
    vm = arm_vm(guest(main), gic="none")
    vm.vcpus[0].el2.CNTVOFF_EL2 = 1 << 30
    vm.run(timeout=5)
    tval, vct, cval = x(vm, 5), x(vm, 6), x(vm, 7)
    assert 0 < 0x4000_0000 - tval < 100 * TICKS_1MS  # counting down
    assert (cval - vct) & 0xFFFF_FFFF <= tval
    assert 0 <= vct - (x(vm, 8) - (1 << 30)) < 100 * TICKS_1MS  # behind CNTPCT_EL0 by CNTVOFF_EL2


def test_the_timer_ppi_goes_through_the_inject_hook(arm_vm, hvsim_pm):
    """An interrupt-controller plugin receives the PPI: it is not queued on the vCPU then."""
    raised = []

    class Gic:
        @hookimpl(tryfirst=True)
        def hvsim_inject_event(self, vcpu, event):
            raised.append((vcpu.index, event.vector))
            return True

    hvsim_pm.register(Gic())
    main = "msr cntv_cval_el0, xzr\nmov x1, #1\nmsr cntv_ctl_el0, x1\nmsr daifclr, #2\nnop\nnop\n" + SYSTEM_OFF
    vm = arm_vm(guest(main), gic="none")
    vm.run(timeout=5)
    assert raised == [(0, timer.INTID_CNTV)]
    assert log_records(vm, 1)[0] == (0, 0, 0, 0, 0)


def test_a_timer_armed_in_the_past_interrupts_right_after_the_write(arm_vm, acks):
    """CVAL already reached when CTL enables it: ISTATUS at once, and the IRQ is taken as the
    engine leaves the translation block of the MSR, not when the slice would have ended."""
    main = f"""
    movz x19, #0x4120, lsl #16
    mov x22, #0
    msr daifclr, #2
    msr cntv_cval_el0, xzr
    mov x1, #1
    msr cntv_ctl_el0, x1
spin:
    add x22, x22, #1                // iterations before the interrupt
    ldr x2, [x19]
    cbz x2, spin
    {SYSTEM_OFF}
    """
    vm = arm_vm(guest(main), gic="none")
    assert vm.run(timeout=10).status == STATUS_OFF
    assert [e.vector for e in acks.events] == [timer.INTID_CNTV]
    assert x(vm, 22) <= 2  # (a slice would have been ~10^8 iterations)
