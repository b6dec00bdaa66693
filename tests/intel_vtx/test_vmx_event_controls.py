"""VMX-only event controls, driven by real guest instructions: the monitor trap flag (exit 37
after each instruction, SDM 25.5.2), the VMX-preemption timer (exit 52, SDM 25.5.1, saved with
"save VMX-preemption timer value"), the HLT activity state (SDM 24.4.2, 26.6), and the
IA32_EFER / IA32_PAT load and save controls (SDM 26.3.2.1, 28.3.1)."""

from __future__ import annotations

import pytest

from eventvmm import END, Script, Vmm, label, store_labels
from guestlib import X86_DATA, X86_STACK, x86_64, x86_idt_setup
from hvsim.core.exits import Event, EventType
from hvsim.plugins.intel_vtx import msrs
from hvsim.plugins.intel_vtx.vmcs import Field

MTF = msrs.CPU_BASED_MONITOR_TRAP_FLAG


def mtf_for(count):
    """A VMM that turns MTF on at the guest's HLT and off after ``count`` MTF exits."""
    seen = []

    def on_event(vmm, exit):
        seen.append((exit.raw.EXIT_REASON, vmm.rip(), vmm.shadow()))
        if len(seen) == count:
            vmm.set_proc(MTF, False)

    return Script(lambda v: v.set_proc(MTF), on_event=on_event), seen


def test_mtf_exits_after_every_guest_instruction_branches_included(make_vm, hvsim_pm):
    vmm, seen = mtf_for(3)
    hvsim_pm.register(vmm)
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {store_labels('a', 'b', 'c', 'd')}
        hlt
    a:  mov eax, 1
    b:  jmp c
        ud2
    c:  add eax, 2
    d:  mov byte ptr [{X86_DATA:#x}], al
        {END}"""))
    assert vm.run(timeout=10).status == (3 << 1) | 1
    assert [(reason, rip) for reason, rip, _ in seen] == [(37, label(vm, 1)), (37, label(vm, 2)), (37, label(vm, 3))]


def test_mtf_exits_after_sti_and_mov_ss_save_the_blocking_they_leave(make_vm, hvsim_pm):
    vmm, seen = mtf_for(4)
    hvsim_pm.register(vmm)
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        cli
        hlt
        sti
        nop
        mov ax, ss
        mov ss, ax
        mov al, 0
        out 0xf4, al
        hlt"""))
    vm.run(timeout=10)
    # After STI (IF was 0): blocking by STI; after NOP: none; after MOV SS: blocking by MOV SS.
    assert [shadow for _reason, _rip, shadow in seen] == [1, 0, 0, 2]


def test_mtf_with_an_injected_event_exits_before_the_handlers_first_instruction(make_vm, hvsim_pm):
    seen = []

    def arm(vmm):
        vmm.set_proc(MTF)
        vmm.inject_external(0x20)

    def on_event(vmm, exit):
        seen.append(vmm.rip())
        vmm.set_proc(MTF, False)

    hvsim_pm.register(Script(arm, on_event=on_event))
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {store_labels('irq')}
        {x86_idt_setup({0x20: 'irq'})}
        sti
        hlt
        {END}
    irq:
        mov byte ptr [{X86_DATA:#x}], 0x21
        iretq"""))
    assert vm.run(timeout=10).status == (0x21 << 1) | 1
    assert seen == [label(vm, 0)]


TIMER = msrs.PIN_BASED_VMX_PREEMPTION_TIMER
SAVE_TIMER = msrs.VM_EXIT_SAVE_VMX_PREEMPTION_TIMER


def arm_timer(value, save=False):
    def arm(vmm):
        vmm.set_pin(TIMER)
        vmm.write(Field.VMX_PREEMPTION_TIMER_VALUE, value)
        if save:
            vmm.write(Field.VM_EXIT_CONTROLS, vmm.read(Field.VM_EXIT_CONTROLS) | SAVE_TIMER)
    return arm


SPIN_GUEST = f"""
    mov rsp, {X86_STACK}
    {store_labels('spin', 'out')}
    hlt
spin:
    jmp spin
out:
    mov byte ptr [{X86_DATA:#x}], 9
    {END}
"""


def test_a_preemption_timer_of_zero_exits_before_any_instruction(make_vm, hvsim_pm):
    def on_event(vmm, exit):
        vmm.set_pin(TIMER, False)
        vmm.set_rip(label(vmm.vcpu.vm, 1))

    vmm = Script(arm_timer(0), on_event=on_event)
    hvsim_pm.register(vmm)
    vm = make_vm("intel_vtx")
    vm.load(x86_64(SPIN_GUEST))
    assert vm.run(timeout=10).status == (9 << 1) | 1
    ((exit, rip, _shadow),) = vmm.events
    assert exit.reason == "EXIT_REASON_PREEMPTION_TIMER" and exit.raw.EXIT_REASON == 52
    assert rip == label(vm, 0)


def test_the_preemption_timer_ends_a_spinning_guest_and_saves_zero(make_vm, hvsim_pm):
    saved = []

    def on_event(vmm, exit):
        saved.append(vmm.read(Field.VMX_PREEMPTION_TIMER_VALUE))
        vmm.set_pin(TIMER, False)
        vmm.write(Field.VM_EXIT_CONTROLS, vmm.read(Field.VM_EXIT_CONTROLS) & ~SAVE_TIMER)
        vmm.set_rip(label(vmm.vcpu.vm, 1))

    vmm = Script(arm_timer(20_000, save=True), on_event=on_event)  # 20,000 << 5 TSC ticks
    hvsim_pm.register(vmm)
    vm = make_vm("intel_vtx")
    vm.load(x86_64(SPIN_GUEST))
    assert vm.run(timeout=10).status == (9 << 1) | 1
    ((exit, rip, _shadow),) = vmm.events
    assert exit.raw.EXIT_REASON == 52 and rip == label(vm, 0) and saved == [0]


def test_another_exit_saves_what_is_left_of_the_preemption_timer(make_vm, hvsim_pm):
    start = 1 << 30
    vmm = Script(arm_timer(start, save=True))
    hvsim_pm.register(vmm)
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nhlt\nmov ecx, 100000\nl: dec ecx\njnz l\nhlt\n{END}"))
    assert vm.run(timeout=10).status == 1
    left = Vmm(vm.vcpus[0]).read(Field.VMX_PREEMPTION_TIMER_VALUE)
    assert 0 < left < start and vmm.events == []


def test_a_guest_hlt_without_hlt_exiting_saves_the_hlt_activity_state(make_vm):
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\ncli\nhlt\n{END}"))
    vmm = Vmm(vm.vcpus[0])
    vmm.set_proc(msrs.CPU_BASED_HLT_EXITING, False)
    assert vm.run(timeout=10).status == 6  # halted with IF = 0
    assert vmm.read(Field.GUEST_ACTIVITY_STATE) == 1  # HLT


def test_an_entry_in_the_hlt_activity_state_runs_nothing_until_an_event(make_vm, hvsim_pm):
    def halt(vmm):
        vmm.write(Field.GUEST_ACTIVITY_STATE, 1)

    hvsim_pm.register(Script(halt))
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nsti\nhlt\nmov byte ptr [{X86_DATA:#x}], 1\n{END}"))
    assert vm.run(timeout=10).status == 6  # the HLT state the VMM entered with lasts
    assert vm.memory.read(X86_DATA, 1) == b"\x00"


def test_an_interrupt_wakes_an_entry_in_the_hlt_activity_state(make_vm, hvsim_pm):
    def halt_and_queue(vmm):
        vmm.write(Field.GUEST_ACTIVITY_STATE, 1)
        vmm.vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, 0x20))

    hvsim_pm.register(Script(halt_and_queue))
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {store_labels('after')}
        {x86_idt_setup({0x20: 'irq'})}
        sti
        hlt
    after:
        {END}
    irq:
        mov byte ptr [{X86_DATA:#x}], 0x21
        mov rax, [rsp]
        mov [{X86_DATA + 8:#x}], rax
        iretq"""))
    assert vm.run(timeout=10).status == (0x21 << 1) | 1
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 0)


def test_pat_is_saved_on_exit_and_loaded_on_entry_under_its_controls(make_vm, hvsim_pm):
    seen = []

    def swap_pat(vmm):
        seen.append(vmm.read(Field.GUEST_IA32_PAT))
        vmm.write(Field.GUEST_IA32_PAT, 0x0007_0406_0007_0406)

    hvsim_pm.register(Script(swap_pat))
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        mov ecx, 0x277
        mov eax, 0x00050406
        mov edx, 0x00070106
        wrmsr
        hlt
        rdmsr
        mov [{X86_DATA + 8:#x}], eax
        mov [{X86_DATA + 12:#x}], edx
        {END}"""))
    vmm = Vmm(vm.vcpus[0])
    vmm.write(Field.VM_EXIT_CONTROLS, vmm.read(Field.VM_EXIT_CONTROLS) | msrs.VM_EXIT_SAVE_IA32_PAT)
    vmm.write(Field.VM_ENTRY_CONTROLS, vmm.read(Field.VM_ENTRY_CONTROLS) | msrs.VM_ENTRY_LOAD_IA32_PAT)
    assert vm.run(timeout=10).status == 1
    assert seen == [0x0007_0106_0005_0406]
    assert vm.memory.read_u64(X86_DATA + 8) == 0x0007_0406_0007_0406


def test_efer_is_loaded_on_entry_under_its_control(make_vm, hvsim_pm):
    def set_nxe(vmm):
        vmm.write(Field.GUEST_IA32_EFER, vmm.read(Field.GUEST_IA32_EFER) | 1 << 11)

    hvsim_pm.register(Script(set_nxe))
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        hlt
        mov ecx, 0xc0000080
        rdmsr
        mov [{X86_DATA + 8:#x}], eax
        {END}"""))
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read_u32(X86_DATA + 8) & 0xD00 == 0xD00  # LME | LMA kept, NXE loaded


def test_the_preemption_timer_counts_in_the_hlt_state_and_its_exit_saves_hlt(make_vm, hvsim_pm):
    seen = []

    def on_event(vmm, exit):
        seen.append((exit.raw.EXIT_REASON, vmm.rip(), vmm.read(Field.GUEST_ACTIVITY_STATE)))
        vmm.set_pin(TIMER, False)
        vmm.write(Field.GUEST_ACTIVITY_STATE, 0)  # the VMM wakes the guest
        vmm.set_rip(label(vmm.vcpu.vm, 1))

    def arm(vmm):
        arm_timer(20_000)(vmm)
        vmm.set_proc(msrs.CPU_BASED_HLT_EXITING, False)

    hvsim_pm.register(Script(arm, on_event=on_event))
    # Deterministic: 20,000 ticks of the host's TSC are ~10 us, less than the entry that follows
    # the first HLT's exit sometimes takes, and then the timer ended before the second HLT.
    vm = make_vm("intel_vtx", deterministic=True)
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {store_labels('after', 'out')}
        cli
        hlt                               # HLT exit: the VMM arms the timer, HLT runs in the guest now
        hlt
    after:
        ud2
    out:
        mov byte ptr [{X86_DATA:#x}], 9
        {END}"""))
    assert vm.run(timeout=10).status == (9 << 1) | 1
    assert seen == [(52, label(vm, 0), 1)]  # after the HLT, in the HLT activity state


@pytest.mark.parametrize("faulting,unblocked", [("iretq", True), ("mov ds, ax", False)])
def test_a_fault_of_the_iret_that_ends_nmi_blocking_says_nmi_unblocking(make_vm, hvsim_pm, faulting, unblocked):
    """SDM 28.2.3: an exit for a fault of an IRET that had ended blocking by NMI sets bit 12 of
    the VM-exit interruption information ("NMI unblocking due to IRET") and saves the
    interruptibility state without blocking by NMI (bit 3); the same #GP from another
    instruction in the NMI handler leaves bit 12 clear and NMIs blocked. Here an injected NMI's
    handler makes its frame's CS 0x50, beyond the GDT limit (IRET: #GP), or loads DS with it."""
    seen = []

    def on_exception(vmm, exit):
        seen.append((exit.raw.VM_EXIT_INTR_INFO, vmm.read(Field.GUEST_INTERRUPTIBILITY_INFO), vmm.rip()))
        vmm.vcpu.vm.crash("seen")

    vmm = Script(lambda v: v.write(Field.VM_ENTRY_INTR_INFO_FIELD, 1 << 31 | 2 << 8 | 2), on_exception=on_exception)
    hvsim_pm.register(vmm)
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {store_labels('at')}
        {x86_idt_setup({2: 'nmi'})}
        hlt
        {END}
    nmi:
        mov qword ptr [rsp + 8], 0x50
        mov ax, 0x50
    at:
        {faulting}
        {END}"""))
    Vmm(vm.vcpus[0]).write(Field.EXCEPTION_BITMAP, 1 << 13)
    vm.run(timeout=10)
    ((info, interruptibility, rip),) = seen
    assert info & 0x7FF == 3 << 8 | 13 and info & 0x800 and rip == label(vm, 0)  # #GP with its error code
    assert bool(info >> 12 & 1) is unblocked
    assert bool(interruptibility & 8) is not unblocked
