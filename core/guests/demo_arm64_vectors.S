// Slot 4 of the vector table (current EL with SP_ELx, synchronous): record ESR_EL1, return.
    mrs x9, esr_el1
    ldr x10, =SCRATCH
    str x9, [x10]
    eret
