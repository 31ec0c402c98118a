"""The handlers the soak's worker processes run (``jobq worker soak.app:registry``).

Every execution of a handler is recorded in ``soak_executions`` of the soak's
database: a row when it starts, ``finished_at`` set when it finished its work
successfully (just before it returns). That is the handler's "side effect": a
job whose handler finished twice was executed twice, whatever its status says.

The work itself is a little CPU (hashing) and a little waiting, a few ms each,
sized by the job's params (drawn from the soak's seeded RNG). A few jobs fail on
purpose: ``flaky`` ones raise on their first attempt (and are retried),
``doomed`` ones fail for good (``JobFailed(retryable=False)``); ``talk`` ones
report progress and write a log line.

Recording goes through a small connection pool per worker process (sync and
async). Writes are idempotent (keyed on an execution id made here) and retried
through connection loss, so a PostgreSQL restart does not make the bookkeeping
lie: a recorded finish happened, an unrecorded one did not.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import uuid
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from jobq.handlers import JobCancelled, JobContext, JobFailed, Registry

registry = Registry()

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS soak_executions (
    exec_id     uuid PRIMARY KEY,
    job_id      uuid NOT NULL,
    attempt     int  NOT NULL,
    pid         int  NOT NULL,
    worker_id   text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS soak_executions_job ON soak_executions (job_id);
"""

_START = (
    "INSERT INTO soak_executions (exec_id, job_id, attempt, pid, worker_id)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (exec_id) DO NOTHING"
)
_FINISH = (
    "UPDATE soak_executions SET finished_at = coalesce(finished_at, clock_timestamp())"
    " WHERE exec_id = %s"
)

# How long a recording write keeps retrying through connection loss (a restart
# takes a few seconds; a handler that cannot record fails its attempt).
RECORD_RETRY_SECONDS = 60.0
_TRANSIENT = (psycopg.OperationalError, PoolTimeout)

_lock = threading.Lock()
_pool: ConnectionPool | None = None
_apool: AsyncConnectionPool | None = None


def _pool_kwargs() -> dict[str, Any]:
    return {
        "conninfo": os.environ["DATABASE_URL"],
        "min_size": 1,
        "max_size": 3,
        "kwargs": {"autocommit": True, "application_name": f"soak-app:{os.getpid()}"},
        "timeout": 10.0,
        "reconnect_timeout": 3600.0,
    }


def _sync_pool() -> ConnectionPool:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ConnectionPool(**_pool_kwargs(), open=True)
        return _pool


async def _async_pool() -> AsyncConnectionPool:
    global _apool
    if _apool is None:  # one event loop per worker process: no lock needed
        pool = AsyncConnectionPool(**_pool_kwargs(), open=False)
        await pool.open()
        _apool = pool
    return _apool


def _write(sql: str, args: tuple[Any, ...]) -> None:
    deadline = time.monotonic() + RECORD_RETRY_SECONDS
    delay = 0.05
    while True:
        try:
            with _sync_pool().connection() as conn:
                conn.execute(sql, args)
            return
        except _TRANSIENT:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


async def _awrite(sql: str, args: tuple[Any, ...]) -> None:
    deadline = time.monotonic() + RECORD_RETRY_SECONDS
    delay = 0.05
    while True:
        try:
            pool = await _async_pool()
            async with pool.connection() as conn:
                await conn.execute(sql, args)
            return
        except _TRANSIENT:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def _burn(ms: float) -> str:
    """About ``ms`` milliseconds of real CPU work (SHA-256 chains)."""
    digest = b"jobq-soak"
    end = time.perf_counter() + ms / 1000.0
    while time.perf_counter() < end:
        for _ in range(50):
            digest = hashlib.sha256(digest).digest()
    return digest.hex()[:16]


def _talk(ctx: JobContext) -> None:
    """Some jobs report progress and a log line (queued, written by the worker)."""
    if ctx.params.get("talk"):
        ctx.progress(50, "half way")
        ctx.log("info", "soak step", attempt=ctx.attempt)


def _check_outcome(ctx: JobContext) -> None:
    """The deliberate failures: doomed jobs fail for good, flaky ones on attempt 1."""
    if ctx.params.get("doomed"):
        raise JobFailed("doomed by the soak", code="SOAK_DOOMED", retryable=False)
    if ctx.params.get("flaky") and ctx.attempt == 1:
        raise RuntimeError("flaky: fails on its first attempt")


def _result(ctx: JobContext, exec_id: uuid.UUID, digest: str) -> dict[str, Any]:
    return {
        "exec_id": str(exec_id),
        "pid": os.getpid(),
        "attempt": ctx.attempt,
        "digest": digest,
    }


def _start_args(ctx: JobContext, exec_id: uuid.UUID) -> tuple[Any, ...]:
    return (exec_id, ctx.job.id, ctx.attempt, os.getpid(), ctx.worker_id)


@registry.handler("soak.cpu")
def cpu(ctx: JobContext) -> dict[str, Any]:
    """Sync handler (thread pool): hashes for params.cpu_ms, sleeps params.wait_ms."""
    exec_id = uuid.uuid4()
    _write(_START, _start_args(ctx, exec_id))
    digest = _burn(float(ctx.params.get("cpu_ms", 1)))
    _talk(ctx)
    time.sleep(float(ctx.params.get("wait_ms", 0)) / 1000.0)
    ctx.raise_if_cancelled()  # a sync handler must notice cancellation itself
    _check_outcome(ctx)
    _write(_FINISH, (exec_id,))
    return _result(ctx, exec_id, digest)


@registry.handler("soak.io")
async def io(ctx: JobContext) -> dict[str, Any]:
    """Async handler: waits params.wait_ms, hashes params.cpu_ms (cancelled outright)."""
    exec_id = uuid.uuid4()
    await _awrite(_START, _start_args(ctx, exec_id))
    await asyncio.sleep(float(ctx.params.get("wait_ms", 0)) / 1000.0)
    _talk(ctx)
    digest = _burn(float(ctx.params.get("cpu_ms", 1)))
    if ctx.cancelled:
        raise JobCancelled(f"job {ctx.job.id} was cancelled")
    _check_outcome(ctx)
    await _awrite(_FINISH, (exec_id,))
    return _result(ctx, exec_id, digest)
