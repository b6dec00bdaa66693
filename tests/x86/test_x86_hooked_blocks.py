"""Blocks that hold an exact-address code hook (a trapped RDMSR, a watched STI, a HLT).

Measured on Unicorn 2.1.4: in such a block the engine's RIP, as the IN/OUT/CPUID hooks read it,
is that of the block's start or of the last hooked instruction, not the instruction's own; the
exit records (VMX GUEST_RIP and qualification, SVM nRIP and EXITINFO1) would name the wrong
instruction. plugins/x86/traps.py gives those instructions a hook of their own, which brings RIP
up to date. And a slice that ends in a block ending with HLT is still seen to have halted."""

from __future__ import annotations

import pytest

from eventvmm import label, store_labels
from guestlib import x86_64
from hvsim import hookimpl
from hvsim.core.exits import ExitKind

END = "mov al, 0\nout 0xf4, al\nhlt"


@pytest.fixture(params=["intel_vtx", "amd_svm"])
def arch(request):
    return request.param


# The labels are stored first (they are code of the same block: nothing branches before `out`).
HOOKED_BLOCK = f"""
    {store_labels('port', 'id')}
    mov ecx, 0xC0000100
    rdmsr
    xor eax, eax
port:
    out 0x80, al
id:
    cpuid
    {END}
"""


def test_out_and_cpuid_after_a_trapped_rdmsr_in_one_block_name_their_own_rip(make_vm, exit_recorder, arch):
    vm = make_vm(arch)
    vm.load(x86_64(HOOKED_BLOCK))
    assert vm.run(timeout=10).status == 1  # isa-debug-exit: (0 << 1) | 1
    port, cpuid_at = label(vm, 0), label(vm, 1)
    (out,) = [e for e in exit_recorder.of(ExitKind.PORT_IO) if e.address == 0x80]
    (cpuid,) = exit_recorder.of(ExitKind.CPUID)
    if arch == "intel_vtx":
        assert out.raw.GUEST_RIP == port and out.raw.VM_EXIT_INSTRUCTION_LEN == 2
        # SDM Table 28-5: size 0 (1 byte), OUT, not string, not REP, immediate operand (bit 6), port 80H
        assert out.raw.EXIT_QUALIFICATION == 0x80 << 16 | 1 << 6
        assert cpuid.raw.GUEST_RIP == cpuid_at
    else:
        # APM Figure 15-2: port 80H, 64-bit address size (bit 9), 8-bit operand (bit 4), OUT
        assert out.raw.NRIP == port + 2 and out.raw.EXITINFO1 == 0x80 << 16 | 1 << 9 | 1 << 4
        assert cpuid.raw.NRIP == cpuid_at + 2


class _AlwaysExpired:
    """A slice timer whose slice has always just run out when the engine returns."""

    expired = True

    def arm(self, _uch, _seconds):
        pass

    def disarm(self):
        pass


def test_a_hlt_is_a_halt_even_when_the_slice_ends_in_its_block(make_vm, hvsim_pm, exit_recorder, arch):
    class ResumeAfterHlt:
        @hookimpl
        def hvsim_exit_handlers(self, vm, registry):
            registry.add(ExitKind.HALT, lambda vcpu, exit: None)

    hvsim_pm.register(ResumeAfterHlt())
    vm = make_vm(arch)
    vm.load(x86_64(f"mov rcx, 5\nl:\nhlt\ndec rcx\njnz l\n{END}"))
    vm.vcpus[0]._timer = _AlwaysExpired()
    assert vm.run(timeout=10).status == 1  # isa-debug-exit: (0 << 1) | 1
    assert len(exit_recorder.of(ExitKind.HALT)) == 5


def test_out_before_a_watched_sti_names_its_own_rip(make_vm, hvsim_pm, exit_recorder, arch):
    from guestlib import X86_STACK, x86_idt_setup
    from hvsim.core.exits import Event, EventType

    class RaiseIrqOnOut:  # a device that raises IRQ 0x20 on each OUT 80H: the STI gets watched
        @hookimpl
        def hvsim_vm_exit(self, vcpu, exit):
            if exit.kind is ExitKind.PORT_IO and exit.address == 0x80:
                vcpu.inject(Event(EventType.EXTERNAL_INTERRUPT, 0x20))

    hvsim_pm.register(RaiseIrqOnOut())
    vm = make_vm(arch)
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        {store_labels('port')}
        {x86_idt_setup({0x20: 'irq'})}
        mov rcx, 3
    again:
        cli
    port:
        out 0x80, al
        nop
        sti
        nop
        dec rcx
        jnz again
        {END}
    irq:
        inc rbx
        iretq
    """))
    assert vm.run(timeout=10).status == 1
    outs = [e for e in exit_recorder.of(ExitKind.PORT_IO) if e.address == 0x80]
    assert len(outs) == 3
    port = label(vm, 0)
    for out in outs:
        assert (out.raw.GUEST_RIP if arch == "intel_vtx" else out.raw.NRIP - 2) == port
