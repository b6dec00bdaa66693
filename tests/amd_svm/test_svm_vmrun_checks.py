"""VMRUN's consistency checks (AMD APM Vol. 2, 15.5.1 "Canonicalization and Consistency Checks"):
one test per illegal state, each starting from a VMCB that passes them all."""

import pytest

from hvsim.plugins.amd_svm.svm import (CHECKS, CR0_CD, CR0_NW, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA,
                                       EFER_LME, EFER_SVME, SvmCpu, SvmFeatures, apply_vmexit_invalid,
                                       eventinj_is_legal, vmrun_consistency_checks)
from hvsim.plugins.amd_svm.vmcb import VMEXIT_INVALID, Event, EventType, Segment
from svmlayout import CODE64


def failed(vmcb, features=None):
    return [f.check for f in vmrun_consistency_checks(vmcb, features or SvmFeatures())]


def test_the_baseline_vmcb_passes_every_check(vmcb):
    assert failed(vmcb) == []


def test_vmrun_with_efer_svme_clear_fails(vmcb):
    vmcb["EFER"] = EFER_LME | EFER_LMA
    assert failed(vmcb) == ["EFER_SVME"]


def test_cr0_cd_clear_with_nw_set_is_illegal(vmcb):
    vmcb["CR0"] = vmcb["CR0"] | CR0_NW
    assert failed(vmcb) == ["CR0_CD_NW"]
    vmcb["CR0"] = vmcb["CR0"] | CR0_CD  # CD=1, NW=1 is legal
    assert failed(vmcb) == []


def test_cr0_upper_32_bits_must_be_zero(vmcb):
    vmcb["CR0"] = vmcb["CR0"] | 1 << 32
    assert failed(vmcb) == ["CR0_HIGH"]


def test_cr3_mbz_bits_in_long_mode_are_illegal(vmcb):
    vmcb["CR3"] = 1 << 52 | 0x2000
    assert failed(vmcb) == ["CR3_MBZ"]
    vmcb["CR3"] = 1 << 47  # inside a 48-bit physical-address width
    assert failed(vmcb) == []
    assert failed(vmcb, SvmFeatures(phys_addr_bits=40)) == ["CR3_MBZ"]


@pytest.mark.parametrize("bit", [13, 14, 15, 19, 24, 40, 63])
def test_cr4_mbz_bits_are_illegal(vmcb, bit):
    vmcb["CR4"] = CR4_PAE | 1 << bit
    assert failed(vmcb) == ["CR4_MBZ"]


@pytest.mark.parametrize(("reg", "check"), [("DR6", "DR6_HIGH"), ("DR7", "DR7_HIGH")])
def test_dr6_and_dr7_upper_32_bits_must_be_zero(vmcb, reg, check):
    vmcb[reg] = vmcb[reg] | 1 << 40
    assert failed(vmcb) == [check]


@pytest.mark.parametrize("bit", [1, 9, 16, 22, 63])
def test_efer_mbz_bits_are_illegal(vmcb, bit):
    vmcb["EFER"] = vmcb["EFER"] | 1 << bit
    assert failed(vmcb) == ["EFER_MBZ"]


def test_efer_lme_without_long_mode_support_is_illegal(vmcb):
    assert "LONG_MODE_UNSUPPORTED" in failed(vmcb, SvmFeatures(long_mode=False))


def test_efer_lme_and_cr0_pg_with_cr4_pae_clear_is_illegal(vmcb):
    vmcb["CR4"] = 0
    assert failed(vmcb) == ["LME_PG_NO_PAE"]


def test_efer_lme_and_cr0_pg_with_cr0_pe_clear_is_illegal(vmcb):
    vmcb["CR0"] = vmcb["CR0"] & ~CR0_PE
    assert failed(vmcb) == ["LME_PG_NO_PE"]


def test_efer_lme_cr0_pg_cr4_pae_cs_l_and_cs_d_all_set_is_illegal(vmcb):
    vmcb.set_segment("CS", Segment(0x8, CODE64 | 1 << 10, 0xFFFF_FFFF, 0))  # D/B with L
    assert failed(vmcb) == ["LME_PG_PAE_CS_L_D"]


def test_legacy_mode_guest_passes_without_lme(vmcb):
    vmcb["EFER"] = EFER_SVME
    vmcb["CR0"] = CR0_PE | CR0_PG
    vmcb["CR4"] = 0
    vmcb.set_segment("CS", Segment(0x8, 0xC9B, 0xFFFF_FFFF, 0))  # 32-bit code: D, G
    assert failed(vmcb) == []


def test_vmrun_without_the_vmrun_intercept_fails(vmcb):
    vmcb.set_intercept("VMRUN", False)
    assert failed(vmcb) == ["VMRUN_INTERCEPT"]


@pytest.mark.parametrize(("name", "size"), [("MSRPM_BASE_PA", 0x2000), ("IOPM_BASE_PA", 0x3000)])
def test_permission_map_extending_beyond_the_physical_address_width_fails(vmcb, name, size):
    top = 1 << 48
    vmcb[name] = top - size  # the last byte is the last physical address: legal
    assert failed(vmcb) == []
    vmcb[name] = top - 0x1000  # bits 11:0 ignored, so this map runs past the top
    assert failed(vmcb) == ["PERMISSION_MAP_ADDRESS"]


@pytest.mark.parametrize(("vector", "etype"), [(2, EventType.EXCEPTION), (15, EventType.EXCEPTION),
                                               (31, EventType.EXCEPTION), (32, EventType.EXCEPTION),
                                               (0x20, 1), (0x20, 5), (0x20, 6), (0x20, 7)])
def test_illegal_eventinj_fails(vmcb, vector, etype):
    vmcb.eventinj = Event(vector, etype)
    assert failed(vmcb) == ["EVENTINJ"]


@pytest.mark.parametrize(("vector", "etype"), [(13, EventType.EXCEPTION), (14, EventType.EXCEPTION),
                                               (2, EventType.NMI), (0x30, EventType.INTR),
                                               (0x80, EventType.SOFTWARE_INT), (3, EventType.SOFTWARE_INT)])
def test_legal_eventinj_passes(vmcb, vector, etype):
    vmcb.eventinj = Event(vector, etype)
    assert failed(vmcb) == []


def test_eventinj_without_the_valid_bit_is_not_checked():
    assert eventinj_is_legal(Event(2, 7, valid=False).encode())


def test_vmrun_with_asid_zero_fails_with_vmexit_invalid(vmcb):
    vmcb["GUEST_ASID"] = 0
    cpu = SvmCpu(efer=EFER_SVME)
    assert [f.check for f in cpu.vmrun(vmcb)] == ["ASID_ZERO"]
    assert vmcb["EXITCODE"] == VMEXIT_INVALID
    assert not cpu.in_guest and not cpu.gif


def test_several_failures_are_all_reported_in_the_apms_order(vmcb):
    vmcb["GUEST_ASID"] = 0
    vmcb["EFER"] = EFER_LME
    vmcb.set_intercept("VMRUN", False)
    assert failed(vmcb) == ["EFER_SVME", "VMRUN_INTERCEPT", "ASID_ZERO"]


def test_each_failure_carries_the_apms_wording(vmcb):
    vmcb["GUEST_ASID"] = 0
    (f,) = vmrun_consistency_checks(vmcb)
    assert f.text == "ASID is equal to zero." == CHECKS["ASID_ZERO"]


def test_apply_vmexit_invalid_writes_exitcode_minus_one(vmcb, host):
    apply_vmexit_invalid(vmcb)
    assert host.read(vmcb.pa + 0x70, 8) == b"\xff" * 8


def test_a_vmrun_that_passes_enters_the_guest_with_gif_set(vmcb):
    cpu = SvmCpu(efer=EFER_SVME, gif=False)
    assert cpu.vmrun(vmcb) == []
    assert cpu.in_guest and cpu.gif
    cpu.vmexit()
    assert not cpu.in_guest and not cpu.gif
