"""The client operations, written once for Client and AsyncClient.

An operation is a generator (sans-I/O): it validates its arguments, yields a
:class:`Query` (a named query of ``queries.sql`` and its parameters), receives
the rows as dicts, and returns the typed result. The sync and async clients
only differ in how they drive it::

    query = next(op)                 # argument checks run here, before any SQL
    while True:
        rows = execute(query)        # on the client's connection, as its identity
        try:
            query = op.send(rows)
        except StopIteration as done:
            return done.value

Nothing here decides anything about jobs: limits, dedup, cache, ownership and
argument ranges are checked by the SQL functions the queries call.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias, TypeVar
from uuid import UUID

from psycopg.types.json import Jsonb

from jobq.errors import InvalidInput, NotFound
from jobq.models import (
    DepthRow,
    Job,
    JobLog,
    JobStatus,
    StatRow,
    Throughput,
    ThroughputRow,
    from_row,
)

T = TypeVar("T")
Row: TypeAlias = dict[str, Any]
UserId: TypeAlias = UUID | str
JobId: TypeAlias = UUID | str

DEFAULT_TTL = timedelta(hours=24)
DEFAULT_DEDUPE_WINDOW = timedelta(minutes=5)
DEFAULT_CACHE_TTL = timedelta(hours=1)


@dataclass(frozen=True)
class Query:
    """One named query of ``queries.sql`` and its ``%(name)s`` parameters."""

    name: str
    params: Mapping[str, Any]


Op: TypeAlias = Generator[Query, list[Row], T]


# --------------------------------------------------------------------------
# Public result and input types
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class NewJob:
    """One job of a bulk :meth:`Client.create_jobs` call."""

    job_type: str
    params: Mapping[str, Any] | None = None
    priority: int = 0
    max_retries: int = 3
    run_after: datetime | None = None
    ttl: timedelta | None = DEFAULT_TTL  # None: never expires
    user_id: UserId | None = None


@dataclass(frozen=True)
class DedupResult:
    job_id: UUID
    created: bool
    status: JobStatus


@dataclass(frozen=True)
class CachedResult:
    job_id: UUID
    result: Any
    completed_at: datetime


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    total_count: int


@dataclass(frozen=True)
class CursorPage:
    jobs: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class LogPage:
    logs: list[JobLog]
    total_count: int


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def _same(text: str) -> str:
    return text


def jsonb(value: Any, what: str) -> Jsonb:
    """``value`` as a jsonb parameter; InvalidInput (before any SQL) if it is not JSON."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON-serialisable: {exc}") from exc
    # Serialised once, here; the dumper passes the text through unchanged.
    return Jsonb(text, dumps=_same)


def _optional_jsonb(value: Any, what: str) -> Jsonb | None:
    return None if value is None else jsonb(value, what)


def _one(rows: list[Row]) -> Row:
    if len(rows) != 1:  # every single-row query returns exactly one row
        raise RuntimeError(f"expected one row, got {len(rows)}")
    return rows[0]


def encode_cursor(created_at: datetime, job_id: UUID) -> str:
    """Opaque keyset cursor: urlsafe base64 of ``<created_at ISO>|<id>``."""
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The (created_at, id) a cursor points after; InvalidInput if it is malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
        stamp, _, ident = raw.partition("|")
        created_at = datetime.fromisoformat(stamp)
        job_id = UUID(ident)
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise InvalidInput(f"malformed cursor {cursor!r}") from exc
    if created_at.tzinfo is None:
        raise InvalidInput(f"malformed cursor {cursor!r}")
    return created_at, job_id


def _new_job(job: NewJob | Mapping[str, Any]) -> NewJob:
    if isinstance(job, NewJob):
        return job
    if not isinstance(job, Mapping):
        raise InvalidInput(f"a job must be a NewJob or a mapping, got {type(job).__name__}")
    try:
        return NewJob(**job)
    except TypeError as exc:
        fields = [f.name for f in dataclasses.fields(NewJob)]
        raise InvalidInput(f"bad job {dict(job)!r}: {exc} (fields: {fields})") from exc


def _bulk_element(job: NewJob) -> dict[str, Any]:
    """One element of create_jobs' p_jobs array (keys as the SQL function reads them)."""
    element: dict[str, Any] = {
        "job_type": job.job_type,
        "params": {} if job.params is None else job.params,
        "priority": job.priority,
        "max_retries": job.max_retries,
        # seconds; null = never expires (an absent key would mean the 24 h default)
        "ttl": None if job.ttl is None else job.ttl.total_seconds(),
    }
    if job.run_after is not None:
        element["run_after"] = job.run_after.isoformat()
    if job.user_id is not None:  # absent, not null: the SQL tests for the key
        element["user_id"] = str(job.user_id)
    return element


# --------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------
def create_job(
    job_type: str,
    params: Mapping[str, Any] | None,
    *,
    user_id: UserId | None,
    priority: int,
    max_retries: int,
    run_after: datetime | None,
    ttl: timedelta | None,
) -> Op[UUID]:
    rows = yield Query(
        "create_job",
        {
            "user_id": user_id,
            "job_type": job_type,
            "params": jsonb({} if params is None else params, "params"),
            "priority": priority,
            "max_retries": max_retries,
            "run_after": run_after,
            "ttl": ttl,
        },
    )
    job_id: UUID = _one(rows)["job_id"]
    return job_id


def create_jobs(
    jobs: Sequence[NewJob | Mapping[str, Any]], *, user_id: UserId | None
) -> Op[list[UUID]]:
    if isinstance(jobs, str | bytes | Mapping):
        raise InvalidInput("jobs must be a sequence of NewJob or mappings")
    elements = [_bulk_element(_new_job(job)) for job in jobs]
    rows = yield Query("create_jobs", {"user_id": user_id, "jobs": jsonb(elements, "params")})
    return [row["job_id"] for row in rows]


def find_or_create_job(
    job_type: str,
    params: Mapping[str, Any] | None,
    *,
    user_id: UserId | None,
    dedupe_window: timedelta,
    priority: int,
    max_retries: int,
    run_after: datetime | None = None,
    ttl: timedelta | None = DEFAULT_TTL,
) -> Op[DedupResult]:
    rows = yield Query(
        "find_or_create_job",
        {
            "user_id": user_id,
            "job_type": job_type,
            "params": jsonb({} if params is None else params, "params"),
            "dedupe_window": dedupe_window,
            "priority": priority,
            "max_retries": max_retries,
            "run_after": run_after,
            "ttl": ttl,
        },
    )
    return from_row(DedupResult, _one(rows))


def get_cached_job_result(
    job_type: str, params: Mapping[str, Any] | None, *, user_id: UserId | None, ttl: timedelta
) -> Op[CachedResult | None]:
    rows = yield Query(
        "get_cached_job_result",
        {
            "user_id": user_id,
            "job_type": job_type,
            "params": jsonb({} if params is None else params, "params"),
            "ttl": ttl,
        },
    )
    return from_row(CachedResult, rows[0]) if rows else None


def get_job(job_id: JobId) -> Op[Job]:
    rows = yield Query("get_job", {"job_id": job_id})
    if not rows:
        # Same answer for "no such job" and "not yours" (RLS hides it), like the SQL's P0002.
        raise NotFound(f"job {job_id} not found", sqlstate="P0002")
    return from_row(Job, rows[0])


MAX_GET_JOBS = 1000


def get_jobs(job_ids: Sequence[JobId]) -> Op[dict[UUID, Job]]:
    ids = list(job_ids)
    if len(ids) > MAX_GET_JOBS:
        raise InvalidInput(f"at most {MAX_GET_JOBS} job ids per call, got {len(ids)}")
    try:
        uuids = [i if isinstance(i, UUID) else UUID(str(i)) for i in ids]
    except ValueError as exc:
        raise InvalidInput(f"malformed job id: {exc}") from exc
    rows = yield Query("get_jobs", {"job_ids": uuids})
    return {job.id: job for job in (from_row(Job, r) for r in rows)}


def _user_jobs_params(
    *,
    user_id: UserId | None,
    status: str | None,
    job_type: str | None,
    limit: int,
    offset: int = 0,
    order_by: str = "created_at",
    order_dir: str = "DESC",
    cursor: tuple[datetime, UUID] | None = None,
    params_contains: Mapping[str, Any] | None = None,
    result_contains: Any = None,
    with_total: bool = True,
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "status": status,
        "job_type": job_type,
        "limit": limit,
        "offset": offset,
        "order_by": order_by,
        "order_dir": order_dir,
        "cursor_created_at": None if cursor is None else cursor[0],
        "cursor_id": None if cursor is None else cursor[1],
        "params_contains": _optional_jsonb(params_contains, "params_contains"),
        "result_contains": _optional_jsonb(result_contains, "result_contains"),
        "with_total": with_total,
    }


def list_jobs(
    *,
    user_id: UserId | None,
    status: str | None,
    job_type: str | None,
    limit: int,
    offset: int,
    order_by: str,
    order_dir: str,
    params_contains: Mapping[str, Any] | None,
    result_contains: Any,
) -> Op[JobPage]:
    params = _user_jobs_params(
        user_id=user_id,
        status=status,
        job_type=job_type,
        limit=limit,
        offset=offset,
        order_by=order_by,
        order_dir=order_dir,
        params_contains=params_contains,
        result_contains=result_contains,
    )
    rows = yield Query("get_user_jobs", params)
    if rows:
        return JobPage([from_row(Job, r) for r in rows], int(rows[0]["total_count"]))
    if offset == 0:
        return JobPage([], 0)
    # Past the last page the function returns no row, hence no total_count:
    # ask for the first row of the same filter to learn it.
    rows = yield Query("get_user_jobs", {**params, "limit": 1, "offset": 0})
    return JobPage([], int(rows[0]["total_count"]) if rows else 0)


def list_jobs_page(
    *,
    cursor: str | None,
    limit: int,
    status: str | None,
    job_type: str | None,
    user_id: UserId | None,
) -> Op[CursorPage]:
    after = None if cursor is None else decode_cursor(cursor)
    rows = yield Query(
        "get_user_jobs",
        # a cursor walk never counts, its first page included (a count reads
        # every matching row: the cost keyset pagination exists to avoid)
        _user_jobs_params(
            user_id=user_id,
            status=status,
            job_type=job_type,
            limit=limit,
            cursor=after,
            with_total=False,
        ),
    )
    jobs = [from_row(Job, r) for r in rows]
    next_cursor = None
    if jobs and len(jobs) >= limit:
        next_cursor = encode_cursor(jobs[-1].created_at, jobs[-1].id)
    return CursorPage(jobs, next_cursor)


def get_logs(
    job_id: JobId, *, limit: int, offset: int, level: str | None, search: str | None
) -> Op[LogPage]:
    params = {
        "job_id": job_id,
        "user_id": None,  # the SQL acts for the caller: a user sees only their jobs' logs
        "limit": limit,
        "offset": offset,
        "level": level,
        "search": search,
    }
    rows = yield Query("get_job_logs", params)
    if rows:
        return LogPage([from_row(JobLog, r) for r in rows], int(rows[0]["total_count"]))
    if offset == 0:
        return LogPage([], 0)
    rows = yield Query("get_job_logs", {**params, "limit": 1, "offset": 0})
    return LogPage([], int(rows[0]["total_count"]) if rows else 0)


def cancel_job(job_id: JobId) -> Op[str]:
    rows = yield Query("cancel_job", {"job_id": job_id})
    status: str = _one(rows)["status"]
    return status


def retry_job(job_id: JobId) -> Op[str]:
    rows = yield Query("retry_job", {"job_id": job_id})
    status: str = _one(rows)["status"]
    return status


def stats(*, user_id: UserId | None, since: datetime | None) -> Op[list[StatRow]]:
    rows = yield Query("get_job_queue_stats", {"user_id": user_id, "since": since})
    return [from_row(StatRow, r) for r in rows]


def throughput(*, user_id: UserId | None, since: timedelta) -> Op[Throughput]:
    rows = yield Query("get_job_throughput", {"user_id": user_id, "since": since})
    parsed = [from_row(ThroughputRow, r) for r in rows]
    (total,) = [r for r in parsed if r.bucket is None and r.job_type is None]  # always one
    return Throughput(
        since=since,
        per_minute=[r for r in parsed if r.bucket is not None],
        per_type=[r for r in parsed if r.bucket is None and r.job_type is not None],
        total=total,
    )


def queue_depth() -> Op[list[DepthRow]]:
    rows = yield Query("get_queue_depth", {})
    return [from_row(DepthRow, r) for r in rows]
