"""QEMU isa-debug-exit rules (hw/misc/debugexit.c)."""

import pytest

from hvsim.plugins.devices.debug_exit import IsaDebugExit


@pytest.fixture
def stops():
    return []


@pytest.fixture
def dev(stops):
    return IsaDebugExit(lambda status, reason: stops.append((status, reason)))


def test_debug_exit_status_is_v_shl_1_or_1(dev, stops):
    dev.write(0, 4, 0x10)
    assert stops == [(0x21, "isa-debug-exit: guest wrote 0x10")]


def test_debug_exit_status_is_always_odd(dev, stops):
    dev.write(0, 1, 0)
    assert stops[0][0] == 1


@pytest.mark.parametrize("size, value, v", [
    (1, 0x1FF, 0xFF), (2, 0x1_0003, 3), (4, 0x1_0000_0002, 2),
])
def test_debug_exit_value_masked_to_access_size(dev, stops, size, value, v):
    dev.write(0, size, value)
    assert stops[0][0] == (v << 1) | 1


def test_debug_exit_reads_return_zero(dev, stops):
    assert dev.read(0, 1) == 0
    assert dev.read(0, 4) == 0
    assert stops == []


@pytest.mark.parametrize("size", [0, 8, -1])
def test_debug_exit_ignores_sizes_qemu_refuses(dev, stops, size):
    dev.write(0, size, 1)
    assert stops == []
