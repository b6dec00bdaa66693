"""The hook specifications are the contract: each is documented, in the spec module and on the
plugin docs page with its exact signature; a misspelt hook is refused; user plugins come last."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from hvsim import hookimpl
from hvsim.core import hookspecs
from hvsim.core.errors import PluginError
from hvsim.core.exits import ExitKind
from hvsim.core.plugins import PluginManager

DOCS = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
SPECS = {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("hvsim_")}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_hook_has_a_docstring_and_a_docs_entry_with_its_signature(name):
    fn = SPECS[name]
    assert len(inspect.getdoc(fn) or "") > 60, f"{name} needs a docstring saying when it fires"
    assert f"### `{name}{inspect.signature(fn)}`" in DOCS, f"docs/plugins.md lacks {name}{inspect.signature(fn)}"


def test_the_four_families_and_registration_are_all_there():
    for name in ("hvsim_vm_entry", "hvsim_vm_exit", "hvsim_exit_handlers", "hvsim_stage1_walk",
                 "hvsim_stage2_translate", "hvsim_tlb_invalidate", "hvsim_inject_event",
                 "hvsim_interrupt_acknowledged", "hvsim_interrupt_pending", "hvsim_port_io", "hvsim_mmio",
                 "hvsim_dma_translate", "hvsim_register_archs", "hvsim_register_devices",
                 "hvsim_register_commands"):
        assert name in SPECS


def test_a_misspelt_hook_is_refused_with_one_clear_error():
    class Typo:
        @hookimpl
        def hvsim_vm_exitt(self, vcpu, exit):
            pass

    pm = PluginManager()
    pm.register(Typo())
    with pytest.raises(PluginError, match="hvsim_vm_exitt"):
        pm.check()


def test_builtin_plugins_arrive_through_the_entry_point_group():
    pm = PluginManager()
    pm.load_entry_points()
    for name in ("core", "intel_vtx", "amd_svm", "arm_el2", "devices"):
        assert pm.get_plugin(name) is not None
        assert pm.distribution_of(name).startswith("hvsim ")


def test_disabled_plugins_are_not_loaded(monkeypatch):
    monkeypatch.setenv("HVSIM_DISABLE_PLUGINS", "amd_svm")
    pm = PluginManager()
    pm.load_entry_points()
    assert "amd_svm" not in pm.archs.names() and "intel_vtx" in pm.archs.names()


def test_a_user_plugin_overrides_a_builtin_exit_handler(make_vm, hvsim_pm):
    seen = []

    class Override:
        @hookimpl
        def hvsim_exit_handlers(self, vm, registry):
            registry.add(ExitKind.CPUID, lambda vcpu, exit: seen.append(exit.reason))

    hvsim_pm.register(Override())
    vm = make_vm("intel_vtx")
    assert vm.exit_handlers[ExitKind.CPUID].__name__ == "<lambda>"


def test_exit_observers_cost_nothing_when_nobody_implements_them(make_vm):
    vm = make_vm("intel_vtx")
    assert vm._exit_observers is False and vm._entry_observers is False
