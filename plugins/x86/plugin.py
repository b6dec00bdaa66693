"""The plugin object each x86 vendor registers: the same hooks, with its own Arch and tables."""

from __future__ import annotations

from collections.abc import Callable

from hvsim import hookimpl

from . import handlers


class X86VendorPlugin:
    """``intel_vtx`` and ``amd_svm`` differ in their Arch (vendor records) and spec tables only."""

    def __init__(self, arch: type, spec_tables: Callable[[], dict]) -> None:
        self.arch = arch
        self.spec_tables = spec_tables
        self.__name__ = arch.__module__  # what `hvsim plugins` shows

    @hookimpl
    def hvsim_register_archs(self, registry):
        registry.add(self.arch)

    @hookimpl(tryfirst=True)
    def hvsim_exit_handlers(self, vm, registry):
        if vm.arch.name == self.arch.name:
            handlers.register(registry)

    @hookimpl
    def hvsim_stage1_walk(self, vcpu, address, access):
        if vcpu.vm.arch.name == self.arch.name:
            return handlers.stage1_walk(vcpu, address, access)

    @hookimpl
    def hvsim_spec_tables(self, arch):
        if arch == self.arch.name:
            return self.spec_tables()
