"""Exit statistics in the style of ``perf kvm stat report``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ReasonStats:
    count: int = 0
    total_ns: int = 0
    min_ns: int = 1 << 62
    max_ns: int = 0


class ExitStats:
    def __init__(self) -> None:
        self.by_reason: dict[str, ReasonStats] = {}

    def record(self, reason: str, ns: int) -> None:
        s = self.by_reason.get(reason)
        if s is None:
            s = self.by_reason[reason] = ReasonStats()
        s.count += 1
        s.total_ns += ns
        if ns < s.min_ns:
            s.min_ns = ns
        if ns > s.max_ns:
            s.max_ns = ns

    @property
    def total(self) -> int:
        return sum(s.count for s in self.by_reason.values())

    def counts(self) -> dict[str, int]:
        return {r: s.count for r, s in sorted(self.by_reason.items(), key=lambda kv: -kv[1].count)}

    def rows(self) -> list[tuple[str, int, float, float, float, float]]:
        """(reason, samples, samples %, time %, total us, mean us), busiest first."""
        total = self.total or 1
        total_ns = sum(s.total_ns for s in self.by_reason.values()) or 1
        rows = []
        for reason, s in sorted(self.by_reason.items(), key=lambda kv: -kv[1].count):
            rows.append((reason, s.count, 100.0 * s.count / total, 100.0 * s.total_ns / total_ns,
                         s.total_ns / 1000.0, s.total_ns / 1000.0 / s.count))
        return rows
