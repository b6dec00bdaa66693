"""16550A rules (PC16550D datasheet; QEMU hw/char/serial.c), on the device object alone."""

import pytest

from hvsim.plugins.devices.uart16550 import Uart16550

THR, IER, IIR, FCR, LCR, MCR, LSR, MSR, SCR = 0, 1, 2, 2, 3, 4, 5, 6, 7


@pytest.fixture
def out():
    return []


@pytest.fixture
def irqs():
    return []


@pytest.fixture
def uart(out, irqs):
    return Uart16550(out.append, irq=irqs.append)


def test_thr_write_outputs_the_byte(uart, out):
    for b in b"hi\n":
        uart.write(THR, 1, b)
    assert bytes(out) == b"hi\n"


def test_lsr_reports_thr_empty(uart):
    assert uart.read(LSR, 1) & 0x60 == 0x60
    uart.write(THR, 1, ord("x"))
    assert uart.read(LSR, 1) == 0x60


def test_lsr_data_ready_when_input_queued(uart):
    assert uart.read(LSR, 1) & 0x01 == 0
    uart.feed(b"ab")
    assert uart.read(LSR, 1) == 0x61
    assert uart.read(THR, 1) == ord("a")
    assert uart.read(THR, 1) == ord("b")
    assert uart.read(LSR, 1) & 0x01 == 0


def test_dlab_switches_offsets_to_divisor_latch(uart, out):
    uart.write(IER, 1, 0x05)
    uart.write(LCR, 1, 0x83)
    uart.write(0, 1, 0x01)  # DLL: 115200 baud
    uart.write(1, 1, 0x00)  # DLM
    assert (uart.read(0, 1), uart.read(1, 1)) == (0x01, 0x00)
    assert out == []  # a DLL write is not a transmitted byte
    uart.write(LCR, 1, 0x03)
    assert uart.read(IER, 1) == 0x05
    assert uart.baud == 115200


def test_divisor_resets_to_9600_baud(uart):
    uart.write(LCR, 1, 0x80)
    assert (uart.read(0, 1), uart.read(1, 1)) == (12, 0)
    assert uart.baud == 9600


def test_iir_no_interrupt_pending_sets_bit_0(uart):
    assert uart.read(IIR, 1) == 0x01


def test_iir_fifo_bits_follow_fcr_enable(uart):
    uart.write(FCR, 1, 0x07)  # enable and clear both FIFOs
    assert uart.read(IIR, 1) == 0xC1
    uart.write(FCR, 1, 0x00)
    assert uart.read(IIR, 1) == 0x01


def test_fcr_clear_receive_fifo_drops_queued_input(uart):
    uart.write(FCR, 1, 0x01)
    uart.feed(b"junk")
    uart.write(FCR, 1, 0x03)
    assert uart.read(LSR, 1) & 0x01 == 0


def test_ier_keeps_only_low_four_bits(uart):
    uart.write(IER, 1, 0xFF)
    assert uart.read(IER, 1) == 0x0F


def test_thre_interrupt_raised_when_enabled_and_thr_empty(uart, irqs):
    uart.write(IER, 1, 0x02)
    assert irqs == [True]
    assert uart.read(IIR, 1) == 0x02


def test_reading_iir_acknowledges_thre_interrupt(uart, irqs):
    uart.write(IER, 1, 0x02)
    uart.read(IIR, 1)
    assert irqs == [True, False]
    assert uart.read(IIR, 1) == 0x01


def test_thr_write_gives_a_new_thre_edge(uart, irqs):
    uart.write(IER, 1, 0x02)
    uart.read(IIR, 1)
    irqs.clear()
    uart.write(THR, 1, ord("x"))
    assert irqs == [True]
    uart.write(THR, 1, ord("y"))  # not acknowledged: the line drops and rises again
    assert irqs == [True, False, True]


def test_received_data_interrupt_outranks_thre(uart, irqs):
    uart.write(IER, 1, 0x03)
    uart.feed(b"k")
    assert uart.read(IIR, 1) == 0x04
    uart.read(THR, 1)
    assert uart.read(IIR, 1) == 0x02


def test_no_interrupt_while_ier_masks_it(uart, irqs):
    uart.feed(b"k")
    uart.write(THR, 1, ord("x"))
    assert irqs == []


def test_scratch_register_reads_back(uart):
    uart.write(SCR, 1, 0xA5)
    assert uart.read(SCR, 1) == 0xA5


def test_lcr_and_mcr_read_back(uart):
    uart.write(LCR, 1, 0x1B)
    uart.write(MCR, 1, 0xFF)
    assert uart.read(LCR, 1) == 0x1B
    assert uart.read(MCR, 1) == 0x1F  # MCR bits 7:5 are always 0


def test_mcr_resets_to_out2(uart):
    assert uart.read(MCR, 1) == 0x08


def test_msr_reports_carrier_dsr_cts(uart):
    assert uart.read(MSR, 1) == 0xB0


def test_lsr_and_msr_are_read_only(uart):
    uart.write(LSR, 1, 0x00)
    uart.write(MSR, 1, 0x00)
    assert uart.read(LSR, 1) == 0x60
    assert uart.read(MSR, 1) == 0xB0


def test_wide_access_reaches_consecutive_registers(uart, out):
    uart.write(THR, 2, 0x0F41)  # THR <- 'A', IER <- 0x0F
    assert out == [0x41]
    assert uart.read(LCR, 2) == 0x08 << 8  # LCR 0, MCR 0x08


def test_empty_rbr_reads_zero(uart):
    assert uart.read(THR, 1) == 0


@pytest.mark.parametrize("size", [0, 3, 5, 16, -1])
def test_odd_sizes_read_zero_and_write_nothing(uart, out, size):
    assert uart.read(THR, size) == 0
    uart.write(THR, size, 0x41)
    assert out == []


@pytest.mark.parametrize("offset", [8, 0x100, -1])
def test_unknown_offsets_read_zero_and_ignore_writes(uart, out, offset):
    assert uart.read(offset, 1) == 0
    uart.write(offset, 1, 0x41)
    assert out == []
    assert uart.read(SCR, 1) == 0


def test_write_value_is_masked_to_a_byte(uart, out):
    uart.write(THR, 1, 0x1_2341)
    assert out == [0x41]
