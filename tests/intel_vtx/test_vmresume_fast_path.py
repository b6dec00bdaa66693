"""The VMRESUME fast path (vmx.py ``_vm_entry``): with no VMWRITE since the last entry that ran
the checks of SDM 26.2-26.4, a VMRESUME skips them; every rule a VMM can break with a VMWRITE
between two resumes must still fail the entry, and every guest-state field it writes must still
reach the guest. A vmread right after an exit returns what the processor saved."""

from __future__ import annotations

import pytest
from guestlib import X86_DATA, X86_STACK, x86_64
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.plugins.intel_vtx.vmcs import Field
from unicorn import x86_const as X

END = "mov al, 0\nout 0xf4, al\nhlt"


def vmread(vcpu, field):
    result = vcpu.context.vmx.vmread(field)
    assert result.ok, result
    return result.value


class OnHlt:
    """Calls ``action(vcpu, n)`` at the n-th HLT exit (from 1); notes whether each entry
    before it skipped its checks."""

    def __init__(self, action):
        self.action, self.n, self.checked = action, 0, []

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def on_hlt(vcpu, exit):
            self.n += 1
            self.checked.append(vcpu.context.vmx.entry_checked)
            self.action(vcpu, self.n)

        registry.add(ExitKind.HALT, on_hlt)


@pytest.mark.parametrize(("field", "value", "section"), [
    (Field.GUEST_RFLAGS, 0x0, "26.3.1.4"),  # bit 1 must be 1
    (Field.GUEST_TR_AR_BYTES, 0x89, "26.3.1.2"),  # TR must be busy (type 11) in IA-32e mode
    (Field.GUEST_CR0, 0x8000_0000, "26.3.1.1"),  # PG without PE (and the fixed bits clear)
])
def test_a_vmwrite_of_invalid_guest_state_between_two_resumes_fails_the_next_with_exit_33(
        make_vm, hvsim_pm, field, value, section):
    def action(vcpu, n):
        if n == 3:
            assert vcpu.context.vmx.vmwrite(field, value).ok

    vmm = OnHlt(action)
    hvsim_pm.register(vmm)
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nhlt\nhlt\nhlt\nhlt\n{END}"))
    result = vm.run(timeout=10)
    assert vmm.checked[1:3] == [False, False]  # the resumes before the VMWRITE took the fast path
    assert result.status == 4 and section in result.reason
    assert vmread(vm.vcpus[0], Field.VM_EXIT_REASON) == (1 << 31) | 33
    assert vmm.n == 3  # the guest never ran past the third HLT


def test_a_vmwrite_of_a_control_between_two_resumes_is_checked_again(make_vm, hvsim_pm):
    def action(vcpu, n):
        if n == 2:
            assert vcpu.context.vmx.vmwrite(Field.CR3_TARGET_COUNT, 5).ok  # at most 4 (SDM 26.2.1.1)

    hvsim_pm.register(OnHlt(action))
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"hlt\nhlt\nhlt\n{END}"))
    result = vm.run(timeout=10)
    assert result.status == 4 and "VMfailValid(7)" in result.reason and "cr3_target_count" in result.reason


def test_guest_rip_rsp_rflags_and_cr3_the_vmm_writes_between_resumes_reach_the_guest(make_vm, hvsim_pm):
    new_pml4, new_rsp = X86_DATA + 0x1000, X86_STACK - 0x800

    def action(vcpu, n):
        vmx = vcpu.context.vmx
        if n == 2:  # the resume before this one took the fast path; now the VMM writes state
            rip, cr3 = vmread(vcpu, Field.GUEST_RIP), vmread(vcpu, Field.GUEST_CR3)
            vcpu.vm.memory.write(new_pml4, vcpu.vm.memory.read(cr3 & ~0xFFF, 4096))  # same mappings
            assert vmx.vmwrite(Field.GUEST_RIP, rip + 1 + 2).ok  # past the HLT and the jmp after it
            assert vmx.vmwrite(Field.GUEST_RSP, new_rsp).ok
            assert vmx.vmwrite(Field.GUEST_RFLAGS, 0x2 | 0x1 | 0x800).ok  # CF and OF
            assert vmx.vmwrite(Field.GUEST_CR3, new_pml4).ok

    vmm = OnHlt(action)
    hvsim_pm.register(vmm)
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        hlt
        hlt
        jmp bad
        mov rax, {X86_DATA}
        mov [rax], rsp
        pushfq
        pop rbx
        mov [rax + 8], rbx
        mov rbx, cr3
        mov [rax + 16], rbx
        {END}
    bad:
        mov al, 7
        out 0xf4, al
        hlt"""))
    assert vm.run(timeout=10).status == 1
    assert vmm.checked[:2] == [True, False]
    rsp, rflags, cr3 = (int.from_bytes(vm.memory.read(X86_DATA + 8 * i, 8), "little") for i in range(3))
    assert rsp == new_rsp and rflags & 0x801 == 0x801 and cr3 == new_pml4


def test_a_vmread_right_after_an_exit_returns_the_saved_rip_rflags_and_segments(make_vm, hvsim_pm):
    seen = []

    def action(vcpu, n):
        seen.append({f: vmread(vcpu, f) for f in (
            Field.GUEST_RIP, Field.GUEST_RSP, Field.GUEST_RFLAGS, Field.GUEST_DS_SELECTOR,
            Field.GUEST_DS_AR_BYTES, Field.GUEST_SS_SELECTOR, Field.GUEST_CS_SELECTOR)}
            | {"engine": (vcpu.regs.read(X.UC_X86_REG_RIP), vcpu.regs.read(X.UC_X86_REG_DS))})

    hvsim_pm.register(OnHlt(action))
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        stc
    first:
        hlt
        clc
        std
        mov rsp, {X86_STACK - 0x100}
        xor eax, eax
        mov ds, ax
    second:
        hlt
        cld
        {END}"""))
    assert vm.run(timeout=10).status == 1
    first, second = seen[:2]
    # HLT exits name the HLT (RIP at it); the engine has already moved past it
    assert first["engine"][0] == first[Field.GUEST_RIP] + 1
    assert vm.memory.read(first[Field.GUEST_RIP], 1) == b"\xf4" and vm.memory.read(second[Field.GUEST_RIP], 1) == b"\xf4"
    assert first[Field.GUEST_RSP] == X86_STACK and second[Field.GUEST_RSP] == X86_STACK - 0x100
    assert first[Field.GUEST_RFLAGS] & 0x401 == 0x1 and second[Field.GUEST_RFLAGS] & 0x401 == 0x400  # CF; DF
    assert first[Field.GUEST_DS_SELECTOR] == first["engine"][1] != 0
    assert not first[Field.GUEST_DS_AR_BYTES] & 1 << 16  # usable
    assert second[Field.GUEST_DS_SELECTOR] == 0 and second[Field.GUEST_DS_AR_BYTES] & 1 << 16  # null: unusable
    assert second[Field.GUEST_SS_SELECTOR] == first[Field.GUEST_SS_SELECTOR]
    assert second[Field.GUEST_CS_SELECTOR] == first[Field.GUEST_CS_SELECTOR] == 0x18
