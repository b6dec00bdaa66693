"""The device tree in guest memory, decompiled with dtc (Debian's device-tree-compiler): the
cpus, psci and timer nodes as Linux's bindings (arm/cpus.yaml, arm/psci.yaml,
timer/arm,arch_timer.yaml) and QEMU virt write them. ``make test`` installs dtc when it is
missing and it runs as root; in CI (CI set) a missing dtc fails the test instead of skipping."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess

import pytest
from el2guest import SYSTEM_OFF, guest
from hvsim.plugins.arm_el2 import psci


@pytest.fixture(scope="module")
def dtc():
    path = shutil.which("dtc")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("dtc is not installed (apt-get install device-tree-compiler; `make test` does it as root)")
        pytest.skip("dtc is not installed (apt-get install device-tree-compiler)")
    return path


def decompiled(dtc, arm_vm, tmp_path, **kw):
    vm = arm_vm(guest(SYSTEM_OFF), **kw)
    address = vm.arch.boot_state.dtb  # what the boot vCPU finds in X0
    size = struct.unpack(">I", vm.memory.read(address + 4, 4))[0]  # fdt_header.totalsize
    blob = tmp_path / "virt.dtb"
    blob.write_bytes(vm.memory.read(address, size))
    done = subprocess.run([dtc, "-I", "dtb", "-O", "dts", str(blob)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


def node(dts: str, name: str) -> str:
    m = re.search(r"^(\t+)" + re.escape(name) + r" \{\n(.*?)^\1\};", dts, re.S | re.M)
    assert m, f"no {name} node in\n{dts}"
    return m.group(2)


@pytest.mark.parametrize("vcpus", [1, 3])
def test_dtc_decompiles_the_tree_with_no_warning(dtc, arm_vm, tmp_path, vcpus):
    _dts, stderr = decompiled(dtc, arm_vm, tmp_path, vcpus=vcpus)
    warnings = [line for line in stderr.splitlines() if line.strip()]
    assert warnings == []


def test_without_a_gic_only_the_timer_lacks_its_interrupt_parent(dtc, arm_vm, tmp_path):
    dts, stderr = decompiled(dtc, arm_vm, tmp_path, gic="none")
    warnings = [line for line in stderr.splitlines() if line.strip()]
    assert warnings == ["<stdout>: Warning (interrupts_property): /timer: Missing interrupt-parent"]
    assert "intc@" not in dts


def test_the_gic_node_is_qemu_virts_gicv3(dtc, arm_vm, tmp_path):
    dts, _ = decompiled(dtc, arm_vm, tmp_path, vcpus=2)
    gic = node(dts, "intc@8000000")
    assert 'compatible = "arm,gic-v3";' in gic
    assert "#interrupt-cells = <0x03>;" in gic
    assert "interrupt-controller;" in gic
    assert "phandle = <0x8001>;" in gic
    assert "#redistributor-regions = <0x01>;" in gic
    # GICD 64 KiB, then two 128 KiB redistributor frame pairs
    assert "reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0x40000>;" in gic
    assert "interrupts = <0x01 0x09 0x04>;" in gic  # the maintenance interrupt, PPI 9 level high
    assert re.search(r"^\tinterrupt-parent = <0x8001>;", dts, re.M)
    assert "interrupts = <0x00 0x01 0x04>;" in node(dts, "pl011@9000000")


def test_the_timer_node_lists_its_four_ppis_level_high(dtc, arm_vm, tmp_path):
    dts, _ = decompiled(dtc, arm_vm, tmp_path)
    timer = node(dts, "timer")
    assert 'compatible = "arm,armv8-timer\\0arm,armv7-timer";' in timer
    # <GIC_PPI 13 ...> secure phys, 14 non-secure phys, 11 virtual (INTID 27), 10 hyp phys.
    assert "interrupts = <0x01 0x0d 0x04 0x01 0x0e 0x04 0x01 0x0b 0x04 0x01 0x0a 0x04>;" in timer
    assert "always-on;" in timer


def test_the_cpus_node_has_one_psci_cpu_per_vcpu_named_by_mpidr(dtc, arm_vm, tmp_path):
    dts, _ = decompiled(dtc, arm_vm, tmp_path, vcpus=3)
    cpus = node(dts, "cpus")
    assert "#address-cells = <0x01>;" in cpus and "#size-cells = <0x00>;" in cpus
    for i in range(3):
        cpu = node(dts, f"cpu@{i}")
        assert f"reg = <{i:#04x}>;" in cpu
        assert 'enable-method = "psci";' in cpu and 'device_type = "cpu";' in cpu


def test_the_psci_node_names_the_hvc_conduit_and_the_function_ids(dtc, arm_vm, tmp_path):
    dts, _ = decompiled(dtc, arm_vm, tmp_path)
    p = node(dts, "psci")
    assert 'method = "hvc";' in p
    assert 'compatible = "arm,psci-1.0\\0arm,psci-0.2\\0arm,psci";' in p
    assert f"cpu_on = <{psci.PSCI_0_2_FN64_CPU_ON:#x}>;" in p
    assert f"cpu_suspend = <{psci.PSCI_0_2_FN64_CPU_SUSPEND:#x}>;" in p
