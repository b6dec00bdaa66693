"""A small VMM for the event tests: the VMCS / VMCB operations they need on either vendor, and a
scripted HLT handler that records window and event exits with the state the vendor saved."""

from __future__ import annotations

from guestlib import X86_DATA
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.plugins.amd_svm.vmcb import Event as SvmEvent
from hvsim.plugins.intel_vtx import msrs
from hvsim.plugins.intel_vtx.vmcs import Field

END = "mov al, byte ptr [{data:#x}]\nout 0xf4, al\nhlt".format(data=X86_DATA)
LABELS = X86_DATA + 0x100  # guests store label addresses here (keystone gives no symbol table)


def store_labels(*labels: str) -> str:
    return "\n".join(f"lea rax, [rip + {label}]\nmov qword ptr [{LABELS + 8 * i:#x}], rax"
                     for i, label in enumerate(labels))


def label(vm, i: int) -> int:
    return vm.memory.read_u64(LABELS + 8 * i)


class Vmm:
    """The few VMCS / VMCB operations these tests need, for either vendor."""

    def __init__(self, vcpu):
        self.vcpu = vcpu
        self.intel = vcpu.vm.arch.name == "intel_vtx"

    def read(self, field):
        result = self.vcpu.context.vmx.vmread(field)
        assert result.ok, result
        return result.value

    def write(self, field, value):
        assert self.vcpu.context.vmx.vmwrite(field, value).ok

    def set_proc(self, bits, on=True):
        proc = self.read(Field.CPU_BASED_VM_EXEC_CONTROL)
        self.write(Field.CPU_BASED_VM_EXEC_CONTROL, proc | bits if on else proc & ~bits)

    def set_pin(self, bits, on=True):
        pin = self.read(Field.PIN_BASED_VM_EXEC_CONTROL)
        self.write(Field.PIN_BASED_VM_EXEC_CONTROL, pin | bits if on else pin & ~bits)

    def rip(self):
        return self.read(Field.GUEST_RIP) if self.intel else self.vcpu.context.vmcb.read("RIP")

    def set_rip(self, value):
        if self.intel:
            self.write(Field.GUEST_RIP, value)
        else:
            self.vcpu.context.vmcb.write("RIP", value)

    def shadow(self):
        """Interruptibility as the vendor saved it: VMX bits (1 STI, 2 MOV SS); SVM 0/1."""
        if self.intel:
            return self.read(Field.GUEST_INTERRUPTIBILITY_INFO)
        return self.vcpu.context.vmcb.read("INTERRUPT_SHADOW")

    def inject_external(self, vector):
        if self.intel:
            self.write(Field.VM_ENTRY_INTR_INFO_FIELD, 1 << 31 | vector)
        else:
            self.vcpu.context.vmcb.eventinj = SvmEvent(vector, 0)

    def arm_interrupt_window(self, vector=0x20, on=True):
        """VMX: interrupt-window exiting. SVM: V_IRQ pending (V_IGN_TPR) plus the VINTR intercept,
        KVM's way to find the window (svm_set_vintr)."""
        if self.intel:
            self.set_proc(msrs.CPU_BASED_INTR_WINDOW_EXITING, on)
        else:
            vmcb = self.vcpu.context.vmcb
            vmcb.write("V_IRQ", int(on))
            vmcb.write("V_IGN_TPR", 1)
            vmcb.write("V_INTR_VECTOR", vector)
            vmcb.set_intercept("VINTR", on)


class Script:
    """A VMM whose HLT handler runs the next step of a script; window / event exits recorded."""

    def __init__(self, *on_hlt, on_window=None, on_event=None, on_exception=None):
        self.on_hlt = list(on_hlt)
        self.on_window, self.on_event, self.on_exception = on_window, on_event, on_exception
        self.windows, self.events, self.exceptions = [], [], []

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def hlt(vcpu, exit):
            if self.on_hlt:
                self.on_hlt.pop(0)(Vmm(vcpu))

        def window(vcpu, exit):
            vmm = Vmm(vcpu)
            self.windows.append((exit, vmm.rip(), vmm.shadow(), vcpu.rflags()))
            if self.on_window:
                self.on_window(vmm, exit)

        def event(vcpu, exit):
            vmm = Vmm(vcpu)
            self.events.append((exit, vmm.rip(), vmm.shadow()))
            if self.on_event:
                self.on_event(vmm, exit)

        def exception(vcpu, exit):
            vmm = Vmm(vcpu)
            self.exceptions.append((exit, vmm.rip(), vmm.shadow()))
            if self.on_exception:
                self.on_exception(vmm, exit)

        registry.add(ExitKind.HALT, hlt)
        registry.add(ExitKind.INTERRUPT_WINDOW, window)
        registry.add(ExitKind.EVENT, event)
        if self.on_exception is not None:
            registry.add(ExitKind.EXCEPTION, exception)
