"""What an architecture plugin provides: the ``Arch`` (platform, loader, vCPU factory) and ``Vcpu``.

Like KVM's ``kvm_x86_ops``, one table of operations per architecture, installed per VM.
The run loop in :mod:`hvsim.core.vm` calls only what is declared here.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING, ClassVar

from .exits import Event, Exit

if TYPE_CHECKING:
    from .loader import Image
    from .vm import VM


class VcpuState(enum.Enum):
    RUNNABLE = "runnable"
    HALTED = "halted"  # HLT / WFI: waits for a deliverable event
    OFF = "off"  # not started yet (secondary vCPUs) or PSCI CPU_OFF


class Vcpu:
    """One virtual CPU: an engine running guest code plus the simulated virtualization state."""

    def __init__(self, vm: VM, index: int) -> None:
        self.vm = vm
        self.index = index
        self.state = VcpuState.RUNNABLE if index == 0 else VcpuState.OFF
        self.events: deque[Event] = deque()

    # -- required --------------------------------------------------------------------------
    def run(self, slice_us: int) -> Exit | None:
        """Enter the guest for at most ``slice_us`` microseconds.

        Exits that can be completed in place (port I/O, MMIO, CPUID, hypercalls) are dispatched
        from inside the engine without returning. Returns an exit the loop must handle (HLT/WFI,
        shutdown), or None when the slice ran out or a stop was requested.
        """
        raise NotImplementedError

    def request_stop(self) -> None:
        """Make ``run`` return as soon as possible (called from exit handlers)."""
        raise NotImplementedError

    def deliver_pending(self) -> bool:
        """Deliver the first queued event the guest can take now; True when one was delivered."""
        raise NotImplementedError

    def trace_translation(self, address: int):
        """The full GVA -> GPA -> HPA walk of ``address`` in the vCPU's current state, as a
        :class:`hvsim.core.mmu.TranslationTrace` (``hvsim translate``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot trace translations")

    # -- shared ----------------------------------------------------------------------------
    def wake(self) -> bool:
        """A halted vCPU has queued events: deliver what it can take, and say whether the halt
        ends. On x86 only a deliverable event ends HLT (an external interrupt needs RFLAGS.IF);
        architectures where a masked interrupt also ends the wait override this."""
        return self.deliver_pending()

    def inject(self, event: Event) -> None:
        """Queue ``event``; it is delivered at the next entry when the guest can take it."""
        self.events.append(event)


class Arch:
    """An architecture plugin's VM-side operations. Subclasses set the class attributes."""

    name: ClassVar[str]
    title: ClassVar[str]
    manual: ClassVar[str]
    platform: ClassVar[str]  # "pc" or "virt"
    features: ClassVar[dict[str, str]] = {}
    ram_base: ClassVar[int] = 0

    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def build(self) -> None:
        """Create the guest-physical map (RAM slots) and the platform's devices."""
        raise NotImplementedError

    def load(self, image: Image) -> None:
        """Place ``image`` in guest memory and set the boot vCPU's entry state."""
        raise NotImplementedError

    def create_vcpu(self, index: int) -> Vcpu:
        raise NotImplementedError
