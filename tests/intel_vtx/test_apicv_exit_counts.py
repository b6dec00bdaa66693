"""With APICv the guest's TPR writes, EOIs and interrupts stop exiting (the counts `hvsim run
--stats` prints): the same guest (tests/apicvload.py) under each mode."""

from __future__ import annotations

import pytest

import apicvload
from guestlib import X86_DATA

N = 12


def factory(make_vm, hvsim_pm):
    def build(arch, vmm):
        hvsim_pm.register(vmm)
        return make_vm(arch)
    return build


@pytest.mark.parametrize("arch,mode", [(a, m) for a, modes in apicvload.MODES.items() for m in modes])
def test_exit_counts_per_mode(make_vm, hvsim_pm, arch, mode):
    vm, result = apicvload.run(factory(make_vm, hvsim_pm), arch, mode, N)
    assert result.status == 1, result
    assert vm.memory.read_u64(X86_DATA) == N  # every interrupt reached the handler
    counts = vm.stats.counts()
    mmio = counts.get("EXIT_REASON_EPT_VIOLATION" if arch == "intel_vtx" else "VMEXIT_NPF", 0)
    port = counts.get("EXIT_REASON_IO_INSTRUCTION" if arch == "intel_vtx" else "VMEXIT_IOIO", 0)
    assert port == N + 1  # the device's OUT per interrupt, and the final one
    if mode in ("exits", "vintr"):
        assert mmio == 3 * N  # TPR up, EOI, TPR down: each an MMIO exit
    else:
        assert mmio == 0  # virtualized / accelerated
        assert not any("APIC" in name or "EOI" in name or "TPR" in name for name in counts), counts
        assert counts.get("EXIT_REASON_EXTERNAL_INTERRUPT", 0) == 0
