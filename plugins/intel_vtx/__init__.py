"""Intel VT-x: VMX operation, the VMCS, EPT, VPID, APICv, VT-d (Intel SDM Vol. 3C ch. 24-29).

``plugin`` is what the ``hvsim.plugins`` entry point ``intel_vtx`` names.
"""

from __future__ import annotations

from hvsim.plugins.x86.arch import X86Arch
from hvsim.plugins.x86.plugin import X86VendorPlugin

from . import spec
from .exits import VmxVendor


class VtxArch(X86Arch):
    name = "intel_vtx"
    title = "Intel VT-x"
    manual = "Intel SDM Vol. 3C, ch. 24-29"
    vendor_cls = VmxVendor
    features = {
        "vmx": "VMXON, VMCS (App. B fields), VMREAD/VMWRITE, VMLAUNCH/VMRESUME with the SDM 26.2-26.4 entry checks",
        "exits": "VM exits recorded in the VMCS: reason, qualification, length, interruption information",
        "controls": "HLT, I/O (unconditional, bitmaps), MSR bitmaps, exception bitmap + #PF mask/match, RDTSC, "
                    "INVLPG, CR3 load/store + targets, CR0/CR4 masks, WBINVD, PAUSE; VMX instructions exit",
        "injection": "VM-entry interruption information",
        "stage 2": "identity EPT with unrestricted guest and VPID (walks come with issue 6)",
        "hypercall": "VMCALL (exit reason 18), KVM hypercall ABI",
        "platform": "PC: Multiboot v1, ELF64, raw; COM1, isa-debug-exit, fw_cfg, 8259 masks",
        "irqchip": "emulated local APIC per vCPU (xAPIC, x2APIC, timer incl. TSC deadline, IPIs, INIT-SIPI), "
                   "IOAPIC, 8254 PIT + port 0x61, 8259 on LINT0, MP table + ACPI MADT (SDM Vol. 3A ch. 11)",
        "events": "IDT delivery (real, protected, long mode, same privilege level) at exact boundaries: STI/MOV SS "
                  "shadow, interrupt/NMI-window exiting, external-interrupt exiting + ack on exit, NMI exiting, "
                  "virtual NMIs, INIT, triple fault exits, IDT-vectoring information, MTF, preemption timer, "
                  "interruptibility and HLT activity state, EFER/PAT load/save",
        "apicv": "use TPR shadow (MOV CR8, TPR threshold), virtualize APIC accesses (APIC-access exits 44), "
                 "APIC-register virtualization (APIC-write exits 56), virtual-interrupt delivery (RVI/SVI, "
                 "virtual EOI, EOI-exit bitmaps, EOI-induced exits 45, self-IPI), virtualize x2APIC mode, "
                 "posted interrupts (SDM ch. 30; docs/apicv.md)",
    }


plugin = X86VendorPlugin(VtxArch, spec.tables)
