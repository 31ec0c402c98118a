"""Handlers that worker processes under test run (``jobq worker worker_apps:registry``).

Each handler records every execution in the ``executions`` table of the test
database, so a test can count how often a job really ran.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from psycopg_pool import ConnectionPool

from jobq.handlers import JobContext, Registry

registry = Registry()
_pool: ConnectionPool | None = None

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS executions (
    job_id  uuid NOT NULL,
    attempt int NOT NULL,
    pid     int NOT NULL,
    at      timestamptz NOT NULL DEFAULT clock_timestamp()
)"""


def _record(ctx: JobContext) -> None:
    global _pool
    if _pool is None:
        _pool = ConnectionPool(
            os.environ["DATABASE_URL"], min_size=1, max_size=4, kwargs={"autocommit": True}
        )
    with _pool.connection() as conn:
        conn.execute(
            "INSERT INTO executions (job_id, attempt, pid) VALUES (%s, %s, %s)",
            (ctx.job.id, ctx.attempt, os.getpid()),
        )


@registry.handler()
def record(ctx: JobContext) -> dict[str, Any]:
    """Runs once per job: records itself and returns."""
    _record(ctx)
    return {"pid": os.getpid()}


@registry.handler()
async def hang_first_attempt(ctx: JobContext) -> dict[str, Any]:
    """Hangs on its first attempt (until killed or cancelled); later attempts finish."""
    await asyncio.to_thread(_record, ctx)
    if ctx.attempt == 1:
        await asyncio.Event().wait()
    return {"attempt": ctx.attempt}


@registry.handler()
async def takes(ctx: JobContext) -> dict[str, Any]:
    """Takes params.seconds (the work itself, not test timing)."""
    await asyncio.to_thread(_record, ctx)
    await asyncio.sleep(float(ctx.params.get("seconds", 0)))
    return {"slept": ctx.params.get("seconds", 0)}
