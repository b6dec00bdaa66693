"""``vm.translate`` on arm64: the guest's stage 1, then the hypervisor's stage 2 (hvsim_stage2_translate).

Arm ARM (DDI 0487) D8: the IPA a stage-1 walk gives goes through stage 2 (VTTBR_EL2 / VTCR_EL2);
the hook answers what the guest's own access would get, so a page stage 2 remaps, unmaps or
makes read-only is seen as such, not as the VM's RAM slots say.
"""

from __future__ import annotations

from el2guest import SYSTEM_OFF, guest
from hvsim.core.memory import Access
from hvsim.core.vm import STATUS_OFF
from hvsim.plugins.arm_el2 import stage2
from test_stage2 import REMAPPED_PA, REMAPPED_VA, mmu_on


def test_vm_translate_walks_the_guests_stage1_then_the_hypervisors_stage2(arm_vm):
    vm = arm_vm(guest(mmu_on() + SYSTEM_OFF))
    assert vm.run(timeout=5).status == STATUS_OFF
    va, ipa = REMAPPED_VA + 0x123, REMAPPED_PA + 0x123
    walk, hpa = vm.translate(0, va)
    assert walk.address == ipa and [s.level for s in walk.steps] == [1, 2, 3]
    assert hpa == vm.memory.translate(ipa)
    tables = vm.arch.stage2_tables
    other = vm.memory.translate(0x4300_B000)
    tables.map_page(REMAPPED_PA, other)  # the hypervisor points the IPA elsewhere
    assert vm.translate(0, va)[1] == other + 0x123  # stage 2's answer, not the memslot's
    tables.set_page(REMAPPED_PA, clear_bits=stage2.S2AP_W)
    assert vm.translate(0, va, Access.READ)[1] == other + 0x123
    assert vm.translate(0, va, Access.WRITE)[1] is None  # a write would be a permission fault
    tables.unmap_page(REMAPPED_PA)
    walk, hpa = vm.translate(0, va)
    assert walk.address == ipa and hpa is None
    assert vm.translate(0, 0x4200_1000)[1] is None  # stage 1 faults (L3[1] invalid): no IPA at all


def test_vm_translate_with_hcr_el2_vm_clear_uses_the_ram_slots(arm_vm):
    vm = arm_vm(guest(SYSTEM_OFF))
    vm.vcpus[0].el2.HCR_EL2 &= ~1  # HCR_EL2.VM: no stage 2
    vm.arch.stage2_tables.unmap_page(0x4300_0000)
    assert vm.translate(0, 0x4300_0010)[1] == vm.memory.translate(0x4300_0010)
    assert vm.translate(0, 0x0900_0000)[1] is None  # the UART: no RAM there


def test_shadow_paging_on_arm_is_refused_with_one_line_saying_why(tmp_path, capsys):
    """Arm ARM D1.x: stage-1 Data/Instruction Aborts from EL1 are taken to EL1 (HCR_EL2.TGE
    routes EL0's exceptions only, and makes EL1 unusable): no EL2 trap exists for a shadow-
    paging VMM to fill its tables on demand."""
    from hvsim.core.cli import main

    image = tmp_path / "guest.bin"
    image.write_bytes(guest(SYSTEM_OFF))
    assert main(["run", str(image), "--arch", "arm_el2", "--paging", "shadow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage-1 faults are taken to its own EL1 vectors" in err[0] and "Traceback" not in err[0]
