"""The SDM 26.2.1.1 checks on the posted-interrupt controls (VMfailValid, VM-instruction error 7),
and a run whose VMM breaks an APICv rule: one line naming the rule, never a traceback."""

from __future__ import annotations

import pytest

from guestlib import X86_STACK, x86_64
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.plugins.intel_vtx import entry, msrs
from hvsim.plugins.intel_vtx.vmcs import Field
from hvsim.plugins.intel_vtx.vmx import Status

DESC, VIRTUAL_APIC = 0xB000, 0x9000


@pytest.fixture(autouse=True)
def enforce_every_check(monkeypatch):
    monkeypatch.setattr(entry, "NOT_ENFORCED", {})


def w(vmx, **fields):
    for name, value in fields.items():
        assert vmx.vmwrite(getattr(Field, name), value).ok, name


def control(vmx, name, *bits):
    value = vmx.vmread(getattr(Field, name)).value
    for bit in bits:
        value |= bit
    w(vmx, **{name: value})


def tpr_shadow(vmx):
    control(vmx, "CPU_BASED_VM_EXEC_CONTROL", msrs.CPU_BASED_TPR_SHADOW)
    w(vmx, VIRTUAL_APIC_PAGE_ADDR=VIRTUAL_APIC)
    vmx.memory.write(VIRTUAL_APIC + 0x80, bytes([0xF0]))


def secondary(vmx, *bits):
    control(vmx, "CPU_BASED_VM_EXEC_CONTROL", msrs.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS)
    control(vmx, "SECONDARY_VM_EXEC_CONTROL", *bits)


def enters(vmx):
    result = vmx.vmlaunch()
    assert result.status is Status.ENTERED, (result, vmx.last_entry_failure)


def invalid_control(vmx, check):
    result = vmx.vmlaunch()
    assert result.status is Status.FAIL_VALID and result.error == 7, (result, vmx.last_entry_failure)
    assert vmx.vmread(Field.VM_INSTRUCTION_ERROR).value == 7
    assert f"[{check}]" in vmx.last_entry_failure, vmx.last_entry_failure


def posted(vmx, nv=0xF2, desc=DESC, vid=True, ack=True):
    tpr_shadow(vmx)
    control(vmx, "PIN_BASED_VM_EXEC_CONTROL", msrs.PIN_BASED_EXT_INTR_MASK, msrs.PIN_BASED_POSTED_INTR)
    if vid:
        secondary(vmx, msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY)
    if ack:
        control(vmx, "VM_EXIT_CONTROLS", msrs.VM_EXIT_ACK_INTR_ON_EXIT)
    w(vmx, POSTED_INTR_NV=nv, POSTED_INTR_DESC_ADDR=desc)


def test_posted_interrupts_with_their_requirements_enter(vmx):
    posted(vmx)
    enters(vmx)


def test_posted_interrupts_without_virtual_interrupt_delivery_is_invalid_control_field(vmx):
    posted(vmx, vid=False)
    invalid_control(vmx, "posted_interrupts_without_virtual_interrupt_delivery")


def test_posted_interrupts_without_acknowledge_interrupt_on_exit_is_invalid_control_field(vmx):
    posted(vmx, ack=False)
    invalid_control(vmx, "posted_interrupts_without_acknowledge_interrupt_on_exit")


def test_notification_vector_bits_15_8_set_is_invalid_control_field(vmx):
    posted(vmx, nv=0x1F2)
    invalid_control(vmx, "posted_interrupt_notification_vector")


@pytest.mark.parametrize("desc", [DESC + 0x20, 1 << 40])
def test_descriptor_not_64_byte_aligned_or_beyond_maxphyaddr_is_invalid_control_field(vmx, desc):
    posted(vmx, desc=desc)
    invalid_control(vmx, "posted_interrupt_descriptor_address")


def test_a_run_whose_vmm_sets_vid_without_external_interrupt_exiting_ends_with_one_line(make_vm, hvsim_pm):
    class Vmm:
        @hookimpl
        def hvsim_exit_handlers(self, vm, registry):
            def hlt(vcpu, exit):
                vmx = vcpu.context.vmx
                from hvsim.plugins.intel_vtx.vmcs import Field

                proc = vmx.vmread(Field.CPU_BASED_VM_EXEC_CONTROL).value
                vmx.vmwrite(Field.CPU_BASED_VM_EXEC_CONTROL, proc | msrs.CPU_BASED_TPR_SHADOW)
                proc2 = vmx.vmread(Field.SECONDARY_VM_EXEC_CONTROL).value
                vmx.vmwrite(Field.SECONDARY_VM_EXEC_CONTROL, proc2 | msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY)
            registry.add(ExitKind.HALT, hlt)

    hvsim_pm.register(Vmm())
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nhlt\nhlt"))
    result = vm.run(timeout=10)
    assert result.status == 4 and "\n" not in result.reason
    assert "external-interrupt exiting" in result.reason, result.reason
