"""The stage-2 dirty flag is set by the first write to a page, also when a read cached its
translation first and the guest's own PTE is already dirty (so the guest's walk needs no
update): EPT with accessed/dirty flags (SDM 29.3.5, bit 9 of the leaf) and NPT, whose entries
the processor updates as ordinary x86 page tables (APM 15.25.5, bit 6). A VMM that clears them
to track dirty pages (KVM's dirty logging with A/D) relies on it."""

from __future__ import annotations

import pytest

from eventvmm import Script
from guestlib import x86_64
from hvsim.plugins.intel_vtx.ept import EPTP_AD
from hvsim.plugins.intel_vtx.vmcs import Field

PAGE = 0x60_0000
GUEST = f"""
    mov byte ptr [{PAGE:#x}], 1
    hlt
    mov al, byte ptr [{PAGE:#x}]
    mov byte ptr [{PAGE + 0x10:#x}], 0x5a
    mov al, 0
    out 0xf4, al
    hlt
"""
DIRTY = {"intel_vtx": 1 << 9, "amd_svm": 1 << 6}


def leaf(vcpu) -> int:
    steps, _hpa, fault = vcpu.mmu.stage2.steps(PAGE)
    assert fault is None
    return steps[-1].value


@pytest.mark.parametrize("arch", ["intel_vtx", "amd_svm"])
def test_a_write_after_a_read_sets_the_stage2_dirty_flag(make_vm, hvsim_pm, arch):
    def start(vmm):  # the guest's PTE is dirty; stage-2 dirty flag clear, TLBs flushed
        vcpu = vmm.vcpu
        if vmm.intel:  # A/D on from here (EPTP bit 6)
            vmm.write(Field.EPT_POINTER, vmm.read(Field.EPT_POINTER) | EPTP_AD)
            assert vcpu.context.vmx.invept(2).ok
        else:  # NPT has them always: clear the leaf's, as a dirty-logging VMM does
            steps, _hpa, _fault = vcpu.mmu.stage2.steps(PAGE)
            vcpu.vm.host.write(steps[-1].address, (steps[-1].value & ~DIRTY[arch]).to_bytes(8, "little"))
            vcpu.context.vmcb.write("TLB_CONTROL", 1)

    hvsim_pm.register(Script(start))
    vm = make_vm(arch)
    vm.load(x86_64(GUEST))
    assert vm.run(timeout=10).status == 1
    assert leaf(vm.vcpus[0]) & DIRTY[arch]  # the write after the read set it
    assert vm.memory.read(PAGE + 0x10, 1) == b"\x5a"
