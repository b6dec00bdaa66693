"""SVM virtual interrupts without AVIC (APM 15.21): V_IRQ asked for from an exit the engine
completes, the VINTR intercept (exit 0x64) at the window, and EXITINTINFO for an event whose
delivery an intercepted exception (#GP for a bad IDT gate) interrupted."""

from __future__ import annotations

from eventvmm import Script
from guestlib import X86_DATA, X86_STACK, x86_64, x86_idt_setup
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.plugins.amd_svm.vmcb import Event as SvmEvent

END = f"mov al, byte ptr [{X86_DATA:#x}]\nout 0xf4, al\nhlt"


def test_v_irq_requested_in_a_port_exit_is_taken_in_the_window_without_a_vmrun(make_vm, hvsim_pm):
    class Vmm:
        @hookimpl
        def hvsim_vm_exit(self, vcpu, exit):
            if exit.kind is ExitKind.PORT_IO and exit.address == 0x80:
                vcpu.context.request_vintr(0x41)

    hvsim_pm.register(Vmm())
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {x86_idt_setup({0x41: 'irq'})}
        mov byte ptr [{X86_DATA + 0x20:#x}], 1
        out 0x80, al
        jmp window
    window:
        mov byte ptr [{X86_DATA + 0x20:#x}], 2
        sti
        nop
        mov byte ptr [{X86_DATA + 0x20:#x}], 3
        mov byte ptr [{X86_DATA:#x}], 1
        {END}
    irq:
        movzx eax, byte ptr [{X86_DATA + 0x20:#x}]
        mov byte ptr [{X86_DATA + 0x21:#x}], al
        iretq"""))
    result = vm.run(timeout=10)
    assert result.status == 3, result
    assert vm.memory.read(X86_DATA + 0x21, 1) == b"\x02"  # after STI's shadow, before the next store
    assert vm.vcpus[0].context.vmcb.read("V_IRQ") == 0  # taken: the processor cleared it
    assert vm.stats.counts().get("VMEXIT_VINTR", 0) == 0


def test_vintr_intercept_exits_when_the_guest_opens_the_window(make_vm, hvsim_pm):
    seen = []

    def arm(vmm):
        ctx = vmm.vcpu.context
        ctx.vmcb.set_intercept("VINTR")
        ctx.request_vintr(0x41, ignore_tpr=True)

    def on_window(vmm, exit):
        seen.append((exit.raw.EXITCODE, vmm.rip()))
        vmm.vcpu.context.vmcb.write("V_IRQ", 0)
        vmm.vcpu.context.vmcb.set_intercept("VINTR", False)

    hvsim_pm.register(Script(arm, on_window=on_window))
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        cli
        hlt
        nop
        sti
        nop
        mov byte ptr [{X86_DATA:#x}], 1
        {END}"""))
    result = vm.run(timeout=10)
    assert result.status == 3, result
    assert len(seen) == 1 and seen[0][0] == 0x64


def test_exitintinfo_records_the_injected_event_an_intercepted_gp_interrupted(make_vm, hvsim_pm):
    seen = []

    def arm(vmm):
        vmcb = vmm.vcpu.context.vmcb
        vmcb.write("INTERCEPT_EXCEPTIONS", vmcb.read("INTERCEPT_EXCEPTIONS") | 1 << 13)
        vmcb.eventinj = SvmEvent(0x41, 0)  # gate 0x41 is all zeros (type 0): #GP while delivering it

    def on_exception(vmm, exit):
        vmcb = vmm.vcpu.context.vmcb
        seen.append((vmcb.read("EXITCODE"), vmcb.read("EXITINFO1"), vmcb.read("EXITINTINFO")))
        vmm.vcpu.vm.stop(3, "seen")

    hvsim_pm.register(Script(arm, on_exception=on_exception))
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {x86_idt_setup({0x20: 'irq'})}
        hlt
        nop
        {END}
    irq:
        iretq"""))
    vm.run(timeout=10)
    # #VMEXIT(EXCP13), error code: IDT, index 0x41 (EXT set: an external event); EXITINTINFO:
    # vector 0x41, type 0 (external interrupt), valid (15.7.2)
    assert seen and seen[0][0] == 0x40 + 13
    assert seen[0][1] == 0x41 << 3 | 2 | 1
    assert seen[0][2] == 0x41 | 1 << 31
