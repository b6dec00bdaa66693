"""AMD AVIC (APM Vol. 2 15.29) driven by real guest instructions: loads and stores to the APIC BAR
page at 0xFEE00000, MOV CR8, ICR writes (IPIs), under a test VMM that turns AVIC on at the
guest's first HLT. Checked: the backing page's bytes, the vector the guest's IDT handler saw,
AVIC_NOACCEL / AVIC_INCOMPLETE_IPI exits with their EXITINFO1/2, exit counts."""

from __future__ import annotations

from apicvload import delivered, recording_handlers
from guestlib import X86_DATA, X86_STACK, x86_64, x86_idt_setup
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.plugins.amd_svm.avic import PHYS_RUNNING, PHYS_VALID
from hvsim.plugins.amd_svm.svm import SvmFeatures

APIC = 0xFEE0_0000
BACKING, PHYS_TABLE, LOGICAL_TABLE, OTHER_BACKING = 0x40_0000, 0x40_1000, 0x40_2000, 0x40_3000
IRR, ISR, TPR, PPR = 0x200, 0x100, 0x80, 0xA0


def end():
    return f"mov al, byte ptr [{X86_DATA:#x}]\nout 0xf4, al\nhlt"


class AvicVmm:
    """At the first HLT: AVIC on, the APIC BAR mapped, the backing page and the tables in guest
    RAM (host-physical through the memslot); exits recorded as (EXITCODE, EXITINFO1, EXITINFO2)."""

    def __init__(self, setup=None, physical=None, on_exit=None):
        self.setup, self.on_exit = setup, on_exit
        self.physical = physical or {}  # index -> physical table entry (backing page filled in)
        self.exits, self.armed = [], False

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def hlt(vcpu, exit):
            if self.armed:
                return
            self.armed = True
            ctx, hpa = vcpu.context, vm.memory.translate
            vmcb = ctx.vmcb
            for page in (BACKING, PHYS_TABLE, LOGICAL_TABLE, OTHER_BACKING):
                vm.memory.write(page, bytes(4096))
            vmcb.write("AVIC_ENABLE", 1)
            vmcb.write("V_INTR_MASKING", 1)
            ctx.map_avic_bar(APIC)
            vmcb.write("AVIC_APIC_BACKING_PAGE", hpa(BACKING))
            table = {0: PHYS_VALID | PHYS_RUNNING | hpa(BACKING)}
            table.update(self.physical)
            for index, entry in table.items():
                vm.memory.write(PHYS_TABLE + 8 * index, entry.to_bytes(8, "little"))
            vmcb.write("AVIC_PHYSICAL_TABLE", hpa(PHYS_TABLE) | max(table))
            vmcb.write("AVIC_LOGICAL_TABLE", hpa(LOGICAL_TABLE))
            if self.setup:
                self.setup(vcpu)

        def record(vcpu, exit):
            raw = exit.raw
            self.exits.append((raw.EXITCODE, raw.EXITINFO1, raw.EXITINFO2))
            if exit.kind is ExitKind.MMIO and not exit.is_write:
                exit.value = 0x5A5A_5A5A
            if self.on_exit:
                self.on_exit(vcpu, exit)

        registry.add(ExitKind.HALT, hlt)
        registry.add(ExitKind.MMIO, record)
        registry.add(ExitKind.INSTRUCTION, record)


def run(make_vm, hvsim_pm, vmm, src):
    hvsim_pm.register(vmm)
    vm = make_vm("amd_svm")
    vm.load(x86_64(src))
    return vm, vm.run(timeout=10)


def backing(vm, offset, page=BACKING):
    return vm.memory.read_u32(page + offset)


def irr(vm, vector):
    vm.memory.write(BACKING + IRR + ((vector & 0xE0) >> 1),
                    (backing(vm, IRR + ((vector & 0xE0) >> 1)) | 1 << (vector & 31)).to_bytes(4, "little"))


def test_cpuid_8000_000a_edx_bit_13_reports_avic():
    assert SvmFeatures().cpuid_8000_000a()[3] >> 13 & 1


def test_backing_page_serves_reads_and_tpr_writes_without_exits(make_vm, hvsim_pm):
    def setup(vcpu):
        vcpu.vm.memory.write(BACKING + 0x20, (0x0100_0000).to_bytes(4, "little"))
    vmm = AvicVmm(setup)
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
        mov r15, {APIC:#x}
        hlt
        mov eax, dword ptr [r15 + 0x20]
        mov dword ptr [{X86_DATA + 8:#x}], eax
        mov dword ptr [r15 + 0x80], 0x70
        mov rax, cr8
        mov dword ptr [{X86_DATA + 12:#x}], eax
        mov byte ptr [{X86_DATA:#x}], 2
        {end()}""")
    assert result.status == 5, result
    assert vmm.exits == []
    assert vm.memory.read_u32(X86_DATA + 8) == 0x0100_0000
    assert vm.memory.read_u32(X86_DATA + 12) == 7  # CR8 is V_TPR, which the TPR write updated
    assert backing(vm, TPR) == 0x70
    assert vm.vcpus[0].context.vmcb.read("V_TPR") == 7


def test_unaccelerated_accesses_exit_with_offset_and_write_bit(make_vm, hvsim_pm):
    vmm = AvicVmm()
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
        mov r15, {APIC:#x}
        hlt
        mov eax, dword ptr [r15 + 0x390]
        mov dword ptr [{X86_DATA + 8:#x}], eax
        mov dword ptr [r15 + 0x350], 0x700
        mov dword ptr [r15 + 0x100], 1
        mov byte ptr [{X86_DATA:#x}], 2
        {end()}""")
    assert result.status == 5, result
    # current count read: fault; LVT LINT0 write: trap (the page holds it); ISR write: fault
    assert vmm.exits == [(0x402, 0x390, 0), (0x402, 1 << 32 | 0x350, 0), (0x402, 1 << 32 | 0x100, 0)]
    assert vm.memory.read_u32(X86_DATA + 8) == 0x5A5A_5A5A
    assert backing(vm, 0x350) == 0x700 and backing(vm, ISR) == 0


AVIC_IRQ_GUEST = f"""
    mov rsp, {X86_STACK}
    mov r15, {APIC:#x}
    {x86_idt_setup({0x31: 'v31', 0x51: 'v51'})}
    cli
    hlt
    {{body}}
    sti
    nop
    nop
    mov byte ptr [{X86_DATA:#x}], 1
    {end()}
{recording_handlers(0x31, 0x51)}"""


def test_irr_bits_are_delivered_by_priority_and_eoi_is_accelerated(make_vm, hvsim_pm):
    def setup(vcpu):
        irr(vcpu.vm, 0x31)
        irr(vcpu.vm, 0x51)
    vmm = AvicVmm(setup)
    vm, result = run(make_vm, hvsim_pm, vmm, AVIC_IRQ_GUEST.format(body="nop"))
    assert result.status == 3, result
    assert delivered(vm) == [0x51, 0x31]
    assert vmm.exits == []
    for unit in range(8):
        assert backing(vm, IRR + 0x10 * unit) == 0 and backing(vm, ISR + 0x10 * unit) == 0


def test_self_ipi_through_icr_is_accelerated(make_vm, hvsim_pm):
    vmm = AvicVmm()
    vm, result = run(make_vm, hvsim_pm, vmm, AVIC_IRQ_GUEST.format(
        body="mov dword ptr [r15 + 0x300], 0x40031"))
    assert result.status == 3, result
    assert delivered(vm) == [0x31]
    assert vmm.exits == []


def test_ipi_to_a_physical_id_that_is_not_running_is_an_incomplete_ipi_exit(make_vm, hvsim_pm):
    def physical(vm_memory_translate):
        return {1: PHYS_VALID | vm_memory_translate(OTHER_BACKING) | 1}

    vmm = AvicVmm()
    hvsim_pm.register(vmm)
    vm = make_vm("amd_svm")
    vmm.physical = physical(vm.memory.translate)
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        mov r15, {APIC:#x}
        hlt
        mov dword ptr [r15 + 0x310], 0x01000000
        mov dword ptr [r15 + 0x300], 0x4041
        mov dword ptr [r15 + 0x310], 0x05000000
        mov dword ptr [r15 + 0x300], 0x4042
        mov byte ptr [{X86_DATA:#x}], 2
        {end()}"""))
    result = vm.run(timeout=10)
    assert result.status == 5, result
    # destination 1: IRR set in its backing page, then the exit (target not running, index 1);
    # destination 5: beyond the table's max index: invalid target
    assert vmm.exits == [(0x401, 0x0100_0000 << 32 | 0x4041, 1 << 32 | 1),
                         (0x401, 0x0500_0000 << 32 | 0x4042, 2 << 32 | 5)]
    assert backing(vm, IRR + 0x20, OTHER_BACKING) == 1 << 1


def test_ipi_to_a_running_target_sets_its_irr_without_an_exit(make_vm, hvsim_pm):
    vmm = AvicVmm()
    hvsim_pm.register(vmm)
    vm = make_vm("amd_svm")
    vmm.physical = {1: PHYS_VALID | PHYS_RUNNING | vm.memory.translate(OTHER_BACKING) | 1}
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        mov r15, {APIC:#x}
        hlt
        mov dword ptr [r15 + 0x310], 0x01000000
        mov dword ptr [r15 + 0x300], 0x4041
        mov byte ptr [{X86_DATA:#x}], 2
        {end()}"""))
    result = vm.run(timeout=10)
    assert result.status == 5, result
    assert vmm.exits == []  # the doorbell went to host APIC ID 1
    assert backing(vm, IRR + 0x20, OTHER_BACKING) == 1 << 1


def test_lowered_cr8_lets_a_pending_irr_vector_in(make_vm, hvsim_pm):
    def setup(vcpu):
        irr(vcpu.vm, 0x51)
        vcpu.context.vmcb.write("V_TPR", 6)
    vmm = AvicVmm(setup)
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
        mov r15, {APIC:#x}
        {x86_idt_setup({0x51: 'v51'})}
        hlt
        sti
        nop
        mov byte ptr [{X86_DATA + 0x20:#x}], 1
        xor eax, eax
        mov cr8, rax
        nop
        nop
        mov byte ptr [{X86_DATA:#x}], 1
        {end()}
    v51:
        movzx eax, byte ptr [{X86_DATA + 0x20:#x}]
        mov byte ptr [{X86_DATA + 0x21:#x}], al
        mov dword ptr [r15 + 0xB0], 0
        iretq""")
    assert result.status == 3, result
    assert vm.memory.read(X86_DATA + 0x21, 1) == b"\x01"
    assert vmm.exits == []


def test_x2apic_msrs_fall_back_to_msr_intercepts(make_vm, hvsim_pm):
    from hvsim.plugins.amd_svm import iopm

    seen = []

    def setup(vcpu):
        ctx = vcpu.context
        iopm.msrpm_set(vcpu.vm.host, ctx.msrpm_pa, 0x80B, read=True, write=True)

    class Msr:
        @hookimpl
        def hvsim_exit_handlers(self, vm, registry):
            registry.add(ExitKind.SYSREG, lambda vcpu, exit: seen.append((exit.raw.EXITCODE, exit.address, exit.value)))

    hvsim_pm.register(Msr())
    vmm = AvicVmm(setup)
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
        hlt
        mov ecx, 0x80b
        xor eax, eax
        xor edx, edx
        wrmsr
        mov byte ptr [{X86_DATA:#x}], 2
        {end()}""")
    assert result.status == 5, result
    assert seen == [(0x7C, 0x80B, 0)]


def test_ipi_to_an_entry_whose_backing_page_is_outside_memory_is_invalid_backing_page(make_vm, hvsim_pm):
    vmm = AvicVmm(physical={1: PHYS_VALID | PHYS_RUNNING | (1 << 40) | 1})
    vm, result = run(make_vm, hvsim_pm, vmm, f"""
        mov rsp, {X86_STACK}
        mov r15, {APIC:#x}
        hlt
        mov dword ptr [r15 + 0x310], 0x01000000
        mov dword ptr [r15 + 0x300], 0x4041
        mov dword ptr [r15 + 0x300], 0x4541
        mov byte ptr [{X86_DATA:#x}], 2
        {end()}""")
    assert result.status == 5, result
    # a bad backing page in the table; then an SMI delivery mode, which AVIC does not accelerate
    assert vmm.exits == [(0x401, 0x0100_0000 << 32 | 0x4041, 3 << 32 | 1),
                         (0x401, 0x0100_0000 << 32 | 0x4541, 0 << 32)]
