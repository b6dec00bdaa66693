"""The plugin module registers one factory per device; factories adapt a VM to constructors."""

from types import SimpleNamespace

import pytest

from hvsim.plugins import devices
from hvsim.plugins.devices.fw_cfg import FwCfg

NAMES = ["acpi-pm", "cmos-rtc", "fw_cfg", "isa-debug-exit", "pic8259", "pl011", "port80", "reset-control",
         "uart16550"]


class Registry:
    def __init__(self):
        self.factories = {}

    def add(self, name, factory):
        self.factories[name] = factory


@pytest.fixture
def vm():
    out, stops = [], []
    return SimpleNamespace(
        console=SimpleNamespace(write_byte=out.append, output=out),
        stop=lambda status, reason: stops.append((status, reason)), stops=stops,
        config=SimpleNamespace(mem_size=64 << 20, vcpus=3),
        clock=SimpleNamespace(now_ns=lambda: 0, deterministic=True),
    )


@pytest.fixture
def registry():
    reg = Registry()
    devices.hvsim_register_devices(registry=reg)
    return reg


def test_every_device_is_registered(registry):
    assert sorted(registry.factories) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_factories_build_devices_with_read_and_write(registry, vm, name):
    dev = registry.factories[name](vm)
    assert isinstance(dev.read(0, 1), int)


def test_uart_factories_write_to_the_console(registry, vm):
    registry.factories["uart16550"](vm).write(0, 1, ord("u"))
    registry.factories["pl011"](vm).write(0, 4, ord("p"))
    assert bytes(vm.console.output) == b"up"


def test_debug_exit_factory_stops_the_vm(registry, vm):
    registry.factories["isa-debug-exit"](vm).write(0, 1, 1)
    assert vm.stops == [(3, "isa-debug-exit: guest wrote 0x1")]


def test_fw_cfg_factory_reads_vm_config(registry, vm):
    dev = registry.factories["fw_cfg"](vm)
    assert isinstance(dev, FwCfg)
    assert dev.items[0x03] == (64 << 20).to_bytes(8, "little")
    assert dev.items[0x05] == (3).to_bytes(2, "little")


def test_factory_params_reach_the_constructor(registry, vm):
    levels = []
    uart = registry.factories["uart16550"](vm, irq=levels.append)
    uart.write(1, 1, 0x02)
    assert levels == [True]
    assert registry.factories["fw_cfg"](vm, max_cpus=8).items[0x0F] == b"\x08\x00"
