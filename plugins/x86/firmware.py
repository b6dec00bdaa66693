"""The firmware tables that tell an OS where the interrupt controllers are, as QEMU's ``pc``
machine with SeaBIOS provides them: both an Intel MultiProcessor Specification 1.4 table and
ACPI's tables, in the BIOS area (0xE0000-0xFFFFF) where OSes search for them, for every boot
path.

MP spec 1.4 (chapter 4): the floating pointer ("_MP_", 16 bytes, on a 16-byte boundary) points
to the configuration table ("PCMP") with one processor entry per vCPU (APIC ID = index, the
BSP flagged), bus 0 "ISA", the IOAPIC (ID 0, version 0x11, at 0xFEC0_0000), an I/O interrupt
entry per ISA IRQ (IRQ 0 -> INTIN 2, IRQ 2 omitted, the rest to the same INTIN; SeaBIOS's
mptable.c), and the local interrupts ExtINT -> LINT0, NMI -> LINT1 of every APIC.

ACPI (plugins/x86/acpi.py): the RSDP (2.0) at 0xF0000 -> RSDT / XSDT -> FADT (with the FACS
and a DSDT holding \\_S5) and the MADT (QEMU's build_madt: the local APIC address and
PCAT_COMPAT, a processor local APIC entry per vCPU, the IOAPIC with GSI base 0, interrupt source
overrides IRQ 0 -> GSI 2 (conforming) and IRQs 5, 9, 10, 11 level-triggered active high, and a
local APIC NMI on LINT1 for all). Every table's bytes sum to 0 (mod 256).
"""

from __future__ import annotations

import struct

from . import acpi, layout

FIRMWARE_START = acpi.TABLES_BASE  # 0xE0000: the ACPI tables, then the RSDP and the MP tables
RSDP_ADDR = acpi.RSDP_ADDR  # 0xF0000, 36 bytes
MP_FLOAT_ADDR = 0xF_0040
MP_CONFIG_ADDR = 0xF_0100
TABLES_END = 0xF_8000
LAPIC_VERSION = 0x14
IOAPIC_ID, IOAPIC_VERSION = 0, 0x11


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def _fix(data: bytearray, at: int) -> bytes:
    data[at] = _checksum(bytes(data))
    return bytes(data)


def mp_tables(vcpus: int, signature: int, features: int) -> tuple[bytes, bytes]:
    """(floating pointer, configuration table) for MP_FLOAT_ADDR / MP_CONFIG_ADDR."""
    entries = []
    for i in range(vcpus):
        flags = 1 | (2 if i == 0 else 0)  # EN, BP
        entries.append(struct.pack("<BBBBII8x", 0, i, LAPIC_VERSION, flags, signature, features))
    entries.append(struct.pack("<BB6s", 1, 0, b"ISA   "))
    entries.append(struct.pack("<BBBBI", 2, IOAPIC_ID, IOAPIC_VERSION, 1, layout.IOAPIC_BASE))
    for irq in range(16):
        if irq == 2:
            continue
        intin = 2 if irq == 0 else irq
        entries.append(struct.pack("<BBHBBBB", 3, 0, 0, 0, irq, IOAPIC_ID, intin))  # INT, conforms
    entries.append(struct.pack("<BBHBBBB", 4, 3, 0, 0, 0, 0xFF, 0))  # ExtINT -> LINT0
    entries.append(struct.pack("<BBHBBBB", 4, 1, 0, 0, 0, 0xFF, 1))  # NMI -> LINT1
    body = b"".join(entries)
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", 44 + len(body), 4, 0, b"HVSIM   ",
                                   b"PC          ", 0, 0, len(entries), layout.LAPIC_BASE, 0, 0, 0))
    config = _fix(header + body, 7)
    floating = _fix(bytearray(struct.pack("<4sIBBB5s", b"_MP_", MP_CONFIG_ADDR, 1, 4, 0, bytes(5))), 10)
    return floating, config


def write_tables(memory, vcpus: int, signature: int, features: int) -> None:
    """The MP and ACPI tables into the BIOS area (RAM in hvsim's map, reserved in its memory map)."""
    if not memory.is_ram(FIRMWARE_START, 0x10_0000 - FIRMWARE_START):
        return
    floating, config = mp_tables(vcpus, signature, features)
    if MP_CONFIG_ADDR + len(config) > TABLES_END:
        raise ValueError("too many vCPUs for the firmware tables' room")
    tables = [(MP_FLOAT_ADDR, floating), (MP_CONFIG_ADDR, config)]
    tables += acpi.build(list(range(vcpus)), layout.LAPIC_BASE, IOAPIC_ID, layout.IOAPIC_BASE)
    for addr, data in tables:
        memory.write(addr, data)
