"""arm64 guests that drive the GICv3 (QEMU virt layout), assembled with keystone.

:func:`gic_guest` assembles ``main`` with a vector table whose IRQ slot (current EL, SPx)
branches to the label ``irq`` the test defines, and whose other slots store the vector offset
and ESR_EL1 at ``UNEXPECTED`` and power off. :data:`GIC_ON` is what a kernel does to bring
the GIC up for the calling CPU (Linux drivers/irqchip/irq-gic-v3.c): wake its redistributor
(GICR_WAKER.ProcessorSleep = 0, wait for ChildrenAsleep = 0), put SGIs/PPIs in group 1,
enable the distributor (ARE, EnableGrp1), then the CPU interface (ICC_SRE_EL1, ICC_PMR_EL1,
ICC_IGRPEN1_EL1). X24 must hold this CPU's redistributor (RD_base); clobbers X1-X3.
"""

from __future__ import annotations

from el2guest import LOAD, SYSTEM_OFF, asm

GICD = 0x0800_0000
GICR = 0x080A_0000
GICR_STRIDE = 0x2_0000
SGI_BASE = 0x1_0000
UNEXPECTED = 0x4130_0000
DATA = 0x4140_0000

# System registers by their generic names (keystone knows few GIC ones).
ICC_PMR_EL1 = "S3_0_C4_C6_0"
ICC_IAR1_EL1 = "S3_0_C12_C12_0"
ICC_EOIR1_EL1 = "S3_0_C12_C12_1"
ICC_HPPIR1_EL1 = "S3_0_C12_C12_2"
ICC_BPR1_EL1 = "S3_0_C12_C12_3"
ICC_CTLR_EL1 = "S3_0_C12_C12_4"
ICC_SRE_EL1 = "S3_0_C12_C12_5"
ICC_IGRPEN1_EL1 = "S3_0_C12_C12_7"
ICC_DIR_EL1 = "S3_0_C12_C11_1"
ICC_RPR_EL1 = "S3_0_C12_C11_3"
ICC_SGI1R_EL1 = "S3_0_C12_C11_5"


def mov32(reg: str, value: int) -> str:
    return f"movz {reg}, #{value & 0xFFFF:#x}\nmovk {reg}, #{value >> 16 & 0xFFFF:#x}, lsl #16"


def gicr_of(index: str = "x0") -> str:
    """X24 = the redistributor of the vCPU whose number is in ``index`` (clobbers X1)."""
    return f"""
    {mov32("x24", GICR)}
    lsl x1, {index}, #17
    add x24, x24, x1
"""


def gic_on(tag: str = "") -> str:
    """:data:`GIC_ON` with its label suffixed by ``tag`` (for a second use in one guest)."""
    return GIC_ON.replace("gic_wake", f"gic_wake{tag}")


GIC_ON = f"""
    ldr w1, [x24, #0x14]            // GICR_WAKER
    bic w1, w1, #2                  // ProcessorSleep = 0
    str w1, [x24, #0x14]
gic_wake:
    ldr w1, [x24, #0x14]
    tbnz w1, #2, gic_wake           // ChildrenAsleep
    add x2, x24, #0x10, lsl #12     // SGI_base
    mov w1, #-1
    str w1, [x2, #0x80]             // GICR_IGROUPR0: SGIs and PPIs in group 1
    {mov32("x2", GICD)}
    mov w1, #0x12
    str w1, [x2]                    // GICD_CTLR: ARE | EnableGrp1
    mov x1, #1
    msr {ICC_SRE_EL1}, x1
    isb
    mov x1, #0xf0
    msr {ICC_PMR_EL1}, x1           // ICC_PMR_EL1: priorities below 0xf0 get through
    mov x1, #1
    msr {ICC_IGRPEN1_EL1}, x1       // ICC_IGRPEN1_EL1
    isb
"""


def enable_ppi(intid: int, priority: int = 0xA0) -> str:
    """Enable PPI/SGI ``intid`` in this CPU's redistributor (X24) with ``priority``."""
    return f"""
    add x2, x24, #0x10, lsl #12
    mov w1, #{priority:#x}
    strb w1, [x2, #{0x400 + intid:#x}]   // GICR_IPRIORITYR<n>, byte {intid}
    {mov32("w1", 1 << intid)}
    str w1, [x2, #0x100]                // GICR_ISENABLER0
"""


def secondary_waits_for_sgi(sgi: int) -> str:
    """The ``second`` entry of a vCPU started by PSCI CPU_ON (context id in X0 = its number):
    vector table, its redistributor and CPU interface on, SGI ``sgi`` enabled, [DATA + 8] = 1
    to say it is ready, then WFI with IRQs unmasked (the image's ``irq`` handler counts)."""
    return f"""
second:
    adr x21, vectors
    msr vbar_el1, x21
    isb
    {gicr_of("x0")}
    {gic_on("1")}
    {enable_ppi(sgi)}
    {mov32("x25", DATA)}
    mov x1, #1
    str x1, [x25, #8]
    msr daifclr, #2
idle:
    wfi
    b idle
"""


def _vectors() -> str:
    lines = [".balign 0x800", "vectors:"]
    for slot in range(16):
        lines.append(".balign 0x80")
        if slot == 5:
            lines.append("b irq")
        else:
            lines += [f"mov x10, #{slot * 0x80:#x}", "b unexpected"]
    return "\n".join(lines)


_UNEXPECTED = f"""
unexpected:
    {mov32("x11", UNEXPECTED)}
    mrs x12, esr_el1
    stp x10, x12, [x11]
    mrs x12, elr_el1
    str x12, [x11, #16]
    {SYSTEM_OFF}
"""


def gic_guest(main: str) -> bytes:
    """VBAR_EL1 = the image's vector table, then ``main`` (which defines ``irq``)."""
    prologue = """
    adr x21, vectors
    msr vbar_el1, x21
    isb
"""
    return asm("\n".join([prologue, main, _UNEXPECTED, _vectors()]), LOAD)
