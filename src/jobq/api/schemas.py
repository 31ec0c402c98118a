"""Request and response shapes, for validation and for /openapi.json.

Requests are validated for shape and type only; every rule about values
(job type syntax, priority and retry ranges, sizes, limits, ownership) is the
database's, which answers with a SQLSTATE the API maps to a status.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool

JobStatus = Literal["pending", "processing", "completed", "failed", "cancelled", "expired"]
LogLevel = Literal["debug", "info", "warning", "error"]
OrderBy = Literal[
    "created_at", "updated_at", "completed_at", "priority", "status", "job_type", "progress_percent"
]
OrderDir = Literal["ASC", "DESC", "asc", "desc"]

# Seconds, bounded so that they always fit an interval (and a timedelta).
MAX_SECONDS = 366 * 24 * 3600
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False)]

DEFAULT_DEDUPE_SECONDS = 300.0
DEFAULT_CACHE_SECONDS = 3600.0
DEFAULT_TTL_SECONDS = 86400.0


class JobIn(BaseModel):
    """A job to create."""

    model_config = ConfigDict(extra="forbid")

    job_type: str = Field(description="What to run: 1-100 of letters, digits, _ . : -")
    params: dict[str, Any] = Field(default_factory=dict, description="A JSON object")
    priority: int = Field(0, description="-100..100, higher runs first")
    max_retries: int = Field(3, description="0..25 retries after the first attempt")
    run_after: AwareDatetime | None = Field(None, description="Not before this time")
    ttl_seconds: PositiveSeconds | None = Field(
        DEFAULT_TTL_SECONDS,
        description="Expire if not started this many seconds after run_after; null: never",
    )
    user_id: UUID | None = Field(
        None, description="Whose job (service_role must name one; a user may name only itself)"
    )
    dedupe: StrictBool | Seconds = Field(
        False,
        description=(
            "Return the caller's equal job (same type and params) created within this many "
            f"seconds instead of a new one; true means {DEFAULT_DEDUPE_SECONDS:.0f}"
        ),
    )
    cache: StrictBool | Seconds = Field(
        False,
        description=(
            "Return the result of the caller's equal job completed within this many seconds "
            f"(200, cached: true) instead of creating one; true means {DEFAULT_CACHE_SECONDS:.0f}"
        ),
    )


class JobCreatedOut(BaseModel):
    job_id: UUID
    status: JobStatus
    created: bool = Field(description="A new job was created (201)")
    cached: bool = Field(description="A cached result is returned instead (200)")
    result: Any = None
    completed_at: datetime | None = None


class JobOut(BaseModel):
    id: UUID
    user_id: UUID
    job_type: str
    status: JobStatus
    priority: int
    params: dict[str, Any]
    result: Any = None
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


class JobListOut(BaseModel):
    jobs: list[JobOut]
    total_count: int | None = Field(
        description="Matching jobs (offset pagination; null with cursor pagination)"
    )
    next_cursor: str | None = Field(
        description="Pass as cursor= for the next page; null at the end"
    )


class JobActionOut(BaseModel):
    job_id: UUID
    status: JobStatus


class LogOut(BaseModel):
    id: int
    job_id: UUID
    level: LogLevel
    message: str
    metadata: dict[str, Any]
    created_at: datetime


class LogListOut(BaseModel):
    logs: list[LogOut]
    total_count: int


class StatOut(BaseModel):
    job_type: str
    status: JobStatus
    job_count: int
    avg_duration_ms: float | None
    p50_duration_ms: float | None
    p95_duration_ms: float | None
    oldest_created_at: datetime
    newest_created_at: datetime


class StatsOut(BaseModel):
    stats: list[StatOut]


class ThroughputRowOut(BaseModel):
    bucket: datetime | None = Field(description="The UTC minute (null on per-type and total rows)")
    job_type: str | None = Field(description="The job type (null on per-minute and total rows)")
    completed: int
    failed: int
    cancelled: int
    expired: int
    p50_duration_ms: float | None = Field(description="Median run time of the completed jobs")
    p95_duration_ms: float | None


class ThroughputOut(BaseModel):
    minutes: int = Field(description="The window: jobs finished in the last this many minutes")
    per_minute: list[ThroughputRowOut] = Field(description="Minutes with a finish, ascending")
    per_type: list[ThroughputRowOut]
    total: ThroughputRowOut


class DepthRowOut(BaseModel):
    job_type: str
    status: JobStatus
    job_count: int


class DepthOut(BaseModel):
    depth: list[DepthRowOut]


class HealthOut(BaseModel):
    status: Literal["ok"]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail
