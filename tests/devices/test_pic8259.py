"""8259A programming rules (8259A datasheet; QEMU hw/intc/i8259.c)."""

import pytest

from hvsim.plugins.devices.pic8259 import Pic8259

CMD, DATA = 0, 1


@pytest.fixture
def pic():
    return Pic8259()


def init(pic, icw1=0x11, icw2=0x20, icw3=0x04, icw4=0x01):
    """The sequence Linux and most kernels use for the PC master."""
    pic.write(CMD, 1, icw1)
    pic.write(DATA, 1, icw2)
    if not icw1 & 0x02:
        pic.write(DATA, 1, icw3)
    if icw1 & 0x01:
        pic.write(DATA, 1, icw4)


def test_data_port_outside_init_sets_imr(pic):
    pic.write(DATA, 1, 0xFB)
    assert pic.read(DATA, 1) == 0xFB


def test_icw1_starts_init_and_clears_imr(pic):
    pic.write(DATA, 1, 0xFF)
    pic.write(CMD, 1, 0x11)
    assert pic.imr == 0
    assert pic.init_state != 0


def test_icw2_sets_vector_base(pic):
    init(pic, icw2=0x28)
    assert pic.vector_base == 0x28


def test_icw2_low_three_bits_are_not_vector_base(pic):
    init(pic, icw2=0x27)
    assert pic.vector_base == 0x20


def test_icw3_and_icw4_are_taken_in_order(pic):
    init(pic, icw3=0x04, icw4=0x03)
    assert (pic.icw3, pic.icw4, pic.auto_eoi) == (0x04, 0x03, True)
    pic.write(DATA, 1, 0xFF)  # the sequence is over: this is OCW1
    assert pic.read(DATA, 1) == 0xFF


def test_single_mode_skips_icw3(pic):
    init(pic, icw1=0x13, icw2=0x08, icw4=0x01)
    assert pic.icw3 == 0 and pic.icw4 == 0x01
    pic.write(DATA, 1, 0xAA)
    assert pic.read(DATA, 1) == 0xAA


def test_without_ic4_the_sequence_ends_after_icw3(pic):
    init(pic, icw1=0x10, icw2=0x70, icw3=0x02)
    pic.write(DATA, 1, 0x5A)
    assert pic.icw4 == 0
    assert pic.read(DATA, 1) == 0x5A


def test_ocw3_selects_irr_or_isr_on_command_read(pic):
    pic.isr = 0x04
    assert pic.read(CMD, 1) == 0x00  # IRR by default
    pic.write(CMD, 1, 0x0B)  # OCW3: read ISR
    assert pic.read(CMD, 1) == 0x04
    pic.write(CMD, 1, 0x0A)  # OCW3: read IRR
    assert pic.read(CMD, 1) == 0x00


def test_ocw3_poll_reads_no_interrupt(pic):
    pic.write(CMD, 1, 0x0C)
    assert pic.read(CMD, 1) == 0
    assert not pic.poll


def test_ocw2_non_specific_eoi_clears_highest_priority_isr_bit(pic):
    pic.isr = 0b0000_0110
    pic.write(CMD, 1, 0x20)
    assert pic.isr == 0b0000_0100


def test_ocw2_specific_eoi_clears_that_isr_bit(pic):
    pic.isr = 0b1000_0001
    pic.write(CMD, 1, 0x67)
    assert pic.isr == 0b0000_0001


def test_ocw2_does_not_touch_imr(pic):
    pic.write(DATA, 1, 0x12)
    pic.write(CMD, 1, 0x20)
    assert pic.read(DATA, 1) == 0x12


def test_wide_write_reaches_both_ports(pic):
    pic.write(CMD, 2, 0xFF_0A)  # OCW3 to offset 0, OCW1 0xFF to offset 1
    assert pic.read(DATA, 1) == 0xFF


@pytest.mark.parametrize("size", [0, 3, -1])
def test_pic_odd_sizes_read_zero_and_write_nothing(pic, size):
    pic.write(DATA, size, 0xFF)
    assert pic.read(DATA, size) == 0
    assert pic.imr == 0


@pytest.mark.parametrize("offset", [2, 0x20, -1])
def test_pic_unknown_offsets_read_zero_and_ignore_writes(pic, offset):
    pic.write(offset, 1, 0x11)
    assert pic.read(offset, 1) == 0
    assert pic.init_state == 0 and pic.imr == 0
