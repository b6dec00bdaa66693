"""pytest fixtures for hvsim and for plugin authors (loaded through the ``pytest11`` entry point).

- ``hvsim_pm``: a fresh plugin manager with every installed plugin; register yours with
  ``hvsim_pm.register(my_plugin)``; it is thrown away after the test.
- ``make_vm``: ``make_vm(arch, **kwargs)`` builds a VM on ``hvsim_pm`` that keeps its serial
  output in ``vm.console.output``.
- ``every_arch``: parametrizes a test over every installed architecture.
- ``exit_recorder``: an ``hvsim_vm_exit`` observer registered on ``hvsim_pm``; after a run,
  ``exit_recorder.exits`` holds every exit and ``exit_recorder.of(ExitKind.MMIO)`` some.
"""

from __future__ import annotations

import pytest

from hvsim import hookimpl


def installed_archs() -> list[str]:
    from .plugins import default_manager

    return default_manager().archs.names()


class ExitRecorder:
    """An ``hvsim_vm_exit`` observer that keeps every exit it sees."""

    def __init__(self) -> None:
        self.exits = []

    @hookimpl
    def hvsim_vm_exit(self, vcpu, exit):
        self.exits.append(exit)

    def of(self, kind):
        return [e for e in self.exits if e.kind is kind]


@pytest.fixture
def hvsim_pm():
    from .plugins import PluginManager

    pm = PluginManager()
    pm.load_entry_points()
    return pm


@pytest.fixture
def make_vm(hvsim_pm):
    from .console import Console
    from .vm import VM

    def factory(arch: str, **kwargs):
        kwargs.setdefault("mem", "32M")
        kwargs.setdefault("console", Console())
        return VM(arch, pm=hvsim_pm, **kwargs)

    return factory


@pytest.fixture
def exit_recorder(hvsim_pm) -> ExitRecorder:
    recorder = ExitRecorder()
    hvsim_pm.register(recorder, name="exit-recorder")
    return recorder


@pytest.fixture(params=installed_archs())
def every_arch(request) -> str:
    return request.param
