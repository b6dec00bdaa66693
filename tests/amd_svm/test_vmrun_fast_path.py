"""The VMRUN fast path (vmm.py ``_unchanged_since_exit``): a VMRUN of a VMCB holding exactly
what the last #VMEXIT wrote skips the consistency checks and the decoding of the VMCB; a VMM
that wrote any field, with its clean bit cleared or not, gets the full VMRUN."""

from __future__ import annotations

import pytest
from guestlib import X86_DATA, X86_STACK, x86_64
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.plugins.amd_svm.vmcb import Clean

END = "mov al, 0\nout 0xf4, al\nhlt"
CLEAN_ALL = (1 << 12) - 1


class OnHlt:
    def __init__(self, action):
        self.action, self.n = action, 0

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def on_hlt(vcpu, exit):
            self.n += 1
            self.action(vcpu, self.n)

        registry.add(ExitKind.HALT, on_hlt)
        registry.add(ExitKind.INSTRUCTION, lambda vcpu, exit: None)  # an intercepted PUSHF: it runs


@pytest.mark.parametrize("clean", [CLEAN_ALL & ~(1 << Clean.I), CLEAN_ALL])
def test_an_intercept_the_vmm_sets_between_two_vmruns_is_obeyed(make_vm, hvsim_pm, clean):
    """Clean bit I cleared, or left set: hvsim reads the intercept vectors from the VMCB at
    every VMRUN that finds the VMCB written (the APM lets a processor use its cached copy while
    the bit is set; hvsim's run loop does not for intercepts), so PUSHF exits either way."""
    def action(vcpu, n):
        if n == 2:
            vmcb = vcpu.context.vmcb
            vmcb.set_intercept("PUSHF")
            vmcb["VMCB_CLEAN"] = clean

    hvsim_pm.register(OnHlt(action))
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nhlt\npushfq\nhlt\npushfq\npopfq\npopfq\n{END}"))
    assert vm.run(timeout=10).status == 1
    assert vm.stats.counts().get("VMEXIT_PUSHF") == 1  # the second PUSHF only


def test_a_save_area_field_the_vmm_breaks_between_two_vmruns_fails_the_next(make_vm, hvsim_pm):
    """CR0.NW set with CR0.CD clear is illegal (APM 15.5.1): written after two fast VMRUNs, with
    every clean bit set, the next VMRUN still runs its consistency checks."""
    def action(vcpu, n):
        if n == 3:
            vmcb = vcpu.context.vmcb
            vmcb["CR0"] = vmcb["CR0"] & ~(1 << 30) | 1 << 29
            vmcb["VMCB_CLEAN"] = CLEAN_ALL

    vmm = OnHlt(action)
    hvsim_pm.register(vmm)
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"hlt\nhlt\nhlt\nhlt\n{END}"))
    result = vm.run(timeout=10)
    assert result.status == 4 and "CR0.CD is zero and CR0.NW is set" in result.reason
    assert vm.host.read(vm.vcpus[0].context.vmcb.pa + 0x070, 8) == b"\xff" * 8  # EXITCODE VMEXIT_INVALID
    assert vmm.n == 3


def test_rip_rsp_rax_the_vmm_writes_between_vmruns_reach_the_guest(make_vm, hvsim_pm):
    def action(vcpu, n):
        if n == 2:
            vmcb = vcpu.context.vmcb
            vmcb["RIP"] = vmcb["RIP"] + 2  # saved past the HLT (the engine completed it): skip the jmp
            vmcb["RSP"] = X86_STACK - 0x800
            vmcb["RAX"] = 0x1234_5678

    hvsim_pm.register(OnHlt(action))
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        hlt
        hlt
        jmp bad
        mov rbx, {X86_DATA}
        mov [rbx], rsp
        mov [rbx + 8], rax
        {END}
    bad:
        mov al, 7
        out 0xf4, al
        hlt"""))
    assert vm.run(timeout=10).status == 1
    assert int.from_bytes(vm.memory.read(X86_DATA, 8), "little") == X86_STACK - 0x800
    assert int.from_bytes(vm.memory.read(X86_DATA + 8, 8), "little") == 0x1234_5678


def test_the_vmcb_after_an_exit_holds_the_saved_segments(make_vm, hvsim_pm):
    seen = []

    def action(vcpu, n):
        vmcb = vcpu.context.vmcb
        seen.append((vmcb.segment("DS"), vmcb.segment("CS"), vmcb["RIP"], vmcb["RSP"]))

    hvsim_pm.register(OnHlt(action))
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nhlt\nxor eax, eax\nmov ds, ax\nmov rsp, {X86_STACK - 0x100}\nhlt\n{END}"))
    assert vm.run(timeout=10).status == 1
    (ds1, cs1, rip1, rsp1), (ds2, cs2, rip2, rsp2) = seen[:2]
    assert ds1.selector != 0 and ds1.attrib & 0x80  # present
    assert ds2.selector == 0 and ds2.attrib == 0 and cs2 == cs1 and cs1.selector == 0x18
    assert vm.memory.read(rip1 - 1, 1) == vm.memory.read(rip2 - 1, 1) == b"\xf4"  # saved past the HLT
    assert (rsp1, rsp2) == (X86_STACK, X86_STACK - 0x100)
