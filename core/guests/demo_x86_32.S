# hvsim demo guest, x86 part 1: Multiboot v1 entry in 32-bit protected mode (paging off).
# Assembled by build.py at 0x100000 (keystone, Intel syntax). Boots the same way on QEMU:
#   qemu-system-x86_64 -kernel demo_x86.elf -serial stdio -display none \
#       -device isa-debug-exit,iobase=0xf4,iosize=0x04
# Symbols defined by build.py: LONG_ENTRY, PML4, PDPT, PD, STACK_TOP, UD_SKIP.

mb_header:
    .long 0x1BADB002                 # multiboot magic
    .long 0x00000003                 # flags: page-align modules, want memory info
    .long -(0x1BADB002 + 0x00000003) # checksum

start:
    mov esp, STACK_TOP
    mov [mb_magic], eax
    mov [mb_info], ebx
    lea esi, [msg_banner]
    call puts
    # Multiboot handed us EAX = 0x2BADB002
    lea esi, [msg_magic]
    call puts
    mov eax, [mb_magic]
    call puthex
    call newline
    # RAM size from the Multiboot info (mem_upper, KiB above 1 MiB)
    lea esi, [msg_mem]
    call puts
    mov ebx, [mb_info]
    mov eax, [ebx + 8]
    shr eax, 10
    add eax, 1
    call puthex
    lea esi, [msg_mib]
    call puts
    # CPUID vendor: the vendor plugin decides what the guest sees
    lea esi, [msg_cpu]
    call puts
    xor eax, eax
    cpuid
    mov [vendor], ebx
    mov [vendor + 4], edx
    mov [vendor + 8], ecx
    lea esi, [vendor]
    call puts
    call newline
    # fw_cfg signature: select key 0, read 4 bytes from the data port
    lea esi, [msg_fwcfg]
    call puts
    mov dx, 0x510
    xor ax, ax
    out dx, ax
    mov dx, 0x511
    mov ecx, 4
fw_loop:
    in al, dx
    mov ah, al
    push edx
    mov dx, 0x3F8
    mov al, ah
    out dx, al
    pop edx
    dec ecx
    jnz fw_loop
    call newline
    # An IDT with a #UD handler, then a ud2 the guest handles itself
    lea eax, [ud_handler]
    lea edi, [idt + 6 * 8]
    mov word ptr [edi], ax
    mov word ptr [edi + 2], 0x08
    mov word ptr [edi + 4], 0x8E00
    shr eax, 16
    mov word ptr [edi + 6], ax
    lidt [idtr]
    mov dword ptr [ud_skip], 2
    ud2
    # The vendor's hypercall: VMCALL on Intel, VMMCALL on AMD (a #UD elsewhere, caught above)
    lea esi, [msg_hcall]
    call puts
    mov dword ptr [ud_skip], 3
    mov eax, 0x1234
    cmp dword ptr [vendor], 0x68747541   # "Auth"
    je use_vmmcall
    vmcall
    jmp after_hcall
use_vmmcall:
    vmmcall
after_hcall:
    call puthex
    call newline
    # Into long mode: PAE tables, EFER.LME, CR0.PG, far jump to a 64-bit code segment
    mov eax, PDPT
    or eax, 3
    mov [PML4], eax
    mov eax, PD
    or eax, 3
    mov [PDPT], eax
    xor ecx, ecx
pd_loop:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83
    mov [PD + ecx * 8], eax
    mov dword ptr [PD + ecx * 8 + 4], 0
    inc ecx
    cmp ecx, 512
    jne pd_loop
    lgdt [gdtr]
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, PML4
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    .byte 0xEA                       # jmp far 0x18:LONG_ENTRY (keystone lacks the far form)
    .long LONG_ENTRY
    .word 0x18

ud_handler:
    push esi
    lea esi, [msg_ud]
    call puts
    pop esi
    push eax
    mov eax, [ud_skip]
    add [esp + 4], eax
    pop eax
    iretd

puts:
    push eax
    push edx
    mov dx, 0x3F8
puts_loop:
    lodsb
    test al, al
    jz puts_done
    out dx, al
    jmp puts_loop
puts_done:
    pop edx
    pop eax
    ret

newline:
    push eax
    push edx
    mov dx, 0x3F8
    mov al, 10
    out dx, al
    pop edx
    pop eax
    ret

puthex:
    push eax
    push ecx
    push edx
    mov ecx, 8
    mov dx, 0x3F8
puthex_loop:
    rol eax, 4
    push eax
    and al, 0x0F
    add al, 0x30
    cmp al, 0x39
    jbe puthex_digit
    add al, 7
puthex_digit:
    out dx, al
    pop eax
    dec ecx
    jnz puthex_loop
    pop edx
    pop ecx
    pop eax
    ret

msg_banner: .asciz "hvsim demo guest (x86): Multiboot kernel in 32-bit protected mode\n"
msg_magic:  .asciz "  EAX from the loader: 0x"
msg_mem:    .asciz "  RAM: 0x"
msg_mib:    .asciz " MiB\n"
msg_cpu:    .asciz "  CPUID vendor: "
msg_fwcfg:  .asciz "  fw_cfg signature: "
msg_ud:     .asciz "  #UD delivered through the guest's IDT and handled\n"
msg_hcall:  .asciz "  hypercall 0x1234 returned 0x"
.align 8
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF
    .quad 0x00CF92000000FFFF
    .quad 0x00AF9A000000FFFF
gdtr:
    .word 31
    .long gdt
idtr:
    .word 8 * 32 - 1
    .long idt
mb_magic: .long 0
mb_info:  .long 0
ud_skip:  .long 0
vendor:   .long 0, 0, 0, 0
.align 8
idt:
