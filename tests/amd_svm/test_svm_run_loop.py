"""The run loop goes through a real VMCB: every exit is a #VMEXIT written into the VMCB bytes,
leaving the engine saves the guest state, entering it is a VMRUN with its consistency checks."""

from __future__ import annotations

import struct

from guestlib import X86_DATA, X86_STACK, x86_64
from hvsim import hookimpl
from hvsim.core.exits import ExitKind

END = "mov al, 0\nout 0xf4, al\nhlt"


def vmcb_bytes(vcpu, offset, size=8):
    return vcpu.vm.host.read(vcpu.context.vmcb.pa + offset, size)


class VmcbSnapshots:
    """Reads the VMCB's exit fields as each exit is observed."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def hvsim_vm_exit(self, vcpu, exit):
        code, info1, info2 = struct.unpack("<QQQ", vmcb_bytes(vcpu, 0x070, 24))
        nrip = struct.unpack("<Q", vmcb_bytes(vcpu, 0x0C8))[0]
        self.seen.append((exit.reason, code, info1, info2, nrip))


def test_every_exit_is_written_into_the_vmcb_at_the_apms_offsets(make_vm, hvsim_pm):
    snaps = VmcbSnapshots()
    hvsim_pm.register(snaps)
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nxor eax, eax\ncpuid\nmov dx, 0x3f8\nmov al, 0x41\nout dx, al\n{END}"))
    vm.run(timeout=10)
    cpuid, out = snaps.seen[0], snaps.seen[1]
    assert cpuid[:2] == ("VMEXIT_CPUID", 0x72)
    assert vm.memory.read(cpuid[4] - 2, 2) == b"\x0f\xa2"  # nRIP: after the CPUID
    assert out[:2] == ("VMEXIT_IOIO", 0x7B)
    assert out[2] == (0x3F8 << 16) | 0x10 | 0x200  # port, SZ8, A64, OUT
    assert out[3] == out[4]  # EXITINFO2 = nRIP for IOIO


def test_leaving_the_engine_saves_the_guest_state_into_the_vmcb(make_vm):
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nmov rax, 0x1122334455667788\n{END}"))
    vm.run(timeout=10)
    vmcb = vm.vcpus[0].context.vmcb
    assert vmcb.read("RAX") & 0xFF == 0  # AL was cleared for the debug exit
    assert vmcb.read("RSP") == X86_STACK
    assert vmcb.read("EFER") & 0x1500 == 0x1500  # LME, LMA, and SVME (the VMM's)
    assert vmcb.segment("CS").selector == 0x18 and vmcb.segment("CS").l  # a 64-bit code segment
    assert vmcb.read("CPL") == 0


def test_vmrun_with_asid_zero_fails_its_consistency_checks(make_vm, hvsim_pm, recorder):
    vm = make_vm("amd_svm")
    vm.load(x86_64(END))
    vm.vcpus[0].context.vmcb.write("GUEST_ASID", 0)  # APM 15.5.1: ASID 0 is the host's
    result = vm.run(timeout=10)
    assert result.status == 4 and "ASID" in result.reason
    assert vm.vcpus[0].context.vmcb.read("EXITCODE") == (1 << 64) - 1  # VMEXIT_INVALID
    (invalid,) = recorder.of(ExitKind.INVALID_STATE)
    assert invalid.reason == "VMEXIT_INVALID"


class EditRaxOnHlt:
    """A VMM that answers HLT by writing the guest's RAX in the VMCB and resuming it."""

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def on_hlt(vcpu, exit):
            vcpu.context.vmcb.write("RAX", 0x1234)

        registry.add(ExitKind.HALT, on_hlt)


def test_vmrun_loads_the_state_a_vmm_wrote_into_the_vmcb(make_vm, hvsim_pm):
    hvsim_pm.register(EditRaxOnHlt())
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nxor eax, eax\nhlt\nmov [{X86_DATA:#x}], rax\n{END}"))
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read_u64(X86_DATA) == 0x1234


def test_ports_clear_in_the_iopm_do_not_exit_but_still_reach_their_device(make_vm):
    from hvsim.plugins.amd_svm import iopm

    vm = make_vm("amd_svm")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nmov dx, 0x3f8\nmov al, 0x68\nout dx, al\nout 0x80, al\n{END}"))
    context = vm.vcpus[0].context
    iopm.iopm_set(vm.host, context.iopm_pa, 0x3F8, intercept=False, count=8)  # COM1 passed through
    assert vm.run(timeout=10).status == 1
    assert vm.console.output == b"h"  # the UART still got the byte
    assert vm.stats.counts() == {"VMEXIT_IOIO": 2}  # only port 0x80 and the debug exit


def test_without_the_ioio_intercept_no_port_access_exits(make_vm):
    vm = make_vm("amd_svm")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nmov dx, 0x3f8\nmov al, 0x68\nout dx, al\n{END}"))
    vm.vcpus[0].context.vmcb.set_intercept("IOIO_PROT", False)
    assert vm.run(timeout=10).status == 1  # isa-debug-exit reached without an exit
    assert vm.console.output == b"h" and "VMEXIT_IOIO" not in vm.stats.counts()
