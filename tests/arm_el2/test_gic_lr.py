"""List registers programmed by the hypervisor (hvsim's EL2 interface in Python, the way KVM
writes ICH_LR<n>_EL2): the guest takes the virtual interrupt, acknowledges it with
ICC_IAR1_EL1 and ends it with ICC_EOIR1_EL1; the LR, ICH_EISR_EL2, ICH_ELRSR_EL2,
ICH_MISR_EL2 and ICH_HCR_EL2.EOIcount show it, and the maintenance interrupt (PPI 25) reaches
EL2 as an EVENT exit. GIC spec IHI 0069, "ICH_LR<n>_EL2", "ICH_MISR_EL2", "ICH_HCR_EL2"."""

from __future__ import annotations

import pytest
from el2guest import SYSTEM_OFF, w0
from gicguest import (DATA, GIC_ON, GICD, ICC_EOIR1_EL1, ICC_HPPIR1_EL1, ICC_IAR1_EL1, UNEXPECTED, gic_guest,
                      gicr_of, mov32)
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.core.vm import STATUS_OFF
from hvsim.plugins.arm_el2 import psci
from hvsim.plugins.arm_el2 import vcpuif as ci

HVC_PROGRAM_LR = 0x8600_00D0
LR_PENDING_G1 = ci.ICH_LR_PENDING | ci.ICH_LR_GROUP | 0x80 << ci.ICH_LR_PRIORITY_SHIFT


class Hypervisor:
    """Programs ICH_LR3_EL2 on the guest's HVC, records the interface at each maintenance
    interrupt and then frees the LR, as a hypervisor would."""

    def __init__(self, lr: int, hcr: int = 0) -> None:
        self.lr, self.hcr = lr, hcr
        self.maintenance = []

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        def on_hvc(vcpu, exit):
            if vcpu.smccc_x0 & 0xFFFF_FFFF != HVC_PROGRAM_LR:
                return psci.handle_hvc(vcpu, exit)
            ich = vcpu.gic_cpuif
            ich.write("ICH_LR3_EL2", self.lr)
            ich.write("ICH_HCR_EL2", ich.read("ICH_HCR_EL2") | self.hcr)
            vcpu.smccc_return(0)

        def on_event(vcpu, exit):
            ich = vcpu.gic_cpuif
            self.maintenance.append({name: ich.read(name) for name in (
                "ICH_LR3_EL2", "ICH_EISR_EL2", "ICH_ELRSR_EL2", "ICH_MISR_EL2", "ICH_HCR_EL2")}
                | {"vector": exit.vector})
            ich.write("ICH_LR3_EL2", 0)
            ich.write("ICH_HCR_EL2", ich.read("ICH_HCR_EL2") & ~(ci.ICH_HCR_EOICOUNT | ci.ICH_HCR_LRENPIE))

        registry.add(ExitKind.HYPERCALL, on_hvc)
        registry.add(ExitKind.EVENT, on_event)


def lr_guest(eoi: str = "x0") -> bytes:
    return gic_guest(f"""
    mov x0, #0
    {gicr_of("x0")}
    {GIC_ON}
    {mov32("x25", DATA)}
    {w0(HVC_PROGRAM_LR)}
    hvc #0
    msr daifclr, #2
    nop
wait:
    ldr x1, [x25, #8]
    cbz x1, wait
    mrs x1, {ICC_HPPIR1_EL1}
    str x1, [x25, #16]              // nothing pending any more: 1023
    {SYSTEM_OFF}
irq:
    mrs x0, {ICC_IAR1_EL1}
    str x0, [x25]
    add x2, x0, #1
    msr {ICC_EOIR1_EL1}, {eoi}
    mov x1, #1
    str x1, [x25, #8]
    eret
""")


def test_a_hypervisor_lr_is_delivered_and_its_eoi_shows_in_eisr_and_misr(arm_vm, hvsim_pm):
    hv = Hypervisor(LR_PENDING_G1 | ci.ICH_LR_EOI | 42)
    hvsim_pm.register(hv)
    vm = arm_vm(lr_guest())
    result = vm.run(timeout=10)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    assert vm.memory.read_u64(DATA) == 42  # the vINTID, from ICC_IAR1_EL1
    assert vm.memory.read_u64(DATA + 16) == 1023
    [m] = hv.maintenance
    assert m["vector"] == 25
    assert m["ICH_LR3_EL2"] & ci.ICH_LR_STATE == 0  # EOIed: invalid
    assert m["ICH_LR3_EL2"] & 0xFFFF_FFFF == 42
    assert m["ICH_EISR_EL2"] == 1 << 3
    assert m["ICH_MISR_EL2"] == ci.ICH_MISR_EOI
    assert not m["ICH_ELRSR_EL2"] & 1 << 3  # not empty until the hypervisor frees it
    ich = vm.vcpus[0].gic_cpuif
    assert ich.read("ICH_ELRSR_EL2") & 1 << 3 and ich.read("ICH_EISR_EL2") == 0


def test_an_eoi_no_lr_holds_counts_in_eoicount_and_raises_lrenp(arm_vm, hvsim_pm):
    hv = Hypervisor(LR_PENDING_G1 | 42, hcr=ci.ICH_HCR_LRENPIE)
    hvsim_pm.register(hv)
    vm = arm_vm(lr_guest(eoi="x2"))  # EOI of INTID 43, which no LR holds
    result = vm.run(timeout=10)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    [m] = hv.maintenance
    assert m["ICH_HCR_EL2"] >> ci.ICH_HCR_EOICOUNT_SHIFT == 1
    assert m["ICH_MISR_EL2"] == ci.ICH_MISR_LRENP
    assert m["ICH_LR3_EL2"] & ci.ICH_LR_STATE == ci.ICH_LR_ACTIVE  # 42 stays active (priority dropped)
    assert vm.vcpus[0].gic_cpuif.read("ICH_AP1R0_EL2") == 0


@pytest.mark.parametrize("vintid", [1020, 1023, 4096, 1 << 24, 0xFFFF_FFFF])
def test_an_lr_with_an_out_of_range_vintid_is_never_delivered(arm_vm, hvsim_pm, vintid):
    hvsim_pm.register(Hypervisor(LR_PENDING_G1 | vintid))
    vm = arm_vm(gic_guest(f"""
    mov x0, #0
    {gicr_of("x0")}
    {GIC_ON}
    {mov32("x25", DATA)}
    {w0(HVC_PROGRAM_LR)}
    hvc #0
    msr daifclr, #2
    nop
    nop
    mrs x1, {ICC_IAR1_EL1}
    str x1, [x25]
    mrs x1, {ICC_HPPIR1_EL1}
    str x1, [x25, #8]
    {SYSTEM_OFF}
irq:
    mov x1, #1
    str x1, [x25, #16]
    {SYSTEM_OFF}
"""))
    result = vm.run(timeout=10)
    assert result.status == STATUS_OFF
    assert vm.memory.read_u64(DATA) == 1023 and vm.memory.read_u64(DATA + 8) == 1023
    assert vm.memory.read_u64(DATA + 16) == 0  # no IRQ taken
    assert vm.vcpus[0].gic_cpuif.read("ICH_LR3_EL2") & ci.ICH_LR_STATE == ci.ICH_LR_PENDING


def test_the_el2_registers_read_back_and_read_only_ones_ignore_writes(arm_vm):
    ich = arm_vm().vcpus[0].gic_cpuif
    vtr = ich.read("ICH_VTR_EL2")
    assert vtr & 0x1F == 3  # ListRegs: four
    assert vtr >> 29 == 4 and vtr >> 26 & 7 == 4  # PRIbits, PREbits: five bits
    ich.write("ICH_VTR_EL2", 0)
    ich.write("ICH_MISR_EL2", 0xFF)
    ich.write("ICH_EISR_EL2", 0xF)
    assert ich.read("ICH_VTR_EL2") == vtr and ich.read("ICH_EISR_EL2") == 0
    assert ich.read("ICH_ELRSR_EL2") == 0xF  # every LR empty
    ich.write("ICH_LR0_EL2", 0xFFFF_FFFF_FFFF_FFFF)
    assert ich.read("ICH_LR0_EL2") == 0xF0FF_1FFF_FFFF_FFFF  # RES0 [59:56] and [47:45]


def test_more_pending_interrupts_than_list_registers_all_arrive_in_priority_order(arm_vm):
    """Six SPIs made pending at once (GICD_ISPENDR1) with four list registers: the vGIC fills
    the four of highest priority and sets ICH_HCR_EL2.UIE; the rest follow as the guest ends
    interrupts (maintenance interrupts: EOI of a level interrupt, underflow). The guest sees
    all six, highest priority first."""
    image = gic_guest(f"""
    mov x0, #0
    {gicr_of("x0")}
    {GIC_ON}
    {mov32("x25", DATA)}
    {mov32("x26", GICD)}
    mov w1, #0x3f00
    str w1, [x26, #0x84]            // GICD_IGROUPR1: INTIDs 40-45 in group 1
    str w1, [x26, #0x104]           // GICD_ISENABLER1
    {mov32("w1", 0x6070_8090)}
    str w1, [x26, #0x428]           // GICD_IPRIORITYR10: 40-43 at 0x90, 0x80, 0x70, 0x60
    {mov32("w1", 0x4050)}
    str w1, [x26, #0x42c]           // GICD_IPRIORITYR11: 44, 45 at 0x50, 0x40
    mov w1, #0x3f00
    str w1, [x26, #0x204]           // GICD_ISPENDR1: all six pending
    mov x19, #0
    msr daifclr, #2
wait:
    cmp x19, #6
    b.lt wait
    {SYSTEM_OFF}
irq:
    mrs x0, {ICC_IAR1_EL1}
    cmp x0, #1023
    b.eq done
    str x0, [x25, x19, lsl #3]
    add x19, x19, #1
    msr {ICC_EOIR1_EL1}, x0
done:
    eret
""")
    vm = arm_vm(image)
    result = vm.run(timeout=10)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    order = [vm.memory.read_u64(DATA + 8 * i) for i in range(6)]
    assert order == [45, 44, 43, 42, 41, 40]
    assert vm.stats.counts().get("maintenance interrupt", 0) >= 1  # the refills


@pytest.mark.parametrize("insn", [f"mrs x0, {ICC_IAR1_EL1}", f"msr {ICC_EOIR1_EL1}, x0"])
def test_icc_registers_are_undefined_at_el0(arm_vm, insn):
    """The GIC's system registers have no EL0 access: UNDEFINED (EC 0x00) at EL0, taken to EL1."""
    from el2guest import guest, log_records

    vm = arm_vm(guest(f"""
    adr x1, el0_code
    mov x22, x1
    msr elr_el1, x1
    msr spsr_el1, xzr               // EL0t
    adr x20, el0_next
    eret
el0_code:
    {insn}
el0_next:
    svc #0xffff
"""))
    result = vm.run(timeout=10)
    assert result.status == STATUS_OFF
    (vector, esr, elr, _far, _spsr), _ = log_records(vm, 2)
    assert (vector, esr >> 26, elr) == (0x400, 0, vm.vcpus[0].xreg(22))  # lower EL sync, EC 0x00


def test_npie_raises_the_maintenance_interrupt_once_no_lr_is_pending(arm_vm, hvsim_pm):
    """ICH_HCR_EL2.NPIE: when the guest's acknowledge leaves no LR pending, ICH_MISR_EL2.NP
    asserts the maintenance interrupt (the hypervisor could refill now); the LR is active."""
    hv = Hypervisor(LR_PENDING_G1 | 42, hcr=ci.ICH_HCR_NPIE)
    hvsim_pm.register(hv)
    vm = arm_vm(lr_guest())
    result = vm.run(timeout=10)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    assert vm.memory.read_u64(DATA) == 42
    [m] = hv.maintenance
    assert m["ICH_MISR_EL2"] == ci.ICH_MISR_NP
    assert m["ICH_LR3_EL2"] & ci.ICH_LR_STATE == ci.ICH_LR_ACTIVE
