"""The bundled demo guests: built from their sources by the committed recipe, and run to the end
on every installed architecture."""

from __future__ import annotations

from importlib.resources import files

import pytest

from hvsim.core.cli import main
from hvsim.core.guests import build

GUESTS = files("hvsim.core.guests")


def test_the_recipe_reproduces_the_committed_x86_guest():
    assert build.build_x86() == (GUESTS / "demo_x86.elf").read_bytes()


def test_the_recipe_reproduces_the_committed_arm64_guest():
    assert build.build_arm64() == (GUESTS / "demo_arm64.img").read_bytes()


@pytest.mark.parametrize("arch,vendor", [("intel_vtx", "GenuineIntel"), ("amd_svm", "AuthenticAMD")])
def test_x86_demo_runs_multiboot_to_long_mode(make_vm, arch, vendor):
    vm = make_vm(arch, mem="64M")
    vm.load((GUESTS / "demo_x86.elf").read_bytes())
    result = vm.run(timeout=30)
    text = vm.console.text
    assert result.status == 1, result.reason
    assert "EAX from the loader: 0x2BADB002" in text and f"CPUID vendor: {vendor}" in text
    assert "fw_cfg signature: QEMU" in text and "#UD delivered" in text
    assert "hypercall 0x1234 returned 0xFFFFFC18" in text  # -KVM_ENOSYS
    assert "now in 64-bit long mode" in text and "500000500000" in text


def test_arm64_demo_runs_to_system_off(make_vm):
    vm = make_vm("arm_el2", mem="64M")
    vm.load((GUESTS / "demo_arm64.img").read_bytes())
    result = vm.run(timeout=30)
    text = vm.console.text
    assert result.status == 0, result.reason
    assert "device tree magic at x0: 0xD00DFEED" in text
    assert "PSCI_VERSION over HVC: 0x00010001" in text
    assert "ESR_EL1 = 0x56000042" in text and "500000500000" in text


def test_hvsim_demo_runs_every_architecture(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for arch in ("intel_vtx", "amd_svm", "arm_el2"):
        assert f"({arch})" in out
    assert "ended early" not in out
