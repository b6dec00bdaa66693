"""MMIO: stage-2 Data Aborts (ESR_EL2.EC = DABT_LOW) with the instruction syndrome.

Arm ARM ESR_EL2 "ISS encoding for an exception from a Data Abort": ISV, SAS, SSE, SRT, SF,
AR, WnR, DFSC; FAR_EL2 = the VA; HPFAR_EL2.FIPA = IPA[51:12]. The PL011 at 0x0900_0000 sits in
a 1 GiB block without RAM, so stage 2 has no level-1 entry: DFSC = translation fault, level 1.
"""

from __future__ import annotations

import pytest

from el2guest import MMU_ON, PL011, SCRATCH, SYSTEM_OFF, guest, u64
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.core.vm import STATUS_GUEST_CRASH, STATUS_OFF

EC_DABT_LOW = 0x24
DFSC_L1 = 0x05
UARTFR = 0x18
FR_EMPTY = 0x90  # TXFE | RXFE


def mmio_exits(recorder):
    return recorder.of(ExitKind.MMIO)


def test_hello_over_the_pl011(run_guest):
    text = "Hello, EL2!\n"
    code = "movz x1, #0x0900, lsl #16\n" + "".join(f"mov w2, #{b}\nstrb w2, [x1]\n" for b in text.encode())
    vm, result = run_guest(guest(code + SYSTEM_OFF))
    assert result.status == STATUS_OFF
    assert vm.console.text == text
    assert vm.stats.counts()["ESR_ELx_EC_DABT_LOW"] == len(text)


# (instruction, register set-up, SAS, SSE, SRT, SF, AR, WnR, exit size)
SYNDROMES = [
    ("strb w3, [x1]", 0, 0, 0, 3, 0, 0, 1, 1),
    ("strh w3, [x1, #0x24]", 0x24, 1, 0, 3, 0, 0, 1, 2),
    ("str w3, [x1, #0x24]", 0x24, 2, 0, 3, 0, 0, 1, 4),
    ("str x3, [x1, #0x24]", 0x24, 3, 0, 3, 1, 0, 1, 8),
    ("ldr w5, [x1, #0x18]", 0x18, 2, 0, 5, 0, 0, 0, 4),
    ("ldrb w6, [x1, #0x18]", 0x18, 0, 0, 6, 0, 0, 0, 1),
    ("ldrsb x7, [x1, #0x18]", 0x18, 0, 1, 7, 1, 0, 0, 1),
    ("ldrsh w8, [x1, #0x18]", 0x18, 1, 1, 8, 0, 0, 0, 2),
    ("ldur w10, [x1, #0x18]", 0x18, 2, 0, 10, 0, 0, 0, 4),
    ("ldr w11, [x1, x12]", 0x18, 2, 0, 11, 0, 0, 0, 4),
    ("ldar w13, [x14]", 0x18, 2, 0, 13, 0, 1, 0, 4),
    ("stlr x3, [x14]", 0x18, 3, 0, 3, 1, 1, 1, 8),
]


@pytest.mark.parametrize("insn, offset, sas, sse, srt, sf, ar, wnr, size", SYNDROMES,
                         ids=[s[0] for s in SYNDROMES])
def test_mmio_exit_has_the_instruction_syndrome(run_guest, recorder, insn, offset, sas, sse,
                                                srt, sf, ar, wnr, size):
    code = f"""
    movz x1, #0x0900, lsl #16
    mov x12, #{offset}
    add x14, x1, #{offset}
    mov w3, #0x41
    {insn}
    {SYSTEM_OFF}
    """
    vm, result = run_guest(guest(code))
    assert result.status == STATUS_OFF
    [exit] = mmio_exits(recorder)
    rec = exit.raw
    assert exit.reason == "ESR_ELx_EC_DABT_LOW"
    assert (rec.EC, rec.IL, rec.ISV) == (EC_DABT_LOW, 1, 1)
    assert (rec.SAS, rec.SSE, rec.SRT, rec.SF, rec.AR, rec.WnR) == (sas, sse, srt, sf, ar, wnr)
    assert rec.DFSC == DFSC_L1
    assert rec.FAR_EL2 == PL011 + offset  # MMU off: VA == IPA
    assert rec.HPFAR_EL2 == (PL011 >> 12) << 4 and rec.IPA == PL011 + offset
    assert (exit.address, exit.size, exit.is_write) == (PL011 + offset, size, bool(wnr))


def test_mmio_read_returns_the_device_value_sign_extended_as_the_syndrome_says(run_guest):
    code = f"""
    movz x1, #0x0900, lsl #16
    ldr w5, [x1, #{UARTFR}]
    ldrsb x6, [x1, #{UARTFR}]
    ldrb w7, [x1, #{UARTFR}]
    movz x8, #0x4180, lsl #16
    stp x5, x6, [x8]
    str x7, [x8, #16]
    {SYSTEM_OFF}
    """
    vm, _ = run_guest(guest(code))
    assert u64(vm, SCRATCH) == FR_EMPTY
    assert u64(vm, SCRATCH + 8) == 0xFFFF_FFFF_FFFF_FF90
    assert u64(vm, SCRATCH + 16) == FR_EMPTY


def test_the_first_access_of_an_instruction_is_exact_even_when_xt_is_the_base(run_guest, recorder):
    """``ldr w0, [x0]``: the load overwrites its own base; learning its PC must not break it."""
    code = f"""
    movz x0, #0x0900, lsl #16
    add x0, x0, #{UARTFR}
    ldr w0, [x0]
    movz x8, #0x4180, lsl #16
    str x0, [x8]
    {SYSTEM_OFF}
    """
    vm, _ = run_guest(guest(code))
    assert u64(vm, SCRATCH) == FR_EMPTY
    [exit] = mmio_exits(recorder)
    assert (exit.raw.SRT, exit.raw.FAR_EL2, exit.value) == (0, PL011 + UARTFR, FR_EMPTY)


def test_an_8_byte_access_is_one_exit_although_unicorn_splits_it(run_guest, recorder, hvsim_pm):
    seen = []

    class Wide:
        def read(self, offset, size):
            seen.append(("r", offset, size))
            return 0x1122_3344_5566_7788

        def write(self, offset, size, value):
            seen.append(("w", offset, size, value))

    class AddWide:
        @hookimpl
        def hvsim_vm_created(self, vm):
            vm.bus.add_mmio(0x0A00_0000, 0x1000, Wide(), "wide")

    hvsim_pm.register(AddWide(), name="add-wide")  # a device a plugin adds after vCPUs exist
    code = f"""
    movz x1, #0x0a00, lsl #16
    movz x3, #0xbeef
    movk x3, #0xdead, lsl #48
    str x3, [x1, #8]
    ldr x4, [x1, #16]
    movz x8, #0x4180, lsl #16
    str x4, [x8]
    {SYSTEM_OFF}
    """
    vm, _ = run_guest(guest(code))
    assert seen == [("w", 8, 8, 0xDEAD_0000_0000_BEEF), ("r", 16, 8)]
    assert u64(vm, SCRATCH) == 0x1122_3344_5566_7788
    assert [(e.size, e.raw.SAS) for e in mmio_exits(recorder)] == [(8, 3), (8, 3)]


def test_writeback_and_pair_forms_have_no_valid_syndrome(run_guest, recorder):
    code = f"""
    movz x1, #0x0900, lsl #16
    mov w3, #0x41
    mov w4, #0x42
    strb w3, [x1], #4          // post-index: the base is written back
    movz x8, #0x4180, lsl #16
    str x1, [x8]
    sub x1, x1, #4
    stp w3, w4, [x1]
    {SYSTEM_OFF}
    """
    vm, _ = run_guest(guest(code))
    assert u64(vm, SCRATCH) == PL011 + 4
    exits = mmio_exits(recorder)
    assert [(e.raw.ISV, e.raw.WnR, e.raw.DFSC, e.address) for e in exits] == [
        (0, 1, DFSC_L1, PL011), (0, 1, DFSC_L1, PL011), (0, 1, DFSC_L1, PL011 + 4)]
    assert vm.console.text == "AA"  # the pair's second word went to UARTRSR


def test_an_access_nobody_claims_in_strict_mode_is_a_stage2_abort_that_ends_the_run(run_guest, recorder):
    """No device and no RAM: KVM's stage 2 has nothing there and no VMM claims it."""
    code = "movz x1, #0x0a00, lsl #16\nmov w2, #1\nstr w2, [x1, #0x70]\n" + SYSTEM_OFF
    vm, result = run_guest(guest(code), strict_mmio=True)
    assert result.status == STATUS_GUEST_CRASH
    assert "write to guest-physical 0xa000070, which no RAM or device backs" in result.reason
    [exit] = recorder.of(ExitKind.STAGE2_FAULT)
    assert (exit.raw.EC, exit.raw.ISV, exit.raw.WnR, exit.raw.DFSC) == (EC_DABT_LOW, 1, 1, DFSC_L1)
    assert (exit.raw.FAR_EL2, exit.raw.HPFAR_EL2, exit.address) == (0x0A00_0070, 0x0A00_0000 >> 8, 0x0A00_0070)


def test_a_plugin_can_answer_unclaimed_mmio(run_guest, hvsim_pm, recorder):
    class Fallback:
        @hookimpl
        def hvsim_mmio(self, vcpu, address, size, is_write, value):
            return 0x5A if not is_write else True

    hvsim_pm.register(Fallback(), name="fallback")
    code = f"""
    movz x1, #0x0c00, lsl #16
    ldr w5, [x1, #0x40]
    movz x8, #0x4180, lsl #16
    str x5, [x8]
    {SYSTEM_OFF}
    """
    vm, result = run_guest(guest(code))
    assert result.status == STATUS_OFF
    assert u64(vm, SCRATCH) == 0x5A
    [exit] = mmio_exits(recorder)
    assert (exit.raw.ISV, exit.raw.SRT, exit.raw.HPFAR_EL2) == (1, 5, (0x0C00_0000 >> 12) << 4)


def test_mmio_next_to_ram_faults_at_a_deeper_stage2_level(run_guest, recorder, hvsim_pm):
    """RAM is 0x4000_0000-0x43FF_FFFF: the 2 MiB block above it has no level-2 entry."""
    class Fallback:
        @hookimpl
        def hvsim_mmio(self, vcpu, address, size, is_write, value):
            return True

    hvsim_pm.register(Fallback(), name="fallback")
    vm, _ = run_guest(guest(f"movz x1, #0x4400, lsl #16\nstr w1, [x1]\n{SYSTEM_OFF}"))
    [exit] = mmio_exits(recorder)
    assert exit.raw.DFSC == 0x06  # translation fault, level 2


def test_a_hooked_instruction_that_later_touches_ram_is_not_blamed_for_mmio(run_guest, recorder):
    """One store instruction used for both the UART and RAM, then a different store to the UART."""
    code = f"""
    movz x1, #0x0900, lsl #16
    movz x2, #0x4180, lsl #16
    mov w3, #0x41
    mov x4, x1
    bl put
    mov x4, x2
    bl put
    mov w5, #0x42
    strh w5, [x1]
    {SYSTEM_OFF}
put:
    strb w3, [x4]
    ret
    """
    vm, _ = run_guest(guest(code))
    exits = mmio_exits(recorder)
    assert [(e.raw.SRT, e.raw.SAS) for e in exits] == [(3, 0), (5, 1)]
    assert vm.console.text == "AB"


def test_mmio_at_full_speed_keeps_every_access(run_guest):
    """10,000 UART writes in a loop: each reaches the device once, in order."""
    code = f"""
    movz x1, #0x0900, lsl #16
    movz x2, #10000
loop:
    and w3, w2, #0x3f
    add w3, w3, #0x30
    strb w3, [x1]
    subs x2, x2, #1
    b.ne loop
    {SYSTEM_OFF}
    """
    vm, _ = run_guest(guest(code))
    expected = bytes(0x30 + (n & 0x3F) for n in range(10000, 0, -1))
    assert bytes(vm.console.output) == expected


class StopOnAccess:
    """A device whose every access asks the vCPU to leave the engine (as an interrupt
    controller kicking a vCPU would): the access must still happen exactly once."""

    def __init__(self, vm):
        self.vm = vm
        self.log = []

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        self.vm.vcpus[0].request_stop()
        return 0x77

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))
        self.vm.vcpus[0].request_stop()


def test_a_stop_requested_during_an_access_does_not_repeat_it(arm_vm):
    code = f"""
    movz x1, #0x0b00, lsl #16
    mov w3, #0x41
    str w3, [x1, #4]
    mov x0, x1
    ldr w0, [x0, #8]           // Xt is the base: finishing it must write Xt once
    ldr w5, [x1], #4           // post-index: the base moves by 4, once
    ldrsb x6, [x1, #12]
    movz x8, #0x4180, lsl #16
    stp x0, x1, [x8]
    stp x5, x6, [x8, #16]
    {SYSTEM_OFF}
    """
    vm = arm_vm()
    device = StopOnAccess(vm)
    vm.bus.add_mmio(0x0B00_0000, 0x1000, device, "stopper")
    vm.load(guest(code))
    assert vm.run(timeout=5).status == STATUS_OFF
    assert device.log == [("w", 4, 4, 0x41), ("r", 8, 4), ("r", 0, 4), ("r", 16, 1)]
    assert [u64(vm, SCRATCH + 8 * i) for i in range(4)] == [0x77, 0x0B00_0004, 0x77, 0x77]


def test_with_the_guest_mmu_on_far_is_the_va_and_hpfar_the_ipa(run_guest, recorder):
    code = MMU_ON + f"""
    movz x1, #0x8900, lsl #16        // the PL011 through the device mapping at VA 0x8000_0000
    mov w3, #0x21
    strb w3, [x1]
    ldr w5, [x1, #{UARTFR}]
    movz x8, #0x4180, lsl #16
    str x5, [x8, #0x800]
    {SYSTEM_OFF}
    """
    vm, result = run_guest(guest(code))
    assert result.status == STATUS_OFF
    assert vm.console.text == "!"
    assert u64(vm, SCRATCH + 0x800) == FR_EMPTY
    write, read = mmio_exits(recorder)
    assert (write.raw.FAR_EL2, write.raw.HPFAR_EL2, write.address) == (0x8900_0000, 0x90000, PL011)
    assert (read.raw.FAR_EL2, read.raw.IPA, read.raw.SRT) == (0x8900_0018, PL011 + UARTFR, 5)


def test_an_exception_in_an_exit_handler_reaches_the_caller(run_guest, hvsim_pm):
    class Broken:
        @hookimpl
        def hvsim_mmio(self, vcpu, address, size, is_write, value):
            raise RuntimeError("device model bug")

    hvsim_pm.register(Broken(), name="broken")
    with pytest.raises(RuntimeError, match="device model bug"):
        run_guest(guest(f"movz x1, #0x0c00, lsl #16\nldr w5, [x1]\n{SYSTEM_OFF}"))
