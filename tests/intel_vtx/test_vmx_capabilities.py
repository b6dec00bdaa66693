"""The VMX capability MSRs and control bits (SDM Vol. 3D Appendix A; Vol. 3C 25.6-25.8)."""

from __future__ import annotations

import pytest
from hvsim.plugins.intel_vtx import msrs as M
from hvsim.plugins.intel_vtx import vmcs as F
from hvsim.plugins.intel_vtx.vmcs import Encoding
from hvsim.plugins.intel_vtx.vmx import eptp_valid
from hvsim.plugins.x86 import cpuid

CAPS = M.VmxCapabilities()


def test_capability_msrs_have_their_architectural_numbers():
    names = ["BASIC", "PINBASED_CTLS", "PROCBASED_CTLS", "EXIT_CTLS", "ENTRY_CTLS", "MISC", "CR0_FIXED0",
             "CR0_FIXED1", "CR4_FIXED0", "CR4_FIXED1", "VMCS_ENUM", "PROCBASED_CTLS2", "EPT_VPID_CAP",
             "TRUE_PINBASED_CTLS", "TRUE_PROCBASED_CTLS", "TRUE_EXIT_CTLS", "TRUE_ENTRY_CTLS", "VMFUNC"]
    assert [getattr(M, "IA32_VMX_" + n) for n in names] == list(range(0x480, 0x492))


def test_vmx_basic_reports_revision_region_size_wb_ins_outs_and_true_controls():
    basic = CAPS.rdmsr(M.IA32_VMX_BASIC)
    assert basic & 0x7FFF_FFFF == CAPS.revision_id and not basic >> 31 & 1
    assert 0 < (basic >> 32) & 0x1FFF <= 4096 and (basic >> 32) & 0x1FFF >= F.VmcsRegion.SIZE
    assert not basic >> 48 & 1  # addresses are not limited to 32 bits
    assert (basic >> 50) & 0xF == 6  # write-back
    assert basic >> 54 & 1 and basic >> 55 & 1


@pytest.mark.parametrize("name,bit", [
    ("PIN_BASED_EXT_INTR_MASK", 0), ("PIN_BASED_NMI_EXITING", 3), ("PIN_BASED_VIRTUAL_NMIS", 5),
    ("PIN_BASED_VMX_PREEMPTION_TIMER", 6), ("PIN_BASED_POSTED_INTR", 7),
    ("CPU_BASED_INTR_WINDOW_EXITING", 2), ("CPU_BASED_USE_TSC_OFFSETTING", 3), ("CPU_BASED_HLT_EXITING", 7),
    ("CPU_BASED_INVLPG_EXITING", 9), ("CPU_BASED_MWAIT_EXITING", 10), ("CPU_BASED_RDPMC_EXITING", 11),
    ("CPU_BASED_RDTSC_EXITING", 12), ("CPU_BASED_CR3_LOAD_EXITING", 15), ("CPU_BASED_CR3_STORE_EXITING", 16),
    ("CPU_BASED_CR8_LOAD_EXITING", 19), ("CPU_BASED_CR8_STORE_EXITING", 20), ("CPU_BASED_TPR_SHADOW", 21),
    ("CPU_BASED_NMI_WINDOW_EXITING", 22), ("CPU_BASED_MOV_DR_EXITING", 23), ("CPU_BASED_UNCOND_IO_EXITING", 24),
    ("CPU_BASED_USE_IO_BITMAPS", 25), ("CPU_BASED_MONITOR_TRAP_FLAG", 27), ("CPU_BASED_USE_MSR_BITMAPS", 28),
    ("CPU_BASED_MONITOR_EXITING", 29), ("CPU_BASED_PAUSE_EXITING", 30),
    ("CPU_BASED_ACTIVATE_SECONDARY_CONTROLS", 31),
    ("SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES", 0), ("SECONDARY_EXEC_ENABLE_EPT", 1), ("SECONDARY_EXEC_DESC", 2),
    ("SECONDARY_EXEC_ENABLE_RDTSCP", 3), ("SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE", 4),
    ("SECONDARY_EXEC_ENABLE_VPID", 5), ("SECONDARY_EXEC_WBINVD_EXITING", 6),
    ("SECONDARY_EXEC_UNRESTRICTED_GUEST", 7), ("SECONDARY_EXEC_APIC_REGISTER_VIRT", 8),
    ("SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY", 9), ("SECONDARY_EXEC_PAUSE_LOOP_EXITING", 10),
    ("SECONDARY_EXEC_RDRAND_EXITING", 11), ("SECONDARY_EXEC_ENABLE_INVPCID", 12),
    ("SECONDARY_EXEC_ENABLE_VMFUNC", 13), ("SECONDARY_EXEC_SHADOW_VMCS", 14), ("SECONDARY_EXEC_RDSEED_EXITING", 16),
    ("SECONDARY_EXEC_ENABLE_PML", 17), ("SECONDARY_EXEC_EPT_VIOLATION_VE", 18), ("SECONDARY_EXEC_ENABLE_XSAVES", 20),
    ("VM_EXIT_SAVE_DEBUG_CONTROLS", 2), ("VM_EXIT_HOST_ADDR_SPACE_SIZE", 9),
    ("VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL", 12), ("VM_EXIT_ACK_INTR_ON_EXIT", 15), ("VM_EXIT_SAVE_IA32_PAT", 18),
    ("VM_EXIT_LOAD_IA32_PAT", 19), ("VM_EXIT_SAVE_IA32_EFER", 20), ("VM_EXIT_LOAD_IA32_EFER", 21),
    ("VM_EXIT_SAVE_VMX_PREEMPTION_TIMER", 22),
    ("VM_ENTRY_LOAD_DEBUG_CONTROLS", 2), ("VM_ENTRY_IA32E_MODE", 9), ("VM_ENTRY_SMM", 10),
    ("VM_ENTRY_LOAD_IA32_PAT", 14), ("VM_ENTRY_LOAD_IA32_EFER", 15),
])
def test_control_bits_have_the_sdm_bit_numbers(name, bit):
    assert getattr(M, name) == 1 << bit


def test_default1_controls_must_be_1_in_the_non_true_msrs():
    for msr, default1 in [(M.IA32_VMX_PINBASED_CTLS, 0x16), (M.IA32_VMX_PROCBASED_CTLS, 0x0401E172),
                          (M.IA32_VMX_EXIT_CTLS, 0x36DFF), (M.IA32_VMX_ENTRY_CTLS, 0x11FF)]:
        value = CAPS.rdmsr(msr)
        assert value & 0xFFFF_FFFF == default1
        assert (value >> 32) & default1 == default1  # a bit that must be 1 may be 1


def test_true_msrs_let_cr3_exiting_and_the_debug_controls_be_0():
    assert CAPS.rdmsr(M.IA32_VMX_TRUE_PROCBASED_CTLS) & 0xFFFF_FFFF == 0x0401E172 & ~(3 << 15)
    assert CAPS.rdmsr(M.IA32_VMX_TRUE_EXIT_CTLS) & 0xFFFF_FFFF == 0x36DFF & ~(1 << 2)
    assert CAPS.rdmsr(M.IA32_VMX_TRUE_ENTRY_CTLS) & 0xFFFF_FFFF == 0x11FF & ~(1 << 2)
    for true, plain in [(0x48D, 0x481), (0x48E, 0x482), (0x48F, 0x483), (0x490, 0x484)]:
        assert CAPS.rdmsr(true) >> 32 == CAPS.rdmsr(plain) >> 32


def test_secondary_controls_have_no_bits_that_must_be_1():
    assert CAPS.rdmsr(M.IA32_VMX_PROCBASED_CTLS2) & 0xFFFF_FFFF == 0


def test_vmx_misc_reports_what_hvsim_models():
    misc = CAPS.misc
    assert (misc >> 16) & 0x1FF == 4  # CR3-target values
    assert misc >> 6 & 7 == 7  # HLT, shutdown, wait-for-SIPI
    assert misc >> 5 & 1  # set wherever unrestricted guest is supported (SDM A.6)
    assert misc >> 29 & 1  # VMWRITE to any supported field
    assert not M.VmxCapabilities(vmwrite_any_field=False).misc >> 29 & 1


def test_cr_fixed_bits():
    assert CAPS.rdmsr(M.IA32_VMX_CR0_FIXED0) == 0x8000_0021  # PG, NE, PE
    assert CAPS.rdmsr(M.IA32_VMX_CR4_FIXED0) == 1 << 13  # VMXE
    fixed1 = CAPS.rdmsr(M.IA32_VMX_CR4_FIXED1)
    assert fixed1 & CAPS.rdmsr(M.IA32_VMX_CR4_FIXED0) == CAPS.rdmsr(M.IA32_VMX_CR4_FIXED0)


@pytest.mark.parametrize("cr4_bit,cpuid_edx", [(2, cpuid.TSC), (4, cpuid.PSE), (5, cpuid.PAE), (7, cpuid.PGE),
                                                (9, cpuid.FXSR), (10, cpuid.SSE)])
def test_cr4_fixed1_allows_the_bits_hvsims_cpuid_backs(cr4_bit, cpuid_edx):
    assert bool(CAPS.rdmsr(M.IA32_VMX_CR4_FIXED1) >> cr4_bit & 1) == bool(cpuid.LEAF1_EDX & cpuid_edx)


@pytest.mark.parametrize("cr4_bit,register,feature", [(12, 2, cpuid.LA57), (20, 1, cpuid.SMEP), (21, 1, cpuid.SMAP)])
def test_cr4_fixed1_allows_the_leaf_7_features_hvsims_cpuid_reports(cr4_bit, register, feature):
    """LA57 (CPUID.7.0:ECX[16]), SMEP (EBX[7]) and SMAP (EBX[20]) are offered, so CR4 may set them."""
    leaf7 = cpuid.cpuid(7, 0, b"GenuineIntel", 0, "", 0, 1)
    assert leaf7[register] & feature and CAPS.rdmsr(M.IA32_VMX_CR4_FIXED1) >> cr4_bit & 1


def test_vmcs_enum_reports_the_highest_index_of_a_supported_field():
    assert CAPS.rdmsr(M.IA32_VMX_VMCS_ENUM) >> 1 == max(Encoding.of(e).index for e in CAPS.supported_fields)


def test_msrs_exist_only_with_the_controls_they_describe():
    assert M.IA32_VMX_VMFUNC not in CAPS.msrs  # "enable VM functions" is not allowed
    no_secondary = M.VmxCapabilities(proc=M.HVSIM_PROC & ~M.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS)
    assert M.IA32_VMX_PROCBASED_CTLS2 not in no_secondary.msrs
    assert M.IA32_VMX_EPT_VPID_CAP not in no_secondary.msrs


def test_a_field_exists_only_where_its_control_may_be_1():
    assert F.EPT_POINTER in CAPS.supported_fields
    assert F.VMREAD_BITMAP not in CAPS.supported_fields
    shadowing = M.VmxCapabilities(proc2=M.HVSIM_PROC2 | M.SECONDARY_EXEC_SHADOW_VMCS)
    assert F.VMREAD_BITMAP in shadowing.supported_fields
    assert F.EPT_POINTER not in M.VmxCapabilities(proc2=0).supported_fields


def test_a_field_either_control_enables_exists_with_one_of_them():
    exit_only = M.VmxCapabilities(entry=0, exit=M.VM_EXIT_SAVE_IA32_PAT)
    assert F.GUEST_IA32_PAT in exit_only.supported_fields
    assert F.HOST_IA32_PAT not in exit_only.supported_fields


def test_eptp_checks_memory_type_walk_length_and_reserved_bits():
    assert eptp_valid(0x1000 | 6 | 3 << 3, CAPS) and eptp_valid(0x1000 | 0 | 3 << 3, CAPS)
    assert not eptp_valid(0x1000 | 6 | 2 << 3, CAPS)
