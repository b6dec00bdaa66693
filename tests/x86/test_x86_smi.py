"""System-management interrupts in a guest (APM 15.13.2 "SMI intercept"; SDM 34.14.1 "Default
Treatment of SMIs"): with SVM's SMI intercept the SMI is #VMEXIT 0x62 with EXITINFO1/2 = 0 and
leaves the guest's queue (the host's SMM takes it once GIF is set again); without the intercept,
and always under VMX (hvsim's IA32_VMX_BASIC[49] offers no dual-monitor treatment, so exit
reasons 5 and 6 never occur), SMM takes it and RSM resumes the guest: nothing changes for it."""

from __future__ import annotations

import pytest

from eventvmm import Script, label
from guestlib import X86_DATA, x86_64
from hvsim.core.exits import Event, EventType
from hvsim.plugins.intel_vtx import msrs

from test_x86_event_exits import CLI_GUEST


@pytest.fixture(params=["intel_vtx", "amd_svm"])
def arch(request):
    return request.param


def test_svm_smi_intercept_is_vmexit_smi_at_the_next_boundary(make_vm, hvsim_pm):
    def arm(vmm):
        vmm.vcpu.context.vmcb.set_intercept("SMI")
        vmm.vcpu.inject(Event(EventType.SMI))

    in_vmcb = []
    vmm = Script(arm, on_event=lambda vmm, exit: in_vmcb.append(vmm.vcpu.context.vmcb.read("EXITCODE")))
    hvsim_pm.register(vmm)
    vm = make_vm("amd_svm")
    vm.load(x86_64(CLI_GUEST))
    assert vm.run(timeout=10).status == 1
    ((exit, rip, _shadow),) = vmm.events
    assert exit.reason == "VMEXIT_SMI" and exit.raw.EXITCODE == 0x62
    assert exit.raw.EXITINFO1 == 0 and exit.raw.EXITINFO2 == 0
    assert in_vmcb == [0x62]  # what the VMM's handler reads in the VMCB
    assert rip == label(vm, 0)  # recognised at the boundary after the HLT, before `after`
    assert not vm.vcpus[0].events and vm.vcpus[0].smis_taken == 0
    assert vm.memory.read(X86_DATA + 1, 1) == b"\x01"  # the guest went on after the exit


def test_smi_without_an_intercept_is_taken_by_smm_and_invisible_to_the_guest(make_vm, hvsim_pm, arch):
    vmm = Script(lambda vmm: vmm.vcpu.inject(Event(EventType.SMI)))
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(CLI_GUEST))
    assert vm.run(timeout=10).status == 1
    assert vmm.events == []  # no exit: neither VMX (default treatment) nor SVM without the intercept
    assert vm.vcpus[0].smis_taken == 1 and not vm.vcpus[0].events
    assert vm.memory.read(X86_DATA, 2) == b"\x00\x01"  # no IDT delivery; the guest ran on


def test_vmx_offers_no_dual_monitor_treatment():
    from hvsim.plugins.intel_vtx.vmx import VmxCapabilities

    assert not VmxCapabilities().msrs[msrs.IA32_VMX_BASIC] & msrs.VMX_BASIC_DUAL_MONITOR
