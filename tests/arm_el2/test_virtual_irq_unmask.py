"""A virtual IRQ pending while masked is taken when the guest unmasks it, not at the next entry.

Arm ARM (DDI 0487) D1.3.6: with HCR_EL2.IMO set, HCR_EL2.VI makes a virtual IRQ pending; it is
taken as soon as PSTATE.I is clear, so after MSR DAIFClr, #2 the next instruction is not
executed: the IRQ vector is (ELR_EL1 = that instruction).
"""

from __future__ import annotations

import pytest
from unicorn.arm64_const import UC_ARM64_REG_X23

from el2guest import SYSTEM_OFF, guest, log_records, w0
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.core.vm import STATUS_OFF
from hvsim.plugins.arm_el2 import el2, psci

HVC_RAISE_VI, HVC_CLEAR_VI = 0x8600_00C0, 0x8600_00C1
CUR_SPX_IRQ = 0x280


class VirtualLine:
    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def on_hvc(vcpu, exit):
            fid = vcpu.smccc_x0 & 0xFFFF_FFFF
            if fid == HVC_RAISE_VI:
                vcpu.el2.HCR_EL2 |= el2.HCR_VI
            elif fid == HVC_CLEAR_VI:
                vcpu.el2.HCR_EL2 &= ~el2.HCR_VI
            else:
                return psci.handle_hvc(vcpu, exit)
            vcpu.smccc_return(0)

        registry.add(ExitKind.HYPERCALL, on_hvc)


@pytest.mark.parametrize("unmask", ["msr daifclr, #2", "msr daif, xzr"])
def test_a_pending_vi_is_taken_right_after_the_guest_unmasks_irqs(arm_vm, hvsim_pm, unmask):
    hvsim_pm.register(VirtualLine(), name="virtual-line")
    vm = arm_vm(guest(f"""
    {w0(HVC_RAISE_VI)}
    hvc #0
    mov x5, #1
    adr x20, handled
    adr x23, next
    {unmask}
next:
    mov x5, #2
handled:
    {w0(HVC_CLEAR_VI)}
    hvc #0
    {SYSTEM_OFF}"""))
    assert vm.run(timeout=5).status == STATUS_OFF
    [(vector, _esr, elr, _far, spsr)] = log_records(vm, 1)
    assert vector == CUR_SPX_IRQ and elr == vm.vcpus[0].regs.read(UC_ARM64_REG_X23)
    assert spsr & (1 << 7) == 0  # taken with PSTATE.I clear, as the unmask left it
    assert vm.vcpus[0].xreg(5) == 1  # the instruction after the unmask never ran
