"""POST port 0x80 rules."""

import pytest

from hvsim.plugins.devices.port80 import Port80


def test_port80_keeps_last_value_written():
    dev = Port80()
    assert dev.last is None
    dev.write(0, 1, 0x11)
    dev.write(0, 1, 0xAB)
    assert dev.last == 0xAB


def test_port80_reads_return_ff():
    assert Port80().read(0, 1) == 0xFF


def test_port80_wide_reads_are_all_ones():
    assert Port80().read(0, 2) == 0xFFFF
    assert Port80().read(0, 4) == 0xFFFF_FFFF


def test_port80_write_masked_to_access_size():
    dev = Port80()
    dev.write(0, 1, 0x1234)
    assert dev.last == 0x34


@pytest.mark.parametrize("size", [0, 3, -2])
def test_port80_odd_sizes_read_zero_and_write_nothing(size):
    dev = Port80()
    assert dev.read(0, size) == 0
    dev.write(0, size, 0x55)
    assert dev.last is None
