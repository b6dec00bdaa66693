"""SVM-only interrupt controls, driven by real guest instructions: the PAUSE filter count and
threshold (APM 15.14.4), the guest's CR8 as V_TPR deciding when V_IRQ is taken (15.21.2,
15.21.4), and virtual GIF (the guest's STGI / CLGI holding V_IRQ back)."""

from __future__ import annotations

import pytest

from eventvmm import END, Script, label, store_labels
from guestlib import X86_DATA, X86_STACK, x86_64, x86_idt_setup


@pytest.mark.parametrize("count, threshold, exits", [(0, 0, 7), (3, 0, 2), (2, 0, 3), (2, 1, 0)])
def test_the_pause_filter_lets_count_minus_one_pauses_through(make_vm, count, threshold, exits):
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\n" + "pause\nnop\nnop\n" * 7 + END))
    vmcb = vm.vcpus[0].context.vmcb
    vmcb.set_intercept("PAUSE")
    vmcb.write("PAUSE_FILTER_COUNT", count)
    vmcb.write("PAUSE_FILTER_THRESHOLD", threshold)  # 1 cycle: every PAUSE starts a new count
    assert vm.run(timeout=10).status == 1
    assert vm.stats.counts().get("VMEXIT_PAUSE", 0) == exits


TPR_GUEST = f"""
    mov rsp, {X86_STACK}
    {store_labels('window')}
    {x86_idt_setup({0x20: 'irq'})}
    mov eax, 5
    mov cr8, rax                      # TPR 5 holds back a priority-4 virtual interrupt
    sti
    hlt
    mov rbx, cr8
    mov [{X86_DATA + 16:#x}], rbx
    mov eax, 3
    mov cr8, rax                      # now 4 > 3: taken right after this instruction
window:
    {END}
irq:
    mov byte ptr [{X86_DATA:#x}], 0x21
    mov rax, [rsp]
    mov [{X86_DATA + 8:#x}], rax
    iretq
"""


def v_irq(vmm, prio=4):
    vmcb = vmm.vcpu.context.vmcb
    vmcb.write("V_INTR_MASKING", 1)
    vmcb.write("V_IRQ", 1)
    vmcb.write("V_INTR_VECTOR", 0x20)
    vmcb.write("V_INTR_PRIO", prio)


def test_the_guests_cr8_is_v_tpr_and_lowering_it_lets_v_irq_in(make_vm, hvsim_pm):
    hvsim_pm.register(Script(v_irq))
    vm = make_vm("amd_svm")
    vm.load(x86_64(TPR_GUEST))
    vm.vcpus[0].context.vmcb.write("V_INTR_MASKING", 1)  # CR8 is V_TPR from the start (15.21.1)
    assert vm.run(timeout=10).status == (0x21 << 1) | 1
    assert vm.memory.read_u64(X86_DATA + 16) == 5  # MOV from CR8 reads V_TPR
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 0)
    vmcb = vm.vcpus[0].context.vmcb
    assert vmcb.read("V_TPR") == 3 and vmcb.read("V_IRQ") == 0


VGIF_GUEST = f"""
    mov rsp, {X86_STACK}
    {store_labels('window')}
    {x86_idt_setup({0x20: 'irq'})}
    sti
    clgi
    hlt
    mov byte ptr [{X86_DATA + 1:#x}], 1   # V_GIF = 0: the virtual interrupt waits
    stgi
window:
    {END}
irq:
    mov al, byte ptr [{X86_DATA + 1:#x}]
    add al, 0x20
    mov byte ptr [{X86_DATA:#x}], al
    mov rax, [rsp]
    mov [{X86_DATA + 8:#x}], rax
    iretq
"""


def test_with_virtual_gif_the_guests_clgi_holds_v_irq_until_stgi(make_vm, hvsim_pm):
    def arm(vmm):
        v_irq(vmm)
        vmm.vcpu.context.vmcb.write("V_IGN_TPR", 1)

    hvsim_pm.register(Script(arm))
    vm = make_vm("amd_svm")
    vm.load(x86_64(VGIF_GUEST))
    vmcb = vm.vcpus[0].context.vmcb
    vmcb.write("V_GIF_ENABLE", 1)
    vmcb.write("V_GIF", 1)
    assert vm.run(timeout=10).status == (0x21 << 1) | 1  # taken after the store, at STGI's end
    assert vm.memory.read_u64(X86_DATA + 8) == label(vm, 0)


def test_without_virtual_gif_the_guests_stgi_is_undefined(make_vm):
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {x86_idt_setup({6: 'ud'})}
        clgi
        {END}
    ud:
        mov byte ptr [{X86_DATA:#x}], 6
        add qword ptr [rsp], 3
        iretq"""))
    assert vm.run(timeout=10).status == (6 << 1) | 1


def test_an_intercepted_stgi_exits_then_the_unemulated_instruction_is_undefined(make_vm, recorder):
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {store_labels('after')}
        {x86_idt_setup({6: 'ud'})}
        stgi
    after:
        {END}
    ud:
        mov byte ptr [{X86_DATA:#x}], 6
        add qword ptr [rsp], 3
        iretq"""))
    vm.vcpus[0].context.vmcb.set_intercept("STGI")
    assert vm.run(timeout=10).status == (6 << 1) | 1  # the VMM only watched: #UD in the guest
    (exit,) = [e for e in recorder.exits if e.reason == "VMEXIT_STGI"]
    assert exit.raw.EXITCODE == 0x84 and exit.raw.NRIP == label(vm, 0)
