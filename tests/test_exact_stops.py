"""The run loop is exact: whatever stops the engine, no completed instruction runs again and none
is skipped.

Each guest checks its own invariant and reports through the UART ("PASS" or "FAIL <n>"), so a
re-executed or skipped instruction is caught by the guest itself: a pointer chase whose
destination is its base register (``mov rax, [rax]`` / ``ldr x5, [x5]``), read-modify-write
counters on memory, a string copy with a checksum, a push/pop chain. Each runs with very short
slices (the slice timer stops the engine thousands of times) and flushes its TLB every 64 steps
(MOV CR3 / TLBI VMALLE1: refills, engine-TLB growth stops, and under shadow paging exits), on
every architecture and, on x86, under nested and shadow paging.

Measured with the stock Unicorn 2.1.4 (hvsim's check bypassed), three runs each: the x86
read-modify-write guest failed 12 of 12 runs, one string copy under shadow paging failed; on
bare stock Unicorn an arm64 ``ldr x5, [x5]`` chase re-ran the load at 150 of 300 stops. The
patched engine's first version (without clearing skip_sync_pc_on_exit) failed the x86 pointer
chase in 3-4 of 10 runs; the x86 chase shows why each shape is kept.
"""

from __future__ import annotations

import pytest
from guestlib import ARM_ENTRY, ARM_MMU_ON, X86_STACK, arm64_image, x86_64

from hvsim.core.engine import slice_timer
from hvsim.core.vm import STATUS_OFF

N = 512  # pages in the window, one node / counter per page
S = 97  # stride through them (odd: one cycle through all N)
SLICE_US = 20  # the slice timer stops the engine every 20 us of guest time
CHURN = 63  # flush the TLB when the step counter's low 6 bits are 0

# -- x86: 4 KiB pages for the window at VA 8 MiB; the page tables at 4 MiB --------------------
X86_WINDOW = 0x80_0000
X86_FRAMES = 0x100_0000  # PT[i] maps the window's page i to frame (i * 37) % 512 from here
PML4, PDPT, PD, PT = 0x40_0000, 0x40_1000, 0x40_2000, 0x40_3000


def x86_guest(body: str) -> bytes:
    return x86_64(f"""
        mov rsp, {X86_STACK}
        mov rdi, {PML4}
        xor eax, eax
        mov ecx, 0x800
        rep stosq
        mov qword ptr [{PML4}], {PDPT | 7}
        mov qword ptr [{PDPT}], {PD | 7}
        mov qword ptr [{PD}], 0x87
        mov qword ptr [{PD + 8}], 0x200087
        mov qword ptr [{PD + 16}], 0x400087
        mov qword ptr [{PD + 24}], 0x600087
        mov qword ptr [{PD + 8 * (X86_WINDOW >> 21)}], {PT | 7}
        xor ecx, ecx
    pt:
        imul rax, rcx, 37
        and rax, 511
        shl rax, 12
        add rax, {X86_FRAMES | 7}
        mov qword ptr [rcx * 8 + {PT}], rax
        inc rcx
        cmp rcx, {N}
        jne pt
        mov rax, {PML4}
        mov cr3, rax
        {body}
        lea rsi, [rip + pass_msg]
        mov ecx, 5
        mov dx, 0x3f8
        rep outsb
        mov al, 0
        out 0xf4, al
        hlt
    fail:
        mov dx, 0x3f8
        mov al, 0x46
        out dx, al
        mov al, 0x20
        out dx, al
        mov al, bl
        add al, 0x30
        out dx, al
        mov al, 10
        out dx, al
        mov al, bl
        out 0xf4, al
        hlt
    pass_msg:
        .ascii "PASS\\n"
    """)


def x86_churn(tag: str) -> str:
    return f"test rcx, {CHURN}\njnz {tag}\nmov r14, cr3\nmov cr3, r14\n{tag}:"


def x86_node(reg: str, scratch: str) -> str:
    """reg = the VA of node reg: page reg of the window, at offset (reg * 16) & 0xff0."""
    return f"""mov {scratch}, {reg}
        shl {scratch}, 4
        and {scratch}, 0xff0
        shl {reg}, 12
        add {reg}, {scratch}
        add {reg}, {X86_WINDOW}"""


X86_SCENARIOS = {
    # mov rax, [rax] through a cycle of nodes, one per page; each node holds its own index.
    "pointer_chase": (96_000, f"""
        xor ecx, ecx
    build:
        mov rax, rcx
        {x86_node("rax", "rdx")}
        lea rdi, [rcx + {S}]
        and rdi, {N - 1}
        {x86_node("rdi", "rdx")}
        mov [rax], rdi
        mov [rax + 8], rcx
        inc rcx
        cmp rcx, {N}
        jne build
        mov rax, {X86_WINDOW}
        xor r8, r8
        mov rcx, {{steps}}
    chase:
        mov rax, [rax]
        add r8, {S}
        and r8, {N - 1}
        mov bl, 1
        cmp [rax + 8], r8
        jne fail
        {x86_churn("c_chase")}
        dec rcx
        jnz chase"""),
    # inc / add / lock xadd on a counter in each page in turn; the sums must match the count.
    "read_modify_write": (72_000, f"""
        xor esi, esi
        mov r9, 3
        mov rcx, {{steps}}
    rmw:
        mov rbx, rsi
        shl rbx, 12
        add rbx, {X86_WINDOW + 0x800}
        inc qword ptr [rbx]
        add qword ptr [rbx + 8], r9
        mov r10, 1
        lock xadd qword ptr [rbx + 16], r10
        add rsi, {S}
        and rsi, {N - 1}
        {x86_churn("c_rmw")}
        dec rcx
        jnz rmw
        xor eax, eax
        xor r11, r11
        xor r12, r12
        xor ecx, ecx
    sum:
        mov rbx, rcx
        shl rbx, 12
        add rax, [rbx + {X86_WINDOW + 0x800}]
        add r11, [rbx + {X86_WINDOW + 0x808}]
        add r12, [rbx + {X86_WINDOW + 0x810}]
        inc rcx
        cmp rcx, {N}
        jne sum
        mov bl, 1
        cmp rax, {{steps}}
        jne fail
        mov bl, 2
        cmp r11, {{steps3}}
        jne fail
        mov bl, 3
        cmp r12, {{steps}}
        jne fail"""),
    # rep movsb of 128 pages, then lodsq over the copy against the pattern regenerated.
    "string_copy": (4, f"""
        mov r13, {{steps}}
    round:
        mov rdi, {X86_WINDOW + 256 * 4096}
        xor eax, eax
        mov ecx, {128 * 512}
        rep stosq
        mov rdi, {X86_WINDOW}
        mov rcx, {128 * 512}
        mov r9, 0x9E3779B97F4A7C15
        mov rax, r13
    fill:
        add rax, r9
        stosq
        dec rcx
        jnz fill
        mov r14, cr3
        mov cr3, r14
        mov rsi, {X86_WINDOW}
        mov rdi, {X86_WINDOW + 256 * 4096}
        mov rcx, {128 * 4096}
        rep movsb
        mov bl, 1
        test rcx, rcx
        jnz fail
        mov bl, 2
        mov rax, {X86_WINDOW + 128 * 4096}
        cmp rsi, rax
        jne fail
        mov r14, cr3
        mov cr3, r14
        mov rsi, {X86_WINDOW + 256 * 4096}
        mov rcx, {128 * 512}
        mov rdx, r13
        mov bl, 3
    check:
        add rdx, r9
        lodsq
        cmp rax, rdx
        jne fail
        dec rcx
        jnz check
        dec r13
        jnz round"""),
    # push 0, 1, 2, ... on a stack in the window, then pop them back in order.
    "push_pop": (60_000, f"""
        mov r15, rsp
        mov rsp, {X86_WINDOW + N * 4096}
        xor eax, eax
        mov rcx, {{steps}}
    push_loop:
        push rax
        inc rax
        {x86_churn("c_push")}
        dec rcx
        jnz push_loop
        mov rcx, {{steps}}
        mov bl, 1
    pop_loop:
        pop rdx
        dec rax
        cmp rdx, rax
        jne fail
        {x86_churn("c_pop")}
        dec rcx
        jnz pop_loop
        mov bl, 2
        mov rdx, {X86_WINDOW + N * 4096}
        cmp rsp, rdx
        jne fail
        mov rsp, r15"""),
}

# -- arm64: the guest's own MMU on (RAM mapped one to one), the window at RAM + 8 MiB ----------
ARM_WINDOW = 0x4080_0000


def arm_churn(tag: str) -> str:
    return f"tst x9, #{CHURN}\nb.ne {tag}\ntlbi vmalle1\ndsb ish\nisb\n{tag}:"


def mov64(reg: str, value: int) -> str:
    return "\n".join([f"movz {reg}, #{value & 0xFFFF}"]
                     + [f"movk {reg}, #{(value >> s) & 0xFFFF}, lsl #{s}" for s in (16, 32, 48)])


def arm_guest(body: str) -> bytes:
    return arm64_image(f"""
        {ARM_MMU_ON}
        movz x20, #0x8900, lsl #16  // the PL011 through the guest's device mapping
        {mov64("x10", ARM_WINDOW)}
        {body}
        movz w1, #0x50
        strb w1, [x20]
        movz w1, #0x41
        strb w1, [x20]
        movz w1, #0x53
        strb w1, [x20]
        strb w1, [x20]
        movz w1, #0x0a
        strb w1, [x20]
        movz w0, #0x0008
        movk w0, #0x8400, lsl #16
        hvc #0
    fail:
        movz w1, #0x46
        strb w1, [x20]
        movz w1, #0x20
        strb w1, [x20]
        add w1, w19, #0x30
        strb w1, [x20]
        movz w1, #0x0a
        strb w1, [x20]
        movz w0, #0x0008
        movk w0, #0x8400, lsl #16
        hvc #0
    """)


def arm_node(dst: str, idx: str) -> str:
    return f"""lsl {dst}, {idx}, #12
        lsl x16, {idx}, #4
        and x16, x16, #0xff0
        add {dst}, {dst}, x16
        add {dst}, {dst}, x10"""


ARM_SCENARIOS = {
    "pointer_chase": (40_000, f"""
        mov x0, #0
    build:
        {arm_node("x1", "x0")}
        add x3, x0, #{S}
        and x3, x3, #{N - 1}
        {arm_node("x4", "x3")}
        str x4, [x1]
        str x0, [x1, #8]
        add x0, x0, #1
        cmp x0, #{N}
        b.ne build
        mov x5, x10
        mov x8, #0
        movz x9, #{{steps_lo}}
        movk x9, #{{steps_hi}}, lsl #16
        mov w19, #1
    chase:
        ldr x5, [x5]
        add x8, x8, #{S}
        and x8, x8, #{N - 1}
        ldr x6, [x5, #8]
        cmp x6, x8
        b.ne fail
        {arm_churn("c_chase")}
        subs x9, x9, #1
        b.ne chase"""),
    # exclusive-pair increment, ldr/add/str and ldp/stp on counters in each page in turn.
    "read_modify_write": (30_000, f"""
        mov x0, #0
        movz x9, #{{steps_lo}}
        movk x9, #{{steps_hi}}, lsl #16
    rmw:
        lsl x1, x0, #12
        add x1, x1, x10
        add x1, x1, #0x800
    excl:
        ldxr x2, [x1]
        add x2, x2, #1
        stxr w3, x2, [x1]
        cbnz w3, excl
        ldr x2, [x1, #8]
        add x2, x2, #3
        str x2, [x1, #8]
        ldp x2, x3, [x1, #16]
        add x2, x2, #1
        add x3, x3, #2
        stp x2, x3, [x1, #16]
        add x0, x0, #{S}
        and x0, x0, #{N - 1}
        {arm_churn("c_rmw")}
        subs x9, x9, #1
        b.ne rmw
        mov x0, #0
        mov x4, #0
        mov x5, #0
        mov x6, #0
        mov x7, #0
    sum:
        lsl x1, x0, #12
        add x1, x1, x10
        add x1, x1, #0x800
        ldr x2, [x1]
        add x4, x4, x2
        ldr x2, [x1, #8]
        add x5, x5, x2
        ldp x2, x3, [x1, #16]
        add x6, x6, x2
        add x7, x7, x3
        add x0, x0, #1
        cmp x0, #{N}
        b.ne sum
        movz x9, #{{steps_lo}}
        movk x9, #{{steps_hi}}, lsl #16
        mov w19, #1
        cmp x4, x9
        b.ne fail
        mov w19, #2
        add x2, x9, x9, lsl #1
        cmp x5, x2
        b.ne fail
        mov w19, #3
        cmp x6, x9
        b.ne fail
        mov w19, #4
        cmp x7, x9, lsl #1
        b.ne fail"""),
    # ldp/stp post-index copy of 128 pages, then ldr post-index over the copy against the pattern.
    "string_copy": (8, f"""
        movz x13, #{{steps_lo}}
        {mov64("x17", 0x9E3779B97F4A7C15)}
    round:
        add x2, x10, #0x100000
        movz x9, #{128 * 512 // 2}
    zero:
        stp xzr, xzr, [x2], #16
        subs x9, x9, #1
        b.ne zero
        mov x2, x10
        mov x9, #{128 * 512:#x}
        mov x4, x13
    fill:
        add x4, x4, x17
        str x4, [x2], #8
        subs x9, x9, #1
        b.ne fill
        tlbi vmalle1
        dsb ish
        isb
        mov x1, x10
        add x2, x10, #0x100000
        movz x9, #{128 * 512 // 2}
    copy:
        ldp x4, x5, [x1], #16
        stp x4, x5, [x2], #16
        subs x9, x9, #1
        b.ne copy
        mov w19, #1
        add x3, x10, #0x80000
        cmp x1, x3
        b.ne fail
        tlbi vmalle1
        dsb ish
        isb
        add x2, x10, #0x100000
        mov x9, #{128 * 512:#x}
        mov x6, x13
        mov w19, #2
    check:
        add x6, x6, x17
        ldr x4, [x2], #8
        cmp x4, x6
        b.ne fail
        subs x9, x9, #1
        b.ne check
        subs x13, x13, #1
        b.ne round"""),
    "push_pop": (100_000, f"""
        mov x15, sp
        add x1, x10, #{N * 4096 // 2}
        add x1, x1, #{N * 4096 // 2}
        mov sp, x1
        mov x0, #0
        movz x9, #{{steps_lo}}
        movk x9, #{{steps_hi}}, lsl #16
    push_loop:
        str x0, [sp, #-16]!
        add x0, x0, #1
        {arm_churn("c_push")}
        subs x9, x9, #1
        b.ne push_loop
        movz x9, #{{steps_lo}}
        movk x9, #{{steps_hi}}, lsl #16
        mov w19, #1
    pop_loop:
        ldr x2, [sp], #16
        sub x0, x0, #1
        cmp x2, x0
        b.ne fail
        {arm_churn("c_pop")}
        subs x9, x9, #1
        b.ne pop_loop
        mov w19, #2
        mov x2, sp
        add x1, x10, #{N * 4096 // 2}
        add x1, x1, #{N * 4096 // 2}
        cmp x2, x1
        b.ne fail
        mov sp, x15"""),
}


def case_list():
    for name in X86_SCENARIOS:
        for arch in ("intel_vtx", "amd_svm"):
            for paging in ("nested", "shadow"):
                yield pytest.param(arch, paging, name, id=f"{arch}-{paging}-{name}")
    for name in ARM_SCENARIOS:
        yield pytest.param("arm_el2", "nested", name, id=f"arm_el2-{name}")


def build(arch: str, name: str) -> bytes:
    if arch == "arm_el2":
        steps, body = ARM_SCENARIOS[name]
        return arm_guest(body.format(steps_lo=steps & 0xFFFF, steps_hi=steps >> 16))
    steps, body = X86_SCENARIOS[name]
    return x86_guest(body.format(steps=steps, steps3=3 * steps))


@pytest.mark.parametrize("arch,paging,name", list(case_list()))
def test_a_guest_that_checks_itself_sees_every_instruction_once_under_constant_stops(make_vm, arch, paging,
                                                                                   name):
    kw = {"paging": "shadow"} if paging == "shadow" else {"entry": ARM_ENTRY} if arch == "arm_el2" else {}
    vm = make_vm(arch, slice_us=SLICE_US, **kw)
    vm.load(build(arch, name))
    timer = slice_timer()
    before = timer.stops
    result = vm.run(timeout=60)
    stops = timer.stops - before
    assert vm.console.text == "PASS\n", (vm.console.text, result.reason)
    assert result.status == (STATUS_OFF if arch == "arm_el2" else 1)
    assert stops >= 50, f"only {stops} slice-timer stops: the test did not exercise them"
