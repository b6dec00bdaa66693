"""The PC platform both x86 vendors share: boot protocols, devices, CPUID, exception delivery.

Every test runs real guest code under intel_vtx and amd_svm.
"""

from __future__ import annotations

import struct

import pytest

from guestlib import X86_BASE, X86_DATA, X86_STACK, x86_32, x86_64, x86_hypercall, x86_idt_setup
from hvsim.core.exits import ExitKind
from hvsim.core.guests.build import elf32
from hvsim.core.vm import STATUS_GUEST_CRASH

VENDORS = ["intel_vtx", "amd_svm"]
EXIT_HALT = "mov al, 0\nout 0xf4, al\nhlt"


@pytest.fixture(params=VENDORS)
def arch(request):
    return request.param


def run64(make_vm, arch, src, pm=None, **kw):
    vm = make_vm(arch, **kw)
    vm.load(x86_64(f"mov rsp, {X86_STACK}\n{src}"))
    return vm, vm.run(timeout=10)


def multiboot_kernel(src32: str) -> bytes:
    header = struct.pack("<III", 0x1BADB002, 3, (-(0x1BADB002 + 3)) & 0xFFFF_FFFF)
    code = x86_32(src32, X86_BASE + len(header))
    return elf32(header + code, X86_BASE, len(header) + len(code) + 0x1000, X86_BASE + len(header))


# -- boot protocols ------------------------------------------------------------------------

def test_multiboot_entry_state_is_the_specs(make_vm, arch):
    """Multiboot 0.6.96 3.2: EAX magic, EBX info, 32-bit protected mode, paging off."""
    kernel = multiboot_kernel(f"""
        mov [{X86_DATA:#x}], eax
        mov [{X86_DATA + 4:#x}], ebx
        mov eax, cr0
        mov [{X86_DATA + 8:#x}], eax
        mov ax, cs
        mov [{X86_DATA + 12:#x}], ax
        mov ax, ss
        mov [{X86_DATA + 14:#x}], ax
        {EXIT_HALT}""")
    vm = make_vm(arch, mem="64M", append="console=ttyS0 quiet", initrd=b"module-bytes")
    vm.load(kernel)
    assert vm.run(timeout=10).status == 1
    m = vm.memory
    magic, info, cr0 = struct.unpack("<III", m.read(X86_DATA, 12))
    assert magic == 0x2BADB002
    assert cr0 & 0x8000_0001 == 1  # PE on, PG off
    assert m.read_u16(X86_DATA + 12) == 0x08 and m.read_u16(X86_DATA + 14) == 0x10
    flags, mem_lower, mem_upper = struct.unpack("<III", m.read(info, 12))
    assert flags & (1 | 4 | 8 | 0x40) == (1 | 4 | 8 | 0x40)  # mem, cmdline, mods, mmap
    assert mem_lower == 639 and mem_upper == (64 << 10) - 1024
    cmdline = struct.unpack("<I", m.read(info + 16, 4))[0]
    assert m.read(cmdline, 40).split(b"\0")[0] == b"<image> console=ttyS0 quiet"  # bytes: no file name
    mods_count, mods_addr = struct.unpack("<II", m.read(info + 20, 8))
    start, end = struct.unpack("<II", m.read(mods_addr, 8))
    assert mods_count == 1 and m.read(start, end - start) == b"module-bytes"
    mmap_len, mmap_addr = struct.unpack("<II", m.read(info + 44, 8))
    entries = [struct.unpack("<IQQI", m.read(mmap_addr + o, 24)) for o in range(0, mmap_len, 24)]
    assert (20, 0x10_0000, (64 << 20) - 0x10_0000, 1) in entries


# Prints its arguments the way a Multiboot kernel that treats the command line as argv does:
# the first word is its own name, the rest go to COM1.
PRINT_ARGUMENTS = f"""
        mov esi, [ebx + 16]
        mov [{X86_DATA:#x}], esi
        mov dx, 0x3f8
    name:
        lodsb
        test al, al
        jz done
        cmp al, 0x20
        jne name
    args:
        lodsb
        test al, al
        jz done
        out dx, al
        jmp args
    done:
        {EXIT_HALT}"""


@pytest.mark.parametrize("append", ["console=ttyS0 quiet", ""])
def test_multiboot_command_line_is_the_kernel_file_name_then_the_append_text(make_vm, arch, tmp_path, append):
    """QEMU's multiboot.c passes "<-kernel string> <-append text>" (a space even with no
    --append): a kernel that takes its first word as its name gets every argument."""
    path = tmp_path / "kern.elf"
    path.write_bytes(multiboot_kernel(PRINT_ARGUMENTS))
    vm = make_vm(arch, append=append)
    vm.load(path)
    assert vm.run(timeout=10).status == 1
    assert vm.console.text == append
    cmdline = vm.memory.read_u32(X86_DATA)
    assert vm.memory.read(cmdline, 200).split(b"\0")[0] == f"{path} {append}".encode()


def test_elf64_and_raw_images_start_in_long_mode_with_a_stack(make_vm, arch):
    vm = make_vm(arch)
    vm.load(x86_64(f"""
        mov [{X86_DATA:#x}], rsp
        mov ecx, 0xC0000080
        rdmsr
        mov [{X86_DATA + 8:#x}], eax
        {EXIT_HALT}"""))
    vm.run(timeout=10)
    assert vm.memory.read_u64(X86_DATA) != 0
    assert vm.memory.read_u32(X86_DATA + 8) & 0x500 == 0x500  # EFER.LME | EFER.LMA


def test_raw_image_honours_load_addr_and_entry(make_vm, arch):
    code = x86_64(f"nop\nnop\nmov byte ptr [{X86_DATA:#x}], 7\n{EXIT_HALT}", 0x40_0000)
    vm = make_vm(arch, load_addr=0x40_0000, entry=0x40_0001)
    vm.load(code)
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read(X86_DATA, 1) == b"\x07"


# -- RAM around the PCI hole (QEMU pc_piix.c) ----------------------------------------------

def multiboot_memory_map(vm) -> tuple[int, list[tuple[int, int, int]]]:
    info = vm.memory.read_u32(X86_DATA + 4)
    mem_upper = vm.memory.read_u32(info + 8)
    mmap_len, mmap_addr = struct.unpack("<II", vm.memory.read(info + 44, 8))
    entries = [struct.unpack("<IQQI", vm.memory.read(mmap_addr + o, 24)) for o in range(0, mmap_len, 24)]
    return mem_upper, [(base, length, kind) for _, base, length, kind in entries if kind == 1]


@pytest.mark.parametrize("mem, low, high", [
    ("3584M", 0xC000_0000, 512 << 20),  # = max-ram-below-4g: split at 3 GiB (gigabyte_align)
    ("4G", 0xC000_0000, 1 << 30),
    ("3583M", 3583 << 20, 0),  # just below it: all under 4 GiB, below the IOAPIC and LAPIC
])
def test_multiboot_memory_map_reports_ram_split_around_the_pci_hole(make_vm, arch, mem, low, high):
    vm = make_vm(arch, mem=mem)
    vm.load(multiboot_kernel(f"mov [{X86_DATA + 4:#x}], ebx\n{EXIT_HALT}"))
    assert vm.run(timeout=10).status == 1
    mem_upper, ram = multiboot_memory_map(vm)
    assert mem_upper == (low >> 10) - 1024  # contiguous from 1 MiB (QEMU's multiboot option ROM)
    expected = [(0, 0x9_FC00, 1), (0x10_0000, low - 0x10_0000, 1)] + ([(1 << 32, high, 1)] if high else [])
    assert ram == expected


def test_ram_above_4g_is_reached_and_the_apic_page_is_not_ram(make_vm, arch):
    """With 4 GiB the guest maps 4 GiB with a 1 GiB page (its boot tables' PDPT at 0x2000) and
    writes there; the write lands in the RAM slot at 4 GiB. The local APIC page and the IOAPIC
    are not RAM any more: e820 (fw_cfg etc/e820) lists RAM only around them."""
    vm = make_vm(arch, mem="4G")
    fw_cfg = vm.bus.port(0x510).device
    key = fw_cfg.key_of("etc/e820")
    vm.load(x86_64(f"""
        mov rax, 0x100000083
        mov [0x2020], rax
        mov rbx, 0x100000040
        mov rax, 0x1122334455667788
        mov [rbx], rax
        mov rcx, [rbx]
        mov [{X86_DATA:#x}], rcx
        mov dx, 0x510
        mov ax, {key:#x}
        out dx, ax
        mov dx, 0x511
        mov rdi, {X86_DATA + 0x100:#x}
        mov ecx, 40
    e820:
        in al, dx
        stosb
        dec ecx
        jnz e820
        {EXIT_HALT}"""))
    assert vm.run(timeout=10).status == 1
    assert vm.memory.read_u64(X86_DATA) == 0x1122_3344_5566_7788
    assert vm.memory.read_u64((1 << 32) + 0x40) == 0x1122_3344_5566_7788
    table = [struct.unpack_from("<QQI", vm.memory.read(X86_DATA + 0x100, 40), o) for o in (0, 20)]
    assert table == [(0, 0xC000_0000, 1), (1 << 32, 1 << 30, 1)]
    assert not vm.memory.is_ram(0xFEE0_0000) and not vm.memory.is_ram(0xFEC0_0000)
    assert vm.memory.ram_size == 4 << 30


# -- devices -------------------------------------------------------------------------------

def test_fw_cfg_reports_signature_ram_size_and_cpu_count(make_vm, arch):
    vm, result = run64(make_vm, arch, f"""
        mov dx, 0x510
        mov ax, 0
        out dx, ax
        mov dx, 0x511
        mov rdi, {X86_DATA:#x}
        mov ecx, 4
    sig:
        in al, dx
        stosb
        dec ecx
        jnz sig
        mov dx, 0x510
        mov ax, 3
        out dx, ax
        mov dx, 0x511
        mov ecx, 8
    ram:
        in al, dx
        stosb
        dec ecx
        jnz ram
        {EXIT_HALT}""", mem="48M")
    assert vm.memory.read(X86_DATA, 4) == b"QEMU"
    assert vm.memory.read_u64(X86_DATA + 4) == 48 << 20


def test_unclaimed_port_reads_all_ones_and_pic_masks_are_accepted(make_vm, arch):
    vm, result = run64(make_vm, arch, f"""
        mov al, 0xfb
        out 0x21, al
        mov al, 0xff
        out 0xa1, al
        in al, 0x21
        mov [{X86_DATA:#x}], al
        mov dx, 0x1234
        in eax, dx
        mov [{X86_DATA + 4:#x}], eax
        mov al, 0x99
        out 0x80, al
        {EXIT_HALT}""")
    assert result.status == 1
    assert vm.memory.read(X86_DATA, 1) == b"\xfb"
    assert vm.memory.read_u32(X86_DATA + 4) == 0xFFFF_FFFF


def test_ia32_apic_base_msr_reads_back_what_was_written(make_vm, arch):
    vm, result = run64(make_vm, arch, f"""
        mov ecx, 0x1b
        rdmsr
        mov [{X86_DATA:#x}], eax
        mov eax, 0xfee00800
        xor edx, edx
        wrmsr
        rdmsr
        mov [{X86_DATA + 4:#x}], eax
        {EXIT_HALT}""")
    assert vm.memory.read_u32(X86_DATA) == 0xFEE0_0900  # xAPIC enabled, BSP
    assert vm.memory.read_u32(X86_DATA + 4) & 0xFFFF_F800 == 0xFEE0_0800


# -- CPUID ---------------------------------------------------------------------------------

def test_cpuid_shows_the_vendor_and_the_hypervisor_leaf(make_vm, arch):
    vm, _ = run64(make_vm, arch, f"""
        xor eax, eax
        cpuid
        mov [{X86_DATA:#x}], ebx
        mov [{X86_DATA + 4:#x}], edx
        mov [{X86_DATA + 8:#x}], ecx
        mov eax, 1
        cpuid
        mov [{X86_DATA + 12:#x}], ecx
        mov eax, 0x40000000
        cpuid
        mov [{X86_DATA + 16:#x}], ebx
        mov [{X86_DATA + 20:#x}], ecx
        mov [{X86_DATA + 24:#x}], edx
        {EXIT_HALT}""")
    vendor = {"intel_vtx": b"GenuineIntel", "amd_svm": b"AuthenticAMD"}[arch]
    assert vm.memory.read(X86_DATA, 12) == vendor
    assert vm.memory.read_u32(X86_DATA + 12) >> 31 == 1  # CPUID.1:ECX.hypervisor
    assert vm.memory.read(X86_DATA + 16, 12) == b"hvsimhvsimhv"


# -- I/O exit records ----------------------------------------------------------------------

@pytest.mark.parametrize("insn,port,size,is_in,imm,length", [
    ("out 0x80, al", 0x80, 1, False, True, 2),
    ("mov dx, 0x3f9\nout dx, ax", 0x3F9, 2, False, False, 2),
    ("mov dx, 0x1230\nin eax, dx", 0x1230, 4, True, False, 1),
    ("in al, 0x71", 0x71, 1, True, True, 2),
])
def test_io_exit_records_size_direction_port_and_operand(make_vm, recorder, arch, insn, port, size, is_in,
                                                          imm, length):
    rec = recorder
    vm, _ = run64(make_vm, arch, f"{insn}\n{EXIT_HALT}")
    exit = next(e for e in rec.exits if e.kind is ExitKind.PORT_IO)
    assert (exit.address, exit.size, exit.is_write) == (port, size, not is_in)
    if arch == "intel_vtx":
        q = exit.raw.EXIT_QUALIFICATION
        assert exit.raw.EXIT_REASON == 30
        assert q & 7 == {1: 0, 2: 1, 4: 3}[size]  # SDM Table 28-5: size of access
        assert bool(q & 8) == is_in and bool(q & 0x40) == imm and q >> 16 == port
        assert exit.raw.VM_EXIT_INSTRUCTION_LEN == length
    else:
        i1 = exit.raw.EXITINFO1
        assert exit.raw.EXITCODE == 0x7B
        assert bool(i1 & 1) == is_in and i1 >> 16 == port  # APM Figure 15-2
        assert i1 & 0x70 == {1: 0x10, 2: 0x20, 4: 0x40}[size]
        assert exit.raw.EXITINFO2 == exit.raw.NRIP
        assert vm.memory.read(exit.raw.NRIP - length, length) == x86_64(insn.split("\n")[-1])


def test_rep_outsb_is_a_string_io_exit_per_byte(make_vm, recorder, arch):
    rec = recorder
    vm, _ = run64(make_vm, arch, f"""
        mov rsi, {X86_DATA:#x}
        mov dword ptr [rsi], 0x0a216968
        mov dx, 0x3f8
        mov rcx, 4
        rep outsb
        {EXIT_HALT}""")
    assert vm.console.output == b"hi!\n"
    ios = [e for e in rec.exits if e.kind is ExitKind.PORT_IO and e.address == 0x3F8]
    assert len(ios) == 4
    if arch == "intel_vtx":
        assert all(e.raw.EXIT_QUALIFICATION & 0x30 == 0x30 for e in ios)  # string, REP
    else:
        assert all(e.raw.EXITINFO1 & 0xC == 0xC for e in ios)  # STR, REP


# -- exceptions delivered through the guest's IDT ------------------------------------------

def test_divide_error_page_fault_and_general_protection_reach_their_handlers(make_vm, arch):
    vm, result = run64(make_vm, arch, f"""
        {x86_idt_setup({0: 'de', 13: 'gp', 14: 'pf'})}
        xor ecx, ecx
        div ecx
        div ecx
        mov rax, 0x100000000
        mov rbx, [rax]
        mov rax, 0x8000000000000000
        mov rbx, [rax]
        mov rax, [{X86_DATA:#x}]
        out 0xf4, al
        hlt
    de:
        inc qword ptr [{X86_DATA:#x}]
        add qword ptr [rsp], 2
        iretq
    pf:
        mov rax, [rsp]
        mov [{X86_DATA + 8:#x}], rax
        mov rax, cr2
        mov [{X86_DATA + 16:#x}], rax
        add rsp, 8
        add qword ptr [rsp], 3
        add qword ptr [{X86_DATA:#x}], 0x10
        iretq
    gp:
        mov rax, [rsp]
        mov [{X86_DATA + 24:#x}], rax
        add rsp, 8
        add qword ptr [rsp], 3
        add qword ptr [{X86_DATA:#x}], 0x20
        iretq""")
    assert vm.memory.read_u64(X86_DATA) == 0x32, result.reason  # two #DE, one #PF, one #GP
    assert vm.memory.read_u64(X86_DATA + 8) == 0  # #PF error code: not present, read, supervisor
    assert vm.memory.read_u64(X86_DATA + 16) == 0x1_0000_0000  # CR2
    assert vm.memory.read_u64(X86_DATA + 24) == 0  # #GP(0) for a non-canonical address


def test_software_interrupt_pushes_the_next_instruction(make_vm, arch):
    vm, result = run64(make_vm, arch, f"""
        {x86_idt_setup({0x80: 'sys'})}
        int 0x80
    after:
        mov al, [{X86_DATA:#x}]
        out 0xf4, al
        hlt
    sys:
        mov rax, [rsp]
        mov [{X86_DATA + 8:#x}], rax
        mov byte ptr [{X86_DATA:#x}], 5
        iretq""")
    assert result.status == 11
    ret = vm.memory.read_u64(X86_DATA + 8)
    assert vm.memory.read(ret - 2, 2) == b"\xcd\x80"


def test_protected_mode_delivery_pushes_eflags_cs_eip(make_vm, arch):
    kernel = multiboot_kernel(f"""
        mov esp, 0x180000
        mov eax, 0x300000
        mov dword ptr [eax + 6*8], 0x00080000
        mov dword ptr [eax + 6*8 + 4], 0x00008e00
        lea ebx, [ud]
        mov word ptr [eax + 6*8], bx
        shr ebx, 16
        mov word ptr [eax + 6*8 + 6], bx
        mov word ptr [{X86_DATA + 0x100:#x}], 0xff
        mov dword ptr [{X86_DATA + 0x102:#x}], 0x300000
        lidt [{X86_DATA + 0x100:#x}]
        ud2
        mov al, 0
        out 0xf4, al
        hlt
    ud:
        mov eax, [esp]
        mov [{X86_DATA:#x}], eax
        mov eax, [esp + 4]
        mov [{X86_DATA + 4:#x}], eax
        mov eax, [esp + 8]
        mov [{X86_DATA + 8:#x}], eax
        mov [{X86_DATA + 12:#x}], esp
        add dword ptr [esp], 2
        iretd""")
    vm = make_vm(arch)
    vm.load(kernel)
    result = vm.run(timeout=10)
    assert result.status == 1, result.reason
    eip, cs, eflags, esp = struct.unpack("<IIII", vm.memory.read(X86_DATA, 16))
    assert vm.memory.read(eip, 2) == b"\x0f\x0b" and cs == 0x08
    assert eflags & 2 and esp == 0x180000 - 12


def test_an_exception_with_no_usable_gate_is_a_triple_fault(make_vm, recorder, arch):
    rec = recorder
    vm, result = run64(make_vm, arch, "xor ecx, ecx\ndiv ecx\nhlt")
    assert result.status == STATUS_GUEST_CRASH
    assert "triple fault" in result.reason
    shutdown = [e for e in rec.exits if e.kind is ExitKind.SHUTDOWN]
    if arch == "intel_vtx":
        assert shutdown[0].reason == "EXIT_REASON_TRIPLE_FAULT" and shutdown[0].raw.EXIT_REASON == 2
    else:
        assert shutdown[0].reason == "VMEXIT_SHUTDOWN" and shutdown[0].raw.EXITCODE == 0x7F


def test_the_other_vendors_hypercall_is_an_undefined_opcode(make_vm, arch):
    other = x86_hypercall("amd_svm" if arch == "intel_vtx" else "intel_vtx")
    vm, result = run64(make_vm, arch, f"""
        {x86_idt_setup({6: 'ud'})}
        {other}
        {EXIT_HALT}
    ud:
        mov byte ptr [{X86_DATA:#x}], 1
        add qword ptr [rsp], 3
        iretq""")
    assert result.status == 1 and vm.memory.read(X86_DATA, 1) == b"\x01"


def test_access_to_memory_nothing_backs_is_a_clear_guest_crash_in_strict_mode(make_vm, arch):
    vm, result = run64(make_vm, arch, "mov rax, 0x80000000\nmov rbx, [rax]\nhlt", strict_mmio=True)
    assert result.status == STATUS_GUEST_CRASH
    assert "0x80000000" in result.reason and "no RAM or device" in result.reason


def test_apic_base_accesses_are_msr_exits_with_the_vendors_record(make_vm, recorder, arch):
    rec = recorder
    vm, _ = run64(make_vm, arch, f"""
        mov ecx, 0x1b
        rdmsr
        wrmsr
        mov ecx, 0xc0000080
        rdmsr
        {EXIT_HALT}""")
    msr = [e for e in rec.exits if e.kind is ExitKind.SYSREG]
    assert [(e.address, e.is_write) for e in msr] == [(0x1B, False), (0x1B, True)]  # EFER stays native
    if arch == "intel_vtx":
        assert [e.raw.EXIT_REASON for e in msr] == [31, 32]  # MSR_READ, MSR_WRITE
        assert msr[0].raw.VM_EXIT_INSTRUCTION_LEN == 2
    else:
        assert [(e.raw.EXITCODE, e.raw.EXITINFO1) for e in msr] == [(0x7C, 0), (0x7C, 1)]
        assert vm.memory.read(msr[0].raw.NRIP - 2, 2) == b"\x0f\x32"  # nRIP: after the RDMSR


def test_apic_base_write_to_a_reserved_bit_is_gp0(make_vm, arch):
    vm, result = run64(make_vm, arch, f"""
        {x86_idt_setup({13: 'gp'})}
        mov ecx, 0x1b
        mov eax, 0xfee00001
        xor edx, edx
        wrmsr
        {EXIT_HALT}
    gp:
        mov rax, [rsp]
        mov [{X86_DATA:#x}], rax
        mov rax, [rsp + 8]
        mov [{X86_DATA + 8:#x}], rax
        add rsp, 8
        add qword ptr [rsp], 2
        iretq""")
    assert result.status == 1
    assert vm.memory.read_u64(X86_DATA) == 0  # error code 0
    assert vm.memory.read(vm.memory.read_u64(X86_DATA + 8), 2) == b"\x0f\x30"  # at the WRMSR


def test_rdmsr_is_trapped_in_32_bit_protected_mode_too(make_vm, arch):
    kernel = multiboot_kernel(f"""
        mov ecx, 0x1b
        rdmsr
        mov [{X86_DATA:#x}], eax
        {EXIT_HALT}""")
    vm = make_vm(arch)
    vm.load(kernel)
    vm.run(timeout=10)
    assert vm.memory.read_u32(X86_DATA) == 0xFEE0_0900
