"""The SVM-only instruction intercepts (APM Vol. 2 15.9-15.14, Appendix C): PUSHF 0x70, POPF
0x71, IRET 0x74, INTn 0x75 (EXITINFO1 = the vector with decode assists, 15.33), ICEBP 0x88,
RDPRU 0x8E and the EFER write trap 0x8F (EXITINFO1 = the new EFER, after the write)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "x86"))

from intercept_helpers import END, UD_MARK, X86_DATA, Vmm, boot, handler  # noqa: E402

ARCH = "amd_svm"


def skip_all(vcpu, exit):
    return True


@pytest.mark.parametrize("insn,name,exitcode,length", [("pushfq", "PUSHF", 0x70, 1), ("popfq", "POPF", 0x71, 1)])
def test_pushf_popf_exit_only_when_intercepted(make_vm, hvsim_pm, insn, name, exitcode, length):
    vmm = Vmm(skip_all)
    hvsim_pm.register(vmm)
    src = f"push 0x202\n{insn}\nmov [{X86_DATA:#x}], rsp\n{END}"
    vm = boot(make_vm, ARCH, src)
    assert vm.run(timeout=10).status == 1 and not vmm.seen
    native_rsp = vm.memory.read_u64(X86_DATA)
    vm = boot(make_vm, ARCH, src)
    vm.vcpus[0].context.vmcb.set_intercept(name)
    assert vm.run(timeout=10).status == 1
    (exit, rip, _), = vmm.seen
    assert exit.raw.EXITCODE == exitcode and exit.reason == f"VMEXIT_{name}" and exit.raw.NRIP == rip + length
    assert vm.memory.read_u64(X86_DATA) != native_rsp  # emulated as skipped: RSP as the VMM left it


def test_iret_exits_before_it_executes(make_vm, hvsim_pm):
    vmm = Vmm()  # not emulated: the IRET then runs
    hvsim_pm.register(vmm)
    vm = boot(make_vm, ARCH, f"""
        mov rax, rsp
        mov rbx, ss
        push rbx
        push rax
        pushfq
        mov rbx, cs
        push rbx
        lea rax, [rip + back]
        push rax
        iretq
    back:
        mov byte ptr [{X86_DATA:#x}], 1
        {END}""")
    vm.vcpus[0].context.vmcb.set_intercept("IRET")
    assert vm.run(timeout=10).status == 1
    (exit, rip, _), = vmm.seen
    assert exit.raw.EXITCODE == 0x74 and exit.raw.NRIP == rip + 2
    assert vm.memory.read(rip, 2) == b"\x48\xcf" and vm.memory.read(X86_DATA, 1) == b"\x01"


@pytest.mark.parametrize("emulate", [False, True])
def test_intn_exits_with_the_vector_then_is_delivered_unless_emulated(make_vm, hvsim_pm, emulate):
    vmm = Vmm(skip_all if emulate else None)
    hvsim_pm.register(vmm)
    vm = boot(make_vm, ARCH, f"""
        int 0x40
        mov al, [{UD_MARK:#x}]
        out 0xf4, al
        hlt
    h40:
        {handler(0x40)}""", gates={0x40: "h40"})
    vm.vcpus[0].context.vmcb.set_intercept("INTN")
    status = vm.run(timeout=10).status
    (exit, rip, _), = vmm.seen
    assert exit.raw.EXITCODE == 0x75 and exit.reason == "VMEXIT_SWINT"
    assert exit.raw.EXITINFO1 == 0x40 and exit.raw.NRIP == rip + 2 and vm.memory.read(rip, 2) == b"\xcd\x40"
    assert status == (1 if emulate else 0x40 << 1 | 1)


def test_intn_below_32_is_a_software_interrupt_too(make_vm, hvsim_pm):
    vmm = Vmm(skip_all)
    hvsim_pm.register(vmm)
    vm = boot(make_vm, ARCH, f"int 0x0d\n{END}")
    vm.vcpus[0].context.vmcb.set_intercept("INTN")
    assert vm.run(timeout=10).status == 1
    (exit, _, _), = vmm.seen
    assert exit.raw.EXITCODE == 0x75 and exit.raw.EXITINFO1 == 0x0D


@pytest.mark.parametrize("arch", ["intel_vtx", "amd_svm"])
def test_icebp_is_a_db_trap_unless_intercepted(make_vm, hvsim_pm, arch):
    vmm = Vmm(skip_all)
    hvsim_pm.register(vmm)
    src = f"""
        .byte 0xf1
        mov al, [{UD_MARK:#x}]
        out 0xf4, al
        hlt
    db:
        {handler(1)}"""
    vm = boot(make_vm, arch, src, gates={1: "db"})
    assert vm.run(timeout=10).status == 1 << 1 | 1 and not vmm.seen  # #DB delivered, past the ICEBP
    if arch == "amd_svm":
        vm = boot(make_vm, arch, src, gates={1: "db"})
        vm.vcpus[0].context.vmcb.set_intercept("ICEBP")
        assert vm.run(timeout=10).status == 1
        (exit, rip, _), = vmm.seen
        assert exit.raw.EXITCODE == 0x88 and exit.raw.NRIP == rip + 1


def test_rdpru_is_ud_unless_intercepted(make_vm, hvsim_pm):
    vmm = Vmm(skip_all)
    hvsim_pm.register(vmm)
    src = f"""
        xor ecx, ecx
        .byte 0x0f, 0x01, 0xfd
        mov al, [{UD_MARK:#x}]
        out 0xf4, al
        hlt
    ud:
        {handler(6, 3)}"""
    vm = boot(make_vm, ARCH, src, gates={6: "ud"})
    assert vm.run(timeout=10).status == 6 << 1 | 1
    vm = boot(make_vm, ARCH, src, gates={6: "ud"})
    vm.vcpus[0].context.vmcb.set_intercept("RDPRU")
    assert vm.run(timeout=10).status == 1
    (exit, rip, _), = vmm.seen
    assert exit.raw.EXITCODE == 0x8E and exit.raw.NRIP == rip + 3


def test_efer_write_trap_reports_the_new_value_after_the_write(make_vm, hvsim_pm):
    seen = []

    def at_exit(vcpu, exit):
        seen.append((exit.raw.EXITCODE, exit.raw.EXITINFO1, exit.raw.NRIP, vcpu.rip(), vcpu.efer()))

    hvsim_pm.register(Vmm(at_exit))
    vm = boot(make_vm, ARCH, f"""
        mov ecx, 0xc0000080
        rdmsr
        or eax, 0x800
        wrmsr
        after:
        mov byte ptr [{X86_DATA:#x}], 1
        {END}""")
    vm.vcpus[0].context.vmcb.set_intercept("EFER_WRITE_TRAP")
    assert vm.run(timeout=10).status == 1
    ((exitcode, info1, nrip, rip, efer),) = seen
    assert exitcode == 0x8F and info1 == efer and efer & 0x800  # NXE written
    assert nrip == rip and vm.memory.read(rip - 2, 2) == b"\x0f\x30"  # a trap: at the next instruction


def test_pushf_is_not_trapped_while_nobody_intercepts_it(make_vm):
    vm = boot(make_vm, ARCH, f"pushfq\npopfq\n{END}")
    assert vm.run(timeout=10).status == 1
    assert not [kind for kind, *_ in vm.vcpus[0]._traps.sites.values() if kind in ("pushf", "popf", "iret")]


def test_a_pushf_intercept_set_later_reaches_code_translated_before(make_vm, hvsim_pm):
    """The PUSHF in the loop was translated (untrapped) before the VMM set the intercept at
    the VMMCALL; from the next VMRUN on it exits (the engine's translations are redone)."""
    from unicorn import x86_const as X

    from hvsim import hookimpl
    from hvsim.core.exits import ExitKind

    class LateIntercept:
        pushf_rips = []

        @hookimpl
        def hvsim_exit_handlers(self, vm, registry):
            def on_vmmcall(vcpu, exit):
                vcpu.context.vmcb.set_intercept("PUSHF")
                vcpu.set_rip(vcpu.rip() + 3)

            def on_pushf(vcpu, exit):
                self.pushf_rips.append(vcpu.rip())
                vcpu.regs.write(X.UC_X86_REG_RCX, 1)  # end the loop; the PUSHF itself runs

            registry.add(ExitKind.HYPERCALL, on_vmmcall)
            registry.add(ExitKind.INSTRUCTION, on_pushf)

    plugin = LateIntercept()
    hvsim_pm.register(plugin)
    vm = boot(make_vm, ARCH, f"""
        mov ecx, 3
    warm:
        pushfq
        popfq
        loop warm
        vmmcall
        mov rcx, {1 << 40}
    spin:
        pushfq
        popfq
        loop spin
        {END}""")
    assert vm.run(timeout=20).status == 1
    assert plugin.pushf_rips and vm.memory.read(plugin.pushf_rips[0], 1) == b"\x9c"


@pytest.mark.parametrize("encoding,name,exitcode", [
    ("0x0f, 0x01, 0xda", "VMLOAD", 0x82), ("0x0f, 0x01, 0xdb", "VMSAVE", 0x83),
    ("0x0f, 0x01, 0xde", "SKINIT", 0x86), ("0x0f, 0x01, 0xdf", "INVLPGA", 0x7A)])
def test_svm_instructions_exit_when_intercepted_else_ud(make_vm, hvsim_pm, encoding, name, exitcode):
    """The guest is shown no SVM (CPUID, EFER.SVME its VMM's): without the intercept these are
    #UD; with it a #VMEXIT the VMM may emulate."""
    vmm = Vmm(skip_all)
    hvsim_pm.register(vmm)
    src = f"""
        .byte {encoding}
        mov al, [{UD_MARK:#x}]
        out 0xf4, al
        hlt
    ud:
        {handler(6, 3)}"""
    vm = boot(make_vm, ARCH, src, gates={6: "ud"})
    assert vm.run(timeout=10).status == 6 << 1 | 1 and not vmm.seen
    vm = boot(make_vm, ARCH, src, gates={6: "ud"})
    vm.vcpus[0].context.vmcb.set_intercept(name)
    assert vm.run(timeout=10).status == 1
    (exit, rip, _), = vmm.seen
    assert exit.raw.EXITCODE == exitcode and exit.raw.NRIP == rip + 3
