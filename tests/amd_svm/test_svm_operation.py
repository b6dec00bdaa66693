"""Enabling SVM and the global interrupt flag (AMD APM Vol. 2, 15.4, 15.17, 15.30), and the
faults the SVM instructions take (Vol. 3)."""

import pytest

from hvsim.plugins.amd_svm.svm import (EFER_LMA, EFER_LME, EFER_SVME, MSR_EFER, MSR_VM_CR, MSR_VM_HSAVE_PA,
                                       VM_CR_LOCK, VM_CR_SVMDIS, SvmCpu, SvmFault)


def test_msr_numbers_match_the_apm():
    assert (MSR_EFER, MSR_VM_CR, MSR_VM_HSAVE_PA) == (0xC000_0080, 0xC001_0114, 0xC001_0117)
    assert (EFER_SVME, VM_CR_LOCK, VM_CR_SVMDIS) == (1 << 12, 1 << 3, 1 << 4)


def test_efer_svme_enables_svm_instructions():
    cpu = SvmCpu()
    with pytest.raises(SvmFault) as e:
        cpu.check_instruction("VMRUN", rax=0x1000)
    assert e.value.vector == "#UD"
    cpu.wrmsr(MSR_EFER, EFER_SVME | EFER_LME | EFER_LMA)
    cpu.check_instruction("VMRUN", rax=0x1000)
    assert cpu.rdmsr(MSR_EFER) & EFER_SVME


def test_setting_efer_svme_with_vm_cr_svmdis_set_is_gp():
    cpu = SvmCpu(vm_cr=VM_CR_SVMDIS)
    with pytest.raises(SvmFault) as e:
        cpu.wrmsr(MSR_EFER, EFER_SVME)
    assert e.value.vector == "#GP" and not cpu.efer & EFER_SVME


def test_setting_vm_cr_svmdis_while_efer_svme_is_set_is_gp():
    cpu = SvmCpu(efer=EFER_SVME)
    with pytest.raises(SvmFault):
        cpu.wrmsr(MSR_VM_CR, VM_CR_SVMDIS)


def test_vm_cr_lock_makes_writes_to_lock_and_svmdis_ignored():
    cpu = SvmCpu()
    cpu.wrmsr(MSR_VM_CR, VM_CR_SVMDIS | VM_CR_LOCK)
    cpu.wrmsr(MSR_VM_CR, 0)
    assert cpu.rdmsr(MSR_VM_CR) == VM_CR_SVMDIS | VM_CR_LOCK
    with pytest.raises(SvmFault):
        cpu.wrmsr(MSR_EFER, EFER_SVME)


def test_vm_cr_without_lock_can_be_changed():
    cpu = SvmCpu()
    cpu.wrmsr(MSR_VM_CR, VM_CR_SVMDIS)
    cpu.wrmsr(MSR_VM_CR, 0)
    cpu.wrmsr(MSR_EFER, EFER_SVME)


@pytest.mark.parametrize("value", [0x1001, 0x800, 1 << 48])
def test_vm_hsave_pa_must_be_a_4k_aligned_physical_address(value):
    cpu = SvmCpu()
    with pytest.raises(SvmFault) as e:
        cpu.wrmsr(MSR_VM_HSAVE_PA, value)
    assert e.value.vector == "#GP"
    cpu.wrmsr(MSR_VM_HSAVE_PA, 0x7000)
    assert cpu.rdmsr(MSR_VM_HSAVE_PA) == 0x7000


def test_stgi_and_clgi_set_and_clear_the_global_interrupt_flag():
    cpu = SvmCpu(efer=EFER_SVME)
    assert cpu.gif  # GIF is 1 at reset
    cpu.clgi()
    assert not cpu.gif
    cpu.stgi()
    assert cpu.gif


@pytest.mark.parametrize("mnemonic", ["VMRUN", "VMLOAD", "VMSAVE", "STGI", "CLGI", "INVLPGA"])
def test_svm_instructions_are_ud_with_svme_clear_and_gp_above_cpl_0(mnemonic):
    with pytest.raises(SvmFault) as e:
        SvmCpu().check_instruction(mnemonic)
    assert e.value.vector == "#UD"
    with pytest.raises(SvmFault) as e:
        SvmCpu(efer=EFER_SVME).check_instruction(mnemonic, cpl=3)
    assert e.value.vector == "#GP"


@pytest.mark.parametrize("rax", [0x1008, 1 << 48])
def test_vmrun_vmload_vmsave_refuse_a_bad_vmcb_address_with_gp(rax):
    for mnemonic in ("VMRUN", "VMLOAD", "VMSAVE"):
        with pytest.raises(SvmFault) as e:
            SvmCpu(efer=EFER_SVME).check_instruction(mnemonic, rax=rax)
        assert e.value.vector == "#GP"


def test_skinit_is_ud_when_the_processor_does_not_support_it():
    with pytest.raises(SvmFault) as e:
        SvmCpu(efer=EFER_SVME).check_instruction("SKINIT")
    assert e.value.vector == "#UD"
