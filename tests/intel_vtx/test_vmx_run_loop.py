"""The run loop goes through a real VMCS: VMXON, VMCLEAR, VMPTRLD, VMWRITEs, VMLAUNCH, then a
VM exit recorded in the VMCS for every exit and the guest-state area saved on leaving the
engine; a VMM's VMWRITE to the guest state is obeyed at the next VMRESUME."""

from __future__ import annotations

from guestlib import X86_DATA, X86_STACK, x86_64
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.plugins.intel_vtx import msrs
from hvsim.plugins.intel_vtx.vmcs import Field

END = "mov al, 0\nout 0xf4, al\nhlt"


def vmread(vcpu, field):
    result = vcpu.context.vmx.vmread(field)
    assert result.ok, result
    return result.value


class VmcsSnapshots:
    def __init__(self):
        self.seen = []

    @hookimpl
    def hvsim_vm_exit(self, vcpu, exit):
        self.seen.append((exit.reason, vmread(vcpu, Field.VM_EXIT_REASON), vmread(vcpu, Field.EXIT_QUALIFICATION),
                          vmread(vcpu, Field.VM_EXIT_INSTRUCTION_LEN), vmread(vcpu, Field.GUEST_RIP)))


def test_every_exit_is_recorded_in_the_current_vmcs(make_vm, hvsim_pm):
    snaps = VmcsSnapshots()
    hvsim_pm.register(snaps)
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nxor eax, eax\ncpuid\nmov dx, 0x3f8\nmov al, 0x41\nout dx, al\n{END}"))
    vm.run(timeout=10)
    cpuid, out = snaps.seen[0], snaps.seen[1]
    assert cpuid[:2] == ("EXIT_REASON_CPUID", 10) and cpuid[3] == 2
    assert vm.memory.read(cpuid[4], 2) == b"\x0f\xa2"  # GUEST_RIP: the CPUID itself
    assert out[:2] == ("EXIT_REASON_IO_INSTRUCTION", 30)
    assert out[2] == (0x3F8 << 16) | 0  # port 0x3F8 from DX, 1 byte, OUT
    assert vm.memory.read(out[4], 1) == b"\xee" and out[3] == 1


def test_the_vmcs_holds_the_controls_hvsim_runs_with(make_vm):
    vm = make_vm("intel_vtx")
    vcpu = vm.vcpus[0]
    proc = vmread(vcpu, Field.CPU_BASED_VM_EXEC_CONTROL)
    assert proc & msrs.CPU_BASED_HLT_EXITING and proc & msrs.CPU_BASED_UNCOND_IO_EXITING
    assert proc & msrs.CPU_BASED_USE_MSR_BITMAPS
    bitmap = vmread(vcpu, Field.MSR_BITMAP)
    assert vm.host.read(bitmap + 0x1B // 8, 1)[0] & 1 << (0x1B % 8)  # IA32_APIC_BASE reads exit
    assert vm.host.read(bitmap + 0x800 + 0x1B // 8, 1)[0] & 1 << (0x1B % 8)  # and writes
    assert vm.host.read(bitmap + 0x80 // 8, 1)[0] == 0  # other MSRs are the guest's


def test_leaving_the_engine_saves_the_guest_state_area(make_vm):
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\n{END}"))
    vm.run(timeout=10)
    vcpu = vm.vcpus[0]
    assert vmread(vcpu, Field.GUEST_RSP) == X86_STACK
    assert vmread(vcpu, Field.GUEST_CS_SELECTOR) == 0x18
    assert vmread(vcpu, Field.GUEST_CS_AR_BYTES) & (1 << 13)  # L: a 64-bit code segment
    assert vmread(vcpu, Field.GUEST_IA32_EFER) & 0x500 == 0x500
    assert vcpu.context.vmcs.launched


class SkipAfterHlt:
    """A VMM that handles HLT by VMWRITEing GUEST_RIP past the HLT and the jmp after it."""

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def on_hlt(vcpu, exit):
            rip = vmread(vcpu, Field.GUEST_RIP)
            assert vcpu.context.vmx.vmwrite(Field.GUEST_RIP, rip + 1 + 2).ok

        registry.add(ExitKind.HALT, on_hlt)


def test_vmresume_loads_a_guest_rip_the_vmm_wrote(make_vm, hvsim_pm):
    hvsim_pm.register(SkipAfterHlt())
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        hlt
        jmp bad
        mov byte ptr [{X86_DATA:#x}], 1
        {END}
    bad:
        mov al, 7
        out 0xf4, al
        hlt"""))
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read(X86_DATA, 1) == b"\x01"


def test_with_io_bitmaps_only_the_ports_whose_bits_are_set_exit(make_vm):
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nmov dx, 0x3f8\nmov al, 0x68\nout dx, al\nout 0x80, al\n{END}"))
    vcpu = vm.vcpus[0]
    vmx = vcpu.context.vmx
    proc = vmread(vcpu, Field.CPU_BASED_VM_EXEC_CONTROL)
    assert vmx.vmwrite(Field.CPU_BASED_VM_EXEC_CONTROL,
                       (proc | msrs.CPU_BASED_USE_IO_BITMAPS) & ~msrs.CPU_BASED_UNCOND_IO_EXITING).ok
    bitmap_a = vmread(vcpu, Field.IO_BITMAP_A)
    vm.host.write(bitmap_a + 0x3F8 // 8, b"\x00")  # ports 0x3F8-0x3FF: no exits
    assert vm.run(timeout=10).status == 1
    assert vm.console.output == b"h"
    assert vm.stats.counts() == {"EXIT_REASON_IO_INSTRUCTION": 2}  # port 0x80 and the debug exit


def test_without_io_exiting_controls_no_port_access_exits(make_vm):
    vm = make_vm("intel_vtx")
    vm.load(x86_64(f"mov rsp, {X86_STACK}\nmov dx, 0x3f8\nmov al, 0x68\nout dx, al\n{END}"))
    vcpu = vm.vcpus[0]
    proc = vmread(vcpu, Field.CPU_BASED_VM_EXEC_CONTROL)
    assert vcpu.context.vmx.vmwrite(Field.CPU_BASED_VM_EXEC_CONTROL, proc & ~msrs.CPU_BASED_UNCOND_IO_EXITING).ok
    assert vm.run(timeout=10).status == 1
    assert vm.console.output == b"h" and "EXIT_REASON_IO_INSTRUCTION" not in vm.stats.counts()


def test_a_vmcs_the_vmm_broke_fails_vm_entry_with_the_sdms_reason(make_vm, recorder):
    vm = make_vm("intel_vtx")
    vm.load(x86_64(END))
    assert vm.vcpus[0].context.vmx.vmwrite(Field.CR3_TARGET_COUNT, 5).ok  # at most 4 (SDM 26.2.1.1)
    result = vm.run(timeout=10)
    assert result.status == 4
    assert "VMfailValid(7)" in result.reason and "cr3_target_count" in result.reason
    (failed,) = recorder.of(ExitKind.INVALID_STATE)
    assert failed.reason == "EXIT_REASON_INVALID_STATE"


def test_invalid_guest_state_is_an_entry_failure_exit_33(make_vm):
    vm = make_vm("intel_vtx")
    vm.load(x86_64(END))
    vcpu = vm.vcpus[0]
    vcpu.context.vmrun()  # VMLAUNCH once; the VMM then breaks the guest state
    assert vcpu.context.vmx.vmwrite(Field.GUEST_RFLAGS, 0).ok  # bit 1 must be 1 (SDM 26.3.1.4)
    failed = vcpu.context.vmrun()
    assert failed and "26.3.1.4" in failed
    assert vmread(vcpu, Field.VM_EXIT_REASON) == (1 << 31) | 33
