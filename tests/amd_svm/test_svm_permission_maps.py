"""The I/O permissions map (AMD APM Vol. 2, 15.10.1) and the MSR permissions map (15.11)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvsim.core.memory import HostMemory
from hvsim.plugins.amd_svm.iopm import (IOPM_BITS, IOPM_SIZE, MSRPM_SIZE, iopm_checker, iopm_intercepted,
                                        iopm_set, msrpm_checker, msrpm_intercepted, msrpm_position,
                                        msrpm_set)
from svmlayout import IOPM_PA, MSRPM_PA


# -- IOPM ----------------------------------------------------------------------------------------
def test_iopm_is_12k_with_one_bit_per_port_and_three_more():
    assert IOPM_SIZE == 3 * 0x1000
    assert IOPM_BITS == 0x10003


def test_iopm_bit_p_is_byte_p_over_8_bit_p_mod_8(host):
    iopm_set(host, IOPM_PA, 0x3F9)
    assert host.read(IOPM_PA + 0x3F9 // 8, 1) == bytes([1 << (0x3F9 % 8)])
    assert iopm_intercepted(host, IOPM_PA, 0x3F9, 1)
    assert not iopm_intercepted(host, IOPM_PA, 0x3F8, 1)


@pytest.mark.parametrize(("size", "covered"), [(1, [0x60]), (2, [0x60, 0x61]), (4, [0x60, 0x61, 0x62, 0x63])])
def test_iopm_multibyte_access_checks_every_covered_port_bit(host, size, covered):
    for port in range(0x5C, 0x68):
        host.write(IOPM_PA, bytes(IOPM_SIZE))
        iopm_set(host, IOPM_PA, port)
        assert iopm_intercepted(host, IOPM_PA, 0x60, size) == (port in covered), hex(port)


def test_iopm_access_at_the_top_port_reads_the_third_page(host):
    iopm_set(host, IOPM_PA, 0x10002)  # the third 4 KiB page, bit 2
    assert host.read(IOPM_PA + 0x2000, 1) == b"\x04"
    assert iopm_intercepted(host, IOPM_PA, 0xFFFF, 4)
    assert not iopm_intercepted(host, IOPM_PA, 0xFFFF, 2)
    assert not iopm_intercepted(host, IOPM_PA, 0xFFFF, 1)


def test_iopm_access_crossing_a_byte_of_the_map_checks_both_bytes(host):
    iopm_set(host, IOPM_PA, 0x48)
    assert iopm_intercepted(host, IOPM_PA, 0x45, 4)
    assert not iopm_intercepted(host, IOPM_PA, 0x44, 4)


def test_iopm_base_pa_bits_11_0_are_ignored(host):
    iopm_set(host, IOPM_PA, 0x80)
    assert iopm_intercepted(host, IOPM_PA | 0xABC, 0x80, 1)


def test_iopm_access_sizes_are_1_2_4(host):
    with pytest.raises(ValueError):
        iopm_intercepted(host, IOPM_PA, 0x80, 3)


# -- MSRPM ---------------------------------------------------------------------------------------
def test_msrpm_is_8k():
    assert MSRPM_SIZE == 2 * 0x1000


@pytest.mark.parametrize(("msr", "offset"), [(0x0000_0000, 0x000), (0x0000_1FFF, 0x7FF),
                                             (0xC000_0000, 0x800), (0xC000_0080, 0x820),
                                             (0xC001_0000, 0x1000), (0xC001_1FFF, 0x17FF)])
def test_msrpm_ranges_sit_at_their_apm_offsets(msr, offset):
    assert msrpm_position(msr, False)[0] == offset
    assert msrpm_position(msr, True)[0] == offset


def test_msrpm_read_bit_is_even_and_write_bit_is_odd(host):
    msrpm_set(host, MSRPM_PA, 0xC000_0081, write=True)  # STAR: bits 2 (read) and 3 (write) of 0x820
    assert host.read(MSRPM_PA + 0x820, 1) == b"\x08"
    assert msrpm_intercepted(host, MSRPM_PA, 0xC000_0081, is_write=True)
    assert not msrpm_intercepted(host, MSRPM_PA, 0xC000_0081, is_write=False)
    msrpm_set(host, MSRPM_PA, 0xC000_0081, read=True, write=False)
    assert host.read(MSRPM_PA + 0x820, 1) == b"\x04"


@pytest.mark.parametrize("msr", [0x2000, 0x4000_0000, 0xBFFF_FFFF, 0xC000_2000, 0xC000_FFFF,
                                 0xC001_2000, 0xC002_0000, 0xFFFF_FFFF])
def test_msrpm_msr_outside_the_three_ranges_is_always_intercepted(host, msr):
    assert msrpm_position(msr, False) is None
    assert msrpm_intercepted(host, MSRPM_PA, msr, False) and msrpm_intercepted(host, MSRPM_PA, msr, True)
    assert msrpm_checker(host, MSRPM_PA)(msr, False)
    with pytest.raises(ValueError):
        msrpm_set(host, MSRPM_PA, msr, read=False)


def test_msrpm_base_pa_bits_11_0_are_ignored(host):
    msrpm_set(host, MSRPM_PA, 0x10, read=True)
    assert msrpm_intercepted(host, MSRPM_PA | 0xFFF, 0x10, False)


# -- properties against a straightforward reference ----------------------------------------------
ports = st.integers(0, 0xFFFF)
io_sizes = st.sampled_from([1, 2, 4])
msrs = st.one_of(st.integers(0, 0x1FFF), st.integers(0xC000_0000, 0xC000_1FFF),
                 st.integers(0xC001_0000, 0xC001_1FFF), st.integers(0, 0xFFFF_FFFF))


@given(st.sets(st.integers(0, IOPM_BITS - 1), max_size=40), ports, io_sizes)
def test_iopm_lookup_matches_the_reference(set_bits, port, size):
    mem = HostMemory(0x4000)
    for p in set_bits:
        iopm_set(mem, 0, p)
    expected = any(p in set_bits for p in range(port, port + size))
    assert iopm_intercepted(mem, 0, port, size) == expected
    assert iopm_checker(mem, 0)(port, size) == expected


@given(st.dictionaries(msrs, st.tuples(st.booleans(), st.booleans()), max_size=20), msrs, st.booleans())
def test_msrpm_lookup_matches_the_reference(settings, msr, is_write):
    mem = HostMemory(0x2000)
    reference = {}
    for m, (r, w) in settings.items():
        if msrpm_position(m, False) is not None:
            msrpm_set(mem, 0, m, read=r, write=w)
            reference[m] = (r, w)
    in_map = any(lo <= msr < lo + 0x2000 for lo in (0, 0xC000_0000, 0xC001_0000))
    expected = reference.get(msr, (False, False))[is_write] if in_map else True
    assert msrpm_intercepted(mem, 0, msr, is_write) == expected
    assert msrpm_checker(mem, 0)(msr, is_write) == expected
