"""The VMCB's layout, intercept bits, EVENTINJ/EXITINTINFO, the #VMEXIT record and clean bits
(AMD APM Vol. 2, Appendix B; 15.7, 15.15.3, 15.20)."""

import struct

import pytest

from hvsim.core.memory import GuestMemory, HostMemory
from hvsim.plugins.amd_svm.exits import EXIT_CODES
from hvsim.plugins.amd_svm.vmcb import (CLEAN_ALL, FIELD, FIELDS, INTERCEPT, INTERCEPTS, VMCB_SIZE,
                                        VMEXIT_INVALID, Clean, Event, EventType, Segment, Vmcb,
                                        VmcbCache)


# (name, offset, width): Table B-1 / B-2, each checked against Linux's struct vmcb_control_area
# and struct vmcb_save_area (arch/x86/include/asm/svm.h).
APM_OFFSETS = [
    ("INTERCEPT_CR_READ", 0x000, 2), ("INTERCEPT_CR_WRITE", 0x002, 2), ("INTERCEPT_DR_READ", 0x004, 2),
    ("INTERCEPT_EXCEPTIONS", 0x008, 4), ("INTERCEPT_MISC1", 0x00C, 4), ("INTERCEPT_MISC2", 0x010, 4),
    ("INTERCEPT_MISC3", 0x014, 4), ("PAUSE_FILTER_THRESHOLD", 0x03C, 2), ("PAUSE_FILTER_COUNT", 0x03E, 2),
    ("IOPM_BASE_PA", 0x040, 8), ("MSRPM_BASE_PA", 0x048, 8), ("TSC_OFFSET", 0x050, 8),
    ("GUEST_ASID", 0x058, 4), ("TLB_CONTROL", 0x05C, 1), ("V_INTR_VECTOR", 0x064, 1),
    ("EXITCODE", 0x070, 8), ("EXITINFO1", 0x078, 8), ("EXITINFO2", 0x080, 8), ("EXITINTINFO", 0x088, 8),
    ("AVIC_APIC_BAR", 0x098, 8), ("GHCB_PA", 0x0A0, 8), ("EVENTINJ", 0x0A8, 8), ("N_CR3", 0x0B0, 8),
    ("VMCB_CLEAN", 0x0C0, 4), ("NRIP", 0x0C8, 8), ("GUEST_INSN_BYTES_FETCHED", 0x0D0, 1),
    ("GUEST_INSN_BYTES", 0x0D1, 15), ("AVIC_APIC_BACKING_PAGE", 0x0E0, 8), ("AVIC_LOGICAL_TABLE", 0x0F0, 8),
    ("AVIC_PHYSICAL_TABLE", 0x0F8, 8), ("VMSA", 0x108, 8),
    ("ES_SELECTOR", 0x400, 2), ("ES_ATTRIB", 0x402, 2), ("ES_LIMIT", 0x404, 4), ("ES_BASE", 0x408, 8),
    ("CS_SELECTOR", 0x410, 2), ("GDTR_LIMIT", 0x464, 4), ("GDTR_BASE", 0x468, 8), ("IDTR_BASE", 0x488, 8),
    ("TR_SELECTOR", 0x490, 2), ("CPL", 0x4CB, 1), ("EFER", 0x4D0, 8), ("CR4", 0x548, 8), ("CR3", 0x550, 8),
    ("CR0", 0x558, 8), ("DR7", 0x560, 8), ("DR6", 0x568, 8), ("RFLAGS", 0x570, 8), ("RIP", 0x578, 8),
    ("RSP", 0x5D8, 8), ("RAX", 0x5F8, 8), ("STAR", 0x600, 8), ("LSTAR", 0x608, 8), ("CSTAR", 0x610, 8),
    ("SFMASK", 0x618, 8), ("KERNEL_GS_BASE", 0x620, 8), ("SYSENTER_CS", 0x628, 8),
    ("SYSENTER_ESP", 0x630, 8), ("SYSENTER_EIP", 0x638, 8), ("CR2", 0x640, 8), ("G_PAT", 0x668, 8),
    ("DBGCTL", 0x670, 8), ("BR_FROM", 0x678, 8), ("LASTEXCPTO", 0x690, 8),
]


@pytest.mark.parametrize(("name", "offset", "width"), APM_OFFSETS)
def test_vmcb_field_offsets_match_the_apm(vmcb, host, name, offset, width):
    f = FIELD[name]
    assert (f.offset, f.width) == (offset, width)
    assert f.area == ("control" if offset < 0x400 else "save")
    if name == "GUEST_INSN_BYTES":
        vmcb[name] = bytes(range(1, 16))
        assert host.read(vmcb.pa + offset, 15) == bytes(range(1, 16))
        return
    value = int.from_bytes(bytes(range(0x11, 0x11 + width)), "little")
    vmcb[name] = value
    assert host.read(vmcb.pa + offset, width) == value.to_bytes(width, "little")
    assert vmcb[name] == value


def test_every_vmcb_field_lies_inside_its_area_and_whole_fields_do_not_overlap():
    covered = {}
    for f in FIELDS:
        assert 0 <= f.offset and f.offset + f.width <= (0x400 if f.area == "control" else VMCB_SIZE)
        if not f.bits:  # bit fields share their unit on purpose
            for b in range(f.offset, f.offset + f.width):
                assert b not in covered, f"{f.name} overlaps {covered[b]}"
                covered[b] = f.name


@pytest.mark.parametrize(("name", "lsb", "bits"), [
    ("V_TPR", 0, 8), ("V_IRQ", 8, 1), ("V_GIF", 9, 1), ("V_INTR_PRIO", 16, 4), ("V_IGN_TPR", 20, 1),
    ("V_INTR_MASKING", 24, 1), ("V_GIF_ENABLE", 25, 1), ("AVIC_ENABLE", 31, 1),
    ("INTERRUPT_SHADOW", 0, 1), ("NP_ENABLE", 0, 1), ("SEV_ENABLE", 1, 1), ("SEV_ES_ENABLE", 2, 1),
    ("LBR_VIRTUALIZATION_ENABLE", 0, 1),
])
def test_vmcb_bit_fields_sit_at_their_apm_bits_and_leave_their_neighbours_alone(vmcb, host, name, lsb, bits):
    f = FIELD[name]
    host.write(vmcb.pa + f.offset, b"\xff" * f.width)
    vmcb[name] = 0
    unit = int.from_bytes(host.read(vmcb.pa + f.offset, f.width), "little")
    assert unit == ((1 << 8 * f.width) - 1) & ~(((1 << bits) - 1) << lsb)
    vmcb[name] = (1 << bits) - 1
    assert host.read(vmcb.pa + f.offset, f.width) == b"\xff" * f.width


def test_a_value_too_wide_for_its_field_is_refused(vmcb):
    with pytest.raises(ValueError):
        vmcb["GUEST_ASID"] = 1 << 32
    with pytest.raises(ValueError):
        vmcb["V_IRQ"] = 2


def test_a_vmcb_is_4k_aligned(host):
    with pytest.raises(ValueError):
        Vmcb(host, 0x1010)


# -- intercepts -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "offset", "bit", "code"), [
    ("CR0_READ", 0x000, 0, 0x00), ("CR8_WRITE", 0x000, 24, 0x18), ("DR7_READ", 0x004, 7, 0x27),
    ("DR0_WRITE", 0x004, 16, 0x30), ("EXCP14", 0x008, 14, 0x4E), ("INTR", 0x00C, 0, 0x60),
    ("CR0_SEL_WRITE", 0x00C, 5, 0x65), ("RDTSC", 0x00C, 14, 0x6E), ("CPUID", 0x00C, 18, 0x72),
    ("INTN", 0x00C, 21, 0x75), ("PAUSE", 0x00C, 23, 0x77), ("HLT", 0x00C, 24, 0x78),
    ("IOIO_PROT", 0x00C, 27, 0x7B), ("MSR_PROT", 0x00C, 28, 0x7C), ("SHUTDOWN", 0x00C, 31, 0x7F),
    ("VMRUN", 0x010, 0, 0x80), ("VMMCALL", 0x010, 1, 0x81), ("RDPRU", 0x010, 14, 0x8E),
    ("EFER_WRITE_TRAP", 0x010, 15, 0x8F), ("CR0_WRITE_TRAP", 0x010, 16, 0x90),
    ("CR8_WRITE_TRAP", 0x010, 24, 0x98), ("INVLPGB", 0x014, 0, 0xA0), ("INVPCID", 0x014, 2, 0xA2),
    ("TLBSYNC", 0x014, 4, 0xA4),
])
def test_intercept_bits_and_their_exit_codes_match_the_apm(vmcb, host, name, offset, bit, code):
    i = INTERCEPT[name]
    assert (i.offset, i.bit, i.exit_code) == (offset, bit, code)
    assert not vmcb.is_intercepted(name) or name == "VMRUN"
    host.write(vmcb.pa, bytes(0x18))
    vmcb.set_intercept(name)
    assert int.from_bytes(host.read(vmcb.pa + offset, 4), "little") == 1 << bit
    assert vmcb.is_intercepted(name)
    assert vmcb.intercept_vector() == 1 << i.index
    vmcb.set_intercept(name, False)
    assert host.read(vmcb.pa, 0x18) == bytes(0x18)


def test_linux_intercept_numbering_is_the_bit_index_in_the_intercept_vector():
    # INTERCEPT_VMRUN = 128, INTERCEPT_INVLPGB = 160, INTERCEPT_CPUID = 96 + 18 in svm.h
    assert INTERCEPT["VMRUN"].index == 128
    assert INTERCEPT["INVLPGB"].index == 160
    assert INTERCEPT["CPUID"].index == 114


def test_every_intercept_exit_code_is_a_known_svm_exit_code_or_newer():
    names = {i.name for i in INTERCEPTS}
    assert len(names) == len(INTERCEPTS)
    assert {i.exit_code for i in INTERCEPTS} - set(EXIT_CODES) <= {0xA5, 0xA6}  # BUSLOCK, IDLE_HLT


# -- EVENTINJ and EXITINTINFO ---------------------------------------------------------------------
def test_eventinj_layout_matches_the_apm(vmcb, host):
    # #GP (vector 13), TYPE 3 (exception), EV, V, error code 0x18 in bits 63:32 (15.20)
    vmcb.eventinj = Event(13, EventType.EXCEPTION, error_code_valid=True, error_code=0x18)
    raw = struct.unpack("<Q", host.read(vmcb.pa + 0x0A8, 8))[0]
    assert raw == 13 | 3 << 8 | 1 << 11 | 1 << 31 | 0x18 << 32
    assert vmcb.eventinj == Event(13, 3, True, True, 0x18)


@pytest.mark.parametrize(("etype", "value"), [(EventType.INTR, 0), (EventType.NMI, 2),
                                              (EventType.EXCEPTION, 3), (EventType.SOFTWARE_INT, 4)])
def test_event_types_are_numbered_as_the_apm(etype, value):
    assert int(etype) == value


def test_exitintinfo_uses_the_eventinj_layout(vmcb):
    vmcb["EXITINTINFO"] = Event(0x20, EventType.INTR).encode()
    assert vmcb.exitintinfo == Event(0x20, EventType.INTR, False, True, 0)
    assert Event.decode(0).valid is False


# -- the #VMEXIT record --------------------------------------------------------------------------
def test_write_exit_puts_exitcode_exitinfo_and_nrip_at_their_offsets(vmcb, host):
    vmcb.write_exit(0x7B, 0x80 << 16 | 0x10, 0x1234, nrip=0x1234)
    assert struct.unpack("<QQQQ", host.read(vmcb.pa + 0x70, 32)) == (0x7B, 0x80_0010, 0x1234, 0)
    assert vmcb["NRIP"] == 0x1234


@pytest.mark.parametrize("backing", ["host", "guest"])
def test_exit_writer_is_the_same_record_written_fast(host, backing):
    mem = host
    if backing == "guest":
        mem = GuestMemory(HostMemory(0x40_0000))
        mem.add_ram(0x20_0000, 0x20_0000)  # guest-physical 2 MiB is host-physical 0
    v = Vmcb(mem, 0x20_1000 if backing == "guest" else 0x1000)
    write = v.exit_writer()
    write(VMEXIT_INVALID, 1, 2, 3, 4)
    assert (v["EXITCODE"], v["EXITINFO1"], v["EXITINFO2"], v["EXITINTINFO"], v["NRIP"]) == (VMEXIT_INVALID, 1, 2, 4, 3)


def test_exitcode_minus_one_is_all_64_bits_set(vmcb, host):
    vmcb["EXITCODE"] = -1
    assert host.read(vmcb.pa + 0x70, 8) == b"\xff" * 8
    assert vmcb["EXITCODE"] == VMEXIT_INVALID


def test_segments_read_and_write_as_selector_attrib_limit_base(vmcb, host):
    vmcb.set_segment("SS", Segment(0x10, 0x93, 0xFFFF, 0x1000))
    assert host.read(vmcb.pa + 0x420, 16) == struct.pack("<HHIQ", 0x10, 0x93, 0xFFFF, 0x1000)
    assert vmcb.segment("CS").l and not vmcb.segment("CS").d


# -- VMCB clean bits (15.15.3) ------------------------------------------------------------------
@pytest.mark.parametrize(("bit", "fields"), [
    (Clean.I, ["INTERCEPT_CR_READ", "INTERCEPT_MISC2", "TSC_OFFSET", "PAUSE_FILTER_COUNT"]),
    (Clean.IOPM, ["IOPM_BASE_PA", "MSRPM_BASE_PA"]), (Clean.ASID, ["GUEST_ASID"]),
    (Clean.TPR, ["V_TPR", "V_IRQ", "V_INTR_PRIO", "V_IGN_TPR", "V_INTR_MASKING", "V_INTR_VECTOR"]),
    (Clean.NP, ["N_CR3", "G_PAT"]), (Clean.CRX, ["CR0", "CR3", "CR4", "EFER"]), (Clean.DRX, ["DR6", "DR7"]),
    (Clean.DT, ["GDTR_BASE", "GDTR_LIMIT", "IDTR_BASE", "IDTR_LIMIT"]),
    (Clean.SEG, ["CS_SELECTOR", "SS_ATTRIB", "DS_LIMIT", "ES_BASE", "CPL"]), (Clean.CR2, ["CR2"]),
    (Clean.LBR, ["DBGCTL", "BR_FROM", "BR_TO", "LASTEXCPFROM", "LASTEXCPTO"]),
    (Clean.AVIC, ["AVIC_APIC_BAR", "AVIC_APIC_BACKING_PAGE", "AVIC_LOGICAL_TABLE", "AVIC_PHYSICAL_TABLE"]),
])
def test_clean_bits_cover_the_fields_the_apm_lists(bit, fields):
    for name in fields:
        assert FIELD[name].clean == bit, name


def test_fields_without_a_clean_bit_are_always_loaded():
    for name in ("RIP", "RSP", "RAX", "RFLAGS", "EVENTINJ", "TLB_CONTROL", "INTERRUPT_SHADOW", "EXITCODE"):
        assert FIELD[name].clean is None


def test_clean_bit_serves_a_stale_field_until_the_vmm_clears_it(vmcb):
    cpu = VmcbCache()
    vmcb["TSC_OFFSET"] = 100
    assert cpu.vmrun(vmcb)["TSC_OFFSET"] == 100  # first VMRUN: nothing cached, all loaded
    vmcb["VMCB_CLEAN"] = CLEAN_ALL  # the VMM says "nothing changed" ...
    vmcb["TSC_OFFSET"] = 200  # ... then writes a field and forgets its clean bit
    assert cpu.vmrun(vmcb)["TSC_OFFSET"] == 100  # the processor may keep its copy: stale
    vmcb["VMCB_CLEAN"] = CLEAN_ALL & ~(1 << Clean.I)  # the VMM clears bit 0 after writing
    assert cpu.vmrun(vmcb)["TSC_OFFSET"] == 200


def test_fields_without_a_clean_bit_are_read_from_memory_even_when_all_bits_are_clean(vmcb):
    cpu = VmcbCache()
    cpu.vmrun(vmcb)
    vmcb["VMCB_CLEAN"] = CLEAN_ALL
    vmcb["RIP"] = 0x4000
    vmcb.eventinj = Event(32, EventType.INTR)
    state = cpu.vmrun(vmcb)
    assert state["RIP"] == 0x4000 and Event.decode(state["EVENTINJ"]).vector == 32


def test_clean_bits_are_ignored_for_a_vmcb_the_processor_did_not_last_run(vmcb, host):
    cpu = VmcbCache()
    cpu.vmrun(vmcb)
    other = Vmcb(host, 0x3000)
    host.write(other.pa, vmcb.page())
    other["VMCB_CLEAN"] = CLEAN_ALL
    other["CR3"] = 0x9000
    assert cpu.vmrun(other)["CR3"] == 0x9000


def test_the_cache_follows_guest_state_written_at_vmexit(vmcb):
    cpu = VmcbCache()
    cpu.vmrun(vmcb)
    vmcb["CR3"] = 0x7000  # the guest's MOV CR3, saved by #VMEXIT
    cpu.vmexit(vmcb)
    vmcb["VMCB_CLEAN"] = CLEAN_ALL
    assert cpu.vmrun(vmcb)["CR3"] == 0x7000
