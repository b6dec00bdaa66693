"""Reference tables an architecture plugin publishes for ``hvsim spec`` (and for tools, as JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecTable:
    title: str
    source: str  # the manual section the rows come from
    columns: list[str]
    rows: list[list] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"title": self.title, "source": self.source, "columns": self.columns,
                "rows": [dict(zip(self.columns, row)) for row in self.rows]}
