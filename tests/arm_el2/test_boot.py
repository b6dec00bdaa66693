"""Booting the virt platform: images, the entry state, the device tree in X0 (booting.rst)."""

from __future__ import annotations

import struct

import fdt
import pytest

from el2guest import LOAD, RAM, SCRATCH, SYSTEM_OFF, asm, guest, u64
from hvsim.core.errors import ImageError
from hvsim.core.vm import STATUS_OFF

STORE_ENTRY_STATE = f"""
    movz x8, #0x4180, lsl #16
    stp x0, x1, [x8]
    stp x2, x3, [x8, #16]
    mrs x4, CurrentEL
    mrs x5, daif
    mrs x6, sctlr_el1
    stp x4, x5, [x8, #32]
    str x6, [x8, #48]
    adr x7, here
here:
    str x7, [x8, #56]
    {SYSTEM_OFF}
"""


def linux_image(code: bytes, text_offset: int = 0x8_0000, image_size: int | None = None,
                pe_sections: list[tuple[int, int]] | None = None) -> bytes:
    """A Linux arm64 Image (booting.rst header) whose code starts right after the header."""
    header = bytearray(64)
    struct.pack_into("<I", header, 0, 0x1400_0010)  # code0: b +0x40, over the header
    struct.pack_into("<QQQ", header, 8, text_offset, image_size if image_size is not None
                     else 64 + len(code), 0b1010)  # flags: LE, 4K pages, anywhere
    header[0x38:0x3C] = b"ARM\x64"
    body = bytearray(code)
    if pe_sections is not None:  # an EFI stub's PE/COFF header at 0x40
        header[0:2] = b"MZ"
        struct.pack_into("<I", header, 0x3C, 0x40)
        pe = bytearray(b"PE\0\0" + struct.pack("<HHIIIHH", 0xAA64, len(pe_sections), 0, 0, 0, 0, 0))
        for raw_ptr, raw_size in pe_sections:
            pe += struct.pack("<8sIIIIIIHHI", b".text", raw_size, raw_ptr, raw_size, raw_ptr, 0, 0, 0, 0, 0)
        body = pe + body
    return bytes(header + body)


def elf64(machine: int, segments: list[tuple[int, bytes]], entry: int) -> bytes:
    """A minimal little-endian ELF64 executable with one PT_LOAD per segment."""
    phoff, phentsize = 64, 56
    data_off = phoff + phentsize * len(segments)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry, phoff, 0, 0, 64, phentsize,
                          len(segments), 0, 0, 0)
    phdrs, blobs, off = b"", b"", data_off
    for addr, blob in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, off, addr, addr, len(blob), len(blob), 0x1000)
        blobs += blob
        off += len(blob)
    return header + phdrs + blobs


def device_tree(vm) -> fdt.FDT:
    address = u64(vm, SCRATCH)
    size = struct.unpack(">I", vm.memory.read(address + 4, 4))[0]  # fdt_header.totalsize
    return fdt.parse_dtb(vm.memory.read(address, size))


def test_raw_image_enters_at_el1h_with_daif_masked_mmu_off_and_x1_x3_zero(run_guest):
    vm, result = run_guest(asm(STORE_ENTRY_STATE))
    assert result.status == STATUS_OFF
    x0, x1, x2, x3, el, daif, sctlr, pc = (u64(vm, SCRATCH + 8 * i) for i in range(8))
    assert (x1, x2, x3) == (0, 0, 0)
    assert el == 0x4 and daif == 0x3C0 and sctlr & 1 == 0
    assert pc == LOAD + 0x24  # the raw image ran where QEMU puts it: RAM + 0x80000
    assert x0 == RAM + (32 << 20)  # as for a Linux Image: RAM + min(RAM / 2, 128 MiB)


def test_device_tree_in_x0_describes_the_virt_platform(run_guest):
    vm, _ = run_guest(asm(STORE_ENTRY_STATE), append="console=ttyAMA0 earlycon", vcpus=2)
    tree = device_tree(vm)
    assert tree.get_property("compatible").value == "linux,dummy-virt"
    memory = tree.get_node("memory@40000000")
    assert memory.get_property("device_type").value == "memory"
    assert list(memory.get_property("reg")) == [0, RAM, 0, 64 << 20]
    cpus = [tree.get_node(f"cpus/cpu@{i}") for i in range(2)]
    assert [c.get_property("reg").value for c in cpus] == [0, 1]
    assert {c.get_property("enable-method").value for c in cpus} == {"psci"}
    uart = tree.get_node("pl011@9000000")
    assert list(uart.get_property("compatible")) == ["arm,pl011", "arm,primecell"]
    assert list(uart.get_property("reg")) == [0, 0x0900_0000, 0, 0x1000]
    assert list(uart.get_property("clock-names")) == ["uartclk", "apb_pclk"]
    clock = tree.get_node("apb-pclk")
    assert list(uart.get_property("clocks")) == [clock.get_property("phandle").value] * 2
    assert clock.get_property("clock-frequency").value == 24_000_000
    psci_node = tree.get_node("psci")
    assert list(psci_node.get_property("compatible"))[:2] == ["arm,psci-1.0", "arm,psci-0.2"]
    assert psci_node.get_property("method").value == "hvc"
    chosen = tree.get_node("chosen")
    assert chosen.get_property("bootargs").value == "console=ttyAMA0 earlycon"
    assert chosen.get_property("stdout-path").value == "/pl011@9000000"


def test_a_utf8_command_line_reaches_bootargs_as_its_bytes(run_guest):
    """The command line is UTF-8 text; bootargs carries its bytes, as QEMU writes them."""
    vm, result = run_guest(asm(STORE_ENTRY_STATE), append="console=ttyAMA0 café")
    assert result.status == STATUS_OFF
    address = u64(vm, SCRATCH)
    size = struct.unpack(">I", vm.memory.read(address + 4, 4))[0]
    assert b"console=ttyAMA0 caf\xc3\xa9\0" in vm.memory.read(address, size)


def test_linux_image_loads_at_ram_plus_text_offset_with_the_dtb_above_it(run_guest):
    vm, result = run_guest(linux_image(asm(STORE_ENTRY_STATE, RAM + 0x20_0040), text_offset=0x20_0000))
    assert result.status == STATUS_OFF
    assert u64(vm, SCRATCH + 56) == RAM + 0x20_0000 + 0x40 + 0x24
    # QEMU: after where an initrd would go, RAM + min(RAM / 2, 128 MiB), on a 2 MiB boundary
    assert u64(vm, SCRATCH) == RAM + (32 << 20)
    assert device_tree(vm).get_node("chosen").get_property("stdout-path").value == "/pl011@9000000"


def test_initrd_is_placed_above_the_kernel_and_named_in_chosen(run_guest):
    initrd = b"initramfs!" * 1000
    vm, _ = run_guest(linux_image(asm(STORE_ENTRY_STATE, LOAD + 0x40)), initrd=initrd)
    chosen = device_tree(vm).get_node("chosen")
    start = list(chosen.get_property("linux,initrd-start"))
    end = list(chosen.get_property("linux,initrd-end"))
    start, end = start[0] << 32 | start[1], end[0] << 32 | end[1]
    assert start == RAM + (32 << 20) and end - start == len(initrd)
    assert vm.memory.read(start, len(initrd)) == initrd
    assert u64(vm, SCRATCH) >= end and u64(vm, SCRATCH) % (2 << 20) == 0


def test_elf64_segments_load_at_their_physical_addresses(run_guest):
    code = asm(STORE_ENTRY_STATE, RAM + 0x10_0000)
    vm, result = run_guest(elf64(183, [(RAM + 0x10_0000, code), (RAM + 0x30_0000, b"data!")],
                                 entry=RAM + 0x10_0000))
    assert result.status == STATUS_OFF
    assert u64(vm, SCRATCH + 56) == RAM + 0x10_0000 + 0x24
    assert vm.memory.read(RAM + 0x30_0000, 5) == b"data!"


def test_raw_image_honours_load_address_and_entry(run_guest):
    code = asm("b start\nnop\nstart:\n" + STORE_ENTRY_STATE, RAM + 0x40_0000)
    vm, _ = run_guest(code, load_addr=RAM + 0x40_0000, entry=RAM + 0x40_0008)
    assert u64(vm, SCRATCH + 56) == RAM + 0x40_0008 + 0x24


def test_x86_elf_is_refused(arm_vm):
    vm = arm_vm()
    with pytest.raises(ImageError, match="x86.*arm64"):
        vm.load(elf64(62, [(0x10_0000, b"\xf4")], entry=0x10_0000))


def test_image_header_alone_is_truncated(arm_vm):
    vm = arm_vm()
    with pytest.raises(ImageError, match="truncated"):
        vm.load(linux_image(b"")[:64])


def test_image_cut_inside_its_pe_sections_is_truncated(arm_vm):
    image = linux_image(bytes(0x200), pe_sections=[(0x1000, 0x1000)])
    with pytest.raises(ImageError, match="truncated: section .text"):
        arm_vm().load(image)
    whole = image + bytes(0x2000 - len(image))
    arm_vm().load(whole)  # the same Image, complete, loads


def test_image_larger_than_ram_is_refused(arm_vm):
    vm = arm_vm(mem="4M")
    with pytest.raises(ImageError, match="do not fit"):
        vm.load(linux_image(bytes(64), image_size=8 << 20))


def test_the_guest_can_print_its_device_tree_address(run_guest):
    """An end-to-end check with the real boot path: print X0 in hex over the PL011."""
    code = """
    mov x4, x0
    movz x1, #0x0900, lsl #16
    mov x5, #60
print_digit:
    lsr x6, x4, x5
    and x6, x6, #0xf
    cmp x6, #10
    b.lt is_digit
    add x6, x6, #0x27
is_digit:
    add x6, x6, #0x30
    strb w6, [x1]
    subs x5, x5, #4
    b.ge print_digit
    """ + SYSTEM_OFF
    vm, _ = run_guest(guest(code))
    assert vm.console.text == f"{RAM + (32 << 20):016x}"


# A raw image that checks its own boot contract, as a guest built for QEMU virt does: the device
# tree must lie above the image and the 64 KiB of stack and bss it keeps after it, and start
# with the FDT magic. It prints its verdict on the PL011.
DTB_ABOVE_THE_IMAGE = f"""
    movz x6, #0x4000, lsl #16
    str x0, [x6, #0x1000]           // for the test: where the DTB was
    movz x1, #0x0900, lsl #16
    adr x2, image_end
    add x2, x2, #0x10, lsl #12      // + 64 KiB of bss and stack
    cmp x0, x2
    b.lo overlaps
    ldr w3, [x0]
    rev w3, w3
    movz w4, #0xfeed
    movk w4, #0xd00d, lsl #16
    cmp w3, w4
    b.ne overlaps
    mov w5, #0x4f                   // "OK"
    strb w5, [x1]
    mov w5, #0x4b
    strb w5, [x1]
    b done
overlaps:
    mov w5, #0x58                   // "X"
    strb w5, [x1]
done:
    {SYSTEM_OFF}
image_end:
"""


@pytest.mark.parametrize("mem, dtb_offset", [("64M", 32 << 20), ("512M", 128 << 20), ("2M", 1 << 20)])
def test_a_raw_image_finds_the_device_tree_above_its_end_as_on_qemu(run_guest, mem, dtb_offset):
    """QEMU's virt board boots a raw image as a Linux kernel: the DTB goes after the initrd
    area (RAM + min(RAM / 2, 128 MiB), at least the image's end) on a 2 MiB boundary. With RAM
    too small for that boundary (2 MiB, where QEMU refuses to boot), right after the initrd area."""
    vm, result = run_guest(asm(DTB_ABOVE_THE_IMAGE), mem=mem)
    assert result.status == STATUS_OFF
    assert vm.console.text == "OK"
    assert u64(vm, RAM + 0x1000) == RAM + dtb_offset


def test_an_elf_above_the_start_of_ram_gets_the_device_tree_at_the_start_of_ram(run_guest):
    """QEMU loads an ELF as bare metal and puts the DTB at the base of RAM when the ELF leaves
    room there (its lowest segment is the DTB's limit)."""
    code = asm(STORE_ENTRY_STATE, RAM + 0x10_0000)
    vm, result = run_guest(elf64(183, [(RAM + 0x10_0000, code)], entry=RAM + 0x10_0000))
    assert result.status == STATUS_OFF
    assert u64(vm, SCRATCH) == RAM
    assert device_tree(vm).get_property("compatible").value == "linux,dummy-virt"
