"""Fixtures for the VMX data-model tests: physical memory with a VMXON region and VMCS regions
whose revision identifiers are written, and a logical processor at each stage of VMX operation."""

from __future__ import annotations

import struct

import pytest
from hvsim.core.memory import HostMemory
from hvsim.plugins.intel_vtx import entry, msrs
from hvsim.plugins.intel_vtx.msrs import X86_CR4_VMXE, VmxCapabilities
from hvsim.plugins.intel_vtx.vmcs import Field
from hvsim.plugins.intel_vtx.vmx import Vmx

VMXON_REGION, VMCS_A, VMCS_B, UNALIGNED = 0x1000, 0x2000, 0x3000, 0x2008


def write_revision(memory, address: int, caps: VmxCapabilities, shadow: bool = False) -> None:
    memory.write(address, struct.pack("<I", caps.revision_id | (1 << 31 if shadow else 0)))


def make_vmx(memory, caps: VmxCapabilities | None = None) -> Vmx:
    vmx = Vmx(memory, caps)
    for region in (VMXON_REGION, VMCS_A, VMCS_B):
        write_revision(memory, region, vmx.caps)
    vmx.cr4 |= X86_CR4_VMXE
    return vmx


CODE64_AR, DATA_AR, TSS64_BUSY_AR = 0xA09B, 0xC093, 0x8B  # accessed code L=1 G=1; accessed data; busy TSS


def w(vmx, **fields) -> None:
    for name, value in fields.items():
        result = vmx.vmwrite(getattr(Field, name), value)
        assert result.ok, (name, result)


def write_valid_vmcs(vmx) -> None:
    """Controls as vmm.py computes them, a 64-bit host like vmm.py's, a 64-bit guest at CPL 0."""
    caps = vmx.caps
    wanted = {msrs.EXIT: msrs.VM_EXIT_HOST_ADDR_SPACE_SIZE | msrs.VM_EXIT_SAVE_IA32_EFER | msrs.VM_EXIT_LOAD_IA32_EFER,
              msrs.ENTRY: msrs.VM_ENTRY_LOAD_IA32_EFER | msrs.VM_ENTRY_IA32E_MODE}
    for ctl, name in ((msrs.PIN, "PIN_BASED_VM_EXEC_CONTROL"), (msrs.PROC, "CPU_BASED_VM_EXEC_CONTROL"),
                      (msrs.EXIT, "VM_EXIT_CONTROLS"), (msrs.ENTRY, "VM_ENTRY_CONTROLS")):
        w(vmx, **{name: (wanted.get(ctl, 0) | caps.allowed0[ctl]) & caps.allowed1[ctl]})
    w(vmx, HOST_CR0=0x8005_0033, HOST_CR4=0x26A0, HOST_CR3=0x1000, HOST_IA32_EFER=0xD01, HOST_CS_SELECTOR=0x10,
      HOST_SS_SELECTOR=0x18, HOST_DS_SELECTOR=0x18, HOST_ES_SELECTOR=0x18, HOST_FS_SELECTOR=0x18,
      HOST_GS_SELECTOR=0x18, HOST_TR_SELECTOR=0x40, HOST_RIP=0xFFFF_FFFF_8100_0000, HOST_RSP=0xFFFF_FFFF_8100_8000)
    w(vmx, GUEST_CR0=0x8000_0031, GUEST_CR3=0x10_0000, GUEST_CR4=0x2020, GUEST_IA32_EFER=0x500, GUEST_DR7=0x400,
      GUEST_RFLAGS=0x2, GUEST_RIP=0x10_0000, GUEST_RSP=0x20_0000, VMCS_LINK_POINTER=(1 << 64) - 1,
      GUEST_GDTR_LIMIT=0x27, GUEST_IDTR_LIMIT=0xFFF)
    w(vmx, GUEST_CS_SELECTOR=0x8, GUEST_CS_LIMIT=0xFFFF_FFFF, GUEST_CS_AR_BYTES=CODE64_AR)
    for seg in ("SS", "DS", "ES", "FS", "GS"):
        w(vmx, **{f"GUEST_{seg}_SELECTOR": 0x10, f"GUEST_{seg}_LIMIT": 0xFFFF_FFFF, f"GUEST_{seg}_AR_BYTES": DATA_AR})
    w(vmx, GUEST_TR_SELECTOR=0x18, GUEST_TR_LIMIT=0x67, GUEST_TR_AR_BYTES=TSS64_BUSY_AR,
      GUEST_LDTR_AR_BYTES=entry.AR_UNUSABLE)


def with_current_vmcs(vmx: Vmx) -> Vmx:
    """VMXON, VMCLEAR and VMPTRLD of VMCS_A, which then holds a state that passes VM entry."""
    assert vmx.vmxon(VMXON_REGION).ok
    assert vmx.vmclear(VMCS_A).ok
    assert vmx.vmptrld(VMCS_A).ok
    write_valid_vmcs(vmx)
    return vmx


@pytest.fixture
def memory():
    return HostMemory(0x20_0000)


@pytest.fixture
def cpu(memory):
    """A processor with CR4.VMXE set and region headers written, not yet in VMX operation."""
    return make_vmx(memory)


@pytest.fixture
def root(cpu):
    """In VMX root operation, no current VMCS."""
    assert cpu.vmxon(VMXON_REGION).ok
    return cpu


@pytest.fixture
def vmx(memory):
    """In VMX root operation with VMCS_A current (VMCLEAR then VMPTRLD)."""
    return with_current_vmcs(make_vmx(memory))
