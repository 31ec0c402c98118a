"""Typed rows returned by jobq (plain frozen dataclasses built from dict rows)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar
from uuid import UUID

JobStatus = Literal["pending", "processing", "completed", "failed", "cancelled", "expired"]
LogLevel = Literal["debug", "info", "warning", "error"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "cancelled", "expired"})

T = TypeVar("T")


_FIELD_NAMES: dict[type[Any], frozenset[str]] = {}


def from_row(cls: type[T], row: dict[str, Any]) -> T:
    """Build ``cls`` from a dict row, ignoring columns it does not declare."""
    names = _FIELD_NAMES.get(cls)
    if names is None:  # once per class: a worker builds thousands of rows a second
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    return cls(**{k: v for k, v in row.items() if k in names})


@dataclass(frozen=True)
class Job:
    id: UUID
    user_id: UUID
    job_type: str
    status: JobStatus
    priority: int
    params: dict[str, Any]
    result: Any
    progress_percent: int
    progress_message: str | None
    error_message: str | None
    error_code: str | None
    attempts: int
    max_retries: int
    next_retry_at: datetime | None
    run_after: datetime
    worker_id: str | None
    heartbeat_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class JobLog:
    id: int
    job_id: UUID
    level: LogLevel
    message: str
    metadata: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class StatRow:
    job_type: str
    status: JobStatus
    job_count: int
    avg_duration_ms: float | None
    p50_duration_ms: float | None
    p95_duration_ms: float | None
    oldest_created_at: datetime
    newest_created_at: datetime


@dataclass(frozen=True)
class ThroughputRow:
    """Finished jobs in one minute (``bucket``), of one type (``job_type``), or in all."""

    bucket: datetime | None
    job_type: str | None
    completed: int
    failed: int
    cancelled: int
    expired: int
    p50_duration_ms: float | None
    p95_duration_ms: float | None


@dataclass(frozen=True)
class Throughput:
    """``get_job_throughput`` split by grouping: per minute (ascending), per type, in all."""

    since: timedelta
    per_minute: list[ThroughputRow]
    per_type: list[ThroughputRow]
    total: ThroughputRow


@dataclass(frozen=True)
class DepthRow:
    job_type: str
    status: JobStatus
    job_count: int
