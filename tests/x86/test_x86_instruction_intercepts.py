"""Sensitive instructions exit only when the VMM's controls say so (SDM 25.1, APM 15.9), with
the vendor's record, and complete as the processor would unless the VMM emulated them."""

from __future__ import annotations

import pytest
from unicorn import x86_const as X

from guestlib import X86_DATA, X86_STACK, x86_64
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.plugins.intel_vtx import msrs
from hvsim.plugins.intel_vtx.vmcs import Field

END = "mov al, 0\nout 0xf4, al\nhlt"


@pytest.fixture(params=["intel_vtx", "amd_svm"])
def arch(request):
    return request.param


def set_proc(vcpu, bits=0, clear=0, proc2=0):
    vmx = vcpu.context.vmx
    proc = vmx.vmread(Field.CPU_BASED_VM_EXEC_CONTROL).value
    assert vmx.vmwrite(Field.CPU_BASED_VM_EXEC_CONTROL, (proc | bits) & ~clear).ok
    if proc2:
        old = vmx.vmread(Field.SECONDARY_VM_EXEC_CONTROL).value
        assert vmx.vmwrite(Field.SECONDARY_VM_EXEC_CONTROL, old | proc2).ok


def intercept(vcpu, kind):
    if vcpu.vm.arch.name == "intel_vtx":
        set_proc(vcpu, **{"rdtsc": {"bits": msrs.CPU_BASED_RDTSC_EXITING},
                          "invlpg": {"bits": msrs.CPU_BASED_INVLPG_EXITING},
                          "wbinvd": {"proc2": msrs.SECONDARY_EXEC_WBINVD_EXITING},
                          "invd": {}}[kind])
    else:
        vcpu.context.vmcb.set_intercept(kind.upper())


def boot(make_vm, arch, src):
    vm = make_vm(arch)
    vm.load(x86_64(f"mov rsp, {X86_STACK}\n{src}\n{END}"))
    return vm


class EmulateRdtsc:
    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def on_instruction(vcpu, exit):
            vcpu.regs.write(X.UC_X86_REG_RAX, 0x1111)
            vcpu.regs.write(X.UC_X86_REG_RDX, 0x2222)
            exit.value = True  # emulated: skip the instruction

        registry.add(ExitKind.INSTRUCTION, on_instruction)


def test_rdtsc_exits_only_when_intercepted_and_the_vmm_can_emulate_it(make_vm, hvsim_pm, recorder, arch):
    hvsim_pm.register(EmulateRdtsc())
    src = f"rdtsc\nmov [{X86_DATA:#x}], eax\nmov [{X86_DATA + 4:#x}], edx"
    vm = boot(make_vm, arch, src)
    vm.run(timeout=10)
    assert not recorder.of(ExitKind.INSTRUCTION)  # no RDTSC exiting: the guest reads the TSC itself
    vm = boot(make_vm, arch, src)
    intercept(vm.vcpus[0], "rdtsc")
    vm.run(timeout=10)
    assert vm.memory.read_u32(X86_DATA) == 0x1111 and vm.memory.read_u32(X86_DATA + 4) == 0x2222
    (exit,) = recorder.of(ExitKind.INSTRUCTION)
    if arch == "intel_vtx":
        assert exit.reason == "EXIT_REASON_RDTSC" and exit.raw.EXIT_REASON == 16
        assert exit.raw.VM_EXIT_INSTRUCTION_LEN == 2
    else:
        assert exit.reason == "VMEXIT_RDTSC" and exit.raw.EXITCODE == 0x6E
        assert vm.memory.read(exit.raw.NRIP - 2, 2) == b"\x0f\x31"


def test_invlpg_exit_reports_the_linear_address(make_vm, recorder, arch):
    vm = boot(make_vm, arch, "mov rax, 0x5000\ninvlpg [rax + 0x10]")
    intercept(vm.vcpus[0], "invlpg")
    assert vm.run(timeout=10).status == 1
    (exit,) = recorder.of(ExitKind.INSTRUCTION)
    if arch == "intel_vtx":
        assert exit.raw.EXIT_REASON == 14 and exit.raw.EXIT_QUALIFICATION == 0x5010
    else:
        assert exit.raw.EXITCODE == 0x79 and exit.raw.EXITINFO1 == 0x5010


@pytest.mark.parametrize("kind,opcode", [("wbinvd", "wbinvd"), ("invd", "invd")])
def test_cache_instructions_exit_under_their_controls(make_vm, recorder, arch, kind, opcode):
    vm = boot(make_vm, arch, opcode)
    if not (arch == "intel_vtx" and kind == "invd"):  # INVD always exits in VMX non-root operation
        vm.run(timeout=10)
        assert not recorder.of(ExitKind.INSTRUCTION)
        vm = boot(make_vm, arch, opcode)
        intercept(vm.vcpus[0], kind)
    vm.run(timeout=10)
    (exit,) = recorder.of(ExitKind.INSTRUCTION)
    expected = {("intel_vtx", "wbinvd"): 54, ("intel_vtx", "invd"): 13, ("amd_svm", "wbinvd"): 0x89,
                ("amd_svm", "invd"): 0x76}[arch, kind]
    assert (exit.raw.EXIT_REASON if arch == "intel_vtx" else exit.raw.EXITCODE) == expected


def test_mov_to_cr3_exits_with_the_register_in_the_record_except_for_cr3_target_values(make_vm, recorder, arch):
    src = "mov rbx, cr3\nmov cr3, rbx"
    vm = boot(make_vm, arch, src)
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        set_proc(vcpu, bits=msrs.CPU_BASED_CR3_LOAD_EXITING)
    else:
        vcpu.context.vmcb.write("INTERCEPT_CR_WRITE", 1 << 3)
    vm.run(timeout=10)
    (exit,) = recorder.of(ExitKind.INSTRUCTION)
    if arch == "intel_vtx":
        assert exit.reason == "EXIT_REASON_CR_ACCESS"
        assert exit.raw.EXIT_QUALIFICATION == 3 | 0 << 4 | 3 << 8  # CR3, MOV to CR, from RBX
        vm = boot(make_vm, arch, src)
        vcpu = vm.vcpus[0]
        set_proc(vcpu, bits=msrs.CPU_BASED_CR3_LOAD_EXITING)
        vmx = vcpu.context.vmx
        assert vmx.vmwrite(Field.CR3_TARGET_COUNT, 1).ok
        assert vmx.vmwrite(Field.CR3_TARGET_VALUE0, vcpu.regs.read(X.UC_X86_REG_CR3)).ok
        recorder.exits.clear()
        vm.run(timeout=10)
        assert not recorder.of(ExitKind.INSTRUCTION)  # a CR3-target value: no exit (SDM 25.1.3)
    else:
        assert exit.reason == "VMEXIT_CR3_WRITE" and exit.raw.EXITINFO1 == 1 << 63 | 3  # decode assist: RBX


def test_vmx_mov_to_cr0_exits_when_it_changes_a_bit_the_vmm_owns(make_vm, recorder):
    vm = boot(make_vm, "intel_vtx", "mov rax, cr0\nmov cr0, rax\nor rax, 0x20\nmov cr0, rax")
    vm.run(timeout=10)
    (exit,) = recorder.of(ExitKind.INSTRUCTION)  # only the write that sets NE (owned, shadow has it 0)
    assert exit.raw.EXIT_QUALIFICATION == 0 | 0 << 4 | 0 << 8  # CR0, MOV to CR, from RAX


@pytest.mark.parametrize("arch,insn,expected", [
    ("intel_vtx", "vmxoff", 26), ("intel_vtx", "vmlaunch", 20), ("intel_vtx", "vmresume", 24),
    ("amd_svm", "vmrun", 0x80), ("amd_svm", "stgi", 0x84), ("amd_svm", "clgi", 0x85),
])
def test_a_virtualization_instruction_the_guest_executes_exits_then_is_ud(make_vm, recorder, arch, insn, expected):
    """VMX instructions always exit in VMX non-root operation (SDM 26.1.2); VMRUN's intercept is
    always set (APM 15.5.1) and hvsim's VMCB sets STGI/CLGI... when asked. The guest sees no
    VMX/SVM, so after the exit it gets #UD (as KVM without nested virtualization)."""
    from guestlib import x86_idt_setup

    vm = make_vm(arch)
    encoded = ".byte 0x0f, 0x01, 0xd8" if insn == "vmrun" else insn  # keystone wants VMRUN's rAX spelled out
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {x86_idt_setup({6: 'ud'})}
        {encoded}
        mov al, byte ptr [{X86_DATA:#x}]
        out 0xf4, al
        hlt
    ud:
        mov byte ptr [{X86_DATA:#x}], 6
        add qword ptr [rsp], 3
        iretq"""))
    if arch == "amd_svm" and insn != "vmrun":
        vm.vcpus[0].context.vmcb.set_intercept(insn.upper())
    assert vm.run(timeout=10).status == (6 << 1) | 1
    (exit,) = recorder.of(ExitKind.INSTRUCTION)
    assert (exit.raw.EXIT_REASON if arch == "intel_vtx" else exit.raw.EXITCODE) == expected


def test_the_other_vendors_virtualization_instructions_are_plain_ud(make_vm, recorder):
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\n.byte 0x0f, 0x01, 0xd8\n{END}"))  # VMRUN
    vm.run(timeout=10)  # no IDT: #UD -> triple fault, but never a VM exit for VMRUN on Intel
    assert not recorder.of(ExitKind.INSTRUCTION)
