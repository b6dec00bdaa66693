"""Registries that registration hooks fill (tox's ``register.add_run_env`` shape)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import PluginError


class ArchRegistry:
    """Architecture plugins by name; filled by ``hvsim_register_archs``."""

    def __init__(self) -> None:
        self._archs: dict[str, type] = {}

    def add(self, arch: type) -> None:
        name = arch.name
        if name in self._archs and self._archs[name] is not arch:
            raise PluginError(f"architecture {name!r} registered twice")
        self._archs[name] = arch

    def get(self, name: str) -> type | None:
        return self._archs.get(name)

    def names(self) -> list[str]:
        return sorted(self._archs)

    def __iter__(self):
        return iter(self._archs[n] for n in self.names())


class DeviceRegistry:
    """Device factories by name; filled by ``hvsim_register_devices``."""

    def __init__(self) -> None:
        self._factories: dict[str, Callable[..., Any]] = {}

    def add(self, name: str, factory: Callable[..., Any]) -> None:
        if name in self._factories and self._factories[name] is not factory:
            raise PluginError(f"device {name!r} registered twice")
        self._factories[name] = factory

    def create(self, name: str, vm, **params):
        try:
            factory = self._factories[name]
        except KeyError:
            raise PluginError(f"the platform needs device {name!r}, which no plugin provides") from None
        return factory(vm, **params)

    def names(self) -> list[str]:
        return sorted(self._factories)
