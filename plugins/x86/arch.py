"""The x86 half of an architecture plugin: the PC platform, image loading and vCPU creation.

``VtxArch`` and ``SvmArch`` subclass :class:`X86Arch` and name their vendor.
"""

from __future__ import annotations

import os
import struct

from hvsim.core.arch import Arch
from hvsim.core.errors import ImageError
from hvsim.core.loader import Image
from hvsim.core.vm import HV_AREA

from . import boot, layout
from .cpu import X86Vcpu

# The hypervisor area (core/vm.HV_AREA, 8 MiB): the vCPUs' VMCS / VMCB structures, the VM's
# stage-2 tables, and the vCPUs' shadow page tables when shadow paging is on.
VCPU_AREA = 0x8000  # each vCPU's share of the first 2 MiB (64 vCPUs)
STAGE2_AREA = 2 << 20  # offset of the EPT / NPT tables (2 MiB)
SHADOW_AREA = 4 << 20  # offset of the shadow page-table pools (4 MiB, shared out per vCPU)


class X86Arch(Arch):
    platform = "pc"
    ram_base = 0
    vendor_cls: type

    def __init__(self, vm) -> None:
        super().__init__(vm)
        self.vendor = self.vendor_cls()
        self._stage2_root: int | None = None

    def build(self) -> None:
        vm = self.vm
        below, above = layout.ram_split(vm.config.mem_size)
        vm.memory.add_ram(0, below)
        if above:
            vm.memory.add_ram(layout.HIGH_RAM_BASE, above)
        self.hv_area = vm.host.allocate(HV_AREA)  # per-vCPU VMCS / VMCB structures live here
        for device, port, count, label in layout.PORT_DEVICES:
            dev = vm.pm.devices.create(device, vm)
            vm.bus.add_port(port, count, dev, label)
            if device == "fw_cfg" and hasattr(dev, "add_file"):
                # struct e820_entry: le64 address, le64 length, le32 type (QEMU's etc/e820)
                dev.add_file("etc/e820", b"".join(struct.pack("<QQI", *e)
                                                  for e in layout.e820_table(vm.config.mem_size)))
        # The interrupt controllers the VMM emulates (plugins/devices: lapic, ioapic, pit8254)
        from hvsim.plugins.devices.platform import build_pc_interrupts

        build_pc_interrupts(vm, self)

    def create_vcpu(self, index: int) -> X86Vcpu:
        vcpu = X86Vcpu(self.vm, index, self.vendor, self.hv_area + index * VCPU_AREA)
        vcpu.lapic = self.apic_bus.add(vcpu)  # APs wait for INIT-SIPI (state OFF until then)
        return vcpu

    @property
    def paging(self) -> str:
        """"nested" (EPT / NPT, the default) or "shadow" (VM(..., paging="shadow"))."""
        mode = self.vm.config.extra.get("paging", "nested")
        if mode not in ("nested", "shadow"):
            from hvsim.core.errors import ConfigError

            raise ConfigError(f"bad paging mode {mode!r}: use nested or shadow")
        return mode

    def shadow_pool(self, index: int) -> tuple[int, int]:
        """(host-physical address, pages) of vCPU ``index``'s shadow page-table pool."""
        pages = min(512, (HV_AREA - SHADOW_AREA) // 0x1000 // max(1, self.vm.config.vcpus))
        return self.hv_area + SHADOW_AREA + index * pages * 0x1000, pages

    def ept_root(self, build) -> int:
        """The VM's stage-2 root, built once (by the first vCPU's vendor code) in the second
        half of the hypervisor area and shared by every vCPU, as KVM shares one EPT per VM."""
        if self._stage2_root is None:
            self._stage2_root = build(self.vm, self.hv_area + STAGE2_AREA)
        return self._stage2_root

    @staticmethod
    def identity_stage2(vm, base: int, table_bits: int, leaf_bits: int) -> int:
        """4-level stage-2 tables at host-physical ``base`` mapping every RAM slot of ``vm``
        (guest-physical -> its host-physical backing) with 2 MiB pages, as KVM maps memslots;
        MMIO stays unmapped, so a device access faults at stage 2. EPT and NPT share this shape
        and differ only in their entry bits. Returns the root (PML4) address."""
        host = vm.host
        pml4, pdpt, pd = base, base + 0x1000, base + 0x2000
        host.write(pml4, bytes(0x2000))
        host.write(pml4, (pdpt | table_bits).to_bytes(8, "little"))
        for slot in vm.memory.slots:
            for gpa in range(slot.gpa, slot.end, 1 << 21):
                gb = gpa >> 30
                table = pd + gb * 0x1000
                if not int.from_bytes(host.read(pdpt + gb * 8, 8), "little"):
                    host.write(table, bytes(0x1000))
                    host.write(pdpt + gb * 8, (table | table_bits).to_bytes(8, "little"))
                entry = (slot.hpa + gpa - slot.gpa) | leaf_bits
                host.write(table + ((gpa >> 21) & 0x1FF) * 8, entry.to_bytes(8, "little"))
        return pml4

    def load(self, image: Image) -> None:
        vm = self.vm
        if image.machine == "arm64":
            kind = "Linux Image" if image.format == "arm64-image" else f"{image.format.upper()} image"
            raise ImageError(f"image {image.path} is an arm64 {kind}; "
                             f"--arch {self.name} runs x86 guests (try --arch arm_el2)")
        if image.format == "multiboot":
            # QEMU's multiboot.c: the command line is "<-kernel file name> <-append text>"
            cmdline = os.fsencode(image.path) + b" " + vm.config.append.encode("utf-8")
            state = boot.multiboot(vm.memory, image, cmdline, vm.config.initrd, vm.config.initrd_name or "initrd")
        elif image.format == "bzimage":
            from . import acpi, linux
            e820 = linux.e820_map(vm.memory, [(layout.IOAPIC_BASE, 0x1000), (layout.LAPIC_BASE, 0x1000)])
            state = linux.load(vm.memory, image, vm.config.append, vm.config.initrd,
                               vm.config.initrd_name or "initrd", e820, acpi.RSDP_ADDR)
        elif image.format in ("elf64", "raw"):
            state = boot.long64(vm.memory, image, vm.config.load_addr, vm.config.entry)
        else:
            raise ImageError(f"image {image.path}: a 32-bit ELF without a Multiboot header cannot be "
                             f"booted (add a Multiboot header, as QEMU -kernel requires)")
        vm.vcpus[0].set_boot_state(state)
        from . import firmware

        eax, _ebx, _ecx, edx = self.vendor.cpuid_leaf(1, 0, 0, len(vm.vcpus))
        if not any(seg.address < firmware.TABLES_END and seg.address + seg.memsz > firmware.FIRMWARE_START
                   for seg in image.segments):  # (an image placed there keeps its bytes)
            firmware.write_tables(vm.memory, len(vm.vcpus), eax, edx)  # MP and ACPI tables
