# hvsim demo guest, x86 part 2: 64-bit long mode, reached from part 1 by a far jump.
# Assembled by build.py at LONG_ENTRY.

long_entry:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    lea rsi, [rip + msg_long]
    call puts64
    # Sum 1..1,000,000 natively: no exits while the guest computes
    xor rax, rax
    mov rcx, 1000000
sum_loop:
    add rax, rcx
    dec rcx
    jnz sum_loop
    mov rbx, 500000500000
    cmp rax, rbx
    jne bad
    lea rsi, [rip + msg_sum]
    call puts64
    lea rsi, [rip + msg_bye]
    call puts64
    mov al, 0
    out 0xF4, al          # isa-debug-exit: status (0 << 1) | 1 = 1
bad:
    lea rsi, [rip + msg_bad]
    call puts64
    mov al, 1
    out 0xF4, al
puts64:
    mov dx, 0x3F8
puts64_loop:
    lodsb
    test al, al
    jz puts64_done
    out dx, al
    jmp puts64_loop
puts64_done:
    ret

msg_long: .asciz "  now in 64-bit long mode with paging on\n"
msg_sum:  .asciz "  sum of 1..1000000 = 500000500000, computed without a single exit\n"
msg_bye:  .asciz "  goodbye: writing 0 to isa-debug-exit\n"
msg_bad:  .asciz "  wrong sum\n"
