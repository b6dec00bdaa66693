"""What the VMM programs in the VMCS / VMCB decides what the guest sees, on both vendors:
event injection at entry, the HLT and CPUID intercepts, the MSR permission maps."""

from __future__ import annotations

import pytest

from guestlib import X86_DATA, X86_STACK, x86_64, x86_idt_setup
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.plugins.amd_svm import iopm
from hvsim.plugins.amd_svm.vmcb import Event as SvmEvent
from hvsim.plugins.intel_vtx import msrs
from hvsim.plugins.intel_vtx.vmcs import Field

END = "mov al, 0\nout 0xf4, al\nhlt"


def inject(vcpu, vector: int, kind: str, error_code: int | None = None) -> None:
    """What a VMM writes to inject an event at the next entry."""
    if vcpu.vm.arch.name == "intel_vtx":
        types = {"external": 0, "exception": 3}
        info = (1 << 31) | types[kind] << 8 | vector | ((1 << 11) if error_code is not None else 0)
        vmx = vcpu.context.vmx
        assert vmx.vmwrite(Field.VM_ENTRY_INTR_INFO_FIELD, info).ok
        if error_code is not None:
            assert vmx.vmwrite(Field.VM_ENTRY_EXCEPTION_ERROR_CODE, error_code).ok
    else:
        types = {"external": 0, "exception": 3}
        vcpu.context.vmcb.eventinj = SvmEvent(vector, types[kind], error_code is not None, True, error_code or 0)


class InjectOnHlt:
    """A VMM that answers the guest's HLT by injecting an event for the next entry."""

    def __init__(self, vector, kind, error_code=None):
        self.args = (vector, kind, error_code)

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        registry.add(ExitKind.HALT, lambda vcpu, exit: inject(vcpu, *self.args))


@pytest.fixture(params=["intel_vtx", "amd_svm"])
def arch(request):
    return request.param


GUEST = f"""
    mov rsp, {X86_STACK}
    {x86_idt_setup({0x20: 'irq', 13: 'gp'})}
    sti                               # VMX: an external interrupt is injected only with IF = 1
    hlt
    mov al, byte ptr [{X86_DATA:#x}]
    out 0xf4, al
    hlt
irq:
    mov byte ptr [{X86_DATA:#x}], 0x21
    mov rax, [rsp]
    mov [{X86_DATA + 8:#x}], rax
    iretq
gp:
    mov byte ptr [{X86_DATA:#x}], 0x0d
    mov rax, [rsp]
    mov [{X86_DATA + 16:#x}], rax
    add rsp, 8
    iretq
"""


def test_an_injected_external_interrupt_is_delivered_at_the_next_entry(make_vm, hvsim_pm, arch):
    hvsim_pm.register(InjectOnHlt(0x20, "external"))
    vm = make_vm(arch)
    vm.load(x86_64(GUEST))
    result = vm.run(timeout=10)
    assert result.status == (0x21 << 1) | 1, result.reason  # the handler ran; the guest went on
    assert vm.memory.read(vm.memory.read_u64(X86_DATA + 8) - 1, 1) == b"\xf4"  # returns after HLT


def test_an_injected_exception_pushes_its_error_code(make_vm, hvsim_pm, arch):
    hvsim_pm.register(InjectOnHlt(13, "exception", error_code=0x1234))
    vm = make_vm(arch)
    vm.load(x86_64(GUEST))
    assert vm.run(timeout=10).status == (0x0D << 1) | 1
    assert vm.memory.read_u64(X86_DATA + 16) == 0x1234


def clear_hlt_intercept(vcpu):
    if vcpu.vm.arch.name == "intel_vtx":
        vmx = vcpu.context.vmx
        proc = vmx.vmread(Field.CPU_BASED_VM_EXEC_CONTROL).value
        assert vmx.vmwrite(Field.CPU_BASED_VM_EXEC_CONTROL, proc & ~msrs.CPU_BASED_HLT_EXITING).ok
    else:
        vcpu.context.vmcb.set_intercept("HLT", False)


def test_without_hlt_exiting_the_guest_halts_without_an_exit(make_vm, arch):
    vm = make_vm(arch)
    vm.load(x86_64(f"mov rsp, {X86_STACK}\ncli\nhlt\n{END}"))
    clear_hlt_intercept(vm.vcpus[0])
    result = vm.run(timeout=10)
    assert result.status == 6  # halted with interrupts off: nothing will wake it
    assert not any("HLT" in reason for reason in vm.stats.counts())


def test_svm_cpuid_without_its_intercept_is_answered_by_the_processor(make_vm):
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nxor eax, eax\ncpuid\nmov [{X86_DATA:#x}], ebx\n{END}"))
    vm.vcpus[0].context.vmcb.set_intercept("CPUID", False)
    vm.run(timeout=10)
    assert "VMEXIT_CPUID" not in vm.stats.counts()
    assert vm.memory.read(X86_DATA, 4) != b"Auth"  # the engine's own CPU model, not hvsim's


def test_an_msr_the_bitmap_passes_through_is_modelled_without_an_exit(make_vm, arch):
    vm = make_vm(arch)
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nmov ecx, 0x1b\nrdmsr\nmov [{X86_DATA:#x}], eax\n{END}"))
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        bitmap = vcpu.context.vmx.vmread(Field.MSR_BITMAP).value
        vm.host.write(bitmap + 0x1B // 8, b"\x00")  # reads of IA32_APIC_BASE: no exit
    else:
        iopm.msrpm_set(vm.host, vcpu.context.msrpm_pa, 0x1B, read=False)
    vm.run(timeout=10)
    assert vm.memory.read_u32(X86_DATA) == 0xFEE0_0900
    assert all("MSR" not in reason for reason in vm.stats.counts())


def intercept_ud(vcpu):
    if vcpu.vm.arch.name == "intel_vtx":
        assert vcpu.context.vmx.vmwrite(Field.EXCEPTION_BITMAP, 1 << 6).ok
    else:
        vcpu.context.vmcb.write("INTERCEPT_EXCEPTIONS", 1 << 6)


class SkipUd:
    """A VMM that emulates UD2 as a no-op: it moves the guest RIP past it in the VMCS / VMCB."""

    def __init__(self):
        self.exits = []

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def on_exception(vcpu, exit):
            self.exits.append(exit)
            if vm.arch.name == "intel_vtx":
                rip = vcpu.context.vmx.vmread(Field.GUEST_RIP).value
                assert vcpu.context.vmx.vmwrite(Field.GUEST_RIP, rip + 2).ok
            else:
                vcpu.context.vmcb.write("RIP", vcpu.context.vmcb.read("RIP") + 2)

        registry.add(ExitKind.EXCEPTION, on_exception)


UD_GUEST = f"""
    mov rsp, {X86_STACK}
    {x86_idt_setup({6: 'ud'})}
    ud2
    mov byte ptr [{X86_DATA + 1:#x}], 1
    {END}
ud:
    mov byte ptr [{X86_DATA:#x}], 1
    add qword ptr [rsp], 2
    iretq
"""


def test_an_intercepted_exception_exits_with_the_vendors_record_instead_of_reaching_the_guest(
        make_vm, hvsim_pm, arch):
    vmm = SkipUd()
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(UD_GUEST))
    intercept_ud(vm.vcpus[0])
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read(X86_DATA, 2) == b"\x00\x01"  # the guest's #UD handler never ran
    (exit,) = vmm.exits
    if arch == "intel_vtx":
        assert exit.reason == "EXIT_REASON_EXCEPTION_NMI" and exit.raw.EXIT_REASON == 0
        assert exit.raw.VM_EXIT_INTR_INFO == (1 << 31) | (3 << 8) | 6  # valid, hardware exception, #UD
    else:
        assert exit.reason == "VMEXIT_EXCP6" and exit.raw.EXITCODE == 0x46


def test_an_intercepted_exception_the_vmm_only_watches_still_reaches_the_guest(make_vm, recorder, arch):
    vm = make_vm(arch)
    vm.load(x86_64(UD_GUEST))
    intercept_ud(vm.vcpus[0])
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read(X86_DATA, 2) == b"\x01\x01"  # reflected into the guest's own handler
    assert len(recorder.of(ExitKind.EXCEPTION)) == 1


def test_page_fault_error_code_mask_and_match_decide_whether_a_pf_exits(make_vm, recorder):
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {x86_idt_setup({14: 'pf'})}
        mov rax, 0x100000000
        mov rbx, [rax]                    # a read fault: error code 0, does not match
        mov [rax], rbx                    # a write fault: W matches, exits
        {END}
    pf:
        add rsp, 8
        add qword ptr [rsp], 3
        iretq"""))
    vmx = vm.vcpus[0].context.vmx
    # Bit 14 set with mask = W, match = W: only write faults exit (SDM 25.2).
    for field, value in ((Field.EXCEPTION_BITMAP, 1 << 14), (Field.PAGE_FAULT_ERROR_CODE_MASK, 2),
                         (Field.PAGE_FAULT_ERROR_CODE_MATCH, 2)):
        assert vmx.vmwrite(field, value).ok
    vm.run(timeout=10)
    (pf,) = recorder.of(ExitKind.EXCEPTION)
    assert pf.raw.VM_EXIT_INTR_ERROR_CODE == 2 and pf.raw.EXIT_QUALIFICATION == 0x1_0000_0000
