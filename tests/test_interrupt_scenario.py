"""The same interrupt scenario on all three architectures: the guest installs its vector table,
programs a periodic timer (the LAPIC timer; the arm virtual timer through the GICv3), counts
TICKS ticks acknowledging each (EOI to the LAPIC; ICC_IAR1_EL1 / ICC_EOIR1_EL1), then sends
IPIS inter-processor interrupts to a second vCPU (a fixed IPI through the ICR; an SGI through
ICC_SGI1R_EL1), which counts them, and exits. Deterministic mode, so the counts are exact.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for sub in ("x86", "arm_el2"):
    if str(HERE / sub) not in sys.path:
        sys.path.insert(0, str(HERE / sub))

import apic_guests as x86g  # noqa: E402
from el2guest import SYSTEM_OFF, w0  # noqa: E402
from gicguest import (DATA, ICC_EOIR1_EL1, ICC_IAR1_EL1, ICC_SGI1R_EL1, enable_ppi, gic_guest, gic_on,  # noqa: E402
                      gicr_of, mov32, secondary_waits_for_sgi)
from guestlib import x86_64  # noqa: E402
from hvsim.plugins.arm_el2 import psci  # noqa: E402

TICKS, IPIS = 5, 4
SGI = 1


def arm_guest() -> bytes:
    """vCPU 0: TICKS virtual-timer ticks, then IPIS SGIs to vCPU 1 (started by PSCI CPU_ON),
    each waited for; DATA+0: vCPU 1's SGI count, +8: vCPU 1 ready, +24: vCPU 0's ticks."""
    return gic_guest(f"""
    mov x0, #0
    {gicr_of("x0")}
    {gic_on("0")}
    {enable_ppi(27)}
    {mov32("x25", DATA)}
    {w0(psci.PSCI_0_2_FN64_CPU_ON)}
    mov x1, #1
    adr x2, second
    mov x3, #1
    hvc #0
ready:
    ldr x1, [x25, #8]
    cbz x1, ready
    mov x19, #0                     // ticks
    mov x1, #10000
    msr cntv_tval_el0, x1
    mov x1, #1
    msr cntv_ctl_el0, x1
    msr daifclr, #2
wait:
    wfi
    cmp x19, #{TICKS}
    b.lt wait
    msr daifset, #2
    str x19, [x25, #24]
    mov x20, #0
send:
    add x20, x20, #1
    {mov32("x1", SGI << 24 | 1 << 1)}           // INTID, TargetList {{Aff0 1}}
    msr {ICC_SGI1R_EL1}, x1
wait_ack:
    ldr x1, [x25]
    cmp x1, x20
    b.lt wait_ack
    cmp x20, #{IPIS}
    b.lt send
    {SYSTEM_OFF}
{secondary_waits_for_sgi(SGI)}
irq:
    mrs x0, {ICC_IAR1_EL1}
    cmp x0, #27
    b.eq tick
    cmp x0, #{SGI}
    b.ne done
    ldr x1, [x25]
    add x1, x1, #1
    str x1, [x25]
    b done
tick:
    add x19, x19, #1
    cmp x19, #{TICKS}
    b.ge last
    mov x1, #10000
    msr cntv_tval_el0, x1
    b done
last:
    msr cntv_ctl_el0, xzr           // the last tick: the line drops
done:
    msr {ICC_EOIR1_EL1}, x0
    eret
""")


def run_x86(make_vm, arch):
    import test_smp

    vm = make_vm(arch, mem="64M", vcpus=2, deterministic=True)
    vm.load(x86_64(test_smp.smp_guest(ipis=IPIS, ticks=TICKS)))
    vm.memory.write(x86g.AP_TRAMPOLINE, x86g.ap_trampoline(test_smp.AP_COUNTS_IPIS))
    result = vm.run(timeout=60)
    assert result.status == 1, result.reason
    return vm.memory.read_u32(x86g.COUNT), vm.memory.read_u32(x86g.IPIS)


def run_arm(make_vm):
    vm = make_vm("arm_el2", mem="64M", vcpus=2, deterministic=True)
    vm.load(arm_guest())
    result = vm.run(timeout=60)
    assert result.status == 0, result.reason
    return vm.memory.read_u64(DATA + 24), vm.memory.read_u64(DATA)


@pytest.mark.parametrize("arch", ["intel_vtx", "amd_svm", "arm_el2"])
def test_timer_ticks_and_ipis_to_a_second_vcpu(make_vm, arch):
    ticks, ipis = run_arm(make_vm) if arch == "arm_el2" else run_x86(make_vm, arch)
    assert (ticks, ipis) == (TICKS, IPIS)
