// hvsim demo guest, arm64: a Linux arm64 Image (the 64-byte header is added by build.py).
// Entered at EL1h, MMU off, x0 = the device tree, as QEMU's virt board enters it:
//   qemu-system-aarch64 -M virt -cpu cortex-a57 -kernel demo_arm64.img -nographic
// Assembled by build.py at IMAGE_BASE + 0x40 (keystone); the vector table sits at VECTORS.
// Symbols defined by build.py: VECTORS, SCRATCH, STACK_TOP.

start:
    mov x20, x0
    ldr x0, =STACK_TOP
    mov sp, x0
    adr x2, m_banner
    bl puts
    // The device tree the loader passed in x0 starts with the FDT magic 0xd00dfeed (big-endian)
    adr x2, m_dtb
    bl puts
    ldr w0, [x20]
    rev w0, w0
    bl puthex
    bl newline
    // PSCI_VERSION through the hypervisor: an HVC exit, ESR_EL2.EC = 0x16
    adr x2, m_psci
    bl puts
    movz w0, #0x0000
    movk w0, #0x8400, lsl #16
    hvc #0
    bl puthex
    bl newline
    // An SVC taken to our own vector table: the simulated CPU does the exception entry
    ldr x0, =VECTORS
    msr vbar_el1, x0
    isb
    svc #0x42
    adr x2, m_svc
    bl puts
    ldr x0, =SCRATCH
    ldr x0, [x0]
    bl puthex
    bl newline
    // Sum 1..1,000,000 natively: no exits while the guest computes
    movz x3, #0x4240
    movk x3, #0xf, lsl #16
    mov x4, #0
sum_loop:
    add x4, x4, x3
    subs x3, x3, #1
    b.ne sum_loop
    movz x5, #0x2920
    movk x5, #0x6a5a, lsl #16
    movk x5, #0x74, lsl #32
    cmp x4, x5
    b.ne bad
    adr x2, m_sum
    bl puts
    adr x2, m_bye
    bl puts
    // PSCI SYSTEM_OFF: the run ends with status 0
    movz w0, #0x0008
    movk w0, #0x8400, lsl #16
    hvc #0
bad:
    adr x2, m_bad
    bl puts
    wfi
    b bad

puts:
    ldr x1, =0x09000000
puts_loop:
    ldrb w3, [x2], #1
    cbz w3, puts_done
    str w3, [x1]
    b puts_loop
puts_done:
    ret

newline:
    ldr x1, =0x09000000
    mov w3, #10
    str w3, [x1]
    ret

puthex:
    ldr x1, =0x09000000
    mov x6, #8
puthex_loop:
    ror w0, w0, #28
    and w7, w0, #0xf
    cmp w7, #9
    b.hi puthex_letter
    add w7, w7, #0x30
    b puthex_put
puthex_letter:
    add w7, w7, #0x37
puthex_put:
    str w7, [x1]
    subs x6, x6, #1
    b.ne puthex_loop
    ret

m_banner: .asciz "hvsim demo guest (arm64): Linux Image entered at EL1, MMU off\n"
m_dtb:    .asciz "  device tree magic at x0: 0x"
m_psci:   .asciz "  PSCI_VERSION over HVC: 0x"
m_svc:    .asciz "  SVC delivered to VBAR_EL1 + 0x200, ESR_EL1 = 0x"
m_sum:    .asciz "  sum of 1..1000000 = 500000500000, computed without a single exit\n"
m_bye:    .asciz "  goodbye: PSCI SYSTEM_OFF\n"
m_bad:    .asciz "  wrong sum\n"
