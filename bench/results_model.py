"""What a benchmark returns: rows for the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    section: str  # spec | scale | throughput | latency | baseline | cost
    name: str
    size: str = ""
    unit: str = "ms"  # "ms" (lower is better) or "/s" (higher is better)
    p50: float | None = None  # ms, or the rate for "/s" rows
    p95: float | None = None  # ms (p99 for latency rows, see name)
    target: str = ""  # the spec's figure or the target, in words
    ok: bool | None = None  # None: no target, or not judged at this size
    plan: str = ""
    ratio: float | None = None
    ratio_of: str = ""  # what the ratio is to
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Section:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
