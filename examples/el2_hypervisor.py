"""A small EL2 hypervisor written against hvsim's ARMv8 model, the way one is written:

- hvsim's run loop enters the guest at EL1 and takes every trap to EL2 with ESR_EL2, FAR_EL2
  and HPFAR_EL2 filled; this hypervisor handles traps in one table keyed by ESR_EL2.EC (as
  KVM's arm_exit_handlers): HVC with its own SMCCC vendor call (PSCI stays with hvsim), WFx by
  raising a virtual IRQ (HCR_EL2.VI) that wakes the guest into its VBAR_EL1 + 0x280 vector, and
  data aborts on an emulated device, decoded from the syndrome alone (ISV, SAS, SRT, WnR);
  the summary prints every exception class seen.

    python examples/el2_hypervisor.py   # needs keystone-engine (pip install -e .[test])
"""

from __future__ import annotations

from collections import Counter

from keystone import KS_ARCH_ARM64, KS_MODE_LITTLE_ENDIAN, Ks
from unicorn.arm64_const import UC_ARM64_REG_X0

from hvsim import hookimpl
from hvsim.core.console import Console
from hvsim.core.exits import Event, EventType, ExitKind
from hvsim.core.plugins import PluginManager
from hvsim.core.vm import VM
from hvsim.plugins.arm_el2 import el2

BASE = 0x4008_0000  # vector table here, code at BASE + 0x800
DEVICE = 0x0A00_0000  # an emulated register block

IRQ_VECTOR = """
    ldr x9, =0x40200000
    ldr x10, [x9]
    add x10, x10, #1
    str x10, [x9]
    eret
"""
MAIN = f"""
    ldr x0, ={BASE:#x}
    msr vbar_el1, x0
    isb
    movz w0, #0x0010
    movk w0, #0xc600, lsl #16         // SMCCC vendor-specific hypervisor call 0xC6000010
    hvc #0
    ldr x9, =0x40200000
    str x0, [x9, #8]
    ldr x1, ={DEVICE:#x}
    mov w2, #0x2a
    str w2, [x1, #4]                  // a device write: a data abort with ISV, SRT = 2
    ldr w3, [x1, #4]                  // and a read back into w3
    str x3, [x9, #16]
    msr daifclr, #2
    wfi                               // the hypervisor answers with a virtual IRQ
    movz w0, #0x0008
    movk w0, #0x8400, lsl #16         // PSCI SYSTEM_OFF
    hvc #0
"""


def assemble() -> bytes:
    ks = Ks(KS_ARCH_ARM64, KS_MODE_LITTLE_ENDIAN)
    table = b"".join(bytes(ks.asm(IRQ_VECTOR if slot == 5 else "b .", BASE + slot * 0x80)[0]).ljust(0x80, b"\0")
                     for slot in range(16))
    return table + bytes(ks.asm(MAIN, BASE + 0x800)[0])


class TinyEl2Hypervisor:
    EC_WFX, EC_HVC64, EC_DABT_LOW = 0x01, 0x16, 0x24

    def __init__(self) -> None:
        self.classes: Counter[str] = Counter()
        self.device_regs: dict[int, int] = {}

    def on_hvc(self, vcpu, exit, inner) -> None:
        if vcpu.regs.read(UC_ARM64_REG_X0) & 0xFFFF_FFFF == 0xC600_0010:
            vcpu.regs.write(UC_ARM64_REG_X0, 0xE12)  # this hypervisor's answer
        else:
            inner(vcpu, exit)  # PSCI and SMCCC: hvsim's firmware interface

    def on_wfx(self, vcpu, exit, inner) -> None:
        vcpu.inject(Event(EventType.VIRTUAL_IRQ))  # HCR_EL2.VI
        inner(vcpu, exit)

    def on_dabt(self, vcpu, exit, inner) -> None:
        esr = exit.raw.ESR_EL2
        assert esr & (1 << 24), "ISV: the syndrome describes the access"
        size, srt, write = 1 << ((esr >> 22) & 3), (esr >> 16) & 0x1F, bool(esr & (1 << 6))
        ipa = (exit.raw.HPFAR_EL2 >> 4 << 12) | (exit.raw.FAR_EL2 & 0xFFF)
        if write:
            self.device_regs[ipa - DEVICE] = vcpu.xreg_zr(srt) & ((1 << 8 * size) - 1)
        else:
            exit.value = self.device_regs.get(ipa - DEVICE, 0) + 1  # the device adds one

    @hookimpl
    def hvsim_vm_created(self, vm):
        vm.bus.add_mmio(DEVICE, 0x1000, self, "tiny-device")  # claim it so accesses trap here

    def read(self, offset, size):  # reached only through on_dabt's exit.value
        return 0

    def write(self, offset, size, value):
        pass

    @hookimpl
    def hvsim_exit_handlers(self, vm, registry):
        table = {self.EC_HVC64: self.on_hvc, self.EC_WFX: self.on_wfx, self.EC_DABT_LOW: self.on_dabt}

        def dispatch(kind):
            inner = registry.get(kind)

            def handle(vcpu, exit):
                self.classes[exit.reason] += 1
                esr = vcpu.el2.ESR_EL2  # what the trap wrote, as EL2 software reads it
                table[esr >> 26](vcpu, exit, inner)

            return handle

        for kind in (ExitKind.HYPERCALL, ExitKind.HALT, ExitKind.MMIO):
            registry.add(kind, dispatch(kind))


def main() -> int:
    hyp = TinyEl2Hypervisor()
    pm = PluginManager()
    pm.load_entry_points()
    pm.register(hyp, name="tiny-el2")
    vm = VM("arm_el2", mem="32M", pm=pm, console=Console(), entry=BASE + 0x800)
    vm.load(assemble())
    # Program HCR_EL2 before the first ERET: stage 2 on, physical IRQ/FIQ/SError to EL2 with
    # the virtual ones enabled, WFI and SMC trapped, EL1 in AArch64 (KVM's choice for a guest).
    e = vm.vcpus[0].el2
    e.HCR_EL2 = el2.HCR_VM | el2.HCR_IMO | el2.HCR_FMO | el2.HCR_AMO | el2.HCR_TWI | el2.HCR_TSC | el2.HCR_RW
    result = vm.run(timeout=10)
    data = vm.memory.read_u64
    print(f"guest ended: status {result.status} ({result.reason})")
    print(f"vendor HVC answered {data(0x4020_0008):#x}; device read back {data(0x4020_0010):#x}; "
          f"virtual IRQs taken {data(0x4020_0000)}")
    for name, count in hyp.classes.most_common():
        print(f"  {name:22} {count}")
    print(f"last trap: ESR_EL2 {e.ESR_EL2:#010x} ELR_EL2 {e.ELR_EL2:#x} SPSR_EL2 {e.SPSR_EL2:#x}")
    ok = result.status == 0 and data(0x4020_0008) == 0xE12 and data(0x4020_0010) == 0x2B and data(0x4020_0000) == 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
