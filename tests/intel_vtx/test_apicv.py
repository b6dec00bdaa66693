"""Intel APIC virtualization (SDM Vol. 3C ch. 30) driven by real guest instructions: MOV CR8,
loads and stores to the APIC-access page at 0xFEE00000, x2APIC WRMSR / RDMSR, under a test VMM
that sets the controls at the guest's first HLT. Checked: exit reasons and qualifications, the
bytes of the virtual-APIC page, RVI / SVI, the vector the guest's IDT handler saw, exit counts."""

from __future__ import annotations

import pytest

from eventvmm import Vmm
from apicvload import delivered, recording_handlers
from guestlib import X86_DATA, X86_STACK, x86_64, x86_idt_setup
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.plugins.intel_vtx import msrs
from hvsim.plugins.intel_vtx.vmcs import Field

APIC = 0xFEE0_0000
TPR_SHADOW = msrs.CPU_BASED_TPR_SHADOW
SECONDARY = msrs.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS
ACCESSES = msrs.SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES
REGVIRT = msrs.SECONDARY_EXEC_APIC_REGISTER_VIRT
VID = msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY
X2APIC = msrs.SECONDARY_EXEC_VIRTUALIZE_X2APIC_MODE
EXT_INTR = msrs.PIN_BASED_EXT_INTR_MASK
POSTED = msrs.PIN_BASED_POSTED_INTR
ACK = msrs.VM_EXIT_ACK_INTR_ON_EXIT
VIRR, VISR = 0x200, 0x100


def end(code="byte ptr [{:#x}]".format(X86_DATA)):
    return f"mov al, {code}\nout 0xf4, al\nhlt"


class ApicVmm:
    """At the guest's first HLT: the controls, the APIC-access page, optional state; every exit
    recorded as (reason, qualification); APIC-access reads answered with 0xA5A5A5A5."""

    def __init__(self, proc2=0, pin=0, setup=None, on_exit=None, on_hlt=None):
        self.proc2, self.pin, self.setup, self.on_exit, self.on_hlt = proc2, pin, setup, on_exit, on_hlt
        self.exits, self.armed = [], False

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def hlt(vcpu, exit):
            if self.armed:
                if self.on_hlt:
                    self.on_hlt(Vmm(vcpu))
                return
            self.armed = True
            vmm = Vmm(vcpu)
            vmm.set_proc(TPR_SHADOW | SECONDARY)
            vmm.write(Field.SECONDARY_VM_EXEC_CONTROL, vmm.read(Field.SECONDARY_VM_EXEC_CONTROL) | self.proc2)
            if self.proc2 & VID:
                vmm.set_pin(EXT_INTR)
            if self.pin:
                vmm.set_pin(self.pin)
                vmm.write(Field.VM_EXIT_CONTROLS, vmm.read(Field.VM_EXIT_CONTROLS) | ACK)
            if self.proc2 & ACCESSES:
                vcpu.context.map_apic_access_page(APIC)
            if self.setup:
                self.setup(vmm)

        def apic_access(vcpu, exit):
            self.exits.append((exit.raw.EXIT_REASON, exit.raw.EXIT_QUALIFICATION))
            if not exit.is_write:
                exit.value = 0xA5A5_A5A5 & ((1 << 8 * exit.size) - 1)
            if self.on_exit:
                self.on_exit(Vmm(vcpu), exit)

        def other(vcpu, exit):
            self.exits.append((exit.raw.EXIT_REASON, exit.raw.EXIT_QUALIFICATION))
            if self.on_exit:
                self.on_exit(Vmm(vcpu), exit)

        registry.add(ExitKind.HALT, hlt)
        registry.add(ExitKind.MMIO, apic_access)
        registry.add(ExitKind.INSTRUCTION, other)
        registry.add(ExitKind.STAGE2_FAULT, other)


def vapic(vcpu, offset, size=4):
    page = vcpu.context.vmcs.values[Field.VIRTUAL_APIC_PAGE_ADDR]
    return int.from_bytes(vcpu.vm.host.read(page + offset, size), "little")


def set_vapic(vcpu, offset, value):
    page = vcpu.context.vmcs.values[Field.VIRTUAL_APIC_PAGE_ADDR]
    vcpu.vm.host.write(page + offset, value.to_bytes(4, "little"))


def run(make_vm, hvsim_pm, vmm, src, timeout=10):
    hvsim_pm.register(vmm)
    vm = make_vm("intel_vtx")
    vm.load(x86_64(src))
    result = vm.run(timeout=timeout)
    return vm, result


# -- TPR shadow and reads/writes of the APIC-access page ----------------------------------------

def test_tpr_store_and_load_are_virtualized_without_an_exit(make_vm, hvsim_pm):
    vmm = ApicVmm(ACCESSES)
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
    mov r15, {APIC:#x}
        hlt
        mov dword ptr [r15 + 0x80], 0x5f
        mov eax, dword ptr [r15 + 0x80]
        mov dword ptr [{X86_DATA + 8:#x}], eax
        mov rax, cr8
        mov dword ptr [{X86_DATA + 12:#x}], eax
        mov byte ptr [{X86_DATA:#x}], 7
        {end()}""")
    assert result.status == (7 << 1) | 1, result
    assert vmm.exits == []  # both accesses virtualized (SDM 30.4.2, 30.4.3.1)
    vcpu = vm.vcpus[0]
    assert vapic(vcpu, 0x80) == 0x5f
    assert vm.memory.read_u32(X86_DATA + 8) == 0x5f and vm.memory.read_u32(X86_DATA + 12) == 5


def test_accesses_not_virtualized_are_apic_access_exits_with_offset_and_type(make_vm, hvsim_pm):
    vmm = ApicVmm(ACCESSES)  # TPR shadow only: everything but TPR exits
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
    mov r15, {APIC:#x}
        hlt
        mov eax, dword ptr [r15 + 0x20]
        mov dword ptr [{X86_DATA + 8:#x}], eax
        mov dword ptr [r15 + 0x300], 0x4030
        mov byte ptr [{X86_DATA:#x}], 9
        {end()}""")
    assert result.status == (9 << 1) | 1, result
    assert vmm.exits == [(44, 0x020 | 0 << 12), (44, 0x300 | 1 << 12)]  # linear read, linear write
    assert vm.memory.read_u32(X86_DATA + 8) == 0xA5A5_A5A5  # the VMM's answer


def test_fetch_from_the_apic_access_page_is_an_apic_access_exit_of_type_2(make_vm, hvsim_pm):
    def on_exit(vmm, exit):
        vmm.vcpu.vm.stop(3, "done")

    vmm = ApicVmm(ACCESSES, on_exit=on_exit)
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
    mov r15, {APIC:#x}
        hlt
        mov rax, {APIC + 0x40:#x}
        jmp rax""")
    assert vmm.exits == [(44, 0x040 | 2 << 12)]


def test_apic_register_virtualization_reads_the_page_and_writes_trap_with_apic_write_exits(make_vm, hvsim_pm):
    def setup(vmm):
        set_vapic(vmm.vcpu, 0x20, 0x0300_0000)  # the virtual APIC ID
    vmm = ApicVmm(ACCESSES | REGVIRT, setup=setup)
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
    mov r15, {APIC:#x}
        hlt
        mov eax, dword ptr [r15 + 0x20]
        mov dword ptr [{X86_DATA + 8:#x}], eax
        mov dword ptr [r15 + 0x350], 0x10031
        mov eax, dword ptr [r15 + 0xA0]
        mov byte ptr [{X86_DATA:#x}], 4
        {end()}""")
    assert result.status == (4 << 1) | 1, result
    assert vm.memory.read_u32(X86_DATA + 8) == 0x0300_0000
    # LVT LINT0 write: virtualized into the page, then a trap-like APIC-write exit (offset 350H);
    # PPR (0A0H) is not in the read list: APIC-access exit.
    assert vmm.exits == [(56, 0x350), (44, 0x0A0)]
    assert vapic(vm.vcpus[0], 0x350) == 0x10031


def test_tpr_write_below_threshold_without_vid_is_a_tpr_below_threshold_exit(make_vm, hvsim_pm):
    def setup(vmm):
        set_vapic(vmm.vcpu, 0x80, 0x80)
        vmm.write(Field.TPR_THRESHOLD, 6)
    vmm = ApicVmm(ACCESSES, setup=setup)
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
    mov r15, {APIC:#x}
        hlt
        mov dword ptr [r15 + 0x80], 0x70
        mov dword ptr [r15 + 0x80], 0x50
        mov byte ptr [{X86_DATA:#x}], 4
        {end()}""")
    assert result.status == (4 << 1) | 1, result
    assert vmm.exits == [(43, 0)]
    assert vapic(vm.vcpus[0], 0x80) == 0x50


# -- virtual-interrupt delivery --------------------------------------------------------------

IRQ_GUEST = f"""
    mov rsp, {X86_STACK}
    mov r15, {APIC:#x}
    {x86_idt_setup({0x31: 'v31', 0x51: 'v51'})}
    cli
    hlt
    sti
    nop
    nop
    mov byte ptr [{X86_DATA:#x}], 1
    {end()}
{recording_handlers(0x31, 0x51)}"""


def pending(*vectors):
    def setup(vmm):
        for v in vectors:
            page = vmm.vcpu.context.vmcs.values[Field.VIRTUAL_APIC_PAGE_ADDR]
            at = page + VIRR + ((v & 0xE0) >> 1)
            old = int.from_bytes(vmm.vcpu.vm.host.read(at, 4), "little")
            vmm.vcpu.vm.host.write(at, (old | 1 << (v & 31)).to_bytes(4, "little"))
        vmm.write(Field.GUEST_INTR_STATUS, max(vectors))
    return setup


def test_virtual_interrupts_are_delivered_by_priority_and_virtual_eoi_clears_svi(make_vm, hvsim_pm):
    vmm = ApicVmm(ACCESSES | VID, setup=pending(0x31, 0x51))
    vm, result = run(make_vm, hvsim_pm, vmm, IRQ_GUEST)
    assert result.status == 3, result
    assert delivered(vm) == [0x51, 0x31]  # RVI first, then the next VIRR bit
    assert vmm.exits == []  # delivery and both EOIs without an exit
    vcpu = vm.vcpus[0]
    assert vcpu.context.vmcs.values[Field.GUEST_INTR_STATUS] == 0  # RVI = SVI = 0
    assert vapic(vcpu, VIRR + 0x10) == 0 and vapic(vcpu, VIRR + 0x20) == 0
    assert vapic(vcpu, VISR + 0x10) == 0 and vapic(vcpu, VISR + 0x20) == 0


def test_vtpr_holds_back_a_virtual_interrupt_until_cr8_lowers_it(make_vm, hvsim_pm):
    def setup(vmm):
        pending(0x51)(vmm)
        set_vapic(vmm.vcpu, 0x80, 0x60)  # VTPR class 6 > class 5
    vmm = ApicVmm(ACCESSES | VID, setup=setup)
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
    mov r15, {APIC:#x}
        {x86_idt_setup({0x51: 'v51'})}
        cli
        hlt
        sti
        nop
        mov byte ptr [{X86_DATA + 0x20:#x}], 1
        xor eax, eax
        mov cr8, rax
        nop
        mov byte ptr [{X86_DATA:#x}], 1
        {end()}
    v51:
        movzx eax, byte ptr [{X86_DATA + 0x20:#x}]
        add al, 0x40
        mov byte ptr [{X86_DATA + 0x21:#x}], al
        mov dword ptr [r15 + 0xB0], 0
        iretq""")
    assert result.status == 3, result
    assert vm.memory.read(X86_DATA + 0x21, 1) == b"\x41"  # delivered after the MOV CR8, not before
    assert vmm.exits == []


def test_eoi_exit_bitmap_makes_the_virtual_eoi_an_eoi_induced_exit_with_the_vector(make_vm, hvsim_pm):
    def setup(vmm):
        pending(0x31, 0x51)(vmm)
        vmm.write(Field.EOI_EXIT_BITMAP1, 1 << (0x51 - 64))
    vmm = ApicVmm(ACCESSES | VID, setup=setup)
    vm, result = run(make_vm, hvsim_pm, vmm, IRQ_GUEST)
    assert result.status == 3, result
    assert vmm.exits == [(45, 0x51)]
    assert delivered(vm) == [0x51, 0x31]


def test_self_ipi_through_icr_is_virtualized_and_delivered(make_vm, hvsim_pm):
    vmm = ApicVmm(ACCESSES | VID)
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
    mov r15, {APIC:#x}
        {x86_idt_setup({0x31: 'v31'})}
        cli
        hlt
        mov dword ptr [r15 + 0x300], 0x40031
        sti
        nop
        mov byte ptr [{X86_DATA:#x}], 1
        {end()}
    v31:
        mov byte ptr [{X86_DATA + 0x20:#x}], 0x31
        mov dword ptr [r15 + 0xB0], 0
        iretq""")
    assert result.status == 3, result
    assert vm.memory.read(X86_DATA + 0x20, 1) == b"\x31"
    assert vmm.exits == []
    assert vapic(vm.vcpus[0], 0x300) == 0x40031


def test_an_icr_write_that_is_not_a_self_ipi_is_an_apic_write_exit(make_vm, hvsim_pm):
    vmm = ApicVmm(ACCESSES | VID)
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
    mov r15, {APIC:#x}
        hlt
        mov dword ptr [r15 + 0x300], 0x4031
        mov byte ptr [{X86_DATA:#x}], 1
        {end()}""")
    assert result.status == 3, result
    assert vmm.exits == [(56, 0x300)]


# -- x2APIC MSRs --------------------------------------------------------------------------------

def test_x2apic_tpr_eoi_and_self_ipi_msrs_are_virtualized(make_vm, hvsim_pm):
    vmm = ApicVmm(X2APIC | VID)
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
    mov r15, {APIC:#x}
        {x86_idt_setup({0x41: 'v41'})}
        cli
        hlt
        mov ecx, 0x808
        mov eax, 0x20
        xor edx, edx
        wrmsr
        rdmsr
        mov dword ptr [{X86_DATA + 8:#x}], eax
        mov ecx, 0x83f
        mov eax, 0x41
        wrmsr
        sti
        nop
        mov byte ptr [{X86_DATA:#x}], 1
        {end()}
    v41:
        mov byte ptr [{X86_DATA + 0x20:#x}], 0x41
        mov ecx, 0x80b
        xor eax, eax
        xor edx, edx
        wrmsr
        iretq""")
    assert result.status == 3, result
    assert vm.memory.read_u32(X86_DATA + 8) == 0x20
    assert vm.memory.read(X86_DATA + 0x20, 1) == b"\x41"
    assert vmm.exits == []
    assert vm.vcpus[0].context.vmcs.values[Field.GUEST_INTR_STATUS] == 0


def test_x2apic_eoi_with_a_nonzero_value_is_gp(make_vm, hvsim_pm):
    vmm = ApicVmm(X2APIC | VID)
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
    mov r15, {APIC:#x}
        {x86_idt_setup({13: 'gp'})}
        hlt
        mov ecx, 0x80b
        mov eax, 1
        xor edx, edx
        wrmsr
        mov byte ptr [{X86_DATA:#x}], 1
        {end()}
    gp:
        mov byte ptr [{X86_DATA:#x}], 13
        {end()}""")
    assert result.status == (13 << 1) | 1, result


# -- posted interrupts ------------------------------------------------------------------------------

def posted_setup(vmm):
    ctx = vmm.vcpu.context
    vmm.write(Field.POSTED_INTR_NV, 0xF2)
    desc = ctx.posted_descriptor
    vmm.vcpu.vm.host.write(desc, bytes(64))
    vmm.write(Field.POSTED_INTR_DESC_ADDR, desc)


POSTED_GUEST = f"""
    mov rsp, {X86_STACK}
    mov r15, {APIC:#x}
    {x86_idt_setup({0x51: 'v51', 0xF2: 'nv'})}
    hlt
    sti
    {{body}}
    mov byte ptr [{X86_DATA:#x}], 1
    {end()}
v51:
    mov byte ptr [{X86_DATA + 0x20:#x}], 0x51
    mov dword ptr [r15 + 0xB0], 0
    iretq
nv:
    mov byte ptr [{X86_DATA + 0x20:#x}], 0xF2
    iretq"""


def test_posted_interrupt_to_a_halted_vcpu_wakes_it_without_an_exit(make_vm, hvsim_pm):
    """The VMM leaves the guest in the HLT activity state at its second HLT exit and posts
    vector 0x51: the notification is processed right after the VM entry (no external-interrupt
    exit), and virtual-interrupt delivery wakes the guest into its handler."""
    posted = []

    def on_hlt(vmm):
        from hvsim.plugins.intel_vtx.vmm import GUEST_ACTIVITY_HLT

        vmm.write(Field.GUEST_ACTIVITY_STATE, GUEST_ACTIVITY_HLT)
        posted.append(vmm.vcpu.context.post_interrupt(0x51))

    vmm = ApicVmm(ACCESSES | VID, pin=POSTED, setup=posted_setup, on_hlt=on_hlt)
    vm, result = run(make_vm, hvsim_pm, vmm, POSTED_GUEST.format(body="hlt"))
    assert result.status == 3, result
    assert posted == [True]
    assert vm.memory.read(X86_DATA + 0x20, 1) == b"\x51"
    assert vmm.exits == []
    desc = vm.vcpus[0].context.posted_descriptor
    assert vm.host.read(desc, 33) == bytes(33)  # PIR and ON cleared by the processor
    assert vm.stats.counts().get("EXIT_REASON_EXTERNAL_INTERRUPT", 0) == 0


def test_posted_interrupt_to_a_running_vcpu_is_taken_in_the_engine(make_vm, hvsim_pm):
    """Posted from an exit the engine completes (the guest's CPUID): the notification arrives
    while the guest runs and is processed at its next boundary, without leaving the engine."""
    vmm = ApicVmm(ACCESSES | VID, pin=POSTED, setup=posted_setup)
    sent = []

    class Poster:
        @hookimpl
        def hvsim_vm_exit(self, vcpu, exit):
            if exit.kind is ExitKind.CPUID and vmm.armed and not sent:
                sent.append(vcpu.context.post_interrupt(0x51))
                sent.append(vcpu.context.post_interrupt(0x51))  # ON already set: no second IPI

    hvsim_pm.register(Poster())
    vm, result = run(make_vm, hvsim_pm, vmm, POSTED_GUEST.format(body="cpuid\n    nop\n    nop"))
    assert result.status == 3, result
    assert sent == [True, False]
    assert vm.memory.read(X86_DATA + 0x20, 1) == b"\x51"
    assert vmm.exits == []
    vcpu = vm.vcpus[0]
    assert vapic(vcpu, VIRR + 0x20) == 0 and vapic(vcpu, VISR + 0x20) == 0
    assert vcpu.context.vmcs.values[Field.GUEST_INTR_STATUS] == 0


def test_the_notification_vector_without_posted_processing_is_an_external_interrupt_exit(make_vm, hvsim_pm):
    """Same guest, "process posted interrupts" off: the notification IPI is an ordinary
    external interrupt, which exits (reason 1) with its vector (acknowledge interrupt on exit)."""
    seen = []

    def setup(vmm):
        vmm.write(Field.VM_EXIT_CONTROLS, vmm.read(Field.VM_EXIT_CONTROLS) | ACK)
        vmm.vcpu.context.post_interrupt(0x51)  # PIR, ON and the IPI: nobody processes the PIR

    class Events:
        @hookimpl
        def hvsim_exit_handlers(self, vm, registry):
            registry.add(ExitKind.EVENT, lambda vcpu, exit: seen.append((exit.raw.EXIT_REASON, exit.raw.VM_EXIT_INTR_INFO)))

    hvsim_pm.register(Events())
    vmm = ApicVmm(ACCESSES | VID, setup=lambda v: (posted_setup(v), setup(v)))
    vm, result = run(make_vm, hvsim_pm, vmm, POSTED_GUEST.format(body="nop"))
    assert result.status == 3, result
    assert seen == [(1, 1 << 31 | 0xF2)]
