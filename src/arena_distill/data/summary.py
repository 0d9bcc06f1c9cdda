"""Counts of every normalisation and every dropped row, printed and written by the data stage."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DataSummary:
    """What happened to the data on its way into the normalised table.

    ``counts`` maps ``"<source>/<event>"`` (e.g. ``"kaggle/null_to_empty"``) to how often it
    happened; ``dropped`` lists every dropped row with its reason. Nothing is dropped without
    an entry here.
    """

    counts: Counter = field(default_factory=Counter)
    rows_read: Counter = field(default_factory=Counter)
    rows_kept: Counter = field(default_factory=Counter)
    dropped: list[dict] = field(default_factory=list)

    def count(self, source: str, event: str, n: int = 1) -> None:
        if n:
            self.counts[f"{source}/{event}"] += n

    def drop(self, source: str, row_id: object, reason: str, file: str | None = None) -> None:
        self.dropped.append({"source": source, "id": str(row_id), "reason": reason, "file": file})

    def update(self, other: DataSummary) -> None:
        self.counts.update(other.counts)
        self.rows_read.update(other.rows_read)
        self.rows_kept.update(other.rows_kept)
        self.dropped.extend(other.dropped)

    def dropped_by_reason(self) -> dict[str, int]:
        return dict(Counter(f"{d['source']}/{d['reason']}" for d in self.dropped))

    def to_dict(self) -> dict:
        return {
            "rows_read": dict(self.rows_read),
            "rows_kept": dict(self.rows_kept),
            "normalisations": dict(sorted(self.counts.items())),
            "dropped_by_reason": self.dropped_by_reason(),
            "dropped": self.dropped,
        }

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    def render(self) -> str:
        """A short human-readable report (the data stage prints it)."""
        lines = ["data summary"]
        for src in sorted(set(self.rows_read) | set(self.rows_kept)):
            lines.append(f"  {src}: read {self.rows_read[src]}, kept {self.rows_kept[src]}")
        for key, n in sorted(self.counts.items()):
            lines.append(f"  normalised {key}: {n}")
        for key, n in sorted(self.dropped_by_reason().items()):
            lines.append(f"  dropped {key}: {n}")
        return "\n".join(lines)
