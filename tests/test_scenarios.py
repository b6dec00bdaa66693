"""The same guest scenarios under every installed architecture plugin.

Each scenario is real guest code for the architecture's family (x86 or arm64) and checks the
architectural outcome: what the guest printed, the bytes it stored, the exit the hypervisor saw
(with the architecture's own record), and the run's status.
"""

from __future__ import annotations

import pytest

from guestlib import (ARCH_FAMILY, ARM_BASE, ARM_DATA, ARM_ENTRY, ARM_STACK, ARM_SYSTEM_OFF, PL011,
                      SLOT_CUR_SPX_IRQ, SLOT_CUR_SPX_SYNC, X86_BASE, X86_DATA, X86_STACK,
                      arm64_image, x86_64, x86_hypercall, x86_idt_setup)
from hvsim import hookimpl
from hvsim.core.exits import Event, EventType, ExitKind
from hvsim.core.vm import STATUS_HALTED_FOREVER

MMIO_BASE = {"x86": 0xFEB0_0000, "arm64": 0x0A00_0000}


def boot(make_vm, arch, image, **kw):
    if ARCH_FAMILY[arch] == "arm64":
        kw.setdefault("entry", ARM_ENTRY)
    vm = make_vm(arch, **kw)
    vm.load(image)
    return vm


def x86_print(text: str) -> str:
    return "\n".join(["mov dx, 0x3f8"] + [f"mov al, {b}\nout dx, al" for b in text.encode()])


def arm_print(text: str) -> str:
    return "\n".join([f"ldr x1, ={PL011:#x}"] + [f"mov w0, #{b}\nstr w0, [x1]" for b in text.encode()])


# -- hello over the UART, then a clean shutdown with the guest's status -----------------------

HELLO = "hello, hvsim\n"


def test_hello_over_the_uart_and_clean_shutdown(make_vm, every_arch):
    if ARCH_FAMILY[every_arch] == "x86":
        image = x86_64(f"mov rsp, {X86_STACK}\n{x86_print(HELLO)}\nmov al, 0x10\nout 0xf4, al\nhlt")
        expected_status = (0x10 << 1) | 1  # isa-debug-exit
    else:
        image = arm64_image(f"{arm_print(HELLO)}\n{ARM_SYSTEM_OFF}")
        expected_status = 0  # PSCI SYSTEM_OFF
    vm = boot(make_vm, every_arch, image)
    result = vm.run(timeout=10)
    assert vm.console.output == b"hello, hvsim\n"
    assert result.status == expected_status, result.reason


# -- a hypercall round trip ---------------------------------------------------------------

def test_hypercall_round_trip_returns_the_hypervisors_answer(make_vm, every_arch, recorder):
    if ARCH_FAMILY[every_arch] == "x86":
        hc = x86_hypercall(every_arch)
        image = x86_64(f"""
            mov rsp, {X86_STACK}
            mov rax, 1
            {hc}
            mov [{X86_DATA:#x}], rax
            mov rax, 0x1234
            {hc}
            mov [{X86_DATA + 8:#x}], rax
            mov al, 0
            out 0xf4, al
            hlt""")
        expected = [0, (-1000) & (1 << 64) - 1]  # KVM_HC_VAPIC_POLL_IRQ -> 0, unknown -> -KVM_ENOSYS
        data = X86_DATA
    else:
        image = arm64_image(f"""
            ldr x9, ={ARM_DATA:#x}
            movz w0, #0
            movk w0, #0x8400, lsl #16
            hvc #0
            str x0, [x9]
            movz w0, #0x1234
            movk w0, #0x8400, lsl #16
            hvc #0x55
            str x0, [x9, #8]
            {ARM_SYSTEM_OFF}""")
        expected = [0x1_0001, (1 << 64) - 1]  # PSCI 1.1, NOT_SUPPORTED
        data = ARM_DATA
    vm = boot(make_vm, every_arch, image)
    vm.run(timeout=10)
    assert [vm.memory.read_u64(data), vm.memory.read_u64(data + 8)] == expected
    calls = recorder.of(ExitKind.HYPERCALL)
    raw = calls[1].raw
    if every_arch == "intel_vtx":
        assert calls[0].reason == "EXIT_REASON_VMCALL"
        assert (raw.EXIT_REASON, raw.VM_EXIT_INSTRUCTION_LEN) == (18, 3)
    elif every_arch == "amd_svm":
        assert calls[0].reason == "VMEXIT_VMMCALL"
        assert raw.EXITCODE == 0x81
        assert vm.memory.read(raw.NRIP - 3, 3) == b"\x0f\x01\xd9"  # nRIP: after the VMMCALL
    else:
        assert calls[0].reason == "ESR_ELx_EC_HVC64"
        assert raw.ESR_EL2 == (0x16 << 26) | (1 << 25) | 0x55  # EC=HVC64, IL=1, ISS=imm16
    assert len(calls) == (2 if ARCH_FAMILY[every_arch] == "x86" else 3)  # arm64: + SYSTEM_OFF


# -- an MMIO read and write to a device a plugin claimed ------------------------------------

class ScratchDevice:
    """A register file: a write stores, a read returns what was stored."""

    def __init__(self) -> None:
        self.regs: dict[int, int] = {}
        self.log: list[tuple] = []

    def read(self, offset, size):
        self.log.append(("read", offset, size))
        return self.regs.get(offset, 0)

    def write(self, offset, size, value):
        self.log.append(("write", offset, size, value))
        self.regs[offset] = value


class ScratchPlugin:
    def __init__(self) -> None:
        self.device = ScratchDevice()

    @hookimpl
    def hvsim_vm_created(self, vm):
        family = "x86" if vm.arch.platform == "pc" else "arm64"
        vm.bus.add_mmio(MMIO_BASE[family], 0x1000, self.device, "scratch")


def test_mmio_write_then_read_reaches_the_device_with_the_access(make_vm, hvsim_pm, every_arch, recorder):
    plugin = ScratchPlugin()
    hvsim_pm.register(plugin, name="scratch")
    family = ARCH_FAMILY[every_arch]
    base = MMIO_BASE[family]
    if family == "x86":
        image = x86_64(f"""
            mov rsp, {X86_STACK}
            mov rax, {base:#x}
            mov dword ptr [rax + 8], 0xcafe
            mov ebx, dword ptr [rax + 8]
            mov [{X86_DATA:#x}], rbx
            mov al, 0
            out 0xf4, al
            hlt""")
        data = X86_DATA
    else:
        image = arm64_image(f"""
            ldr x1, ={base:#x}
            movz w2, #0xcafe
            str w2, [x1, #8]
            ldr w3, [x1, #8]
            ldr x4, ={ARM_DATA:#x}
            str x3, [x4]
            {ARM_SYSTEM_OFF}""")
        data = ARM_DATA
    vm = boot(make_vm, every_arch, image)
    vm.run(timeout=10)
    assert plugin.device.log == [("write", 8, 4, 0xCAFE), ("read", 8, 4)]
    assert vm.memory.read_u64(data) == 0xCAFE
    write, read = recorder.of(ExitKind.MMIO)
    assert (write.address, write.size, write.is_write) == (base + 8, 4, True)
    assert (read.address, read.is_write) == (base + 8, False)
    if every_arch == "intel_vtx":
        assert write.reason == "EXIT_REASON_EPT_VIOLATION"
        assert write.raw.EXIT_REASON == 48 and write.raw.GUEST_PHYSICAL_ADDRESS == base + 8
        assert write.raw.EXIT_QUALIFICATION & 0b111 == 0b010  # a data write
        assert read.raw.EXIT_QUALIFICATION & 0b111 == 0b001  # a data read
        assert write.raw.EXIT_QUALIFICATION & 0b111000 == 0  # the GPA is not mapped at all
    elif every_arch == "amd_svm":
        assert write.reason == "VMEXIT_NPF"
        assert write.raw.EXITCODE == 0x400 and write.raw.EXITINFO2 == base + 8
        assert write.raw.EXITINFO1 & 0b11 == 0b10  # not present, write
        assert read.raw.EXITINFO1 & 0b11 == 0b00
        assert write.raw.EXITINFO1 & (1 << 32)  # on the final guest-physical address
    else:
        esr = write.raw.ESR_EL2
        assert write.reason == "ESR_ELx_EC_DABT_LOW"
        assert esr >> 26 == 0x24 and esr & (1 << 24)  # EC data abort from a lower EL, ISV
        assert (esr >> 22) & 3 == 2  # SAS: word
        assert (esr >> 16) & 0x1F == 2  # SRT: w2
        assert esr & (1 << 6)  # WnR
        assert (read.raw.ESR_EL2 >> 16) & 0x1F == 3 and not read.raw.ESR_EL2 & (1 << 6)
        assert write.raw.HPFAR_EL2 == ((base + 8) >> 12) << 4


# -- HLT / WFI, and the interrupt that resumes it -------------------------------------------

def test_halt_then_an_injected_interrupt_resumes_the_guest_after_the_halt(make_vm, every_arch, recorder):
    if ARCH_FAMILY[every_arch] == "x86":
        image = x86_64(f"""
            mov rsp, {X86_STACK}
            {x86_idt_setup({0x20: 'irq_handler'})}
            sti
            hlt
            mov al, byte ptr [{X86_DATA:#x}]
            out 0xf4, al
            hlt
        irq_handler:
            inc qword ptr [{X86_DATA:#x}]
            mov rax, [rsp]
            mov [{X86_DATA + 8:#x}], rax
            iretq""")
        event = Event(EventType.EXTERNAL_INTERRUPT, 0x20)
        data, halt_opcode, halt_len = X86_DATA, b"\xf4", 1
    else:
        image = arm64_image(f"""
            ldr x0, ={ARM_BASE:#x}
            msr vbar_el1, x0
            isb
            msr daifclr, #2
            wfi
            {ARM_SYSTEM_OFF}""", vectors={SLOT_CUR_SPX_IRQ: f"""
            ldr x9, ={ARM_DATA:#x}
            ldr x10, [x9]
            add x10, x10, #1
            str x10, [x9]
            mrs x11, elr_el1
            str x11, [x9, #8]
            eret"""})
        event = Event(EventType.VIRTUAL_IRQ)
        data, halt_opcode, halt_len = ARM_DATA, bytes.fromhex("7f2003d5"), 4
    vm = boot(make_vm, every_arch, image)
    vm.vcpus[0].inject(event)  # pending, but masked until the guest unmasks interrupts
    result = vm.run(timeout=10)
    assert vm.memory.read_u64(data) == 1  # the handler ran exactly once
    resume = vm.memory.read_u64(data + 8)
    assert vm.memory.read(resume - halt_len, halt_len) == halt_opcode  # returns after HLT/WFI
    assert len(recorder.of(ExitKind.HALT)) == 1
    assert result.status in (0, 3)


def test_halt_with_nothing_to_wake_it_ends_the_run(make_vm, every_arch):
    if ARCH_FAMILY[every_arch] == "x86":
        image = x86_64("cli\nhlt\nmov al, 1\nout 0xf4, al")
    else:
        image = arm64_image(f"wfi\n{ARM_SYSTEM_OFF}")
    vm = boot(make_vm, every_arch, image)
    result = vm.run(timeout=10)
    assert result.status == STATUS_HALTED_FOREVER
    assert "halted" in result.reason


# -- a guest exception delivered to the guest's own handler ----------------------------------

def test_guest_exception_is_delivered_to_the_guests_own_handler(make_vm, every_arch):
    if ARCH_FAMILY[every_arch] == "x86":
        code = x86_64(f"""
            mov rsp, {X86_STACK}
            {x86_idt_setup({6: 'ud_handler'})}
            ud2
            mov al, 0
            out 0xf4, al
            hlt
        ud_handler:
            mov rax, [rsp]
            mov [{X86_DATA:#x}], rax
            mov rax, [rsp + 8]
            mov [{X86_DATA + 8:#x}], rax
            add qword ptr [rsp], 2
            iretq""")
        vm = boot(make_vm, every_arch, code)
        result = vm.run(timeout=10)
        rip = vm.memory.read_u64(X86_DATA)
        assert vm.memory.read(rip, 2) == b"\x0f\x0b"  # the frame's RIP is the ud2 itself (a fault)
        assert vm.memory.read_u64(X86_DATA + 8) == 0x18  # and CS the kernel's code segment
        assert result.status == 1
    else:
        image = arm64_image(f"""
            ldr x0, ={ARM_BASE:#x}
            msr vbar_el1, x0
            isb
            ldr x0, ={ARM_STACK:#x}
            mov sp, x0
            svc #0x42
            {ARM_SYSTEM_OFF}""", vectors={SLOT_CUR_SPX_SYNC: f"""
            ldr x9, ={ARM_DATA:#x}
            mrs x10, esr_el1
            str x10, [x9]
            mrs x11, elr_el1
            str x11, [x9, #8]
            eret"""})
        vm = boot(make_vm, every_arch, image)
        result = vm.run(timeout=10)
        assert vm.memory.read_u64(ARM_DATA) == (0x15 << 26) | (1 << 25) | 0x42  # SVC64, IL, imm16
        elr = vm.memory.read_u64(ARM_DATA + 8)
        assert vm.memory.read(elr - 4, 4) == bytes.fromhex("410800d4")  # svc #0x42, then ELR
        assert result.status == 0


def test_exit_table_counts_by_the_manuals_names(make_vm, every_arch):
    if ARCH_FAMILY[every_arch] == "x86":
        image = x86_64("mov eax, 0\ncpuid\ncpuid\nmov al, 0\nout 0xf4, al\nhlt")
        expected = {"intel_vtx": {"EXIT_REASON_CPUID": 2, "EXIT_REASON_IO_INSTRUCTION": 1},
                    "amd_svm": {"VMEXIT_CPUID": 2, "VMEXIT_IOIO": 1}}[every_arch]
    else:
        image = arm64_image(f"movz w0, #0\nmovk w0, #0x8400, lsl #16\nhvc #0\n{ARM_SYSTEM_OFF}")
        expected = {"ESR_ELx_EC_HVC64": 2}
    vm = boot(make_vm, every_arch, image)
    vm.run(timeout=10)
    assert vm.stats.counts() == expected


def test_an_image_for_the_other_family_is_refused(make_vm, every_arch):
    from hvsim.core.errors import ImageError

    if ARCH_FAMILY[every_arch] == "x86":
        image = bytearray(64)
        image[0x38:0x3C] = b"ARM\x64"  # a Linux arm64 Image header
    else:
        from hvsim.core.guests.build import elf32
        image = elf32(b"\xf4", X86_BASE, 1, X86_BASE)
    vm = make_vm(every_arch)
    with pytest.raises(ImageError):
        vm.load(bytes(image))


class FallbackMmio:
    """An ``hvsim_mmio`` plugin: answers every unclaimed MMIO read with the address's low bits."""

    def __init__(self) -> None:
        self.seen = []

    @hookimpl
    def hvsim_mmio(self, vcpu, address, size, is_write, value):
        self.seen.append((address, size, is_write, value))
        return True if is_write else address & 0xFFFF


def test_an_unclaimed_mmio_access_goes_to_the_hvsim_mmio_hook(make_vm, hvsim_pm, every_arch):
    plugin = FallbackMmio()
    hvsim_pm.register(plugin)
    family = ARCH_FAMILY[every_arch]
    hole = 0xFED0_0040 if family == "x86" else 0x0C00_0040
    if family == "x86":
        image = x86_64(f"""
            mov rsp, {X86_STACK}
            mov rax, {hole:#x}
            mov dword ptr [rax], 7
            mov ebx, dword ptr [rax]
            mov [{X86_DATA:#x}], rbx
            mov al, 0
            out 0xf4, al
            hlt""")
        data = X86_DATA
    else:
        image = arm64_image(f"""
            ldr x1, ={hole:#x}
            mov w2, #7
            str w2, [x1]
            ldr w3, [x1]
            ldr x4, ={ARM_DATA:#x}
            str x3, [x4]
            {ARM_SYSTEM_OFF}""")
        data = ARM_DATA
    vm = boot(make_vm, every_arch, image)
    result = vm.run(timeout=10)
    assert result.status in (0, 1), result.reason
    assert plugin.seen == [(hole, 4, True, 7), (hole, 4, False, None)]
    assert vm.memory.read_u64(data) == hole & 0xFFFF


def test_an_unclaimed_mmio_access_without_a_plugin_is_a_clear_crash_in_strict_mode(make_vm, every_arch):
    family = ARCH_FAMILY[every_arch]
    hole = 0xFED0_0040 if family == "x86" else 0x0C00_0040
    if family == "x86":
        image = x86_64(f"mov rsp, {X86_STACK}\nmov rax, {hole:#x}\nmov ebx, dword ptr [rax]\nhlt")
    else:
        image = arm64_image(f"ldr x1, ={hole:#x}\nldr w3, [x1]\n{ARM_SYSTEM_OFF}")
    vm = boot(make_vm, every_arch, image, strict_mmio=True)
    result = vm.run(timeout=10)
    assert result.status == 4 and hex(hole) in result.reason
    assert "which no RAM or device backs" in result.reason


def unassigned_guest(family: str, hole: int) -> tuple[bytes, int]:
    """Write 0x5a5a5a5a to ``hole``, read it back as 8, 4 and 1 bytes into the data area, then
    say "ok" on the UART and end."""
    if family == "x86":
        return x86_64(f"""
            mov rsp, {X86_STACK}
            mov rax, {hole:#x}
            mov dword ptr [rax], 0x5a5a5a5a
            mov rbx, qword ptr [rax]
            mov [{X86_DATA:#x}], rbx
            mov ebx, dword ptr [rax + 8]
            mov [{X86_DATA + 8:#x}], rbx
            movzx ebx, byte ptr [rax + 0x10]
            mov [{X86_DATA + 16:#x}], rbx
            {x86_print("ok")}
            mov al, 0
            out 0xf4, al
            hlt"""), X86_DATA
    return arm64_image(f"""
            ldr x1, ={hole:#x}
            ldr x4, ={ARM_DATA:#x}
            movz w2, #0x5a5a
            movk w2, #0x5a5a, lsl #16
            str w2, [x1]
            ldr x3, [x1]
            str x3, [x4]
            ldr w3, [x1, #8]
            str x3, [x4, #8]
            ldrb w3, [x1, #0x10]
            str x3, [x4, #16]
            {arm_print("ok")}
            {ARM_SYSTEM_OFF}"""), ARM_DATA


def test_an_access_nothing_backs_reads_all_ones_and_drops_writes_as_on_qemu(make_vm, every_arch):
    """QEMU's unassigned memory: reads return all-ones of the access size, writes are ignored,
    and the guest runs on; each access is counted by address (vm.stats.unassigned)."""
    family = ARCH_FAMILY[every_arch]
    hole = 0xFED0_0000 if family == "x86" else 0x0C00_0040  # x86: the HPET page (not modelled), not RAM
    image, data = unassigned_guest(family, hole)
    vm = boot(make_vm, every_arch, image)
    result = vm.run(timeout=10)
    assert result.status in (0, 1), result.reason
    assert vm.console.text == "ok"
    assert [vm.memory.read_u64(data + 8 * i) for i in range(3)] == [(1 << 64) - 1, 0xFFFF_FFFF, 0xFF]
    counted = {hole: [1, 1], hole + 8: [1, 0], hole + 0x10: [1, 0]}
    if family == "x86":
        counted[hole + 4] = [1, 0]  # Unicorn's x86 MMIO performs the 8-byte read as two 4-byte halves
    assert vm.stats.unassigned == counted
