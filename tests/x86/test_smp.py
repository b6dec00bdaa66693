"""SMP on x86 (SDM Vol. 3A 9.4, 11.6): ``--vcpus 2`` starts the AP in wait-for-SIPI; the BSP's
INIT-SIPI-SIPI through its ICR starts it in real mode at the vector's page, where its own
trampoline takes it to long mode; then IPIs between them, on both vendors."""

from __future__ import annotations

import pytest

from apic_guests import (AP_ALIVE, AP_TRAMPOLINE, AP_VECTOR, COUNT, EXIT, IPIS, OUT, ap_trampoline,
                         counting_handler, reg, xapic_enable)
from guestlib import X86_STACK, x86_64, x86_idt_setup

VENDORS = ["intel_vtx", "amd_svm"]


@pytest.fixture(params=VENDORS)
def arch(request):
    return request.param


def start_ap(dest: int = 1) -> str:
    """INIT, then SIPI twice (the MP initialization protocol, SDM 9.4.4.1) to APIC ID ``dest``."""
    return f"""
    mov {reg(0x310)}, {dest << 24:#x}
    mov {reg(0x300)}, 0x4500
    mov {reg(0x310)}, {dest << 24:#x}
    mov {reg(0x300)}, {0x4600 | AP_VECTOR:#x}
    mov {reg(0x310)}, {dest << 24:#x}
    mov {reg(0x300)}, {0x4600 | AP_VECTOR:#x}
"""


AP_COUNTS_IPIS = f"""
    {xapic_enable()}
    mov eax, {reg(0x20)}
    mov dword ptr [{OUT + 0x10:#x}], eax
    mov dword ptr [{AP_ALIVE:#x}], 1
    sti
ap_wait:
    hlt
    jmp ap_wait
"""


def smp_guest(ipis: int, ticks: int) -> str:
    return f"""
    mov rsp, {X86_STACK}
    {x86_idt_setup({0x40: "tick", 0x50: "ipi"})}
    {xapic_enable()}
    mov dword ptr [{AP_ALIVE:#x}], 0
    {start_ap()}
alive:
    pause
    cmp dword ptr [{AP_ALIVE:#x}], 1
    jne alive
    mov {reg(0x3E0)}, 0xb
    mov {reg(0x320)}, {0x40 | 1 << 17:#x}
    mov {reg(0x380)}, 1000000
    sti
ticks:
    hlt
    cmp dword ptr [{COUNT:#x}], {ticks}
    jb ticks
    cli
    mov {reg(0x320)}, 0x10000
    xor ebx, ebx
send:
    inc ebx
    mov {reg(0x310)}, 0x1000000
    mov {reg(0x300)}, 0x50
    mov eax, {reg(0x300)}
    mov dword ptr [{OUT + 0x14:#x}], eax
got:
    pause
    cmp dword ptr [{IPIS:#x}], ebx
    jb got
    cmp ebx, {ipis}
    jb send
    {EXIT}
{counting_handler("tick", COUNT)}
{counting_handler("ipi", IPIS)}
"""


def test_init_sipi_then_ipis(make_vm, arch):
    vm = make_vm(arch, mem="64M", vcpus=2, deterministic=True)  # no tick between the last HLT and CLI
    image = bytearray(x86_64(smp_guest(ipis=4, ticks=3)))
    vm.load(bytes(image))
    vm.memory.write(AP_TRAMPOLINE, ap_trampoline(AP_COUNTS_IPIS))
    r = vm.run(timeout=30)
    assert r.status == 1, r.reason
    m = vm.memory
    assert m.read_u32(COUNT) == 3  # the BSP's timer ticks
    assert m.read_u32(IPIS) == 4  # the AP's IPIs, each EOIed
    assert m.read_u32(OUT + 0x10) == 1 << 24  # the AP's APIC ID register: its index
    assert m.read_u32(OUT + 0x14) & (1 << 12) == 0  # delivery status idle after the send


def test_smp_apic_run_is_deterministic(make_vm, arch):
    """--deterministic: the APIC timer and IPIs follow the virtual clock, so two runs of the
    SMP guest make the same exits the same number of times."""
    runs = []
    for _ in range(2):
        vm = make_vm(arch, mem="64M", vcpus=2, deterministic=True)
        vm.load(x86_64(smp_guest(ipis=3, ticks=2)))
        vm.memory.write(AP_TRAMPOLINE, ap_trampoline(AP_COUNTS_IPIS))
        r = vm.run(timeout=30)
        assert r.status == 1, r.reason
        runs.append(({k: v[0] for k, v in vm.stats.by_reason.items()}, vm.clock.now_ns()))
    assert runs[0] == runs[1]


def test_hvsim_run_vcpus_starts_the_ap_the_guest_copies_its_trampoline(tmp_path, capsys, arch):
    """``hvsim run --vcpus 2`` on x86: a raw image that copies its own AP trampoline below
    1 MiB (as kernels do), starts the AP by INIT-SIPI-SIPI and exits with status 1 only if the
    AP counted every IPI."""
    from hvsim.core.cli import main

    tramp = ap_trampoline(AP_COUNTS_IPIS)
    body = smp_guest(ipis=3, ticks=2).replace(
        "    mov dword ptr [{:#x}], 0\n".format(AP_ALIVE),
        f"""    mov dword ptr [{AP_ALIVE:#x}], 0
    lea rsi, [rip + tramp]
    mov rdi, {AP_TRAMPOLINE:#x}
    mov rcx, {len(tramp)}
    rep movsb
""", 1)
    assert "rep movsb" in body
    body = body.replace(f"    {EXIT}\n", f"""    cmp dword ptr [{IPIS:#x}], 3
    setne al
    out 0xf4, al
    hlt
""", 1)
    src = body + "\ntramp:\n" + "\n".join(f".byte {', '.join(str(b) for b in tramp[i:i + 16])}"
                                          for i in range(0, len(tramp), 16))
    image = tmp_path / "smp.bin"
    image.write_bytes(x86_64(src))
    assert main(["run", str(image), "--arch", arch, "--vcpus", "2", "--deterministic", "--timeout", "30"]) == 1
