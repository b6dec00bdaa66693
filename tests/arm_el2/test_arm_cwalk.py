"""The arm64 guest's stage-1 walk in C (hvsim's Unicorn patch, section 8; core/mmu.CWalk): the
engine fills its TLB itself (EL1&0 regime, 4 KiB granule, TTBR0_EL1 and TTBR1_EL1) where
Python's walk would find nothing to refuse. These pin what that fast path must keep: every C
fill is recorded in the TLB model (a descriptor changed without TLBI keeps its old translation
even after the engine dropped its copy), nG entries belong to their ASID, a descriptor without
the Access flag goes to Python and faults exactly, and one VM's walk never reaches another
VM's memory. The guests' tables are test_stage2.mmu_on's (every descriptor has AF set).
"""

from __future__ import annotations

import itertools

import pytest
from unicorn.arm64_const import UC_ARM64_REG_X23

from el2guest import SYSTEM_OFF, guest, log_records, u64
from hvsim.core.exits import ExitKind
from hvsim.core.vm import STATUS_OFF
from test_stage2 import (asid_switch_guest, CUR_SPX_SYNC, EC_DABT_CUR, MARK_A, MARK_B, NO_AF_VA, REMAPPED_PA, REMAPPED_VA, RESULT, esr,
                         mmu_on, mov64)

TTBR1_BASE = 0xFFFF_FF80_0000_0000  # T1SZ 25: VA[63:39] all ones selects TTBR1_EL1
_labels = itertools.count()


def evict(base: int = 0x4000_0000, count: int = 4096) -> str:
    """Read every 1 KiB of ``count`` KiB from ``base`` (identity 2 MiB blocks): far more engine
    TLB entries than the engine holds, so an earlier entry is evicted."""
    n = next(_labels)
    return f"""
    {mov64('x16', base)}
    {mov64('x17', count)}
ev{n}:
    ldr x18, [x16]
    add x16, x16, #0x400
    subs x17, x17, #1
    b.ne ev{n}
"""


# TCR_EL1 as mmu_on programs it, with TTBR1_EL1 enabled too: T1SZ 25, TG1 0b10 (4 KiB), EPD1 clear
TTBR1_ON = """
    movz x3, #0x3519
    movk x3, #0x8019, lsl #16
    movk x3, #0x0002, lsl #32
    msr tcr_el1, x3
    msr ttbr1_el1, x1
    isb
"""


def _vm(arm_vm, main: str):
    vm = arm_vm(guest(main))
    vm.memory.write(REMAPPED_VA, MARK_A.to_bytes(8, "little"))
    vm.memory.write(REMAPPED_PA, MARK_B.to_bytes(8, "little"))
    return vm


def _cwalk(vm):
    cw = vm.vcpus[0].mmu.cwalk
    if cw is None:
        pytest.skip("the C walk is off (HVSIM_CWALK=0 or a Unicorn without patch level 8)")
    return cw


@pytest.mark.parametrize("invalidate", ["none", "tlbi vae1, x6"])
@pytest.mark.parametrize("half", ["ttbr0", "ttbr1"])
def test_a_c_fill_is_recorded_and_stays_stale_after_the_engine_drops_it(arm_vm, invalidate, half):
    """L3[0] (AF set) maps the remapped page: its read is filled in C. The guest points L3[0] back
    at the identity frame without TLBI and evicts the engine's entry: the model's recorded
    translation, not a new walk, answers (D8.13: an entry stays until invalidated); after TLBI
    VAE1 the new one does. Through TTBR1_EL1 the same tables serve the top of the VA space."""
    va = REMAPPED_VA if half == "ttbr0" else TTBR1_BASE | REMAPPED_VA
    evict_base = 0x4000_0000 if half == "ttbr0" else TTBR1_BASE | 0x4000_0000
    main = mmu_on() + TTBR1_ON + f"""
    {mov64('x4', va)}
    ldr x5, [x4]
    str x5, [x19]
    movz x6, #0x4200, lsl #16
    movz x5, #0x0707
    orr x6, x6, x5
    str x6, [x7]
    dsb ish
    isb
    {evict(evict_base)}
    ldr x5, [x4]
    str x5, [x19, #8]
    lsr x6, x4, #12
    {invalidate if invalidate != "none" else "nop"}
    dsb ish
    isb
    {evict(evict_base)}
    ldr x5, [x4]
    str x5, [x19, #16]
    {SYSTEM_OFF}"""
    vm = _vm(arm_vm, main)
    assert vm.run(timeout=20).status == STATUS_OFF
    third = MARK_A if invalidate != "none" else MARK_B
    assert [u64(vm, RESULT + 8 * i) for i in range(3)] == [MARK_B, MARK_B, third]
    cw = _cwalk(vm)
    assert cw.desc.enabled and cw.desc.fills > 1000  # the evictions' fills were made in C


def test_ng_entries_of_another_asid_are_not_used(arm_vm):
    """L3[0] is nG: ASID 0 caches the remapped page (C fill); the descriptor is changed without
    TLBI; ASID 1 must walk the new tables (its key is not ASID 0's), back in ASID 0 the stale
    entry answers even after the engine dropped it, TLBI ASIDE1 of ASID 0 drops it."""
    main = asid_switch_guest(evict)
    vm = _vm(arm_vm, main)
    assert vm.run(timeout=20).status == STATUS_OFF
    assert [u64(vm, RESULT + 8 * i) for i in range(4)] == [MARK_B, MARK_A, MARK_B, MARK_A]
    assert _cwalk(vm).desc.fills > 1000


def test_a_descriptor_without_the_access_flag_goes_to_python_and_faults_exactly(arm_vm, recorder):
    """After the C walk filled thousands of pages, a load from L3[2] (AF clear, TCR_EL1.HA clear)
    is an Access flag fault, level 3 (ISS 0x0B) at the exact FAR, taken at the guest's VBAR_EL1:
    the C walk sets nothing and refuses nothing, Python's full walk reports it."""
    main = mmu_on() + evict() + f"""
    {mov64('x4', NO_AF_VA)}
    adr x20, after
    adr x23, fault
fault:
    ldrb w5, [x4, #0x28]
after:
    nop
    {SYSTEM_OFF}"""
    vm = arm_vm(guest(main))
    assert vm.run(timeout=20).status == STATUS_OFF
    [(vector, esr_el1, elr, far, _spsr)] = log_records(vm, 1)
    assert (vector, esr_el1, far) == (CUR_SPX_SYNC, esr(EC_DABT_CUR, 0x0B), NO_AF_VA + 0x28)
    assert elr == vm.vcpus[0].regs.read(UC_ARM64_REG_X23)
    assert not recorder.of(ExitKind.STAGE2_FAULT)
    assert _cwalk(vm).desc.fills > 1000


def test_two_vms_in_one_process_each_reach_only_their_own_memory(arm_vm):
    """Two VMs, the same guest, different data at the remapped frame: each vCPU's C walk reads its
    own VM's tables and memory (the descriptor names its own host memory and slot map)."""
    main = mmu_on() + evict() + f"""
    {mov64('x4', REMAPPED_VA)}
    ldr x5, [x4]
    str x5, [x19]
    {SYSTEM_OFF}"""
    vms = [_vm(arm_vm, main) for _ in range(2)]
    vms[1].memory.write(REMAPPED_PA, (MARK_B ^ 0xFF).to_bytes(8, "little"))
    for vm in vms:
        assert vm.run(timeout=20).status == STATUS_OFF
    assert [u64(vm, RESULT) for vm in vms] == [MARK_B, MARK_B ^ 0xFF]
    assert all(_cwalk(vm).desc.fills > 1000 for vm in vms)
