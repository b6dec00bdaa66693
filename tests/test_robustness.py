"""A guest doing anything at all ends in a clear outcome: a status and a reason, never a Python
exception and never a write outside its own RAM."""

from __future__ import annotations

import hashlib
import os

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guestlib import ARCH_FAMILY, ARM_ENTRY
from hvsim.core.console import Console
from hvsim.core.errors import ImageError
from hvsim.core.memory import HostMemory
from hvsim.core.vm import HV_AREA, VM

OUTCOMES = {0, 4, 6, 124}


@settings(max_examples=int(os.environ.get("HVSIM_FUZZ_EXAMPLES", "25")), deadline=None, suppress_health_check=list(HealthCheck))
@given(code=st.binary(min_size=1, max_size=256), arch=st.sampled_from(["intel_vtx", "amd_svm", "arm_el2"]))
@example(code=b"\x00\x8c \x00\x00 ", arch="intel_vtx")  # a SIB with no index (capstone's RIZ) faulting
def test_random_guest_code_ends_with_a_status_and_touches_only_its_own_ram(code, arch):
    host = HostMemory(2 * ((2 << 20) + HV_AREA))
    kw = {"entry": ARM_ENTRY} if ARCH_FAMILY[arch] == "arm64" else {}
    victim = VM(arch, mem="2M", host=host, console=Console(), **kw)  # a neighbour on the same host memory
    vm = VM(arch, mem="2M", host=host, console=Console(), **kw)
    try:
        vm.load(code)
    except ImageError as exc:  # bytes that look like a header but are not one: refused, one line
        assert str(exc).startswith("image ")
        return
    slot = victim.memory.slots[0]
    before = hashlib.sha256(host.view[slot.hpa:slot.hpa + slot.size]).digest()
    result = vm.run(timeout=0.3)
    assert result.status in OUTCOMES or result.status & 1, result
    assert result.reason
    assert hashlib.sha256(host.view[slot.hpa:slot.hpa + slot.size]).digest() == before
