"""AMD SVM (AMD-V): VMRUN, the VMCB, NPT, ASIDs, AVIC, AMD-Vi (AMD APM Vol. 2, ch. 15).

``plugin`` is what the ``hvsim.plugins`` entry point ``amd_svm`` names.
"""

from __future__ import annotations

from hvsim.plugins.x86.arch import X86Arch
from hvsim.plugins.x86.plugin import X86VendorPlugin

from . import spec
from .exits import SvmVendor


class SvmArch(X86Arch):
    name = "amd_svm"
    title = "AMD SVM (AMD-V)"
    manual = "AMD APM Vol. 2, ch. 15"
    vendor_cls = SvmVendor
    features = {
        "svm": "EFER.SVME, VM_HSAVE_PA, a VMCB in host memory (App. B offsets), VMRUN with the 15.5.1 checks",
        "exits": "#VMEXIT written into the VMCB: EXITCODE, EXITINFO1/EXITINFO2, nRIP",
        "intercepts": "HLT, CPUID, IOIO (IOPM), MSR (MSRPM), exceptions, RDTSC(P), INVLPG, CR reads/writes, "
                      "WBINVD, INVD, PAUSE, SVM instructions",
        "injection": "EVENTINJ",
        "hypercall": "VMMCALL (EXITCODE 0x81), KVM hypercall ABI",
        "platform": "PC: Multiboot v1, ELF64, raw; COM1, isa-debug-exit, fw_cfg, 8259 masks",
        "irqchip": "emulated local APIC per vCPU (xAPIC, x2APIC, timer incl. TSC deadline, IPIs, INIT-SIPI), "
                   "IOAPIC, 8254 PIT + port 0x61, 8259 on LINT0, MP table + ACPI MADT (SDM Vol. 3A ch. 11)",
        "events": "IDT delivery (real, protected, long mode, same privilege level) at exact boundaries: interrupt "
                  "shadow, V_IRQ/V_INTR_PRIO/V_IGN_TPR/V_TPR (guest CR8), VINTR, INTR/NMI/INIT intercepts, "
                  "V_INTR_MASKING, SHUTDOWN, EXITINTINFO, virtual GIF, pause filter",
        "avic": "AVIC (APM 15.29): APIC BAR served from the backing page, accelerated TPR/EOI/IPIs through the "
                "physical and logical APIC ID tables, AVIC_NOACCEL (0x402) and AVIC_INCOMPLETE_IPI (0x401), "
                "doorbell; xAPIC only (docs/apicv.md)",
    }


plugin = X86VendorPlugin(SvmArch, spec.tables)
