"""Fixtures for the SVM data model: host memory with a VMCB, an IOPM and an MSRPM in it."""

import pytest

from hvsim.core.memory import HostMemory
from hvsim.plugins.amd_svm.svm import CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, EFER_SVME
from hvsim.plugins.amd_svm.vmcb import Segment, Vmcb
from svmlayout import CODE64, IOPM_PA, MSRPM_PA, VMCB_PA


@pytest.fixture
def host():
    return HostMemory(0x10000)


@pytest.fixture
def vmcb(host):
    """A VMCB that passes every VMRUN check: a 64-bit guest, ASID 1, VMRUN intercepted."""
    v = Vmcb(host, VMCB_PA)
    v["EFER"] = EFER_SVME | EFER_LME | EFER_LMA
    v["CR0"] = CR0_PE | CR0_PG | 1 << 4  # ET
    v["CR4"] = CR4_PAE
    v["CR3"] = 0x2000
    v["DR6"] = 0xFFFF_0FF0
    v["DR7"] = 0x400
    v["RFLAGS"] = 0x2
    v.set_segment("CS", Segment(0x8, CODE64, 0xFFFF_FFFF, 0))
    v["GUEST_ASID"] = 1
    v["IOPM_BASE_PA"] = IOPM_PA
    v["MSRPM_BASE_PA"] = MSRPM_PA
    v.set_intercept("VMRUN")
    return v
