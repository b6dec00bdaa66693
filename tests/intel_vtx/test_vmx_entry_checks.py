"""The VM-entry checks (Intel SDM Vol. 3C 26.2, 26.3.1, 26.4), one test per rule, named after it.

Every test starts from a VMCS that enters (a 64-bit guest and host, written through VMWRITE the
way vmm.py does), breaks one rule, and checks the outcome the SDM assigns: VMfailValid 7 for the
controls, 8 for the host state, a VM exit with reason 33 (34 for MSR loading), bit 31 set and the
SDM 26.8 exit qualification for the guest state. ``last_entry_failure`` must name the rule.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from conftest import (CODE64_AR, DATA_AR, TSS64_BUSY_AR, VMCS_B, make_vmx, w, with_current_vmcs,
                      write_revision)
from hvsim.plugins.intel_vtx import entry, msrs
from hvsim.plugins.intel_vtx.msrs import VmxCapabilities
from hvsim.plugins.intel_vtx.vmcs import Field
from hvsim.plugins.intel_vtx.vmx import Status, eptp_valid

BEYOND_MAXPHYADDR = 1 << 40
NON_CANONICAL = 0x0100_0000_0000_0000  # bit 56 set, 63:57 clear: the CPU has 57-bit linear addresses
MSR_AREA, VIRTUAL_APIC, PAGE = 0x8000, 0x9000, 0xA000
EPTP_WB_4LEVEL = 0x5000 | 6 | (3 << 3)


@pytest.fixture(autouse=True)
def enforce_every_check(monkeypatch):
    """Test the rules themselves, also those NOT_ENFORCED waives for hvsim's run loop."""
    monkeypatch.setattr(entry, "NOT_ENFORCED", {})


def r(vmx, name: str) -> int:
    return vmx.vmread(getattr(Field, name)).value


def control(vmx, name: str, *bits: int, clear: int = 0) -> None:
    value = r(vmx, name)
    for bit in bits:
        value |= bit
    w(vmx, **{name: value & ~clear})


def vmx_with(memory, **caps):
    return with_current_vmcs(make_vmx(memory, VmxCapabilities(**caps)))


def assert_vmfail(vmx, error: int, check: str) -> None:
    result = vmx.vmlaunch()
    assert result.status is Status.FAIL_VALID and result.error == error, (result, vmx.last_entry_failure)
    assert r(vmx, "VM_INSTRUCTION_ERROR") == error
    assert f"[{check}]" in vmx.last_entry_failure, vmx.last_entry_failure
    assert not vmx.current.launched


def invalid_control(vmx, check: str) -> None:
    assert_vmfail(vmx, 7, check)


def invalid_host_state(vmx, check: str) -> None:
    assert_vmfail(vmx, 8, check)


def invalid_guest_state(vmx, check: str, qualification: int = 0, reason: int = 33) -> None:
    result = vmx.vmlaunch()
    assert result.status is Status.ENTRY_FAILED, (result, vmx.last_entry_failure)
    assert result.exit_reason == (1 << 31) | reason and r(vmx, "VM_EXIT_REASON") == (1 << 31) | reason
    assert r(vmx, "EXIT_QUALIFICATION") == qualification
    assert f"[{check}]" in vmx.last_entry_failure, vmx.last_entry_failure
    assert not vmx.current.launched


def enters(vmx) -> None:
    result = vmx.vmlaunch()
    assert result.status is Status.ENTERED, (result, vmx.last_entry_failure)
    assert vmx.last_entry_failure is None


# -- the starting point ----------------------------------------------------------------------------
def test_the_valid_vmcs_enters(vmx):
    enters(vmx)
    assert vmx.vmresume().status is Status.ENTERED


def test_last_entry_failure_quotes_the_sdm_section_and_rule(vmx):
    w(vmx, CR3_TARGET_COUNT=5)
    vmx.vmlaunch()
    assert vmx.last_entry_failure.startswith("VMfailValid(7): SDM 26.2.1.1 [cr3_target_count]: The CR3-target")


def test_a_check_not_enforced_is_recorded_and_the_entry_goes_on(vmx, monkeypatch):
    monkeypatch.setattr(entry, "NOT_ENFORCED", {"cr3_target_count": "why"})
    w(vmx, CR3_TARGET_COUNT=5)
    enters(vmx)
    assert any("[cr3_target_count]" in line for line in vmx.last_entry_waived)


def check_names() -> set[str]:
    """Every snake_case string in entry.py, check names among them ({who} standing for guest_cs
    and guest_segment): catches a misspelt NOT_ENFORCED entry."""
    names = set(re.findall(r'"([a-z][a-z0-9_{}]+)"', Path(entry.__file__).read_text()))
    return {n.replace("{who}", who) for n in names for who in ("guest_cs", "guest_segment")}


def test_not_enforced_names_only_checks_that_exist():
    assert set(NOT_ENFORCED_AT_IMPORT) <= check_names()


NOT_ENFORCED_AT_IMPORT = dict(entry.NOT_ENFORCED)


# == 26.2.1.1 VM-execution control fields: error 7 ===============================================
def test_pin_based_control_reserved_to_1_cleared_is_invalid_control_field(vmx):
    control(vmx, "PIN_BASED_VM_EXEC_CONTROL", clear=1 << 1)  # default1 bit, TRUE MSR keeps it 1
    invalid_control(vmx, "pin_based_controls_reserved_bits")


def test_pin_based_control_the_msr_does_not_allow_is_invalid_control_field(vmx):
    control(vmx, "PIN_BASED_VM_EXEC_CONTROL", 1 << 8)  # bit 8 is reserved
    invalid_control(vmx, "pin_based_controls_reserved_bits")


def test_primary_control_reserved_to_1_cleared_is_invalid_control_field(vmx):
    control(vmx, "CPU_BASED_VM_EXEC_CONTROL", clear=1 << 26)
    invalid_control(vmx, "primary_processor_based_controls_reserved_bits")


def test_true_msrs_let_cr3_load_exiting_be_0(vmx):
    control(vmx, "CPU_BASED_VM_EXEC_CONTROL", clear=msrs.CPU_BASED_CR3_LOAD_EXITING)
    enters(vmx)


def test_without_true_msrs_cr3_load_exiting_0_is_invalid_control_field(vmx):
    vmx.caps.msrs[msrs.IA32_VMX_BASIC] &= ~msrs.VMX_BASIC_TRUE_CTLS
    control(vmx, "CPU_BASED_VM_EXEC_CONTROL", clear=msrs.CPU_BASED_CR3_LOAD_EXITING)
    invalid_control(vmx, "primary_processor_based_controls_reserved_bits")


def test_secondary_control_the_msr_does_not_allow_is_invalid_control_field(vmx):
    control(vmx, "CPU_BASED_VM_EXEC_CONTROL", msrs.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS)
    w(vmx, SECONDARY_VM_EXEC_CONTROL=msrs.SECONDARY_EXEC_SHADOW_VMCS)
    invalid_control(vmx, "secondary_processor_based_controls_reserved_bits")


def test_secondary_controls_are_not_checked_unless_activated(vmx):
    w(vmx, SECONDARY_VM_EXEC_CONTROL=msrs.SECONDARY_EXEC_SHADOW_VMCS)
    enters(vmx)


def test_cr3_target_count_above_4_is_invalid_control_field(vmx):
    w(vmx, CR3_TARGET_COUNT=5)
    invalid_control(vmx, "cr3_target_count")


def test_cr3_target_count_4_is_valid(vmx):
    w(vmx, CR3_TARGET_COUNT=4)
    enters(vmx)


@pytest.mark.parametrize("field", ["IO_BITMAP_A", "IO_BITMAP_B"])
@pytest.mark.parametrize("address", [0x8010, BEYOND_MAXPHYADDR])
def test_io_bitmap_address_unaligned_or_beyond_maxphyaddr_is_invalid_control_field(vmx, field, address):
    control(vmx, "CPU_BASED_VM_EXEC_CONTROL", msrs.CPU_BASED_USE_IO_BITMAPS)
    w(vmx, **({"IO_BITMAP_A": 0x8000, "IO_BITMAP_B": 0x9000} | {field: address}))
    invalid_control(vmx, "io_bitmap_address")


def test_io_bitmap_addresses_are_not_checked_without_use_io_bitmaps(vmx):
    w(vmx, IO_BITMAP_A=0x8010)
    enters(vmx)


@pytest.mark.parametrize("address", [0x8010, BEYOND_MAXPHYADDR])
def test_msr_bitmap_address_unaligned_or_beyond_maxphyaddr_is_invalid_control_field(vmx, address):
    control(vmx, "CPU_BASED_VM_EXEC_CONTROL", msrs.CPU_BASED_USE_MSR_BITMAPS)
    w(vmx, MSR_BITMAP=address)
    invalid_control(vmx, "msr_bitmap_address")


def tpr_shadow(vmx, vtpr: int = 0xF0) -> None:
    control(vmx, "CPU_BASED_VM_EXEC_CONTROL", msrs.CPU_BASED_TPR_SHADOW)
    w(vmx, VIRTUAL_APIC_PAGE_ADDR=VIRTUAL_APIC)
    vmx.memory.write(VIRTUAL_APIC + 0x80, bytes([vtpr]))


def test_tpr_shadow_with_a_valid_virtual_apic_page_enters(vmx):
    tpr_shadow(vmx)
    enters(vmx)


@pytest.mark.parametrize("address", [VIRTUAL_APIC + 8, BEYOND_MAXPHYADDR])
def test_virtual_apic_address_unaligned_or_beyond_maxphyaddr_is_invalid_control_field(vmx, address):
    tpr_shadow(vmx)
    w(vmx, VIRTUAL_APIC_PAGE_ADDR=address)
    invalid_control(vmx, "virtual_apic_address")


def test_tpr_threshold_bits_31_4_set_is_invalid_control_field(vmx):
    tpr_shadow(vmx)
    w(vmx, TPR_THRESHOLD=0x10)
    invalid_control(vmx, "tpr_threshold_reserved_bits")


def test_tpr_threshold_above_vtpr_bits_7_4_is_invalid_control_field(vmx):
    tpr_shadow(vmx, vtpr=0x30)
    w(vmx, TPR_THRESHOLD=4)
    invalid_control(vmx, "tpr_threshold_above_vtpr")


def test_tpr_threshold_equal_to_vtpr_bits_7_4_is_valid(vmx):
    tpr_shadow(vmx, vtpr=0x30)
    w(vmx, TPR_THRESHOLD=3)
    enters(vmx)


def secondary(vmx, *bits) -> None:
    control(vmx, "CPU_BASED_VM_EXEC_CONTROL", msrs.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS)
    control(vmx, "SECONDARY_VM_EXEC_CONTROL", *bits)


@pytest.mark.parametrize("bit", [msrs.SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE, msrs.SECONDARY_EXEC_APIC_REGISTER_VIRT,
                                 msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY])
def test_apic_virtualization_without_tpr_shadow_is_invalid_control_field(vmx, bit):
    control(vmx, "PIN_BASED_VM_EXEC_CONTROL", msrs.PIN_BASED_EXT_INTR_MASK)
    secondary(vmx, bit)
    invalid_control(vmx, "apic_virtualization_without_tpr_shadow")


def test_virtual_nmis_without_nmi_exiting_is_invalid_control_field(vmx):
    control(vmx, "PIN_BASED_VM_EXEC_CONTROL", msrs.PIN_BASED_VIRTUAL_NMIS)
    invalid_control(vmx, "virtual_nmis_without_nmi_exiting")


def test_nmi_window_exiting_without_virtual_nmis_is_invalid_control_field(vmx):
    control(vmx, "PIN_BASED_VM_EXEC_CONTROL", msrs.PIN_BASED_NMI_EXITING)
    control(vmx, "CPU_BASED_VM_EXEC_CONTROL", msrs.CPU_BASED_NMI_WINDOW_EXITING)
    invalid_control(vmx, "nmi_window_exiting_without_virtual_nmis")


def test_nmi_window_exiting_with_virtual_nmis_is_valid(vmx):
    control(vmx, "PIN_BASED_VM_EXEC_CONTROL", msrs.PIN_BASED_NMI_EXITING, msrs.PIN_BASED_VIRTUAL_NMIS)
    control(vmx, "CPU_BASED_VM_EXEC_CONTROL", msrs.CPU_BASED_NMI_WINDOW_EXITING)
    enters(vmx)


def test_apic_access_address_unaligned_is_invalid_control_field(vmx):
    secondary(vmx, msrs.SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES)
    w(vmx, APIC_ACCESS_ADDR=0xFEE0_0010)
    invalid_control(vmx, "apic_access_address")


def test_virtualize_x2apic_mode_with_virtualize_apic_accesses_is_invalid_control_field(vmx):
    tpr_shadow(vmx)
    secondary(vmx, msrs.SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE, msrs.SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES)
    w(vmx, APIC_ACCESS_ADDR=0xFEE0_0000)
    invalid_control(vmx, "x2apic_mode_with_apic_accesses")


def test_virtual_interrupt_delivery_without_external_interrupt_exiting_is_invalid_control_field(vmx):
    tpr_shadow(vmx)
    secondary(vmx, msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY)
    invalid_control(vmx, "virtual_interrupt_delivery_without_external_interrupt_exiting")


def test_posted_interrupts_without_virtual_interrupt_delivery_is_invalid_control_field(vmx):
    control(vmx, "PIN_BASED_VM_EXEC_CONTROL", msrs.PIN_BASED_POSTED_INTR)
    invalid_control(vmx, "posted_interrupts_without_virtual_interrupt_delivery")


def test_posted_interrupt_notification_vector_bits_15_8_set_is_invalid_control_field(vmx):
    tpr_shadow(vmx)
    control(vmx, "PIN_BASED_VM_EXEC_CONTROL", msrs.PIN_BASED_POSTED_INTR, msrs.PIN_BASED_EXT_INTR_MASK)
    secondary(vmx, msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY)
    control(vmx, "VM_EXIT_CONTROLS", msrs.VM_EXIT_ACK_INTR_ON_EXIT)
    w(vmx, POSTED_INTR_NV=0x1F2, POSTED_INTR_DESC_ADDR=0x8040)
    invalid_control(vmx, "posted_interrupt_notification_vector")


def test_enable_vpid_with_vpid_0_is_invalid_control_field(vmx):
    secondary(vmx, msrs.SECONDARY_EXEC_ENABLE_VPID)
    invalid_control(vmx, "vpid_zero")


def test_enable_vpid_with_vpid_1_is_valid(vmx):
    secondary(vmx, msrs.SECONDARY_EXEC_ENABLE_VPID)
    w(vmx, VIRTUAL_PROCESSOR_ID=1)
    enters(vmx)


@pytest.mark.parametrize("eptp,why", [
    (0x5000 | 1 | (3 << 3), "memory type WC"),
    (0x5000 | 6 | (2 << 3), "3-level walk"),
    (EPTP_WB_4LEVEL | 1 << 7, "bit 7 reserved"),
    (EPTP_WB_4LEVEL | BEYOND_MAXPHYADDR, "beyond MAXPHYADDR"),
])
def test_enable_ept_with_an_invalid_eptp_is_invalid_control_field(vmx, eptp, why):
    secondary(vmx, msrs.SECONDARY_EXEC_ENABLE_EPT)
    w(vmx, EPT_POINTER=eptp)
    invalid_control(vmx, "eptp")


@pytest.mark.parametrize("eptp,missing", [
    (0x5000 | 6 | (4 << 3), msrs.VMX_EPT_PAGE_WALK_5_BIT),
    (EPTP_WB_4LEVEL | 1 << 6, msrs.VMX_EPT_AD_BIT),
])
def test_an_eptp_asking_for_what_ept_vpid_cap_does_not_advertise_is_invalid(memory, eptp, missing):
    vmx = with_current_vmcs(make_vmx(memory, VmxCapabilities(ept_vpid_cap=msrs.HVSIM_EPT_VPID_CAP & ~missing)))
    secondary(vmx, msrs.SECONDARY_EXEC_ENABLE_EPT)
    w(vmx, EPT_POINTER=eptp)
    invalid_control(vmx, "eptp")


@pytest.mark.parametrize("eptp", [0x5000 | 6 | (4 << 3), EPTP_WB_4LEVEL | 1 << 6])
def test_5_level_and_accessed_dirty_eptps_enter_as_ept_vpid_cap_advertises(vmx, eptp):
    secondary(vmx, msrs.SECONDARY_EXEC_ENABLE_EPT)
    w(vmx, EPT_POINTER=eptp)
    enters(vmx)


def test_enable_ept_with_a_wb_4_level_eptp_is_valid(vmx):
    secondary(vmx, msrs.SECONDARY_EXEC_ENABLE_EPT)
    w(vmx, EPT_POINTER=EPTP_WB_4LEVEL)
    enters(vmx)


def test_eptp_problem_says_what_eptp_valid_says():
    caps = VmxCapabilities()
    for low in range(0x1000):
        for eptp in (0x5000 | low, BEYOND_MAXPHYADDR | low):
            assert (entry.eptp_problem(eptp, caps) is None) == eptp_valid(eptp, caps), hex(eptp)


def test_unrestricted_guest_without_enable_ept_is_invalid_control_field(vmx):
    secondary(vmx, msrs.SECONDARY_EXEC_UNRESTRICTED_GUEST)
    invalid_control(vmx, "unrestricted_guest_without_ept")


# == 26.2.1.2 VM-exit control fields: error 7 ====================================================
def test_vm_exit_control_reserved_to_1_cleared_is_invalid_control_field(vmx):
    control(vmx, "VM_EXIT_CONTROLS", clear=1 << 0)
    invalid_control(vmx, "vm_exit_controls_reserved_bits")


def test_save_preemption_timer_without_the_timer_is_invalid_control_field(vmx):
    control(vmx, "VM_EXIT_CONTROLS", msrs.VM_EXIT_SAVE_VMX_PREEMPTION_TIMER)
    invalid_control(vmx, "save_preemption_timer_without_timer")


@pytest.mark.parametrize("count_field,address_field,check", [
    ("VM_EXIT_MSR_STORE_COUNT", "VM_EXIT_MSR_STORE_ADDR", "vm_exit_msr_store_address"),
    ("VM_EXIT_MSR_LOAD_COUNT", "VM_EXIT_MSR_LOAD_ADDR", "vm_exit_msr_load_address")])
@pytest.mark.parametrize("address", [MSR_AREA + 8, BEYOND_MAXPHYADDR, BEYOND_MAXPHYADDR - 16])
def test_vm_exit_msr_area_address_misaligned_or_beyond_maxphyaddr_is_invalid_control_field(
        vmx, count_field, address_field, check, address):
    w(vmx, **{count_field: 2, address_field: address})
    invalid_control(vmx, check)


# == 26.2.1.3 VM-entry control fields: error 7 ===================================================
def test_vm_entry_control_reserved_to_1_cleared_is_invalid_control_field(vmx):
    control(vmx, "VM_ENTRY_CONTROLS", clear=1 << 0)
    invalid_control(vmx, "vm_entry_controls_reserved_bits")


def test_entry_to_smm_outside_smm_is_invalid_control_field(memory):
    vmx = vmx_with(memory, entry=msrs.HVSIM_ENTRY | msrs.VM_ENTRY_SMM)
    control(vmx, "VM_ENTRY_CONTROLS", msrs.VM_ENTRY_SMM)
    invalid_control(vmx, "smm_controls_outside_smm")


def test_vm_entry_msr_load_address_misaligned_is_invalid_control_field(vmx):
    w(vmx, VM_ENTRY_MSR_LOAD_COUNT=1, VM_ENTRY_MSR_LOAD_ADDR=MSR_AREA + 4)
    invalid_control(vmx, "vm_entry_msr_load_address")


def inject(vmx, kind: int, vector: int, error_code: bool = False, length: int = 0, code: int = 0) -> None:
    w(vmx, VM_ENTRY_INTR_INFO_FIELD=1 << 31 | kind << 8 | vector | (1 << 11 if error_code else 0),
      VM_ENTRY_INSTRUCTION_LEN=length, VM_ENTRY_EXCEPTION_ERROR_CODE=code)


@pytest.mark.parametrize("kind,vector,error_code,length", [
    (0, 0x20, False, 0), (2, 2, False, 0), (3, 13, True, 0), (3, 14, True, 0), (3, 6, False, 0),
    (4, 0x80, False, 2), (5, 1, False, 1), (6, 3, False, 1), (7, 0, False, 0)])
def test_injecting_a_well_formed_event_enters(vmx, kind, vector, error_code, length):
    w(vmx, GUEST_RFLAGS=0x202)
    inject(vmx, kind, vector, error_code, length)
    enters(vmx)


def test_interruption_type_1_is_reserved_and_an_invalid_control_field(vmx):
    inject(vmx, 1, 0x20)
    invalid_control(vmx, "interruption_type_reserved")


def test_injected_nmi_with_vector_other_than_2_is_invalid_control_field(vmx):
    inject(vmx, 2, 3)
    invalid_control(vmx, "nmi_vector_not_2")


def test_injected_hardware_exception_with_vector_above_31_is_invalid_control_field(vmx):
    inject(vmx, 3, 32)
    invalid_control(vmx, "hardware_exception_vector_above_31")


def test_injected_other_event_with_vector_other_than_0_is_invalid_control_field(vmx):
    inject(vmx, 7, 1)
    invalid_control(vmx, "other_event_vector_not_0")


@pytest.mark.parametrize("vector", [8, 10, 11, 12, 13, 14, 17])
def test_hardware_exception_with_an_error_code_injected_without_one_is_invalid_control_field(vmx, vector):
    inject(vmx, 3, vector, error_code=False)
    invalid_control(vmx, "deliver_error_code_mismatch")


@pytest.mark.parametrize("vector", [0, 1, 3, 6, 7, 9, 15, 16, 18, 31])
def test_hardware_exception_without_an_error_code_injected_with_one_is_invalid_control_field(vmx, vector):
    inject(vmx, 3, vector, error_code=True)
    invalid_control(vmx, "deliver_error_code_mismatch")


def test_deliver_error_code_for_a_software_interrupt_is_invalid_control_field(vmx):
    inject(vmx, 4, 0x80, error_code=True, length=2)
    invalid_control(vmx, "deliver_error_code_not_allowed")


def test_interruption_information_reserved_bits_30_12_set_is_invalid_control_field(vmx):
    w(vmx, VM_ENTRY_INTR_INFO_FIELD=1 << 31 | 1 << 12 | 3 << 8 | 6)
    invalid_control(vmx, "interruption_info_reserved_bits")


def test_error_code_bits_31_16_set_is_invalid_control_field(vmx):
    inject(vmx, 3, 13, error_code=True, code=0x1_0000)
    invalid_control(vmx, "error_code_reserved_bits")


@pytest.mark.parametrize("kind", [4, 5, 6])
@pytest.mark.parametrize("length", [0, 16])
def test_software_event_instruction_length_outside_1_to_15_is_invalid_control_field(vmx, kind, length):
    inject(vmx, kind, 3, length=length)
    invalid_control(vmx, "instruction_length_out_of_range")


def test_injection_fields_are_not_checked_when_the_valid_bit_is_0(vmx):
    w(vmx, VM_ENTRY_INTR_INFO_FIELD=1 << 8 | 0xFF)
    enters(vmx)


# == 26.2.2 Host control registers and MSRs: error 8 =============================================
def test_host_cr0_ne_clear_is_invalid_host_state(vmx):
    w(vmx, HOST_CR0=0x8005_0013)
    invalid_host_state(vmx, "host_cr0_fixed_bits")


def test_host_cr4_vmxe_clear_is_invalid_host_state(vmx):
    w(vmx, HOST_CR4=0x06A0)
    invalid_host_state(vmx, "host_cr4_fixed_bits")


def test_host_cr4_bit_fixed1_does_not_allow_is_invalid_host_state(vmx):
    w(vmx, HOST_CR4=0x26A0 | 1 << 22)  # PKE: hvsim's processor has no protection keys
    invalid_host_state(vmx, "host_cr4_fixed_bits")


def test_host_cr3_beyond_maxphyaddr_is_invalid_host_state(vmx):
    w(vmx, HOST_CR3=BEYOND_MAXPHYADDR)
    invalid_host_state(vmx, "host_cr3_beyond_physical_address_width")


@pytest.mark.parametrize("field", ["HOST_IA32_SYSENTER_ESP", "HOST_IA32_SYSENTER_EIP"])
def test_host_sysenter_msr_not_canonical_is_invalid_host_state(vmx, field):
    w(vmx, **{field: NON_CANONICAL})
    invalid_host_state(vmx, "host_sysenter_canonical")


def test_host_pat_with_reserved_memory_type_is_invalid_host_state(vmx):
    control(vmx, "VM_EXIT_CONTROLS", msrs.VM_EXIT_LOAD_IA32_PAT)
    w(vmx, HOST_IA32_PAT=0x0007_0406_0007_0402)  # byte 0 is 2, a reserved type
    invalid_host_state(vmx, "host_pat")


def test_host_efer_reserved_bit_set_is_invalid_host_state(vmx):
    w(vmx, HOST_IA32_EFER=0xD01 | 1 << 1)
    invalid_host_state(vmx, "host_efer_reserved_bits")


@pytest.mark.parametrize("efer", [0x901, 0x401])  # LMA clear, LME clear
def test_host_efer_lma_or_lme_unlike_host_address_space_size_is_invalid_host_state(vmx, efer):
    w(vmx, HOST_IA32_EFER=efer)
    invalid_host_state(vmx, "host_efer_lma_lme")


# == 26.2.3 Host segment and descriptor-table registers: error 8 =================================
@pytest.mark.parametrize("seg", ["ES", "CS", "SS", "DS", "FS", "GS", "TR"])
@pytest.mark.parametrize("low_bits", [1, 3, 4])
def test_host_selector_with_rpl_or_ti_set_is_invalid_host_state(vmx, seg, low_bits):
    w(vmx, **{f"HOST_{seg}_SELECTOR": 0x18 | low_bits})
    invalid_host_state(vmx, "host_selector_rpl_ti")


def test_host_cs_selector_zero_is_invalid_host_state(vmx):
    w(vmx, HOST_CS_SELECTOR=0)
    invalid_host_state(vmx, "host_cs_selector_zero")


def test_host_tr_selector_zero_is_invalid_host_state(vmx):
    w(vmx, HOST_TR_SELECTOR=0)
    invalid_host_state(vmx, "host_tr_selector_zero")


def test_host_ss_selector_zero_with_a_64_bit_host_is_valid(vmx):
    w(vmx, HOST_SS_SELECTOR=0)
    enters(vmx)


def test_host_ss_selector_zero_without_a_64_bit_host_is_invalid_host_state(vmx):
    control(vmx, "VM_EXIT_CONTROLS", clear=msrs.VM_EXIT_HOST_ADDR_SPACE_SIZE | msrs.VM_EXIT_LOAD_IA32_EFER)
    w(vmx, HOST_SS_SELECTOR=0)
    invalid_host_state(vmx, "host_ss_selector_zero")


@pytest.mark.parametrize("base", ["FS", "GS", "GDTR", "IDTR", "TR"])
def test_host_base_not_canonical_is_invalid_host_state(vmx, base):
    w(vmx, **{f"HOST_{base}_BASE": NON_CANONICAL})
    invalid_host_state(vmx, "host_base_canonical")


# == 26.2.4 Address-space size: error 8 ==========================================================
def outside_ia32e_mode(vmx) -> None:
    """A processor in 32-bit protected mode (IA32_EFER.LMA = 0) with a 32-bit host."""
    control(vmx, "VM_EXIT_CONTROLS", clear=msrs.VM_EXIT_HOST_ADDR_SPACE_SIZE | msrs.VM_EXIT_LOAD_IA32_EFER)
    w(vmx, HOST_RIP=0x8100_0000, HOST_CR4=0x2690)
    vmx.efer, vmx.cs_l = 0, False


def test_ia32e_mode_guest_outside_ia32e_mode_is_invalid_host_state(vmx):
    outside_ia32e_mode(vmx)
    invalid_host_state(vmx, "ia32e_guest_outside_ia32e_mode")


def test_host_address_space_size_1_outside_ia32e_mode_is_invalid_host_state(vmx):
    outside_ia32e_mode(vmx)
    control(vmx, "VM_EXIT_CONTROLS", msrs.VM_EXIT_HOST_ADDR_SPACE_SIZE)
    control(vmx, "VM_ENTRY_CONTROLS", clear=msrs.VM_ENTRY_IA32E_MODE)
    invalid_host_state(vmx, "host_address_space_size_outside_ia32e_mode")


def test_host_address_space_size_0_in_ia32e_mode_is_invalid_host_state(vmx):
    control(vmx, "VM_EXIT_CONTROLS", clear=msrs.VM_EXIT_HOST_ADDR_SPACE_SIZE | msrs.VM_EXIT_LOAD_IA32_EFER)
    invalid_host_state(vmx, "host_address_space_size_in_ia32e_mode")


def test_host_rip_bits_63_32_with_a_32_bit_host_are_invalid_host_state(vmx):
    control(vmx, "VM_ENTRY_CONTROLS", clear=msrs.VM_ENTRY_IA32E_MODE)
    outside_ia32e_mode(vmx)
    vmx.efer, vmx.cs_l = 0xD01, True  # to VMWRITE 64 bits
    w(vmx, HOST_RIP=0x1_8100_0000)
    vmx.efer, vmx.cs_l = 0, False
    invalid_host_state(vmx, "host_rip_high_bits")


def test_host_cr4_pae_clear_with_a_64_bit_host_is_invalid_host_state(vmx):
    w(vmx, HOST_CR4=0x2680)
    invalid_host_state(vmx, "host_pae_with_64bit_host")


def test_host_rip_not_canonical_with_a_64_bit_host_is_invalid_host_state(vmx):
    w(vmx, HOST_RIP=NON_CANONICAL)
    invalid_host_state(vmx, "host_rip_canonical")


def test_control_checks_come_before_host_state_checks(vmx):
    w(vmx, CR3_TARGET_COUNT=5, HOST_CS_SELECTOR=0)
    invalid_control(vmx, "cr3_target_count")


# == 26.3.1.1 Guest control registers, debug registers and MSRs: exit 33 =========================
def test_guest_cr0_ne_clear_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_CR0=0x8000_0011)
    invalid_guest_state(vmx, "guest_cr0_fixed_bits")


def test_guest_cr0_pg_clear_without_unrestricted_guest_is_invalid_guest_state_exit_33(vmx):
    control(vmx, "VM_ENTRY_CONTROLS", clear=msrs.VM_ENTRY_IA32E_MODE)
    w(vmx, GUEST_CR0=0x31, GUEST_IA32_EFER=0, GUEST_CS_AR_BYTES=0xC09B, GUEST_TR_AR_BYTES=0x8B)
    invalid_guest_state(vmx, "guest_cr0_fixed_bits")


def real_mode_with_unrestricted_guest(vmx) -> None:
    secondary(vmx, msrs.SECONDARY_EXEC_ENABLE_EPT, msrs.SECONDARY_EXEC_UNRESTRICTED_GUEST)
    w(vmx, EPT_POINTER=EPTP_WB_4LEVEL)
    control(vmx, "VM_ENTRY_CONTROLS", clear=msrs.VM_ENTRY_IA32E_MODE)
    w(vmx, GUEST_CR0=0x30, GUEST_CR4=0x2000, GUEST_IA32_EFER=0, GUEST_RIP=0x7C00, GUEST_TR_AR_BYTES=0x8B)
    for seg in ("CS", "SS", "DS", "ES", "FS", "GS"):
        w(vmx, **{f"GUEST_{seg}_SELECTOR": 0, f"GUEST_{seg}_BASE": 0, f"GUEST_{seg}_LIMIT": 0xFFFF,
                  f"GUEST_{seg}_AR_BYTES": 0x93})


def test_unrestricted_guest_lets_cr0_pe_and_pg_be_0(vmx):
    real_mode_with_unrestricted_guest(vmx)
    enters(vmx)


def test_guest_cr0_pg_without_pe_is_invalid_guest_state_exit_33(vmx):
    real_mode_with_unrestricted_guest(vmx)
    w(vmx, GUEST_CR0=0x8000_0030)
    invalid_guest_state(vmx, "guest_cr0_pg_without_pe")


def test_guest_cr4_vmxe_clear_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_CR4=0x20)
    invalid_guest_state(vmx, "guest_cr4_fixed_bits")


def test_ia32e_mode_guest_without_cr4_pae_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_CR4=0x2000)
    invalid_guest_state(vmx, "ia32e_guest_without_paging_and_pae")


def test_guest_cr3_beyond_maxphyaddr_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_CR3=BEYOND_MAXPHYADDR)
    invalid_guest_state(vmx, "guest_cr3_beyond_physical_address_width")


def test_guest_debugctl_reserved_bit_with_load_debug_controls_is_invalid_guest_state_exit_33(vmx):
    control(vmx, "VM_ENTRY_CONTROLS", msrs.VM_ENTRY_LOAD_DEBUG_CONTROLS)
    w(vmx, GUEST_IA32_DEBUGCTL=1 << 2)
    invalid_guest_state(vmx, "guest_debugctl_reserved_bits")


def test_guest_dr7_bits_63_32_with_load_debug_controls_are_invalid_guest_state_exit_33(vmx):
    control(vmx, "VM_ENTRY_CONTROLS", msrs.VM_ENTRY_LOAD_DEBUG_CONTROLS)
    w(vmx, GUEST_DR7=1 << 32 | 0x400)
    invalid_guest_state(vmx, "guest_dr7_high_bits")


@pytest.mark.parametrize("field", ["GUEST_SYSENTER_ESP", "GUEST_SYSENTER_EIP"])
def test_guest_sysenter_msr_not_canonical_is_invalid_guest_state_exit_33(vmx, field):
    w(vmx, **{field: NON_CANONICAL})
    invalid_guest_state(vmx, "guest_sysenter_canonical")


def test_guest_pat_with_reserved_memory_type_is_invalid_guest_state_exit_33(vmx):
    control(vmx, "VM_ENTRY_CONTROLS", msrs.VM_ENTRY_LOAD_IA32_PAT)
    w(vmx, GUEST_IA32_PAT=0x0007_0406_0007_0403)
    invalid_guest_state(vmx, "guest_pat")


def test_guest_efer_reserved_bit_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_IA32_EFER=0x500 | 1 << 2)
    invalid_guest_state(vmx, "guest_efer_reserved_bits")


def test_guest_efer_lma_unlike_ia32e_mode_guest_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_IA32_EFER=0x100)
    invalid_guest_state(vmx, "guest_efer_lma")


def test_guest_efer_lme_unlike_lma_with_paging_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_IA32_EFER=0x400)
    invalid_guest_state(vmx, "guest_efer_lme")


# == 26.3.1.2 Guest segment registers: exit 33 ===================================================
def test_guest_tr_selector_ti_set_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_TR_SELECTOR=0x1C)
    invalid_guest_state(vmx, "guest_tr_selector_ti")


def test_guest_usable_ldtr_selector_ti_set_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_LDTR_SELECTOR=0x24, GUEST_LDTR_AR_BYTES=0x82, GUEST_LDTR_LIMIT=0xFF)
    invalid_guest_state(vmx, "guest_ldtr_selector_ti")


def test_guest_ss_rpl_unlike_cs_rpl_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_SS_SELECTOR=0x13)
    invalid_guest_state(vmx, "guest_ss_rpl_not_cs_rpl")


@pytest.mark.parametrize("cs_type", [3, 10, 8, 1])
def test_guest_cs_type_not_accessed_code_is_invalid_guest_state_exit_33(vmx, cs_type):
    w(vmx, GUEST_CS_AR_BYTES=(CODE64_AR & ~0xF) | cs_type)
    invalid_guest_state(vmx, "guest_cs_type")


def test_guest_cs_unusable_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_CS_AR_BYTES=entry.AR_UNUSABLE)
    invalid_guest_state(vmx, "guest_cs_type")


@pytest.mark.parametrize("ss_type", [1, 5, 11])
def test_guest_usable_ss_type_not_read_write_data_is_invalid_guest_state_exit_33(vmx, ss_type):
    w(vmx, GUEST_SS_AR_BYTES=(DATA_AR & ~0xF) | ss_type)
    invalid_guest_state(vmx, "guest_ss_type")


def test_guest_unusable_ss_is_not_checked_for_type(vmx):
    w(vmx, GUEST_SS_AR_BYTES=entry.AR_UNUSABLE | 0xC091)
    enters(vmx)


@pytest.mark.parametrize("seg_type", [2, 8, 12])  # not accessed; execute-only code
def test_guest_usable_data_segment_not_accessed_or_execute_only_is_invalid_guest_state_exit_33(vmx, seg_type):
    w(vmx, GUEST_DS_AR_BYTES=(DATA_AR & ~0xF) | seg_type)
    invalid_guest_state(vmx, "guest_data_segment_type")


def test_guest_unusable_data_segment_is_not_checked(vmx):
    w(vmx, GUEST_FS_AR_BYTES=entry.AR_UNUSABLE)
    enters(vmx)


@pytest.mark.parametrize("seg,check", [("CS", "guest_cs_s_bit"), ("DS", "guest_segment_s_bit")])
def test_guest_segment_s_bit_clear_is_invalid_guest_state_exit_33(vmx, seg, check):
    w(vmx, **{f"GUEST_{seg}_AR_BYTES": (CODE64_AR if seg == "CS" else DATA_AR) & ~entry.AR_S})
    invalid_guest_state(vmx, check)


@pytest.mark.parametrize("seg,check", [("CS", "guest_cs_not_present"), ("ES", "guest_segment_not_present")])
def test_guest_segment_not_present_is_invalid_guest_state_exit_33(vmx, seg, check):
    w(vmx, **{f"GUEST_{seg}_AR_BYTES": (CODE64_AR if seg == "CS" else DATA_AR) & ~entry.AR_P})
    invalid_guest_state(vmx, check)


def test_guest_nonconforming_cs_dpl_unlike_ss_dpl_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_CS_AR_BYTES=CODE64_AR | 3 << 5, GUEST_CS_SELECTOR=0x0B, GUEST_SS_SELECTOR=0x13)
    invalid_guest_state(vmx, "guest_cs_dpl")


def test_guest_conforming_cs_dpl_above_ss_dpl_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_CS_AR_BYTES=(CODE64_AR | 0xF) | 3 << 5)
    invalid_guest_state(vmx, "guest_cs_dpl")


def test_guest_ring_3_state_enters(vmx):
    w(vmx, GUEST_CS_SELECTOR=0x2B, GUEST_CS_AR_BYTES=CODE64_AR | 3 << 5, GUEST_SS_SELECTOR=0x23,
      GUEST_SS_AR_BYTES=DATA_AR | 3 << 5)
    enters(vmx)


def test_guest_ss_dpl_unlike_its_rpl_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_SS_AR_BYTES=DATA_AR | 3 << 5, GUEST_CS_AR_BYTES=CODE64_AR | 0xF)  # conforming CS: DPL 0 <= 3
    invalid_guest_state(vmx, "guest_ss_dpl")


def test_guest_data_segment_dpl_below_rpl_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_DS_SELECTOR=0x13)
    invalid_guest_state(vmx, "guest_data_segment_dpl")


@pytest.mark.parametrize("bit,check", [(8, "reserved_bits_11_8"), (17, "reserved_bits_31_17")])
@pytest.mark.parametrize("seg", ["CS", "GS"])
def test_guest_segment_access_rights_reserved_bit_is_invalid_guest_state_exit_33(vmx, bit, check, seg):
    ar = (CODE64_AR if seg == "CS" else DATA_AR) | 1 << bit
    w(vmx, **{f"GUEST_{seg}_AR_BYTES": ar})
    invalid_guest_state(vmx, ("guest_cs_" if seg == "CS" else "guest_segment_") + check)


@pytest.mark.parametrize("limit,granularity", [(0xFFFF_F000, True), (0x0010_0000, False), (0xFFFF_FFFF, False)])
def test_guest_segment_limit_unlike_its_g_bit_is_invalid_guest_state_exit_33(vmx, limit, granularity):
    ar = DATA_AR & ~entry.AR_G | (entry.AR_G if granularity else 0)
    w(vmx, GUEST_DS_LIMIT=limit, GUEST_DS_AR_BYTES=ar)
    invalid_guest_state(vmx, "guest_segment_granularity")


def test_guest_segment_limit_0xfffff_with_g_clear_is_valid(vmx):
    w(vmx, GUEST_DS_LIMIT=0xF_FFFF, GUEST_DS_AR_BYTES=DATA_AR & ~entry.AR_G)
    enters(vmx)


def test_guest_64_bit_cs_with_d_b_set_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_CS_AR_BYTES=CODE64_AR | entry.AR_DB)
    invalid_guest_state(vmx, "guest_cs_l_and_db")


@pytest.mark.parametrize("tr_type", [3, 9, 1])  # 16-bit busy (not in IA-32e), available 64-bit TSS, 16-bit available
def test_guest_tr_type_not_busy_64_bit_tss_in_ia32e_mode_is_invalid_guest_state_exit_33(vmx, tr_type):
    w(vmx, GUEST_TR_AR_BYTES=0x80 | tr_type)
    invalid_guest_state(vmx, "guest_tr_type")


def test_guest_tr_16_bit_busy_tss_outside_ia32e_mode_is_valid(vmx):
    control(vmx, "VM_ENTRY_CONTROLS", clear=msrs.VM_ENTRY_IA32E_MODE)
    w(vmx, GUEST_IA32_EFER=0, GUEST_CR0=0x8000_0031, GUEST_CS_AR_BYTES=0xC09B, GUEST_TR_AR_BYTES=0x83)
    enters(vmx)


@pytest.mark.parametrize("ar", [TSS64_BUSY_AR | entry.AR_S, TSS64_BUSY_AR & ~entry.AR_P, TSS64_BUSY_AR | 1 << 9])
def test_guest_tr_s_set_not_present_or_reserved_bit_is_invalid_guest_state_exit_33(vmx, ar):
    w(vmx, GUEST_TR_AR_BYTES=ar)
    invalid_guest_state(vmx, "guest_tr_access_rights")


def test_guest_tr_unusable_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_TR_AR_BYTES=TSS64_BUSY_AR | entry.AR_UNUSABLE)
    invalid_guest_state(vmx, "guest_tr_unusable")


def test_guest_usable_ldtr_not_of_type_ldt_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_LDTR_SELECTOR=0x20, GUEST_LDTR_AR_BYTES=0x83, GUEST_LDTR_LIMIT=0xFF)
    invalid_guest_state(vmx, "guest_ldtr_type")


def test_guest_usable_ldtr_not_present_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_LDTR_SELECTOR=0x20, GUEST_LDTR_AR_BYTES=0x02, GUEST_LDTR_LIMIT=0xFF)
    invalid_guest_state(vmx, "guest_ldtr_access_rights")


def test_guest_usable_ldt_enters(vmx):
    w(vmx, GUEST_LDTR_SELECTOR=0x20, GUEST_LDTR_AR_BYTES=0x82, GUEST_LDTR_LIMIT=0xFF)
    enters(vmx)


@pytest.mark.parametrize("seg", ["TR", "FS", "GS"])
def test_guest_tr_fs_gs_base_not_canonical_is_invalid_guest_state_exit_33(vmx, seg):
    w(vmx, **{f"GUEST_{seg}_BASE": NON_CANONICAL})
    invalid_guest_state(vmx, "guest_segment_base_canonical")


def test_guest_cs_base_bits_63_32_are_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_CS_BASE=1 << 32)
    invalid_guest_state(vmx, "guest_cs_base_high_bits")


@pytest.mark.parametrize("seg", ["SS", "DS", "ES"])
def test_guest_usable_ss_ds_es_base_bits_63_32_are_invalid_guest_state_exit_33(vmx, seg):
    w(vmx, **{f"GUEST_{seg}_BASE": 1 << 32})
    invalid_guest_state(vmx, "guest_segment_base_high_bits")


def virtual_8086(vmx) -> None:
    """A 32-bit guest with paging, in virtual-8086 mode."""
    control(vmx, "VM_ENTRY_CONTROLS", clear=msrs.VM_ENTRY_IA32E_MODE)
    w(vmx, GUEST_IA32_EFER=0, GUEST_CR4=0x2000, GUEST_RFLAGS=0x2_0002, GUEST_RIP=0x100, GUEST_TR_AR_BYTES=0x8B)
    for seg in ("CS", "SS", "DS", "ES", "FS", "GS"):
        w(vmx, **{f"GUEST_{seg}_SELECTOR": 0x1234, f"GUEST_{seg}_BASE": 0x12340, f"GUEST_{seg}_LIMIT": 0xFFFF,
                  f"GUEST_{seg}_AR_BYTES": 0xF3})


def test_guest_virtual_8086_state_enters(vmx):
    virtual_8086(vmx)
    enters(vmx)


@pytest.mark.parametrize("field,value,check", [
    ("GUEST_SS_BASE", 0x12350, "guest_v8086_segment_base"), ("GUEST_DS_LIMIT", 0xFFFFF, "guest_v8086_segment_limit"),
    ("GUEST_CS_AR_BYTES", 0xFB, "guest_v8086_segment_access_rights")])
def test_guest_virtual_8086_segment_not_as_the_sdm_fixes_it_is_invalid_guest_state_exit_33(vmx, field, value, check):
    virtual_8086(vmx)
    w(vmx, **{field: value})
    invalid_guest_state(vmx, check)


# == 26.3.1.3 Guest descriptor-table registers: exit 33 ==========================================
@pytest.mark.parametrize("table", ["GDTR", "IDTR"])
def test_guest_descriptor_table_base_not_canonical_is_invalid_guest_state_exit_33(vmx, table):
    w(vmx, **{f"GUEST_{table}_BASE": NON_CANONICAL})
    invalid_guest_state(vmx, "guest_descriptor_table_base_canonical")


@pytest.mark.parametrize("table", ["GDTR", "IDTR"])
def test_guest_descriptor_table_base_canonical_in_57_bits_enters(vmx, table):
    """The processor has 5-level paging: canonical means bits 63:56 equal, so the GDT address of
    a Linux guest running with CR4.LA57 (non-canonical in 48 bits) enters."""
    w(vmx, **{f"GUEST_{table}_BASE": 0xFF40_3C96_4F60_B000})
    assert vmx.vmlaunch().status is Status.ENTERED


@pytest.mark.parametrize("table", ["GDTR", "IDTR"])
def test_guest_descriptor_table_limit_bits_31_16_are_invalid_guest_state_exit_33(vmx, table):
    w(vmx, **{f"GUEST_{table}_LIMIT": 0x1_0000})
    invalid_guest_state(vmx, "guest_descriptor_table_limit_high_bits")


# == 26.3.1.4 Guest RIP and RFLAGS: exit 33 ======================================================
def test_guest_rip_bits_63_32_in_compatibility_mode_are_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_CS_AR_BYTES=0xC09B, GUEST_RIP=1 << 32)
    invalid_guest_state(vmx, "guest_rip_high_bits")


def test_guest_rip_not_canonical_in_64_bit_mode_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_RIP=NON_CANONICAL)
    invalid_guest_state(vmx, "guest_rip_canonical")


def test_guest_rflags_bit_1_clear_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_RFLAGS=0)
    invalid_guest_state(vmx, "guest_rflags_bit_1")


@pytest.mark.parametrize("bit", [3, 5, 15, 22, 31, 63])
def test_guest_rflags_reserved_bit_set_is_invalid_guest_state_exit_33(vmx, bit):
    w(vmx, GUEST_RFLAGS=0x2 | 1 << bit)
    invalid_guest_state(vmx, "guest_rflags_reserved_bits")


def test_guest_rflags_vm_in_ia32e_mode_is_invalid_guest_state_exit_33(vmx):
    virtual_8086(vmx)
    control(vmx, "VM_ENTRY_CONTROLS", msrs.VM_ENTRY_IA32E_MODE)
    w(vmx, GUEST_IA32_EFER=0x500, GUEST_CR4=0x2020)
    invalid_guest_state(vmx, "guest_rflags_vm")


def test_injecting_an_external_interrupt_with_rflags_if_clear_is_invalid_guest_state_exit_33(vmx):
    inject(vmx, 0, 0x20)
    invalid_guest_state(vmx, "guest_rflags_if_for_external_interrupt")


# == 26.3.1.5 Guest non-register state: exit 33 ==================================================
@pytest.mark.parametrize("state", [4, 5, 0xFFFF_FFFF])
def test_guest_activity_state_above_3_is_invalid_guest_state_exit_33(vmx, state):
    w(vmx, GUEST_ACTIVITY_STATE=state)
    invalid_guest_state(vmx, "guest_activity_state")


def test_guest_activity_state_ia32_vmx_misc_does_not_report_is_invalid_guest_state_exit_33(vmx):
    vmx.caps.msrs[msrs.IA32_VMX_MISC] &= ~msrs.VMX_MISC_ACTIVITY_SHUTDOWN
    w(vmx, GUEST_ACTIVITY_STATE=2)
    invalid_guest_state(vmx, "guest_activity_state")


@pytest.mark.parametrize("state", [1, 2, 3])
def test_guest_activity_states_ia32_vmx_misc_reports_enter(vmx, state):
    w(vmx, GUEST_ACTIVITY_STATE=state)
    enters(vmx)


def test_guest_hlt_with_ss_dpl_not_0_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_CS_SELECTOR=0x2B, GUEST_CS_AR_BYTES=CODE64_AR | 3 << 5, GUEST_SS_SELECTOR=0x23,
      GUEST_SS_AR_BYTES=DATA_AR | 3 << 5, GUEST_ACTIVITY_STATE=1)
    invalid_guest_state(vmx, "guest_hlt_with_ss_dpl_not_0")


@pytest.mark.parametrize("blocking", [1, 2])
def test_guest_hlt_with_sti_or_mov_ss_blocking_is_invalid_guest_state_exit_33(vmx, blocking):
    w(vmx, GUEST_RFLAGS=0x202, GUEST_ACTIVITY_STATE=1, GUEST_INTERRUPTIBILITY_INFO=blocking)
    invalid_guest_state(vmx, "guest_inactive_with_sti_or_mov_ss_blocking")


@pytest.mark.parametrize("state,kind,vector", [(1, 3, 13), (1, 4, 3), (2, 0, 0x20), (2, 3, 1), (3, 2, 2)])
def test_injecting_an_event_the_activity_state_blocks_is_invalid_guest_state_exit_33(vmx, state, kind, vector):
    w(vmx, GUEST_RFLAGS=0x202, GUEST_ACTIVITY_STATE=state)
    inject(vmx, kind, vector, error_code=vector == 13, length=2)
    invalid_guest_state(vmx, "guest_event_not_allowed_in_activity_state")


@pytest.mark.parametrize("state,kind,vector", [(1, 0, 0x20), (1, 2, 2), (1, 3, 1), (1, 3, 18), (1, 7, 0),
                                               (2, 2, 2), (2, 3, 18)])
def test_injecting_an_event_the_activity_state_allows_enters(vmx, state, kind, vector):
    w(vmx, GUEST_RFLAGS=0x202, GUEST_ACTIVITY_STATE=state)
    inject(vmx, kind, vector)
    enters(vmx)


@pytest.mark.parametrize("bit", [5, 31])
def test_guest_interruptibility_reserved_bit_is_invalid_guest_state_exit_33(vmx, bit):
    w(vmx, GUEST_INTERRUPTIBILITY_INFO=1 << bit)
    invalid_guest_state(vmx, "guest_interruptibility_reserved_bits")


def test_guest_enclave_interruption_without_sgx_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_INTERRUPTIBILITY_INFO=1 << 4)
    invalid_guest_state(vmx, "guest_interruptibility_enclave")


def test_guest_blocking_by_sti_and_mov_ss_together_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_RFLAGS=0x202, GUEST_INTERRUPTIBILITY_INFO=3)
    invalid_guest_state(vmx, "guest_sti_and_mov_ss_blocking")


def test_guest_blocking_by_sti_with_rflags_if_clear_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_INTERRUPTIBILITY_INFO=1)
    invalid_guest_state(vmx, "guest_sti_blocking_with_if_clear")


@pytest.mark.parametrize("blocking", [1, 2])
def test_injecting_an_external_interrupt_with_sti_or_mov_ss_blocking_is_invalid_guest_state_exit_33(vmx, blocking):
    w(vmx, GUEST_RFLAGS=0x202, GUEST_INTERRUPTIBILITY_INFO=blocking)
    inject(vmx, 0, 0x20)
    invalid_guest_state(vmx, "guest_blocking_with_external_interrupt_injection")


def test_injecting_an_nmi_with_mov_ss_blocking_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_INTERRUPTIBILITY_INFO=2)
    inject(vmx, 2, 2)
    invalid_guest_state(vmx, "guest_mov_ss_blocking_with_nmi_injection")


def test_injecting_an_nmi_with_sti_blocking_is_invalid_guest_state_exit_33_qualification_3(vmx):
    w(vmx, GUEST_RFLAGS=0x202, GUEST_INTERRUPTIBILITY_INFO=1)
    inject(vmx, 2, 2)
    invalid_guest_state(vmx, "guest_sti_blocking_with_nmi_injection", qualification=3)


def test_guest_blocking_by_smi_outside_smm_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_INTERRUPTIBILITY_INFO=4)
    invalid_guest_state(vmx, "guest_smi_blocking_outside_smm")


def test_injecting_a_virtual_nmi_with_nmi_blocking_is_invalid_guest_state_exit_33(vmx):
    control(vmx, "PIN_BASED_VM_EXEC_CONTROL", msrs.PIN_BASED_NMI_EXITING, msrs.PIN_BASED_VIRTUAL_NMIS)
    w(vmx, GUEST_INTERRUPTIBILITY_INFO=8)
    inject(vmx, 2, 2)
    invalid_guest_state(vmx, "guest_nmi_blocking_with_virtual_nmi_injection")


@pytest.mark.parametrize("bit", [4, 11, 13, 15, 17, 63])
def test_guest_pending_debug_exceptions_reserved_bit_is_invalid_guest_state_exit_33(vmx, bit):
    w(vmx, GUEST_PENDING_DBG_EXCEPTIONS=1 << bit)
    invalid_guest_state(vmx, "guest_pending_debug_exceptions_reserved_bits")


def test_guest_pending_rtm_debug_exception_without_rtm_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_PENDING_DBG_EXCEPTIONS=1 << 16)
    invalid_guest_state(vmx, "guest_pending_debug_exceptions_rtm")


def test_guest_single_step_with_sti_blocking_needs_pending_bs_exit_33(vmx):
    w(vmx, GUEST_RFLAGS=0x302, GUEST_INTERRUPTIBILITY_INFO=1)
    invalid_guest_state(vmx, "guest_pending_bs_for_single_step")


def test_guest_single_step_with_sti_blocking_and_pending_bs_enters(vmx):
    w(vmx, GUEST_RFLAGS=0x302, GUEST_INTERRUPTIBILITY_INFO=1, GUEST_PENDING_DBG_EXCEPTIONS=1 << 14)
    enters(vmx)


def test_guest_pending_bs_without_single_step_in_hlt_is_invalid_guest_state_exit_33(vmx):
    w(vmx, GUEST_ACTIVITY_STATE=1, GUEST_PENDING_DBG_EXCEPTIONS=1 << 14)
    invalid_guest_state(vmx, "guest_pending_bs_without_single_step")


@pytest.mark.parametrize("pointer", [0, 0x2008, BEYOND_MAXPHYADDR])
def test_vmcs_link_pointer_not_all_ones_nor_a_vmcs_is_invalid_guest_state_exit_33_qualification_4(vmx, pointer):
    w(vmx, VMCS_LINK_POINTER=pointer)
    invalid_guest_state(vmx, "vmcs_link_pointer", qualification=4)


def test_vmcs_link_pointer_to_the_current_vmcs_is_invalid_guest_state_exit_33_qualification_4(vmx):
    w(vmx, VMCS_LINK_POINTER=vmx.current_pointer)
    invalid_guest_state(vmx, "vmcs_link_pointer", qualification=4)


def test_vmcs_link_pointer_to_a_shadow_vmcs_without_vmcs_shadowing_is_exit_33_qualification_4(vmx, memory):
    write_revision(memory, VMCS_B, vmx.caps, shadow=True)
    w(vmx, VMCS_LINK_POINTER=VMCS_B)
    invalid_guest_state(vmx, "vmcs_link_pointer", qualification=4)


def test_vmcs_link_pointer_to_an_ordinary_vmcs_without_vmcs_shadowing_enters(vmx):
    w(vmx, VMCS_LINK_POINTER=VMCS_B)  # SDM 26.3.1.5: checked, not required to be all ones
    enters(vmx)


# == 26.3.1.6 Guest PDPTEs: exit 33, qualification 2 =============================================
def pae_guest(vmx, pdpte1: int) -> None:
    control(vmx, "VM_ENTRY_CONTROLS", clear=msrs.VM_ENTRY_IA32E_MODE)
    w(vmx, GUEST_IA32_EFER=0, GUEST_CS_AR_BYTES=0xC09B, GUEST_CR3=PAGE)
    vmx.memory.write(PAGE, struct.pack("<4Q", 0x1001, pdpte1, 0, 0))


def test_pae_guest_with_valid_pdptes_enters(vmx):
    pae_guest(vmx, 0x2001)
    enters(vmx)


@pytest.mark.parametrize("bit", [1, 2, 5, 8, 40])
def test_pae_guest_pdpte_reserved_bit_is_invalid_guest_state_exit_33_qualification_2(vmx, bit):
    pae_guest(vmx, 0x2001 | 1 << bit)
    invalid_guest_state(vmx, "guest_pdpte_reserved_bits", qualification=2)


def test_pae_guest_not_present_pdpte_is_not_checked(vmx):
    pae_guest(vmx, 0x2000 | 1 << 1)
    enters(vmx)


# == 26.4 VM-entry MSR-load area: exit 34 ========================================================
def msr_load_area(vmx, *entries: tuple[int, int]) -> None:
    vmx.memory.write(MSR_AREA, b"".join(struct.pack("<QQ", low, value) for low, value in entries))
    w(vmx, VM_ENTRY_MSR_LOAD_COUNT=len(entries), VM_ENTRY_MSR_LOAD_ADDR=MSR_AREA)


def test_a_well_formed_vm_entry_msr_load_area_enters(vmx):
    msr_load_area(vmx, (0x174, 0x10), (0xC000_0080, 0x500))
    enters(vmx)


@pytest.mark.parametrize("low,check", [(0xC000_0100, "msr_load_fs_gs_base"), (0xC000_0101, "msr_load_fs_gs_base"),
                                       (0x808, "msr_load_x2apic"), (0x9E, "msr_load_smm_monitor_ctl"),
                                       (1 << 32 | 0x174, "msr_load_entry_reserved_bits")])
def test_a_vm_entry_msr_load_entry_that_cannot_be_loaded_is_exit_34_naming_the_entry(vmx, low, check):
    msr_load_area(vmx, (0x174, 0x10), (low, 0))
    invalid_guest_state(vmx, check, qualification=2, reason=34)


def test_guest_state_checks_come_before_msr_loading(vmx):
    msr_load_area(vmx, (0xC000_0100, 0))
    w(vmx, GUEST_RFLAGS=0)
    invalid_guest_state(vmx, "guest_rflags_bit_1")


# -- the checks of 26.2 are kept between entries only while their inputs stay the same ----------
def test_a_control_written_after_a_passing_entry_is_checked_at_the_next_vmresume(vmx):
    enters(vmx)
    control(vmx, "PIN_BASED_VM_EXEC_CONTROL", msrs.PIN_BASED_VIRTUAL_NMIS)  # without NMI exiting
    result = vmx.vmresume()
    assert result.status is not Status.ENTERED and r(vmx, "VM_INSTRUCTION_ERROR") == 7
    assert "virtual_nmis_without_nmi_exiting" in vmx.last_entry_failure


def test_a_host_field_written_after_a_passing_entry_is_checked_at_the_next_vmresume(vmx):
    enters(vmx)
    w(vmx, HOST_CS_SELECTOR=0)
    assert vmx.vmresume().status is not Status.ENTERED and r(vmx, "VM_INSTRUCTION_ERROR") == 8
    assert "host_cs_selector_zero" in vmx.last_entry_failure


def test_a_vtpr_lowered_in_memory_after_a_passing_entry_is_checked_at_the_next_vmresume(vmx):
    tpr_shadow(vmx, vtpr=0x30)
    w(vmx, TPR_THRESHOLD=3)
    enters(vmx)
    vmx.memory.write(VIRTUAL_APIC + 0x80, bytes([0x20]))  # VTPR[7:4] = 2 < threshold 3
    assert vmx.vmresume().status is not Status.ENTERED and r(vmx, "VM_INSTRUCTION_ERROR") == 7
    assert "tpr_threshold_above_vtpr" in vmx.last_entry_failure
