"""Properties of VMREAD and VMWRITE over every encoding and value (SDM Vol. 3C 24.11.2 and the
VMREAD/VMWRITE pseudo-code of ch. 31): widths, HIGH accesses, operand size outside 64-bit mode,
unsupported components (error 12) and read-only fields (error 13 unless IA32_VMX_MISC bit 29)."""

from __future__ import annotations

from conftest import make_vmx, with_current_vmcs
from hvsim.core.memory import HostMemory
from hvsim.plugins.intel_vtx.msrs import VmxCapabilities
from hvsim.plugins.intel_vtx.vmcs import (
    COMPONENTS,
    TYPE_READ_ONLY,
    WIDTH_16,
    WIDTH_32,
    WIDTH_64,
    WIDTH_NATURAL,
)
from hvsim.plugins.intel_vtx.vmx import EFER_LMA, Status
from hypothesis import given
from hypothesis import strategies as st

_MEMORY = HostMemory(0x20_0000)
VMX = with_current_vmcs(make_vmx(_MEMORY))
STRICT = with_current_vmcs(make_vmx(HostMemory(0x20_0000), VmxCapabilities(vmwrite_any_field=False)))
SUPPORTED = sorted(e for e, c in COMPONENTS.items() if int(c.field) in VMX.caps.supported_fields)
WRITABLE = [e for e in SUPPORTED if COMPONENTS[e].type != TYPE_READ_ONLY]
READ_ONLY = [e for e in SUPPORTED if COMPONENTS[e].type == TYPE_READ_ONLY]
u64 = st.integers(0, (1 << 64) - 1)
KEEPS = {WIDTH_16: 0xFFFF, WIDTH_32: 0xFFFF_FFFF, WIDTH_64: (1 << 64) - 1, WIDTH_NATURAL: (1 << 64) - 1}


def in_64bit_mode(vmx, on: bool) -> None:
    vmx.efer = vmx.efer | EFER_LMA if on else vmx.efer & ~EFER_LMA


@given(st.sampled_from(SUPPORTED), u64)
def test_a_field_keeps_the_bits_of_its_width(encoding, value):
    in_64bit_mode(VMX, True)
    assert VMX.vmwrite(encoding, value).ok
    c = COMPONENTS[encoding]
    assert VMX.vmread(encoding).value == value & (0xFFFF_FFFF if c.high else KEEPS[c.width])


@given(st.sampled_from([e for e in SUPPORTED if COMPONENTS[e].high]), u64, u64)
def test_a_high_access_reads_and_writes_bits_63_32_of_its_field(high, full_value, high_value):
    in_64bit_mode(VMX, True)
    full = high & ~1
    VMX.vmwrite(full, full_value)
    assert VMX.vmread(high).value == full_value >> 32
    VMX.vmwrite(high, high_value)
    assert VMX.vmread(full).value == (high_value & 0xFFFF_FFFF) << 32 | (full_value & 0xFFFF_FFFF)


@given(st.sampled_from([e for e in SUPPORTED if COMPONENTS[e].width == WIDTH_NATURAL]), u64)
def test_natural_width_fields_keep_64_bits_in_64_bit_mode_and_32_outside(encoding, value):
    in_64bit_mode(VMX, True)
    VMX.vmwrite(encoding, value)
    assert VMX.vmread(encoding).value == value
    in_64bit_mode(VMX, False)
    assert VMX.vmread(encoding).value == value & 0xFFFF_FFFF
    VMX.vmwrite(encoding, value)
    in_64bit_mode(VMX, True)
    assert VMX.vmread(encoding).value == value & 0xFFFF_FFFF  # the wider field's high bits cleared


@given(st.sampled_from(SUPPORTED), u64)
def test_outside_64_bit_mode_operands_are_32_bits(encoding, value):
    in_64bit_mode(VMX, False)
    try:
        VMX.vmwrite(encoding, value)
        keeps = 0xFFFF if COMPONENTS[encoding].width == WIDTH_16 else 0xFFFF_FFFF  # a HIGH access is 32-bit
        assert VMX.vmread(encoding).value == value & keeps
    finally:
        in_64bit_mode(VMX, True)


UNSUPPORTED = st.one_of(
    st.sampled_from([e for e in COMPONENTS if e not in SUPPORTED]),  # fields hvsim's processor lacks
    st.integers(0, 0x7FFF), st.integers(0, (1 << 32) - 1),  # unassigned indexes, reserved bits
).filter(lambda e: e not in SUPPORTED)


@given(UNSUPPORTED, u64)
def test_an_encoding_of_no_supported_field_fails_with_error_12_and_changes_nothing(encoding, value):
    in_64bit_mode(VMX, True)
    before = dict(VMX.current.values)
    result = VMX.vmwrite(encoding, value)
    assert result.status is Status.FAIL_VALID and result.error == 12
    assert VMX.vmread(encoding).error == 12
    before[0x4400] = 12  # VM_INSTRUCTION_ERROR is the only change
    assert VMX.current.values == before


@given(st.sampled_from(SUPPORTED), st.integers(1, (1 << 32) - 1))
def test_encoding_registers_with_bits_63_32_set_fail_with_error_12(encoding, upper):
    in_64bit_mode(VMX, True)
    assert VMX.vmread(upper << 32 | encoding).error == 12


@given(st.sampled_from(READ_ONLY), u64)
def test_read_only_fields_fail_vmwrite_with_error_13_without_misc_bit_29(encoding, value):
    before = STRICT.vmread(encoding).value
    result = STRICT.vmwrite(encoding, value)
    assert result.status is Status.FAIL_VALID and result.error == 13
    assert STRICT.vmread(encoding).value == (before if encoding != 0x4400 else 13)


@given(st.sampled_from(READ_ONLY), u64)
def test_read_only_fields_take_vmwrite_with_misc_bit_29(encoding, value):
    in_64bit_mode(VMX, True)
    assert VMX.vmwrite(encoding, value).ok


@given(st.sampled_from(WRITABLE), u64)
def test_writable_fields_take_vmwrite_on_either_processor(encoding, value):
    assert STRICT.vmwrite(encoding, value).ok and VMX.vmwrite(encoding, value).ok
