"""Exceptions taken to the guest's own EL1 vectors (Arm ARM D1.3, AArch64.TakeException).

Every test runs real guest code whose handler logs (vector offset, ESR_EL1, ELR_EL1, FAR_EL1,
SPSR_EL1); the assertions are on those logged bytes.
"""

from __future__ import annotations

import pytest

from el2guest import LOAD, MMU_ON, SCRATCH, SYSTEM_OFF, asm, guest, log_records, u64
from hvsim.core.exits import Event, EventType
from hvsim.core.vm import STATUS_GUEST_CRASH, STATUS_HALTED_FOREVER, STATUS_OFF

CUR_SPX_SYNC, CUR_SPX_IRQ, CUR_SPX_FIQ, CUR_SPX_SERROR = 0x200, 0x280, 0x300, 0x380
LOWER_SYNC = 0x400
SPSR_EL1H_MASKED = 0x3C5


def x(vm, n: int) -> int:
    return vm.vcpus[0].xreg(n)


def test_svc_enters_the_sync_vector_with_ec_svc64_and_the_immediate(run_guest):
    main = "adr x23, after_svc\nsvc #0x42\nafter_svc:\nmov x22, #1\n" + SYSTEM_OFF
    vm, result = run_guest(guest(main))
    assert result.status == STATUS_OFF
    [(vector, esr, elr, far, spsr)] = log_records(vm, 1)
    assert vector == CUR_SPX_SYNC
    assert esr == 0x5600_0042  # EC 0x15, IL, imm16
    assert elr == x(vm, 23)  # the preferred return: after the SVC
    assert spsr == SPSR_EL1H_MASKED
    assert vm.vcpus[0].xreg(22) == 1  # ERET came back


def test_undefined_instruction_has_ec_unknown_and_elr_at_the_instruction(run_guest):
    main = "adr x20, skip\nmov x23, x20\n.word 0x00000000\nskip:\n" + SYSTEM_OFF
    vm, _ = run_guest(guest(main))
    [(vector, esr, elr, _far, _spsr)] = log_records(vm, 1)
    assert (vector, esr) == (CUR_SPX_SYNC, 0x0200_0000)
    assert elr == x(vm, 23) - 4


def test_brk_has_ec_brk64_and_its_comment(run_guest):
    main = "adr x20, skip\nmov x23, x20\nbrk #0x77\nskip:\n" + SYSTEM_OFF
    vm, _ = run_guest(guest(main))
    [(vector, esr, elr, _far, _spsr)] = log_records(vm, 1)
    assert (vector, esr, elr) == (CUR_SPX_SYNC, 0xF200_0077, x(vm, 23) - 4)


def test_smc_is_undefined_without_el3_firmware_when_tsc_is_clear(arm_vm):
    from hvsim.plugins.arm_el2.el2 import HCR_TSC

    main = "adr x20, skip\nmov x23, x20\nsmc #0\nskip:\n" + SYSTEM_OFF
    vm = arm_vm(guest(main))
    vm.vcpus[0].el2.hcr &= ~HCR_TSC
    vm.run(timeout=5)
    [(vector, esr, elr, _far, _spsr)] = log_records(vm, 1)
    assert (vector, esr, elr) == (CUR_SPX_SYNC, 0x0200_0000, x(vm, 23) - 4)


def test_svc_from_el0_enters_the_lower_el_vector_and_eret_returns_to_el0(run_guest):
    main = """
    movz x1, #0x4170, lsl #16
    msr sp_el0, x1
    msr spsr_el1, xzr            // EL0t, interrupts unmasked
    adr x1, el0_code
    msr elr_el1, x1
    eret
el0_code:
    svc #7
    mov x22, sp
    svc #0xffff                  // the handler powers off
    """
    vm, result = run_guest(guest(main))
    assert result.status == STATUS_OFF
    first, last = log_records(vm, 2)
    assert first[:2] == (LOWER_SYNC, 0x5600_0007)
    assert first[4] == 0x0  # SPSR: EL0t
    assert last[:2] == (LOWER_SYNC, 0x5600_FFFF)
    assert vm.vcpus[0].xreg(22) == 0x4170_0000  # SP_EL0 survived the round trip


def test_wfi_then_a_virtual_irq_enters_the_irq_vector_after_the_wfi(run_guest, arm_vm):
    main = "adr x23, after_wfi\nmsr daifclr, #2\nwfi\nafter_wfi:\nmov x22, #5\n" + SYSTEM_OFF
    vm = arm_vm(guest(main))
    vm.vcpus[0].inject(Event(EventType.VIRTUAL_IRQ))
    result = vm.run(timeout=5)
    assert result.status == STATUS_OFF
    [(vector, _esr, elr, _far, spsr)] = log_records(vm, 1)
    assert vector == CUR_SPX_IRQ
    assert elr == x(vm, 23)
    assert spsr == 0x345  # D, A, F still masked, I clear, EL1h
    assert vm.vcpus[0].xreg(22) == 5


@pytest.mark.parametrize("event, unmask, vector", [
    (EventType.VIRTUAL_FIQ, "msr daifclr, #1", CUR_SPX_FIQ),
    (EventType.VIRTUAL_SERROR, "msr daifclr, #4", CUR_SPX_SERROR),
])
def test_virtual_fiq_and_serror_use_their_own_vectors(arm_vm, event, unmask, vector):
    vm = arm_vm(guest(f"{unmask}\nwfi\n" + SYSTEM_OFF))
    vm.vcpus[0].inject(Event(event))
    assert vm.run(timeout=5).status == STATUS_OFF
    [record] = log_records(vm, 1)
    assert record[0] == vector
    if event is EventType.VIRTUAL_SERROR:
        assert record[1] >> 26 == 0x2F  # ESR_EL1.EC = SError


def test_wfi_with_nothing_pending_ends_the_run_halted_forever(run_guest):
    vm, result = run_guest(guest("msr daifclr, #2\nwfi\n" + SYSTEM_OFF))
    assert result.status == STATUS_HALTED_FOREVER


def test_a_masked_virtual_irq_is_not_taken(arm_vm):
    vm = arm_vm(guest("mov x22, #1\n" + SYSTEM_OFF))  # PSTATE.I stays set
    vm.vcpus[0].inject(Event(EventType.VIRTUAL_IRQ))
    assert vm.run(timeout=5).status == STATUS_OFF
    assert log_records(vm, 1)[0] == (0, 0, 0, 0, 0)
    assert len(vm.vcpus[0].events) == 1


def test_fetch_from_an_ipa_without_ram_is_an_external_instruction_abort(run_guest):
    main = "movz x1, #0x5000, lsl #16\nadr x20, back\nblr x1\nback:\n" + SYSTEM_OFF
    vm, result = run_guest(guest(main))
    assert result.status == STATUS_OFF
    [(vector, esr, elr, far, _spsr)] = log_records(vm, 1)
    assert vector == CUR_SPX_SYNC
    assert esr == 0x8600_0010  # EC IABT_CUR, IL, IFSC synchronous external abort
    assert elr == far == 0x5000_0000


def test_fetch_from_nowhere_without_vectors_crashes_the_guest(run_guest):
    vm, result = run_guest(asm("movz x1, #0x5000, lsl #16\nbr x1"))
    assert result.status == STATUS_GUEST_CRASH
    assert "instruction fetch from 0x50000000" in result.reason


def test_guest_mmu_translation_fault_is_a_data_abort_with_the_level(run_guest):
    main = MMU_ON + """
    movz x4, #0xc000, lsl #16     // VA 0xC000_0000: L1 entry 3 is invalid
    adr x20, skip
    mov x23, x20
    ldr x5, [x4, #0x18]
skip:
    """ + SYSTEM_OFF
    vm, result = run_guest(guest(main))
    assert result.status == STATUS_OFF
    [(vector, esr, elr, far, _spsr)] = log_records(vm, 1)
    assert vector == CUR_SPX_SYNC
    assert esr == 0x9600_0005  # EC DABT_CUR, IL, DFSC translation fault level 1
    assert far == 0xC000_0018
    assert elr == x(vm, 23) - 4


def test_guest_mmu_walk_is_answered_through_the_stage1_hook(run_guest):
    from hvsim.core.memory import Access
    vm, _ = run_guest(guest(MMU_ON + SYSTEM_OFF))
    walk = vm.pm.hook.hvsim_stage1_walk(vcpu=vm.vcpus[0], address=LOAD + 0x123, access=Access.READ)
    assert walk.address == LOAD + 0x123 and walk.fault is None
    assert [s.level for s in walk.steps] == [1]
    assert u64(vm, SCRATCH + 8) & 0xFFFF_F000 == 0x4000_0000


def test_a_guest_that_never_stops_times_out(run_guest):
    from hvsim.core.vm import STATUS_TIMEOUT
    vm, result = run_guest(guest("spin:\nadd x22, x22, #1\nb spin"), timeout=0.3)
    assert result.status == STATUS_TIMEOUT
    assert 0.2 < result.wall_seconds < 2
    assert x(vm, 22) > 1000


def test_wfi_exit_record_is_ec_wfx_with_ti_wfi(arm_vm, recorder):
    from hvsim.core.exits import ExitKind
    # Nothing pending: the WFI exits and the vCPU then waits forever (status 6). With an
    # interrupt queued before the guest unmasks, whether it is taken before the WFI would
    # depend on when hvsim re-enters (pending events are polled at entries).
    vm = arm_vm(guest("wfi\n" + SYSTEM_OFF))
    assert vm.run(timeout=5).status == 6
    [halt] = recorder.of(ExitKind.HALT)
    assert halt.reason == "ESR_ELx_EC_WFx"
    assert (halt.raw.EC, halt.raw.IL, halt.raw.ISS & 0b11) == (0x01, 1, 0b00)  # TI: WFI
    assert halt.raw.ESR_EL2 >> 20 & 0x1F == 0b11110  # CV = 1, COND = 0b1110 from AArch64


def test_wfi_completes_on_a_masked_pending_interrupt_which_is_taken_once_unmasked(make_vm):
    """Arm ARM D1.16.2: a pending interrupt is a WFI wake-up event even while PSTATE.I masks it."""
    from guestlib import ARM_BASE, ARM_DATA, ARM_ENTRY, SLOT_CUR_SPX_IRQ, arm64_image

    from hvsim.core.exits import Event, EventType

    image = arm64_image(f"""
        ldr x0, ={ARM_BASE:#x}
        msr vbar_el1, x0
        isb
        ldr x9, ={ARM_DATA:#x}
        wfi
        mov x10, #1
        str x10, [x9, #16]
        msr daifclr, #2
    spin:
        ldr x12, [x9]
        cbz x12, spin
        movz w0, #8
        movk w0, #0x8400, lsl #16
        hvc #0""", vectors={SLOT_CUR_SPX_IRQ: f"""
        ldr x9, ={ARM_DATA:#x}
        ldr x11, [x9, #16]
        str x11, [x9]
        eret"""})
    vm = make_vm("arm_el2", entry=ARM_ENTRY)
    vm.load(image)
    vm.vcpus[0].inject(Event(EventType.VIRTUAL_IRQ))
    result = vm.run(timeout=10)
    assert result.status == 0, result.reason
    # taken after the WFI completed and PSTATE.I was cleared (at the next entry: hvsim polls a
    # masked pending event with short slices until the vGIC models the interrupt window)
    assert vm.memory.read_u64(ARM_DATA) == 1
