"""ACPI tables for the PC platform: how an operating system finds the local APICs, the IOAPIC,
the ISA interrupt overrides and the power-management registers (ACPI 6.5, chapter 5).

hvsim writes what an OS needs, in QEMU ``pc`` machine's shape, into the reserved BIOS area
below 1 MiB: an RSDP (revision 2) at 0xF0000, in the range 0xE0000-0xFFFFF where an OS
scans for it on 16-byte boundaries (Linux also gets its address in ``boot_params.acpi_rsdp_addr``), an RSDT and an
XSDT listing a FADT and a MADT; the FADT points at a FACS and a DSDT whose only content is the
``\\_S5`` sleep package, so ``poweroff`` can write SLP_TYP/SLP_EN to PM1a_CNT.

Chosen over the MP table because a distribution kernel may be built without MP-table support
(Debian's cloud kernel has ``CONFIG_X86_MPPARSE`` off) but never without ACPI on x86_64.
"""

from __future__ import annotations

import struct

RSDP_ADDR = 0xF_0000  # 16-byte aligned, in the BIOS area an OS scans (0xE0000-0xFFFFF)
TABLES_BASE = 0xE_0000  # the tables the RSDP leads to
TABLES_END = 0xF_0000
OEM_ID = b"HVSIM "  # 6 bytes
OEM_TABLE_ID = b"HVSIMPC "  # 8 bytes
CREATOR_ID = b"HVSM"

# MADT (5.2.12)
MADT_PCAT_COMPAT = 1
MADT_LOCAL_APIC, MADT_IO_APIC, MADT_INT_OVERRIDE, MADT_LOCAL_APIC_NMI = 0, 1, 2, 4
MPS_INTI_ACTIVE_HIGH, MPS_INTI_LEVEL = 0x1, 0xC  # flags: polarity bits 1:0, trigger bits 3:2

# FADT (5.2.9)
FADT_REVISION = 3
FADT_LENGTH = 244
FADT_WBINVD, FADT_C1_SUPPORTED = 1 << 0, 1 << 2
FADT_POWER_BUTTON, FADT_SLEEP_BUTTON = 1 << 4, 1 << 5  # set: no fixed-feature button
FADT_TMR_VAL_EXT = 1 << 8  # the PM timer counts 32 bits
FADT_RESET_REG_SUP = 1 << 10
IAPC_LEGACY_DEVICES = 1 << 0  # ISA devices the OS cannot enumerate (the PIT, the PIC, COM1)
# IAPC bit 1 (8042) left clear: there is no keyboard controller, so Linux does not probe one.

SCI_IRQ = 9
LEVEL_HIGH_IRQS = (5, SCI_IRQ, 10, 11)
# Port map of hvsim's ACPI power-management block (QEMU's PIIX4 PM uses the same 0x600 base)
PM_BASE = 0x600
PM1A_EVT_BLK = PM_BASE  # PM1_STS (2 bytes), PM1_EN (2 bytes)
PM1A_CNT_BLK = PM_BASE + 4  # PM1_CNT (2 bytes)
PM_TMR_BLK = PM_BASE + 8  # 24/32-bit timer at 3.579545 MHz
PM_BLOCK_LEN = 12
RESET_PORT = 0xCF9  # the PIIX reset control register: RESET_REG, value 0x06
RESET_VALUE = 0x06
SLP_TYP_S5 = 0  # the SLP_TYP value \_S5 gives (as QEMU's PIIX4)


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A system description table: the 36-byte header (5.2.6) and its body, checksummed."""
    length = 36 + len(body)
    head = struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, 1,
                       CREATOR_ID, 1)
    raw = bytearray(head + body)
    raw[9] = _checksum(raw)
    return bytes(raw)


def madt(apic_ids: list[int], lapic_base: int, ioapic_id: int, ioapic_base: int) -> bytes:
    body = bytearray(struct.pack("<II", lapic_base, MADT_PCAT_COMPAT))
    for uid, apic_id in enumerate(apic_ids):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, uid, apic_id, 1)  # enabled
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, ioapic_id, 0, ioapic_base, 0)
    # ISA IRQ 0 (the PIT) reaches IOAPIC input 2; the PCI interrupt lines QEMU's pc routes to
    # IRQs 5, 10, 11 and the SCI (IRQ 9) are level-triggered, active high (QEMU's build_madt)
    body += struct.pack("<BBBBIH", MADT_INT_OVERRIDE, 10, 0, 0, 2, 0)
    for irq in LEVEL_HIGH_IRQS:
        body += struct.pack("<BBBBIH", MADT_INT_OVERRIDE, 10, 0, irq, irq, MPS_INTI_ACTIVE_HIGH | MPS_INTI_LEVEL)
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, 0xFF, 0, 1)  # all processors, LINT1
    return _table(b"APIC", 3, bytes(body))


def dsdt() -> bytes:
    # Name (_S5, Package (4) {SLP_TYP_S5, SLP_TYP_S5, 0, 0}) in AML: NameOp '_S5_' PackageOp
    # PkgLength NumElements, then four ZeroOp/BytePrefix constants
    elements = b"".join(b"\x00" if v == 0 else b"\x0a" + bytes([v]) for v in (SLP_TYP_S5, SLP_TYP_S5, 0, 0))
    package = b"\x12" + bytes([2 + len(elements)]) + b"\x04" + elements
    return _table(b"DSDT", 2, b"\x08_S5_" + package)


def facs() -> bytes:
    raw = bytearray(64)
    struct.pack_into("<4sI", raw, 0, b"FACS", 64)
    raw[32] = 2  # version
    return bytes(raw)


def _gas_io(port: int, width_bits: int) -> bytes:
    """A Generic Address Structure (5.2.3.2) in system I/O space."""
    return struct.pack("<BBBBQ", 1, width_bits, 0, 1 if width_bits <= 8 else 2, port)


def fadt(facs_addr: int, dsdt_addr: int) -> bytes:
    body = bytearray(FADT_LENGTH - 36)

    def put(offset: int, fmt: str, *values) -> None:
        struct.pack_into(fmt, body, offset - 36, *values)

    put(36, "<II", facs_addr, dsdt_addr)
    put(46, "<H", SCI_IRQ)
    # SMI_CMD = 0: the platform is always in ACPI mode, there is nothing to enable
    put(56, "<I", PM1A_EVT_BLK)
    put(64, "<I", PM1A_CNT_BLK)
    put(76, "<I", PM_TMR_BLK)
    put(88, "<BBBB", 4, 2, 0, 4)  # PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN
    put(96, "<HH", 0x65, 0x3E9)  # C2 / C3 latencies above their limits: no C2, no C3
    put(109, "<H", IAPC_LEGACY_DEVICES)
    put(112, "<I", FADT_WBINVD | FADT_C1_SUPPORTED | FADT_POWER_BUTTON | FADT_SLEEP_BUTTON
        | FADT_TMR_VAL_EXT | FADT_RESET_REG_SUP)
    body[116 - 36:128 - 36] = _gas_io(RESET_PORT, 8)
    put(128, "<B", RESET_VALUE)
    put(140, "<Q", dsdt_addr)  # X_DSDT
    return _table(b"FACP", FADT_REVISION, bytes(body))


def build(apic_ids: list[int], lapic_base: int, ioapic_id: int, ioapic_base: int) -> list[tuple[int, bytes]]:
    """Every table at its address, the RSDP first: [(guest-physical address, bytes), ...]."""
    placed: list[tuple[int, bytes]] = []
    cursor = TABLES_BASE

    def place(data: bytes, align: int = 16) -> int:
        nonlocal cursor
        cursor = (cursor + align - 1) & ~(align - 1)
        addr = cursor
        placed.append((addr, data))
        cursor += len(data)
        return addr

    facs_addr = place(facs(), 64)  # FACS: 64-byte aligned
    dsdt_addr = place(dsdt())
    fadt_addr = place(fadt(facs_addr, dsdt_addr))
    madt_addr = place(madt(apic_ids, lapic_base, ioapic_id, ioapic_base))
    entries = [fadt_addr, madt_addr]
    rsdt_addr = place(_table(b"RSDT", 1, b"".join(struct.pack("<I", a) for a in entries)))
    xsdt_addr = place(_table(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in entries)))
    if cursor > TABLES_END:
        raise ValueError("ACPI tables overflow the BIOS area")  # only with thousands of vCPUs
    rsdp = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, rsdt_addr, 36, xsdt_addr, 0, b"\0\0\0"))
    rsdp[8] = _checksum(rsdp[:20])
    rsdp[32] = _checksum(rsdp)
    return [(RSDP_ADDR, bytes(rsdp))] + placed
