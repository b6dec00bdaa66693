"""PSCI over HVC (DEN0022) and the HVC exit record (ESR_EL2.EC = HVC64), with real guest code."""

from __future__ import annotations

import pytest

from el2guest import SCRATCH, SYSTEM_OFF, guest, u64, w0
from hvsim.core.arch import VcpuState
from hvsim.core.exits import ExitKind
from hvsim.core.vm import STATUS_OFF
from hvsim.plugins.arm_el2 import psci
from hvsim.plugins.arm_el2.exits import ESR_ELx_EC_HVC64, El2Record

NOT_SUPPORTED = 0xFFFF_FFFF_FFFF_FFFF


def call_and_store(fid: int, x1: int = 0, slot: int = 0) -> str:
    """Guest code: SMCCC call ``fid`` through HVC #0, then X0 -> SCRATCH + 8 * slot."""
    return f"""
    {w0(fid)}
    movz x1, #{x1 & 0xFFFF:#x}
    movk x1, #{(x1 >> 16) & 0xFFFF:#x}, lsl #16
    hvc #0
    movz x8, #0x4180, lsl #16
    str x0, [x8, #{8 * slot}]
    """


def test_psci_version_is_1_1(run_guest):
    vm, result = run_guest(guest(call_and_store(psci.PSCI_0_2_FN_PSCI_VERSION) + SYSTEM_OFF))
    assert result.status == STATUS_OFF
    assert u64(vm, SCRATCH) == 0x0001_0001


@pytest.mark.parametrize("queried, expected", [
    (psci.PSCI_0_2_FN_PSCI_VERSION, 0),
    (psci.PSCI_0_2_FN_CPU_SUSPEND, 0),  # feature flags: original power_state format, PC mode
    (psci.PSCI_0_2_FN64_CPU_SUSPEND, 0),
    (psci.PSCI_0_2_FN_CPU_OFF, 0),
    (psci.PSCI_0_2_FN_CPU_ON, 0),
    (psci.PSCI_0_2_FN64_CPU_ON, 0),
    (psci.PSCI_0_2_FN_AFFINITY_INFO, 0),
    (psci.PSCI_0_2_FN64_AFFINITY_INFO, 0),
    (psci.PSCI_0_2_FN_MIGRATE_INFO_TYPE, 0),
    (psci.PSCI_0_2_FN_SYSTEM_OFF, 0),
    (psci.PSCI_0_2_FN_SYSTEM_RESET, 0),
    (psci.PSCI_1_1_FN_SYSTEM_RESET2, 0),
    (psci.PSCI_1_1_FN64_SYSTEM_RESET2, 0),
    (psci.PSCI_1_0_FN_PSCI_FEATURES, 0),
    (psci.ARM_SMCCC_VERSION_FUNC_ID, 0),
    (psci.PSCI_0_2_FN_MIGRATE, NOT_SUPPORTED),
    (psci.PSCI_0_2_FN64_MIGRATE, NOT_SUPPORTED),
    (psci.PSCI_0_2_FN_MIGRATE_INFO_UP_CPU, NOT_SUPPORTED),
    (psci.PSCI_1_0_FN64_SYSTEM_SUSPEND, NOT_SUPPORTED),
    (0x8400_000B, NOT_SUPPORTED),  # CPU_FREEZE
], ids=lambda v: f"{v:#x}" if v != NOT_SUPPORTED else "NOT_SUPPORTED")
def test_psci_features_says_which_functions_exist(run_guest, queried, expected):
    code = call_and_store(psci.PSCI_1_0_FN_PSCI_FEATURES, x1=queried) + SYSTEM_OFF
    vm, _ = run_guest(guest(code))
    assert u64(vm, SCRATCH) == expected


@pytest.mark.parametrize("fid", [0x8400_00FF, 0xC400_0042, 0x8600_0000])
def test_unknown_function_id_returns_not_supported_as_64_bit_minus_one(run_guest, fid):
    vm, _ = run_guest(guest(call_and_store(fid) + SYSTEM_OFF))
    assert u64(vm, SCRATCH) == NOT_SUPPORTED


def test_migrate_info_type_says_no_trusted_os(run_guest):
    vm, _ = run_guest(guest(call_and_store(psci.PSCI_0_2_FN_MIGRATE_INFO_TYPE) + SYSTEM_OFF))
    assert u64(vm, SCRATCH) == 2


def test_smccc_version_is_1_1(run_guest):
    vm, _ = run_guest(guest(call_and_store(psci.ARM_SMCCC_VERSION_FUNC_ID) + SYSTEM_OFF))
    assert u64(vm, SCRATCH) == 0x0001_0001


def test_system_off_ends_the_run_with_status_0(run_guest):
    vm, result = run_guest(guest(SYSTEM_OFF + "\nb ."))
    assert (result.status, result.reason) == (0, "PSCI SYSTEM_OFF")


def test_system_reset_ends_the_run_as_qemu_no_reboot(run_guest):
    vm, result = run_guest(guest(w0(psci.PSCI_0_2_FN_SYSTEM_RESET) + "\nhvc #0\nb ."))
    assert (result.status, result.reason) == (0, "PSCI SYSTEM_RESET")


def test_hvc_exit_record_has_ec_hvc64_and_the_immediate(run_guest, recorder):
    code = f"{w0(psci.PSCI_0_2_FN_PSCI_VERSION)}\nhvc #0\n{w0(0)}\nhvc #0x1234\n" + SYSTEM_OFF
    vm, _ = run_guest(guest(code))
    calls = recorder.of(ExitKind.HYPERCALL)
    assert [e.reason for e in calls] == ["ESR_ELx_EC_HVC64"] * 3
    first, second = calls[0].raw, calls[1].raw
    assert isinstance(first, El2Record)
    assert (first.EC, first.IL, first.ISS) == (ESR_ELx_EC_HVC64, 1, 0)
    assert first.ESR_EL2 == 0x5A00_0000
    assert (second.ESR_EL2, second.imm16, calls[1].value) == (0x5A00_1234, 0x1234, 0x1234)


def test_hvc_with_a_nonzero_immediate_is_not_an_smccc_call(run_guest):
    code = f"{w0(psci.PSCI_0_2_FN_PSCI_VERSION)}\nhvc #1\nmovz x8, #0x4180, lsl #16\nstr x0, [x8]\n"
    vm, _ = run_guest(guest(code + SYSTEM_OFF))
    assert u64(vm, SCRATCH) == NOT_SUPPORTED


def test_hypercalls_are_counted_by_their_manual_name(run_guest):
    vm, _ = run_guest(guest(call_and_store(psci.PSCI_0_2_FN_PSCI_VERSION) * 3 + SYSTEM_OFF))
    assert vm.stats.counts()["ESR_ELx_EC_HVC64"] == 4


SECONDARY = f"""
secondary:
    mrs x4, mpidr_el1
    movz x8, #0x4180, lsl #16
    str x0, [x8, #0x100]       // the context id CPU_ON passed
    str x4, [x8, #0x108]
    mrs x5, CurrentEL
    str x5, [x8, #0x110]
    mov x6, #1
    str x6, [x8, #0x118]       // flag: the secondary ran
    {w0(psci.PSCI_0_2_FN_CPU_OFF)}
    hvc #0
    b .
"""


def test_cpu_on_starts_a_secondary_at_its_entry_with_the_context_id(run_guest):
    main = f"""
    {w0(psci.PSCI_0_2_FN64_CPU_ON)}
    mov x1, #1                 // target MPIDR Aff0 = 1
    adr x2, secondary
    movz x3, #0xbeef
    hvc #0
    movz x8, #0x4180, lsl #16
    str x0, [x8]
wait_flag:
    ldr x6, [x8, #0x118]
    cbz x6, wait_flag
wait_off:
    {w0(psci.PSCI_0_2_FN64_AFFINITY_INFO)}
    mov x1, #1
    mov x2, #0
    hvc #0
    cmp x0, #1                 // OFF
    b.ne wait_off
    str x0, [x8, #8]
    {SYSTEM_OFF}
    {SECONDARY}
    """
    vm, result = run_guest(guest(main), vcpus=2)
    assert result.status == STATUS_OFF
    assert u64(vm, SCRATCH) == 0  # SUCCESS
    assert u64(vm, SCRATCH + 0x100) == 0xBEEF
    assert u64(vm, SCRATCH + 0x108) == 0x8000_0001  # MPIDR_EL1 reads VMPIDR_EL2
    assert u64(vm, SCRATCH + 0x110) == 0x4  # EL1
    assert u64(vm, SCRATCH + 8) == 1  # AFFINITY_INFO: OFF after CPU_OFF
    assert vm.vcpus[1].state is VcpuState.OFF


@pytest.mark.parametrize("target, expected", [
    (0, psci.PSCI_RET_ALREADY_ON),  # the caller itself
    (7, psci.PSCI_RET_INVALID_PARAMS),  # no such CPU
])
def test_cpu_on_refuses_a_running_or_missing_cpu(run_guest, target, expected):
    main = f"""
    {w0(psci.PSCI_0_2_FN64_CPU_ON)}
    mov x1, #{target}
    adr x2, secondary
    mov x3, #0
    hvc #0
    movz x8, #0x4180, lsl #16
    str x0, [x8]
    {SYSTEM_OFF}
    {SECONDARY}
    """
    vm, _ = run_guest(guest(main), vcpus=2)
    assert u64(vm, SCRATCH) == expected & NOT_SUPPORTED


def test_cpu_on_refuses_an_entry_point_outside_ram(run_guest):
    main = f"""
    {w0(psci.PSCI_0_2_FN64_CPU_ON)}
    mov x1, #1
    movz x2, #0x1000, lsl #16
    mov x3, #0
    hvc #0
    movz x8, #0x4180, lsl #16
    str x0, [x8]
    {SYSTEM_OFF}
    """
    vm, _ = run_guest(guest(main), vcpus=2)
    assert u64(vm, SCRATCH) == psci.PSCI_RET_INVALID_ADDRESS & NOT_SUPPORTED
    assert vm.vcpus[1].state is VcpuState.OFF


def test_secondary_vcpus_start_off(arm_vm):
    vm = arm_vm(guest(SYSTEM_OFF), vcpus=3)
    assert [v.state for v in vm.vcpus] == [VcpuState.RUNNABLE, VcpuState.OFF, VcpuState.OFF]
    assert [v.mpidr for v in vm.vcpus] == [0x8000_0000, 0x8000_0001, 0x8000_0002]


def test_affinity_info_of_a_running_cpu_is_on(run_guest):
    code = call_and_store(psci.PSCI_0_2_FN64_AFFINITY_INFO, x1=0) + SYSTEM_OFF
    vm, _ = run_guest(guest(code))
    assert u64(vm, SCRATCH) == 0


# -- CPU_SUSPEND, SYSTEM_RESET2, the 32-bit CPU_ON, SMP with both vCPUs printing -------------
def test_cpu_suspend_waits_like_wfi_and_returns_success_when_an_interrupt_wakes_it(run_guest):
    """A standby request with interrupts masked: the virtual timer's PPI wakes the vCPU, the
    call returns SUCCESS, and the interrupt stays pending (DAIF masked: not taken)."""
    main = f"""
    movz x1, #0xf424                // 1 ms of the 62.5 MHz counter
    msr cntv_tval_el0, x1
    mov x1, #1
    msr cntv_ctl_el0, x1
    mrs x20, cntv_cval_el0
    {w0(psci.PSCI_0_2_FN64_CPU_SUSPEND)}
    mov x1, #0                      // power_state: standby, StateID 0
    hvc #0
    mrs x21, cntvct_el0
    movz x8, #0x4180, lsl #16
    str x0, [x8]
    str x21, [x8, #8]
    str x20, [x8, #16]
    {SYSTEM_OFF}
    """
    vm, result = run_guest(guest(main), gic="none")  # no GIC to enable: the PPI reaches the vCPU
    assert result.status == STATUS_OFF
    assert u64(vm, SCRATCH) == psci.PSCI_RET_SUCCESS
    assert u64(vm, SCRATCH + 8) >= u64(vm, SCRATCH + 16)  # it waited for the timer's CVAL


def test_cpu_suspend_with_reserved_power_state_bits_is_invalid_parameters(run_guest):
    code = call_and_store(psci.PSCI_0_2_FN_CPU_SUSPEND, x1=1 << 30) + SYSTEM_OFF
    vm, _ = run_guest(guest(code))
    assert u64(vm, SCRATCH) == psci.PSCI_RET_INVALID_PARAMS & NOT_SUPPORTED


@pytest.mark.parametrize("fid", [psci.PSCI_1_1_FN_SYSTEM_RESET2, psci.PSCI_1_1_FN64_SYSTEM_RESET2])
@pytest.mark.parametrize("reset_type, reason", [
    (0, "PSCI SYSTEM_RESET2 (SYSTEM_WARM_RESET)"),
    (0x8000_0001, "PSCI SYSTEM_RESET2 (vendor-specific)"),
])
def test_system_reset2_warm_or_vendor_reset_ends_the_run(run_guest, fid, reset_type, reason):
    vm, result = run_guest(guest(call_and_store(fid, x1=reset_type) + "b ."))
    assert (result.status, result.reason) == (0, reason)


def test_system_reset2_with_another_architectural_type_is_invalid_parameters(run_guest):
    code = call_and_store(psci.PSCI_1_1_FN64_SYSTEM_RESET2, x1=1) + SYSTEM_OFF
    vm, result = run_guest(guest(code))
    assert result.reason == "PSCI SYSTEM_OFF"
    assert u64(vm, SCRATCH) == psci.PSCI_RET_INVALID_PARAMS & NOT_SUPPORTED


def test_cpu_on_with_the_32_bit_id_takes_w_registers(run_guest):
    main = f"""
    {w0(psci.PSCI_0_2_FN_CPU_ON)}
    mov x1, #1
    movk x1, #0xdead, lsl #48       // target W1 = 1: the upper half is ignored
    adr x2, secondary
    movz x3, #0x55
    movk x3, #0xbeef, lsl #48       // context id W3 = 0x55
    hvc #0
    movz x8, #0x4180, lsl #16
    str x0, [x8]
wait_flag:
    ldr x6, [x8, #0x118]
    cbz x6, wait_flag
    {SYSTEM_OFF}
    {SECONDARY}
    """
    vm, result = run_guest(guest(main), vcpus=2)
    assert result.status == STATUS_OFF
    assert u64(vm, SCRATCH) == 0 and u64(vm, SCRATCH + 0x100) == 0x55


def _print(text: str) -> str:
    return "".join(f"mov w2, #{b}\nstrb w2, [x1]\n" for b in text.encode())


BOOT_UP, SECOND_UP, REPORTED = "boot cpu up\n", "second cpu up\n", "boot cpu: second cpu reported\n"


def test_smp_bring_up_with_cpu_on_and_both_vcpus_printing(run_guest):
    main = f"""
    movz x1, #0x0900, lsl #16       // PL011 data register
    {_print(BOOT_UP)}
    {w0(psci.PSCI_0_2_FN64_CPU_ON)}
    mov x1, #1
    adr x2, second
    mov x3, #0
    hvc #0
    movz x8, #0x4180, lsl #16
wait_second:
    ldr x6, [x8]
    cbz x6, wait_second
    movz x1, #0x0900, lsl #16
    {_print(REPORTED)}
    {SYSTEM_OFF}
second:
    movz x1, #0x0900, lsl #16
    {_print(SECOND_UP)}
    mrs x5, mpidr_el1
    movz x8, #0x4180, lsl #16
    str x5, [x8]
    {w0(psci.PSCI_0_2_FN_CPU_OFF)}
    hvc #0
    """
    vm, result = run_guest(guest(main), vcpus=2)
    assert result.status == STATUS_OFF
    assert vm.console.text == BOOT_UP + SECOND_UP + REPORTED
    assert u64(vm, SCRATCH) == 0x8000_0001
