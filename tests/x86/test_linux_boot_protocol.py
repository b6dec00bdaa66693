"""The Linux/x86 boot protocol (bzImage, 32-bit entry), the ACPI tables and the PC devices a
Linux kernel looks for (CMOS RTC, ACPI PM block, reset register), under both vendors.

The kernels here are synthetic bzImages: a setup header as boot.rst defines it, and a
protected-mode part of real 32-bit code that reads the zero page the loader built.
"""

from __future__ import annotations

import struct

import pytest

from guestlib import X86_DATA, x86_32
from hvsim.core.errors import ImageError
from hvsim.plugins.x86 import acpi, linux

VENDORS = ["intel_vtx", "amd_svm"]
EXIT = "mov al, 0\nout 0xf4, al\nhlt"


@pytest.fixture(params=VENDORS)
def arch(request):
    return request.param


def bzimage(src32: str, *, version: int = 0x020F, loadflags: int = 1, setup_sects: int = 1,
            initrd_addr_max: int = 0x7FFF_FFFF, cmdline_size: int = 2047) -> bytes:
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = bytes([0xEB, 0x268 - 0x202])  # jmp over the header, which ends at 0x268
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, 0x10_0000)
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<I", setup, 0x260, 0x1_0000)  # init_size
    return bytes(setup) + x86_32(src32, 0x10_0000)


# Stores the entry state and what the zero page says, at X86_DATA.
PROBE = f"""
    mov [{X86_DATA + 0x00:#x}], ebx
    mov [{X86_DATA + 0x04:#x}], ebp
    mov [{X86_DATA + 0x08:#x}], edi
    mov [{X86_DATA + 0x0C:#x}], esi
    mov ax, cs
    mov [{X86_DATA + 0x10:#x}], ax
    mov ax, ds
    mov [{X86_DATA + 0x12:#x}], ax
    mov ax, ss
    mov [{X86_DATA + 0x14:#x}], ax
    mov eax, cr0
    mov [{X86_DATA + 0x18:#x}], eax
    pushfd
    pop eax
    mov [{X86_DATA + 0x1C:#x}], eax
    mov eax, [esi + 0x218]
    mov [{X86_DATA + 0x20:#x}], eax
    mov eax, [esi + 0x21C]
    mov [{X86_DATA + 0x24:#x}], eax
    mov ebx, [esi + 0x228]
    mov eax, [ebx]
    mov [{X86_DATA + 0x28:#x}], eax
    movzx eax, byte ptr [esi + 0x1E8]
    mov [{X86_DATA + 0x2C:#x}], eax
    mov eax, [esi + 0x70]
    mov [{X86_DATA + 0x30:#x}], eax
    movzx eax, byte ptr [esi + 0x210]
    mov [{X86_DATA + 0x34:#x}], eax
    mov ebx, [esi + 0x218]
    mov eax, [ebx]
    mov [{X86_DATA + 0x38:#x}], eax
    mov ebx, [esi + 0x228]
    mov [{X86_DATA + 0x3C:#x}], ebx
    {EXIT}"""


def test_bzimage_entry_state_and_zero_page(make_vm, arch):
    """boot.rst, 32-bit boot protocol: CS __BOOT_CS, DS/SS __BOOT_DS, paging off, interrupts
    off, ESI the zero page with the loader's fields, EBX/EBP/EDI zero."""
    vm = make_vm(arch, mem="64M", append="console=ttyS0 hello", initrd=b"INIT" + bytes(5000))
    vm.load(bzimage(PROBE))
    assert vm.run(timeout=10).status == 1
    m = vm.memory
    ebx, ebp, edi, esi = struct.unpack("<IIII", m.read(X86_DATA, 16))
    assert (ebx, ebp, edi) == (0, 0, 0) and esi == linux.ZERO_PAGE
    cs, ds, ss = struct.unpack("<HHH", m.read(X86_DATA + 0x10, 6))
    assert (cs, ds, ss) == (0x10, 0x18, 0x18)
    cr0, eflags = struct.unpack("<II", m.read(X86_DATA + 0x18, 8))
    assert cr0 & 0x8000_0001 == 1 and not eflags & 0x200
    rd_image, rd_size, cmd4, n_e820, rsdp, loader, rd_first, cmd_ptr = struct.unpack("<8I", m.read(X86_DATA + 0x20, 32))
    assert rd_size == 5004 and rd_first == struct.unpack("<I", b"INIT")[0]
    assert rd_image % 4096 == 0 and rd_image + rd_size <= 64 << 20 and rd_image >= 0x10_0000 + 0x1_0000
    assert m.read(cmd_ptr, 20) == b"console=ttyS0 hello\0" and cmd4 == struct.unpack("<I", b"cons")[0]
    assert loader == 0xFF and rsdp == acpi.RSDP_ADDR
    e820 = [struct.unpack_from("<QQI", m.read(linux.ZERO_PAGE + 0x2D0 + 20 * i, 20)) for i in range(n_e820)]
    assert (0, 0x9FC00, 1) in e820 and (0x10_0000, (64 << 20) - 0x10_0000, 1) in e820
    assert (0xFEC0_0000, 0x1000, 2) in e820


def _table_at(m, addr):
    sig, length = struct.unpack("<4sI", m.read(addr, 8))
    data = m.read(addr, length)
    assert sum(data) & 0xFF == 0, f"{sig} checksum"
    return sig, data


def test_acpi_tables_are_valid_and_describe_the_platform(make_vm, arch):
    vm = make_vm(arch, mem="64M", vcpus=2)
    vm.load(bzimage(EXIT))
    m = vm.memory
    rsdp = m.read(acpi.RSDP_ADDR, 36)
    assert rsdp[:8] == b"RSD PTR " and sum(rsdp[:20]) & 0xFF == 0 and sum(rsdp) & 0xFF == 0
    rsdt, length, xsdt = struct.unpack_from("<IIQ", rsdp, 16)
    assert rsdp[15] == 2 and length == 36
    _, x = _table_at(m, xsdt)
    tables = dict(_table_at(m, a) for a in struct.unpack_from(f"<{(len(x) - 36) // 8}Q", x, 36))
    _, r = _table_at(m, rsdt)
    assert sorted(struct.unpack_from(f"<{(len(r) - 36) // 4}I", r, 36)) == sorted(
        struct.unpack_from(f"<{(len(x) - 36) // 8}Q", x, 36))
    madt = tables[b"APIC"]
    lapic, flags = struct.unpack_from("<II", madt, 36)
    assert lapic == 0xFEE0_0000 and flags & 1
    entries, off = [], 44
    while off < len(madt):
        entries.append(madt[off:off + madt[off + 1]])
        off += madt[off + 1]
    cpus = [(e[2], e[3]) for e in entries if e[0] == 0]
    assert cpus == [(0, 0), (1, 1)]
    assert [struct.unpack_from("<I", e, 4)[0] for e in entries if e[0] == 1] == [0xFEC0_0000]
    overrides = {e[3]: struct.unpack_from("<IH", e, 4) for e in entries if e[0] == 2}
    assert overrides[0] == (2, 0) and overrides[9] == (9, 0xD)
    fadt = tables[b"FACP"]
    facs, dsdt = struct.unpack_from("<II", fadt, 36)
    assert struct.unpack_from("<H", fadt, 46)[0] == 9
    assert struct.unpack_from("<III", fadt, 56)[0] == 0x600 and struct.unpack_from("<I", fadt, 64)[0] == 0x604
    assert m.read(facs, 4) == b"FACS"
    sig, d = _table_at(m, dsdt)
    assert sig == b"DSDT" and b"_S5_" in d


def test_acpi_poweroff_ends_the_run_with_status_0(make_vm, arch):
    """What Linux's acpi_power_off does: SLP_TYP from \\_S5 with SLP_EN into PM1a_CNT."""
    vm = make_vm(arch, mem="64M")
    vm.load(bzimage(f"""
        mov dx, 0x604
        in ax, dx
        mov [{X86_DATA:#x}], ax
        mov ax, {(acpi.SLP_TYP_S5 << 10) | 0x2000:#x}
        out dx, ax
        mov al, 7
        out 0xf4, al"""))
    result = vm.run(timeout=10)
    assert result.status == 0 and "poweroff" in result.reason
    assert vm.memory.read_u16(X86_DATA) & 1  # SCI_EN: always in ACPI mode


def test_reset_register_ends_the_run(make_vm, arch):
    vm = make_vm(arch, mem="64M")
    vm.load(bzimage("mov dx, 0xcf9\nmov al, 6\nout dx, al\nmov al, 7\nout 0xf4, al"))
    result = vm.run(timeout=10)
    assert result.status == 0 and "reset" in result.reason


def test_pm_timer_and_cmos_clock_advance(make_vm, arch):
    """The PM timer counts at 3.579545 MHz; the RTC reads BCD time in 24-hour mode."""
    vm = make_vm(arch, mem="64M", deterministic=True)
    vm.load(bzimage(f"""
        mov dx, 0x608
        in eax, dx
        mov [{X86_DATA:#x}], eax
        mov ecx, 200000
    spin:
        loop spin
        in eax, dx
        mov [{X86_DATA + 4:#x}], eax
        mov al, 0x0b
        out 0x70, al
        in al, 0x71
        mov [{X86_DATA + 8:#x}], al
        mov al, 0x0a
        out 0x70, al
        in al, 0x71
        mov [{X86_DATA + 9:#x}], al
        mov al, 0x32
        out 0x70, al
        in al, 0x71
        mov [{X86_DATA + 10:#x}], al
        mov al, 0x0d
        out 0x70, al
        in al, 0x71
        mov [{X86_DATA + 11:#x}], al
        {EXIT}"""))
    assert vm.run(timeout=10).status == 1
    t0, t1 = struct.unpack("<II", vm.memory.read(X86_DATA, 8))
    assert (t1 - t0) & 0xFFFF_FFFF > 0
    reg_b, reg_a, century, reg_d = vm.memory.read(X86_DATA + 8, 4)
    assert reg_b == 0x02 and reg_a == 0x26 and century == 0x20 and reg_d == 0x80


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:0x300], "truncated"),
    (lambda d: d[:0x206] + struct.pack("<H", 0x0205) + d[0x208:], "older than 2.06"),
    (lambda d: d[:0x211] + b"\0" + d[0x212:], "zImage"),
    (lambda d: d[:0x1FE] + b"\0\0" + d[0x200:], "boot_flag"),
])
def test_malformed_bzimage_is_one_clear_error(make_vm, arch, mutate, message):
    vm = make_vm(arch, mem="64M")
    with pytest.raises(ImageError, match=message):
        vm.load(mutate(bzimage(EXIT)))


def test_initrd_that_does_not_fit_is_refused(make_vm, arch):
    vm = make_vm(arch, mem="16M", initrd=bytes(15 << 20))
    with pytest.raises(ImageError, match="does not fit"):
        vm.load(bzimage(EXIT))
