"""SGIs between vCPUs (--vcpus 2): vCPU 0 writes ICC_SGI1R_EL1 naming vCPU 1 (Aff0 = 1 in the
TargetList), which takes SGI 1 at its IRQ vector, acknowledges it with ICC_IAR1_EL1 and
counts it. The write traps to EL2 (HCR_EL2.IMO: a SYSREG exit with the ICC_SGI1R_EL1
syndrome) and the vGIC makes the SGI pending at the target's redistributor."""

from __future__ import annotations

from el2guest import SYSTEM_OFF, w0
from gicguest import (DATA, ICC_EOIR1_EL1, ICC_IAR1_EL1, ICC_SGI1R_EL1, UNEXPECTED, enable_ppi, gic_guest, gic_on,
                      gicr_of, mov32, secondary_waits_for_sgi)
from hvsim import hookimpl
from hvsim.core.exits import ExitKind
from hvsim.core.vm import STATUS_OFF
from hvsim.plugins.arm_el2 import psci, traps

IPIS = 10
SGI = 1


def ipi_guest(irm: bool = False) -> bytes:
    sgi1r = SGI << 24 | (1 << 40 if irm else 1 << 1)  # INTID 1; IRM (all but self) or TargetList {Aff0 1}
    return gic_guest(f"""
    mov x0, #0
    {gicr_of("x0")}
    {gic_on("0")}
    {mov32("x25", DATA)}
    {w0(psci.PSCI_0_2_FN64_CPU_ON)}
    mov x1, #1
    adr x2, second
    mov x3, #1                      // context id: the vCPU number
    hvc #0
ready:
    ldr x1, [x25, #8]               // vCPU 1 sets it when its GIC is up
    cbz x1, ready
    mov x19, #0
send:
    add x19, x19, #1
    {mov32("x1", sgi1r & 0xFFFF_FFFF)}
    movk x1, #{sgi1r >> 32 & 0xFFFF:#x}, lsl #32
    msr {ICC_SGI1R_EL1}, x1
wait_ack:
    ldr x1, [x25]                   // vCPU 1's count
    cmp x1, x19
    b.lt wait_ack
    cmp x19, #{IPIS}
    b.lt send
    {SYSTEM_OFF}
{secondary_waits_for_sgi(SGI)}
irq:
    mrs x0, {ICC_IAR1_EL1}
    cmp x0, #{SGI}
    b.ne not_sgi
    ldr x1, [x25]
    add x1, x1, #1
    str x1, [x25]
    mrs x1, mpidr_el1
    str x1, [x25, #16]              // who took it
not_sgi:
    msr {ICC_EOIR1_EL1}, x0
    eret
""")


class SysregLog:
    def __init__(self) -> None:
        self.writes = []

    @hookimpl
    def hvsim_vm_exit(self, vcpu, exit):
        if exit.kind is ExitKind.SYSREG:
            self.writes.append((vcpu.index, exit.address, exit.value, exit.raw.ESR_EL2))


def test_vcpu0_interrupts_vcpu1_with_sgis(arm_vm, hvsim_pm):
    log = SysregLog()
    hvsim_pm.register(log)
    vm = arm_vm(ipi_guest(), vcpus=2)
    result = vm.run(timeout=20)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    assert vm.memory.read_u64(DATA) == IPIS
    assert vm.memory.read_u64(DATA + 16) & 0xFF_FFFF == 1  # taken on vCPU 1 (Aff0 = 1)
    sgi1r = traps.sys_reg(3, 0, 12, 11, 5)
    sends = [w for w in log.writes if w[1] == sgi1r]
    assert len(sends) == IPIS and all(w[0] == 0 and w[2] == SGI << 24 | 2 for w in sends)
    esr = sends[0][3]
    assert esr >> 26 == 0x18 and esr & 1 == 0  # EC 0x18, Direction 0 (a write)


def test_irm_sends_to_every_other_vcpu(arm_vm):
    vm = arm_vm(ipi_guest(irm=True), vcpus=2)
    result = vm.run(timeout=20)
    assert result.status == STATUS_OFF, (result, vm.memory.read(UNEXPECTED, 24).hex())
    assert vm.memory.read_u64(DATA) == IPIS
