"""Task switches in a 32-bit protected-mode guest (SDM Vol. 3A 7.3) as exits: VMX exit reason 9,
always (SDM 26.4.2), with the exit qualification of SDM Table 28-2 (the new TSS's selector in
15:0, the source in 31:30: 0 CALL, 1 IRET, 2 JMP); SVM #VMEXIT 0x7D under the task-switch
intercept (APM 15.14.1), EXITINFO1 the selector, EXITINFO2 bit 36 IRET, bit 38 JMP. The new TSS
is checked first; after the exit the switch happens (the VMM did not emulate it), so the new
task runs with the registers of its TSS and the busy bits and back link move as the SDM says."""

from __future__ import annotations

import struct

import pytest

from eventvmm import Script
from guestlib import X86_DATA, X86_STACK
from hvsim.core.exits import ExitKind

from test_x86_platform import multiboot_kernel

GDT, TSS_A, TSS_B, POINTER = X86_DATA + 0x1000, X86_DATA + 0x2000, X86_DATA + 0x3000, X86_DATA + 0x400
SITES = X86_DATA + 0x500  # the guest stores its instructions' addresses here
SEL_TSS_A, SEL_TSS_B, SEL_GATE = 0x18, 0x20, 0x28


def tss_descriptor(base: int, limit: int = 0x67) -> int:
    """A present, available 32-bit TSS (type 9), DPL 0."""
    return (limit & 0xFFFF) | (base & 0xFF_FFFF) << 16 | 0x89 << 40 | ((limit >> 16) & 0xF) << 48 | (base >> 24) << 56


def task_gate(tss_selector: int) -> int:
    return tss_selector << 16 | 0x85 << 40  # present, DPL 0, type 5


def guest(transfer: str, back: bool) -> str:
    descriptors = [0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, tss_descriptor(TSS_A), tss_descriptor(TSS_B),
                   task_gate(SEL_TSS_B)]
    gdt = "\n".join(f"mov dword ptr [{GDT + 8 * i + half * 4:#x}], {(d >> 32 * half) & 0xFFFF_FFFF:#x}"
                    for i, d in enumerate(descriptors) for half in (0, 1))
    tss_b = "\n".join(f"mov dword ptr [{TSS_B + off:#x}], {value}" for off, value in
                      ((0x24, 2), (0x38, X86_STACK), (0x4C, 0x08), (0x48, 0x10), (0x50, 0x10), (0x54, 0x10),
                       (0x58, 0x10), (0x5C, 0x10)))
    return f"""
        hlt
        {gdt}
        mov word ptr [{X86_DATA + 0x100:#x}], {len(descriptors) * 8 - 1}
        mov dword ptr [{X86_DATA + 0x102:#x}], {GDT:#x}
        lgdt [{X86_DATA + 0x100:#x}]
        mov ax, {SEL_TSS_A}
        ltr ax
        mov eax, task_b
        mov dword ptr [{TSS_B + 0x20:#x}], eax
        {tss_b}
        mov dword ptr [{POINTER:#x}], 0
        mov word ptr [{POINTER + 4:#x}], {SEL_TSS_B}
        mov eax, site
        mov dword ptr [{SITES:#x}], eax
        mov eax, back_site
        mov dword ptr [{SITES + 4:#x}], eax
    site:
        {transfer}
        mov byte ptr [{X86_DATA + 1:#x}], 0xaa
        mov al, 0
        out 0xf4, al
        hlt
    task_b:
        mov byte ptr [{X86_DATA:#x}], 0xbb
        pushfd
        pop eax
        mov dword ptr [{X86_DATA + 8:#x}], eax
        {"" if back else "mov al, 0" + chr(10) + "out 0xf4, al" + chr(10) + "hlt"}
    back_site:
        iretd
    """


# keystone assembles "ljmp sel:off" with a 66H prefix in 32-bit code: the far pointers as bytes.
JMP_TSS = f".byte 0xea, 0, 0, 0, 0, {SEL_TSS_B}, 0"
CALL_TSS = f".byte 0x9a, 0, 0, 0, 0, {SEL_TSS_B}, 0"
CALL_GATE = f".byte 0x9a, 0, 0, 0, 0, {SEL_GATE}, 0"
JMP_MEM = f".byte 0xff, 0x2d\n.long {POINTER:#x}"  # jmp m16:32 (FF /5)
CASES = {  # transfer, returns by IRET, the switches ((source, selector, length) in order)
    "jmp_tss": (JMP_TSS, False, [("jmp", SEL_TSS_B, 7)]),
    "jmp_m16_32": (JMP_MEM, False, [("jmp", SEL_TSS_B, 6)]),
    "call_tss_then_iret": (CALL_TSS, True, [("call", SEL_TSS_B, 7), ("iret", SEL_TSS_A, 1)]),
    "call_task_gate_then_iret": (CALL_GATE, True, [("call", SEL_TSS_B, 7), ("iret", SEL_TSS_A, 1)]),
}
VMX_SOURCE = {"call": 0, "iret": 1, "jmp": 2}
SVM_SOURCE = {"call": 0, "iret": 1 << 36, "jmp": 1 << 38}


def intercept_task_switches(vmm):
    if not vmm.intel:
        vmm.vcpu.context.vmcb.set_intercept("TASK_SWITCH")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("arch", ["intel_vtx", "amd_svm"])
def test_task_switch_exits_with_its_source_and_the_new_task_runs(make_vm, hvsim_pm, exit_recorder, arch, case):
    from guestlib import x86_32  # noqa: F401 - multiboot_kernel assembles with it

    transfer, back, expected = CASES[case]
    hvsim_pm.register(Script(intercept_task_switches))
    vm = make_vm(arch)
    vm.load(multiboot_kernel(guest(transfer, back)))
    assert vm.run(timeout=10).status == 1
    m = vm.memory
    sites = [m.read_u32(SITES), m.read_u32(SITES + 4)]
    exits = [e for e in exit_recorder.of(ExitKind.INSTRUCTION) if "TASK_SWITCH" in e.reason]
    assert len(exits) == len(expected)
    for exit, (source, selector, length), site in zip(exits, expected, sites):
        if arch == "intel_vtx":
            assert exit.reason == "EXIT_REASON_TASK_SWITCH" and exit.raw.EXIT_REASON == 9
            assert exit.raw.EXIT_QUALIFICATION == selector | VMX_SOURCE[source] << 30
            assert exit.raw.GUEST_RIP == site and exit.raw.VM_EXIT_INSTRUCTION_LEN == length
        else:
            assert exit.reason == "VMEXIT_TASK_SWITCH" and exit.raw.EXITCODE == 0x7D
            assert exit.raw.EXITINFO1 == selector and exit.raw.EXITINFO2 == SVM_SOURCE[source]
    assert m.read(X86_DATA, 1) == b"\xbb"  # task B ran
    if back:  # CALL: B's back link is A and it ran nested (NT); IRET returned to A
        assert struct.unpack("<H", m.read(TSS_B, 2))[0] == SEL_TSS_A
        assert m.read_u32(X86_DATA + 8) & 1 << 14
        assert m.read(X86_DATA + 1, 1) == b"\xaa"
    else:  # JMP: A's busy bit cleared, B's set
        assert (m.read_u32(GDT + 8 * 3 + 4) >> 8) & 0xF == 0x9 and (m.read_u32(GDT + 8 * 4 + 4) >> 8) & 0xF == 0xB


def test_svm_without_the_intercept_switches_tasks_without_an_exit(make_vm, hvsim_pm, exit_recorder):
    hvsim_pm.register(Script(lambda vmm: None))  # resume after the first HLT
    vm = make_vm("amd_svm")
    vm.load(multiboot_kernel(guest(CALL_TSS, True)))
    assert vm.run(timeout=10).status == 1
    assert not [e for e in exit_recorder.exits if "TASK_SWITCH" in e.reason]
    assert vm.memory.read(X86_DATA, 2) == b"\xbb\xaa"


def test_a_far_jmp_to_a_code_segment_is_no_task_switch(make_vm, hvsim_pm, exit_recorder):
    hvsim_pm.register(Script(lambda vmm: None))
    vm = make_vm("intel_vtx")
    vm.load(multiboot_kernel(guest(".byte 0xea\n.long next\n.byte 0x08, 0\nnext:", False)))
    assert vm.run(timeout=10).status == 1
    assert not [e for e in exit_recorder.exits if "TASK_SWITCH" in e.reason]
    assert vm.memory.read(X86_DATA + 1, 1) == b"\xaa"
