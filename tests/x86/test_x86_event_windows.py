"""Events at exact instruction boundaries on both vendors (SDM 6.8.3, 25.2, 26.7; APM 15.21):
the STI / MOV SS shadow, interrupt windows (VMX interrupt-window exiting, SVM V_IRQ + VINTR),
queued interrupts taken the instruction after the shadow ends, the interruptibility state saved
on exit and honoured on entry."""

from __future__ import annotations

import pytest

from eventvmm import END, Script, Vmm, label, store_labels
from guestlib import X86_DATA, X86_STACK, x86_64, x86_idt_setup
from hvsim.core.exits import Event, EventType
from hvsim.plugins.intel_vtx.vmcs import Field

@pytest.fixture(params=["intel_vtx", "amd_svm"])
def arch(request):
    return request.param


IRQ_HANDLER = f"""
irq:
    mov byte ptr [{X86_DATA:#x}], 0x21
    mov rax, [rsp]
    mov [{X86_DATA + 8:#x}], rax
    iretq
"""

# cli; HLT exit (the VMM arms the window); a loop with IF = 0; STI; one shadowed instruction;
# label 0 is where the window opens.
STI_GUEST = f"""
    mov rsp, {X86_STACK}
    {store_labels('window')}
    {x86_idt_setup({0x20: 'irq'})}
    cli
    hlt
    mov ecx, 50
spin:
    dec ecx
    jnz spin
    sti
    mov byte ptr [{X86_DATA + 1:#x}], 1
window:
    mov byte ptr [{X86_DATA + 2:#x}], 2
    {END}
{IRQ_HANDLER}
"""


def test_the_interrupt_window_opens_one_instruction_after_sti(make_vm, hvsim_pm, arch):
    def on_window(vmm, exit):
        seen.append(vmm.vcpu.vm.memory.read(X86_DATA + 1, 2))
        if vmm.intel:  # the VMM clears the control and injects; SVM takes V_IRQ itself
            vmm.arm_interrupt_window(on=False)
            vmm.inject_external(0x20)
        else:
            vmm.vcpu.context.vmcb.set_intercept("VINTR", False)

    seen = []
    vmm = Script(lambda v: v.arm_interrupt_window(), on_window=on_window)
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(STI_GUEST))
    result = vm.run(timeout=10)
    assert result.status == (0x21 << 1) | 1, result.reason
    (exit, rip, shadow, rflags), = vmm.windows
    if arch == "intel_vtx":
        assert exit.reason == "EXIT_REASON_INTERRUPT_WINDOW" and exit.raw.EXIT_REASON == 7
    else:
        assert exit.reason == "VMEXIT_VINTR" and exit.raw.EXITCODE == 0x64
        assert vm.vcpus[0].context.vmcb.read("V_IRQ") == 0  # taken: the processor cleared V_IRQ
    assert rip == label(vm, 0)  # after the shadowed instruction, not after the STI
    assert seen == [b"\x01\x00"]
    assert shadow == 0 and rflags & (1 << 9)
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 0)  # the frame the handler saw


def test_a_queued_interrupt_is_taken_after_the_sti_shadow_not_inside_it(make_vm, hvsim_pm, arch):
    """No window controls: an interrupt queued while IF = 0 is delivered at the first boundary
    where IF = 1 and the shadow is over, found by hooks on STI (the old inaccuracy)."""
    vmm = Script(lambda v: v.vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, 0x20)))
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(STI_GUEST))
    assert vm.run(timeout=10).status == (0x21 << 1) | 1
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 0)
    assert vmm.windows == []


POPF_GUEST = f"""
    mov rsp, {X86_STACK}
    {store_labels('window')}
    {x86_idt_setup({0x20: 'irq'})}
    cli
    hlt
    pushfq
    or qword ptr [rsp], 0x200
    popfq
window:
    mov byte ptr [{X86_DATA + 2:#x}], 2
    {END}
{IRQ_HANDLER}
"""


def test_popf_setting_if_opens_the_window_at_the_next_instruction(make_vm, hvsim_pm, arch):
    vmm = Script(lambda v: v.vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, 0x20)))
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(POPF_GUEST))
    assert vm.run(timeout=10).status == (0x21 << 1) | 1
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 0)  # POPF makes no shadow


IRET_GUEST = f"""
    mov rsp, {X86_STACK}
    {store_labels('window')}
    {x86_idt_setup({0x20: 'irq', 0x30: 'soft'})}
    cli
    hlt
    int 0x30                          # the handler's IRET restores IF = 1 from a doctored frame
window:
    mov byte ptr [{X86_DATA + 2:#x}], 2
    {END}
soft:
    or qword ptr [rsp + 16], 0x200
    iretq
{IRQ_HANDLER}
"""


def test_iret_restoring_if_opens_the_window_at_its_return_address(make_vm, hvsim_pm, arch):
    vmm = Script(lambda v: v.vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, 0x20)))
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(IRET_GUEST))
    assert vm.run(timeout=10).status == (0x21 << 1) | 1
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 0)


def test_with_the_window_already_open_the_exit_comes_before_any_instruction(make_vm, hvsim_pm, arch):
    def on_window(vmm, exit):
        vmm.arm_interrupt_window(on=False)

    vmm = Script(lambda v: v.arm_interrupt_window(), on_window=on_window)
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {store_labels('after')}
        sti
        nop
        hlt
    after:
        mov byte ptr [{X86_DATA:#x}], 3
        {END}"""))
    assert vm.run(timeout=10).status == (3 << 1) | 1
    ((_exit, rip, _shadow, _flags),) = vmm.windows
    assert rip == label(vm, 0)


def test_an_interrupt_shadow_the_vmm_sets_at_entry_delays_the_window_by_one_instruction(
        make_vm, hvsim_pm, arch):
    def arm(vmm):
        vmm.arm_interrupt_window()
        if vmm.intel:
            vmm.write(Field.GUEST_INTERRUPTIBILITY_INFO, 1)  # blocking by STI (IF is 1)
        else:
            vmm.vcpu.context.vmcb.write("INTERRUPT_SHADOW", 1)

    def on_window(vmm, exit):
        vmm.arm_interrupt_window(on=False)

    vmm = Script(arm, on_window=on_window)
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {store_labels('second')}
        sti
        nop
        hlt
        mov byte ptr [{X86_DATA:#x}], 3
    second:
        {END}"""))
    assert vm.run(timeout=10).status == (3 << 1) | 1
    ((_exit, rip, shadow, _flags),) = vmm.windows
    assert rip == label(vm, 0) and shadow == 0


@pytest.mark.parametrize("shadowing, vmx_bit", [("sti", 1), ("mov ax, ss\nmov ss, ax", 2)])
def test_an_exit_inside_the_shadow_saves_the_blocking_state(make_vm, hvsim_pm, arch, shadowing, vmx_bit):
    def skip(vmm, exit):
        vmm.set_rip(vmm.rip() + 2)

    vmm = Script(on_exception=skip)
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        cli
        {shadowing}
        ud2
        mov byte ptr [{X86_DATA:#x}], 4
        {END}"""))
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        Vmm(vcpu).write(Field.EXCEPTION_BITMAP, 1 << 6)
    else:
        vcpu.context.vmcb.write("INTERCEPT_EXCEPTIONS", 1 << 6)
    assert vm.run(timeout=10).status == (4 << 1) | 1
    ((_exit, _rip, shadow),) = vmm.exceptions
    assert shadow == (vmx_bit if arch == "intel_vtx" else 1)


def svm_virtual_interrupt(vmcb, vector, prio, tpr, ign_tpr=0):
    vmcb.write("V_IRQ", 1)
    vmcb.write("V_INTR_VECTOR", vector)
    vmcb.write("V_INTR_PRIO", prio)
    vmcb.write("V_TPR", tpr)
    vmcb.write("V_IGN_TPR", ign_tpr)


@pytest.mark.parametrize("prio, tpr, ign_tpr, taken", [(4, 3, 0, True), (3, 3, 0, False), (2, 3, 0, False),
                                                       (2, 3, 1, True)])
def test_svm_v_irq_is_taken_only_above_v_tpr_unless_v_ign_tpr(make_vm, hvsim_pm, prio, tpr, ign_tpr, taken):
    vmm = Script(lambda v: svm_virtual_interrupt(v.vcpu.context.vmcb, 0x20, prio, tpr, ign_tpr))
    hvsim_pm.register(vmm)
    vm = make_vm("amd_svm")
    vm.load(x86_64(STI_GUEST))
    status = vm.run(timeout=10).status
    vmcb = vm.vcpus[0].context.vmcb
    if taken:
        assert status == (0x21 << 1) | 1 and vmcb.read("V_IRQ") == 0
        assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 0)
    else:
        assert status == 1 and vmcb.read("V_IRQ") == 1  # still pending, never taken


def test_once_nothing_waits_no_window_hook_is_left_on_the_guest_code(make_vm, hvsim_pm, arch):
    """The STI/POPF/IRET hooks exist only while an event waits: afterwards those instructions run
    at the engine's speed again (the scanner only records where they are)."""
    hvsim_pm.register(Script(lambda v: v.vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, 0x20))))
    vm = make_vm(arch)
    vm.load(x86_64(STI_GUEST))
    assert vm.run(timeout=10).status == (0x21 << 1) | 1
    watch = vm.vcpus[0]._watch
    assert watch.sites and not watch._hooks and not watch.kinds


ORDER_GUEST = f"""
    mov rsp, {X86_STACK}
    {x86_idt_setup({0x20: 'irq20', 0x30: 'irq30'})}
    sti
    hlt
    nop
    {END}
irq20:
    mov al, 0x20
    jmp record
irq30:
    mov al, 0x30
record:
    movzx rbx, byte ptr [{X86_DATA + 0x20:#x}]
    mov byte ptr [rbx + {X86_DATA + 0x21:#x}], al
    inc byte ptr [{X86_DATA + 0x20:#x}]
    iretq
"""


def test_vmx_the_interrupt_window_exit_comes_before_a_pending_external_interrupt(make_vm, hvsim_pm):
    """SDM 26.7.5: interrupt-window exits take priority over external interrupts."""
    def arm(vmm):
        vmm.arm_interrupt_window()
        vmm.vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, 0x20))

    def on_window(vmm, exit):
        order.append(("window", bytes(vm.memory.read(X86_DATA + 0x20, 1))))
        vmm.arm_interrupt_window(on=False)

    order = []
    hvsim_pm.register(Script(arm, on_window=on_window))
    vm = make_vm("intel_vtx")
    vm.load(x86_64(ORDER_GUEST))
    vm.run(timeout=10)
    assert order == [("window", b"\x00")]  # nothing delivered yet when the window exit came
    assert vm.memory.read(X86_DATA + 0x20, 2) == b"\x01\x20"  # then the interrupt


def test_svm_a_physical_interrupt_is_taken_before_the_virtual_one(make_vm, hvsim_pm):
    """APM 15.21.4: V_IRQ has lower priority than physical interrupts."""
    def arm(vmm):
        vmcb = vmm.vcpu.context.vmcb
        for name, value in (("V_IRQ", 1), ("V_IGN_TPR", 1), ("V_INTR_VECTOR", 0x30)):
            vmcb.write(name, value)
        vmm.vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, 0x20))

    hvsim_pm.register(Script(arm))
    vm = make_vm("amd_svm")
    vm.load(x86_64(ORDER_GUEST))
    vm.run(timeout=10)
    # 0x20 first; 0x30 then at the first boundary with IF = 1, which is after 0x20's IRETQ.
    assert vm.memory.read(X86_DATA + 0x20, 3) == b"\x02\x20\x30"
