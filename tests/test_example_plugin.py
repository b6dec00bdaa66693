"""A third-party plugin package, pip-installed into this environment, is found and used by hvsim
with no change to hvsim: its device answers the guest and its hypercall handler wraps the
architecture's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from guestlib import (ARCH_FAMILY, ARM_DATA, ARM_ENTRY, ARM_SYSTEM_OFF, X86_DATA, X86_STACK, arm64_image, x86_64,
                      x86_hypercall)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hvsim-example-plugin"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args], check=True)


@pytest.fixture(scope="module")
def example_installed():
    _pip("install", "--no-deps", str(EXAMPLE))
    yield
    _pip("uninstall", "--yes", "hvsim-example-plugin")


@pytest.fixture
def pm(example_installed):
    from hvsim.core.plugins import PluginManager

    manager = PluginManager()
    manager.load_entry_points()
    return manager


def test_the_installed_package_is_discovered_through_the_entry_point(pm):
    assert pm.get_plugin("example") is not None
    assert pm.distribution_of("example") == "hvsim-example-plugin 0.1.0"


def test_hvsim_plugins_lists_it_with_its_distribution(example_installed):
    out = subprocess.run([sys.executable, "-m", "hvsim.core.cli", "plugins"], capture_output=True, text=True,
                         check=True, env={"COLUMNS": "200", "PATH": ""}).stdout
    assert "hvsim-example-plugin" in out and "hvsim_example.plugin" in out


def test_its_rng_device_answers_port_reads_deterministically(pm):
    from hvsim.core.vm import VM

    vm = VM("intel_vtx", mem="32M", pm=pm, rng_seed=1)
    vm.load(x86_64(f"""
        mov rsp, {X86_STACK}
        mov dx, 0x5f0
        in eax, dx
        mov [{X86_DATA:#x}], eax
        in eax, dx
        mov [{X86_DATA + 4:#x}], eax
        mov al, 0
        out 0xf4, al
        hlt"""))
    vm.run(timeout=10)
    assert vm.memory.read_u32(X86_DATA) == 270369  # xorshift32(1)
    assert vm.memory.read_u32(X86_DATA + 4) == 67634689  # and the next one


@pytest.mark.parametrize("arch", ["intel_vtx", "amd_svm", "arm_el2"])
def test_its_hypercall_counter_wraps_the_architectures_handler(pm, arch):
    from hvsim.core.vm import VM

    if arch not in pm.archs.names():
        pytest.skip(f"{arch} is not installed")
    if ARCH_FAMILY[arch] == "x86":
        hc = x86_hypercall(arch)
        image = x86_64(f"""
            mov rsp, {X86_STACK}
            mov rax, 0x1234
            {hc}
            mov [{X86_DATA + 8:#x}], rax
            mov rax, 0x48430001
            {hc}
            mov [{X86_DATA:#x}], rax
            mov al, 0
            out 0xf4, al
            hlt""")
        data, kw = X86_DATA, {}
    else:
        image = arm64_image(f"""
            ldr x9, ={ARM_DATA:#x}
            movz w0, #0
            movk w0, #0x8400, lsl #16
            hvc #0
            str x0, [x9, #8]
            movz w0, #1
            movk w0, #0xc600, lsl #16
            hvc #0
            str x0, [x9]
            {ARM_SYSTEM_OFF}""")
        data, kw = ARM_DATA, {"entry": ARM_ENTRY}
    vm = VM(arch, mem="32M", pm=pm, **kw)
    vm.load(image)
    vm.run(timeout=10)
    assert vm.memory.read_u64(data) == 2  # its own call counted, after one the arch answered
    expected = (1 << 64) - 1000 if ARCH_FAMILY[arch] == "x86" else 0x1_0001
    assert vm.memory.read_u64(data + 8) == expected  # the wrapped handler still answers
