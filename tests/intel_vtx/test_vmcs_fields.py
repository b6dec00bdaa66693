"""VMCS field encodings (SDM Vol. 3D Appendix B, Vol. 3C 24.11.2), the Vmcs value store and the
VMCS region (SDM 24.2)."""

from __future__ import annotations

import struct

import pytest
from hvsim.plugins.intel_vtx import vmcs as F
from hvsim.plugins.intel_vtx.msrs import VmxCapabilities
from hvsim.plugins.intel_vtx.vmcs import COMPONENTS, Encoding, Field, Vmcs, VmcsRegion

CAPS = VmxCapabilities()


@pytest.mark.parametrize("name,encoding", [
    ("VIRTUAL_PROCESSOR_ID", 0x0000), ("POSTED_INTR_NV", 0x0002), ("GUEST_ES_SELECTOR", 0x0800),
    ("GUEST_TR_SELECTOR", 0x080E), ("GUEST_INTR_STATUS", 0x0810), ("GUEST_PML_INDEX", 0x0812),
    ("HOST_ES_SELECTOR", 0x0C00), ("HOST_TR_SELECTOR", 0x0C0C), ("IO_BITMAP_A", 0x2000),
    ("IO_BITMAP_A_HIGH", 0x2001), ("MSR_BITMAP", 0x2004), ("TSC_OFFSET", 0x2010), ("EPT_POINTER", 0x201A),
    ("EPT_POINTER_HIGH", 0x201B), ("XSS_EXIT_BITMAP", 0x202C), ("TSC_MULTIPLIER", 0x2032),
    ("GUEST_PHYSICAL_ADDRESS", 0x2400), ("VMCS_LINK_POINTER", 0x2800), ("GUEST_IA32_EFER", 0x2806),
    ("GUEST_PDPTR3", 0x2810), ("GUEST_IA32_RTIT_CTL", 0x2814), ("HOST_IA32_PAT", 0x2C00),
    ("HOST_IA32_PERF_GLOBAL_CTRL", 0x2C04), ("PIN_BASED_VM_EXEC_CONTROL", 0x4000),
    ("CPU_BASED_VM_EXEC_CONTROL", 0x4002), ("CR3_TARGET_COUNT", 0x400A), ("VM_ENTRY_INTR_INFO_FIELD", 0x4016),
    ("SECONDARY_VM_EXEC_CONTROL", 0x401E), ("PLE_WINDOW", 0x4022), ("VM_INSTRUCTION_ERROR", 0x4400),
    ("VM_EXIT_REASON", 0x4402), ("VMX_INSTRUCTION_INFO", 0x440E), ("GUEST_ES_LIMIT", 0x4800),
    ("GUEST_TR_AR_BYTES", 0x4822), ("GUEST_ACTIVITY_STATE", 0x4826), ("GUEST_SYSENTER_CS", 0x482A),
    ("VMX_PREEMPTION_TIMER_VALUE", 0x482E), ("HOST_IA32_SYSENTER_CS", 0x4C00), ("CR0_GUEST_HOST_MASK", 0x6000),
    ("CR3_TARGET_VALUE3", 0x600E), ("EXIT_QUALIFICATION", 0x6400), ("GUEST_LINEAR_ADDRESS", 0x640A),
    ("GUEST_CR0", 0x6800), ("GUEST_RIP", 0x681E), ("GUEST_RFLAGS", 0x6820), ("GUEST_SYSENTER_EIP", 0x6826),
    ("HOST_CR0", 0x6C00), ("HOST_RSP", 0x6C14), ("HOST_RIP", 0x6C16),
])
def test_fields_have_the_sdm_encodings_under_linux_names(name, encoding):
    assert getattr(F, name) == encoding


def test_an_encoding_is_access_index_type_and_width():
    e = Encoding.of(0x201B)  # EPT_POINTER_HIGH
    assert (e.access, e.index, e.type, e.width, e.reserved) == (F.ACCESS_HIGH, 0xD, F.TYPE_CONTROL, F.WIDTH_64, 0)
    e = Encoding.of(0x681E)  # GUEST_RIP
    assert (e.access, e.index, e.type, e.width) == (F.ACCESS_FULL, 0xF, F.TYPE_GUEST, F.WIDTH_NATURAL)
    assert Encoding.of(0x1_681E).reserved and Encoding.of(0x781E).reserved


def test_every_field_is_a_full_encoding_without_reserved_bits():
    for f in Field:
        e = Encoding.of(f)
        assert e.access == F.ACCESS_FULL and e.reserved == 0


@pytest.mark.parametrize("first,last,width,type_", [
    (0x0000, 0x0008, F.WIDTH_16, F.TYPE_CONTROL), (0x0800, 0x0814, F.WIDTH_16, F.TYPE_GUEST),
    (0x0C00, 0x0C0C, F.WIDTH_16, F.TYPE_HOST), (0x2000, 0x204C, F.WIDTH_64, F.TYPE_CONTROL),
    (0x2400, 0x2400, F.WIDTH_64, F.TYPE_READ_ONLY), (0x2800, 0x2818, F.WIDTH_64, F.TYPE_GUEST),
    (0x2C00, 0x2C06, F.WIDTH_64, F.TYPE_HOST), (0x4000, 0x4024, F.WIDTH_32, F.TYPE_CONTROL),
    (0x4400, 0x440E, F.WIDTH_32, F.TYPE_READ_ONLY), (0x4800, 0x482E, F.WIDTH_32, F.TYPE_GUEST),
    (0x4C00, 0x4C00, F.WIDTH_32, F.TYPE_HOST), (0x6000, 0x600E, F.WIDTH_NATURAL, F.TYPE_CONTROL),
    (0x6400, 0x640A, F.WIDTH_NATURAL, F.TYPE_READ_ONLY), (0x6800, 0x682C, F.WIDTH_NATURAL, F.TYPE_GUEST),
    (0x6C00, 0x6C1C, F.WIDTH_NATURAL, F.TYPE_HOST),
])
def test_each_appendix_b_table_holds_one_width_and_type(first, last, width, type_):
    fields = [f for f in Field if first <= f <= last]
    assert fields and all(Encoding.of(f).width == width and Encoding.of(f).type == type_ for f in fields)


def test_only_64_bit_fields_have_a_high_access():
    highs = {c.encoding for c in COMPONENTS.values() if c.high}
    assert highs == {f | 1 for f in Field if Encoding.of(f).width == F.WIDTH_64}


def test_high_half_of_a_64_bit_field_aliases_its_upper_32_bits():
    vmcs = Vmcs(0x1000, CAPS.supported_fields)
    vmcs.write(F.IO_BITMAP_A, 0x0000_0001_2345_6000)
    assert vmcs.read(F.IO_BITMAP_A_HIGH) == 1
    vmcs.write(F.IO_BITMAP_A_HIGH, 0xFFFF_FFFF_0000_0002)  # a HIGH write keeps 32 bits
    assert vmcs.read(F.IO_BITMAP_A) == 0x0000_0002_2345_6000


def test_a_vmcs_region_starts_with_revision_identifier_and_abort_indicator(memory):
    vmcs = Vmcs(0x4000, CAPS.supported_fields)
    memory.write(0x4000, struct.pack("<II", CAPS.revision_id | 1 << 31, 0xAB))
    vmcs.write(F.GUEST_CR3, 0x1000)
    VmcsRegion.store(vmcs, memory)
    assert struct.unpack("<II", memory.read(0x4000, 8)) == (CAPS.revision_id | 1 << 31, 0xAB)
    loaded = VmcsRegion.load(memory, 0x4000, CAPS.supported_fields)
    assert loaded.shadow and loaded.read(F.GUEST_CR3) == 0x1000 and not loaded.launched


def test_the_vmcs_data_fits_the_region_size_in_ia32_vmx_basic():
    assert VmcsRegion.SIZE <= (CAPS.msrs[0x480] >> 32) & 0x1FFF


def test_vmcs_data_round_trips_through_its_region(memory):
    vmcs = Vmcs(0x4000, CAPS.supported_fields)
    for i, encoding in enumerate(sorted(CAPS.supported_fields)):
        vmcs.write(encoding, (i * 0x0123_4567_89AB_CDEF) & (1 << 64) - 1)
    vmcs.launched = True
    VmcsRegion.store(vmcs, memory)
    loaded = VmcsRegion.load(memory, 0x4000, CAPS.supported_fields)
    assert loaded.values == vmcs.values and loaded.launched


def test_record_exit_fills_the_vm_exit_information_fields():
    vmcs = Vmcs(0x1000, CAPS.supported_fields)
    vmcs.values[F.IDT_VECTORING_INFO_FIELD] = 0x8000_0E0E
    vmcs.record_exit(30, qualification=0x00F4_0008, instruction_len=2, guest_physical_address=0x1234)
    assert vmcs.read(F.VM_EXIT_REASON) == 30 and vmcs.read(F.EXIT_QUALIFICATION) == 0xF4_0008
    assert vmcs.read(F.VM_EXIT_INSTRUCTION_LEN) == 2 and vmcs.read(F.GUEST_PHYSICAL_ADDRESS) == 0x1234
    assert vmcs.read(F.IDT_VECTORING_INFO_FIELD) == 0  # not valid: the exit was not during delivery
    assert set(vmcs.values) == set(CAPS.supported_fields)


def test_record_exit_leaves_out_fields_the_processor_does_not_have():
    vmcs = Vmcs(0x1000, VmxCapabilities(proc2=0).supported_fields)
    vmcs.record_exit(12, guest_physical_address=0x1234)
    assert F.GUEST_PHYSICAL_ADDRESS not in vmcs.values
