"""AMD SVM (AMD-V): VMRUN, the VMCB, NPT, ASIDs, AVIC, AMD-Vi (AMD APM Vol. 2, ch. 15).

The plugin registered under the ``hvsim.plugins`` entry point ``amd_svm``.
"""

from __future__ import annotations

from hvsim import hookimpl
from hvsim.plugins.x86 import handlers as x86_handlers
from hvsim.plugins.x86.arch import X86Arch

from .exits import SvmVendor


class SvmArch(X86Arch):
    name = "amd_svm"
    title = "AMD SVM (AMD-V)"
    manual = "AMD APM Vol. 2, ch. 15"
    vendor_cls = SvmVendor
    features = {
        "exits": "#VMEXIT with EXITCODE, EXITINFO1/EXITINFO2 and nRIP",
        "hypercall": "VMMCALL (EXITCODE 0x81), KVM hypercall ABI",
        "platform": "PC: Multiboot v1, ELF64, raw; COM1, isa-debug-exit, fw_cfg, 8259 masks",
        "events": "exceptions and injected interrupts through the guest IDT (protected and long mode, same privilege level)",
    }


@hookimpl
def hvsim_register_archs(registry):
    registry.add(SvmArch)


@hookimpl(tryfirst=True)
def hvsim_exit_handlers(vm, registry):
    if vm.arch.name == SvmArch.name:
        x86_handlers.register(registry)


@hookimpl
def hvsim_stage1_walk(vcpu, address, access):
    if vcpu.vm.arch.name == SvmArch.name:
        return x86_handlers.stage1_walk(vcpu, address, access)


@hookimpl
def hvsim_spec_tables(arch):
    if arch == SvmArch.name:
        from .spec import tables

        return tables()
