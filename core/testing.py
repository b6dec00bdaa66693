"""pytest fixtures for hvsim and for plugin authors (loaded through the ``pytest11`` entry point).

- ``hvsim_pm``: a fresh plugin manager with every installed plugin; register yours with
  ``hvsim_pm.register(my_plugin)``; it is thrown away after the test.
- ``make_vm``: ``make_vm(arch, **kwargs)`` builds a VM on ``hvsim_pm`` that keeps its serial
  output in ``vm.console.output``.
- ``hvsim_arch``: parametrize a test over every installed architecture with
  ``@pytest.mark.parametrize("hvsim_arch", hvsim.core.testing.installed_archs())`` or use the
  ``every_arch`` fixture, which does it for you.
"""

from __future__ import annotations

import pytest


def installed_archs() -> list[str]:
    from .plugins import default_manager

    return default_manager().archs.names()


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


@pytest.fixture(params=installed_archs())
def every_arch(request) -> str:
    return request.param
