"""The EL2 register file as the hypervisor programs it (Arm ARM D23.2): reset values, RES0 and
RES1 bits kept on every write, one file per vCPU, and what the guest sees through VPIDR_EL2,
VMPIDR_EL2 and CNTVOFF_EL2."""

from __future__ import annotations

import pytest
from el2guest import SYSTEM_OFF, guest
from hvsim.core.vm import STATUS_OFF
from hvsim.plugins.arm_el2 import el2

ONES = (1 << 64) - 1


@pytest.mark.parametrize("name", list(el2.REGISTERS))
def test_res0_bits_read_as_zero_and_res1_bits_as_one_after_any_write(arm_vm, name):
    _enc, res0, res1, _reset = el2.REGISTERS[name]
    regs = arm_vm().vcpus[0].el2
    regs.write(name, ONES)
    assert regs.read(name) == ONES & ~res0
    regs.write(name, 0)
    assert regs.read(name) == res1


@pytest.mark.parametrize("name, value", [
    ("HCR_EL2", el2.HCR_EL2_DEFAULT), ("CPTR_EL2", 0x32FF), ("MDCR_EL2", el2.MDCR_EL2_DEFAULT),
    ("CNTHCTL_EL2", el2.CNTHCTL_EL1PCTEN), ("HSTR_EL2", 0), ("VTTBR_EL2", 0),
    ("VTCR_EL2", 1 << 31), ("VBAR_EL2", 0), ("CNTVOFF_EL2", 0), ("ESR_EL2", 0), ("FAR_EL2", 0),
    ("HPFAR_EL2", 0), ("ELR_EL2", 0), ("SPSR_EL2", 0),
])
def test_reset_values(arm_vm, name, value):
    assert arm_vm().vcpus[0].el2.read(name) == value


def test_vpidr_resets_to_midr_and_vmpidr_to_the_vcpus_mpidr(arm_vm):
    vm = arm_vm(vcpus=2)
    midr = vm.vcpus[0].sysregs.read((3, 0, 0, 0, 0))
    assert [v.el2.VPIDR_EL2 for v in vm.vcpus] == [midr, midr]
    assert [v.el2.VMPIDR_EL2 for v in vm.vcpus] == [0x8000_0000, 0x8000_0001]


def test_each_vcpu_has_its_own_el2_registers(arm_vm):
    vm = arm_vm(vcpus=2)
    vm.vcpus[0].el2.VTTBR_EL2 = 0x0001_0000_4000_0000
    vm.vcpus[0].el2.MDCR_EL2 = 0
    assert vm.vcpus[1].el2.VTTBR_EL2 == 0 and vm.vcpus[1].el2.MDCR_EL2 == el2.MDCR_EL2_DEFAULT


def test_an_unknown_register_name_is_one_clear_error(arm_vm):
    with pytest.raises(KeyError, match="not an EL2 register"):
        arm_vm().vcpus[0].el2.read("HCRX_EL2")


def test_the_guest_reads_vpidr_as_midr_el1_and_vmpidr_as_mpidr_el1(arm_vm):
    vm = arm_vm(guest("mrs x5, midr_el1\nmrs x6, mpidr_el1\n" + SYSTEM_OFF))
    vm.vcpus[0].el2.VPIDR_EL2 = 0x411F_D070  # a Cortex-A57 r1p0, as the hypervisor says
    vm.vcpus[0].el2.VMPIDR_EL2 = 0x0102  # Aff1 1, Aff0 2; bit 31 is RES1
    assert vm.run(timeout=5).status == STATUS_OFF
    assert vm.vcpus[0].xreg(5) == 0x411F_D070
    assert vm.vcpus[0].xreg(6) == 0x8000_0102
    assert vm.vcpus[0].mpidr == 0x8000_0102  # PSCI names the vCPU by it


def test_the_guest_counts_virtual_time_through_cntvoff_el2(arm_vm):
    vm = arm_vm(guest("mrs x5, cntpct_el0\nmrs x6, cntvct_el0\nmrs x7, cntpct_el0\n" + SYSTEM_OFF))
    offset = 0x1234_5678_9A
    vm.vcpus[0].el2.CNTVOFF_EL2 = offset
    vm.run(timeout=5)
    pct0, vct, pct1 = (vm.vcpus[0].xreg(n) for n in (5, 6, 7))
    # CNTVCT_EL0 = CNTPCT_EL0 - CNTVOFF_EL2, in 64 bits (it wraps while the counter is below the offset)
    assert (vct - (pct0 - offset)) % (1 << 64) <= pct1 - pct0


def test_hstr_el2_holds_its_value_and_traps_nothing_in_aarch64(arm_vm, recorder):
    vm = arm_vm(guest("mrs x5, sctlr_el1\nmrs x6, ttbr0_el1\n" + SYSTEM_OFF))
    e = vm.vcpus[0].el2
    e.HSTR_EL2 = ONES
    e.HCR_EL2 &= ~(el2.HCR_TRVM | el2.HCR_TVM)
    vm.run(timeout=5)
    assert e.HSTR_EL2 == 0xBFEF
    assert [x for x in recorder.exits if x.reason == "ESR_ELx_EC_SYS64"] == []
