"""QEMU fw_cfg rules, I/O-port interface (docs/specs/fw_cfg.rst, hw/nvram/fw_cfg.c)."""

import struct

import pytest

from hvsim.plugins.devices.fw_cfg import FwCfg

SEL, DATA = 0, 1


def read_item(dev, key, n):
    dev.write(SEL, 2, key)
    return bytes(dev.read(DATA, 1) for _ in range(n))


@pytest.fixture
def dev():
    return FwCfg(ram_size=128 << 20, nb_cpus=2)


def test_fw_cfg_signature_reads_QEMU(dev):
    assert read_item(dev, 0x00, 4) == b"QEMU"


def test_fw_cfg_signature_is_selected_at_reset(dev):
    assert bytes(dev.read(DATA, 1) for _ in range(4)) == b"QEMU"


def test_fw_cfg_id_is_traditional_interface_without_dma(dev):
    assert struct.unpack("<I", read_item(dev, 0x01, 4))[0] == 1


def test_fw_cfg_ram_size_is_u64_le(dev):
    assert struct.unpack("<Q", read_item(dev, 0x03, 8))[0] == 128 << 20


def test_fw_cfg_nb_cpus_is_u16_le(dev):
    assert struct.unpack("<H", read_item(dev, 0x05, 2))[0] == 2


def test_fw_cfg_max_cpus_is_u16_le(dev):
    assert struct.unpack("<H", read_item(dev, 0x0F, 2))[0] == 2
    assert struct.unpack("<H", read_item(FwCfg(nb_cpus=2, max_cpus=8), 0x0F, 2))[0] == 8


def test_fw_cfg_selecting_resets_data_offset(dev):
    read_item(dev, 0x00, 2)
    assert read_item(dev, 0x00, 4) == b"QEMU"


def test_fw_cfg_reads_past_the_end_return_zero(dev):
    assert read_item(dev, 0x00, 6) == b"QEMU\0\0"


def test_fw_cfg_unknown_key_reads_zero(dev):
    assert read_item(dev, 0x02, 4) == b"\0" * 4  # UUID is not provided
    assert read_item(dev, 0x3FFF, 2) == b"\0\0"


def test_fw_cfg_arch_local_bit_selects_the_empty_arch_table(dev):
    assert read_item(dev, 0x8000, 4) == b"\0" * 4


def test_fw_cfg_write_channel_bit_is_ignored(dev):
    assert read_item(dev, 0x4000, 4) == b"QEMU"


def test_fw_cfg_file_dir_empty_has_count_zero_big_endian(dev):
    assert read_item(dev, 0x19, 4) == b"\0\0\0\0"


def test_fw_cfg_file_dir_entries_are_64_bytes_big_endian(dev):
    key = dev.add_file("opt/hvsim/hello", b"hello")
    raw = read_item(dev, 0x19, 4 + 64)
    assert struct.unpack(">I", raw[:4])[0] == 1
    size, select, reserved, name = struct.unpack(">IHH56s", raw[4:])
    assert (size, select, reserved) == (5, 0x20, 0)
    assert key == 0x20
    assert name.rstrip(b"\0") == b"opt/hvsim/hello"
    assert read_item(dev, select, 5) == b"hello"


def test_fw_cfg_files_are_sorted_by_name_from_key_0x20(dev):
    dev.add_file("opt/b", b"B")
    dev.add_file("opt/a", b"A")
    raw = read_item(dev, 0x19, 4 + 2 * 64)
    entries = [struct.unpack(">IHH56s", raw[4 + 64 * i: 4 + 64 * (i + 1)]) for i in range(2)]
    assert [(e[1], e[3].rstrip(b"\0")) for e in entries] == [(0x20, b"opt/a"), (0x21, b"opt/b")]
    assert read_item(dev, 0x21, 1) == b"B"


@pytest.mark.parametrize("name", ["", "x" * 56, "caf\u00e9"])
def test_fw_cfg_file_name_must_fit_55_ascii_chars(dev, name):
    with pytest.raises(ValueError):
        dev.add_file(name, b"")


def test_fw_cfg_duplicate_file_name_is_refused(dev):
    dev.add_file("opt/a", b"")
    with pytest.raises(ValueError):
        dev.add_file("opt/a", b"")


def test_fw_cfg_byte_read_at_selector_port_reads_data(dev):
    dev.write(SEL, 2, 0x00)
    assert dev.read(SEL, 1) == ord("Q")  # QEMU decodes the pair by size, not by port


def test_fw_cfg_byte_writes_are_ignored_data_writes(dev):
    dev.write(SEL, 2, 0x05)
    dev.write(SEL, 1, 0x00)
    dev.write(DATA, 1, 0x00)
    assert read_item(dev, 0x05, 2) == b"\2\0"
    dev.write(SEL, 2, 0x05)
    dev.write(DATA, 1, 0x7F)
    assert dev.read(DATA, 1) == 2


@pytest.mark.parametrize("size", [2, 4, 0, 3, -1])
def test_fw_cfg_wide_or_odd_reads_return_zero_and_do_not_advance(dev, size):
    dev.write(SEL, 2, 0x00)
    assert dev.read(DATA, size) == 0
    assert dev.read(DATA, 1) == ord("Q")


@pytest.mark.parametrize("offset", [2, 0x10, -1])
def test_fw_cfg_unknown_offsets_read_zero_and_ignore_writes(dev, offset):
    dev.write(SEL, 2, 0x05)
    dev.write(offset, 2, 0x00)
    assert dev.read(offset, 1) == 0
    assert dev.read(DATA, 1) == 2


@pytest.mark.parametrize("size", [4, 8, 0])
def test_fw_cfg_selector_takes_only_16_bit_writes(dev, size):
    dev.write(SEL, 2, 0x05)
    dev.write(SEL, size, 0x00)
    assert dev.read(DATA, 1) == 2
