"""Deterministic mode (core/clock.py): the same image and arguments give the same serial output,
the same exits in the same order and the same memory on every run.

The guests depend on time the way real software does: an x86 guest counts how many loop
iterations fit in a fixed number of TSC ticks (RDTSC) and prints the counts; an arm64 guest
takes virtual-timer interrupts on one vCPU while a second vCPU (PSCI CPU_ON) spins and prints,
so both the tick count and the interleaving of their output depend on time and scheduling.
With the host's clock those differ from run to run; with the virtual clock they must not.
"""

from __future__ import annotations

import hashlib

import pytest
from guestlib import ARM_ENTRY, ARM_GIC_TIMER_ON, SLOT_CUR_SPX_IRQ, arm64_image, x86_64

from hvsim import hookimpl
from hvsim.core.clock import BLOCK_NS


class ExitLog:
    """Every exit, in order: (vCPU, the manual's name, guest-physical address or port)."""

    def __init__(self) -> None:
        self.exits = []

    @hookimpl
    def hvsim_vm_exit(self, vcpu, exit):
        self.exits.append((vcpu.index, exit.reason, exit.address))


HEX = """
    print_hex:                  // x0: the value; x20: the PL011; clobbers x1, x4, x5
        mov x4, #60
    nibble:
        lsr x5, x0, x4
        and x5, x5, #15
        cmp x5, #10
        b.lt digit
        add x5, x5, #0x27
    digit:
        add x5, x5, #0x30
        strb w5, [x20]
        subs x4, x4, #4
        b.ge nibble
        movz w5, #0x0a
        strb w5, [x20]
        ret
"""

# vCPU 0: the virtual timer every 4,000 ticks (through the GICv3: ICC_IAR1_EL1, ICC_EOIR1_EL1),
# 30 ticks, then prints both counters and powers off. vCPU 1: counts in memory and prints 'b' every 2^15 iterations.
ARM_GUEST = arm64_image(f"""
        movz x1, #0x4008, lsl #16
        msr vbar_el1, x1
        isb
        movz x20, #0x0900, lsl #16
        movz x21, #0x4100, lsl #16        // shared: x21 -> vCPU 1's counter
        movz w0, #0x0003
        movk w0, #0xc400, lsl #16         // PSCI CPU_ON (64-bit)
        mov x1, #1
        adr x2, second
        mov x3, #0
        hvc #0
        mov x3, #0
{ARM_GIC_TIMER_ON}
        movz x1, #4000
        msr cntv_tval_el0, x1
        mov x1, #1
        msr cntv_ctl_el0, x1
        msr daifclr, #2
    spin:
        add x2, x2, #1
        cmp x3, #30
        b.lt spin
        msr daifset, #2
        mov x0, x2
        bl print_hex
        ldr x0, [x21]
        bl print_hex
        movz w0, #0x0008
        movk w0, #0x8400, lsl #16
        hvc #0
    second:
        movz x20, #0x0900, lsl #16
        movz x21, #0x4100, lsl #16
    count:
        ldr x6, [x21]
        add x6, x6, #1
        str x6, [x21]
        tst x6, #0x7fff
        b.ne count
        movz w5, #0x62
        strb w5, [x20]
        b count
    {HEX}
""", vectors={SLOT_CUR_SPX_IRQ: "mrs x0, S3_0_C12_C12_0\nmovz x1, #4000\nmsr cntv_tval_el0, x1\n"
                                "add x3, x3, #1\nmovz w5, #0x54\nstrb w5, [x20]\n"
                                "msr S3_0_C12_C12_1, x0\neret"})  # ICC_IAR1_EL1 ... ICC_EOIR1_EL1

# How many iterations fit in 50,000 TSC ticks, five times over, printed in hex.
X86_GUEST = x86_64("""
        mov rsp, 0x180000
        mov r12, 5
    round:
        xor r10, r10
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov r8, rax
    wait:
        inc r10
        rdtscp
        shl rdx, 32
        or rax, rdx
        sub rax, r8
        cmp rax, 50000
        jb wait
        mov r9, 60
        mov dx, 0x3f8
    nibble:
        mov rax, r10
        xchg rcx, r9
        shr rax, cl
        xchg rcx, r9
        and eax, 15
        cmp eax, 10
        jb digit
        add eax, 0x27
    digit:
        add eax, 0x30
        out dx, al
        sub r9, 4
        jns nibble
        mov al, 10
        out dx, al
        dec r12
        jnz round
        mov al, 0
        out 0xf4, al
        hlt
""")


def run_once(make_vm, hvsim_pm, arch: str, deterministic: bool):
    log = ExitLog()
    hvsim_pm.register(log)
    try:
        kw = {"vcpus": 2, "entry": ARM_ENTRY} if arch == "arm_el2" else {}
        vm = make_vm(arch, deterministic=deterministic, **kw)
        vm.load(ARM_GUEST if arch == "arm_el2" else X86_GUEST)
        result = vm.run(timeout=60)
    finally:
        hvsim_pm.unregister(log)
    ram = vm.memory.slots[0]
    digest = hashlib.sha256(vm.host.view[ram.hpa:ram.hpa + ram.size]).hexdigest()
    return result.status, vm.console.text, log.exits, vm.stats.counts(), digest


@pytest.mark.parametrize("arch", ["intel_vtx", "amd_svm", "arm_el2"])
def test_two_deterministic_runs_are_identical(make_vm, hvsim_pm, arch):
    first = run_once(make_vm, hvsim_pm, arch, True)
    second = run_once(make_vm, hvsim_pm, arch, True)
    status, text, exits, counts, _digest = first
    assert status == (0 if arch == "arm_el2" else 1), text
    assert len(text.splitlines()) >= 2 and len(exits) > 10
    for name, a, b in zip(("status", "serial output", "exit sequence", "exit counts", "RAM digest"), first, second):
        assert a == b, f"{name} differs between two deterministic runs"


def test_deterministic_time_follows_guest_progress_not_the_host(make_vm, hvsim_pm):
    """50,000 TSC ticks are 50,000 virtual ns: 3,125 blocks of 16 ns. Each iteration of the
    wait loop is a block or two (the emulated RDTSCP ends the block it is in), whatever the
    host's speed, so every round counts the same number of iterations."""
    _status, text, _exits, _counts, _digest = run_once(make_vm, hvsim_pm, "intel_vtx", True)
    counts = [int(line, 16) for line in text.splitlines()]
    assert len(counts) == 5 and len(set(counts)) == 1, counts
    blocks = 50_000 // BLOCK_NS
    assert blocks // 2 - 2 <= counts[0] <= blocks, counts
