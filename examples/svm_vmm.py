"""A small VMM written against hvsim's AMD SVM model, the way a hypervisor author would:

- hvsim's run loop sets EFER.SVME and VM_HSAVE_PA, builds the VMCB and runs VMRUN around every
  stay in the guest; this VMM edits the VMCB like any SVM hypervisor: it passes the COM1 ports
  through in the IOPM (no #VMEXIT for them), handles exits in one table keyed by the EXITCODE it
  reads from the VMCB, answers VMMCALL itself, and injects a timer interrupt through EVENTINJ
  when the guest halts; the summary prints every EXITCODE seen.

    python examples/svm_vmm.py          # needs keystone-engine (pip install -e .[test])
"""

from __future__ import annotations

from collections import Counter

from keystone import KS_ARCH_X86, KS_MODE_64, Ks
from unicorn import x86_const as X

from hvsim import hookimpl
from hvsim.core.console import Console
from hvsim.core.exits import ExitKind
from hvsim.core.plugins import PluginManager
from hvsim.core.vm import VM
from hvsim.plugins.amd_svm import iopm
from hvsim.plugins.amd_svm.exits import EXIT_CODES
from hvsim.plugins.amd_svm.vmcb import Event

GUEST = """
    mov rsp, 0x180000
    lea rax, [rip + timer]            # IDT entry 0x20: the timer handler
    mov rsi, 0x300200
    mov word ptr [rsi], ax
    mov word ptr [rsi + 2], 0x18
    mov word ptr [rsi + 4], 0x8e00
    shr rax, 16
    mov word ptr [rsi + 6], ax
    shr rax, 16
    mov dword ptr [rsi + 8], eax
    mov rax, 0x200ff0
    mov word ptr [rax], 0xfff
    mov qword ptr [rax + 2], 0x300000
    lidt [rax]
    mov dx, 0x3f8                     # COM1: passed through, no #VMEXIT
    mov al, 0x53
    out dx, al
    mov al, 0x56
    out dx, al
    mov al, 0x4d
    out dx, al
    mov al, 10
    out dx, al
    mov rax, 0x77                     # a hypercall this VMM answers
    vmmcall
    mov [0x200000], rax
    sti
    hlt
    mov al, byte ptr [0x200008]
    out 0xf4, al
    hlt
timer:
    inc qword ptr [0x200008]
    iretq
"""


class TinySvmVmm:
    def __init__(self) -> None:
        self.exitcodes: Counter[str] = Counter()

    @hookimpl
    def hvsim_vm_created(self, vm):
        self.vm = vm

    def on_vmmcall(self, vcpu, exit) -> None:
        vcpu.regs.write(X.UC_X86_REG_RAX, vcpu.regs.read(X.UC_X86_REG_RAX) * 2)

    def on_hlt(self, vcpu, exit) -> None:
        vcpu.context.vmcb.eventinj = Event(vector=0x20, type=0)  # APM 15.20: INTR, valid

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        handlers = {0x81: self.on_vmmcall, 0x78: self.on_hlt}  # VMEXIT_VMMCALL, VMEXIT_HLT

        def dispatch(kind):
            inner = registry.get(kind)

            def handle(vcpu, exit):
                code = vcpu.context.vmcb.read("EXITCODE")
                self.exitcodes[f"VMEXIT_{EXIT_CODES.get(code, hex(code))}"] += 1
                handlers.get(code, inner)(vcpu, exit)

            return handle

        for kind in (ExitKind.CPUID, ExitKind.HALT, ExitKind.PORT_IO, ExitKind.HYPERCALL, ExitKind.SYSREG):
            registry.add(kind, dispatch(kind))


def main() -> int:
    vmm = TinySvmVmm()
    pm = PluginManager()
    pm.load_entry_points()
    pm.register(vmm, name="tiny-svm-vmm")
    vm = VM("amd_svm", mem="32M", pm=pm, console=Console())
    vm.load(bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm(GUEST, 0x10_0000)[0]))
    context = vm.vcpus[0].context
    iopm.iopm_set(vm.host, context.iopm_pa, 0x3F8, intercept=False, count=8)
    result = vm.run(timeout=10)
    print(f"guest printed: {vm.console.text.strip()!r}")
    print(f"guest ended: status {result.status} ({result.reason})")
    print(f"VMMCALL 0x77 answered with {vm.memory.read_u64(0x20_0000):#x}")
    for name, count in vmm.exitcodes.most_common():
        print(f"  {name:16} {count}")
    return 0 if result.status == (1 << 1) | 1 and vm.console.text.strip() == "SVM" else 1


if __name__ == "__main__":
    raise SystemExit(main())
