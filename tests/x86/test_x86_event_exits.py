"""Events the VMM intercepts, on both vendors (SDM 25.2, 27.2.2-27.2.4; APM 15.12, 15.13,
15.7.2): external interrupts (VMX reason 1 with acknowledge-interrupt-on-exit / SVM INTR), NMIs
(reason 0 type NMI / SVM NMI) and NMI blocking until IRET, virtual NMIs and the NMI window, INIT,
triple fault as an exit the VMM decides on, and the event being delivered when an exception
interrupted its delivery (IDT-vectoring information / EXITINTINFO)."""

from __future__ import annotations

import pytest

from eventvmm import END, Script, Vmm, label, store_labels
from guestlib import X86_DATA, X86_IDT, X86_STACK, x86_64, x86_idt_setup
from hvsim import hookimpl
from hvsim.core.exits import Event, EventType, ExitKind
from hvsim.plugins.intel_vtx import msrs
from hvsim.plugins.intel_vtx.vmcs import Field

VALID, DELIVER_CODE = 1 << 31, 1 << 11


@pytest.fixture(params=["intel_vtx", "amd_svm"])
def arch(request):
    return request.param


def queue(event_type, vector=0):
    return lambda vmm: vmm.vcpu.inject(Event(event_type, vector))


# IF = 0 throughout: an interrupt exits anyway when the VMM intercepts it (VMX; SVM with
# V_INTR_MASKING), right at the boundary after the HLT.
CLI_GUEST = f"""
    mov rsp, {X86_STACK}
    {store_labels('after')}
    {x86_idt_setup({0x20: 'irq'})}
    cli
    hlt
after:
    mov byte ptr [{X86_DATA + 1:#x}], 1
    {END}
irq:
    mov byte ptr [{X86_DATA:#x}], 0x21
    iretq
"""


@pytest.mark.parametrize("ack", [True, False])
def test_vmx_external_interrupt_exiting_exits_even_with_if_clear(make_vm, hvsim_pm, ack):
    def arm(vmm):
        vmm.set_pin(msrs.PIN_BASED_EXT_INTR_MASK)
        controls = vmm.read(Field.VM_EXIT_CONTROLS)
        vmm.write(Field.VM_EXIT_CONTROLS, controls | msrs.VM_EXIT_ACK_INTR_ON_EXIT if ack
                  else controls & ~msrs.VM_EXIT_ACK_INTR_ON_EXIT)
        vmm.vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, 0x20))

    vmm = Script(arm)
    hvsim_pm.register(vmm)
    vm = make_vm("intel_vtx")
    vm.load(x86_64(CLI_GUEST))
    assert vm.run(timeout=10).status == 1  # the guest's handler never ran
    ((exit, rip, _shadow),) = vmm.events
    assert exit.reason == "EXIT_REASON_EXTERNAL_INTERRUPT" and exit.raw.EXIT_REASON == 1
    assert rip == label(vm, 0)
    assert exit.raw.VM_EXIT_INTR_INFO == (VALID | 0x20 if ack else 0)  # type 0 (external interrupt), vector 0x20
    assert not vm.vcpus[0].events  # the host took it


@pytest.mark.parametrize("v_intr_masking, exits_at", [(1, "after"), (0, "never")])
def test_svm_intr_intercept_and_v_intr_masking(make_vm, hvsim_pm, v_intr_masking, exits_at):
    def arm(vmm):
        vmcb = vmm.vcpu.context.vmcb
        vmcb.set_intercept("INTR")
        vmcb.write("V_INTR_MASKING", v_intr_masking)
        vmm.vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, 0x20))

    vmm = Script(arm)
    hvsim_pm.register(vmm)
    vm = make_vm("amd_svm")
    vm.load(x86_64(CLI_GUEST))
    assert vm.run(timeout=10).status == 1
    if exits_at == "never":  # the guest's RFLAGS.IF = 0 masks the physical interrupt too
        assert vmm.events == [] and vm.vcpus[0].events
        return
    ((exit, rip, _shadow),) = vmm.events
    assert exit.reason == "VMEXIT_INTR" and exit.raw.EXITCODE == 0x60
    assert exit.raw.EXITINFO1 == exit.raw.EXITINFO2 == 0
    assert rip == label(vm, 0)


def test_an_intercepted_nmi_exits_with_the_vendors_record(make_vm, hvsim_pm, arch):
    def arm(vmm):
        if vmm.intel:
            vmm.set_pin(msrs.PIN_BASED_NMI_EXITING)
        else:
            vmm.vcpu.context.vmcb.set_intercept("NMI")
        vmm.vcpu.inject(Event(EventType.NMI))

    vmm = Script(arm)
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(CLI_GUEST))
    assert vm.run(timeout=10).status == 1
    ((exit, rip, _shadow),) = vmm.events
    assert rip == label(vm, 0)
    if arch == "intel_vtx":
        assert exit.reason == "EXIT_REASON_EXCEPTION_NMI" and exit.raw.EXIT_REASON == 0
        assert exit.raw.VM_EXIT_INTR_INFO == VALID | 2 << 8 | 2  # type NMI, vector 2
    else:
        assert exit.reason == "VMEXIT_NMI" and exit.raw.EXITCODE == 0x61


NMI_GUEST = f"""
    mov rsp, {X86_STACK}
    {store_labels('after', 'nmi')}
    {x86_idt_setup({2: 'nmi'})}
    cli
    hlt
after:
    {END}
nmi:
    inc byte ptr [{X86_DATA:#x}]
    movzx eax, byte ptr [{X86_DATA:#x}]
    mov rbx, [rsp]
    mov [rax * 8 + {X86_DATA:#x}], rbx
    mov rbx, [rsp + 16]
    mov [rax * 8 + {X86_DATA + 0x40:#x}], rbx
    iretq
"""


def test_nmi_blocking_holds_a_second_nmi_until_the_handlers_iret(make_vm, hvsim_pm, arch):
    """NMIs are not masked by IF; delivering one blocks the next until IRET (SDM 6.7.1)."""
    def two_nmis(vmm):
        vmm.vcpu.inject(Event(EventType.NMI))
        vmm.vcpu.inject(Event(EventType.NMI))

    hvsim_pm.register(Script(two_nmis))
    vm = make_vm(arch)
    vm.load(x86_64(NMI_GUEST))
    assert vm.run(timeout=10).status == (2 << 1) | 1
    after = label(vm, 0)
    # The second NMI came after the first handler's IRET, at its return address, not nested
    # at the handler's first instruction.
    assert [vm.memory.read_u64(X86_DATA + 8), vm.memory.read_u64(X86_DATA + 16)] == [after, after]


def test_vmx_nmi_window_opens_at_the_iret_of_a_virtual_nmi(make_vm, hvsim_pm):
    def arm(vmm):
        vmm.set_pin(msrs.PIN_BASED_NMI_EXITING | msrs.PIN_BASED_VIRTUAL_NMIS)
        vmm.set_proc(msrs.CPU_BASED_NMI_WINDOW_EXITING)
        vmm.write(Field.VM_ENTRY_INTR_INFO_FIELD, VALID | 2 << 8 | 2)  # inject an NMI

    def on_window(vmm, exit):
        vmm.set_proc(msrs.CPU_BASED_NMI_WINDOW_EXITING, False)

    vmm = Script(arm, on_window=on_window)
    hvsim_pm.register(vmm)
    vm = make_vm("intel_vtx")
    vm.load(x86_64(NMI_GUEST))
    assert vm.run(timeout=10).status == (1 << 1) | 1
    ((exit, rip, shadow, _flags),) = vmm.windows
    assert exit.reason == "EXIT_REASON_NMI_WINDOW" and exit.raw.EXIT_REASON == 8
    assert rip == label(vm, 0) and shadow == 0  # after the IRET: no virtual-NMI blocking
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 0)


def test_vmx_an_injected_nmi_leaves_blocking_by_nmi_in_the_saved_interruptibility(make_vm, hvsim_pm):
    seen = []

    def arm(vmm):
        vmm.set_pin(msrs.PIN_BASED_NMI_EXITING | msrs.PIN_BASED_VIRTUAL_NMIS)
        vmm.set_proc(msrs.CPU_BASED_MONITOR_TRAP_FLAG)
        vmm.write(Field.VM_ENTRY_INTR_INFO_FIELD, VALID | 2 << 8 | 2)

    def on_event(vmm, exit):  # MTF: before the handler's first instruction, then after each
        seen.append((vmm.rip(), vmm.shadow()))
        if len(seen) == 3:
            vmm.set_proc(msrs.CPU_BASED_MONITOR_TRAP_FLAG, False)

    hvsim_pm.register(Script(arm, on_event=on_event))
    vm = make_vm("intel_vtx")
    vm.load(x86_64(NMI_GUEST))
    assert vm.run(timeout=10).status == 3
    assert seen[0] == (label(vm, 1), 8)  # at the handler, blocking by (virtual) NMI
    assert all(shadow == 8 for _rip, shadow in seen)


def test_init_is_an_exit_the_vmm_handles(make_vm, hvsim_pm, arch):
    def arm(vmm):
        if not vmm.intel:
            vmm.vcpu.context.vmcb.set_intercept("INIT")
        vmm.vcpu.inject(Event(EventType.INIT))

    vmm = Script(arm)
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(CLI_GUEST))
    assert vm.run(timeout=10).status == 1
    ((exit, rip, _shadow),) = vmm.events
    assert rip == label(vm, 0)
    if arch == "intel_vtx":  # INIT always exits in VMX non-root operation
        assert exit.reason == "EXIT_REASON_INIT_SIGNAL" and exit.raw.EXIT_REASON == 3
    else:
        assert exit.reason == "VMEXIT_INIT" and exit.raw.EXITCODE == 0x63


def test_svm_init_without_its_intercept_ends_the_run_with_one_line(make_vm, hvsim_pm):
    hvsim_pm.register(Script(queue(EventType.INIT)))
    vm = make_vm("amd_svm")
    vm.load(x86_64(CLI_GUEST))
    result = vm.run(timeout=10)
    assert result.status == 4 and "INIT" in result.reason and "\n" not in result.reason


TRIPLE_FAULT_GUEST = f"""
    mov rsp, {X86_STACK}
    {store_labels('recover')}
    mov rax, {X86_DATA + 0xFF0:#x}
    mov word ptr [rax], 0
    lidt [rax]                        # an IDT of one byte: every delivery faults
    ud2                               # #UD, then #GP, #GP -> #DF, #DF fails: triple fault
recover:
    mov byte ptr [{X86_DATA:#x}], 5
    {END}
"""


class ResumeAfterShutdown:
    """A VMM that answers the triple fault by restarting the guest at its recovery label."""

    def __init__(self):
        self.exits = []

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def shutdown(vcpu, exit):
            self.exits.append(exit)
            Vmm(vcpu).set_rip(label(vm, 0))

        registry.add(ExitKind.SHUTDOWN, shutdown)


def test_a_triple_fault_is_an_exit_and_the_vmm_decides(make_vm, hvsim_pm, arch):
    vmm = ResumeAfterShutdown()
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(TRIPLE_FAULT_GUEST))
    assert vm.run(timeout=10).status == (5 << 1) | 1
    (exit,) = vmm.exits
    if arch == "intel_vtx":
        assert exit.reason == "EXIT_REASON_TRIPLE_FAULT" and exit.raw.EXIT_REASON == 2
    else:
        assert exit.reason == "VMEXIT_SHUTDOWN" and exit.raw.EXITCODE == 0x7F


def test_without_a_vmm_handler_a_triple_fault_still_ends_the_run(make_vm, arch):
    vm = make_vm(arch)
    vm.load(x86_64(TRIPLE_FAULT_GUEST))
    result = vm.run(timeout=10)
    assert result.status == 4 and "triple fault" in result.reason


def test_svm_without_the_shutdown_intercept_the_processor_shuts_down(make_vm):
    vm = make_vm("amd_svm")
    vm.load(x86_64(TRIPLE_FAULT_GUEST))
    vm.vcpus[0].context.vmcb.set_intercept("SHUTDOWN", False)
    result = vm.run(timeout=10)
    assert result.status == 4 and "triple fault" in result.reason
    assert vm.vcpus[0].context.vmcb.read("EXITCODE") != 0x7F


# The gate for 0x20 is not present: delivering the injected interrupt raises #NP(0x103: index
# 0x20, IDT, EXT), which the VMM intercepts; the exit reports the interrupt being delivered.
NP_GUEST = f"""
    mov rsp, {X86_STACK}
    {store_labels('after')}
    {x86_idt_setup({0x20: 'irq'})}
    and byte ptr [{X86_IDT + 16 * 0x20 + 5:#x}], 0x7f
    sti
    hlt
after:
    {END}
irq:
    mov byte ptr [{X86_DATA:#x}], 0x21
    mov rax, [rsp]
    mov [{X86_DATA + 8:#x}], rax
    iretq
"""


def test_an_exception_during_delivery_reports_the_event_being_delivered(make_vm, hvsim_pm, arch):
    def fix_and_reinject(vmm, exit):
        # What KVM does with IDT-vectoring information: re-inject the event (here after
        # making the gate present, as a VMM emulating the IDT might).
        if vmm.intel:
            vectoring.append(vmm.read(Field.IDT_VECTORING_INFO_FIELD))
        vm.memory.write(X86_IDT + 16 * 0x20 + 5, b"\x8e")
        vmm.inject_external(0x20)

    vectoring = []

    vmm = Script(lambda v: v.inject_external(0x20), on_exception=fix_and_reinject)
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(NP_GUEST))
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        Vmm(vcpu).write(Field.EXCEPTION_BITMAP, 1 << 11)
    else:
        vcpu.context.vmcb.write("INTERCEPT_EXCEPTIONS", 1 << 11)
    assert vm.run(timeout=10).status == (0x21 << 1) | 1
    ((exit, rip, _shadow),) = vmm.exceptions
    assert rip == label(vm, 0)
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 0)
    if arch == "intel_vtx":
        r = exit.raw
        assert r.EXIT_REASON == 0 and r.VM_EXIT_INTR_INFO == VALID | DELIVER_CODE | 3 << 8 | 11
        assert r.VM_EXIT_INTR_ERROR_CODE == 0x20 << 3 | 2 | 1
        assert vectoring == [VALID | 0 << 8 | 0x20]  # type 0 (external interrupt), vector 0x20
    else:
        assert exit.raw.EXITCODE == 0x4B and exit.raw.EXITINFO1 == 0x20 << 3 | 2 | 1
        assert exit.raw.EXITINTINFO == VALID | 0x20


# RSP points above the 4 GiB the loader identity-maps: pushing the interrupt frame faults.
PF_GUEST = f"""
    mov rsp, {X86_STACK}
    {store_labels('after')}
    {x86_idt_setup({0x20: 'irq'})}
    mov rsp, 0x100001000
    sti
    hlt
after:
    {END}
irq:
    mov byte ptr [{X86_DATA:#x}], 0x21
    mov rax, [rsp]
    mov [{X86_DATA + 8:#x}], rax
    iretq
"""


def test_a_page_fault_pushing_the_frame_exits_with_the_interrupt_as_vectoring_information(
        make_vm, hvsim_pm, arch):
    seen = []

    def move_stack_and_reinject(vmm, exit):
        vcpu = vmm.vcpu
        seen.append((exit.raw, vmm.read(Field.IDT_VECTORING_INFO_FIELD) if vmm.intel else exit.raw.EXITINTINFO))
        if vmm.intel:
            vmm.write(Field.GUEST_RSP, X86_STACK)
        else:
            vcpu.context.vmcb.write("RSP", X86_STACK)
        vmm.inject_external(0x20)

    vmm = Script(lambda v: v.inject_external(0x20), on_exception=move_stack_and_reinject)
    hvsim_pm.register(vmm)
    vm = make_vm(arch)
    vm.load(x86_64(PF_GUEST))
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        Vmm(vcpu).write(Field.EXCEPTION_BITMAP, 1 << 14)
    else:
        vcpu.context.vmcb.write("INTERCEPT_EXCEPTIONS", 1 << 14)
    assert vm.run(timeout=10).status == (0x21 << 1) | 1
    ((raw, vectoring),) = seen
    assert vectoring == VALID | 0x20
    if arch == "intel_vtx":
        assert raw.EXIT_REASON == 0 and raw.VM_EXIT_INTR_INFO & 0xFF == 14
        assert 0x1_0000_0000 <= raw.EXIT_QUALIFICATION < 0x1_0000_1000  # the faulting address
        assert raw.VM_EXIT_INTR_ERROR_CODE == 0x2  # not present, write, supervisor
    else:
        assert raw.EXITCODE == 0x4E and raw.EXITINFO1 == 0x2
        assert 0x1_0000_0000 <= raw.EXITINFO2 < 0x1_0000_1000
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 0)


def test_a_vmm_that_reflects_a_fault_its_delivery_raises_again_ends_with_one_line(make_vm, hvsim_pm, arch):
    """#NP intercepted, every gate absent, the default handler reflecting the #NP: each
    delivery faults into another exit (a livelock on hardware); hvsim ends the run instead."""
    hvsim_pm.register(Script(lambda v: v.inject_external(0x20)))
    vm = make_vm(arch)
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {x86_idt_setup({0x20: 'irq', 11: 'irq'})}
        and byte ptr [{X86_IDT + 16 * 0x20 + 5:#x}], 0x7f
        and byte ptr [{X86_IDT + 16 * 11 + 5:#x}], 0x7f
        sti
        hlt
        {END}
    irq:
        iretq"""))
    vcpu = vm.vcpus[0]
    if arch == "intel_vtx":
        Vmm(vcpu).write(Field.EXCEPTION_BITMAP, 1 << 11)
    else:
        vcpu.context.vmcb.write("INTERCEPT_EXCEPTIONS", 1 << 11)
    result = vm.run(timeout=10)
    assert result.status == 4 and "intercepted exception 11" in result.reason and "\n" not in result.reason
