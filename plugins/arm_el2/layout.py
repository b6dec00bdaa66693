"""QEMU's ``virt`` board memory map, the one source of guest-physical addresses for arm64.

Values from QEMU hw/arm/virt.c (``base_memmap`` and ``a15irqmap``) so that a guest built for
``qemu-system-aarch64 -M virt`` finds its devices at the same places here. Interrupt numbers
are GIC SPI numbers (the device tree adds the 32 SGI+PPI ids when it writes INTIDs).
"""

RAM_BASE = 0x4000_0000  # VIRT_MEM
FLASH_BASE = 0x0000_0000  # VIRT_FLASH: two 64 MiB banks, not modelled
GICD_BASE = 0x0800_0000  # VIRT_GIC_DIST, 64 KiB
GICR_BASE = 0x080A_0000  # VIRT_GIC_REDIST, 128 KiB per vCPU
GICR_STRIDE = 0x2_0000
PL011_BASE = 0x0900_0000  # VIRT_UART
PL011_SIZE = 0x1000
PL011_SPI = 1  # a15irqmap[VIRT_UART]
PL011_CLOCK_HZ = 24_000_000  # the fixed 24 MHz "apb-pclk" QEMU's device tree gives the UART
PL031_BASE = 0x0901_0000  # VIRT_RTC
VIRTIO_MMIO_BASE = 0x0A00_0000  # VIRT_MMIO: 32 transports 0x200 apart
VIRTIO_MMIO_STRIDE = 0x200
VIRTIO_MMIO_COUNT = 32
VIRTIO_MMIO_SPI = 16

# Architected timer PPIs as QEMU's device tree lists them (secure, non-secure, virtual, hyp).
TIMER_PPIS = (13, 14, 11, 10)

# Devices every arm_el2 VM gets: (device name, guest-physical base, size, label).
MMIO_DEVICES = [
    ("pl011", PL011_BASE, PL011_SIZE, "PL011 UART"),
]

# Boot (QEMU hw/arm/boot.c): where images, the initrd and the device tree go.
KERNEL64_LOAD_OFFSET = 0x8_0000  # raw images, and Images whose header predates image_size
INITRD_MAX_OFFSET = 128 << 20  # initrd at RAM + min(RAM size / 2, 128 MiB), above the kernel
DTB_ALIGN = 2 << 20  # "some AArch64 kernels map the fdt region as [ALIGN_DOWN(fdt, 2MB) ...]"
DTB_MAX_SIZE = 2 << 20  # Linux Documentation/arch/arm64/booting.rst: at most 2 MiB
COMMAND_LINE_SIZE = 2048  # Linux arch/arm64/include/uapi/asm/setup.h: bootargs beyond it are cut

# Redistributor pages each vCPU takes, for the device tree's GICv3 node.
MAX_CPUS = 64


def mpidr(index: int) -> int:
    """The MPIDR_EL1 QEMU's virt board gives vCPU ``index`` with a GICv3: 16 CPUs per cluster
    (Aff0 = index % 16, Aff1 = index // 16), bit 31 RES1 (Arm ARM, MPIDR_EL1)."""
    return (1 << 31) | ((index // 16) << 8) | (index % 16)


def mpidr_affinity(value: int) -> int:
    """Aff3..Aff0 of an MPIDR value: what a device tree ``cpu`` node's ``reg`` holds and what
    PSCI CPU_ON / AFFINITY_INFO take as ``target_cpu``."""
    return value & 0xFF_00FF_FFFF
