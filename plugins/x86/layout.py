"""The PC platform's map, the one source of addresses for both x86 vendors (QEMU's ``pc``).

RAM starts at guest-physical 0 and is split around the 32-bit PCI hole as QEMU's ``pc``
(i440FX) machine splits it (hw/i386/pc_piix.c, ``pc_init1``): with less than
``MAX_RAM_BELOW_4G`` (3.5 GiB) all of it lies below 4 GiB; with that much or more, current
machine types keep 3 GiB below 4 GiB ("gigabyte_align") and put the rest at 4 GiB. The hole
above the low RAM holds the IOAPIC (0xFEC0_0000) and the local APIC (0xFEE0_0000), never RAM.
The boot structures hvsim writes for the guest live in low memory below 0x9_0000, the
conventional area a Multiboot loader may use.
"""

COM1_PORT = 0x3F8  # 16550A, 8 registers
DEBUG_EXIT_PORT = 0xF4  # QEMU isa-debug-exit (iobase=0xf4, iosize=0x04)
POST_PORT = 0x80
PIC_MASTER_PORT = 0x20
PIC_SLAVE_PORT = 0xA0
FW_CFG_PORT = 0x510  # selector 0x510, data 0x511
PIT_PORT = 0x40  # 8254 counters 0-2 and the control word (0x43)
PORT_B = 0x61  # system control port B: PIT channel 2 gate, speaker, OUT2 status
CMOS_PORT = 0x70  # MC146818 RTC / CMOS: index 0x70, data 0x71
ACPI_PM_PORT = 0x600  # PM1a event (4), PM1a control (2, at +4), PM timer (4, at +8): plugins/x86/acpi.py
RESET_CONTROL_PORT = 0xCF9  # PIIX reset control register (the FADT's RESET_REG)

MAX_RAM_BELOW_4G = 0xE000_0000  # pc_piix.c: the default max-ram-below-4g
GIGABYTE_LOWMEM = 0xC000_0000  # ... lowered to 3 GiB when RAM reaches it (gigabyte_align)
HIGH_RAM_BASE = 1 << 32  # x86ms->above_4g_mem_start

LAPIC_BASE = 0xFEE0_0000
IOAPIC_BASE = 0xFEC0_0000
PCI_CONFIG_ADDRESS = 0xCF8
PCI_CONFIG_DATA = 0xCFC

# Where hvsim writes boot structures (all below the 640 KiB line).
BOOT_GDT = 0x0800
BOOT_PAGE_TABLES = 0x1000  # PML4, PDPT and four page directories: 0x1000-0x6FFF
BOOT_GDTR = 0x0880  # the 6/10-byte pseudo-descriptor LGDT reads
BOOT_STUB = 0x7000  # the loader's last instructions: load GDT and segments, jump to the kernel
BOOT_STACK_TOP = 0x8000  # the stack those instructions use (and an ELF64 kernel starts with)
BOOT_MB_INFO = 0x9000
BOOT_MB_MMAP = 0x9100
BOOT_MB_MODS = 0x9400
BOOT_MB_LOADER_NAME = 0x9500
BOOT_MB_CMDLINE = 0x9600  # up to 0x8A00 bytes of command line
BOOT_AREA_END = 0x1_2000
LOW_MEM_END = 0x9_FC00  # mem_lower = 639 KiB, as a PC reports it

RAW_DEFAULT_LOAD = 0x10_0000

E820_RAM = 1


def ram_split(size: int) -> tuple[int, int]:
    """(RAM below 4 GiB, RAM from 4 GiB) for ``size`` bytes of guest RAM, as pc_init1 does."""
    if size >= MAX_RAM_BELOW_4G:
        return GIGABYTE_LOWMEM, size - GIGABYTE_LOWMEM
    return size, 0


def e820_table(size: int) -> list[tuple[int, int, int]]:
    """QEMU's ``etc/e820`` for ``size`` bytes of RAM (pc_memory_init): (address, length, type)."""
    below, above = ram_split(size)
    table = [(0, below, E820_RAM)]
    if above:
        table.append((HIGH_RAM_BASE, above, E820_RAM))
    return table

# Devices every x86 VM gets: (device name, first port, port count, label).
PORT_DEVICES = [
    ("uart16550", COM1_PORT, 8, "COM1"),
    ("isa-debug-exit", DEBUG_EXIT_PORT, 4, "isa-debug-exit"),
    ("port80", POST_PORT, 1, "POST port 0x80"),
    ("pic8259", PIC_MASTER_PORT, 2, "8259 PIC master"),
    ("pic8259", PIC_SLAVE_PORT, 2, "8259 PIC slave"),
    ("fw_cfg", FW_CFG_PORT, 2, "fw_cfg"),
    ("cmos-rtc", CMOS_PORT, 2, "CMOS RTC"),
    ("acpi-pm", ACPI_PM_PORT, 12, "ACPI PM1a / PM timer"),
    ("reset-control", RESET_CONTROL_PORT, 1, "reset control 0xcf9"),
]
