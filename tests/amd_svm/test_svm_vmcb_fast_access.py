"""The run loop's fast VMCB paths give exactly what the checked, field-by-field ones give."""

import random

import pytest

from hvsim.core.memory import HostMemory
from hvsim.plugins.amd_svm.vmcb import _ALWAYS_LOADED, _BY_CLEAN, FIELDS, INTERCEPT, Vmcb, _decode_all, field_value


@pytest.mark.parametrize("seed", range(20))
def test_vmrun_decoder_matches_field_by_field_decoding(seed):
    page = random.Random(seed).randbytes(4096)
    for fields in (FIELDS, _ALWAYS_LOADED, *_BY_CLEAN.values()):
        assert _decode_all(page, fields) == {f.name: field_value(page, f) for f in fields}


def _vmcb():
    host = HostMemory(0x10000)
    return Vmcb(host, 0x2000), host


def test_state_writer_writes_the_bytes_write_writes():
    fast, fast_host = _vmcb()
    slow, slow_host = _vmcb()
    write = fast.state_writer()
    rng = random.Random(1)
    for f in FIELDS:
        if f.name == "GUEST_INSN_BYTES":
            continue
        value = rng.randrange(f.mask + 1)
        write(f.name, value)
        slow.write(f.name, value)
        assert fast.read(f.name) == value
    assert fast_host.read(0x2000, 4096) == slow_host.read(0x2000, 4096)


def test_state_writer_refuses_a_value_too_wide_for_its_field():
    vmcb, _host = _vmcb()
    with pytest.raises(ValueError, match="CPL"):
        vmcb.state_writer()("CPL", 0x100)


def test_intercepts_reads_the_vector_once_and_agrees_with_is_intercepted():
    vmcb, _host = _vmcb()
    for name in list(INTERCEPT)[::3]:
        vmcb.set_intercept(name)
    intercepted = vmcb.intercepts()
    assert all(intercepted(name) == vmcb.is_intercepted(name) for name in INTERCEPT)
    assert any(intercepted(name) for name in INTERCEPT) and not all(intercepted(name) for name in INTERCEPT)
