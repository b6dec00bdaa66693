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


GP_COUNT = OUT + 0x80
# A #GP handler that counts and skips the 2-byte RDMSR / WRMSR that raised it.
GP_HANDLER = f"""
gp:
    lock inc dword ptr [{GP_COUNT:#x}]
    add qword ptr [rsp + 8], 2
    add rsp, 8
    iretq
"""


def msr_write(msr: int, value: int) -> str:
    return f"mov ecx, {msr:#x}\nmov eax, {value & 0xFFFF_FFFF:#x}\nmov edx, {value >> 32:#x}\nwrmsr"


def msr_read_to(msr: int, at: int) -> str:
    return f"mov ecx, {msr:#x}\nrdmsr\nmov dword ptr [{at:#x}], eax\nmov dword ptr [{at + 4:#x}], edx"


def test_cpuid_reports_x2apic_and_tsc_deadline(make_vm, arch):
    vm, r = run64(make_vm, arch, f"mov eax, 1\ncpuid\nmov dword ptr [{OUT:#x}], ecx\nmov dword ptr [{OUT + 4:#x}], ebx\n{EXIT}")
    assert r.status == 1
    assert vm.memory.read_u32(OUT) & (1 << 21 | 1 << 24) == 1 << 21 | 1 << 24
    assert vm.memory.read_u32(OUT + 4) >> 24 == 0  # initial APIC ID of the BSP


def test_x2apic_timer_self_ipi_and_gp_rules(make_vm, arch):
    """x2APIC mode through IA32_APIC_BASE.EXTD: ID / LDR from the vCPU index, the timer and
    SELF IPI through MSRs, EOI by WRMSR 0x80B; #GP for x2APIC MSRs in xAPIC mode, for writes to
    read-only registers, a non-zero EOI, and the x2APIC -> xAPIC transition (SDM 11.12)."""
    src = f"""
    {x86_idt_setup({0x40: "tick", 0x51: "selfipi", 0x52: "selfipi", 13: "gp"})}
    mov ecx, 0x802
    rdmsr                               // xAPIC mode: #GP (1)
    mov ecx, 0x1b
    rdmsr
    or eax, 0xc00                       // EN | EXTD
    wrmsr
    {msr_read_to(0x802, OUT)}
    {msr_read_to(0x80D, OUT + 8)}
    {msr_read_to(0x803, OUT + 16)}
    {msr_write(0x80F, 0x1FF)}
    {msr_write(0x803, 0)}               // version is read-only: #GP (2)
    {msr_write(0x80B, 1)}               // non-zero EOI: #GP (3)
    mov ecx, 0x1b
    rdmsr
    and eax, 0xfffffbff                 // x2APIC -> xAPIC: #GP (4)
    wrmsr
    {msr_write(0x83E, 0xB)}
    {msr_write(0x832, 0x40 | 1 << 17)}
    {msr_write(0x838, 1_000_000)}
    sti
wait:
    hlt
    cmp dword ptr [{COUNT:#x}], 3
    jb wait
    cli
    {msr_write(0x832, 0x10000)}
    {msr_write(0x83F, 0x51)}            // SELF IPI
    {msr_write(0x830, 0x40052)}         // ICR, shorthand self, vector 0x52
    sti
    nop
    nop
    cli
    {EXIT}
{counting_handler("tick", COUNT, eoi="x2apic")}
{counting_handler("selfipi", OUT + 0x84, eoi="x2apic")}
{GP_HANDLER}
"""
    vm, r = run64(make_vm, arch, src, deterministic=True)
    assert r.status == 1, r.reason
    m = vm.memory
    assert m.read_u32(OUT) == 0  # x2APIC ID = vCPU index
    assert m.read_u32(OUT + 8) == 1  # LDR: cluster 0, bit 0
    assert m.read_u32(OUT + 16) == 0x50014
    assert m.read_u32(GP_COUNT) == 4
    assert m.read_u32(COUNT) == 3
    assert m.read_u32(OUT + 0x84) == 2  # the SELF IPI and the ICR's self shorthand


def test_tsc_deadline_timer(make_vm, arch):
    """TSC-deadline mode (SDM 11.5.4.1): the interrupt comes once the TSC passes
    IA32_TSC_DEADLINE, which then reads 0."""
    src = f"""
    {x86_idt_setup({0x41: "tick"})}
    {xapic_enable()}
    mov {reg(0x320)}, {0x41 | 2 << 17:#x}
    rdtsc
    shl rdx, 32
    or rax, rdx
    add rax, 2000000
    mov rdx, rax
    shr rdx, 32
    mov ecx, 0x6e0
    wrmsr
    {msr_read_to(0x6E0, OUT)}
    sti
wait:
    hlt
    cmp dword ptr [{COUNT:#x}], 1
    jb wait
    cli
    {msr_read_to(0x6E0, OUT + 8)}
    mov eax, {reg(0x390)}
    mov dword ptr [{OUT + 16:#x}], eax
    {EXIT}
{counting_handler("tick", COUNT)}
"""
    vm, r = run64(make_vm, arch, src, deterministic=True)
    assert r.status == 1, r.reason
    m = vm.memory
    assert m.read_u64(OUT) != 0 and m.read_u64(OUT + 8) == 0
    assert m.read_u32(COUNT) == 1
    assert m.read_u32(OUT + 16) == 0  # the current count is not used in this mode


def test_one_shot_timer_and_current_count(make_vm, arch):
    """One-shot mode: one interrupt, then the current count stays 0; divide by 16."""
    src = f"""
    {x86_idt_setup({0x42: "tick"})}
    {xapic_enable()}
    mov {reg(0x3E0)}, 3
    mov {reg(0x320)}, 0x42
    mov {reg(0x380)}, 100000
    mov eax, {reg(0x390)}
    mov dword ptr [{OUT:#x}], eax
    sti
wait:
    hlt
    cmp dword ptr [{COUNT:#x}], 1
    jb wait
    mov ecx, 100000
spin:
    loop spin
    cli
    mov eax, {reg(0x390)}
    mov dword ptr [{OUT + 4:#x}], eax
    {EXIT}
{counting_handler("tick", COUNT)}
"""
    vm, r = run64(make_vm, arch, src, deterministic=True)
    assert r.status == 1, r.reason
    m = vm.memory
    assert 0 < m.read_u32(OUT) <= 100000
    assert m.read_u32(OUT + 4) == 0 and m.read_u32(COUNT) == 1


def test_bad_input_sets_esr_and_delivers_nothing(make_vm, arch):
    """SDM 11.5.3: an IPI with vector < 16 is a send-illegal-vector error, an LVT timer vector
    < 16 a receive-illegal-vector error when it fires, an unimplemented register an illegal
    register address; ESR shows them after a write (which latches); an ICR to an APIC ID no
    processor has, or with a reserved delivery mode, delivers nothing; writes to read-only
    registers (version, PPR) are ignored. No interrupt reaches the guest from any of them."""
    src = f"""
    {x86_idt_setup({v: "any" for v in range(0, 256) if v not in (8, 13, 14)})}
    {xapic_enable()}
    mov {reg(0x280)}, 0
    mov {reg(0x310)}, 0
    mov {reg(0x300)}, 0x4005            // fixed, vector 5, to APIC 0
    mov {reg(0x280)}, 0
    mov eax, {reg(0x280)}
    mov dword ptr [{OUT:#x}], eax       // send illegal vector
    mov {reg(0x320)}, 0x3               // one-shot, vector 3
    mov {reg(0x380)}, 1000
    mov ecx, 100000
spin:
    loop spin
    mov {reg(0x280)}, 0
    mov eax, {reg(0x280)}
    mov dword ptr [{OUT + 4:#x}], eax   // receive illegal vector
    mov eax, {reg(0x40)}                // no register at 0x40
    mov {reg(0x280)}, 0
    mov eax, {reg(0x280)}
    mov dword ptr [{OUT + 8:#x}], eax   // illegal register address
    mov {reg(0x310)}, 0x7000000         // APIC ID 7: nobody
    mov {reg(0x300)}, 0x4060
    mov {reg(0x310)}, 0
    mov {reg(0x300)}, 0x4361            // reserved delivery mode 3
    mov {reg(0x30)}, 0
    mov {reg(0xA0)}, 0xff
    mov eax, {reg(0x30)}
    mov dword ptr [{OUT + 12:#x}], eax
    mov eax, {reg(0xA0)}
    mov dword ptr [{OUT + 16:#x}], eax
    mov {reg(0x280)}, 0
    mov eax, {reg(0x280)}
    mov dword ptr [{OUT + 20:#x}], eax
    sti
    nop
    nop
    cli
    {EXIT}
any:
    lock inc dword ptr [{COUNT:#x}]
    iretq
"""
    vm, r = run64(make_vm, arch, src, deterministic=True)
    assert r.status == 1, r.reason
    m = vm.memory
    assert m.read_u32(OUT) == 1 << 5
    assert m.read_u32(OUT + 4) == 1 << 6
    assert m.read_u32(OUT + 8) == 1 << 7
    assert m.read_u32(OUT + 12) == 0x50014 and m.read_u32(OUT + 16) == 0
    assert m.read_u32(OUT + 20) == 0
    assert m.read_u32(COUNT) == 0
    assert vm.vcpus[0].lapic.highest_irr() == -1


def test_relocated_and_disabled_apic(make_vm, arch):
    """IA32_APIC_BASE (SDM 11.4.4): moving the base moves the xAPIC page (the old address is
    then unassigned: all ones); clearing EN disables the APIC, which no longer decodes its page
    and resets; EXTD without EN is #GP."""
    src = f"""
    {x86_idt_setup({13: "gp"})}
    mov ecx, 0x1b
    rdmsr
    mov dword ptr [{OUT:#x}], eax
    mov eax, 0xfed00900                 // base 0xFED0_0000, EN, BSP
    xor edx, edx
    wrmsr
    mov rax, 0xfed00030
    mov eax, dword ptr [rax]
    mov dword ptr [{OUT + 4:#x}], eax
    mov rax, 0xfee00030
    mov eax, dword ptr [rax]
    mov dword ptr [{OUT + 8:#x}], eax
    mov ecx, 0x1b
    mov eax, 0xfee00100                 // EN clear: disabled
    wrmsr
    mov rax, 0xfee00030
    mov eax, dword ptr [rax]
    mov dword ptr [{OUT + 12:#x}], eax
    mov eax, 0xfee00500                 // EXTD without EN: #GP
    wrmsr
    rdmsr
    mov dword ptr [{OUT + 16:#x}], eax
    {EXIT}
{GP_HANDLER}
"""
    vm, r = run64(make_vm, arch, src)
    assert r.status == 1, r.reason
    m = vm.memory
    assert m.read_u32(OUT) == 0xFEE0_0900  # EN, BSP
    assert m.read_u32(OUT + 4) == 0x50014
    assert m.read_u32(OUT + 8) == 0xFFFF_FFFF
    assert m.read_u32(OUT + 12) == 0xFFFF_FFFF
    assert m.read_u32(GP_COUNT) == 1
    assert m.read_u32(OUT + 16) == 0xFEE0_0100


ORDER = OUT + 0x100


def test_priority_arbitration_tpr_ppr_and_nesting(make_vm, arch):
    """SDM 11.8.3: with TPR 0x50 only class 6 and above is taken; IRR vectors are taken highest
    first; a higher class nests inside a lower one's handler (ISR raises PPR); lowering the TPR
    releases the rest. Each handler logs its vector."""
    def handler(vector: int, nested: str = "") -> str:
        return f"""
h{vector:x}:
    push rax
    push rbx
    mov ebx, dword ptr [{COUNT:#x}]
    mov byte ptr [{ORDER:#x} + rbx], {vector:#x}
    inc dword ptr [{COUNT:#x}]
    mov eax, {reg(0xA0)}
    mov byte ptr [{ORDER + 0x20:#x} + rbx], al      // PPR inside the handler
    {nested}
    mov {reg(0xB0)}, 0
    pop rbx
    pop rax
    iretq
"""
    nest = f"mov {reg(0x310)}, 0\nmov {reg(0x300)}, 0x40095\nsti\nnop\ncli"  # self IPI 0x95 nests
    src = f"""
    {x86_idt_setup({0x45: "h45", 0x55: "h55", 0x65: "h65", 0x75: "h75", 0x95: "h95"})}
    {xapic_enable()}
    mov {reg(0x80)}, 0x50
    mov {reg(0x310)}, 0
    mov {reg(0x300)}, 0x40045
    mov {reg(0x300)}, 0x40065
    mov {reg(0x300)}, 0x40055
    mov {reg(0x300)}, 0x40075
    sti
    nop
    cli
    mov eax, {reg(0xA0)}
    mov dword ptr [{OUT:#x}], eax                   // PPR = TPR after the handlers
    mov {reg(0x80)}, 0
    sti
    nop
    cli
    {EXIT}
{handler(0x45)}
{handler(0x55)}
{handler(0x65, nest)}
{handler(0x75)}
{handler(0x95)}
"""
    vm, r = run64(make_vm, arch, src)
    assert r.status == 1, r.reason
    m = vm.memory
    n = m.read_u32(COUNT)
    assert list(m.read(ORDER, n)) == [0x75, 0x65, 0x95, 0x55, 0x45]
    assert list(m.read(ORDER + 0x20, n)) == [0x70, 0x60, 0x90, 0x50, 0x40]
    assert m.read_u32(OUT) == 0x50


@pytest.mark.parametrize("deterministic", [True, False])
def test_cpuid_15h_gives_the_tsc_rate_and_the_apic_timer_crystal(make_vm, arch, deterministic):
    """CPUID.15H (SDM Vol. 2A): TSC Hz = ECX * EBX / EAX, ECX the core crystal clock's Hz, which
    the APIC timer counts at (SDM 11.5.4). Linux takes the TSC's rate from it and sets its APIC
    timer period from ECX. The guest counts a one-shot APIC timer (divide by 1) down and measures it with RDTSC: EBX / EAX TSC ticks per APIC tick. AMD: no leaf 15H."""
    ticks = 200_000 if deterministic else 20_000_000  # virtual time advances with guest progress
    vm, r = run64(make_vm, arch, f"""
        {R15}
        {xapic_enable()}
        xor eax, eax
        cpuid
        mov dword ptr [{OUT:#x}], eax
        mov eax, 0x15
        xor ecx, ecx
        cpuid
        mov dword ptr [{OUT + 4:#x}], eax
        mov dword ptr [{OUT + 8:#x}], ebx
        mov dword ptr [{OUT + 12:#x}], ecx
        mov dword ptr [r15 + 0x3e0], 0xb
        mov dword ptr [r15 + 0x320], 0x10040
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov rbx, rax
        mov dword ptr [r15 + 0x380], {ticks}
    wait:
        mov eax, dword ptr [r15 + 0x390]
        test eax, eax
        jnz wait
        rdtsc
        shl rdx, 32
        or rax, rdx
        sub rax, rbx
        mov qword ptr [{OUT + 16:#x}], rax
        {EXIT}""", deterministic=deterministic)
    assert r.status == 1, r.reason
    max_leaf, eax, ebx, ecx = (vm.memory.read_u32(OUT + 4 * i) for i in range(4))
    if arch == "amd_svm":
        assert (max_leaf, eax, ebx, ecx) == (0xD, 0, 0, 0)
        return
    assert max_leaf == 0x15 and ecx == 1_000_000_000 and eax == 1000 and ebx > 0
    expected = ticks * ebx / eax  # TSC ticks while the APIC timer counted ``ticks``
    measured = vm.memory.read_u64(OUT + 16)
    assert 0.99 * expected <= measured <= (1.01 if deterministic else 3) * expected, (measured, expected)
