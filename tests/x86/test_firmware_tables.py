"""The MP configuration table and the ACPI MADT an OS finds the APICs by (MP spec 1.4, ACPI
MADT), on both vendors: a guest searches the BIOS area for the MP floating pointer and the
RSDP as an OS does (16-byte boundaries, signature, checksum); the tables are then parsed."""

from __future__ import annotations

import struct

import pytest

from apic_guests import EXIT, OUT
from guestlib import X86_STACK, x86_64

VENDORS = ["intel_vtx", "amd_svm"]


@pytest.fixture(params=[(a, n) for a in VENDORS for n in (1, 3)], ids=lambda p: f"{p[0]}-{p[1]}cpu")
def setup(request):
    return request.param


def search(label: str, sig_lo: int, sig_hi: int, length: int, at: int) -> str:
    """Scan 0xF0000-0xFFFFF in 16-byte steps for an 8-byte signature (``sig_hi`` 0: 4 bytes)
    whose first ``length`` bytes sum to 0; store its address at ``at`` (0 if none)."""
    compare = (f"cmp dword ptr [rsi], {sig_lo:#x}\njne {label}_next\n" +
               (f"cmp dword ptr [rsi + 4], {sig_hi:#x}\njne {label}_next\n" if sig_hi else ""))
    return f"""
    mov rsi, 0xf0000
{label}_loop:
    {compare}
    xor eax, eax
    xor ecx, ecx
{label}_sum:
    add al, byte ptr [rsi + rcx]
    inc ecx
    cmp ecx, {length}
    jb {label}_sum
    test al, al
    jnz {label}_next
    mov qword ptr [{at:#x}], rsi
    jmp {label}_done
{label}_next:
    add rsi, 16
    cmp rsi, 0x100000
    jb {label}_loop
    mov qword ptr [{at:#x}], 0
{label}_done:
"""


def checksum_ok(data: bytes) -> bool:
    return sum(data) & 0xFF == 0


def test_guest_finds_mp_table_and_madt(make_vm, setup):
    arch, vcpus = setup
    src = (search("mp", 0x5F504D5F, 0, 16, OUT) + search("rsdp", 0x20445352, 0x20525450, 20, OUT + 8)
           + EXIT)
    vm = make_vm(arch, mem="64M", vcpus=vcpus)
    vm.load(x86_64(f"mov rsp, {X86_STACK}\n{src}"))
    r = vm.run(timeout=20)
    assert r.status == 1, r.reason
    m = vm.memory
    mp, rsdp = m.read_u64(OUT), m.read_u64(OUT + 8)
    assert mp and rsdp

    # MP floating pointer -> configuration table
    config_addr = struct.unpack_from("<I", m.read(mp + 4, 4))[0]
    assert m.read(mp + 9, 1) == b"\x04"  # spec revision 1.4
    sig, length, rev, _ck = struct.unpack("<4sHBB", m.read(config_addr, 8))
    assert sig == b"PCMP" and rev == 4
    table = m.read(config_addr, length)
    assert checksum_ok(table)
    count, lapic = struct.unpack_from("<HI", table, 34)
    assert lapic == 0xFEE0_0000
    off, cpus, ioapics, ints, locals_ = 44, [], [], {}, []
    for _ in range(count):
        kind = table[off]
        if kind == 0:
            _, apic_id, ver, flags = struct.unpack_from("<BBBB", table, off)
            cpus.append((apic_id, ver, flags))
            off += 20
        else:
            if kind == 2:
                ioapics.append(struct.unpack_from("<BBBBI", table, off))
            elif kind == 3:
                _, _, _, _, irq, _, intin = struct.unpack_from("<BBHBBBB", table, off)
                ints[irq] = intin
            elif kind == 4:
                locals_.append(struct.unpack_from("<BBHBBBB", table, off)[1::5])
            off += 8
    assert cpus == [(i, 0x14, 1 | (2 if i == 0 else 0)) for i in range(vcpus)]
    assert ioapics == [(2, 0, 0x11, 1, 0xFEC0_0000)]
    assert ints[0] == 2 and 2 not in ints and ints[4] == 4
    assert sorted(locals_) == [(1, 1), (3, 0)]  # NMI -> LINT1, ExtINT -> LINT0

    # RSDP -> RSDT -> MADT
    assert checksum_ok(m.read(rsdp, 20))
    rsdt_addr = struct.unpack("<I", m.read(rsdp + 16, 4))[0]
    sig, length = struct.unpack("<4sI", m.read(rsdt_addr, 8))
    rsdt = m.read(rsdt_addr, length)
    assert sig == b"RSDT" and checksum_ok(rsdt)
    entries = struct.unpack_from(f"<{(length - 36) // 4}I", rsdt, 36)
    madt_addr = next(a for a in entries if m.read(a, 4) == b"APIC")
    sig, length = struct.unpack("<4sI", m.read(madt_addr, 8))
    madt = m.read(madt_addr, length)
    assert sig == b"APIC" and checksum_ok(madt)
    assert struct.unpack_from("<II", madt, 36) == (0xFEE0_0000, 1)
    off, lapics, overrides, io = 44, [], {}, []
    while off < length:
        kind, size = madt[off], madt[off + 1]
        if kind == 0:
            lapics.append(struct.unpack_from("<BBI", madt, off + 2))
        elif kind == 1:
            io.append(struct.unpack_from("<BBII", madt, off + 2))
        elif kind == 2:
            _bus, src_irq, gsi, flags = struct.unpack_from("<BBIH", madt, off + 2)
            overrides[src_irq] = (gsi, flags)
        off += size
    assert off == length
    assert lapics == [(i, i, 1) for i in range(vcpus)]
    assert io == [(0, 0, 0xFEC0_0000, 0)]
    assert overrides[0] == (2, 0) and overrides[9] == (9, 0xD)


def test_fw_cfg_reports_the_number_of_cpus(make_vm):
    """FW_CFG_NB_CPUS (0x05) through the I/O-port interface: select, then two data reads."""
    src = """
    mov dx, 0x510
    mov ax, 5
    out dx, ax
    mov dx, 0x511
    in al, dx
    mov bl, al
    in al, dx
    mov bh, al
    """ + f"mov word ptr [{OUT:#x}], bx\n" + EXIT
    vm = make_vm("intel_vtx", vcpus=4)
    vm.load(x86_64(f"mov rsp, {X86_STACK}\n{src}"))
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read_u16(OUT) == 4
