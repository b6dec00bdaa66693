"""What the instruction-intercept tests share: booting a guest, setting a VMX control or an SVM
intercept, and a VMM plugin that records each intercepted instruction and may emulate it."""

from __future__ import annotations

from unicorn import x86_const as X

from guestlib import X86_BASE, X86_DATA, X86_STACK, x86_64, x86_idt_setup
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.plugins.intel_vtx import msrs
from hvsim.plugins.intel_vtx.vmcs import Field

END = "mov al, 0\nout 0xf4, al\nhlt"
UD_MARK = X86_DATA + 0x800  # the #UD / #GP / #DB handlers write their vector here


def boot(make_vm, arch, src, gates=None):
    """A 64-bit guest running ``src`` then ending with status 1 (0 << 1 | 1); ``gates``
    vector -> label, for handlers ``src`` defines after END."""
    vm = make_vm(arch)
    setup = x86_idt_setup(gates) if gates else ""
    vm.load(x86_64(f"mov rsp, {X86_STACK}\n{setup}\n{src}"))
    return vm


def handler(vector, skip=0):
    """An IDT handler recording ``vector`` at UD_MARK; for faults it steps the return RIP
    past the faulting instruction (``skip`` bytes)."""
    add = f"add qword ptr [rsp], {skip}\n" if skip else ""
    pop = "add rsp, 8\n" if vector in (8, 10, 11, 12, 13, 14, 17) else ""  # the error code
    return f"{pop}mov byte ptr [{UD_MARK:#x}], {vector}\n{add}iretq"


def set_controls(vcpu, proc=0, proc2=0, clear=0):
    vmx = vcpu.context.vmx
    old = vmx.vmread(Field.CPU_BASED_VM_EXEC_CONTROL).value
    assert vmx.vmwrite(Field.CPU_BASED_VM_EXEC_CONTROL, (old | proc) & ~clear).ok
    if proc2:
        old2 = vmx.vmread(Field.SECONDARY_VM_EXEC_CONTROL).value
        assert vmx.vmwrite(Field.SECONDARY_VM_EXEC_CONTROL, old2 | proc2).ok


def vmwrite(vcpu, **fields):
    vmx = vcpu.context.vmx
    for name, value in fields.items():
        result = vmx.vmwrite(getattr(Field, name), value)
        assert result.ok, (name, result)


def vmread(vcpu, name):
    return vcpu.context.vmx.vmread(getattr(Field, name)).value


class Vmm:
    """Records every INSTRUCTION exit of the test's guest code (with the guest's RIP and RBX at
    the exit) and calls ``emulate(vcpu, exit)`` if given; a truthy result means emulated (skip
    it). Exits from hvsim's loader stub (below X86_BASE: its LGDT, MOV CR) just complete."""

    def __init__(self, emulate=None):
        self.emulate = emulate
        self.seen = []

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        platform = registry.get(ExitKind.INSTRUCTION)  # hvsim's own (shadow-paging bookkeeping)

        def on_instruction(vcpu, exit):
            if vcpu.rip() >= X86_BASE:
                self.seen.append((exit, vcpu.rip(), vcpu.regs.read(X.UC_X86_REG_RBX)))
                if self.emulate is not None and self.emulate(vcpu, exit):
                    exit.value = True
                    return
            if platform is not None:
                platform(vcpu, exit)

        registry.add(ExitKind.INSTRUCTION, on_instruction)


def code(exit, arch):
    """The exit's basic reason (VMX) or EXITCODE (SVM)."""
    return exit.raw.EXIT_REASON if arch == "intel_vtx" else exit.raw.EXITCODE


__all__ = ["END", "UD_MARK", "boot", "handler", "set_controls", "vmwrite", "vmread", "Vmm", "code", "msrs",
           "X86_DATA"]
