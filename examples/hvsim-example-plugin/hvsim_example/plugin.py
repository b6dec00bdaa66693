"""The plugin module hvsim loads through the ``hvsim.plugins`` entry point."""

from __future__ import annotations

from hvsim import hookimpl
from hvsim.core.exits import ExitKind

RNG_PORT = 0x5F0
HC_GET_COUNT_X86 = 0x4843_0001  # "HC" + 1, in RAX
HC_GET_COUNT_ARM = 0xC600_0001  # SMCCC: fast call, SMC64, vendor-specific hypervisor service


class XorShiftRng:
    """A port-I/O device: reads return xorshift32 values, a write reseeds (never to zero)."""

    def __init__(self, seed: int = 0x2545F491) -> None:
        self.state = seed or 1

    def read(self, offset: int, size: int) -> int:
        x = self.state
        x ^= (x << 13) & 0xFFFF_FFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFF_FFFF
        self.state = x
        return x & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.state = value or 1


@hookimpl
def hvsim_vm_created(vm):
    vm.example_hypercalls = 0
    if vm.arch.platform == "pc":
        vm.bus.add_port(RNG_PORT, 4, XorShiftRng(vm.config.extra.get("rng_seed", 0x2545F491)), "example-rng")


@hookimpl
def hvsim_exit_handlers(vm, registry):
    inner = registry.get(ExitKind.HYPERCALL)

    def count_hypercalls(vcpu, exit):
        vm.example_hypercalls += 1
        if vm.arch.platform == "pc":
            from unicorn.x86_const import UC_X86_REG_RAX as reg

            number = HC_GET_COUNT_X86
        else:
            from unicorn.arm64_const import UC_ARM64_REG_X0 as reg

            number = HC_GET_COUNT_ARM
        if vcpu.regs.read(reg) & 0xFFFF_FFFF == number:
            vcpu.regs.write(reg, vm.example_hypercalls)
        elif inner is not None:
            inner(vcpu, exit)

    registry.add(ExitKind.HYPERCALL, count_hypercalls)
