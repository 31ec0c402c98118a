"""Regressions the chaos soak found in the worker's result writing.

psycopg maps SQLSTATE classes 53, 54 and 55 to ``OperationalError``, the class
the worker treated as "connection trouble, retry". jobq's refusals 55000 (job
no longer held), 54000 (too large) and 53400 are in those classes, so one
refused progress, log or failure write was retried for ever, and every
completion queued behind it with it: the worker kept claiming and running jobs
that were never completed, stuck detection failed them (STUCK) and after
max_retries + 1 such rounds they failed for good. A result PostgreSQL refuses
(NaN, a NUL character) killed the flusher task outright, to the same effect.

Each test makes one write be refused, then checks that the worker still
completes the next job.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import psycopg

from jobq.handlers import JobContext, JobFailed, Registry
from jobq.worker import Worker

USER = "11111111-1111-1111-1111-111111111111"


def run_with(worker: Worker, scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        task = asyncio.create_task(worker.run())
        try:
            await worker.wait_started()
            await scenario()
        finally:
            worker.stop()
            await task

    asyncio.run(main())


def create(conn: psycopg.Connection[Any], job_type: str, params: str = "{}") -> UUID:
    row = conn.execute("SELECT create_job(%s, %s, %s::jsonb)", (USER, job_type, params)).fetchone()
    assert row is not None
    return UUID(str(row[0]))


async def until(conn: psycopg.Connection[Any], sql: str, params: Any = None, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while True:
        row = await asyncio.to_thread(lambda: conn.execute(sql, params).fetchone())
        if row and row[0]:
            return row[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {sql} {params}")
        await asyncio.sleep(0.05)


def status(conn: psycopg.Connection[Any], job: UUID) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT status, error_code, result FROM job_queue WHERE id = %s", (job,)
    ).fetchone()
    assert row is not None
    return tuple(row)


def _registry(after_cancel: Callable[[JobContext], Any]) -> tuple[Registry, threading.Event]:
    """``slow`` runs until its job is cancelled, then does ``after_cancel`` (a handler
    that finishes its step before it looks at ctx.cancelled); ``quick`` just returns."""
    reg = Registry()
    running = threading.Event()

    @reg.handler()
    def slow(ctx: JobContext) -> Any:
        running.set()
        while not ctx.cancelled:
            time.sleep(0.01)
        return after_cancel(ctx)

    @reg.handler()
    def quick(ctx: JobContext) -> dict[str, bool]:
        return {"ok": True}

    return reg, running


def _cancel_then_run_another(
    conn: psycopg.Connection[Any], database_url: str, after_cancel: Callable[[JobContext], Any]
) -> None:
    reg, running = _registry(after_cancel)
    worker = Worker(reg, url=database_url, poll_interval=0.2, heartbeat_interval=0.2)

    async def scenario() -> None:
        job = create(conn, "slow")
        assert await asyncio.to_thread(running.wait, 15)
        conn.execute("SELECT cancel_job(%s)", (job,))
        nxt = create(conn, "quick")
        await until(conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (nxt,))
        assert status(conn, job)[0] == "cancelled"

    run_with(worker, scenario)


def test_progress_of_a_cancelled_job_does_not_block_later_results(conn, database_url) -> None:
    """update_job_progress refused with 55000 (the job was cancelled meanwhile)."""

    def report_progress(ctx: JobContext) -> None:
        ctx.progress(90, "finishing the step")

    _cancel_then_run_another(conn, database_url, report_progress)


def test_failure_of_a_cancelled_job_does_not_block_later_results(conn, database_url) -> None:
    """fail_job refused with 55000 (the job was cancelled meanwhile)."""

    def fail(ctx: JobContext) -> None:
        raise JobFailed("gave up", code="GAVE_UP")

    _cancel_then_run_another(conn, database_url, fail)


def test_progress_message_over_the_cap_does_not_block_results(conn, database_url) -> None:
    """update_job_progress refused with 54000 (message over 1,000 characters)."""
    reg = Registry()

    @reg.handler()
    def chatty(ctx: JobContext) -> dict[str, bool]:
        ctx.progress(50, "x" * 2000)
        return {"ok": True}

    worker = Worker(reg, url=database_url, poll_interval=0.2)

    async def scenario() -> None:
        first = create(conn, "chatty")
        await until(conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (first,))
        second = create(conn, "chatty")
        await until(conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (second,))

    run_with(worker, scenario)


def test_a_result_postgres_refuses_fails_that_job_only(conn, database_url) -> None:
    """NaN and a NUL character are valid for json.dumps but not for jsonb: the job
    fails (not retryable, RESULT_NOT_JSON) and the worker keeps completing others."""
    reg = Registry()

    @reg.handler()
    def odd(ctx: JobContext) -> Any:
        return {"nan": float("nan")} if ctx.params["kind"] == "nan" else {"s": "a\x00b"}

    @reg.handler()
    def quick(ctx: JobContext) -> dict[str, bool]:
        return {"ok": True}

    worker = Worker(reg, url=database_url, poll_interval=0.2)

    async def scenario() -> None:
        nan = create(conn, "odd", '{"kind": "nan"}')
        nul = create(conn, "odd", '{"kind": "nul"}')
        for job in (nan, nul):
            await until(
                conn, "SELECT status = 'failed' FROM job_queue WHERE id = %s", (job,), timeout=15
            )
        nxt = create(conn, "quick")
        await until(conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (nxt,))
        for job in (nan, nul):
            assert status(conn, job)[:2] == ("failed", "RESULT_NOT_JSON")
            row = conn.execute(
                "SELECT next_retry_at FROM job_queue WHERE id = %s", (job,)
            ).fetchone()
            assert row == (None,), "a result that cannot be stored will not get better"

    run_with(worker, scenario)


def test_a_stale_completion_does_not_complete_the_next_attempt(conn, database_url) -> None:
    """A completion still queued when its job was rescued (STUCK, retried) and claimed
    again by the same worker belongs to the earlier attempt: it must not complete the
    new one (the soak saw this after PostgreSQL outages longer than the stuck timeout,
    when completions waited in the outbox while stuck detection ran)."""
    conn.execute("UPDATE job_queue_config SET retry_base_delay = '0'")
    reg = Registry()
    second_running, second_go = threading.Event(), threading.Event()

    @reg.handler()
    def twice(ctx: JobContext) -> dict[str, int]:
        if ctx.attempt >= 2:
            second_running.set()
            second_go.wait(15)
        return {"attempt": ctx.attempt}

    worker = Worker(reg, url=database_url, poll_interval=0.2, heartbeat_interval=0.2)
    writes_blocked = True
    real_flush = worker._flush_once

    async def flaky_flush() -> None:
        if writes_blocked:  # as if the database were out of reach for this worker
            raise psycopg.OperationalError("simulated: connection lost")
        await real_flush()

    worker._flush_once = flaky_flush  # type: ignore[method-assign]

    async def scenario() -> None:
        nonlocal writes_blocked
        job = create(conn, "twice")
        # attempt 1 ran; its completion waits in the outbox; stuck detection rescues it
        await until(conn, "SELECT attempts = 1 FROM job_queue WHERE id = %s", (job,))
        deadline = time.monotonic() + 15
        while job not in worker._outbox.completions:
            assert time.monotonic() < deadline, "attempt 1 never finished"
            await asyncio.sleep(0.02)
        conn.execute(
            "UPDATE job_queue SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (job,)
        )
        conn.execute("SELECT detect_stuck_jobs(interval '1 minute'), retry_failed_jobs()")
        # the same worker claims attempt 2 and runs it; now the database is back
        assert await asyncio.to_thread(second_running.wait, 15)
        writes_blocked = False
        await asyncio.sleep(1.0)  # time for the stale completion to be (wrongly) written
        assert status(conn, job)[0] == "processing", "attempt 2 is still running"
        second_go.set()
        await until(conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (job,))
        assert status(conn, job)[2] == {"attempt": 2}

    run_with(worker, scenario)


def test_an_earlier_attempt_still_running_here_does_not_complete_the_next(
    conn, database_url
) -> None:
    """Attempt 1 was rescued (STUCK) while its sync handler, which does not look at
    ctx.cancelled, kept running; this worker then claimed attempt 2. When attempt 1
    returns, its result must not complete attempt 2, and attempt 2 must stay tracked
    (heartbeats, concurrency) until it ends."""
    conn.execute("UPDATE job_queue_config SET retry_base_delay = '0'")
    reg = Registry()
    first_running, first_go = threading.Event(), threading.Event()
    second_running, second_go = threading.Event(), threading.Event()

    @reg.handler()
    def stubborn(ctx: JobContext) -> dict[str, int]:
        started, go = (first_running, first_go) if ctx.attempt == 1 else (second_running, second_go)
        started.set()
        go.wait(15)
        return {"attempt": ctx.attempt}

    worker = Worker(reg, url=database_url, poll_interval=0.2, heartbeat_interval=0.2)

    async def scenario() -> None:
        job = create(conn, "stubborn")
        assert await asyncio.to_thread(first_running.wait, 15)
        conn.execute(
            "UPDATE job_queue SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (job,)
        )
        conn.execute("SELECT detect_stuck_jobs(interval '1 minute'), retry_failed_jobs()")
        assert await asyncio.to_thread(second_running.wait, 15)
        first_go.set()  # attempt 1 returns now
        await asyncio.sleep(1.0)
        assert status(conn, job)[0] == "processing", "attempt 2 is still running"
        assert job in worker._running, "attempt 2 is still tracked"
        second_go.set()
        await until(conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (job,))
        assert status(conn, job)[2] == {"attempt": 2}

    run_with(worker, scenario)


def test_worker_recovers_at_once_from_repeatedly_killed_connections(conn, database_url) -> None:
    """pg_terminate_backend of a worker's connections, then again on the ones that
    replaced them (a restart right after a failover, say): the next job must still
    complete within seconds. The pool's connection check backed off 1, 2, 4, 8, 16 s
    between dead connections, so claims, heartbeats and completions stalled for up
    to the pool timeout (30 s) and running jobs were failed STUCK meanwhile."""
    reg = Registry()

    @reg.handler()
    def quick(ctx: JobContext) -> dict[str, bool]:
        return {"ok": True}

    worker = Worker(reg, url=database_url, poll_interval=0.2, heartbeat_interval=0.2)
    pattern = f"jobq-worker:{worker.worker_id}"[:63] + "%"

    def pool_backends() -> set[int]:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s"
            " AND datname = current_database()",
            (pattern,),
        ).fetchall()
        return {r[0] for r in rows}

    async def scenario() -> None:
        first = create(conn, "quick")
        await until(conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (first,))
        killed: set[int] = set()
        for _ in range(4):
            # wait for the pool to have replaced what we killed, then kill again
            deadline = time.monotonic() + 30
            while not (pool_backends() - killed):
                assert time.monotonic() < deadline, "the pool never reconnected"
                await asyncio.sleep(0.05)
            victims = pool_backends() - killed
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (list(victims),)
            )
            killed |= victims
        t0 = time.monotonic()
        job = create(conn, "quick")
        await until(
            conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (job,), timeout=30
        )
        took = time.monotonic() - t0
        print(f"completed {took:.1f} s after the last kill")
        assert took < 5.0, f"the worker took {took:.1f} s to complete a job"

    run_with(worker, scenario)


def test_a_finished_job_waiting_to_be_written_keeps_its_heartbeat(conn, database_url) -> None:
    """A job whose handler returned but whose completion cannot be written yet (the
    database was away for this worker) is still held: its heartbeat goes on, so stuck
    detection does not run it again while the completion waits."""
    reg = Registry()

    @reg.handler()
    def quick(ctx: JobContext) -> dict[str, bool]:
        return {"ok": True}

    worker = Worker(reg, url=database_url, poll_interval=0.2, heartbeat_interval=0.2)
    writes_blocked = True
    real_flush = worker._flush_once

    async def flaky_flush() -> None:
        if writes_blocked:
            raise psycopg.OperationalError("simulated: connection lost")
        await real_flush()

    worker._flush_once = flaky_flush  # type: ignore[method-assign]

    async def scenario() -> None:
        nonlocal writes_blocked
        job = create(conn, "quick")
        deadline = time.monotonic() + 15
        while job not in worker._outbox.completions:
            assert time.monotonic() < deadline, "the handler never finished"
            await asyncio.sleep(0.02)
        finished = conn.execute("SELECT clock_timestamp()").fetchone()
        assert finished is not None
        await until(
            conn, "SELECT heartbeat_at > %s FROM job_queue WHERE id = %s", (finished[0], job)
        )
        writes_blocked = False
        await until(conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (job,))

    run_with(worker, scenario)


def test_running_jobs_keep_their_heartbeat_during_the_shutdown_grace(conn, database_url) -> None:
    """On SIGTERM the worker gives running jobs ``shutdown_grace`` seconds; they are
    still held and must keep their heartbeat meanwhile, or a grace longer than the
    stuck timeout has them failed STUCK and run again elsewhere while they finish."""
    reg = Registry()
    running, go = threading.Event(), threading.Event()

    @reg.handler()
    def long(ctx: JobContext) -> dict[str, bool]:
        running.set()
        go.wait(15)
        return {"ok": True}

    worker = Worker(
        reg, url=database_url, poll_interval=0.2, heartbeat_interval=0.2, shutdown_grace=10
    )

    async def scenario() -> None:
        job = create(conn, "long")
        assert await asyncio.to_thread(running.wait, 15)
        worker.stop()  # what SIGTERM does
        stopped = conn.execute("SELECT clock_timestamp()").fetchone()
        assert stopped is not None
        await until(
            conn, "SELECT heartbeat_at > %s FROM job_queue WHERE id = %s", (stopped[0], job)
        )
        go.set()
        await until(conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (job,))

    run_with(worker, scenario)


def test_a_job_claimed_as_the_shutdown_begins_gets_the_grace_too(conn, database_url) -> None:
    """SIGTERM while a claim is on its way back: the jobs it brings start after the
    shutdown began waiting for the running ones. They must get the grace as well, not
    be released at once while their (sync) handlers run to the end anyway - that ran
    them twice (the soak counted it as "handler finished after the SIGTERM grace")."""
    reg = Registry()
    a_running = threading.Event()
    runs: list[str] = []

    @reg.handler()
    def first(ctx: JobContext) -> dict[str, bool]:
        a_running.set()
        time.sleep(0.5)
        return {"ok": True}

    @reg.handler()
    async def second(ctx: JobContext) -> dict[str, bool]:
        await asyncio.sleep(0.3)  # an async handler is cancelled outright when stopped
        runs.append(str(ctx.job.id))
        return {"ok": True}

    worker = Worker(reg, url=database_url, poll_interval=0.1, shutdown_grace=10)
    real_claim = worker._claim
    armed = False

    async def claim(limit: int) -> Any:
        jobs = await real_claim(limit)
        if armed and jobs:
            worker.stop()  # SIGTERM arrives during the claim's round trip
            await asyncio.sleep(0.2)
        return jobs

    worker._claim = claim  # type: ignore[method-assign]

    async def scenario() -> None:
        nonlocal armed
        a = create(conn, "first")
        assert await asyncio.to_thread(a_running.wait, 15)
        armed = True
        b = create(conn, "second")
        await asyncio.wait_for(worker._stopping.wait(), 15)
        await until(conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (a,))
        await until(conn, "SELECT status <> 'processing' FROM job_queue WHERE id = %s", (b,))
        assert status(conn, b)[:2] == ("completed", None), "b ran within the grace"

    run_with(worker, scenario)
    assert len(runs) == 1, runs


def test_a_late_notification_about_an_earlier_attempt_does_not_stop_the_next(
    conn, database_url
) -> None:
    """Attempt 1 failed (retryable) and the same worker claimed attempt 2 before its
    listener delivered attempt 1's "failed" notification. That late notification must
    not stop attempt 2: the worker stopped it as "lost", wrote nothing, and the job sat
    in processing without a heartbeat until stuck detection ran it again (the soak saw
    it on flaky jobs, with no fault nearby)."""
    reg = Registry()
    running, go = threading.Event(), threading.Event()
    seen_cancel: list[bool] = []

    @reg.handler()
    def steady(ctx: JobContext) -> dict[str, int]:
        running.set()
        go.wait(15)
        seen_cancel.append(ctx.cancelled)
        ctx.raise_if_cancelled()
        return {"attempt": ctx.attempt}

    worker = Worker(reg, url=database_url, poll_interval=0.2, heartbeat_interval=0.2)

    async def scenario() -> None:
        job = create(conn, "steady")
        assert await asyncio.to_thread(running.wait, 15)
        attempts = worker._running[job].job.attempts
        # what the listener hands over when an earlier attempt's event comes late
        worker._on_notify(
            json.dumps({"job_id": str(job), "status": "failed", "attempts": attempts - 1})
        )
        go.set()
        await until(conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (job,))

    run_with(worker, scenario)
    assert seen_cancel == [False]
