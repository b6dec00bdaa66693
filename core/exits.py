"""Exits are data: an architecture-neutral kind plus the architecture's own record.

The record (``Exit.raw``) is what the hardware would have written: for VMX the basic exit
reason and exit qualification, for SVM EXITCODE / EXITINFO1 / EXITINFO2, for EL2 ESR_EL2 with
FAR_EL2 and HPFAR_EL2. ``Exit.reason`` is the manual's name for it (``EXIT_REASON_CPUID``,
``VMEXIT_IOIO``, ``ESR_ELx_EC_HVC64``) and is what ``--stats`` counts by.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class ExitKind(enum.Enum):
    HYPERCALL = "hypercall"  # VMCALL, VMMCALL, HVC
    PORT_IO = "port-io"  # IN/OUT (x86 only)
    MMIO = "mmio"  # an access to guest-physical space no RAM backs
    CPUID = "cpuid"
    HALT = "halt"  # HLT, WFI
    SYSREG = "sysreg"  # RDMSR/WRMSR (address = MSR), MRS/MSR (address = Linux's sys_reg() encoding)
    STAGE2_FAULT = "stage2-fault"  # EPT violation, NPF, stage-2 abort
    EXCEPTION = "exception"  # a guest exception the hypervisor intercepts
    INTERRUPT_WINDOW = "interrupt-window"  # VMX interrupt / NMI window, SVM VINTR
    # An event the VMM intercepts: external interrupt, NMI, INIT, SMI, VMX-preemption timer, MTF.
    EVENT = "event"
    SHUTDOWN = "shutdown"  # triple fault, PSCI SYSTEM_OFF / SYSTEM_RESET
    INVALID_STATE = "invalid-state"  # VM entry failed its checks
    # A sensitive instruction the VMM intercepts (RDTSC, INVLPG, MOV CR3, WBINVD, PAUSE ...).
    # After the handler the instruction completes as the processor would, unless the handler
    # emulated it and set ``exit.value = True`` (then it is skipped).
    INSTRUCTION = "instruction"

    # Members are singletons: hash by identity (C) rather than Enum's Python-level __hash__;
    # exit-handler tables are looked up by kind on every exit.
    __hash__ = object.__hash__


class Exit:
    """One exit. ``kind`` and ``reason`` always; the other attributes where the kind has them.

    Attributes by kind: PORT_IO/MMIO: ``address`` (port or GPA), ``size``, ``is_write``,
    ``value`` (written value; a handler sets ``value`` for a read); HYPERCALL: ``value``
    (the immediate on arm64, 0 on x86); EXCEPTION/SHUTDOWN: ``vector``, ``detail`` (a #PF
    also its linear address in ``address``; a software exception, x86 INT3/INTO/INT1, the
    length of the instruction that raised it in ``size``, the guest's RIP being at it); STAGE2_FAULT: ``address`` (the guest-physical
    address), ``is_write``, ``detail``; INSTRUCTION: ``info`` = (kind, operand); CPUID:
    ``address`` = the leaf (EAX), ``size`` = the subleaf (ECX).
    """

    __slots__ = ("kind", "reason", "raw", "address", "size", "is_write", "value", "vector", "detail", "info")

    def __init__(self, kind: ExitKind, reason: str, raw: Any, address: int = 0, size: int = 0,
                 is_write: bool = False, value: int | None = None, vector: int = 0,
                 detail: str = "") -> None:
        self.kind = kind
        self.reason = reason
        self.raw = raw
        self.address = address
        self.size = size
        self.is_write = is_write
        self.value = value
        self.vector = vector
        self.detail = detail
        self.info: tuple | None = None  # INSTRUCTION: (kind, operand) as plugins/x86/traps.py names them

    def __repr__(self) -> str:
        return f"Exit({self.kind.name}, {self.reason}, raw={self.raw!r})"


class EventType(enum.Enum):
    """What can be injected into a guest (VM-entry interruption types; arm64 virtual exceptions)."""

    EXTERNAL_INTERRUPT = 0
    NMI = 2
    HARDWARE_EXCEPTION = 3
    SOFTWARE_INTERRUPT = 4
    PRIVILEGED_SOFTWARE_EXCEPTION = 5
    SOFTWARE_EXCEPTION = 6
    VIRTUAL_IRQ = 16  # HCR_EL2.VI
    VIRTUAL_FIQ = 17  # HCR_EL2.VF
    VIRTUAL_SERROR = 18  # HCR_EL2.VSE
    INIT = 19  # the x86 INIT signal (VMX exit 3, SVM INIT intercept)
    SMI = 20  # the x86 system-management interrupt (SVM SMI intercept; VMX: taken by SMM)


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    vector: int = 0
    error_code: int | None = None


class ExitHandler(Protocol):
    def __call__(self, vcpu: Any, exit: Exit) -> None: ...


class ExitHandlerRegistry:
    """The exit-handler table of one VM, filled by ``hvsim_exit_handlers`` at build time."""

    def __init__(self) -> None:
        self._table: dict[ExitKind, ExitHandler] = {}

    def add(self, kind: ExitKind, handler: Callable[[Any, Exit], None]) -> None:
        self._table[kind] = handler

    def get(self, kind: ExitKind) -> ExitHandler | None:
        return self._table.get(kind)

    def table(self) -> dict[ExitKind, ExitHandler]:
        return dict(self._table)
