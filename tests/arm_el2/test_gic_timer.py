"""The virtual timer through the GICv3: a guest brings the GIC up (GICR_WAKER, GICD_CTLR, the
ICC_* CPU interface), programs CNTV periodically and counts ticks, acknowledging each with
ICC_IAR1_EL1 and ending it with ICC_EOIR1_EL1. The PPI (INTID 27) is level-sensitive: it
reaches the guest through a list register with the HW bit, and the guest's IAR/EOI are served
by the virtual CPU interface without an exit."""

from __future__ import annotations

import pytest
from el2guest import SYSTEM_OFF
from gicguest import (DATA, GIC_ON, ICC_EOIR1_EL1, ICC_IAR1_EL1, ICC_RPR_EL1, UNEXPECTED, enable_ppi, gic_guest,
                      gicr_of, mov32)
from hvsim.core.vm import STATUS_HALTED_FOREVER, STATUS_OFF, STATUS_TIMEOUT
from hvsim.plugins.arm_el2 import timer

PERIOD = timer.CNTFRQ_HZ // 1000  # 1 ms
TICKS = 20


def tick_guest(ticks: int = TICKS, rearm: str = "msr cntv_tval_el0, x1", period: int = PERIOD) -> bytes:
    return gic_guest(f"""
    mov x0, #0
    {gicr_of("x0")}
    {GIC_ON}
    {enable_ppi(27)}
    {mov32("x25", DATA)}
    mov x19, #0                     // ticks
    mov x22, #0                     // spurious IAR reads
    {mov32("x1", period)}
    msr cntv_tval_el0, x1
    mov x1, #1
    msr cntv_ctl_el0, x1
    msr daifclr, #2
wait:
    wfi
    cmp x19, #{ticks}
    b.lt wait
    msr daifset, #2
    msr cntv_ctl_el0, xzr
    {SYSTEM_OFF}
irq:
    mrs x0, {ICC_IAR1_EL1}
    cmp x0, #1023
    b.eq spurious
    mrs x3, {ICC_RPR_EL1}
    str x3, [x25, #8]               // the running priority while handling
    str x0, [x25]                   // the INTID
    add x19, x19, #1
    cmp x19, #{ticks}
    b.ge last_tick
    {mov32("x1", period)}
    {rearm}
    b end_tick
last_tick:
    msr cntv_ctl_el0, xzr           // the last tick: no more (the line drops)
end_tick:
    msr {ICC_EOIR1_EL1}, x0
    mrs x3, {ICC_RPR_EL1}
    str x3, [x25, #16]              // idle again after EOI
    eret
spurious:
    add x22, x22, #1
    eret
""")


@pytest.mark.parametrize("twi", [True, False], ids=["TWI", "no-TWI"])
def test_the_guest_counts_virtual_timer_ticks_through_the_gic(arm_vm, twi):
    vm = arm_vm(tick_guest())
    if not twi:
        from hvsim.plugins.arm_el2 import el2
        vm.vcpus[0].el2.HCR_EL2 &= ~el2.HCR_TWI
    result = vm.run(timeout=20)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    cpu = vm.vcpus[0]
    assert cpu.xreg(19) == TICKS
    assert vm.memory.read_u64(DATA) == 27
    assert vm.memory.read_u64(DATA + 8) == 0xA0  # RPR: the acknowledged interrupt's priority
    assert vm.memory.read_u64(DATA + 16) == 0xFF  # RPR after EOI: idle
    # the ACKs and EOIs were served by the virtual CPU interface: no exits for them
    assert cpu.gic_cpuif.accesses >= 4 * TICKS
    assert "ESR_ELx_EC_SYS64" not in vm._by_reason


def test_a_disabled_ppi_is_not_delivered_and_wfi_does_not_wake(arm_vm):
    """ISENABLER not written: the timer fires but the vGIC delivers nothing, so the guest's WFI
    is not woken by it (every vCPU halted: the run ends, or times out)."""
    image = gic_guest(f"""
    mov x0, #0
    {gicr_of("x0")}
    {GIC_ON}
    {mov32("x1", PERIOD)}
    msr cntv_tval_el0, x1
    mov x1, #1
    msr cntv_ctl_el0, x1
    msr daifclr, #2
idle:
    wfi                             // may complete spuriously (Arm ARM): wait again
    b idle
irq:
    mov x19, #2
    {SYSTEM_OFF}
""")
    vm = arm_vm(image)
    result = vm.run(timeout=1)
    assert result.status in (STATUS_HALTED_FOREVER, STATUS_TIMEOUT)
    assert vm.vcpus[0].xreg(19) == 0
    ppi = vm.arch.vgic.irq(0, 27)
    assert ppi.pending and not ppi.enabled  # the line is high at the redistributor


def test_ich_hcr_tall1_traps_the_guests_ack_and_eoi_to_el2(arm_vm, hvsim_pm):
    """ICH_HCR_EL2.TALL1: every group-1 ICC_* access of the guest is a SYSREG exit (EC 0x18
    with the register's encoding), then performed; the ticks are counted as before."""
    from hvsim import hookimpl
    from hvsim.core.exits import ExitKind
    from hvsim.plugins.arm_el2 import traps
    from hvsim.plugins.arm_el2 import vcpuif as ci

    seen = []

    class Log:
        @hookimpl
        def hvsim_vm_exit(self, vcpu, exit):
            if exit.kind is ExitKind.SYSREG:
                seen.append((exit.address, exit.is_write, exit.raw.ESR_EL2))

    hvsim_pm.register(Log())
    vm = arm_vm(tick_guest(ticks=5))
    ich = vm.vcpus[0].gic_cpuif
    ich.write("ICH_HCR_EL2", ich.read("ICH_HCR_EL2") | ci.ICH_HCR_TALL1)
    result = vm.run(timeout=20)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    assert vm.vcpus[0].xreg(19) == 5
    iar1, eoir1, igrpen1 = (traps.sys_reg(3, 0, 12, 12, 0), traps.sys_reg(3, 0, 12, 12, 1),
                            traps.sys_reg(3, 0, 12, 12, 7))
    assert sum(1 for a, w, _ in seen if a == iar1 and not w) >= 5
    assert sum(1 for a, w, _ in seen if a == eoir1 and w) == 5
    assert any(a == igrpen1 for a, _, _ in seen)  # the bring-up's ICC_IGRPEN1_EL1 write
    esr = next(e for a, w, e in seen if a == iar1)
    assert esr >> 26 == 0x18 and esr & 1 == 1  # EC 0x18, Direction 1: a read
    assert esr >> 5 & 31 == 0  # Rt = X0


def test_a_level_still_high_after_eoi_is_taken_again(arm_vm):
    """The handler does not re-arm the timer, so the PPI's line stays high through the EOI:
    the interrupt is pending again at once and taken again, until the guest turns the timer
    off on the third (the line drops). A level-sensitive interrupt, re-sampled after the
    HW-mapped LR's deactivation."""
    image = tick_guest(ticks=3, rearm="nop")  # ticks 1 and 2 leave the line high
    vm = arm_vm(image)
    result = vm.run(timeout=10)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    assert vm.vcpus[0].xreg(19) == 3
    assert vm.vcpus[0].xreg(22) == 0  # never a spurious acknowledge
