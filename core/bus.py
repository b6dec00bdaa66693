"""The I/O bus: devices claim port and MMIO ranges when the VM is built; dispatch is a lookup.

kvmtool's ``kvm__register_iotrap`` shape: one registry serves port I/O and MMIO and refuses
overlapping ranges. A device sees the offset inside its range, never the absolute address
(vm-device's rule), through two methods::

    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import PluginError

_PAGE_SHIFT = 12


class Device(Protocol):
    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Claim:
    """One claimed range: where it starts, how long it is, who owns it."""

    base: int
    size: int
    device: Any
    name: str
    end: int = field(init=False)  # base + size, kept as a field: the MMIO lookup runs per exit

    def __post_init__(self) -> None:
        object.__setattr__(self, "end", self.base + self.size)


class IoBus:
    def __init__(self) -> None:
        self.port_claims: list[Claim] = []
        self.mmio_claims: list[Claim] = []
        self._ports: dict[int, Claim] = {}
        self._mmio_pages: dict[int, list[Claim]] = {}
        self.port = self._ports.get  # port -> Claim | None; bound once, it runs on every exit

    @staticmethod
    def _refuse_overlap(claims: list[Claim], new: Claim, space: str) -> None:
        for c in claims:
            if new.base < c.end and c.base < new.end:
                raise PluginError(
                    f"{new.name} claims {space} {new.base:#x}-{new.end - 1:#x}, "
                    f"which overlaps {c.name} at {c.base:#x}-{c.end - 1:#x}"
                )

    def add_port(self, base: int, count: int, device: Any, name: str) -> Claim:
        """Claim ports ``base .. base+count-1`` for ``device``."""
        if not (0 <= base and count > 0 and base + count <= 0x10000):
            raise PluginError(f"{name}: port range {base:#x}+{count} is outside the 64 KiB I/O space")
        claim = Claim(base, count, device, name)
        self._refuse_overlap(self.port_claims, claim, "ports")
        self.port_claims.append(claim)
        for port in range(base, base + count):
            self._ports[port] = claim
        return claim

    def add_mmio(self, base: int, size: int, device: Any, name: str) -> Claim:
        """Claim guest-physical ``base .. base+size-1`` for ``device`` (page granular in Unicorn)."""
        if base % 0x1000 or size <= 0 or size % 0x1000:
            raise PluginError(f"{name}: MMIO range {base:#x}+{size:#x} must be 4 KiB aligned")
        claim = Claim(base, size, device, name)
        self._refuse_overlap(self.mmio_claims, claim, "MMIO")
        self.mmio_claims.append(claim)
        for page in range(base >> _PAGE_SHIFT, claim.end >> _PAGE_SHIFT):
            self._mmio_pages.setdefault(page, []).append(claim)
        return claim

    def mmio(self, address: int) -> Claim | None:
        for claim in self._mmio_pages.get(address >> _PAGE_SHIFT, ()):
            if claim.base <= address < claim.end:
                return claim
        return None
