"""Exit handlers both x86 vendors share: CPUID and the hypercall ABI.

Hypercalls follow KVM's x86 ABI (Documentation/virt/kvm/x86/hypercalls.rst): RAX holds the
number, RBX, RCX, RDX, RSI the arguments, and the result comes back in RAX; an unknown number
returns -KVM_ENOSYS (-1000).
"""

from __future__ import annotations

from unicorn import x86_const as X

from hvsim.core.exits import Exit, ExitKind

from . import paging
from .cpuid import tsc_leaf
from .tsc import guest_tsc_hz

KVM_ENOSYS = 1000
KVM_HC_VAPIC_POLL_IRQ = 1

_MASK64 = (1 << 64) - 1
CR4_OSXSAVE, CPUID_OSXSAVE = 1 << 18, 1 << 27


def handle_cpuid(vcpu, exit: Exit) -> None:
    """The processor's CPUID answers for the leaf in ``exit.address`` (EAX) and the subleaf in
    ``exit.size`` (ECX). They are fixed but for CPUID.01H:ECX.OSXSAVE, which reflects
    CR4.OSXSAVE (SDM Vol. 2A, CPUID), so the cache keys on that bit for leaf 1."""
    leaf, subleaf = exit.address, exit.size
    osxsave = leaf == 1 and bool(vcpu.regs.read(X.UC_X86_REG_CR4) & CR4_OSXSAVE)
    key = (leaf, subleaf, osxsave)
    entry = vcpu.cpuid_cache.get(key)
    if entry is None:
        eax, ebx, ecx, edx = vcpu.vendor.cpuid_leaf(leaf, subleaf, vcpu.index, len(vcpu.vm.vcpus))
        if osxsave:
            ecx |= CPUID_OSXSAVE
        if leaf == 0x15 and eax == ebx == 0 and vcpu.vendor.cpuid_vendor == b"GenuineIntel":
            eax, ebx, ecx, edx = tsc_leaf(guest_tsc_hz(vcpu.clock))
        values = (eax, ebx, ecx, edx)
        entry = vcpu.cpuid_cache[key] = (values, vcpu.cpuid_out.preset(values))
    if entry[1]():
        vcpu.cpuid_out.write(entry[0])  # the one-call write failed: the checked path raises why


def handle_hypercall(vcpu, exit: Exit) -> None:
    nr = vcpu.regs.read(X.UC_X86_REG_RAX)
    if nr == KVM_HC_VAPIC_POLL_IRQ:
        result = 0
    else:
        result = -KVM_ENOSYS
    vcpu.regs.write(X.UC_X86_REG_RAX, result & _MASK64)


MSR_IA32_APIC_BASE = 0x1B
APIC_BASE_BSP = 1 << 8  # read-only
APIC_BASE_WRITABLE = (1 << 10) | (1 << 11) | (((1 << paging.MAXPHYADDR) - 1) & ~0xFFF)  # EXTD, EN, base


def handle_msr(vcpu, exit: Exit) -> None:
    """RDMSR/WRMSR of the MSRs hvsim models; a write to a reserved bit is #GP(0) (SDM 10.4.4)."""
    msr = exit.address
    lapic = vcpu.lapic
    if lapic is not None and (msr == MSR_IA32_APIC_BASE or msr == 0x6E0 or 0x800 <= msr <= 0x8FF):
        # The local APIC model (plugins/devices/lapic.py): None / False is #GP(0) (SDM 11.12.1.2)
        if exit.is_write:
            if not lapic.wrmsr(msr, exit.value):
                exit.vector = 13
            else:
                vcpu.msrs[MSR_IA32_APIC_BASE] = lapic.base
            return
        value = lapic.rdmsr(msr)
        if value is None:
            exit.vector = 13
            return
        vcpu.regs.write(X.UC_X86_REG_RAX, value & 0xFFFF_FFFF)
        vcpu.regs.write(X.UC_X86_REG_RDX, value >> 32)
        return
    if msr not in vcpu.msrs:  # an MSR hvsim does not model, intercepted for a VMM: #GP(0)
        exit.vector = 13
        return
    if not exit.is_write:
        value = vcpu.msrs[msr]
        vcpu.regs.write(X.UC_X86_REG_RAX, value & 0xFFFF_FFFF)
        vcpu.regs.write(X.UC_X86_REG_RDX, value >> 32)
        return
    if msr == MSR_IA32_APIC_BASE:
        if exit.value & ~(APIC_BASE_WRITABLE | APIC_BASE_BSP):
            exit.vector = 13
            return
        vcpu.msrs[msr] = (exit.value & APIC_BASE_WRITABLE) | (vcpu.msrs[msr] & APIC_BASE_BSP)
    else:
        vcpu.msrs[msr] = exit.value


def handle_exception(vcpu, exit: Exit) -> None:
    """An intercepted exception: a #PF feeds the shadow page tables under shadow paging;
    anything else the VMM did not handle is reflected into the guest, as KVM does for
    exceptions it intercepts only to watch (a #PF with its CR2)."""
    shadow = vcpu.mmu.shadow
    if exit.vector == 14:
        if shadow is not None:
            shadow.page_fault(exit.address, exit.value or 0)
            return
        vcpu.regs.write(X.UC_X86_REG_CR2, exit.address)
    if exit.size:  # a software exception (INT3, INTO; INT1): the exit is at the instruction
        kind = 5 if exit.vector == 1 else 6
        vcpu.deliver_event(exit.vector, None, vcpu.rip() + exit.size, software=kind == 6, event_type=kind,
                           length=exit.size)
        return
    vcpu.deliver_event(exit.vector, exit.value, vcpu.rip())


def handle_instruction(vcpu, exit: Exit) -> None:
    """An intercepted sensitive instruction; it completes in the engine afterwards unless a
    handler emulated it. Under shadow paging the VMM keeps its shadow tables in step: the
    shadow root follows the guest's CR3 and paging mode by itself (write protection keeps every
    root coherent); MOV to CR3 and INVPCID sync the tables the guest wrote through themselves;
    INVLPG drops one entry."""
    shadow = vcpu.mmu.shadow
    if shadow is None or exit.info is None:
        return
    kind, operand = exit.info
    if kind == "mov_to_cr" and operand[0] == 3 or kind == "invpcid":
        shadow.cr3_load()
    elif kind == "invlpg":
        shadow.invlpg(operand[0])


def register(registry) -> None:
    registry.add(ExitKind.CPUID, handle_cpuid)
    registry.add(ExitKind.HYPERCALL, handle_hypercall)
    registry.add(ExitKind.SYSREG, handle_msr)
    registry.add(ExitKind.EXCEPTION, handle_exception)
    registry.add(ExitKind.INSTRUCTION, handle_instruction)


def stage1_walk(vcpu, address, access):
    """``hvsim_stage1_walk`` for x86 vCPUs: the guest's own paging structures."""
    return paging.walk(address, access, vcpu.cr0(), vcpu.regs.read(X.UC_X86_REG_CR3),
                       vcpu.regs.read(X.UC_X86_REG_CR4), vcpu.efer(), vcpu.cpl(),
                       vcpu.vm.memory.read_u32, vcpu.vm.memory.read_u64)
