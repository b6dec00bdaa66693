"""Shadow paging's write protection (plugins/x86/shadow.py), on both x86 vendors.

The VMM's shadow tables stay coherent with the guest's own page tables because every guest
page holding a paging-structure entry is mapped read-only in the shadow: a guest write to its
page table is a #PF exit whose guest translation allows the write. That is what lets the VMM
keep one shadow root per guest CR3 across process switches, as KVM's shadow MMU does.
"""

from __future__ import annotations

import pytest

from guestlib import X86_DATA, x86_idt_setup
from test_x86_memory_virtualization import (END, FRAME_A, FRAME_B, GUEST_PML4, GUEST_PT, PF_HANDLER, WINDOW, A,
                                            P, RW, US, boot, paging_on, u64)
from hvsim.core.exits import ExitKind


@pytest.fixture(params=["intel_vtx", "amd_svm"])
def arch(request):
    return request.param


def _page_faults(recorder):
    return [e for e in recorder.exits if e.kind == ExitKind.EXCEPTION and e.vector == 14]


def test_a_guest_write_to_its_page_table_is_a_page_fault_exit_the_guest_never_sees(make_vm, arch, recorder):
    """The PTE store faults in the shadow (the page-table page is mapped read-only there): a #PF
    exit with error code P|W (3) and the PTE's address (VMX: exit qualification; SVM: EXITINFO1
    error code, EXITINFO2 address); the VMM lifts the protection, the store completes and the
    guest's #PF handler is never called. A read of the table does not exit."""
    vm = boot(make_vm, arch, paging="shadow", src=f"""
        {x86_idt_setup({14: 'pf'})}
        mov qword ptr [{FRAME_A:#x}], 0x1111
        mov qword ptr [{FRAME_B:#x}], 0x2222
        {paging_on({0: FRAME_A | P | RW})}
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA:#x}], rax
        mov rax, [{GUEST_PT:#x}]
        mov [{X86_DATA + 8:#x}], rax
        mov qword ptr [{GUEST_PT:#x}], {FRAME_B | P | RW:#x}
        mov rbx, {WINDOW:#x}
        invlpg [rbx]
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA + 16:#x}], rax
        {END}
    pf:
        mov qword ptr [{X86_DATA + 24:#x}], 0xbad
        {END}""")
    assert vm.run(timeout=10).status == 1
    assert [u64(vm, X86_DATA + 8 * i) for i in range(4)] == [0x1111, FRAME_A | P | RW | A, 0x2222, 0]
    at_table = [e.value for e in _page_faults(recorder) if e.address == GUEST_PT]
    assert at_table == [0x2, 0x0, 0x3]  # paging_on's REP STOSQ; the read (shadowed read-only); the write
    writes = [e for e in _page_faults(recorder) if e.address == GUEST_PT and e.value == 0x3]
    raw = writes[0].raw
    if arch == "intel_vtx":
        assert raw.EXIT_REASON == 0 and raw.EXIT_QUALIFICATION == GUEST_PT
    else:
        assert (raw.EXITCODE, raw.EXITINFO1, raw.EXITINFO2) == (0x4E, 0x3, GUEST_PT)
    assert vm.vcpus[0].mmu.shadow.state.pt_writes == 1


SPACES = (GUEST_PML4, GUEST_PML4 + 0x10000)  # two address spaces: PML4 and its PDPT, PD, PT after it


def _two_spaces() -> str:
    """Guest code building two address spaces like paging_on's (8 MiB identity in 2 MiB pages,
    the window's 4 KiB table after it), space 0 mapping the window's page 0 to FRAME_A and
    space 1 to FRAME_B."""
    lines = [f"mov rdi, {GUEST_PML4:#x}", "xor eax, eax", f"mov ecx, {0x12000 // 8:#x}", "rep stosq"]
    for root, frame in zip(SPACES, (FRAME_A, FRAME_B)):
        pdpt, pd, pt = root + 0x1000, root + 0x2000, root + 0x3000
        lines += [f"mov qword ptr [{root:#x}], {pdpt | P | RW | US:#x}",
                  f"mov qword ptr [{pdpt:#x}], {pd | P | RW | US:#x}"]
        lines += [f"mov qword ptr [{pd + 8 * i:#x}], {(i << 21) | P | RW | US | 0x80:#x}" for i in range(4)]
        lines += [f"mov qword ptr [{pd + 8 * (WINDOW >> 21):#x}], {pt | P | RW | US:#x}",
                  f"mov qword ptr [{pt:#x}], {frame | P | RW:#x}"]
    return "\n".join(lines)


ROUNDS = 20


def test_the_vmm_keeps_a_shadow_root_per_cr3_and_write_protection_keeps_it_coherent(make_vm, arch, recorder):
    """Twenty switches between two address spaces touching the same page: after the first
    visit of each, no #PF exit at all (the VMM switched to the root it kept, not rebuilt it).
    Then, running in space 0, the guest changes space 1's PTE (no INVLPG: MOV CR3 will flush);
    back in space 1 it sees the new page. A kept root that missed the write would show the old
    one, which MOV CR3 forbids (SDM 4.10.4.1)."""
    vm = boot(make_vm, arch, paging="shadow", src=f"""
        mov qword ptr [{FRAME_A:#x}], 0x1111
        mov qword ptr [{FRAME_B:#x}], 0x2222
        mov qword ptr [{FRAME_B + 0x1000:#x}], 0x3333
        {_two_spaces()}
        mov r8, {ROUNDS}
        xor r10, r10
    round:
        mov rax, {SPACES[0]:#x}
        mov cr3, rax
        add r10, [{WINDOW:#x}]
        mov rax, {SPACES[1]:#x}
        mov cr3, rax
        add r10, [{WINDOW:#x}]
        dec r8
        jnz round
        mov [{X86_DATA:#x}], r10
        mov rax, {SPACES[0]:#x}
        mov cr3, rax
        mov qword ptr [{SPACES[1] + 0x3000:#x}], {(FRAME_B + 0x1000) | P | RW:#x}
        mov rax, {SPACES[1]:#x}
        mov cr3, rax
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA + 8:#x}], rax
        {END}""")
    assert vm.run(timeout=20).status == 1
    assert u64(vm, X86_DATA) == ROUNDS * (0x1111 + 0x2222) and u64(vm, X86_DATA + 8) == 0x3333
    window_faults = [e for e in _page_faults(recorder) if e.address == WINDOW]
    assert len(window_faults) == 3  # space 0 and space 1 once each, and space 1 after its PTE changed
    shadow = vm.vcpus[0].mmu.shadow
    assert shadow.roots_reused >= 2 * ROUNDS - 2 and shadow.state.pt_writes >= 1


def test_a_page_table_written_through_itself_is_synced_at_the_next_cr3_load(make_vm, arch):
    """A recursive mapping: the window's page 5 maps the window's own page table, and the guest
    rewrites PTE 0 through it. That table cannot stay write-protected (the store would fault
    forever), so the VMM leaves it writable ("unsync") and drops what it derived from it at the
    next MOV CR3, the point from which the SDM lets the guest rely on the new entry."""
    vm = boot(make_vm, arch, paging="shadow", src=f"""
        mov qword ptr [{FRAME_A:#x}], 0x1111
        mov qword ptr [{FRAME_B:#x}], 0x2222
        {paging_on({0: FRAME_A | P | RW, 5: GUEST_PT | P | RW})}
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA:#x}], rax
        mov qword ptr [{WINDOW + 0x5000:#x}], {FRAME_B | P | RW:#x}
        mov rax, cr3
        mov cr3, rax
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA + 8:#x}], rax
        mov qword ptr [{WINDOW + 0x5000:#x}], {FRAME_A | P | RW:#x}
        mov rbx, {WINDOW:#x}
        invlpg [rbx]
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA + 16:#x}], rax
        {END}""")
    assert vm.run(timeout=10).status == 1
    assert [u64(vm, X86_DATA + 8 * i) for i in range(3)] == [0x1111, 0x2222, 0x1111]
    assert u64(vm, GUEST_PT) & ~(A | 0x40) == FRAME_A | P | RW


def test_cr0_wp_clear_lets_the_kernel_write_a_read_only_page_but_not_through_a_user_shadow_entry(make_vm, arch):
    """SDM 4.6.1: with CR0.WP = 0 a supervisor write to a read-only page succeeds. The shadow
    entry that lets it write carries no U/S (KVM's way), so it cannot grant the same write to
    CPL 3; setting WP again makes the same store a #PF (P|W) to the guest."""
    vm = boot(make_vm, arch, paging="shadow", src=f"""
        {x86_idt_setup({14: 'pf'})}
        {paging_on({0: FRAME_A | P | US})}
        mov rax, cr0
        and eax, 0xfffeffff
        mov cr0, rax
        mov qword ptr [{WINDOW + 8:#x}], 0x77
        mov rax, cr0
        or eax, 0x10000
        mov cr0, rax
        mov qword ptr [{WINDOW + 16:#x}], 0x88
        {END}
    {PF_HANDLER}""")
    assert vm.run(timeout=10).status == 1
    assert u64(vm, FRAME_A + 8) == 0x77 and u64(vm, FRAME_A + 16) == 0
    assert (u64(vm, X86_DATA), u64(vm, X86_DATA + 8)) == (0x3, WINDOW + 16)
    shadow = vm.vcpus[0].mmu.shadow
    (spte,) = [int.from_bytes(vm.host.read(at, 8), "little") for at, (gva, *_) in shadow.leaves.items()
               if gva == WINDOW]  # the WP = 0 root's (the WP = 1 store was the guest's own #PF)
    assert spte & (P | RW | US) == P | RW and spte & ~0xFFF & ((1 << 52) - 1) == vm.memory.translate(FRAME_A)
