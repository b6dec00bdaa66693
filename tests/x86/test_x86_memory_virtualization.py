"""Two-stage translation on both x86 vendors: the guest's own paging over EPT (Intel SDM Vol. 3C
ch. 29) or NPT (AMD APM Vol. 2 15.25), with the TLB rules of SDM Vol. 3A 4.10.

Each guest builds its own 4-level page tables at GUEST_PML4 (identity-mapped 2 MiB pages for
its code, data and tables, and one 4 KiB page table for the window at WINDOW), loads CR3 and
works through them. The VMM side (a test plugin) edits the VM's stage-2 tables in host memory.
"""

from __future__ import annotations

import struct

import pytest

from guestlib import X86_DATA, X86_STACK, x86_64, x86_idt_setup
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.core.memory import HostMemory
from hvsim.core.vm import VM, HV_AREA
from hvsim.plugins.x86.arch import STAGE2_AREA

VENDORS = ["intel_vtx", "amd_svm"]
END = "mov al, 0\nout 0xf4, al\nhlt"
GUEST_PML4, GUEST_PDPT, GUEST_PD, GUEST_PT = 0x40_0000, 0x40_1000, 0x40_2000, 0x40_3000
WINDOW = 0x80_0000  # VA of the 4 KiB-mapped window: PT[i] maps WINDOW + i * 4 KiB
FRAME_A, FRAME_B = 0x60_0000, 0x60_2000  # guest-physical pages the window points at
P, RW, US, A, D, PS, G = 1, 2, 4, 0x20, 0x40, 0x80, 0x100


@pytest.fixture(params=VENDORS)
def arch(request):
    return request.param


@pytest.fixture(params=["nested", "shadow"])
def paging(request):
    """The stage-1 rules hold whichever way the VMM virtualizes memory (EPT / NPT, or its own
    shadow page tables: plugins/x86/shadow.py)."""
    return request.param


def paging_on(pt_entries: dict[int, int]) -> str:
    """Guest instructions building the tables and loading CR3 (CR4.PAE and EFER.LME are
    already set by the 64-bit boot state)."""
    lines = [f"mov rdi, {GUEST_PML4:#x}", "xor eax, eax", "mov ecx, 0x800", "rep stosq",  # 4 tables
             f"mov qword ptr [{GUEST_PML4:#x}], {GUEST_PDPT | P | RW | US:#x}",
             f"mov qword ptr [{GUEST_PDPT:#x}], {GUEST_PD | P | RW | US:#x}"]
    for i in range(4):  # 0-8 MiB identity, 2 MiB pages (code, stack, data, IDT, these tables)
        lines.append(f"mov qword ptr [{GUEST_PD + 8 * i:#x}], {(i << 21) | P | RW | US | PS:#x}")
    lines.append(f"mov qword ptr [{GUEST_PD + 8 * (WINDOW >> 21):#x}], {GUEST_PT | P | RW | US:#x}")
    for index, value in pt_entries.items():
        lines += [f"mov rax, {value:#x}", f"mov [{GUEST_PT + 8 * index:#x}], rax"]
    lines += [f"mov rax, {GUEST_PML4:#x}", "mov cr3, rax"]
    return "\n".join(lines)


# A #PF handler that stores the error code at X86_DATA and CR2 at X86_DATA + 8, then ends.
PF_HANDLER = f"""pf:
        pop rax
        mov [{X86_DATA:#x}], rax
        mov rax, cr2
        mov [{X86_DATA + 8:#x}], rax
        {END}"""
# After paging_on: the identity-mapped 0-8 MiB made supervisor-only (as a kernel maps itself),
# the TLB flushed; the window's pages keep their own U/S.
SUPERVISOR_KERNEL = f"""mov rcx, 4
        mov rdi, {GUEST_PD:#x}
    kernel:
        and qword ptr [rdi], {~US & 0xFFFF_FFFF_FFFF_FFFF:#x}
        add rdi, 8
        loop kernel
        mov rax, cr3
        mov cr3, rax"""


def boot(make_vm, arch, src, paging="nested", **kw):
    if paging != "nested":
        kw["paging"] = paging
    vm = make_vm(arch, **kw)
    vm.load(x86_64(f"mov rsp, {X86_STACK}\n{src}"))
    return vm


def u64(vm, gpa):
    return vm.memory.read_u64(gpa)


# -- the VMM's side: stage-2 tables in host memory -------------------------------------------

class Stage2:
    """The VM's stage-2 tables as a VMM edits them: split the 2 MiB page holding ``gpa`` into
    4 KiB pages, then change single leaves (EPT: R/W/X in bits 2:0; NPT: P/RW/US)."""

    def __init__(self, vm):
        self.vm = vm
        self.intel = vm.arch.name == "intel_vtx"
        self.root = vm.arch._stage2_root
        self.spare = vm.arch.hv_area + STAGE2_AREA + 0x10_0000  # free pages in the hypervisor area
        self.full = 0x7 if self.intel else P | RW | US
        self.leaf_bits = 0x7 | 6 << 3 if self.intel else P | RW | US

    def _entry_addr(self, table, gpa, level):
        return table + ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) * 8

    def pde_addr(self, gpa):
        host = self.vm.host
        pdpt = struct.unpack_from("<Q", host.view, self._entry_addr(self.root, gpa, 4))[0] & ~0xFFF & ((1 << 52) - 1)
        pd = struct.unpack_from("<Q", host.view, self._entry_addr(pdpt, gpa, 3))[0] & ~0xFFF & ((1 << 52) - 1)
        return self._entry_addr(pd, gpa, 2)

    def split(self, gpa):
        host = self.vm.host
        pde_at = self.pde_addr(gpa)
        pde = struct.unpack_from("<Q", host.view, pde_at)[0]
        base = pde & ~0x1F_FFFF & ((1 << 52) - 1)
        pt = self.spare
        self.spare += 0x1000
        for i in range(512):
            struct.pack_into("<Q", host.view, pt + 8 * i, base + (i << 12) | self.leaf_bits)
        struct.pack_into("<Q", host.view, pde_at, pt | self.full)
        self.pt = pt
        self.pt_gpa_base = gpa & ~0x1F_FFFF

    def leaf_addr(self, gpa):
        return self.pt + ((gpa - self.pt_gpa_base) >> 12) * 8

    def set_leaf(self, gpa, value):
        struct.pack_into("<Q", self.vm.host.view, self.leaf_addr(gpa), value)

    def leaf(self, gpa):
        return struct.unpack_from("<Q", self.vm.host.view, self.leaf_addr(gpa))[0]

    def hpa(self, gpa):
        return self.vm.memory.translate(gpa)

    def invalidate(self, vcpu):
        """INVEPT single-context (SDM 31, INVEPT) or TLB_CONTROL = 3 at the next VMRUN."""
        if self.intel:
            from hvsim.plugins.intel_vtx.vmcs import Field

            assert vcpu.context.vmx.invept(1, vcpu.context.vmcs.values[Field.EPT_POINTER]).ok
        else:
            vcpu.context.vmcb.write("TLB_CONTROL", 3)


class OnHalt:
    """A VMM that runs ``action(vcpu)`` at each HLT exit and resumes the guest after the HLT."""

    def __init__(self, *actions):
        self.actions = list(actions)

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def on_hlt(vcpu, exit):
            if self.actions:
                self.actions.pop(0)(vcpu)
            else:
                vm.crash("unexpected HLT")

        registry.add(ExitKind.HALT, on_hlt)


# -- stage 1: the guest's own tables -------------------------------------------------------------

def test_the_walk_sets_accessed_on_reads_and_dirty_on_writes(make_vm, arch, paging):
    """SDM 4.8: the processor sets A in every entry it uses and D in the leaf it writes through."""
    vm = boot(make_vm, arch, paging=paging, src=f"""
        {paging_on({0: FRAME_A | P | RW, 1: FRAME_B | P | RW})}
        mov rax, [{WINDOW:#x}]
        mov qword ptr [{WINDOW + 0x1008:#x}], 0x77
        mov rax, [{GUEST_PT:#x}]
        mov [{X86_DATA:#x}], rax
        mov rax, [{GUEST_PT + 8:#x}]
        mov [{X86_DATA + 8:#x}], rax
        {END}""")
    assert vm.run(timeout=10).status == 1
    read_pte, written_pte = u64(vm, X86_DATA), u64(vm, X86_DATA + 8)
    assert read_pte & (A | D) == A
    assert written_pte & (A | D) == A | D
    assert u64(vm, GUEST_PDPT) & A and u64(vm, GUEST_PML4) & A
    assert u64(vm, FRAME_B + 8) == 0x77


def test_a_changed_pte_is_not_seen_until_invlpg(make_vm, arch, paging):
    """SDM 4.10.4.2: software must invalidate after changing a paging-structure entry; until
    then the processor may (and under nested paging here does) keep using the cached
    translation. Under shadow paging the guest's page table is write-protected: the PTE write
    is a #PF exit, the VMM drops the shadow entry derived from it (and the TLB's copy, as KVM
    does), so the guest sees the new page even before its INVLPG, which the SDM allows."""
    vm = boot(make_vm, arch, paging=paging, src=f"""
        mov qword ptr [{FRAME_A:#x}], 0x1111
        mov qword ptr [{FRAME_B:#x}], 0x2222
        {paging_on({0: FRAME_A | P | RW})}
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA:#x}], rax
        mov qword ptr [{GUEST_PT:#x}], {FRAME_B | P | RW:#x}
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA + 8:#x}], rax
        mov rbx, {WINDOW:#x}
        invlpg [rbx]
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA + 16:#x}], rax
        {END}""")
    assert vm.run(timeout=10).status == 1
    stale = 0x1111 if paging == "nested" else 0x2222
    assert [u64(vm, X86_DATA + 8 * i) for i in range(3)] == [0x1111, stale, 0x2222]
    if paging == "shadow":
        assert vm.vcpus[0].mmu.shadow.state.pt_writes == 1


def test_mov_cr3_flushes_non_global_translations_but_keeps_global_ones(make_vm, arch):
    """SDM 4.10.4.1: MOV to CR3 invalidates the current PCID's non-global TLB entries; with
    CR4.PGE, entries for pages with G set survive it (INVLPG still removes them)."""
    vm = boot(make_vm, arch, f"""
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
        mov rax, cr3
        mov cr3, rax
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA:#x}], rax
        mov rax, [{WINDOW + 0x1000:#x}]
        mov [{X86_DATA + 8:#x}], rax
        mov rbx, {WINDOW + 0x1000:#x}
        invlpg [rbx]
        mov rax, [{WINDOW + 0x1000:#x}]
        mov [{X86_DATA + 16:#x}], rax
        {END}""")
    assert vm.run(timeout=10).status == 1
    assert [u64(vm, X86_DATA + 8 * i) for i in range(3)] == [0x2222, 0x1111, 0x2222]


def test_a_page_fault_has_the_exact_cr2_and_error_code(make_vm, arch, paging, recorder):
    """SDM 4.7: CR2 is the faulting linear address and the error code says why (here: a write
    to a present read-only page from CPL 0 with CR0.WP set: P|W). With EPT/NPT none of MOV CR3,
    INVLPG or #PF exits (KVM's configuration); with shadow paging all three do, and the VMM
    reflects the guest's own fault with the guest's error code and CR2."""
    vm = boot(make_vm, arch, paging=paging, src=f"""
        {x86_idt_setup({14: 'pf'})}
        {paging_on({0: FRAME_A | P})}
        mov rax, cr0
        or eax, 0x10000
        mov cr0, rax
        mov rbx, {WINDOW:#x}
        invlpg [rbx]
        mov qword ptr [rbx + 0x123], 5
        {END}
    {PF_HANDLER}""")
    assert vm.run(timeout=10).status == 1
    assert u64(vm, X86_DATA) == 0x3 and u64(vm, X86_DATA + 8) == WINDOW + 0x123
    kinds = {e.kind for e in recorder.exits}
    if paging == "nested":
        assert kinds <= {ExitKind.PORT_IO}, kinds
    else:
        assert {ExitKind.EXCEPTION, ExitKind.INSTRUCTION} <= kinds


# -- stage 2: EPT violations and NPFs ----------------------------------------------------------------

def test_a_write_to_a_read_only_stage2_page_exits_with_the_manuals_record(make_vm, arch, hvsim_pm, recorder):
    """EPT violation (SDM Table 28-7: write, readable|executable, linear address valid and the
    final translation) or NPF (APM 15.25.6: P|RW|US with bit 32); the VMM makes the page
    writable and the guest's write completes."""
    fixed, in_memory = [], []

    class MakeWritable:
        @hookimpl
        def hvsim_exit_handlers(self, vm, registry):
            def on_fault(vcpu, exit):
                s2.set_leaf(FRAME_A, s2.leaf(FRAME_A) | 2)
                fixed.append(exit)
                in_memory.append(vcpu.context.vmcb.read("EXITINFO2") if arch == "amd_svm"
                                 else vcpu.context.vmcs.values[0x6400])  # EXIT_QUALIFICATION

            registry.add(ExitKind.STAGE2_FAULT, on_fault)

    hvsim_pm.register(MakeWritable())
    vm = boot(make_vm, arch, f"""
        {paging_on({0: FRAME_A | P | RW})}
        mov rax, [{WINDOW + 0x40:#x}]
        mov qword ptr [{WINDOW + 0x48:#x}], 0x99
        {END}""")
    s2 = Stage2(vm)
    s2.split(FRAME_A)
    s2.set_leaf(FRAME_A, s2.leaf(FRAME_A) & ~2)
    assert vm.run(timeout=10).status == 1
    (exit,) = fixed
    raw = exit.raw
    if arch == "intel_vtx":
        assert raw.EXIT_REASON == 48
        assert raw.EXIT_QUALIFICATION == 0x2 | 0x8 | 0x20 | 0x80 | 0x100
        assert raw.GUEST_PHYSICAL_ADDRESS == FRAME_A + 0x48 and raw.GUEST_LINEAR_ADDRESS == WINDOW + 0x48
        assert in_memory == [raw.EXIT_QUALIFICATION]  # what the VMM's VMREAD would see
    else:
        assert raw.EXITCODE == 0x400
        assert raw.EXITINFO1 == 1 << 32 | 0x7 and raw.EXITINFO2 == FRAME_A + 0x48
        assert in_memory == [FRAME_A + 0x48]  # the VMCB's bytes at the #VMEXIT
    assert u64(vm, FRAME_A + 0x48) == 0x99
    assert [e.kind for e in recorder.exits].count(ExitKind.STAGE2_FAULT) == 1


def test_the_walk_itself_faulting_at_stage2_is_a_paging_structure_access(make_vm, arch, hvsim_pm):
    """Unmap the page table's page at stage 2 after the guest built its tables (a HLT exit in
    between): the next walk's read of the PTE faults with bit 8 clear (EPT) / bit 33 (NPF)."""
    seen = []

    class Vmm:
        @hookimpl
        def hvsim_exit_handlers(self, vm, registry):
            def on_fault(vcpu, exit):
                s2.set_leaf(GUEST_PT, saved)
                seen.append(exit.raw)

            registry.add(ExitKind.STAGE2_FAULT, on_fault)

    def unmap(vcpu):
        s2.set_leaf(GUEST_PT, 0)
        s2.invalidate(vcpu)

    hvsim_pm.register(Vmm())
    hvsim_pm.register(OnHalt(unmap))
    vm = boot(make_vm, arch, f"""
        mov qword ptr [{FRAME_A + 0x10:#x}], 0x4242
        {paging_on({2: FRAME_A | P | RW})}
        hlt
        mov rax, [{WINDOW + 0x2010:#x}]
        mov [{X86_DATA:#x}], rax
        {END}""")
    s2 = Stage2(vm)
    s2.split(GUEST_PT)
    saved = s2.leaf(GUEST_PT)
    assert vm.run(timeout=10).status == 1
    assert u64(vm, X86_DATA) == 0x4242
    (raw,) = seen
    pte = GUEST_PT + 2 * 8
    if arch == "intel_vtx":
        # a read of a not-present entry (EPT A/D flags off), linear address valid, bit 8 clear
        assert raw.EXIT_QUALIFICATION == 0x1 | 0x80
        assert raw.GUEST_PHYSICAL_ADDRESS == pte and raw.GUEST_LINEAR_ADDRESS == WINDOW + 0x2010
    else:
        # a user write (guest table accesses), not present, bit 33
        assert raw.EXITINFO1 == 1 << 33 | 0x6 and raw.EXITINFO2 == pte


@pytest.mark.parametrize("clear,set_,cause", [
    (0x7, 0x2, "write permission without read"),  # bits 2:0 = 010b
    *((0x38, t << 3, f"reserved memory type {t}") for t in (2, 3, 7))])  # Table 29-6
def test_an_ept_leaf_the_processor_cannot_use_is_a_misconfiguration(make_vm, recorder, clear, set_, cause):
    """SDM 29.3.3.1: write without read, or a reserved memory type (2, 3, 7), in the leaf is an
    EPT misconfiguration (exit reason 49) at the access, not a violation; the exit reports the
    guest-physical address (also in the VMCS) and hvsim names the cause."""
    vm = boot(make_vm, "intel_vtx", f"""
        {paging_on({0: FRAME_A | P | RW})}
        mov rax, [{WINDOW:#x}]
        {END}""")
    s2 = Stage2(vm)
    s2.split(FRAME_A)
    s2.set_leaf(FRAME_A, (s2.leaf(FRAME_A) & ~clear) | set_)
    result = vm.run(timeout=10)
    assert result.status == 4 and "EPT_MISCONFIG" in result.reason
    (exit,) = recorder.of(ExitKind.STAGE2_FAULT)
    assert exit.raw.EXIT_REASON == 49 and exit.raw.GUEST_PHYSICAL_ADDRESS == FRAME_A
    assert vm.vcpus[0].context.vmcs.values[0x2400] == FRAME_A  # GUEST_PHYSICAL_ADDRESS
    assert cause in exit.detail


def test_an_ept_1_gib_page_maps_the_guest_physical_gigabyte(make_vm):
    """SDM 29.3.2 / Table 29-4: an EPT PDPTE with bit 7 maps a 1 GiB page (IA32_VMX_EPT_VPID_CAP
    bit 17); the VMM replaces the identity tables' first PDPTE by one, and the guest's walk and
    its data go through it."""
    from hvsim.plugins.intel_vtx import msrs

    assert msrs.HVSIM_EPT_VPID_CAP >> 17 & 1
    vm = boot(make_vm, "intel_vtx", f"""
        mov qword ptr [{FRAME_A + 8:#x}], 0x77
        {paging_on({0: FRAME_A | P | RW})}
        mov rax, [{WINDOW + 8:#x}]
        mov [{X86_DATA:#x}], rax
        {END}""")
    s2 = Stage2(vm)
    base = vm.memory.translate(0)
    assert base % (1 << 30) == 0
    pdpt = struct.unpack_from("<Q", vm.host.view, s2.root)[0] & ~0xFFF & ((1 << 52) - 1)
    struct.pack_into("<Q", vm.host.view, pdpt, base | 0x7 | 6 << 3 | 1 << 7)  # RWX, WB, PS
    assert vm.run(timeout=10).status == 1
    assert u64(vm, X86_DATA) == 0x77
    trace = vm.vcpus[0].trace_translation(WINDOW + 8)
    assert [s.level for s in trace.stage2] == [4, 3] and "PS" in trace.stage2[1].flags  # stage 2 ends at the PDPTE


def test_ept_accessed_and_dirty_flags_are_set_when_the_eptp_enables_them(make_vm):
    """SDM 29.3.5: with EPTP bit 6 the processor sets bit 8 (accessed) in the EPT entries it
    uses and bit 9 (dirty) in the leaf of a write."""
    from hvsim.plugins.intel_vtx.vmcs import Field

    vm = boot(make_vm, "intel_vtx", f"""
        {paging_on({0: FRAME_A | P | RW, 1: FRAME_B | P | RW})}
        mov rax, [{WINDOW:#x}]
        mov qword ptr [{WINDOW + 0x1000:#x}], 1
        {END}""")
    s2 = Stage2(vm)
    s2.split(FRAME_A)
    ctx = vm.vcpus[0].context
    assert ctx.vmx.vmwrite(Field.EPT_POINTER, ctx.vmcs.values[Field.EPT_POINTER] | 1 << 6).ok
    assert vm.run(timeout=10).status == 1
    assert s2.leaf(FRAME_A) & 0x300 == 0x100  # read: accessed only
    assert s2.leaf(FRAME_B) & 0x300 == 0x300  # written: accessed and dirty


def test_a_stage2_remap_is_seen_only_after_the_vmm_invalidates(make_vm, arch, hvsim_pm):
    """A VMM that changes a stage-2 entry must invalidate (INVEPT, SDM 29.4.3.1; TLB_CONTROL,
    APM 15.16.1): the guest keeps the old frame until it does."""
    def remap(vcpu):
        s2.set_leaf(FRAME_A, s2.hpa(FRAME_B) | s2.leaf_bits)

    hvsim_pm.register(OnHalt(remap, lambda vcpu: s2.invalidate(vcpu)))
    vm = boot(make_vm, arch, f"""
        mov qword ptr [{FRAME_A:#x}], 0x1111
        mov qword ptr [{FRAME_B:#x}], 0x2222
        {paging_on({0: FRAME_A | P | RW})}
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA:#x}], rax
        hlt
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA + 8:#x}], rax
        hlt
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA + 16:#x}], rax
        {END}""")
    s2 = Stage2(vm)
    s2.split(FRAME_A)
    assert vm.run(timeout=10).status == 1
    assert [u64(vm, X86_DATA + 8 * i) for i in range(3)] == [0x1111, 0x1111, 0x2222]


def test_without_vpid_every_vm_entry_flushes_the_guests_translations(hvsim_pm):
    """SDM 29.4.3.3: with "enable VPID" clear, VM entries invalidate the VPID-0000H mappings, so
    a guest PTE change (no INVLPG) is seen after the next VM exit and entry; with a VPID it is
    not."""
    from hvsim.plugins.intel_vtx import msrs
    from hvsim.plugins.intel_vtx.vmcs import Field

    hvsim_pm.register(OnHalt(lambda vcpu: None, lambda vcpu: None))
    guest = x86_64(f"""mov rsp, {X86_STACK}
        mov qword ptr [{FRAME_A:#x}], 0x1111
        mov qword ptr [{FRAME_B:#x}], 0x2222
        {paging_on({0: FRAME_A | P | RW})}
        mov rax, [{WINDOW:#x}]
        mov qword ptr [{GUEST_PT:#x}], {FRAME_B | P | RW:#x}
        hlt
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA:#x}], rax
        {END}""")
    seen = {}
    for vpid in (True, False):
        vm = VM("intel_vtx", mem="32M", pm=hvsim_pm)
        vm.load(guest)
        if not vpid:
            ctx = vm.vcpus[0].context
            proc2 = ctx.vmcs.values[Field.SECONDARY_VM_EXEC_CONTROL]
            assert ctx.vmx.vmwrite(Field.SECONDARY_VM_EXEC_CONTROL, proc2 & ~msrs.SECONDARY_EXEC_ENABLE_VPID).ok
        assert vm.run(timeout=10).status == 1
        seen[vpid] = u64(vm, X86_DATA)
    assert seen == {True: 0x1111, False: 0x2222}


# -- isolation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["neighbour's RAM", "a huge address", "its page tables there"])
def test_a_guest_cannot_reach_its_neighbours_memory_through_its_own_page_tables(arch, where, paging):
    """Two VMs on one host memory: VM A's guest maps the guest-physical address where VM B's RAM
    lies in host memory (or a huge one, or puts its page tables there) and writes; stage 2 (or,
    under shadow paging, the VMM's memory slots) maps only A's RAM, so the access is a fault
    that ends A's run with one line, and B's memory is untouched."""
    host = HostMemory(2 * ((32 << 20) + HV_AREA))
    a = VM(arch, mem="32M", host=host, strict_mmio=True, **({"paging": paging} if paging != "nested" else {}))
    b = VM(arch, mem="32M", host=host)
    b_hpa = b.memory.translate(0)
    b.memory.write(0, b"B" * 0x10000)
    if where == "its page tables there":
        attack = f"mov rax, {b_hpa:#x}\nmov cr3, rax\nmov qword ptr [{WINDOW:#x}], 0x5a5a"
    else:
        target = b_hpa + 0x1000 if where == "neighbour's RAM" else 1 << 39
        attack = f"{paging_on({0: target | P | RW})}\nmov qword ptr [{WINDOW + 8:#x}], 0x5a5a"
    a.load(x86_64(f"mov rsp, {X86_STACK}\n{attack}\n{END}"))
    before = host.read(b_hpa, 32 << 20)
    result = a.run(timeout=10)
    assert result.status == 4 and "no RAM or device backs" in result.reason
    assert host.read(b_hpa, 32 << 20) == before


# -- tools: dirty logging and the walk printer -------------------------------------------------------

def test_the_dirty_log_reports_exactly_the_pages_written_since_the_last_collect(make_vm, arch, hvsim_pm, paging):
    """vm.dirty_log (KVM_GET_DIRTY_LOG's job): pages only read are not reported, the processor's
    own accessed/dirty updates in the guest's page tables are; after a collect, only pages
    written again are. The same pages under shadow paging, where the VMM grants shadow write
    permission only on a write and counts its own A/D updates; FRAME_B + 0x1000, written before
    logging starts, loses its write permission then, so its later write is seen."""
    first: list[int] = []
    hvsim_pm.register(OnHalt(lambda vcpu: vcpu.vm.dirty_log.start(),
                             lambda vcpu: first.extend(vcpu.vm.dirty_log.collect())))
    vm = boot(make_vm, arch, paging=paging, src=f"""
        {paging_on({0: FRAME_A | P | RW, 1: FRAME_B | P | RW, 2: (FRAME_B + 0x1000) | P | RW})}
        mov qword ptr [{WINDOW + 0x2000:#x}], 9
        hlt
        mov rax, [{WINDOW:#x}]
        mov qword ptr [{WINDOW + 0x1010:#x}], 1
        mov qword ptr [{WINDOW + 0x2ff8:#x}], 2
        hlt
        mov qword ptr [{WINDOW + 0x1020:#x}], 3
        mov rax, [{WINDOW + 0x2ff8:#x}]
        {END}""")
    assert vm.run(timeout=10).status == 1
    # FRAME_A was only read; the walk set accessed bits in the window's PTEs (the PDE's was
    # already set by the write before logging)
    assert sorted(first) == [GUEST_PT, FRAME_B, FRAME_B + 0x1000]
    assert vm.dirty_log.collect() == [FRAME_B]


def test_hvsim_translate_prints_both_stages(tmp_path, arch, capsys):
    from hvsim.core.cli import main

    image = tmp_path / "guest.bin"
    image.write_bytes(x86_64(f"mov rsp, {X86_STACK}\n{paging_on({3: FRAME_A | P | RW})}\n{END}"))
    assert main(["translate", str(image), hex(WINDOW + 0x3abc), "--arch", arch, "--mem", "32M"]) == 0
    out = capsys.readouterr().out
    stage2 = "EPT" if arch == "intel_vtx" else "NPT"
    assert f"stage 2 = {stage2}" in out and f"{stage2} PML4E" in out
    assert f"GVA {WINDOW + 0x3abc:#x} -> GPA {FRAME_A + 0xabc:#x} -> HPA {FRAME_A + 0xabc:#x}" in out
    assert main(["translate", str(image), hex(WINDOW + 0x5000), "--arch", arch, "--mem", "32M", "--json"]) == 2
    import json

    captured = capsys.readouterr()
    assert captured.err.strip() == f"hvsim: GVA {WINDOW + 0x5000:#x} does not translate on vCPU 0: #PF: PTE not present"
    doc = json.loads(captured.out)
    assert doc["fault"] == "#PF: PTE not present" and [s["level"] for s in doc["stage1"]] == ["PML4E", "PDPTE", "PDE", "PTE"]
    assert doc["stage1"][3]["gpa"] == GUEST_PT + 5 * 8 and doc["stage1"][3]["stage2"]


def test_shadow_paging_exits_where_nested_paging_does_not(make_vm, arch):
    """The same guest (touch 64 pages, reload CR3, INVLPG one) under both: nested paging takes
    no #PF, CR3 or INVLPG exit; shadow paging takes a #PF exit per page the shadow tables lack,
    and a CR3-load and an INVLPG exit; the guest's results are the same."""
    src = f"""
        {paging_on({i: (FRAME_A + i * 0x1000) | P | RW for i in range(64)})}
        mov rbx, {WINDOW:#x}
        mov ecx, 64
    touch:
        add qword ptr [rbx], rcx
        add rbx, 0x1000
        dec ecx
        jnz touch
        mov rax, cr3
        mov cr3, rax
        mov rbx, {WINDOW:#x}
        invlpg [rbx]
        add qword ptr [rbx], 1
        {END}"""
    names = {"intel_vtx": ("EXIT_REASON_IO_INSTRUCTION", "EXIT_REASON_EXCEPTION_NMI", "EXIT_REASON_CR_ACCESS",
                           "EXIT_REASON_INVLPG"),
             "amd_svm": ("VMEXIT_IOIO", "VMEXIT_EXCP14", "VMEXIT_CR3_WRITE", "VMEXIT_INVLPG")}[arch]
    io, pf, cr3, invlpg = names
    counts, memory = {}, {}
    for paging in ("nested", "shadow"):
        vm = boot(make_vm, arch, paging=paging, src=src)
        assert vm.run(timeout=10).status == 1
        counts[paging] = vm.stats.counts()
        memory[paging] = vm.memory.read(FRAME_A, 64 * 0x1000)
    assert memory["nested"] == memory["shadow"] and u64(vm, FRAME_A) == 65
    assert counts["nested"] == {io: 1}
    shadow = counts["shadow"]
    assert shadow[pf] >= 64 and shadow[cr3] == 2 and shadow[invlpg] == 1  # paging_on's MOV CR3 and the reload


# -- the other paging modes, over stage 2 ------------------------------------------------------------

def _multiboot(src32: str) -> bytes:
    from test_x86_platform import multiboot_kernel

    return multiboot_kernel(src32)


@pytest.mark.parametrize("mode", ["32-bit", "PAE"])
def test_32_bit_and_pae_guest_paging_translate_through_stage2(make_vm, arch, mode):
    """A Multiboot kernel (32-bit, paging off) turns on 32-bit paging (a 4 MiB PSE page and a
    4 KiB page table, SDM 4.3) or PAE paging (SDM 4.4) itself and reads through the window."""
    pd, pt, pdpt = 0x40_0000, 0x40_1000, 0x40_2000
    if mode == "32-bit":
        tables = f"""
            mov dword ptr [{pd:#x}], 0x83
            mov dword ptr [{pd + 4:#x}], {0x40_0000 | 0x83:#x}
            mov dword ptr [{pd + 8:#x}], {pt | 3:#x}
            mov dword ptr [{pt + 4:#x}], {FRAME_A | 3:#x}
            mov eax, cr4
            or eax, 0x10
            mov cr4, eax
            mov eax, {pd:#x}"""
        window = 0x80_1000  # PDE 2, PTE 1
    else:
        tables = f"""
            mov dword ptr [{pdpt:#x}], {pd | 1:#x}
            mov dword ptr [{pd:#x}], 0x83
            mov dword ptr [{pd + 8:#x}], {0x20_0000 | 0x83:#x}
            mov dword ptr [{pd + 16:#x}], {0x40_0000 | 0x83:#x}
            mov dword ptr [{pd + 32:#x}], {pt | 3:#x}
            mov dword ptr [{pt + 8:#x}], {FRAME_A | 3:#x}
            mov eax, cr4
            or eax, 0x20
            mov cr4, eax
            mov eax, {pdpt:#x}"""
        window = 0x80_1000  # PDE 4 (8 MiB / 2 MiB), PTE 1
    vm = make_vm(arch)
    vm.load(_multiboot(f"""
        mov dword ptr [{FRAME_A + 0x10:#x}], 0x600dcafe
        {tables}
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        mov eax, [{window + 0x10:#x}]
        mov [{X86_DATA:#x}], eax
        {END}"""))
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read_u32(X86_DATA) == 0x600dcafe


def test_a_5_level_eptp_walks_five_levels(make_vm):
    """SDM 29.3.2: with page-walk length 5 (EPTP bits 5:3 = 4) the walk starts at a PML5 table."""
    from hvsim.plugins.intel_vtx.vmcs import Field

    vm = boot(make_vm, "intel_vtx", f"""
        {paging_on({0: FRAME_A | P | RW})}
        mov qword ptr [{WINDOW + 8:#x}], 0x55
        {END}""")
    ctx = vm.vcpus[0].context
    pml4 = ctx.vmcs.values[Field.EPT_POINTER] & ~0xFFF
    pml5 = vm.arch.hv_area + STAGE2_AREA + 0x18_0000
    vm.host.write(pml5, (pml4 | 7).to_bytes(8, "little") + bytes(0xFF8))
    assert ctx.vmx.vmwrite(Field.EPT_POINTER, pml5 | 6 | 4 << 3).ok
    assert vm.run(timeout=10).status == 1
    assert u64(vm, FRAME_A + 8) == 0x55
    trace = vm.vcpus[0].trace_translation(WINDOW + 8)
    assert [w.address for w in trace.stage2][:2] == [pml5, pml4]
    assert len(trace.stage2) == 4  # PML5E, PML4E, PDPTE, then the 2 MiB PDE


def test_an_execute_only_ept_page_runs_but_cannot_be_read(make_vm, hvsim_pm):
    """SDM 29.3.3.2 with IA32_VMX_EPT_VPID_CAP bit 0: an entry with only X set is executable,
    and a data read from it is an EPT violation whose qualification says executable, not
    readable. The guest stores a RET there, the VMM (at a HLT exit) makes the page
    execute-only, the guest calls it, then reads it."""
    code_page, faults = 0x60_0000, []

    class Vmm:
        @hookimpl
        def hvsim_exit_handlers(self, vm, registry):
            def on_fault(vcpu, exit):
                faults.append(exit.raw)
                vcpu.vm.crash("read of an execute-only page")

            registry.add(ExitKind.STAGE2_FAULT, on_fault)

    def execute_only(vcpu):
        s2.set_leaf(code_page, (s2.leaf(code_page) & ~7) | 4)
        s2.invalidate(vcpu)

    hvsim_pm.register(Vmm())
    hvsim_pm.register(OnHalt(execute_only))
    vm = boot(make_vm, "intel_vtx", f"""
        mov rax, 0xc3
        mov [{code_page:#x}], rax
        hlt
        mov rax, {code_page:#x}
        call rax
        mov qword ptr [{X86_DATA:#x}], 1
        mov rax, [{code_page:#x}]
        {END}""")
    s2 = Stage2(vm)
    s2.split(code_page)
    result = vm.run(timeout=10)
    assert result.status == 4 and "execute-only" in result.reason
    assert u64(vm, X86_DATA) == 1  # the call returned: the page executed
    (raw,) = faults
    assert raw.EXIT_REASON == 48
    assert raw.EXIT_QUALIFICATION & 0x3F == 0x1 | 0x20  # a read; the translation is executable only
    assert raw.GUEST_PHYSICAL_ADDRESS == code_page


def _la57_kernel(la57: bool, address: int) -> bytes:
    """A Multiboot kernel that builds 5-level tables (PML5 entries 0 and 1 both lead to the
    identity-mapped first 8 MiB), a GDT with a 64-bit code segment, and enters IA-32e mode with
    CR4.LA57 (SDM 4.5: LA57 can only change outside IA-32e mode) or without it (then CR3 is
    the PML4), then reads ``address`` in 64-bit mode."""
    from guestlib import x86_64

    code64 = x86_64(f"""
        mov rax, {address:#x}
        mov eax, [rax]
        mov [{X86_DATA:#x}], eax
        mov rax, cr4
        mov [{X86_DATA + 8:#x}], rax
        {END}""", base=0)
    pml5, pml4, pdpt, pd, gdt = 0x40_0000, 0x40_1000, 0x40_2000, 0x40_3000, 0x40_8000
    pd_entries = "\n".join(f"mov dword ptr [{pd + 8 * i:#x}], {(i << 21) | 0x83:#x}" for i in range(4))
    return _multiboot(f"""
        mov dword ptr [{FRAME_A + 0x10:#x}], 0x600dcafe
        mov edi, {pml5:#x}
        xor eax, eax
        mov ecx, 0x1000
        rep stosd
        mov dword ptr [{pml5:#x}], {pml4 | 3:#x}
        mov dword ptr [{pml5 + 8:#x}], {pml4 | 3:#x}
        mov dword ptr [{pml4:#x}], {pdpt | 3:#x}
        mov dword ptr [{pdpt:#x}], {pd | 3:#x}
        {pd_entries}
        mov dword ptr [{gdt + 0x08:#x}], 0x0000ffff
        mov dword ptr [{gdt + 0x0c:#x}], 0x00cf9a00
        mov dword ptr [{gdt + 0x10:#x}], 0x0000ffff
        mov dword ptr [{gdt + 0x14:#x}], 0x00cf9200
        mov dword ptr [{gdt + 0x18:#x}], 0x0000ffff
        mov dword ptr [{gdt + 0x1c:#x}], 0x00af9a00
        mov word ptr [{gdt + 0x100:#x}], 0x1f
        mov dword ptr [{gdt + 0x102:#x}], {gdt:#x}
        lgdt [{gdt + 0x100:#x}]
        mov eax, cr4
        or eax, {0x1020 if la57 else 0x20:#x}
        mov cr4, eax
        mov eax, {pml5 if la57 else pml4:#x}
        mov cr3, eax
        mov ecx, 0xc0000080
        rdmsr
        or eax, 0x100
        wrmsr
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        push 0x18
        lea eax, [long64]
        push eax
        retf
    long64:
        .byte {", ".join(hex(b) for b in code64)}""")


def test_5_level_paging_reaches_linear_addresses_beyond_48_bits(make_vm, arch, paging):
    """SDM 4.5: with CR4.LA57 a 64-bit linear address has 57 significant bits and the walk
    starts at the PML5 table CR3 names; 1 << 48 (PML5 index 1) is canonical and translates,
    under EPT / NPT and under the VMM's shadow tables (5-level for such a guest) alike."""
    address = (1 << 48) + FRAME_A + 0x10
    kw = {"paging": paging} if paging != "nested" else {}
    vm = make_vm(arch, **kw)
    vm.load(_la57_kernel(True, address))
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read_u32(X86_DATA) == 0x600dcafe and vm.memory.read_u64(X86_DATA + 8) & 0x1000
    if paging == "nested":
        trace = vm.vcpus[0].trace_translation(address)
        assert [s.level for s in trace.stage1] == ["PML5E", "PML4E", "PDPTE", "PDE"]
        assert trace.stage1[0].gpa == 0x40_0000 + 8 and trace.gpa == FRAME_A + 0x10


def test_the_same_address_is_non_canonical_with_4_level_paging(make_vm, arch):
    """Without LA57, bits 63:47 of 1 << 48 are not all equal: the read is a #GP (SDM 3.3.7.1),
    here with no IDT a triple fault (VMX exit reason 2, SVM SHUTDOWN)."""
    vm = make_vm(arch)
    vm.load(_la57_kernel(False, (1 << 48) + FRAME_A + 0x10))
    result = vm.run(timeout=10)
    assert result.status != 1 and "triple fault" in result.reason
    assert vm.memory.read_u32(X86_DATA) == 0


def test_a_1_gib_page_maps_through_a_pdpte_with_ps(make_vm, arch, paging):
    """SDM 4.5.4 / Table 4-16: a PDPTE with PS = 1 maps a 1 GiB page; bits 29:0 of the linear
    address are the offset. The guest maps VA 1 GiB with a 1 GiB page at guest-physical 0."""
    vm = boot(make_vm, arch, paging=paging, src=f"""
        mov qword ptr [{FRAME_A + 0x18:#x}], 0x1234
        {paging_on({})}
        mov rax, {P | RW | PS:#x}
        mov [{GUEST_PDPT + 8:#x}], rax
        mov rax, cr3
        mov cr3, rax
        mov rax, [{(1 << 30) + FRAME_A + 0x18:#x}]
        mov [{X86_DATA:#x}], rax
        {END}""")
    assert vm.run(timeout=10).status == 1
    assert u64(vm, X86_DATA) == 0x1234 and u64(vm, GUEST_PDPT + 8) & A
    if paging == "nested":
        trace = vm.vcpus[0].trace_translation((1 << 30) + FRAME_A + 0x18)
        assert [s.level for s in trace.stage1] == ["PML4E", "PDPTE"] and trace.gpa == FRAME_A + 0x18


def test_smep_makes_a_supervisor_fetch_from_a_user_page_a_page_fault(make_vm, arch, paging):
    """SDM 4.6.1: with CR4.SMEP (offered by hvsim's CPUID.7.0:EBX[7]) a fetch at CPL 0 from a
    user-mode page faults with P | I/D (0x11), the guest's #PF handler sees it; the same page
    is readable at CPL 0 (SMAP is not offered). The kernel's own 0-8 MiB is made supervisor-only
    first, as a kernel maps itself."""
    vm = boot(make_vm, arch, paging=paging, src=f"""
        {x86_idt_setup({14: 'pf'})}
        mov byte ptr [{FRAME_A:#x}], 0xc3
        {paging_on({0: FRAME_A | P | RW | US})}
        mov al, [{WINDOW:#x}]
        mov [{X86_DATA + 16:#x}], al
        {SUPERVISOR_KERNEL}
        mov rax, cr4
        or rax, {1 << 20:#x}
        mov cr4, rax
        mov rax, {WINDOW:#x}
        call rax
        {END}
    {PF_HANDLER}""")
    assert vm.run(timeout=10).status == 1
    assert (u64(vm, X86_DATA), u64(vm, X86_DATA + 8), u64(vm, X86_DATA + 16) & 0xFF) == (0x11, WINDOW, 0xC3)


def test_a_two_stage_walk_takes_24_memory_references(make_vm, arch):
    """The composition is real (Intel SDM 29.3, AMD APM 15.25.4): each of the four guest
    paging-structure reads needs a 4-level stage-2 walk first, and so does the final address:
    4 x 4 + 4 + 4 = 24 references once the VMM maps the tables and the frame with 4 KiB
    stage-2 pages, as `hvsim translate` prints them."""
    vm = boot(make_vm, arch, f"""
        {paging_on({0: FRAME_A | P | RW})}
        mov qword ptr [{WINDOW + 8:#x}], 0x55
        {END}""")
    s2 = Stage2(vm)
    s2.split(GUEST_PML4)  # the guest's tables (4-6 MiB) and its frame (6-8 MiB) in 4 KiB pages
    s2.split(FRAME_A)
    assert vm.run(timeout=10).status == 1
    trace = vm.vcpus[0].trace_translation(WINDOW + 8)
    assert [len(t.stage2) for t in trace.stage1] == [4, 4, 4, 4] and len(trace.stage2) == 4
    assert sum(len(t.stage2) for t in trace.stage1) + len(trace.stage1) + len(trace.stage2) == 24
    assert trace.hpa == vm.memory.translate(FRAME_A + 8) and u64(vm, FRAME_A + 8) == 0x55


def test_smap_refuses_supervisor_data_accesses_to_user_pages_unless_rflags_ac(make_vm, arch, paging):
    """SDM 4.6.1: with CR4.SMAP (hvsim's CPUID.7.0:EBX[20]) a CPL 0 read of a user page is
    allowed while RFLAGS.AC = 1 (after STAC) and a #PF with P (error code 1) after CLAC. The
    kernel's own 0-8 MiB is made supervisor-only first, as a kernel maps itself."""
    vm = boot(make_vm, arch, paging=paging, src=f"""
        {x86_idt_setup({14: 'pf'})}
        mov qword ptr [{FRAME_A:#x}], 0x5a5a
        {paging_on({0: FRAME_A | P | RW | US})}
        {SUPERVISOR_KERNEL}
        mov rax, cr4
        or rax, {1 << 21:#x}
        mov cr4, rax
        stac
        mov rax, [{WINDOW:#x}]
        mov [{X86_DATA + 16:#x}], rax
        clac
        mov rax, [{WINDOW:#x}]
        {END}
    {PF_HANDLER}""")
    assert vm.run(timeout=10).status == 1
    assert (u64(vm, X86_DATA), u64(vm, X86_DATA + 8), u64(vm, X86_DATA + 16)) == (0x1, WINDOW, 0x5A5A)
