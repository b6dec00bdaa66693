"""The VMX instructions, one test per rule of the SDM's pseudo-code (Vol. 3C ch. 31) and the
VM-instruction error numbers of SDM 31.4."""

from __future__ import annotations

import struct

import pytest
from conftest import (
    UNALIGNED,
    VMCS_A,
    VMCS_B,
    VMXON_REGION,
    make_vmx,
    with_current_vmcs,
    write_revision,
)
from hvsim.plugins.intel_vtx import vmcs as F
from hvsim.plugins.intel_vtx.msrs import (
    FEATURE_CONTROL_LOCKED,
    HVSIM_EPT_VPID_CAP,
    HVSIM_PROC2,
    SECONDARY_EXEC_SHADOW_VMCS,
    VMX_VPID_EXTENT_SINGLE_NON_GLOBAL_BIT,
    X86_CR4_VMXE,
    VmxCapabilities,
)
from hvsim.plugins.intel_vtx.vmcs import VmcsRegion
from hvsim.plugins.intel_vtx.vmx import (
    INVALID_POINTER,
    GeneralProtection,
    InvalidOpcode,
    Status,
    Vmx,
)

BEYOND_MAXPHYADDR = 1 << 40


def failed_valid(result, error):
    return result.status is Status.FAIL_VALID and result.error == error


# -- VMXON -----------------------------------------------------------------------------------------
def test_vmxon_requires_cr4_vmxe(cpu):
    cpu.cr4 &= ~X86_CR4_VMXE
    with pytest.raises(InvalidOpcode):
        cpu.vmxon(VMXON_REGION)


def test_vmxon_outside_protected_mode_is_invalid_opcode(cpu):
    cpu.cr0 &= ~1
    with pytest.raises(InvalidOpcode):
        cpu.vmxon(VMXON_REGION)


def test_vmxon_in_compatibility_mode_is_invalid_opcode(cpu):
    cpu.cs_l = False
    with pytest.raises(InvalidOpcode):
        cpu.vmxon(VMXON_REGION)


def test_vmxon_above_cpl_0_is_general_protection(cpu):
    cpu.cpl = 3
    with pytest.raises(GeneralProtection):
        cpu.vmxon(VMXON_REGION)


def test_vmxon_with_a_cr0_bit_fixed_to_1_clear_is_general_protection(cpu):
    cpu.cr0 &= ~(1 << 5)  # CR0.NE is 1 in IA32_VMX_CR0_FIXED0
    with pytest.raises(GeneralProtection):
        cpu.vmxon(VMXON_REGION)


def test_vmxon_with_a_cr4_bit_fixed1_does_not_allow_is_general_protection(cpu):
    cpu.cr4 |= 1 << 22  # CR4.PKE: hvsim's processor has no protection keys
    with pytest.raises(GeneralProtection):
        cpu.vmxon(VMXON_REGION)


@pytest.mark.parametrize("feature_control", [0, FEATURE_CONTROL_LOCKED, 1 << 2])
def test_vmxon_needs_feature_control_locked_with_vmx_outside_smx(cpu, feature_control):
    cpu.feature_control = feature_control
    with pytest.raises(GeneralProtection):
        cpu.vmxon(VMXON_REGION)


@pytest.mark.parametrize("address", [UNALIGNED, BEYOND_MAXPHYADDR])
def test_vmxon_region_must_be_4k_aligned_within_physical_address_width(cpu, address):
    assert cpu.vmxon(address).status is Status.FAIL_INVALID
    assert not cpu.in_vmx_operation


def test_vmxon_region_with_a_wrong_revision_is_vmfail_invalid(cpu, memory):
    memory.write(VMXON_REGION, struct.pack("<I", cpu.caps.revision_id ^ 1))
    assert cpu.vmxon(VMXON_REGION).status is Status.FAIL_INVALID


def test_vmxon_region_with_bit_31_set_is_vmfail_invalid(cpu, memory):
    write_revision(memory, VMXON_REGION, cpu.caps, shadow=True)
    assert cpu.vmxon(VMXON_REGION).status is Status.FAIL_INVALID


def test_vmxon_enters_vmx_operation_with_no_current_vmcs(cpu):
    assert cpu.vmxon(VMXON_REGION).status is Status.SUCCEED
    assert cpu.in_vmx_operation
    assert cpu.vmptrst().value == INVALID_POINTER


def test_vmxon_in_vmx_root_operation_is_error_15(vmx):
    assert failed_valid(vmx.vmxon(VMXON_REGION), 15)


def test_vmxon_in_vmx_root_operation_without_current_vmcs_is_vmfail_invalid(root):
    assert root.vmxon(VMXON_REGION).status is Status.FAIL_INVALID


@pytest.mark.parametrize("call", [
    lambda v: v.vmxoff(), lambda v: v.vmclear(VMCS_A), lambda v: v.vmptrld(VMCS_A), lambda v: v.vmptrst(),
    lambda v: v.vmread(F.GUEST_RIP), lambda v: v.vmwrite(F.GUEST_RIP, 0), lambda v: v.vmlaunch(),
    lambda v: v.vmresume(), lambda v: v.invept(2), lambda v: v.invvpid(2)])
def test_vmx_instructions_outside_vmx_operation_are_invalid_opcode(cpu, call):
    with pytest.raises(InvalidOpcode):
        call(cpu)


def test_vmx_instructions_above_cpl_0_are_general_protection(vmx):
    vmx.cpl = 3
    with pytest.raises(GeneralProtection):
        vmx.vmread(F.GUEST_RIP)


# -- VMXOFF ----------------------------------------------------------------------------------------
def test_vmxoff_leaves_vmx_operation(vmx):
    assert vmx.vmxoff().ok
    assert not vmx.in_vmx_operation and vmx.current is None


def test_vmxoff_loses_an_active_vmcs_that_was_not_cleared(vmx):
    vmx.vmwrite(F.GUEST_RIP, 0x1234)
    vmx.vmxoff()
    with_current_vmcs(vmx)  # VMCLEAR reads the region back: the VMWRITE never reached it
    assert vmx.vmread(F.GUEST_RIP).value != 0x1234


# -- VMCLEAR ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("address", [UNALIGNED, BEYOND_MAXPHYADDR])
def test_vmclear_with_an_invalid_address_is_error_2(vmx, address):
    assert failed_valid(vmx.vmclear(address), 2)


def test_vmclear_of_the_vmxon_pointer_is_error_3(vmx):
    assert failed_valid(vmx.vmclear(VMXON_REGION), 3)


def test_vmfail_without_a_current_vmcs_is_vmfail_invalid(root):
    assert root.vmclear(VMXON_REGION).status is Status.FAIL_INVALID


def test_vmclear_writes_the_vmcs_back_to_its_region(vmx, memory):
    vmx.vmwrite(F.GUEST_RIP, 0xFFFF_8000_1234_5678)
    index = VmcsRegion.ORDER.index(F.GUEST_RIP)
    before = memory.read(VMCS_A + VmcsRegion.DATA + 8 * index, 8)
    assert vmx.vmclear(VMCS_A).ok
    after = memory.read(VMCS_A + VmcsRegion.DATA + 8 * index, 8)
    assert before == bytes(8) and struct.unpack("<Q", after)[0] == 0xFFFF_8000_1234_5678


def test_vmclear_keeps_the_revision_identifier_and_abort_indicator(vmx, memory):
    header = memory.read(VMCS_A, 8)
    vmx.vmclear(VMCS_A)
    assert memory.read(VMCS_A, 8) == header


def test_vmclear_sets_the_launch_state_to_clear(vmx):
    assert vmx.vmlaunch().ok
    vmx.vmclear(VMCS_A)
    vmx.vmptrld(VMCS_A)
    assert failed_valid(vmx.vmresume(), 5)
    assert vmx.vmlaunch().ok


def test_vmclear_of_the_current_vmcs_leaves_no_current_vmcs(vmx):
    vmx.vmclear(VMCS_A)
    assert vmx.current is None and vmx.vmptrst().value == INVALID_POINTER


def test_vmclear_of_another_vmcs_keeps_the_current_one(vmx):
    assert vmx.vmclear(VMCS_B).ok
    assert vmx.vmptrst().value == VMCS_A


# -- VMPTRLD / VMPTRST -----------------------------------------------------------------------------
@pytest.mark.parametrize("address", [UNALIGNED, BEYOND_MAXPHYADDR])
def test_vmptrld_with_an_invalid_address_is_error_9(vmx, address):
    assert failed_valid(vmx.vmptrld(address), 9)


def test_vmptrld_of_the_vmxon_pointer_is_error_10(vmx):
    assert failed_valid(vmx.vmptrld(VMXON_REGION), 10)


def test_vmptrld_with_a_wrong_revision_is_error_11(vmx, memory):
    memory.write(VMCS_B, struct.pack("<I", vmx.caps.revision_id + 1))
    assert failed_valid(vmx.vmptrld(VMCS_B), 11)
    assert vmx.vmptrst().value == VMCS_A


def test_vmptrld_of_a_shadow_vmcs_without_vmcs_shadowing_is_error_11(vmx, memory):
    write_revision(memory, VMCS_B, vmx.caps, shadow=True)
    assert failed_valid(vmx.vmptrld(VMCS_B), 11)


def test_vmptrld_of_a_shadow_vmcs_with_vmcs_shadowing_succeeds_but_cannot_be_launched(memory):
    vmx = with_current_vmcs(make_vmx(memory, VmxCapabilities(proc2=HVSIM_PROC2 | SECONDARY_EXEC_SHADOW_VMCS)))
    write_revision(memory, VMCS_B, vmx.caps, shadow=True)
    vmx.vmclear(VMCS_B)
    assert vmx.vmptrld(VMCS_B).ok
    assert vmx.vmlaunch().status is Status.FAIL_INVALID  # SDM 26.1


def test_vmptrld_without_a_current_vmcs_and_a_bad_address_is_vmfail_invalid(root):
    assert root.vmptrld(UNALIGNED).status is Status.FAIL_INVALID


def test_vmptrld_reads_the_vmcs_from_its_region(vmx):
    vmx.vmwrite(F.HOST_RIP, 0xFFFF_FFFF_8100_0000)
    vmx.vmclear(VMCS_A)
    assert vmx.vmptrld(VMCS_A).ok
    assert vmx.vmread(F.HOST_RIP).value == 0xFFFF_FFFF_8100_0000


def test_several_vmcs_are_active_and_one_is_current(vmx):
    vmx.vmwrite(F.GUEST_RIP, 0xA)
    vmx.vmclear(VMCS_B)
    vmx.vmptrld(VMCS_B)
    vmx.vmwrite(F.GUEST_RIP, 0xB)
    assert set(vmx.active) == {VMCS_A, VMCS_B}
    vmx.vmptrld(VMCS_A)
    assert vmx.vmread(F.GUEST_RIP).value == 0xA


def test_vmptrst_stores_the_current_vmcs_pointer(vmx):
    result = vmx.vmptrst()
    assert result.status is Status.SUCCEED and result.value == VMCS_A


# -- VMREAD / VMWRITE ------------------------------------------------------------------------------
def test_vmread_without_a_current_vmcs_is_vmfail_invalid(root):
    assert root.vmread(F.GUEST_RIP).status is Status.FAIL_INVALID
    assert root.vmwrite(F.GUEST_RIP, 0).status is Status.FAIL_INVALID


@pytest.mark.parametrize("encoding", [
    0x6C16 | 0x1000,  # bit 12 is reserved
    0x6C16 | 0x8000,  # bits 31:15 are reserved
    F.GUEST_RIP | 1,  # only 64-bit fields have a HIGH access
    F.EXIT_QUALIFICATION | 1,
    0x482C,  # no field has index 0x16 among 32-bit guest-state fields
    F.EPTP_INDEX,  # exists only with EPT-violation #VE, which hvsim does not model
    F.VMREAD_BITMAP,  # exists only with VMCS shadowing
    1 << 32 | F.GUEST_RIP,  # bits 63:32 of the register operand must be 0
])
def test_vmread_of_an_unsupported_component_is_error_12(vmx, encoding):
    assert failed_valid(vmx.vmread(encoding), 12)
    assert failed_valid(vmx.vmwrite(encoding, 0), 12)


def test_vmwrite_to_read_only_field_is_error_13(memory):
    vmx = with_current_vmcs(make_vmx(memory, VmxCapabilities(vmwrite_any_field=False)))
    assert failed_valid(vmx.vmwrite(F.VM_EXIT_REASON, 12), 13)
    assert failed_valid(vmx.vmwrite(F.GUEST_PHYSICAL_ADDRESS_HIGH, 1), 13)
    assert vmx.vmread(F.VM_EXIT_REASON).value == 0


def test_vmwrite_to_read_only_field_succeeds_with_vmx_misc_bit_29(vmx):
    assert vmx.caps.vmwrite_any_field
    assert vmx.vmwrite(F.EXIT_QUALIFICATION, 0x1234).ok
    assert vmx.vmread(F.EXIT_QUALIFICATION).value == 0x1234


def test_vmfail_valid_writes_the_vm_instruction_error_field(vmx):
    vmx.vmptrld(VMXON_REGION)
    assert vmx.vmread(F.VM_INSTRUCTION_ERROR).value == 10


def test_vmx_instruction_outcomes_set_rflags_as_the_sdm_says(vmx, root):
    arith = 0x8D5
    assert vmx.vmptrst().rflags(0x2 | arith) == 0x2
    assert root.vmread(F.GUEST_RIP).rflags(0x2 | arith) == 0x3  # VMfailInvalid: CF
    assert vmx.vmread(0x1000).rflags(0x2 | arith) == 0x42  # VMfailValid: ZF


def test_high_half_of_a_64_bit_field_aliases_its_upper_32_bits(vmx):
    vmx.vmwrite(F.EPT_POINTER, 0x1111_2222_3333_4444)
    assert vmx.vmread(F.EPT_POINTER_HIGH).value == 0x1111_2222
    vmx.vmwrite(F.EPT_POINTER_HIGH, 0xAAAA_BBBB)
    assert vmx.vmread(F.EPT_POINTER).value == 0xAAAA_BBBB_3333_4444


def test_vmread_outside_64_bit_mode_returns_bits_31_0(vmx):
    vmx.vmwrite(F.GUEST_RIP, 0x1234_5678_9ABC_DEF0)
    vmx.efer &= ~(1 << 10)  # IA32_EFER.LMA = 0: 32-bit protected mode
    assert vmx.vmread(F.GUEST_RIP).value == 0x9ABC_DEF0


def test_vmwrite_of_a_wider_field_outside_64_bit_mode_clears_its_high_bits(vmx):
    vmx.vmwrite(F.TSC_OFFSET, (1 << 64) - 1)
    vmx.efer &= ~(1 << 10)
    vmx.vmwrite(F.TSC_OFFSET, 0x1234)
    vmx.vmwrite(F.TSC_OFFSET_HIGH, 0x5678)  # how 32-bit software writes a 64-bit field
    vmx.efer |= 1 << 10
    assert vmx.vmread(F.TSC_OFFSET).value == 0x5678_0000_1234


# -- VMLAUNCH / VMRESUME ---------------------------------------------------------------------------
def test_vmlaunch_without_a_current_vmcs_is_vmfail_invalid(root):
    assert root.vmlaunch().status is Status.FAIL_INVALID
    assert root.vmresume().status is Status.FAIL_INVALID


def test_vmlaunch_with_a_launched_vmcs_is_error_4(vmx):
    assert vmx.vmlaunch().status is Status.ENTERED
    assert failed_valid(vmx.vmlaunch(), 4)


def test_vmresume_with_a_clear_vmcs_is_error_5(vmx):
    assert failed_valid(vmx.vmresume(), 5)


def test_vmlaunch_makes_the_launch_state_launched_for_vmresume(vmx):
    vmx.vmlaunch()
    assert vmx.current.launched
    assert vmx.vmresume().status is Status.ENTERED


def test_launch_state_stays_with_an_active_vmcs_that_is_not_current(vmx):
    vmx.vmlaunch()
    vmx.vmclear(VMCS_B)
    vmx.vmptrld(VMCS_B)
    vmx.vmptrld(VMCS_A)
    assert vmx.vmresume().ok


def test_vm_entry_with_events_blocked_by_mov_ss_is_error_26(vmx):
    vmx.blocked_by_mov_ss = True
    assert failed_valid(vmx.vmlaunch(), 26)


def test_vm_entry_with_invalid_controls_is_vmfail_valid_and_keeps_the_vmcs_clear(vmx):
    vmx.check_vmx_controls_and_host_state = lambda vmcs: 7
    assert failed_valid(vmx.vmlaunch(), 7)
    assert not vmx.current.launched


def test_vm_entry_failing_on_guest_state_is_an_exit_with_bit_31_set(vmx):
    vmx.check_and_load_guest_state = lambda vmcs: 33
    result = vmx.vmlaunch()
    assert result.status is Status.ENTRY_FAILED and result.exit_reason == 0x8000_0021
    assert vmx.vmread(F.VM_EXIT_REASON).value == 0x8000_0021
    assert not vmx.current.launched


# -- INVEPT / INVVPID ------------------------------------------------------------------------------
EPTP_WB_4LEVEL = 0x5000 | 6 | (3 << 3)


@pytest.mark.parametrize("type_", [0, 3, 8, 1 << 40])
def test_invept_with_a_type_ept_vpid_cap_does_not_report_is_error_28(vmx, type_):
    assert failed_valid(vmx.invept(type_, EPTP_WB_4LEVEL), 28)


@pytest.mark.parametrize("eptp", [
    0x5000 | 1 | (3 << 3),  # memory type 1 (WC) is not allowed
    0x5000 | 6 | (1 << 3),  # a 2-level walk does not exist
    0x5000 | 6 | (3 << 3) | (1 << 7),  # bits 11:7 reserved
    (1 << 40) | 6 | (3 << 3),  # beyond MAXPHYADDR
])
def test_invept_single_context_with_an_invalid_eptp_is_error_28(vmx, eptp):
    assert failed_valid(vmx.invept(1, eptp), 28)


def test_invept_single_and_all_context_succeed(vmx):
    assert vmx.invept(1, EPTP_WB_4LEVEL).ok
    assert vmx.invept(2).ok


def test_invept_without_ept_is_invalid_opcode(memory):
    vmx = with_current_vmcs(make_vmx(memory, VmxCapabilities(proc2=0)))
    with pytest.raises(InvalidOpcode):
        vmx.invept(2)


@pytest.mark.parametrize("type_", [4, -1, 1 << 33])
def test_invvpid_with_an_unknown_type_is_error_28(vmx, type_):
    assert failed_valid(vmx.invvpid(type_, 1), 28)


def test_invvpid_type_must_be_reported_in_ept_vpid_cap(memory):
    caps = VmxCapabilities(ept_vpid_cap=HVSIM_EPT_VPID_CAP & ~VMX_VPID_EXTENT_SINGLE_NON_GLOBAL_BIT)
    vmx = with_current_vmcs(make_vmx(memory, caps))
    assert failed_valid(vmx.invvpid(3, 1), 28)


@pytest.mark.parametrize("type_", [0, 1, 3])
def test_invvpid_of_vpid_0_is_error_28(vmx, type_):
    assert failed_valid(vmx.invvpid(type_, 0), 28)


def test_invvpid_all_context_takes_any_vpid(vmx):
    assert vmx.invvpid(2, 0).ok


def test_invvpid_descriptor_bits_63_16_must_be_0(vmx):
    assert failed_valid(vmx.invvpid_descriptor(1, struct.pack("<QQ", 1 | (1 << 16), 0)), 28)
    assert vmx.invvpid_descriptor(1, struct.pack("<QQ", 1, 0)).ok


def test_invvpid_individual_address_needs_a_canonical_address(vmx):
    assert failed_valid(vmx.invvpid(0, 1, 0x0100_0000_0000_0000), 28)
    assert vmx.invvpid(0, 1, 0xFFFF_8000_0000_0000).ok


def test_a_fresh_processor_is_not_in_vmx_operation(memory):
    vmx = Vmx(memory)
    assert not vmx.in_vmx_operation and vmx.current_pointer == INVALID_POINTER


def test_rdmsr_of_a_capability_msr_the_processor_lacks_is_general_protection(cpu):
    assert cpu.rdmsr(0x480) & 0x7FFF_FFFF == cpu.caps.revision_id
    assert cpu.rdmsr(0x3A) == cpu.feature_control
    with pytest.raises(GeneralProtection):
        cpu.rdmsr(0x491)  # IA32_VMX_VMFUNC: "enable VM functions" is not allowed
