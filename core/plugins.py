"""The plugin manager: built-in and third-party plugins come in through one entry-point group.

``HVSIM_DISABLE_PLUGINS=name1,name2`` blocks plugins by entry-point name (as tox's
``TOX_DISABLED_EXTERNAL_PLUGINS``); ``check_pending()`` makes a misspelt hook fail loudly.
"""

from __future__ import annotations

import os
from functools import cache
from importlib.metadata import distributions

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import ArchRegistry, DeviceRegistry

ENTRY_POINT_GROUP = "hvsim.plugins"


def _plugin_entry_points():
    """Every distribution's entry points in the group, first come first served by name.

    Not ``importlib.metadata.entry_points(group=)``: that keeps one distribution per name, the
    first on sys.path, and a build's ``hvsim.egg-info`` left in the working directory (sys.path
    starts with it under ``python -m``) then hid the installed package's entry points: "unknown
    architecture (installed: none installed)" in tests, seen while it was being rewritten."""
    seen = set()
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP and ep.name not in seen:
                seen.add(ep.name)
                yield ep


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus hvsim's registries, filled lazily from the registration hooks."""

    def __init__(self) -> None:
        super().__init__("hvsim")
        self.add_hookspecs(hookspecs)
        self._archs: ArchRegistry | None = None
        self._devices: DeviceRegistry | None = None
        self._dists: dict[str, str] = {}

    def load_entry_points(self) -> None:
        disabled = {n.strip() for n in os.environ.get("HVSIM_DISABLE_PLUGINS", "").split(",") if n.strip()}
        for ep in _plugin_entry_points():
            if ep.name in disabled or self.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party package must not take hvsim down
                raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
            self.register(plugin, name=ep.name)
            if ep.dist is not None:
                self._dists[ep.name] = f"{ep.dist.name} {ep.dist.version}"
        self.check()

    def register(self, plugin, name=None):
        result = super().register(plugin, name=name)
        self._archs = self._devices = None  # registries are rebuilt with the new plugin
        return result

    def unregister(self, plugin=None, name=None):
        result = super().unregister(plugin=plugin, name=name)
        self._archs = self._devices = None
        return result

    def check(self) -> None:
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(str(exc)) from exc

    def distribution_of(self, name: str) -> str:
        return self._dists.get(name, "(registered directly)")

    @property
    def archs(self) -> ArchRegistry:
        if self._archs is None:
            reg = ArchRegistry()
            self.hook.hvsim_register_archs(registry=reg)
            self._archs = reg
        return self._archs

    @property
    def devices(self) -> DeviceRegistry:
        if self._devices is None:
            reg = DeviceRegistry()
            self.hook.hvsim_register_devices(registry=reg)
            self._devices = reg
        return self._devices

    def implemented(self, hook_name: str) -> bool:
        """True when some plugin implements ``hook_name`` (used to skip per-exit hook calls)."""
        return bool(getattr(self.hook, hook_name).get_hookimpls())


@cache
def default_manager() -> PluginManager:
    """The process-wide manager with every installed plugin loaded."""
    pm = PluginManager()
    pm.load_entry_points()
    return pm
