"""The VM and its run loop: one architecture plugin, guest memory, the I/O bus, vCPUs, exits.

The run loop enters each runnable vCPU for a time slice (Unicorn's ``timeout``, never
``count``); exits that can be completed inside the engine are dispatched from there, the rest
come back here. Every exit goes through :meth:`VM.dispatch`: statistics, observers (only when
some plugin implements ``hvsim_vm_exit``), then the handler table built from
``hvsim_exit_handlers`` when the VM was made.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from . import log as _log  # noqa: F401  (structlog to stderr before the first message)
from .arch import Vcpu, VcpuState
from .bus import IoBus
from .console import Console
from .clock import Clock, VirtualClock
from .engine import SigintWatch, require_exact_stops, slice_timer
from .errors import ConfigError, HvsimError
from .exits import Exit, ExitHandlerRegistry
from .loader import Image, parse_image, read_file, read_image
from .memory import Access, DmaMemory, GuestMemory, HostMemory, Walk
from .mmu import DirtyLog
from .plugins import PluginManager, default_manager
from .stats import ExitStats

log = structlog.get_logger("hvsim")

# Exit statuses. The guest's own statuses are 0 (PSCI SYSTEM_OFF) and odd numbers
# (isa-debug-exit writes v -> (v << 1) | 1); hvsim's own are even so they never collide.
STATUS_OFF = 0
STATUS_BAD_INPUT = 2
STATUS_GUEST_CRASH = 4  # triple fault, unhandled exit, access to memory nothing backs
STATUS_HALTED_FOREVER = 6  # every vCPU halted with nothing that could wake it
STATUS_TIMEOUT = 124  # as timeout(1)
STATUS_INTERRUPTED = 130  # SIGINT, as a shell reports it

HV_AREA = 8 << 20  # host memory each VM reserves for the hypervisor's structures
SLICE_US = 200_000  # one vCPU: long slices, re-entry is the cost
SLICE_US_SMP = 10_000  # several vCPUs: short slices so they interleave (and a masked event waits at most this)

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGkmg]?)(i?[Bb])?\s*$")


def parse_size(text: str | int) -> int:
    """'128M', '1G', '65536' -> bytes (binary units, as QEMU's -m)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"bad size {text!r}: use a number with an optional K, M or G suffix")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


def check_cmdline(append: str) -> bytes:
    """The kernel command line (``--append``) as the boot protocols carry it: UTF-8 text with
    no NUL (Multiboot's cmdline and the device tree's bootargs are NUL-terminated strings).
    Returns its bytes; anything else is a ConfigError."""
    if not isinstance(append, str):
        raise ConfigError(f"the kernel command line must be text, not {type(append).__name__}")
    try:
        data = append.encode("utf-8")  # text from a non-UTF-8 argv holds surrogates: refused here
    except UnicodeEncodeError as exc:
        bad = append[exc.start:exc.end].encode("utf-8", "surrogateescape")
        raise ConfigError(f"the kernel command line (--append) is not valid UTF-8 (bytes {bad.hex(' ')} "
                          f"at offset {exc.start})") from None
    if b"\0" in data:
        raise ConfigError("the kernel command line (--append) contains a NUL character, which would end it")
    return data


@dataclass
class VMConfig:
    mem_size: int = 128 << 20
    vcpus: int = 1
    append: str = ""
    initrd: bytes | None = None
    initrd_name: str = ""
    load_addr: int | None = None  # raw images
    entry: int | None = None  # raw images
    slice_us: int | None = None  # longest time a vCPU runs before the loop looks again (None: the defaults)
    extra: dict = field(default_factory=dict)  # plugin-specific settings


@dataclass
class RunResult:
    status: int
    reason: str
    wall_seconds: float


class VM:
    """A virtual machine on one architecture plugin. ``VM("intel_vtx", mem="64M")``."""

    def __init__(self, arch: str, *, mem: str | int = "128M", vcpus: int = 1, append: str = "",
                 initrd: str | Path | bytes | None = None, load_addr: int | None = None,
                 entry: int | None = None, pm: PluginManager | None = None,
                 host: HostMemory | None = None, console: Console | None = None, strict_mmio: bool = False,
                 slice_us: int | None = None, deterministic: bool = False, **extra) -> None:
        require_exact_stops()
        self.pm = pm if pm is not None else default_manager()
        arch_cls = self.pm.archs.get(arch)
        if arch_cls is None:
            known = ", ".join(self.pm.archs.names()) or "none installed"
            raise ConfigError(f"unknown architecture {arch!r} (installed: {known})")
        mem_size = parse_size(mem)
        if not (1 << 20) <= mem_size <= (16 << 30) or mem_size % 4096:
            raise ConfigError(f"memory size {mem} must be a multiple of 4 KiB between 1M and 16G")
        if not 1 <= vcpus <= 64:
            raise ConfigError(f"vcpus must be between 1 and 64, not {vcpus}")
        check_cmdline(append)
        if slice_us is not None and not 1 <= slice_us <= 10_000_000:
            raise ConfigError(f"slice_us must be between 1 and 10,000,000, not {slice_us}")
        self.config = VMConfig(mem_size=mem_size, vcpus=vcpus, append=append, load_addr=load_addr,
                               entry=entry, slice_us=slice_us, extra=extra)
        # Guest time: the host's, or virtual time from guest progress (core/clock.py)
        self.clock = VirtualClock() if deterministic else Clock()
        self._wall_deadline: float | None = None
        if initrd is not None:
            self.config.initrd, self.config.initrd_name = _read_initrd(initrd)
        # Guest RAM plus a hypervisor area for the architecture's own structures (VMCS and VMCB
        # regions, permission maps, stage-2 tables), outside every guest-physical space.
        self.host = host if host is not None else HostMemory(-(-mem_size // (2 << 20)) * (2 << 20) + HV_AREA)
        self.memory = GuestMemory(self.host)
        self.bus = IoBus()
        self.console = console if console is not None else Console()
        self.stats = ExitStats()
        self.dirty_log = DirtyLog(self)  # vm.dirty_log.start() / .collect(): pages the guest wrote
        self.status: int | None = None
        self.stop_reason = ""
        self.image: Image | None = None
        self.arch = arch_cls(self)
        self.arch.build()
        if self.console.uart is None:  # the platform's UART takes console input
            self.console.uart = next((c.device for c in self.bus.port_claims + self.bus.mmio_claims
                                      if hasattr(c.device, "feed")), None)
        self.pm.hook.hvsim_vm_created(vm=self)
        self.vcpus: list[Vcpu] = [self.arch.create_vcpu(i) for i in range(vcpus)]
        registry = ExitHandlerRegistry()
        self.pm.hook.hvsim_exit_handlers(vm=self, registry=registry)
        self.exit_handlers = registry.table()
        self._exit_observers = self.pm.implemented("hvsim_vm_exit")
        self._entry_observers = self.pm.implemented("hvsim_vm_entry")
        self.port_io_fallback = self.pm.implemented("hvsim_port_io")
        # Unassigned guest-physical addresses (no RAM, no device): as on QEMU, reads return
        # all-ones and writes are dropped, each counted in vm.stats.unassigned. strict_mmio=True
        # ends the run at such an access instead (as KVM with a VMM that claims nothing there).
        self.strict_mmio = bool(strict_mmio)
        self.mmio_hook = self.pm.implemented("hvsim_mmio")
        self.mmio_fallback = self.mmio_hook or not self.strict_mmio  # unbacked pages become MMIO
        self.pending_hook = self.pm.implemented("hvsim_interrupt_pending")
        self._perf = time.perf_counter_ns
        self._by_reason = self.stats.by_reason

    # -- images ----------------------------------------------------------------------------
    def load(self, image: str | Path | bytes | Image) -> Image:
        if isinstance(image, Image):
            img = image
        elif isinstance(image, (bytes, bytearray)):
            img = parse_image(bytes(image))
        else:
            img = read_image(image)
        self.arch.load(img)
        self.image = img
        log.debug("image loaded", format=img.format, entry=hex(img.entry or 0), arch=self.arch.name)
        return img

    # -- the paths a plugin can take over ------------------------------------------------------
    def inject(self, vcpu: Vcpu | int, event) -> None:
        """Raise ``event`` toward a vCPU through ``hvsim_inject_event`` (an interrupt controller
        plugin may take it; otherwise it is queued on the vCPU)."""
        target = self.vcpus[vcpu] if isinstance(vcpu, int) else vcpu
        self.pm.hook.hvsim_inject_event(vcpu=target, event=event)

    def translate(self, vcpu: Vcpu | int, address: int, access=None) -> tuple[Walk, int | None]:
        """GVA -> GPA -> HPA through ``hvsim_stage1_walk`` and ``hvsim_stage2_translate``."""
        target = self.vcpus[vcpu] if isinstance(vcpu, int) else vcpu
        access = Access.READ if access is None else access
        walk = self.pm.hook.hvsim_stage1_walk(vcpu=target, address=address, access=access)
        if walk is None:
            walk = Walk(address)  # no stage-1 walker: the address is guest-physical
        if walk.address is None:
            return walk, None
        return walk, self.pm.hook.hvsim_stage2_translate(vm=self, gpa=walk.address, access=access)

    def dma(self, device) -> DmaMemory:
        """The memory ``device`` sees: IOVAs through ``hvsim_dma_translate`` (an IOMMU), or
        guest-physical addresses when no IOMMU plugin answers."""
        return DmaMemory(self, device)

    # -- exits -----------------------------------------------------------------------------
    def dispatch(self, vcpu: Vcpu, exit: Exit) -> None:
        perf = self._perf
        t0 = perf()
        if self._exit_observers:
            self.pm.hook.hvsim_vm_exit(vcpu=vcpu, exit=exit)
        handler = self.exit_handlers.get(exit.kind)
        if handler is None:
            self.crash(f"unhandled exit {exit.reason} ({exit.kind.value}) {exit.detail}".rstrip())
        else:
            handler(vcpu, exit)
        counters = self._by_reason.get(exit.reason)
        if counters is None:
            counters = self._by_reason[exit.reason] = [0, 0]
        counters[0] += 1
        counters[1] += perf() - t0

    def stop(self, status: int, reason: str) -> None:
        """End the run with ``status`` (first caller wins); every vCPU leaves its engine."""
        if self.status is None:
            self.status = status
            self.stop_reason = reason
        for v in self.vcpus:
            v.request_stop()

    def crash(self, reason: str) -> None:
        self.stop(STATUS_GUEST_CRASH, f"guest crash: {reason}")

    # -- the run loop ----------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> RunResult:
        """Run until the guest ends, a vCPU crashes, ``timeout`` seconds pass (status 124, within
        a slice's stop latency) or SIGINT arrives on the main thread (status 130)."""
        if self.image is None and self.config.extra.get("require_image", True):
            raise HvsimError("no image loaded: call vm.load(...) first")
        start = time.monotonic()
        deadline = self._wall_deadline = start + timeout if timeout else None
        slice_us = self.config.slice_us or (SLICE_US if len(self.vcpus) == 1 else SLICE_US_SMP)
        timer = slice_timer()
        timer.clear_interrupt()
        try:
            with SigintWatch(self.interrupt):
                self._loop(slice_us, deadline, timeout)
        finally:
            timer.clear_interrupt()
            self.console.flush()
        wall = time.monotonic() - start
        log.debug("run ended", status=self.status, reason=self.stop_reason, wall_s=round(wall, 4),
                  exits=self.stats.total)
        return RunResult(self.status, self.stop_reason, wall)

    def _loop(self, slice_us: int, deadline: float | None, timeout: float | None) -> None:
        console = self.console
        while self.status is None:
            if console.has_input:
                console.deliver()  # between slices: devices run on this thread only
            ran = False
            for vcpu in self.vcpus:
                if self.status is not None:
                    break
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                if vcpu.state is VcpuState.HALTED and vcpu.events and vcpu.wake():
                    vcpu.state = VcpuState.RUNNABLE
                if vcpu.state is not VcpuState.RUNNABLE:
                    continue
                ran = True
                if vcpu.events:
                    vcpu.deliver_pending()
                if self._entry_observers:
                    self.pm.hook.hvsim_vm_entry(vcpu=vcpu)
                # An event waiting for the guest to unmask interrupts is retried at the next
                # entry: short slices bound that wait (the interrupt-window exits of the
                # interrupt-virtualization plugins make it exact).
                us = min(SLICE_US_SMP, slice_us) if vcpu.events else slice_us
                if deadline is not None and not self.clock.deterministic:  # (virtual slices stay whole)
                    us = max(1, min(us, int(left * 1e6) + 1))
                exit = vcpu.run(us)
                if exit is not None:
                    self.dispatch(vcpu, exit)
            self.console.flush()  # a prompt without a newline shows within a slice
            if self.status is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                self.stop(STATUS_TIMEOUT, f"timeout: the guest was still running after {timeout:g} s")
                break
            if not ran:
                self._all_idle()

    def wall_left(self) -> float:
        """Seconds of wall-clock time the run has left before its ``timeout`` (a year without one)."""
        if self._wall_deadline is None:
            return 365 * 86400.0
        return max(0.0, self._wall_deadline - time.monotonic())

    def interrupt(self) -> None:
        """End the run with status 130 (SIGINT): safe from another thread; the vCPUs leave
        their engines at their next block boundary."""
        slice_timer().interrupt()
        self.stop(STATUS_INTERRUPTED, "interrupted (SIGINT)")

    def _all_idle(self) -> None:
        """No vCPU could run: wake one with a pending event, or nothing ever will."""
        halted = any(v.state is VcpuState.HALTED for v in self.vcpus)
        console = self.console
        if halted and (console.input_open or console.has_input) and \
                getattr(console.uart, "receive_interrupt_enabled", False):
            # console input may still come and raise the UART's interrupt: wait for it
            slice_timer().nap(min(0.05, self.wall_left()))
            return
        if halted:
            self.stop(STATUS_HALTED_FOREVER,
                      "every vCPU is halted and nothing can wake it (no pending interrupt)")
        else:
            self.stop(STATUS_OFF, "every vCPU is off")


def _read_initrd(initrd: str | Path | bytes) -> tuple[bytes, str]:
    if isinstance(initrd, (bytes, bytearray)):
        return bytes(initrd), "initrd"
    p = Path(initrd)
    return read_file(p, "initrd"), p.name
