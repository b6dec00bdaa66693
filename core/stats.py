"""Exit statistics in the style of ``perf kvm stat report``.

``by_reason`` maps the manual's name to ``[count, total handler ns]``; :meth:`VM.dispatch`
updates it in place (a method call per exit costs more than the update). ``unassigned`` counts
the accesses to guest-physical addresses that no RAM or device backs, by address.
"""

from __future__ import annotations

import structlog

log = structlog.get_logger("hvsim")


class ExitStats:
    def __init__(self) -> None:
        self.by_reason: dict[str, list[int]] = {}
        # Accesses to guest-physical addresses no RAM or device backs, by address: [reads, writes]
        self.unassigned: dict[int, list[int]] = {}

    def unassigned_access(self, address: int, size: int, is_write: bool) -> None:
        """Count an access nothing backs; the first at each address is logged (info)."""
        counts = self.unassigned.get(address)
        if counts is None:
            counts = self.unassigned[address] = [0, 0]
            log.info("unassigned access", address=hex(address), size=size,
                     access="write (ignored)" if is_write else "read (all-ones)")
        counts[1 if is_write else 0] += 1

    def record(self, reason: str, ns: int) -> None:
        s = self.by_reason.get(reason)
        if s is None:
            s = self.by_reason[reason] = [0, 0]
        s[0] += 1
        s[1] += ns

    @property
    def total(self) -> int:
        return sum(s[0] for s in self.by_reason.values())

    def counts(self) -> dict[str, int]:
        return {r: s[0] for r, s in sorted(self.by_reason.items(), key=lambda kv: -kv[1][0])}

    def rows(self) -> list[tuple[str, int, float, float, float, float]]:
        """(reason, samples, samples %, time %, total us, mean us), busiest first."""
        total = self.total or 1
        total_ns = sum(s[1] for s in self.by_reason.values()) or 1
        rows = []
        for reason, (count, ns) in sorted(self.by_reason.items(), key=lambda kv: -kv[1][0]):
            rows.append((reason, count, 100.0 * count / total, 100.0 * ns / total_ns, ns / 1000.0,
                         ns / 1000.0 / count))
        return rows
