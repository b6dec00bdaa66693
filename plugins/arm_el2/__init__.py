"""ARMv8 EL2: the arm_el2 architecture plugin, hvsim playing the hypervisor at EL2.

The guest runs at EL1 in a Unicorn engine (:mod:`.cpu`); what would trap to EL2 on hardware
becomes an exit carrying the ESR_EL2 / FAR_EL2 / HPFAR_EL2 record (:mod:`.exits`). The
platform is QEMU's ``virt`` board (:mod:`.layout`): RAM at 0x4000_0000, a PL011 UART,
PSCI over HVC (:mod:`.psci`), a generated device tree in X0 (:mod:`.fdt`, :mod:`.boot`).

Manual: Arm Architecture Reference Manual for A-profile architecture, DDI 0487.
"""

from __future__ import annotations

from unicorn.arm64_const import (
    UC_ARM64_REG_PC,
    UC_ARM64_REG_PSTATE,
    UC_ARM64_REG_X0,
    UC_ARM64_REG_X1,
    UC_ARM64_REG_X2,
    UC_ARM64_REG_X3,
)

from hvsim import hookimpl
from hvsim.core.arch import Arch, Vcpu, VcpuState
from hvsim.core.errors import PluginError
from hvsim.core.exits import EventType, ExitKind
from hvsim.core.loader import Image
from hvsim.core.vm import HV_AREA

from . import boot, gic, layout, psci, spec, stage2, traps
from .cpu import Arm64Vcpu
from .exceptions import PSTATE_ENTRY
from .exits import El2Record

__all__ = ["Arm64Vcpu", "ArmEl2Arch", "El2Record"]


class ArmEl2Arch(Arch):
    name = "arm_el2"
    title = "ARMv8 EL2 (Virtualization Extensions)"
    manual = "Arm ARM for A-profile, DDI 0487"
    platform = "virt"
    ram_base = layout.RAM_BASE
    features = {
        "exit record": "ESR_EL2, FAR_EL2, HPFAR_EL2",
        "hypercalls": "HVC #0, and SMC #0 with HCR_EL2.TSC: PSCI 1.1 (CPU_ON/OFF/SUSPEND, "
                      "AFFINITY_INFO, SYSTEM_OFF/RESET/RESET2, FEATURES), SMCCC 1.1",
        "EL2 registers": "vcpu.el2: HCR/CPTR/MDCR/HSTR/CNTHCTL/CNTVOFF/VTTBR/VTCR/VBAR/VPIDR/VMPIDR_EL2 "
                         "and the trap record ESR/FAR/HPFAR/ELR/SPSR_EL2; KVM's values by default",
        "traps": "WFI/WFE (TWI/TWE), SMC (TSC), MRS/MSR (TVM TRVM TID1-3 TACR TIDCP; MDCR_EL2; "
                 "CNTHCTL_EL2), SYS (TSW TPCP TPU TTLB TDZ), FP/SIMD (CPTR_EL2.TFP), with ESR_EL2 syndromes",
        "timer": "virtual and EL1 physical timers through CNTVOFF_EL2; level PPIs 27 / 30 at the vGIC "
                 "(gic='none': edges to hvsim_inject_event)",
        "interrupt controller": "GICv3 as QEMU virt (GICD 0x0800_0000, GICR 0x080A_0000), KVM-style vGIC: "
                                "4 list registers, ICH_*_EL2, ICC_* served as ICV_* without exits, "
                                "maintenance interrupt, SGIs via trapped ICC_SGI1R_EL1, PL011 on SPI 1",
        "MMIO": "stage-2 data aborts with the instruction syndrome (ISV, SAS, SRT, WnR)",
        "memory": "guest stage 1 (VMSAv8-64) and stage 2 (VTTBR_EL2/VTCR_EL2) in Unicorn's TLB; "
                  "VMID/ASID-tagged TLB model, guest TLBI, vcpu.mmu.tlbi() for the hypervisor's",
        "virtual exceptions": "IRQ, FIQ, SError to the guest's VBAR_EL1",
        "boot": "Linux arm64 Image, ELF64, raw; device tree in X0",
        "platform": "QEMU virt: RAM 0x4000_0000, PL011 0x0900_0000",
    }
    boot_state: boot.BootState | None = None  # where the last load put the entry and the DTB
    vgic: gic.VGic | None = None  # the GICv3 (:mod:`.gic`), unless built with gic="none"

    def build(self) -> None:
        vm = self.vm
        vm.memory.add_ram(layout.RAM_BASE, vm.config.mem_size)
        # The hypervisor's area of host memory; its second half holds the VM's stage-2 tables,
        # built once and shared by every vCPU (one VMID per VM), as KVM's.
        self.hv_area = vm.host.allocate(HV_AREA)
        self.stage2_tables = stage2.build_identity(vm, self.hv_area + HV_AREA // 2, HV_AREA // 2)
        # QEMU virt's GICv3, as KVM's vGIC (``gic="none"``: no interrupt controller, the timer
        # raises its PPI straight at the vCPU as a virtual IRQ)
        kind = vm.config.extra.get("gic", "v3")
        if kind not in ("v3", "none"):
            raise PluginError(f"gic={kind!r}: arm_el2 has a GICv3 (\"v3\") or no interrupt controller (\"none\")")
        self.vgic = gic.install(vm) if kind == "v3" else None
        for device, base, size, label in layout.MMIO_DEVICES:
            params = {}
            if device == "pl011" and self.vgic is not None:
                vgic = self.vgic
                params["irq"] = lambda level: vgic.set_level(0, layout.PL011_SPI + 32, level)
            vm.bus.add_mmio(base, size, vm.pm.devices.create(device, vm, **params), label)

    def create_vcpu(self, index: int) -> Vcpu:
        return Arm64Vcpu(self.vm, index)

    def load(self, image: Image) -> None:
        vm = self.vm
        cfg = vm.config
        state = boot.load(vm.memory, image, cpus=cfg.vcpus, append=cfg.append, initrd=cfg.initrd,
                          load_addr=cfg.load_addr, entry=cfg.entry, gic=self.vgic is not None)
        self.boot_state = state
        cpu0 = vm.vcpus[0]
        regs = cpu0.regs
        for reg, value in boot_registers(state).items():
            regs.write(reg, value)
        cpu0.state = VcpuState.RUNNABLE
        for v in vm.vcpus[1:]:
            v.state = VcpuState.OFF  # secondaries wait for PSCI CPU_ON


def boot_registers(state: boot.BootState) -> dict[int, int]:
    """booting.rst "CPU mode": X0 = the device tree, X1-X3 = 0, EL1h, DAIF masked."""
    return {UC_ARM64_REG_PSTATE: PSTATE_ENTRY, UC_ARM64_REG_X0: state.dtb, UC_ARM64_REG_X1: 0,
            UC_ARM64_REG_X2: 0, UC_ARM64_REG_X3: 0, UC_ARM64_REG_PC: state.entry}


@hookimpl
def hvsim_register_archs(registry):
    registry.add(ArmEl2Arch)


@hookimpl(tryfirst=True)
def hvsim_exit_handlers(vm, registry):
    if vm.arch.name == ArmEl2Arch.name:
        registry.add(ExitKind.HYPERCALL, psci.handle_hvc)
        registry.add(ExitKind.SYSREG, traps.handle_sysreg)
        registry.add(ExitKind.EXCEPTION, traps.handle_fp_asimd)
        if vm.arch.vgic is not None:
            registry.add(ExitKind.EVENT, vm.arch.vgic.handle_maintenance)


@hookimpl(wrapper=True, specname="hvsim_exit_handlers")
def wrap_exit_handlers(vm, registry):
    """Around whichever HALT handler the table ends with (the core's, or a hypervisor
    plugin's): a vCPU it halts in WFI with a generic timer armed waits for that timer."""
    result = yield
    if vm.arch.name == ArmEl2Arch.name:
        inner = registry.get(ExitKind.HALT)

        def on_halt(vcpu, exit):
            inner(vcpu, exit)
            vcpu.halted()

        registry.add(ExitKind.HALT, on_halt)
    return result


@hookimpl(tryfirst=True)
def hvsim_inject_event(vcpu, event):
    """An interrupt raised toward an arm_el2 vCPU by INTID (a virtual IRQ whose ``vector`` is
    the INTID) goes to the vGIC, which makes it pending there (an edge); the guest sees it
    when it has that interrupt enabled, as with a GICD_ISPENDR write. Without a GIC, or
    for other events, the default (queued on the vCPU) applies."""
    vgic = getattr(vcpu, "vgic", None)
    if vgic is None or event.type is not EventType.VIRTUAL_IRQ or event.vector is None:
        return None
    return True if vgic.inject_edge(vcpu.index, event.vector) else None


@hookimpl
def hvsim_spec_tables(arch):
    return spec.tables() if arch == ArmEl2Arch.name else None


@hookimpl
def hvsim_stage1_walk(vcpu, address, access):
    if isinstance(vcpu, Arm64Vcpu):
        return vcpu.stage1_walk(address, access)
    return None


@hookimpl(wrapper=True, specname="hvsim_stage2_translate")
def stage2_translate(vm, gpa, access):
    """On arm_el2 the answer is stage 2's (:meth:`.mmu.Arm64Mmu.stage2_lookup`, vCPU 0's
    VTTBR_EL2/VTCR_EL2): what the guest's own accesses get, so an IPA stage 2 leaves unmapped
    or forbids for ``access`` is None even where the VM has RAM (the core's memslot answer)."""
    result = yield
    if vm.arch.name != ArmEl2Arch.name or not vm.vcpus:
        return result
    return vm.vcpus[0].mmu.stage2_lookup(gpa, access)
