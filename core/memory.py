"""Host physical memory, a VM's guest-physical map, and the one bounds-checked way to reach them.

Host physical memory is one anonymous mapping. Unicorn maps pieces of it with ``mem_map_ptr``
(several engines share it), and Python reaches it only through :class:`HostMemory` and
:class:`GuestMemory`, which refuse any access outside what they were given (rust-vmm's
vm-memory shape: ``read``/``write`` at guest addresses, bounds checked).
"""

from __future__ import annotations

import ctypes
import enum
import mmap
import struct
from dataclasses import dataclass, field

from .errors import ConfigError

PAGE_SIZE = 0x1000
_SLOT_ALIGN = 0x20_0000  # 2 MiB: large-page friendly, like a hypervisor's memslots

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMemoryError(Exception):
    """A guest-physical (or host-physical) access fell outside the memory it may touch."""

    def __init__(self, address: int, size: int, what: str = "guest-physical") -> None:
        super().__init__(f"{what} access [{address:#x}, +{size:#x}) is outside mapped memory")
        self.address = address
        self.size = size


class DmaFault(Exception):
    """An IOMMU refused a device's DMA access (raised from ``hvsim_dma_translate``)."""


class HostMemory:
    """The host's physical memory: one buffer shared by every vCPU engine and VM."""

    def __init__(self, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ConfigError(f"host memory size {size:#x} must be a positive multiple of 4 KiB")
        self.size = size
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self._map)
        self.ptr = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        self._next = 0

    def allocate(self, size: int) -> int:
        """Reserve ``size`` bytes (rounded up to 2 MiB) and return their host-physical address."""
        size = -(-size // _SLOT_ALIGN) * _SLOT_ALIGN
        if self._next + size > self.size:
            raise ConfigError(
                f"host memory exhausted: {size >> 20} MiB asked, {(self.size - self._next) >> 20} MiB left"
            )
        hpa, self._next = self._next, self._next + size
        return hpa

    def _check(self, hpa: int, size: int) -> None:
        if hpa < 0 or size < 0 or hpa + size > self.size:
            raise GuestMemoryError(hpa, size, "host-physical")

    def read(self, hpa: int, size: int) -> bytes:
        self._check(hpa, size)
        return bytes(self.view[hpa : hpa + size])

    def write(self, hpa: int, data: bytes) -> None:
        self._check(hpa, len(data))
        self.view[hpa : hpa + len(data)] = data


@dataclass(frozen=True, slots=True)
class MemorySlot:
    """A range of guest-physical RAM backed by host memory (KVM's memslot)."""

    gpa: int
    size: int
    hpa: int

    @property
    def end(self) -> int:
        return self.gpa + self.size


class GuestMemory:
    """A VM's guest-physical address space: RAM slots over host memory, bounds checked."""

    def __init__(self, host: HostMemory) -> None:
        self.host = host
        self.slots: list[MemorySlot] = []

    def add_ram(self, gpa: int, size: int) -> MemorySlot:
        if gpa % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
            raise ConfigError(f"RAM slot {gpa:#x}+{size:#x} is not page aligned")
        for s in self.slots:
            if gpa < s.end and s.gpa < gpa + size:
                raise ConfigError(f"RAM slot {gpa:#x}+{size:#x} overlaps {s.gpa:#x}+{s.size:#x}")
        slot = MemorySlot(gpa, size, self.host.allocate(size))
        self.slots.append(slot)
        return slot

    def translate(self, gpa: int, size: int = 1) -> int:
        """Guest-physical to host-physical for an access that must lie inside one slot."""
        for s in self.slots:
            if s.gpa <= gpa and gpa + size <= s.end:
                return s.hpa + (gpa - s.gpa)
        raise GuestMemoryError(gpa, size)

    def is_ram(self, gpa: int, size: int = 1) -> bool:
        return any(s.gpa <= gpa and gpa + size <= s.end for s in self.slots)

    def read(self, gpa: int, size: int) -> bytes:
        hpa = self.translate(gpa, size)
        return bytes(self.host.view[hpa : hpa + size])

    def write(self, gpa: int, data: bytes) -> None:
        hpa = self.translate(gpa, len(data))
        self.host.view[hpa : hpa + len(data)] = data

    def place(self, gpa: int, data: bytes, size: int) -> int:
        """Load ``data`` at ``gpa`` and zero the rest of ``size`` bytes (an ELF segment's bss);
        returns the end address. The whole range must be RAM."""
        self.translate(gpa, max(size, len(data), 1))
        self.write(gpa, data)
        if size > len(data):
            self.write(gpa + len(data), bytes(size - len(data)))
        return gpa + max(size, len(data))

    def read_u16(self, gpa: int) -> int:
        return _U16.unpack_from(self.host.view, self.translate(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return _U32.unpack_from(self.host.view, self.translate(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return _U64.unpack_from(self.host.view, self.translate(gpa, 8))[0]

    def write_u16(self, gpa: int, value: int) -> None:
        _U16.pack_into(self.host.view, self.translate(gpa, 2), value & 0xFFFF)

    def write_u32(self, gpa: int, value: int) -> None:
        _U32.pack_into(self.host.view, self.translate(gpa, 4), value & 0xFFFF_FFFF)

    def write_u64(self, gpa: int, value: int) -> None:
        _U64.pack_into(self.host.view, self.translate(gpa, 8), value & 0xFFFF_FFFF_FFFF_FFFF)

    @property
    def ram_size(self) -> int:
        return sum(s.size for s in self.slots)


class Access(enum.IntFlag):
    """What an access does (used by the translation hooks)."""

    READ = 1
    WRITE = 2
    EXECUTE = 4
    USER = 8


@dataclass(slots=True)
class WalkStep:
    """One table entry read during a walk: level, the entry's address and value, decoded flags."""

    level: int
    address: int
    value: int
    flags: str = ""


@dataclass(slots=True)
class Walk:
    """The result of a stage-1 walk: the output address or a fault, and the entries read."""

    address: int | None
    steps: list[WalkStep] = field(default_factory=list)
    fault: str | None = None
    error_code: int = 0  # the architecture's fault syndrome (x86 #PF error code, arm64 FSC)
    # What the translation allows beyond the access that was asked for (a TLB caches these):
    writable: bool = True
    executable: bool = True
    user: bool = True
    global_: bool = False
    page_size: int = 0x1000
    dirty: bool = True  # False: the leaf's dirty bit is clear, so a write must walk again
    leaf: tuple[int, int] | None = None  # (address, size) of the leaf entry, where dirty is set
    entry: int = 0  # the leaf entry's value


@dataclass(frozen=True, slots=True)
class TlbScope:
    """What a TLB invalidation covers: everything, one tag (VPID/ASID/VMID), or one address."""

    tag: int | None = None
    address: int | None = None


class DmaMemory:
    """Memory as one device sees it (vm-memory's ``IommuMemory`` shape): reads and writes at
    IOVAs, each page translated by ``hvsim_dma_translate`` when an IOMMU plugin is present, then
    bounds-checked against the VM's RAM like every other access."""

    def __init__(self, vm, device) -> None:
        self.vm = vm
        self.device = device
        self._iommu = vm.pm.implemented("hvsim_dma_translate")

    def _gpa(self, iova: int, size: int, is_write: bool) -> int:
        if not self._iommu:
            return iova
        gpa = self.vm.pm.hook.hvsim_dma_translate(vm=self.vm, device=self.device, iova=iova, size=size,
                                                   is_write=is_write)
        return iova if gpa is None else gpa

    def _pieces(self, iova: int, size: int, is_write: bool):
        offset = 0
        while offset < size:
            n = min(size - offset, PAGE_SIZE - ((iova + offset) & (PAGE_SIZE - 1)))
            yield self._gpa(iova + offset, n, is_write), offset, n
            offset += n

    def read(self, iova: int, size: int) -> bytes:
        return b"".join(self.vm.memory.read(gpa, n) for gpa, _, n in self._pieces(iova, size, False))

    def write(self, iova: int, data: bytes) -> None:
        for gpa, off, n in self._pieces(iova, len(data), True):
            self.vm.memory.write(gpa, data[off:off + n])
