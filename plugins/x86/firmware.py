"""The firmware tables that tell an OS where the interrupt controllers are, as QEMU's ``pc``
machine with SeaBIOS provides them: both an Intel MultiProcessor Specification 1.4 table and
ACPI's RSDP / RSDT / MADT, in the BIOS area (0xF0000-0xF7FFF) where OSes search for them, for
Multiboot, ELF64 and raw images. A Linux bzImage gets the MP table here and the fuller ACPI set
(XSDT, FADT, DSDT) of :mod:`.acpi` at 0xE0000 instead of this ACPI 1.0 set.

MP spec 1.4 (chapter 4): the floating pointer ("_MP_", 16 bytes, on a 16-byte boundary) points
to the configuration table ("PCMP") with one processor entry per vCPU (APIC ID = index, the
BSP flagged), bus 0 "ISA", the IOAPIC (ID 0, version 0x11, at 0xFEC0_0000), an I/O interrupt
entry per ISA IRQ (IRQ 0 -> INTIN 2, IRQ 2 omitted, the rest to the same INTIN; SeaBIOS's
mptable.c), and the local interrupts ExtINT -> LINT0, NMI -> LINT1 of every APIC.

ACPI (1.0 RSDP, revision 0, pointing to an RSDT with one entry): the MADT ("APIC", revision 1,
QEMU's build_madt) with the local APIC address and PCAT_COMPAT, a processor local APIC entry
per vCPU, the IOAPIC with GSI base 0, interrupt source overrides IRQ 0 -> GSI 2 (conforming)
and IRQs 5, 9, 10, 11 level-triggered active high, and a local APIC NMI on LINT1 for all.
Every table's bytes sum to 0 (mod 256).
"""

from __future__ import annotations

import struct

from . import layout

RSDP_ADDR = 0xF_0000
MP_FLOAT_ADDR = 0xF_0020
MP_CONFIG_ADDR = 0xF_0100
RSDT_ADDR = 0xF_1000
MADT_ADDR = 0xF_1100
TABLES_END = 0xF_8000
OEM_ID = b"HVSIM "
LAPIC_VERSION = 0x14
IOAPIC_ID, IOAPIC_VERSION = 0, 0x11
MADT_LEVEL_HIGH_IRQS = (5, 9, 10, 11)  # QEMU's 0x0e20


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


def _acpi_header(signature: bytes, length: int, revision: int, table_id: bytes) -> bytearray:
    return bytearray(struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID,
                                 table_id.ljust(8), 1, b"HVSM", 1))


def acpi_tables(vcpus: int) -> tuple[bytes, bytes, bytes]:
    """(RSDP, RSDT, MADT) for RSDP_ADDR / RSDT_ADDR / MADT_ADDR."""
    body = struct.pack("<II", layout.LAPIC_BASE, 1)  # PCAT_COMPAT: dual 8259s present
    for i in range(vcpus):
        body += struct.pack("<BBBBI", 0, 8, i, i, 1)  # processor UID, APIC ID, enabled
    body += struct.pack("<BBBBII", 1, 12, IOAPIC_ID, 0, layout.IOAPIC_BASE, 0)
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)  # ISA IRQ 0 -> GSI 2, conforming
    for irq in MADT_LEVEL_HIGH_IRQS:
        body += struct.pack("<BBBBIH", 2, 10, 0, irq, irq, 0xD)  # active high, level
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)  # local APIC NMI: all processors, LINT1
    madt = _fix(_acpi_header(b"APIC", 36 + len(body), 1, b"HVSMMADT") + body, 9)
    rsdt = _fix(_acpi_header(b"RSDT", 40, 1, b"HVSMRSDT") + struct.pack("<I", MADT_ADDR), 9)
    rsdp = _fix(bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 0, RSDT_ADDR)), 8)
    return rsdp, rsdt, madt


def write_tables(memory, vcpus: int, signature: int, features: int, acpi: bool = True) -> None:
    """Both table sets into the BIOS area (RAM in hvsim's map, reserved in its memory map);
    ``acpi=False`` writes the MP table only (a Linux bzImage gets the fuller ACPI set of
    plugins/x86/acpi.py, whose RSDP at 0xE0000 an OS finds first)."""
    if not memory.is_ram(0xF_0000, 0x1_0000):
        return
    floating, config = mp_tables(vcpus, signature, features)
    rsdp, rsdt, madt = acpi_tables(vcpus)
    if MP_CONFIG_ADDR + len(config) > RSDT_ADDR or MADT_ADDR + len(madt) > TABLES_END:
        raise ValueError("too many vCPUs for the firmware tables' room")
    tables = [(MP_FLOAT_ADDR, floating), (MP_CONFIG_ADDR, config)]
    if acpi:
        tables += [(RSDP_ADDR, rsdp), (RSDT_ADDR, rsdt), (MADT_ADDR, madt)]
    for addr, data in tables:
        memory.write(addr, data)
