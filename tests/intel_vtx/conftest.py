"""Fixtures for the VMX data-model tests: physical memory with a VMXON region and VMCS regions
whose revision identifiers are written, and a logical processor at each stage of VMX operation."""

from __future__ import annotations

import struct

import pytest
from hvsim.core.memory import HostMemory
from hvsim.plugins.intel_vtx.msrs import X86_CR4_VMXE, VmxCapabilities
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


def with_current_vmcs(vmx: Vmx) -> Vmx:
    assert vmx.vmxon(VMXON_REGION).ok
    assert vmx.vmclear(VMCS_A).ok
    assert vmx.vmptrld(VMCS_A).ok
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
