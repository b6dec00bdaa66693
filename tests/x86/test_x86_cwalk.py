"""The guest's stage-1 walk in C (hvsim's Unicorn patch, section 8; core/mmu.CWalk): the engine
fills its TLB itself where Python's walk would find nothing to write and nothing to refuse.
These pin what that fast path must keep: every C fill is recorded in the TLB model (a PTE
changed without INVLPG keeps its old translation even after the engine dropped its copy), a
write to a clean page still sets the dirty flag, and one VM's walk never reaches another
VM's memory. Guests pre-set the accessed (and dirty) flags, which is what makes a walk eligible.
"""

from __future__ import annotations

import pytest

from guestlib import X86_DATA
from test_x86_memory_virtualization import (END, FRAME_A, FRAME_B, GUEST_PD, GUEST_PT, WINDOW, A, D, P, RW, boot,
                                            paging_on, u64)

VENDORS = ["intel_vtx", "amd_svm"]
# Reads of every 4 KiB piece of the identity-mapped 0-8 MiB (2 MiB pages): 2,048 engine TLB
# entries, far more than the engine's TLB holds, so the window's entry is evicted.
_evicts = iter(range(1 << 30))


def evict() -> str:
    n = next(_evicts)
    return f"""mov rbx, 0
        mov ecx, 2048
    evict{n}:
        mov rax, [rbx]
        add rbx, 0x1000
        loop evict{n}"""


def _mark_frames() -> str:
    return f"""mov qword ptr [{FRAME_A:#x}], 0x1111
        mov qword ptr [{FRAME_B:#x}], 0x2222"""


@pytest.mark.parametrize("arch", VENDORS)
@pytest.mark.parametrize("invalidate", ["none", "invlpg"])
def test_a_c_fill_is_recorded_and_stays_stale_after_the_engine_drops_it(make_vm, arch, invalidate):
    """PT[0] has A and D set, so the read of WINDOW is filled in C (the upper levels got their
    A flags from the first walks). The guest then points PT[0] at another frame without INVLPG
    and evicts the engine's entry: the model's recorded translation, not a new walk, must
    answer (SDM 4.10.4.3: a TLB entry stays until invalidated). With INVLPG the new one must."""
    vm = boot(make_vm, arch, f"""
        {_mark_frames()}
        {paging_on({0: FRAME_A | P | RW | A | D, 1: FRAME_A | P | RW})}
        {evict()}
        mov rax, [{WINDOW + 0x1000:#x}]
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA:#x}], rax
        mov qword ptr [{GUEST_PT:#x}], {FRAME_B | P | RW | A | D:#x}
        {"mov rbx, " + hex(WINDOW) + chr(10) + "invlpg [rbx]" if invalidate == "invlpg" else "nop"}
        {evict()}
        {evict()}
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA + 8:#x}], rax
        {END}""")
    assert vm.run(timeout=20).status == 1
    expected = 0x2222 if invalidate == "invlpg" else 0x1111
    assert [u64(vm, X86_DATA), u64(vm, X86_DATA + 8)] == [0x1111, expected]
    mmu = vm.vcpus[0].mmu
    if mmu.cwalk is not None and arch == "intel_vtx":
        assert mmu.cwalk.desc.enabled and mmu.cwalk.desc.fills > 1000  # the evictions' refills were C fills


@pytest.mark.parametrize("arch", VENDORS)
def test_a_write_after_a_c_read_fill_sets_the_dirty_flag(make_vm, arch):
    """PT[0] has A but not D: the read is filled in C without write permission; the write that
    follows goes to Python, which sets D in the PTE (SDM 4.8) before the store lands."""
    vm = boot(make_vm, arch, f"""
        {_mark_frames()}
        {paging_on({0: FRAME_A | P | RW | A})}
        {evict()}
        mov rax, [{WINDOW:#x}]
        mov rax, [{GUEST_PT:#x}]
        mov [{X86_DATA:#x}], rax
        mov qword ptr [{WINDOW:#x}], 0x3333
        mov rax, [{GUEST_PT:#x}]
        mov [{X86_DATA + 8:#x}], rax
        {END}""")
    assert vm.run(timeout=20).status == 1
    assert u64(vm, X86_DATA) & D == 0
    assert u64(vm, X86_DATA + 8) & D
    assert u64(vm, FRAME_A) == 0x3333


@pytest.mark.parametrize("arch", VENDORS)
def test_a_non_present_or_clean_upper_level_is_walked_in_python(make_vm, arch):
    """A PD entry whose accessed flag is clear: the C walk must leave it to Python, which sets
    it (SDM 4.8: the processor sets A in every paging-structure entry it uses)."""
    vm = boot(make_vm, arch, f"""
        {_mark_frames()}
        {paging_on({0: FRAME_A | P | RW | A | D})}
        {evict()}
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA:#x}], rax
        mov rax, [{GUEST_PD + 8 * (WINDOW >> 21):#x}]
        mov [{X86_DATA + 8:#x}], rax
        {END}""")
    assert vm.run(timeout=20).status == 1
    assert u64(vm, X86_DATA) == 0x1111
    assert u64(vm, X86_DATA + 8) & A


@pytest.mark.parametrize("arch", VENDORS)
def test_two_vms_in_one_process_each_reach_only_their_own_memory(make_vm, arch):
    """Two VMs of different sizes run the same guest: each C walk reads its own VM's tables
    and frames, and a window page past the smaller VM's RAM never lands in the larger one's."""
    beyond = 0x1400_0000  # 320 MiB: RAM in the large VM only
    src = f"""
        mov rax, [{X86_DATA + 0x100:#x}]
        mov [{FRAME_A:#x}], rax
        {paging_on({0: FRAME_A | P | RW | A | D, 1: beyond | P | RW | A | D})}
        {evict()}
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA:#x}], rax
        mov rax, [{WINDOW + 0x1000:#x}]
        mov [{X86_DATA + 8:#x}], rax
        {END}"""
    small = boot(make_vm, arch, src, mem="64M")
    large = boot(make_vm, arch, src, mem="512M")
    small.memory.write(X86_DATA + 0x100, (0x5555).to_bytes(8, "little"))
    large.memory.write(X86_DATA + 0x100, (0x7777).to_bytes(8, "little"))
    large.memory.write(beyond, (0x9999).to_bytes(8, "little"))
    assert large.run(timeout=20).status == 1
    assert small.run(timeout=20).status == 1
    assert [u64(large, X86_DATA), u64(large, X86_DATA + 8)] == [0x7777, 0x9999]
    assert u64(small, X86_DATA) == 0x5555
    assert u64(small, X86_DATA + 8) != 0x9999  # no RAM there: not the other VM's
