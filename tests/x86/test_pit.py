"""The 8254 PIT and port 0x61 as kernels use them to calibrate the TSC (Linux
pit_calibrate_tsc: channel 2 in mode 0, gate on through port 0x61, poll OUT2 in bit 5), the
counter latch and the read-back command, on both vendors."""

from __future__ import annotations

import pytest

from apic_guests import EXIT, OUT
from guestlib import X86_STACK, x86_64

VENDORS = ["intel_vtx", "amd_svm"]
LATCH = 11932  # 10 ms at 1.193182 MHz


@pytest.fixture(params=VENDORS)
def arch(request):
    return request.param


def run64(make_vm, arch, src, **kw):
    vm = make_vm(arch, **kw)
    vm.load(x86_64(f"mov rsp, {X86_STACK}\n{src}"))
    return vm, vm.run(timeout=30)


CALIBRATE = f"""
    in al, 0x61
    and al, 0xfd
    or al, 1
    out 0x61, al                        // gate 2 on, speaker off
    mov al, 0xb0
    out 0x43, al                        // channel 2, LSB then MSB, mode 0, binary
    mov al, {LATCH & 0xFF:#x}
    out 0x42, al
    rdtsc                               // the start, read before counting starts
    shl rdx, 32
    or rax, rdx
    mov rdi, rax
    mov al, {LATCH >> 8:#x}
    out 0x42, al                        // the MSB starts the count
    in al, 0x61
    mov byte ptr [{OUT + 24:#x}], al    // OUT2 low right after the count is loaded
    xor ebx, ebx
poll:
    inc rbx
    in al, 0x61
    test al, 0x20
    jz poll
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, rdi
    mov qword ptr [{OUT:#x}], rax       // TSC ticks over 10 ms
    mov qword ptr [{OUT + 8:#x}], rbx   // polls
    mov al, 0x80
    out 0x43, al                        // latch channel 2
    in al, 0x42
    mov byte ptr [{OUT + 16:#x}], al
    in al, 0x42
    mov byte ptr [{OUT + 17:#x}], al
    mov al, 0xe8
    out 0x43, al                        // read-back: status only, channel 2
    in al, 0x42
    mov byte ptr [{OUT + 18:#x}], al
    {EXIT}
"""


def test_channel2_calibration_through_port_0x61(make_vm, arch):
    """In deterministic mode the TSC is virtual at 1 GHz: 10 ms of PIT counting is 10 M ticks."""
    vm, r = run64(make_vm, arch, CALIBRATE, deterministic=True)
    assert r.status == 1, r.reason
    m = vm.memory
    assert m.read(OUT + 24, 1)[0] & 0x21 == 0x01  # gate on, OUT2 low
    ticks = m.read_u64(OUT)
    assert 9_900_000 <= ticks <= 10_300_000, ticks
    assert m.read_u64(OUT + 8) > 10
    latched = m.read_u16(OUT + 16)
    assert latched == 0 or latched > 0xF000  # at terminal count; mode 0 then wraps and counts on
    status = m.read(OUT + 18, 1)[0]
    assert status == 0x80 | 0x30 | 0  # OUT high, LSB/MSB, mode 0, binary


def test_calibration_with_the_host_clock(make_vm, arch):
    """Outside deterministic mode the same loop measures the host's TSC over 10 ms of host time."""
    from hvsim.plugins.x86.tsc import tsc_hz

    vm, r = run64(make_vm, arch, CALIBRATE)
    assert r.status == 1, r.reason
    ticks = vm.memory.read_u64(OUT)
    assert 0.009 * tsc_hz() <= ticks <= 0.5 * tsc_hz()  # at least the 10 ms; a loaded host adds


def test_gate_low_holds_mode0_and_status_reads_null_count(make_vm, arch):
    src = f"""
    in al, 0x61
    and al, 0xfc
    out 0x61, al                        // gate 2 off
    mov al, 0xe8
    out 0x43, al
    mov al, 0xb0
    out 0x43, al
    mov al, 0xe8
    out 0x43, al                        // read-back status after the control word: null count
    in al, 0x42
    mov byte ptr [{OUT:#x}], al
    mov al, 0x10
    out 0x42, al
    mov al, 0x00
    out 0x42, al                        // count 16, gate still off: no counting
    mov ecx, 100000
spin:
    loop spin
    in al, 0x61
    mov byte ptr [{OUT + 1:#x}], al
    mov al, 0x80
    out 0x43, al
    in al, 0x42
    mov byte ptr [{OUT + 2:#x}], al
    in al, 0x42
    mov byte ptr [{OUT + 3:#x}], al
    {EXIT}
"""
    vm, r = run64(make_vm, arch, src, deterministic=True)
    assert r.status == 1, r.reason
    m = vm.memory
    assert m.read(OUT, 1)[0] == 0x40 | 0x30  # null count, OUT low (mode 0), LSB/MSB
    assert m.read(OUT + 1, 1)[0] & 0x21 == 0  # gate off, OUT2 low
    assert m.read_u16(OUT + 2) == 16
