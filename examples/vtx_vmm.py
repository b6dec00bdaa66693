"""A small VMM written against hvsim's Intel VT-x model, the way a hypervisor author would:

- hvsim's run loop does VMXON, VMCLEAR, VMPTRLD, the VMWRITEs of controls, host and guest
  state, VMLAUNCH and VMRESUME; this VMM handles the exits in one table keyed by the basic
  exit reason it VMREADs from the VMCS (as KVM's kvm_vmx_exit_handlers);
- CPUID exits get the VMM's own leaf 0x4000_0001; HLT exits inject a timer interrupt through the
  VM-entry interruption-information field; the summary prints every exit reason seen.

    python examples/vtx_vmm.py          # needs keystone-engine (pip install -e .[test])
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
from hvsim.plugins.intel_vtx.exits import EXIT_REASONS
from hvsim.plugins.intel_vtx.vmcs import Field

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
    mov eax, 0x40000001               # ask the hypervisor for its feature leaf
    cpuid
    mov [0x200000], ebx
    mov ecx, 3                        # wait for three timer ticks
wait:
    sti
    hlt
    cmp qword ptr [0x200008], rcx
    jne wait
    mov al, byte ptr [0x200008]
    out 0xf4, al
    hlt
timer:
    inc qword ptr [0x200008]
    iretq
"""


class TinyVmm:
    """Exit handlers in one table keyed by the VMX basic exit reason, as KVM's vmx.c has."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()
        self.ticks = 0

    def vmread(self, vcpu, field: Field) -> int:
        result = vcpu.context.vmx.vmread(field)
        assert result.ok, result
        return result.value

    def on_cpuid(self, vcpu, exit) -> None:
        r = vcpu.regs
        if r.read(X.UC_X86_REG_RAX) & 0xFFFF_FFFF == 0x4000_0001:
            r.write(X.UC_X86_REG_RBX, 0x7654_3210)  # this VMM's answer
        else:
            self.default_cpuid(vcpu, exit)

    def on_hlt(self, vcpu, exit) -> None:
        # SDM 24.8.3: external interrupt (type 0), vector 0x20, valid.
        self.ticks += 1
        assert vcpu.context.vmx.vmwrite(Field.VM_ENTRY_INTR_INFO_FIELD, (1 << 31) | 0x20).ok

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        self.default_cpuid = registry.get(ExitKind.CPUID)
        handlers = {10: self.on_cpuid, 12: self.on_hlt}  # EXIT_REASON_CPUID, EXIT_REASON_HLT

        def dispatch(kind):
            inner = registry.get(kind)

            def handle(vcpu, exit):
                reason = self.vmread(vcpu, Field.VM_EXIT_REASON) & 0xFFFF
                self.reasons[EXIT_REASONS[reason]] += 1
                handlers.get(reason, inner)(vcpu, exit)

            return handle

        for kind in (ExitKind.CPUID, ExitKind.HALT, ExitKind.PORT_IO, ExitKind.HYPERCALL, ExitKind.SYSREG):
            registry.add(kind, dispatch(kind))


def main() -> int:
    vmm = TinyVmm()
    pm = PluginManager()
    pm.load_entry_points()
    pm.register(vmm, name="tiny-vmm")
    vm = VM("intel_vtx", mem="32M", pm=pm, console=Console())
    vm.load(bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm(GUEST, 0x10_0000)[0]))
    result = vm.run(timeout=10)
    print(f"guest ended: status {result.status} ({result.reason})")
    print(f"hypervisor leaf seen by the guest: {vm.memory.read_u32(0x20_0000):#x}")
    print(f"timer interrupts injected: {vmm.ticks}")
    for reason, count in vmm.reasons.most_common():
        print(f"  {reason:20} {count}")
    return 0 if result.status == (3 << 1) | 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
