"""Fixtures for the arm_el2 tests: a VM factory on a fresh plugin manager, an exit recorder."""

from __future__ import annotations

import pytest

from hvsim import hookimpl


class ExitRecorder:
    """An ``hvsim_vm_exit`` observer that keeps every exit."""

    def __init__(self) -> None:
        self.exits = []

    @hookimpl
    def hvsim_vm_exit(self, vcpu, exit):
        self.exits.append(exit)

    def of(self, kind):
        return [e for e in self.exits if e.kind is kind]


@pytest.fixture
def recorder(hvsim_pm):
    rec = ExitRecorder()
    hvsim_pm.register(rec, name="arm-el2-exit-recorder")
    return rec


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
