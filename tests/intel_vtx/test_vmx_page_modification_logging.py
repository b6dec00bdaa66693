"""Page-modification logging (Intel SDM 29.3.6, 28.2.1): with "enable PML" and EPT accessed and
dirty flags, each EPT dirty flag the processor sets logs its page's guest-physical address at
PML_ADDRESS + 8 * GUEST_PML_INDEX and decrements the index; when an accessed or dirty flag is to
be set with the index outside 0-511, the access does not happen and the VM exits with reason 62
(page-modification log full), the guest at the instruction."""

from __future__ import annotations

import struct

from eventvmm import Script, label, store_labels
from guestlib import x86_64
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.plugins.intel_vtx import msrs
from hvsim.plugins.intel_vtx.ept import EPTP_AD
from hvsim.plugins.intel_vtx.vmcs import Field

PAGES = (0x40_0000, 0x60_0000, 0x80_0000)  # one per 2 MiB EPT page of the identity EPT
PML_GPA = 0x1F0_0000  # a guest page the guest never touches; its host-physical page holds the log
GUEST = f"""
    {store_labels('s0')}
    hlt
    hlt
    mov eax, 0x5a
s0:
    mov byte ptr [{PAGES[0]:#x}], al
    mov byte ptr [{PAGES[1]:#x}], al
    mov byte ptr [{PAGES[2]:#x}], al
    mov al, 0
    out 0xf4, al
    hlt
"""


def enable_pml(vmm):
    """At the first HLT: PML on with an empty log, EPT A/D on, the translations cached without
    A/D dropped (INVEPT, all contexts)."""
    vcpu = vmm.vcpu
    vmm.write(Field.SECONDARY_VM_EXEC_CONTROL,
              vmm.read(Field.SECONDARY_VM_EXEC_CONTROL) | msrs.SECONDARY_EXEC_ENABLE_PML)
    vmm.write(Field.PML_ADDRESS, vcpu.vm.memory.translate(PML_GPA))  # a host-physical address
    vmm.write(Field.GUEST_PML_INDEX, 511)
    vmm.write(Field.EPT_POINTER, vmm.read(Field.EPT_POINTER) | EPTP_AD)
    assert vcpu.context.vmx.invept(2).ok


def logged(vm, index: int) -> list[int]:
    """The log from entry 511 down to the one after ``index``, in the order written."""
    pml = vm.memory.translate(PML_GPA)
    return [struct.unpack("<Q", vm.host.read(pml + 8 * i, 8))[0] for i in range(511, index, -1)]


def test_each_ept_dirty_flag_set_logs_its_page_and_decrements_the_index(make_vm, hvsim_pm):
    hvsim_pm.register(Script(enable_pml))
    vm = make_vm("intel_vtx")
    vm.load(x86_64(GUEST))
    assert vm.run(timeout=10).status == 1
    index = vm.vcpus[0].context.vmx.vmread(Field.GUEST_PML_INDEX).value
    log = logged(vm, index)
    assert len(log) >= 3 and all(entry & 0xFFF == 0 for entry in log)
    assert [entry for entry in log if entry in PAGES] == list(PAGES)  # each once, in store order
    assert vm.memory.read(PAGES[2], 1) == b"\x5a"


def test_a_full_log_is_exit_62_before_the_access_and_the_guest_goes_on_once_drained(make_vm, hvsim_pm):
    seen = []

    class DrainOnFull:
        @hookimpl
        def hvsim_exit_handlers(self, vm, registry):
            def stage2(vcpu, exit):
                vmx = vcpu.context.vmx
                seen.append((exit.reason, exit.raw.EXIT_REASON, exit.raw.EXIT_QUALIFICATION,
                             vmx.vmread(Field.GUEST_RIP).value, vm.memory.read(PAGES[0], 1)))
                assert vmx.vmwrite(Field.GUEST_PML_INDEX, 511).ok  # drained, as KVM's handle_pml_full

            registry.add(ExitKind.STAGE2_FAULT, stage2)

    def log_full(vmm):  # at the second HLT: the index has run past entry 0
        vmm.write(Field.GUEST_PML_INDEX, 0xFFFF)

    hvsim_pm.register(Script(enable_pml, log_full))
    hvsim_pm.register(DrainOnFull())
    vm = make_vm("intel_vtx")
    vm.load(x86_64(GUEST))
    assert vm.run(timeout=10).status == 1
    assert seen[0] == ("EXIT_REASON_PML_FULL", 62, 0, label(vm, 0), b"\x00")  # at the store, not done
    assert len(seen) == 1
    assert logged(vm, vm.vcpus[0].context.vmx.vmread(Field.GUEST_PML_INDEX).value)[:3] == list(PAGES)
    assert vm.memory.read(PAGES[0], 1) == b"\x5a"  # retried after the drain


def test_a_page_read_before_it_is_written_is_logged_at_the_write(make_vm, hvsim_pm):
    """The translation the read cached does not allow the write: the write walks the EPT again
    and sets the dirty flag (29.3.5), which logs the page."""
    reads = []
    hvsim_pm.register(Script(enable_pml, lambda vmm: None,
                             lambda vmm: reads.append(logged(vmm.vcpu.vm, vmm.read(Field.GUEST_PML_INDEX)))))
    vm = make_vm("intel_vtx")
    vm.load(x86_64(GUEST.replace("    mov eax, 0x5a\n", f"    mov al, byte ptr [{PAGES[0]:#x}]\n    hlt\n    mov eax, 0x5a\n")))
    assert vm.run(timeout=10).status == 1
    assert PAGES[0] not in reads[0]  # read only: accessed, not dirty
    log = logged(vm, vm.vcpus[0].context.vmx.vmread(Field.GUEST_PML_INDEX).value)
    assert [entry for entry in log if entry in PAGES] == list(PAGES)
