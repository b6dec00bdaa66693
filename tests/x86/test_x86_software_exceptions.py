"""Software exceptions and software interrupts under the exception intercepts, on both vendors.

INT3 (CC) and INTO (CE) raise #BP / #OF as software exceptions (VMX interruption type 6), INT1 /
ICEBP (F1) raises #DB as a privileged software exception (type 5); INT n (CD ib), INT 3 encoded
CD 03 included, is a software interrupt (type 4), which no exception bitmap bit or exception
intercept catches. An intercepted software exception names the instruction: RIP at it, and its
length (VMX VM-exit instruction length, SDM 28.2.5; SVM nRIP past it, APM 15.7.1), which is how
a VMM (KVM's __vmx_complete_interrupts / svm_update_soft_interrupt_rip) re-injects it.
"""

from __future__ import annotations

import pytest

from eventvmm import END, Script, Vmm, label, store_labels
from guestlib import X86_DATA, X86_IDT, X86_STACK, x86_64, x86_idt_setup
from hvsim.plugins.amd_svm.vmcb import Event as SvmEvent
from hvsim.plugins.intel_vtx.vmcs import Field

VALID = 1 << 31


@pytest.fixture(params=["intel_vtx", "amd_svm"])
def arch(request):
    return request.param


def intercept_exceptions(vm, bits: int) -> None:
    vcpu = vm.vcpus[0]
    if vm.arch.name == "intel_vtx":
        Vmm(vcpu).write(Field.EXCEPTION_BITMAP, bits)
    else:
        vcpu.context.vmcb.write("INTERCEPT_EXCEPTIONS", bits)


def guest(insn: str, vector: int) -> str:
    """Label 0 is the instruction, label 1 the one after it; the handler stores the return
    address it was given and ends the run with status 0x33."""
    return f"""
        mov rsp, {X86_STACK}
        {store_labels('at', 'after')}
        {x86_idt_setup({vector: 'handler'})}
    at:
        {insn}
    after:
        mov byte ptr [{X86_DATA:#x}], 0x11
        {END}
    handler:
        mov rax, [rsp]
        mov [{X86_DATA + 8:#x}], rax
        mov byte ptr [{X86_DATA:#x}], 0x33
        {END}"""


def reinject(vmm, exit) -> None:
    """What KVM does with an intercepted #BP / #DB it does not want: give it back to the guest.
    VMX: the exit's interruption information as the VM-entry one, with the VM-exit instruction
    length as the VM-entry instruction length. SVM: EVENTINJ of the exception, the return
    address being the exit's NRIP (INT3) or RIP moved past the instruction (ICEBP)."""
    if vmm.intel:
        vmm.write(Field.VM_ENTRY_INTR_INFO_FIELD, exit.raw.VM_EXIT_INTR_INFO)
        vmm.write(Field.VM_ENTRY_INSTRUCTION_LEN, exit.raw.VM_EXIT_INSTRUCTION_LEN)
    elif exit.raw.NRIP:  # #BP: RIP stays at the INT3, the exit's NRIP is pushed by VMRUN
        vmm.vcpu.context.vmcb.eventinj = SvmEvent(exit.vector, 3)
    else:  # ICEBP's #DB (no NRIP): a trap, so RIP past the instruction, an ordinary exception
        vmm.set_rip(vmm.rip() + 1)
        vmm.vcpu.context.vmcb.eventinj = SvmEvent(exit.vector, 3)


def test_an_intercepted_int3_exits_at_the_instruction_and_the_reinjected_bp_returns_past_it(make_vm, hvsim_pm, arch):
    vmm = Script(on_exception=reinject)
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(guest("int3", 3)))
    intercept_exceptions(vm, 1 << 3)
    assert vm.run(timeout=10).status == (0x33 << 1) | 1
    ((exit, rip, _),) = vmm.exceptions
    assert rip == label(vm, 0) and exit.vector == 3 and exit.size == 1
    if arch == "intel_vtx":
        r = exit.raw
        assert r.EXIT_REASON == 0 and r.VM_EXIT_INTR_INFO == VALID | 6 << 8 | 3  # type 6, no error code
        assert r.VM_EXIT_INSTRUCTION_LEN == 1
    else:
        assert (exit.raw.EXITCODE, exit.raw.EXITINFO1, exit.raw.NRIP) == (0x43, 0, label(vm, 1))
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 1)  # the #BP trap's return address


def test_an_intercepted_int3_the_vmm_does_not_handle_reaches_the_guest_as_a_trap(make_vm, arch, recorder):
    """hvsim's own VMM reflects an exception it intercepted only to watch: the guest's #BP
    handler still gets the address after the INT3."""
    vm = make_vm(arch)
    vm.load(x86_64(guest("int3", 3)))
    intercept_exceptions(vm, 1 << 3)
    assert vm.run(timeout=10).status == (0x33 << 1) | 1
    assert [e.vector for e in recorder.exits if e.vector] == [3]
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 1)


def test_int_3_encoded_cd_03_is_a_software_interrupt_no_exception_intercept_catches(make_vm, hvsim_pm, arch):
    """SDM 25.2 / APM 15.12: the exception bitmap and exception intercepts apply to exceptions;
    INT n is a software interrupt even with n = 3 (the INTn intercept is SVM's way to catch it)."""
    vmm = Script(on_exception=reinject)
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(guest("int 3", 3)))
    intercept_exceptions(vm, 1 << 3)
    assert vm.run(timeout=10).status == (0x33 << 1) | 1
    assert vmm.exceptions == []
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 1)


def test_an_intercepted_icebp_is_a_privileged_software_exception(make_vm, hvsim_pm, arch):
    """INT1 / ICEBP (F1): #DB, type 5 under VMX with instruction length 1; under SVM (the ICEBP
    intercept off, #DB intercepted) EXCP1 at the instruction with no nRIP. Re-injected, the
    guest's #DB handler gets the address after it."""
    vmm = Script(on_exception=reinject)
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(guest(".byte 0xf1", 1)))
    intercept_exceptions(vm, 1 << 1)
    assert vm.run(timeout=10).status == (0x33 << 1) | 1
    ((exit, rip, _),) = vmm.exceptions
    assert rip == label(vm, 0) and exit.vector == 1
    if arch == "intel_vtx":
        assert exit.raw.VM_EXIT_INTR_INFO == VALID | 5 << 8 | 1 and exit.raw.VM_EXIT_INSTRUCTION_LEN == 1
    else:
        assert (exit.raw.EXITCODE, exit.raw.NRIP) == (0x41, 0)
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 1)


def test_an_exit_during_an_int_n_delivery_names_the_int_instruction(make_vm, hvsim_pm, arch):
    """INT 0x30 through a not-present gate, #NP intercepted: the exit records the software
    interrupt being delivered (VMX IDT-vectoring type 4, SVM EXITINTINFO type 4) with RIP at the
    INT instruction and, under VMX, its length 2 (SDM 28.2.5), so the VMM can make the gate
    present and re-inject it (VMX type 4 with VM-entry instruction length 2; SVM EVENTINJ type 4
    with NRIP past the INT, the return address VMRUN pushes); the handler returns past it."""
    def fix_and_reinject(vmm, exit):
        vm.memory.write(X86_IDT + 16 * 0x30 + 5, b"\x8e")  # present the gate
        if vmm.intel:
            seen.append((vmm.read(Field.IDT_VECTORING_INFO_FIELD), vmm.read(Field.VM_EXIT_INSTRUCTION_LEN)))
            vmm.write(Field.VM_ENTRY_INTR_INFO_FIELD, VALID | 4 << 8 | 0x30)
            vmm.write(Field.VM_ENTRY_INSTRUCTION_LEN, 2)
        else:  # KVM with NRIP save: RIP stays at the INT, NRIP is the return address
            seen.append((exit.raw.EXITINTINFO, exit.raw.NRIP))
            vmm.vcpu.context.vmcb.write("NRIP", vmm.rip() + 2)
            vmm.vcpu.context.vmcb.eventinj = SvmEvent(0x30, 4)

    seen = []
    vmm = Script(on_exception=fix_and_reinject)
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    src = guest("int 0x30", 0x30).replace("        mov byte ptr [{X86_DATA:#x}], 0x11", "")
    src = src.replace("    at:", f"        mov byte ptr [{X86_IDT + 16 * 0x30 + 5:#x}], 0x0e\n    at:")  # P = 0
    vm.load(x86_64(src))
    intercept_exceptions(vm, 1 << 11)
    assert vm.run(timeout=10).status == (0x33 << 1) | 1
    ((exit, rip, _),) = vmm.exceptions
    assert exit.vector == 11 and rip == label(vm, 0)
    if arch == "intel_vtx":
        assert exit.raw.VM_EXIT_INTR_ERROR_CODE == 0x30 << 3 | 2  # IDT, not external
        assert seen == [(VALID | 4 << 8 | 0x30, 2)]
    else:
        assert exit.raw.EXITCODE == 0x4B and exit.raw.EXITINFO1 == 0x30 << 3 | 2
        assert seen == [(VALID | 4 << 8 | 0x30, 0)]
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 1)
