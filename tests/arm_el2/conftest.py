"""Fixtures for the arm_el2 tests: a VM factory on a fresh plugin manager."""

from __future__ import annotations

import pytest



@pytest.fixture
def arm_vm(make_vm):
    """``arm_vm(image, **kw)``: an arm_el2 VM with 64 MiB and ``image`` loaded."""

    def factory(image: bytes | None = None, **kw):
        kw.setdefault("mem", "64M")
        vm = make_vm("arm_el2", **kw)
        if image is not None:
            vm.load(image)
        return vm

    return factory


@pytest.fixture
def run_guest(arm_vm):
    """``run_guest(image, **kw)`` -> (vm, RunResult) after at most 5 seconds."""

    def run(image: bytes, timeout: float = 5, **kw):
        vm = arm_vm(image, **kw)
        return vm, vm.run(timeout=timeout)

    return run
