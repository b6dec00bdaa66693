"""The hypervisor's ERET: ELR_EL2 / SPSR_EL2 written by an exit handler redirect the guest.

Arm ARM (DDI 0487) D1.11 "Exception return": ERET from EL2 sets PC = ELR_EL2 and PSTATE =
SPSR_EL2; a VMM steps over or redirects a trapped instruction by writing them (KVM's
kvm_incr_pc and its SPSR edits), and an SPSR_EL2.M naming EL2, EL3 or AArch32 is an illegal
exception return (D1.11.5) that hvsim ends the run on.
"""

from __future__ import annotations

import pytest

from el2guest import RAM, SYSTEM_OFF, guest, log_records, u64, w0
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.core.vm import STATUS_GUEST_CRASH, STATUS_OFF
from hvsim.plugins.arm_el2 import el2, psci

RESULT = RAM + 0x140_0000
HVC_SKIP, HVC_SET_Z, HVC_TO_EL0, HVC_BAD_SPSR = 0x8600_00B0, 0x8600_00B1, 0x8600_00B2, 0x8600_00B3


class Eret:
    """Vendor hypercalls that edit the hypervisor's return; a TID3 MRS handler that emulates the
    read and returns two instructions further on."""

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        sysreg = registry.get(ExitKind.SYSREG)

        def on_hvc(vcpu, exit):
            fid, e = vcpu.smccc_x0 & 0xFFFF_FFFF, vcpu.el2
            if fid == HVC_SKIP:
                e.ELR_EL2 += 4  # over the instruction after the HVC
            elif fid == HVC_SET_Z:
                e.SPSR_EL2 |= 1 << 30  # PSTATE.Z for the guest
            elif fid == HVC_TO_EL0:
                e.ELR_EL2 = vcpu.xreg(1)
                e.SPSR_EL2 = 0  # EL0t, DAIF clear
            elif fid == HVC_BAD_SPSR:
                e.SPSR_EL2 = 0b01001  # EL2h
            else:
                return psci.handle_hvc(vcpu, exit)
            vcpu.smccc_return(0)

        def on_sysreg(vcpu, exit):
            if exit.raw.ESR_EL2 >> 26 == 0x18 and not exit.is_write and exit.address == (3 << 19) | (7 << 8):
                exit.value = 0x1234  # ID_AA64MMFR0_EL1 as this VMM shows it
                vcpu.el2.ELR_EL2 += 8
                return None
            return sysreg(vcpu, exit)

        registry.add(ExitKind.HYPERCALL, on_hvc)
        registry.add(ExitKind.SYSREG, on_sysreg)


@pytest.fixture
def eret_vm(arm_vm, hvsim_pm):
    hvsim_pm.register(Eret(), name="eret")
    return arm_vm


def test_elr_el2_written_by_the_handler_skips_the_instruction_after_the_hvc(eret_vm):
    vm = eret_vm(guest(f"""
    movz x19, #0x4140, lsl #16
    mov x5, #1
    {w0(HVC_SKIP)}
    hvc #0
    mov x5, #2
    str x5, [x19]
    {SYSTEM_OFF}"""))
    assert vm.run(timeout=5).status == STATUS_OFF
    assert u64(vm, RESULT) == 1


def test_spsr_el2_written_by_the_handler_is_the_guests_pstate_after_the_return(eret_vm):
    vm = eret_vm(guest(f"""
    movz x19, #0x4140, lsl #16
    mov x5, #1
    cmp x5, #0
    {w0(HVC_SET_Z)}
    hvc #0
    cset x6, eq
    str x6, [x19]
    {SYSTEM_OFF}"""))
    assert vm.run(timeout=5).status == STATUS_OFF
    assert u64(vm, RESULT) == 1


def test_a_return_to_el0t_runs_the_guest_at_el0_on_sp_el0(eret_vm):
    vm = eret_vm(guest(f"""
    movz x19, #0x4140, lsl #16
    movz x2, #0x4150, lsl #16
    msr sp_el0, x2
    adr x1, el0_code
    {w0(HVC_TO_EL0)}
    hvc #0
    b .
el0_code:
    mov x3, sp
    str x3, [x19]
    svc #0xffff"""))
    assert vm.run(timeout=5).status == STATUS_OFF
    [(vector, esr_el1, _elr, _far, spsr)] = log_records(vm, 1)
    assert (vector, esr_el1 >> 26, spsr & 0xF) == (0x400, 0x15, 0)  # SVC from EL0 (AArch64), M = EL0t
    assert u64(vm, RESULT) == 0x4150_0000


def test_elr_el2_written_by_a_sysreg_handler_ends_the_run_with_one_line(eret_vm):
    """Not modelled: the trapped MRS runs in a hook inside its translation block."""
    vm = eret_vm(guest(f"""
    mrs x5, id_aa64mmfr0_el1
    {SYSTEM_OFF}"""))
    assert vm.vcpus[0].el2.HCR_EL2 & el2.HCR_TID3
    result = vm.run(timeout=5)
    assert result.status == STATUS_GUEST_CRASH and "cannot redirect a trapped MRS/MSR/SYS" in result.reason


def test_an_spsr_el2_naming_el2_ends_the_run_as_an_illegal_exception_return(eret_vm):
    vm = eret_vm(guest(f"{w0(HVC_BAD_SPSR)}\nhvc #0\n{SYSTEM_OFF}"))
    result = vm.run(timeout=5)
    assert result.status == STATUS_GUEST_CRASH and "illegal exception return" in result.reason


def test_cptr_el2_tam_is_res0_and_tta_leaves_the_missing_trace_registers_undefined(arm_vm, recorder):
    """No FEAT_AMUv1 (ID_AA64PFR0_EL1.AMU = 0): CPTR_EL2.TAM is RES0. TTA traps accesses to the
    implemented trace registers; the CPU has no System-register trace interface, so an MRS of
    TRCPRGCTLR (S2_1_C0_C1_0) stays UNDEFINED at the guest's EL1 (EC 0x00), with no exit."""
    vm = arm_vm(guest(f"adr x20, after\nmrs x5, s2_1_c0_c1_0\nafter:\n{SYSTEM_OFF}"))
    cptr = vm.vcpus[0].el2
    cptr.CPTR_EL2 |= el2.CPTR_EL2_TAM | el2.CPTR_EL2_TTA
    assert not cptr.CPTR_EL2 & el2.CPTR_EL2_TAM and cptr.CPTR_EL2 & el2.CPTR_EL2_TTA
    assert vm.run(timeout=5).status == STATUS_OFF
    [(vector, esr_el1, *_rest)] = log_records(vm, 1)
    assert (vector, esr_el1 >> 26) == (0x200, 0x00)
    assert not recorder.of(ExitKind.SYSREG)
