"""The endpoints. Each one maps the token to an identity, makes one client call
as that identity (one transaction with role and request.jwt.claims set), and
shapes the answer. No endpoint decides who may see or do what: the database
does, and its refusals come back as jobq exceptions (see responses.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any
from uuid import UUID

import anyio
import psycopg
from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime
from starlette.responses import Response

from jobq import errors
from jobq._ops import encode_cursor
from jobq.api.auth import AuthError, Identity
from jobq.api.caching import etag_of, matches_etag
from jobq.api.events import Closed
from jobq.api.responses import NO_STORE, JSONBody, dumps
from jobq.api.runtime import runtime
from jobq.api.schemas import (
    DEFAULT_CACHE_SECONDS,
    DEFAULT_DEDUPE_SECONDS,
    DepthOut,
    ErrorOut,
    HealthOut,
    JobActionOut,
    JobCreatedOut,
    JobIn,
    JobListOut,
    JobOut,
    JobStatus,
    LogLevel,
    LogListOut,
    OrderBy,
    OrderDir,
    StatsOut,
    ThroughputOut,
)
from jobq.client import AsyncClient

router = APIRouter()

PRIVATE_REVALIDATE = "private, no-cache"

bearer = HTTPBearer(
    auto_error=False,
    description=(
        "A Supabase-style JWT: a user token (role authenticated, aud, uuid sub) or a "
        "service_role key. `jobq token` mints development tokens."
    ),
)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Invalid input (refused by the database or malformed JSON)",
        401: "Missing, malformed, expired or refused token; or an anon token",
        403: "Not allowed (e.g. acting for another user)",
        404: "No such job, or not yours (the same answer either way)",
        409: "The job's state does not allow this",
        413: "Payload too large",
        422: "Wrong types or shape",
        429: "Per-user active job limit reached (see Retry-After)",
        503: "Database unavailable (see Retry-After)",
    }
    return {s: {"model": ErrorOut, "description": described[s]} for s in statuses}


COMMON = (400, 401, 403, 404, 413, 422, 429, 503)


# -- identity ---------------------------------------------------------------------


async def identity(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Identity:
    """The token's identity (401 when it is missing or refused)."""
    if credentials is None:
        raise AuthError("missing_token", "an Authorization: Bearer token is required")
    verifier = runtime(request).verifier
    if verifier.blocking:
        return await anyio.to_thread.run_sync(verifier.verify, credentials.credentials)
    return verifier.verify(credentials.credentials)


async def signed_in(ident: Annotated[Identity, Depends(identity)]) -> Identity:
    """An authenticated or service_role identity (anon: 401; the SQL refuses anon anyway)."""
    if ident.role == "anon":
        raise AuthError("anonymous", "this endpoint needs a user or service_role token")
    return ident


async def caller(request: Request, ident: Annotated[Identity, Depends(signed_in)]) -> AsyncClient:
    """The client acting as the token's identity: service_role, or the user."""
    _, client, _ = runtime(request).ready
    if ident.role == "authenticated":
        assert ident.user_id is not None
        return client.as_user(ident.user_id)
    return client


Caller = Annotated[AsyncClient, Depends(caller)]


# -- helpers ------------------------------------------------------------------------


def _json(
    request: Request,
    payload: Any,
    *,
    cache_control: str,
    status: int = 200,
    etag: bool = True,
    headers: dict[str, str] | None = None,
) -> Response:
    body = dumps(payload)
    all_headers = {"Cache-Control": cache_control, **(headers or {})}
    if etag:
        tag = etag_of(body)
        all_headers["ETag"] = tag
        if matches_etag(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers=all_headers)
    return JSONBody(body, status_code=status, headers=all_headers)


def _seconds(value: bool | float, default: float) -> timedelta | None:
    if value is False:
        return None
    return timedelta(seconds=default if value is True else value)


# -- jobs ---------------------------------------------------------------------------


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobCreatedOut,
    responses={
        200: {"model": JobCreatedOut, "description": "An equal job (dedupe) or result (cache)"},
        **_errors(*COMMON),
    },
    summary="Create a job (optionally deduplicated, or answered from the result cache)",
)
async def create_job(request: Request, body: JobIn, client: Caller) -> Response:
    cache_ttl = _seconds(body.cache, DEFAULT_CACHE_SECONDS)
    dedupe = _seconds(body.dedupe, DEFAULT_DEDUPE_SECONDS)
    payload: dict[str, Any]
    if cache_ttl is not None:
        hit = await client.get_cached_job_result(
            body.job_type, body.params, user_id=body.user_id, ttl=cache_ttl
        )
        if hit is not None:
            payload = {
                "job_id": hit.job_id,
                "status": "completed",
                "created": False,
                "cached": True,
                "result": hit.result,
                "completed_at": hit.completed_at,
            }
            return _json(
                request,
                payload,
                cache_control=NO_STORE,
                etag=False,
                headers={"Location": f"/jobs/{hit.job_id}"},
            )
    if dedupe is not None:
        if body.run_after is not None or "ttl_seconds" in body.model_fields_set:
            raise errors.InvalidInput("dedupe cannot be combined with run_after or ttl_seconds")
        found = await client.find_or_create_job(
            body.job_type,
            body.params,
            user_id=body.user_id,
            dedupe_window=dedupe,
            priority=body.priority,
            max_retries=body.max_retries,
        )
        job_id, status, created = found.job_id, found.status, found.created
    else:
        job_id = await client.create_job(
            body.job_type,
            body.params,
            user_id=body.user_id,
            priority=body.priority,
            max_retries=body.max_retries,
            run_after=body.run_after,
            ttl=None if body.ttl_seconds is None else timedelta(seconds=body.ttl_seconds),
        )
        status, created = "pending", True
    payload = {"job_id": job_id, "status": status, "created": created, "cached": False}
    return _json(
        request,
        payload,
        status=201 if created else 200,
        cache_control=NO_STORE,
        etag=False,
        headers={"Location": f"/jobs/{job_id}"},
    )


@router.get(
    "/jobs",
    response_model=JobListOut,
    responses=_errors(*COMMON),
    summary="List jobs: offset pagination with total_count, or cursor pagination",
)
async def list_jobs(
    request: Request,
    client: Caller,
    status: JobStatus | None = None,
    job_type: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    cursor: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Opaque: next_cursor of the previous page (empty: first page, no count)",
        ),
    ] = None,
    user_id: Annotated[
        UUID | None, Query(description="service_role: one user's jobs (default: everyone's)")
    ] = None,
    order_by: OrderBy = "created_at",
    order_dir: OrderDir = "DESC",
) -> Response:
    newest_first = order_by == "created_at" and order_dir.upper() == "DESC"
    payload: dict[str, Any]
    if cursor is not None:
        if offset or not newest_first:
            raise errors.InvalidInput(
                "cursor pagination is newest first (created_at DESC) and takes no offset"
            )
        page = await client.list_jobs_page(
            cursor=cursor or None, limit=limit, status=status, job_type=job_type, user_id=user_id
        )
        payload = {"jobs": page.jobs, "total_count": None, "next_cursor": page.next_cursor}
    else:
        listed = await client.list_jobs(
            user_id=user_id,
            status=status,
            job_type=job_type,
            limit=limit,
            offset=offset,
            order_by=order_by,
            order_dir=order_dir.upper(),
        )
        next_cursor = None
        if listed.jobs and newest_first and offset + len(listed.jobs) < listed.total_count:
            last = listed.jobs[-1]
            next_cursor = encode_cursor(last.created_at, last.id)
        payload = {
            "jobs": listed.jobs,
            "total_count": listed.total_count,
            "next_cursor": next_cursor,
        }
    return _json(request, payload, cache_control=PRIVATE_REVALIDATE)


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses={304: {"description": "Not modified (If-None-Match)"}, **_errors(*COMMON)},
    summary="A job's status, progress and result (ETag; private, max-age=5)",
)
async def get_job(request: Request, job_id: UUID, client: Caller) -> Response:
    job = await client.get_job(job_id)
    return _json(request, job, cache_control=runtime(request).rules.job_status)


@router.get(
    "/jobs/{job_id}/logs",
    response_model=LogListOut,
    responses=_errors(*COMMON),
    summary="A job's log lines, newest first, with full-text search and level filter",
)
async def get_logs(
    request: Request,
    job_id: UUID,
    client: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    q: Annotated[str | None, Query(description="Full-text search (websearch syntax)")] = None,
    level: LogLevel | None = None,
) -> Response:
    page = await client.get_logs(job_id, limit=limit, offset=offset, level=level, search=q)
    payload = {"logs": page.logs, "total_count": page.total_count}
    return _json(request, payload, cache_control=PRIVATE_REVALIDATE)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobActionOut,
    responses=_errors(*COMMON, 409),
    summary="Cancel a pending or running job",
)
async def cancel_job(request: Request, job_id: UUID, client: Caller) -> Response:
    status = await client.cancel_job(job_id)
    return _json(request, {"job_id": job_id, "status": status}, cache_control=NO_STORE, etag=False)


@router.post(
    "/jobs/{job_id}/retry",
    response_model=JobActionOut,
    responses=_errors(*COMMON, 409),
    summary="Send a failed job back to pending now",
)
async def retry_job(request: Request, job_id: UUID, client: Caller) -> Response:
    status = await client.retry_job(job_id)
    return _json(request, {"job_id": job_id, "status": status}, cache_control=NO_STORE, etag=False)


@router.get(
    "/stats",
    response_model=StatsOut,
    responses=_errors(*COMMON),
    summary="Counts and durations per job type and status (service_role: every user's)",
)
async def stats(
    request: Request,
    client: Caller,
    user_id: Annotated[UUID | None, Query(description="service_role: one user's only")] = None,
    since: Annotated[
        AwareDatetime | None, Query(description="Jobs created since (ISO 8601 with zone)")
    ] = None,
) -> Response:
    rows = await client.stats(user_id=user_id, since=since)
    return _json(request, {"stats": rows}, cache_control=PRIVATE_REVALIDATE)


@router.get(
    "/stats/throughput",
    response_model=ThroughputOut,
    responses=_errors(*COMMON),
    summary="Jobs finished per minute and per type, with p50/p95 run times",
)
async def throughput(
    request: Request,
    client: Caller,
    minutes: Annotated[int, Query(ge=1, le=1440, description="The window, in minutes")] = 60,
    user_id: Annotated[UUID | None, Query(description="service_role: one user's only")] = None,
) -> Response:
    found = await client.throughput(user_id=user_id, since=timedelta(minutes=minutes))
    payload = {
        "minutes": minutes,
        "per_minute": found.per_minute,
        "per_type": found.per_type,
        "total": found.total,
    }
    return _json(request, payload, cache_control=PRIVATE_REVALIDATE)


@router.get(
    "/stats/depth",
    response_model=DepthOut,
    responses=_errors(*COMMON),
    summary="Pending, processing and failed jobs by type across users (service_role only)",
)
async def depth(request: Request, client: Caller) -> Response:
    rows = await client.queue_depth()
    return _json(request, {"depth": rows}, cache_control=PRIVATE_REVALIDATE)


# -- events ---------------------------------------------------------------------------


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": (
                "Server-Sent Events: `event: job` frames whose data is the job_status_changed "
                "payload (job_id, user_id, status, progress_percent, ...) of the caller's jobs "
                "(service_role: everyone's); `event: resync` after a listener reconnection; "
                "`: keep-alive` comments."
            ),
        },
        **_errors(401, 503),
    },
    summary="Live status and progress of the caller's jobs",
)
async def events(request: Request, ident: Annotated[Identity, Depends(signed_in)]) -> Response:
    rt = runtime(request)
    _, _, hub = rt.ready
    user = ident.user_id if ident.role == "authenticated" else None
    sub = await hub.subscribe(user, timeout=rt.settings.pool_timeout)
    if sub is None:
        raise errors.DatabaseUnavailable("the event listener is not connected")
    keepalive = rt.settings.sse_keepalive
    # The stream lasts as long as the token: at its exp the client reconnects with a new one.
    exp = ident.claims.get("exp")
    ends_at = float(exp) if isinstance(exp, int | float) else None

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 3000\n: connected\n\n"
            while True:
                wait = keepalive
                if ends_at is not None:
                    left = ends_at - time.time()
                    if left <= 0:
                        yield 'event: token_expired\ndata: {"code":"token_expired"}\n\n'
                        return
                    wait = min(wait, left)
                item = await sub.next(wait)
                if isinstance(item, Closed):
                    return
                if item is not None:
                    yield item
                elif ends_at is None or time.time() < ends_at:
                    yield ": keep-alive\n\n"
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": NO_STORE, "X-Accel-Buffering": "no"},
    )


# -- health ---------------------------------------------------------------------------


@router.get(
    "/health",
    response_model=HealthOut,
    responses=_errors(503),
    summary="200 when the database answers, else 503",
)
async def health(request: Request) -> Response:
    rt = runtime(request)
    pool, _, _ = rt.ready
    try:
        async with pool.connection(timeout=rt.settings.pool_timeout) as conn:
            await conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise errors.DatabaseUnavailable(str(exc).strip() or "database unavailable") from exc
    return JSONBody(b'{"status":"ok"}')
