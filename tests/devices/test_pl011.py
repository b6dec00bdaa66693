"""PL011 rules (Arm DDI 0183, QEMU hw/char/pl011.c), on the device object alone."""

import pytest

from hvsim.plugins.devices.pl011 import Pl011

DR, RSR, FR, ILPR, IBRD, FBRD, LCR_H, CR = 0x00, 0x04, 0x18, 0x20, 0x24, 0x28, 0x2C, 0x30
IFLS, IMSC, RIS, MIS, ICR, DMACR = 0x34, 0x38, 0x3C, 0x40, 0x44, 0x48
RX, TX = 1 << 4, 1 << 5


@pytest.fixture
def out():
    return []


@pytest.fixture
def irqs():
    return []


@pytest.fixture
def uart(out, irqs):
    return Pl011(out.append, irq=irqs.append)


def test_pl011_dr_write_outputs_a_byte(uart, out):
    uart.write(DR, 4, 0x141)
    uart.write(DR, 1, ord("B"))
    assert bytes(out) == b"AB"


def test_pl011_flag_register_tx_fifo_empty(uart):
    assert uart.read(FR, 4) & 0x80
    uart.write(DR, 4, ord("x"))
    assert uart.read(FR, 4) & 0x80


def test_pl011_flag_register_busy_and_tx_full_clear(uart):
    uart.write(DR, 4, ord("x"))
    assert uart.read(FR, 4) & (0x08 | 0x20) == 0


def test_pl011_flag_register_rx_fifo_empty_without_input(uart):
    assert uart.read(FR, 4) == 0x90
    uart.feed(b"a")
    assert uart.read(FR, 4) & 0x10 == 0


def test_pl011_rx_full_flag_at_fifo_depth(uart):
    uart.feed(b"a")
    assert uart.read(FR, 4) & 0x40  # FIFOs off: a one-character holding register
    uart.write(LCR_H, 4, 0x70)  # FEN: 16 deep, and switching flushes
    uart.feed(b"x" * 15)
    assert not uart.read(FR, 4) & 0x40
    uart.feed(b"y")
    assert uart.read(FR, 4) & 0x40


def test_pl011_dr_read_pops_input(uart):
    uart.feed(b"hi")
    assert uart.read(DR, 4) == ord("h")
    assert uart.read(DR, 4) == ord("i")
    assert uart.read(FR, 4) & 0x10
    assert uart.read(DR, 4) == 0


def test_pl011_periph_id(uart):
    assert [uart.read(0xFE0 + 4 * i, 4) for i in range(4)] == [0x11, 0x10, 0x14, 0x00]


def test_pl011_pcell_id(uart):
    assert [uart.read(0xFF0 + 4 * i, 4) for i in range(4)] == [0x0D, 0xF0, 0x05, 0xB1]


@pytest.mark.parametrize("reg, value, expect", [
    (IBRD, 0x1_0027, 0x0027),  # UARTIBRD is 16 bits
    (FBRD, 0xFF, 0x3F),  # UARTFBRD is 6 bits
    (LCR_H, 0x70, 0x70),
    (CR, 0x301, 0x301),
    (IFLS, 0x12, 0x12),
    (IMSC, 0x50, 0x50),
    (DMACR, 0x07, 0x07),
    (ILPR, 0xAB, 0xAB),
])
def test_pl011_registers_read_back(uart, reg, value, expect):
    uart.write(reg, 4, value)
    assert uart.read(reg, 4) == expect


def test_pl011_reset_values(uart):
    assert (uart.read(CR, 4), uart.read(IFLS, 4), uart.read(LCR_H, 4)) == (0x300, 0x12, 0)


def test_pl011_tx_raw_interrupt_after_a_write(uart):
    uart.write(DR, 4, ord("x"))
    assert uart.read(RIS, 4) & TX


def test_pl011_rx_raw_interrupt_while_input_waits(uart):
    uart.feed(b"k")
    assert uart.read(RIS, 4) & RX
    uart.read(DR, 4)
    assert not uart.read(RIS, 4) & RX


def test_pl011_icr_is_write_1_to_clear(uart):
    uart.write(DR, 4, ord("x"))
    uart.feed(b"k")
    uart.write(ICR, 4, TX)
    assert uart.read(RIS, 4) == RX
    uart.write(ICR, 4, 0)
    assert uart.read(RIS, 4) == RX


def test_pl011_mis_is_ris_and_imsc(uart):
    uart.write(DR, 4, ord("x"))
    uart.feed(b"k")
    uart.write(IMSC, 4, RX)
    assert uart.read(MIS, 4) == RX


def test_pl011_irq_follows_mis(uart, irqs):
    uart.write(DR, 4, ord("x"))
    assert irqs == []
    uart.write(IMSC, 4, TX)
    assert irqs == [True]
    uart.write(ICR, 4, TX)
    assert irqs == [True, False]


def test_pl011_read_only_registers_ignore_writes(uart):
    uart.write(FR, 4, 0)
    uart.write(RIS, 4, 0x7FF)
    uart.write(MIS, 4, 0x7FF)
    uart.write(0xFE0, 4, 0)
    assert (uart.read(FR, 4), uart.read(RIS, 4), uart.read(0xFE0, 4)) == (0x90, 0, 0x11)


def test_pl011_eight_byte_read_covers_two_registers(uart):
    assert uart.read(0xFE0, 8) == 0x11 | 0x10 << 32


def test_pl011_narrow_read_is_masked(uart):
    assert uart.read(CR, 1) == 0x00
    assert uart.read(CR, 2) == 0x300


@pytest.mark.parametrize("size", [0, 3, 16, -4])
def test_pl011_odd_sizes_read_zero_and_write_nothing(uart, out, size):
    assert uart.read(FR, size) == 0
    uart.write(DR, size, 0x41)
    assert out == []


@pytest.mark.parametrize("offset", [0x08, 0x4C, 0x100, 0xFDC, 0x1000, 0x19, 0xFE1, -4])
def test_pl011_unknown_offsets_read_zero_and_ignore_writes(uart, out, offset):
    assert uart.read(offset, 4) == 0
    uart.write(offset, 4, 0x41)
    assert out == []
