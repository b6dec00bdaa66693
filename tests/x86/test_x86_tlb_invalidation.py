"""The TLB model's invalidations, one by one (Intel SDM Vol. 3A 4.10.4; INVPCID in Vol. 2A):
each drops exactly what the instruction names, so a translation outside it stays as it was
(deterministically stale after a PTE change), and one inside it is walked again. These pin the
indexed model (core/mmu.TaggedTlb: entries per address space, large pages and globals indexed)
and the engine's page flushes (uc_hvsim_tlb_flush_page) against fast paths that forget a rule.
"""

from __future__ import annotations

import pytest

from guestlib import X86_DATA
from intercept_helpers import msrs, set_controls
from test_x86_memory_virtualization import (END, FRAME_A, FRAME_B, GUEST_PD, GUEST_PT, PS, WINDOW, G, P, RW, boot,
                                            paging_on, u64)

LARGE_VA = 0xA0_0000  # PD[5]: a 2 MiB page
LARGE_OLD, LARGE_NEW = 0xC0_0000, 0xE0_0000


@pytest.mark.parametrize("arch", ["intel_vtx", "amd_svm"])
def test_invlpg_drops_its_page_and_leaves_the_next_page_stale(make_vm, arch):
    vm = boot(make_vm, arch, f"""
        mov qword ptr [{FRAME_A:#x}], 0x1111
        mov qword ptr [{FRAME_B:#x}], 0x2222
        {paging_on({0: FRAME_A | P | RW, 1: FRAME_A | P | RW})}
        mov rax, [{WINDOW:#x}]
        mov rax, [{WINDOW + 0x1000:#x}]
        mov qword ptr [{GUEST_PT:#x}], {FRAME_B | P | RW:#x}
        mov qword ptr [{GUEST_PT + 8:#x}], {FRAME_B | P | RW:#x}
        mov rbx, {WINDOW + 0x10:#x}
        invlpg [rbx]
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA:#x}], rax
        mov rax, [{WINDOW + 0x1000:#x}]
        mov [{X86_DATA + 8:#x}], rax
        mov rax, cr3
        mov cr3, rax
        mov rax, [{WINDOW + 0x1000:#x}]
        mov [{X86_DATA + 16:#x}], rax
        {END}""")
    assert vm.run(timeout=10).status == 1
    assert [u64(vm, X86_DATA + 8 * i) for i in range(3)] == [0x2222, 0x1111, 0x2222]
    engine = vm.vcpus[0].mmu.engine
    assert engine.page_flushes >= 1  # the INVLPG cost the engine one page, not a full flush


@pytest.mark.parametrize("arch", ["intel_vtx", "amd_svm"])
@pytest.mark.parametrize("invalidate", ["invlpg", "none"])
def test_invlpg_anywhere_in_a_2_mib_page_drops_the_whole_page(make_vm, arch, invalidate):
    """SDM 4.10.4.1: INVLPG invalidates the translation of the page holding the address,
    whatever its size: both 4 KiB pieces of the large page the guest used are walked again."""
    vm = boot(make_vm, arch, f"""
        {paging_on({})}
        mov qword ptr [{GUEST_PD + 8 * (LARGE_VA >> 21):#x}], {LARGE_OLD | P | RW | PS:#x}
        mov rax, cr3
        mov cr3, rax
        mov rax, [{LARGE_VA:#x}]
        mov rax, [{LARGE_VA + 0x5000:#x}]
        mov qword ptr [{GUEST_PD + 8 * (LARGE_VA >> 21):#x}], {LARGE_NEW | P | RW | PS:#x}
        mov rbx, {LARGE_VA + 0x1F_F000:#x}
        {"invlpg [rbx]" if invalidate == "invlpg" else "nop"}
        mov rax, [{LARGE_VA:#x}]
        mov [{X86_DATA:#x}], rax
        mov rax, [{LARGE_VA + 0x5000:#x}]
        mov [{X86_DATA + 8:#x}], rax
        {END}""", mem="32M")
    for base, marks in ((LARGE_OLD, (0x1111, 0x3333)), (LARGE_NEW, (0x2222, 0x4444))):
        vm.memory.write(base, marks[0].to_bytes(8, "little"))
        vm.memory.write(base + 0x5000, marks[1].to_bytes(8, "little"))
    assert vm.run(timeout=10).status == 1
    expected = [0x2222, 0x4444] if invalidate == "invlpg" else [0x1111, 0x3333]
    assert [u64(vm, X86_DATA), u64(vm, X86_DATA + 8)] == expected


# INVPCID type -> (what page 0 (non-global) and page 1 (global) read afterwards)
INVPCID_TYPES = {0: (0x1111, 0x2222),  # individual address (page 1's): that page, global or not
                 1: (0x2222, 0x1111),  # single context: its non-global entries
                 2: (0x2222, 0x2222),  # all contexts, globals included
                 3: (0x2222, 0x1111)}  # all contexts but globals


@pytest.mark.parametrize("kind", sorted(INVPCID_TYPES))
def test_each_invpcid_type_drops_what_it_names(make_vm, hvsim_pm, kind):
    vm = boot(make_vm, "intel_vtx", f"""
        mov qword ptr [{FRAME_A:#x}], 0x1111
        mov qword ptr [{FRAME_B:#x}], 0x2222
        mov rax, cr4
        or rax, 0x80
        mov cr4, rax
        {paging_on({0: FRAME_A | P | RW, 1: FRAME_A | P | RW | G})}
        mov rax, [{WINDOW:#x}]
        mov rax, [{WINDOW + 0x1000:#x}]
        mov qword ptr [{GUEST_PT:#x}], {FRAME_B | P | RW:#x}
        mov qword ptr [{GUEST_PT + 8:#x}], {FRAME_B | P | RW | G:#x}
        mov qword ptr [{X86_DATA + 0x100:#x}], 0
        mov rax, {WINDOW + 0x1000:#x}
        mov [{X86_DATA + 0x108:#x}], rax
        mov rbx, {X86_DATA + 0x100:#x}
        mov rdx, {kind}
        invpcid rdx, [rbx]
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA:#x}], rax
        mov rax, [{WINDOW + 0x1000:#x}]
        mov [{X86_DATA + 8:#x}], rax
        {END}""")
    set_controls(vm.vcpus[0], proc2=msrs.SECONDARY_EXEC_ENABLE_INVPCID)
    assert vm.run(timeout=10).status == 1
    assert (u64(vm, X86_DATA), u64(vm, X86_DATA + 8)) == INVPCID_TYPES[kind]


@pytest.mark.parametrize("arch", ["intel_vtx", "amd_svm"])
@pytest.mark.parametrize("paging", ["nested", "shadow"])
def test_no_write_goes_through_before_the_dirty_flag_is_set(make_vm, arch, paging):
    """SDM 4.8: the first write through a translation sets the PTE's dirty flag. A translation
    filled for a read (nested: the fast walk; shadow: the entry INVLPG syncs again from a PTE
    whose accessed flag is already set) must not let a write through without setting it."""
    vm = boot(make_vm, arch, paging=paging, src=f"""
        {paging_on({0: FRAME_A | P | RW | 0x20})}
        mov rax, [{WINDOW:#x}]
        mov rax, [{GUEST_PT:#x}]
        mov [{X86_DATA:#x}], rax
        mov rbx, {WINDOW:#x}
        invlpg [rbx]
        mov rax, [{WINDOW:#x}]
        mov rax, [{GUEST_PT:#x}]
        mov [{X86_DATA + 8:#x}], rax
        mov qword ptr [{WINDOW + 8:#x}], 5
        mov rax, [{GUEST_PT:#x}]
        mov [{X86_DATA + 16:#x}], rax
        {END}""")
    assert vm.run(timeout=10).status == 1
    dirty = [bool(u64(vm, X86_DATA + 8 * i) & 0x40) for i in range(3)]
    assert dirty == [False, False, True]
    assert u64(vm, FRAME_A + 8) == 5
