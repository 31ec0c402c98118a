"""A write of an earlier attempt never lands on the next one.

The race: attempt 1 of a job ends here and its write (completion, failure or
progress) is on its way to the database when the job is rescued (stuck
detection, then retry) and this same worker claims it again. Holder and status
checks pass (the worker holds the job, which is processing), so before the
writes named their attempt, the late write completed, failed or reported on
attempt 2. Each test holds one write back until attempt 2 runs here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg
import pytest

from jobq import worker as worker_module
from jobq.handlers import JobContext, JobFailed, Registry
from jobq.queries import get as query
from jobq.worker import Worker

USER = "11111111-1111-1111-1111-111111111111"


def rescue(conn: psycopg.Connection[Any], job: UUID) -> None:
    """Stuck detection fails the job and the retry makes it pending again, at once."""
    with conn.transaction():
        conn.execute(
            "UPDATE job_queue SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (job,)
        )
        conn.execute("SELECT detect_stuck_jobs(interval '1 minute'), retry_failed_jobs()")


def row(conn: psycopg.Connection[Any], job: UUID) -> tuple[Any, ...]:
    found = conn.execute(
        "SELECT status, attempts, result, progress_percent, progress_message, error_message"
        " FROM job_queue WHERE id = %s",
        (job,),
    ).fetchone()
    assert found is not None
    return tuple(found)


async def until(predicate: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("write", ["complete", "fail", "progress"])
def test_a_late_write_of_attempt_1_does_not_land_on_attempt_2(
    conn: psycopg.Connection[Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    write: str,
) -> None:
    conn.execute("UPDATE job_queue_config SET retry_base_delay = '0'")
    reg = Registry()
    first_go = threading.Event()
    second_running, second_go = threading.Event(), threading.Event()

    @reg.handler()
    def racy(ctx: JobContext) -> dict[str, int]:
        if ctx.attempt >= 2:
            second_running.set()
            second_go.wait(15)
            return {"attempt": ctx.attempt}
        if write == "fail":
            raise JobFailed("attempt 1 failed", code="FIRST")
        if write == "progress":
            ctx.progress(42, "attempt 1")
            first_go.wait(15)  # still running when it is rescued
        return {"attempt": ctx.attempt}

    worker = Worker(reg, url=database_url, poll_interval=0.1, heartbeat_interval=0.2)
    job_holder: list[UUID] = []
    held = asyncio.Event()  # the write of attempt 1 is in flight
    released = asyncio.Event()  # attempt 2 runs: let it through

    def held_back(params: Any, name: str) -> bool:
        return name == {"fail": "fail_job", "progress": "update_job_progress"}.get(write) and (
            bool(job_holder) and params.get("job_id") == job_holder[0]
        )

    real_best_effort = worker_module._best_effort

    async def slow_best_effort(
        c: psycopg.AsyncConnection[Any], sql: Any, params: dict[str, Any]
    ) -> bool:
        name = next((n for n in ("fail_job", "update_job_progress") if sql == query(n)), "")
        if held_back(params, name) and not released.is_set():
            held.set()
            await released.wait()
        return await real_best_effort(c, sql, params)

    monkeypatch.setattr(worker_module, "_best_effort", slow_best_effort)
    real_complete = worker._complete

    async def slow_complete(c: psycopg.AsyncConnection[Any], batch: Any) -> None:
        if write == "complete" and job_holder and job_holder[0] in batch and not released.is_set():
            held.set()
            await released.wait()
        await real_complete(c, batch)

    worker._complete = slow_complete  # type: ignore[method-assign]

    async def scenario() -> None:
        created = conn.execute("SELECT create_job(%s, 'racy')", (USER,)).fetchone()
        assert created is not None
        job = UUID(str(created[0]))
        job_holder.append(job)
        await asyncio.wait_for(held.wait(), 15)
        rescue(conn, job)
        assert await asyncio.to_thread(second_running.wait, 15), "attempt 2 never ran here"
        assert row(conn, job)[:2] == ("processing", 2)
        released.set()  # the write of attempt 1 arrives now
        await asyncio.sleep(1.0)
        status, attempts, result, percent, message, error = row(conn, job)
        assert (status, attempts) == ("processing", 2), f"attempt 2 was ended: {error or result}"
        assert (percent, message) == (0, None), "attempt 1's progress is not attempt 2's"
        first_go.set()
        second_go.set()
        await until(lambda: row(conn, job)[0] == "completed")
        assert row(conn, job)[2] == {"attempt": 2}

    async def main() -> None:
        task = asyncio.create_task(worker.run())
        try:
            await worker.wait_started()
            await scenario()
        finally:
            first_go.set()
            second_go.set()
            worker.stop()
            await task

    asyncio.run(main())
