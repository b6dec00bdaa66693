"""Intel VT-x: VMX operation, the VMCS, EPT, VPID, APICv, VT-d (Intel SDM Vol. 3C ch. 24-29).

The plugin registered under the ``hvsim.plugins`` entry point ``intel_vtx``.
"""

from __future__ import annotations

from hvsim import hookimpl
from hvsim.plugins.x86 import handlers as x86_handlers
from hvsim.plugins.x86.arch import X86Arch

from .exits import VmxVendor


class VtxArch(X86Arch):
    name = "intel_vtx"
    title = "Intel VT-x"
    manual = "Intel SDM Vol. 3C, ch. 24-29"
    vendor_cls = VmxVendor
    features = {
        "exits": "VM exits with basic exit reason and exit qualification",
        "hypercall": "VMCALL (exit reason 18), KVM hypercall ABI",
        "platform": "PC: Multiboot v1, ELF64, raw; COM1, isa-debug-exit, fw_cfg, 8259 masks",
        "events": "exceptions and injected interrupts through the guest IDT (protected and long mode, same privilege level)",
    }


@hookimpl
def hvsim_register_archs(registry):
    registry.add(VtxArch)


@hookimpl(tryfirst=True)
def hvsim_exit_handlers(vm, registry):
    if vm.arch.name == VtxArch.name:
        x86_handlers.register(registry)


@hookimpl
def hvsim_stage1_walk(vcpu, address, access):
    if vcpu.vm.arch.name == VtxArch.name:
        return x86_handlers.stage1_walk(vcpu, address, access)


@hookimpl
def hvsim_spec_tables(arch):
    if arch == VtxArch.name:
        from .spec import tables

        return tables()
