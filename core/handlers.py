"""The core's own exit handlers, registered through the same hook as everybody else's.

Port I/O and MMIO go to the device that claimed the address on the bus (an MMIO access nothing
claims is "unassigned": all-ones on read, writes dropped, counted, unless the VM is strict); HLT/WFI halts the
vCPU until an event it can take arrives; a shutdown ends the run with the status it carries.
"""

from __future__ import annotations

from hvsim import hookimpl

from .arch import VcpuState
from .exits import Exit, ExitKind

_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


def _ones(size: int) -> int:
    return _ONES.get(size) or (1 << (8 * size)) - 1


def handle_port_io(vcpu, exit: Exit) -> None:
    vm = vcpu.vm
    claim = vm.bus.port(exit.address)
    if claim is not None:  # the device that claimed the address takes it at its offset
        if exit.is_write:
            claim.device.write(exit.address - claim.base, exit.size, exit.value)
        else:
            exit.value = claim.device.read(exit.address - claim.base, exit.size) & _ONES[exit.size]
        return
    result = None
    if vm.port_io_fallback:
        result = vm.pm.hook.hvsim_port_io(vcpu=vcpu, port=exit.address, size=exit.size,
                                          is_write=exit.is_write, value=exit.value)
    if not exit.is_write:
        # Nothing decodes the port: the PC's ISA bus floats high.
        exit.value = _ONES[exit.size] if result is None or result is True else result & _ONES[exit.size]


def handle_mmio(vcpu, exit: Exit) -> None:
    vm = vcpu.vm
    claim = vm.bus.mmio(exit.address)
    if claim is not None:  # the device that claimed the address takes it at its offset
        if exit.is_write:
            claim.device.write(exit.address - claim.base, exit.size, exit.value)
        else:
            exit.value = claim.device.read(exit.address - claim.base, exit.size) & _ONES[exit.size]
        return
    result = None
    if vm.mmio_hook:
        result = vm.pm.hook.hvsim_mmio(vcpu=vcpu, address=exit.address, size=exit.size,
                                       is_write=exit.is_write, value=exit.value)
    if result is not None:
        if not exit.is_write:
            exit.value = result & _ones(exit.size)
        return
    if vm.strict_mmio:
        what = "write to" if exit.is_write else "read from"
        vm.crash(f"unhandled MMIO {what} guest-physical {exit.address:#x} ({exit.reason})")
        exit.value = 0
        return
    # Unassigned: QEMU's unassigned_mem_ops read all-ones and ignore writes.
    vm.stats.unassigned_access(exit.address, exit.size, exit.is_write)
    if not exit.is_write:
        exit.value = _ones(exit.size)


def handle_stage2_fault(vcpu, exit: Exit) -> None:
    """A stage-2 fault nobody resolved. KVM's stage 2 maps exactly the memslots, so one outside
    every slot is an access nothing backs; inside a slot the hypervisor's tables refused it."""
    what = "write to" if exit.is_write else "access to"
    if not vcpu.vm.memory.is_ram(exit.address):
        vcpu.vm.crash(f"{what} guest-physical {exit.address:#x}, which no RAM or device backs ({exit.reason})")
    else:
        vcpu.vm.crash(f"{exit.reason} at guest-physical {exit.address:#x} that no handler resolved: {exit.detail}")


def handle_halt(vcpu, exit: Exit) -> None:
    vm = vcpu.vm
    if vm.pending_hook:
        event = vm.pm.hook.hvsim_interrupt_pending(vcpu=vcpu)
        if event is not None:
            vcpu.inject(event)
    if not (vcpu.events and vcpu.wake()):
        vcpu.state = VcpuState.HALTED


def handle_invalid_state(vcpu, exit: Exit) -> None:
    """A VM entry failed its checks: nothing can run this vCPU until the VMM fixes its state."""
    vcpu.vm.crash(exit.detail or f"VM entry failed ({exit.reason})")


def handle_shutdown(vcpu, exit: Exit) -> None:
    vcpu.vm.stop(exit.value if exit.value is not None else 4, exit.detail or exit.reason)


@hookimpl(tryfirst=True)
def hvsim_exit_handlers(registry):
    registry.add(ExitKind.PORT_IO, handle_port_io)
    registry.add(ExitKind.MMIO, handle_mmio)
    registry.add(ExitKind.STAGE2_FAULT, handle_stage2_fault)
    registry.add(ExitKind.HALT, handle_halt)
    registry.add(ExitKind.SHUTDOWN, handle_shutdown)
    registry.add(ExitKind.INVALID_STATE, handle_invalid_state)
    if registry.get(ExitKind.INSTRUCTION) is None:  # an architecture's own handler stays
        registry.add(ExitKind.INSTRUCTION, lambda vcpu, exit: None)  # the instruction completes itself


@hookimpl(trylast=True)
def hvsim_stage2_translate(vm, gpa, access):
    """Without stage-2 tables of its own, a VM's guest-physical RAM maps through its memslots."""
    return vm.memory.translate(gpa) if vm.memory.is_ram(gpa) else None


@hookimpl(trylast=True)
def hvsim_inject_event(vcpu, event):
    """Without an interrupt controller plugin, an event is queued on the vCPU itself."""
    vcpu.inject(event)
    return True
