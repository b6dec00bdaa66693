"""An interrupt-heavy guest and the VMMs that serve it with and without the processor's APIC
virtualization (Intel APICv, posted interrupts; AMD V_IRQ, AVIC), shared by the exit-count tests
and the ``apicv`` benchmark row.

The guest takes ``n`` interrupts. For each, it raises the task priority (a store to the APIC's
TPR at 0xFEE00080), asks a device for an interrupt (OUT to port 0x80, which the VMM turns into
vector 0x41), opens the interrupt window (STI; NOP; the JMP before it ends the translation block, so a
vector the VMM raised in the OUT's exit is looked at before the window, see docs/apicv.md), and in the handler counts it and writes the
APIC's EOI register (0xFEE000B0); then it lowers the TPR again.

Modes: ``exits``: no APIC virtualization; every APIC access is an MMIO exit (EPT violation /
NPF) the VMM emulates, and the VMM queues the interrupt as KVM's emulated local APIC would.
``apicv`` (VMX): TPR shadow, virtualize APIC accesses, virtual-interrupt delivery; the VMM sets
the vector in VIRR and RVI. ``posted`` (VMX): the same plus posted interrupts; the VMM posts.
``vintr`` (SVM): the VMM asks for the interrupt with V_IRQ, the APIC accesses still exit.
``avic`` (SVM): AVIC; the VMM sets the vector in the backing page's IRR and rings the doorbell.
"""

from __future__ import annotations

from guestlib import X86_DATA, X86_STACK, x86_64, x86_idt_setup
from hvsim import hookimpl
from hvsim.core.exits import Event, EventType, ExitKind

APIC = 0xFEE0_0000
VECTOR = 0x41
MODES = {"intel_vtx": ("exits", "apicv", "posted"), "amd_svm": ("exits", "vintr", "avic")}
BACKING = 0x40_0000  # AVIC's backing page and physical table, in guest RAM (SVM)
PHYS_TABLE = 0x40_1000


def guest(n: int) -> bytes:
    return x86_64(f"""
        mov rsp, {X86_STACK}
        mov r15, {APIC:#x}
        {x86_idt_setup({VECTOR: 'irq'})}
        cli
        hlt
        mov ecx, {n}
    again:
        mov dword ptr [r15 + 0x80], 0x20
        out 0x80, al
        jmp window
    window:
        sti
        nop
        cli
        mov dword ptr [r15 + 0x80], 0
        dec ecx
        jnz again
        mov al, 0
        out 0xf4, al
        hlt
    irq:
        inc qword ptr [{X86_DATA:#x}]
        mov dword ptr [r15 + 0xB0], 0
        iretq""")


class LoadVmm:
    """The VMM for one mode: sets the controls at the guest's first HLT, raises vector 0x41 on
    each OUT to port 0x80, emulates the APIC registers the hardware does not virtualize."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.armed = False

    def arm(self, vcpu) -> None:
        from hvsim.plugins.intel_vtx import msrs
        from hvsim.plugins.intel_vtx.vmcs import Field

        ctx, mode = vcpu.context, self.mode
        if mode in ("apicv", "posted"):
            vmx = ctx.vmx

            def update(field, bits):
                vmx.vmwrite(field, vmx.vmread(field).value | bits)

            update(Field.CPU_BASED_VM_EXEC_CONTROL, msrs.CPU_BASED_TPR_SHADOW | msrs.CPU_BASED_ACTIVATE_SECONDARY_CONTROLS)
            update(Field.SECONDARY_VM_EXEC_CONTROL, msrs.SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES
                   | msrs.SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY)
            update(Field.PIN_BASED_VM_EXEC_CONTROL, msrs.PIN_BASED_EXT_INTR_MASK)
            ctx.map_apic_access_page(APIC)
            if mode == "posted":
                update(Field.PIN_BASED_VM_EXEC_CONTROL, msrs.PIN_BASED_POSTED_INTR)
                update(Field.VM_EXIT_CONTROLS, msrs.VM_EXIT_ACK_INTR_ON_EXIT)
                vmx.vmwrite(Field.POSTED_INTR_NV, 0xF2)
                vcpu.vm.host.write(ctx.posted_descriptor, bytes(64))
                vmx.vmwrite(Field.POSTED_INTR_DESC_ADDR, ctx.posted_descriptor)
        elif mode == "vintr":
            ctx.vmcb.write("V_INTR_MASKING", 1)
        elif mode == "avic":
            vm, vmcb = vcpu.vm, ctx.vmcb
            vm.memory.write(BACKING, bytes(0x2000))
            backing = vm.memory.translate(BACKING)
            vm.memory.write(PHYS_TABLE, ((1 << 63) | (1 << 62) | backing).to_bytes(8, "little"))
            vmcb.write("AVIC_ENABLE", 1)
            vmcb.write("V_INTR_MASKING", 1)
            ctx.map_avic_bar(APIC)
            vmcb.write("AVIC_APIC_BACKING_PAGE", backing)
            vmcb.write("AVIC_PHYSICAL_TABLE", vm.memory.translate(PHYS_TABLE))

    def raise_irq(self, vcpu) -> None:
        ctx, mode = vcpu.context, self.mode
        if mode == "exits":
            vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, VECTOR))
        elif mode == "apicv":  # KVM's way without posted interrupts: VIRR and RVI
            ctx.request_virtual_interrupt(VECTOR)
        elif mode == "posted":
            ctx.post_interrupt(VECTOR)
        elif mode == "vintr":
            ctx.request_vintr(VECTOR)
        elif mode == "avic":
            ctx.avic.page.set_bit(0x200, VECTOR)
            ctx.avic_doorbell(vcpu.index)

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def hlt(vcpu, exit):
            if not self.armed:
                self.armed = True
                self.arm(vcpu)

        def mmio(vcpu, exit):  # the VMM's emulated APIC registers (TPR, EOI): nothing to model here
            if not exit.is_write:
                exit.value = 0

        registry.add(ExitKind.HALT, hlt)
        registry.add(ExitKind.MMIO, mmio)

    @hookimpl
    def hvsim_vm_exit(self, vcpu, exit):
        if exit.kind is ExitKind.PORT_IO and exit.address == 0x80:
            self.raise_irq(vcpu)


def run(vm_factory, arch: str, mode: str, n: int):
    """(vm, result) after the guest took ``n`` interrupts in ``mode``; ``vm_factory(arch, vmm)``
    builds the VM with the VMM registered."""
    vmm = LoadVmm(mode)
    vm = vm_factory(arch, vmm)
    vm.load(guest(n))
    result = vm.run(timeout=120)
    return vm, result


def recording_handlers(*vectors: int) -> str:
    """Handlers ``v<vector>`` (hex) that append their vector to the list at X86_DATA + 0x10 (a
    count, then one byte each) and EOI through the xAPIC page whose address is in R15."""
    return "\n".join(f"""v{vector:x}:
    mov rax, {X86_DATA + 0x10:#x}
    mov rbx, qword ptr [rax]
    mov byte ptr [rax + rbx + 8], {vector:#x}
    inc qword ptr [rax]
    mov dword ptr [r15 + 0xB0], 0
    iretq""" for vector in vectors) + "\n"


def delivered(vm) -> list[int]:
    """The vectors the recording handlers took, in order."""
    n = vm.memory.read_u64(X86_DATA + 0x10)
    return list(vm.memory.read(X86_DATA + 0x18, n))
