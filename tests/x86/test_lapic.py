"""The local APIC hvsim emulates for x86 guests (SDM Vol. 3A ch. 11), on both vendors: real
guest code programs it through the xAPIC page and the x2APIC MSRs."""

from __future__ import annotations

import pytest

from apic_guests import COUNT, EXIT, LAPIC, OUT, R15, reg, counting_handler, timer_ticks, xapic_enable
from guestlib import X86_STACK, x86_64, x86_idt_setup

VENDORS = ["intel_vtx", "amd_svm"]


@pytest.fixture(params=VENDORS)
def arch(request):
    return request.param


def run64(make_vm, arch, src, timeout=20, **kw):
    vm = make_vm(arch, **kw)
    vm.load(x86_64(f"mov rsp, {X86_STACK}\n{src}"))
    return vm, vm.run(timeout=timeout)


def test_periodic_timer_ticks_with_eoi(make_vm, arch):
    vm, r = run64(make_vm, arch, timer_ticks(5), deterministic=True)
    assert r.status == 1, r.reason
    assert vm.memory.read_u32(COUNT) == 5
    apic = vm.vcpus[0].lapic
    assert apic.highest_isr() == -1  # every tick was EOIed


def test_registers_after_reset(make_vm, arch):
    """ID, version 0x50014, DFR all ones, SVR 0xFF, LVTs masked (SDM 11.4.7.1)."""
    regs = [0x20, 0x30, 0xE0, 0xF0, 0x320, 0x350, 0x370, 0x80]
    src = R15 + "\n" + "\n".join(f"mov eax, {reg(r)}\nmov dword ptr [{OUT + 4 * i:#x}], eax"
                                   for i, r in enumerate(regs))
    vm, r = run64(make_vm, arch, src + "\n" + EXIT)
    assert r.status == 1, r.reason
    got = [vm.memory.read_u32(OUT + 4 * i) for i in range(len(regs))]
    assert got == [0, 0x50014, 0xFFFF_FFFF, 0xFF, 0x10000, 0x10000, 0x10000, 0]
