"""The worker in this process (asyncio): cancellation, retries, bad input, timeouts,
periodic jobs, the maintenance leader. Waits are on events, never sleeps."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from jobq import schedule
from jobq.handlers import JobContext, JobFailed, Registry
from jobq.worker import Worker

USER = "11111111-1111-1111-1111-111111111111"


def make_worker(registry: Registry, url: str, **kw: Any) -> Worker:
    kw.setdefault("poll_interval", 0.2)
    kw.setdefault("heartbeat_interval", 0.5)
    kw.setdefault("shutdown_grace", 5)
    return Worker(registry, url=url, **kw)


def run_with(workers: list[Worker], scenario: Callable[[], Awaitable[None]]) -> None:
    """Run the workers while ``scenario`` runs, then stop them cleanly."""

    async def main() -> None:
        tasks = [asyncio.create_task(w.run()) for w in workers]
        try:
            await asyncio.gather(*(w.wait_started() for w in workers))
            await scenario()
        finally:
            for w in workers:
                w.stop()
            await asyncio.gather(*tasks)

    asyncio.run(main())


async def eventually(predicate: Callable[[], bool], timeout: float = 30) -> None:
    """Wait until ``predicate()`` holds (state in this process), yielding to the workers."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def until(
    conn: psycopg.Connection[Any], sql: str, params: Any = None, timeout: float = 30
) -> Any:
    """Poll ``sql`` until it returns a truthy first column, yielding to the workers."""
    deadline = time.monotonic() + timeout
    while True:
        row = await asyncio.to_thread(lambda: conn.execute(sql, params).fetchone())
        if row and row[0]:
            return row[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {sql}")
        await asyncio.sleep(0.05)  # yield; the condition, not the sleep, ends the wait


def create(
    conn: psycopg.Connection[Any], job_type: str, params: str = "{}", max_retries: int = 3
) -> UUID:
    row = conn.execute(
        "SELECT create_job(%s, %s, %s::jsonb, p_max_retries := %s)",
        (USER, job_type, params, max_retries),
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


@pytest.fixture
def fast_retries(conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE job_queue_config SET retry_base_delay = '0'")


def test_async_handler_sees_cancellation_promptly(conn, database_url) -> None:
    reg = Registry()
    stopped = threading.Event()
    seen: dict[str, float] = {}
    started_evt: asyncio.Event | None = None

    @reg.handler()
    async def long(ctx: JobContext) -> None:
        assert started_evt is not None
        started_evt.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen["at"] = time.monotonic()
            stopped.set()
            raise

    worker = make_worker(reg, database_url, heartbeat_interval=30)  # LISTEN must do it

    async def scenario() -> None:
        nonlocal started_evt
        started_evt = asyncio.Event()
        job = create(conn, "long")
        await asyncio.wait_for(started_evt.wait(), 30)
        t0 = time.monotonic()
        conn.execute("SELECT cancel_job(%s)", (job,))
        await asyncio.wait_for(asyncio.to_thread(stopped.wait), 10)
        seen["latency"] = seen["at"] - t0
        assert conn.execute("SELECT status FROM job_queue WHERE id = %s", (job,)).fetchone() == (
            "cancelled",
        )

    run_with([worker], scenario)
    print(f"cancel-to-handler latency: {seen['latency'] * 1000:.1f} ms")
    assert worker.completed == 0
    assert worker.failed == 0


def test_sync_handler_polls_cancellation_without_listen(conn, database_url) -> None:
    """Behind a transaction pooler (no LISTEN), the heartbeat reports the cancel."""
    reg = Registry()
    running, observed = threading.Event(), threading.Event()

    @reg.handler()
    def polling(ctx: JobContext) -> None:
        running.set()
        while not ctx.cancelled:
            observed.wait(0.01)  # the work loop of a handler that checks ctx.cancelled
        observed.set()

    worker = make_worker(reg, database_url, listen=False, heartbeat_interval=0.2)

    async def scenario() -> None:
        job = create(conn, "polling")
        await asyncio.to_thread(running.wait, 30)
        conn.execute("SELECT cancel_job(%s)", (job,))
        assert await asyncio.to_thread(observed.wait, 10)

    run_with([worker], scenario)


def test_retries_follow_backoff_and_stop_at_max_retries(conn, database_url, fast_retries) -> None:
    reg = Registry()
    attempts: list[int] = []

    @reg.handler()
    def flaky(ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        raise JobFailed(f"attempt {ctx.attempt} failed", code="E_FLAKY")

    tasks = schedule.every(schedule.maintenance_tasks(), "@every 1s")
    worker = make_worker(reg, database_url, maintenance=tasks)

    async def scenario() -> None:
        job = create(conn, "flaky", max_retries=2)
        await until(
            conn,
            "SELECT status = 'failed' AND next_retry_at IS NULL AND attempts = 3"
            " FROM job_queue WHERE id = %s",
            (job,),
        )

    run_with([worker], scenario)
    assert attempts == [1, 2, 3]
    row = conn.execute("SELECT error_code, error_message, max_retries FROM job_queue").fetchone()
    assert row == ("E_FLAKY", "attempt 3 failed", 2)


def test_backoff_delays_the_next_attempt(conn, database_url) -> None:
    """With the default 10 s base delay a failed job is not retried at once."""
    reg = Registry()

    @reg.handler()
    def fails(ctx: JobContext) -> None:
        raise RuntimeError("nope")

    worker = make_worker(
        reg, database_url, maintenance=schedule.every(schedule.maintenance_tasks(), "@every 1s")
    )

    async def scenario() -> None:
        job = create(conn, "fails")
        await until(conn, "SELECT status = 'failed' FROM job_queue WHERE id = %s", (job,))
        delay = conn.execute(
            "SELECT extract(epoch FROM next_retry_at - updated_at) FROM job_queue"
        ).fetchone()
        assert 9 <= float(delay[0]) <= 11
        # retry-failed-jobs runs every second, but the job is not due yet
        runs = worker.maintenance_runs["retry-failed-jobs"]
        await eventually(lambda: worker.maintenance_runs["retry-failed-jobs"] >= runs + 2)
        assert conn.execute("SELECT status, attempts FROM job_queue").fetchone() == ("failed", 1)

    run_with([worker], scenario)


@pytest.mark.parametrize(
    ("job_type", "code"),
    [
        ("no_such_handler", "UNKNOWN_JOB_TYPE"),
        ("returns_set", "RESULT_NOT_JSON"),
        ("validates", "INVALID_PARAMS"),
    ],
)
def test_bad_input_fails_the_job_and_the_worker_keeps_running(
    conn, database_url, job_type, code
) -> None:
    reg = Registry()

    @reg.handler()
    def returns_set(ctx: JobContext) -> Any:
        return {1, 2, 3}

    @reg.handler()
    def validates(ctx: JobContext) -> Any:
        if not isinstance(ctx.params.get("n"), int):
            raise JobFailed("params.n must be an integer", code="INVALID_PARAMS", retryable=False)
        return ctx.params["n"]

    @reg.handler()
    def ok(ctx: JobContext) -> str:
        return "fine"

    worker = make_worker(reg, database_url)

    async def scenario() -> None:
        bad = create(conn, job_type, '{"n": "x"}')
        await until(conn, "SELECT status = 'failed' FROM job_queue WHERE id = %s", (bad,))
        good = create(conn, "ok")
        await until(conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (good,))

    run_with([worker], scenario)
    row = conn.execute(
        "SELECT error_code, next_retry_at IS NULL FROM job_queue WHERE job_type = %s", (job_type,)
    ).fetchone()
    assert row == (code, True), "a failure no retry can fix is final"


def test_timeout_fails_the_attempt(conn, database_url) -> None:
    reg = Registry()

    @reg.handler(timeout=0.3)
    async def slow(ctx: JobContext) -> None:
        await asyncio.Event().wait()

    worker = make_worker(reg, database_url)

    async def scenario() -> None:
        job = create(conn, "slow", max_retries=0)
        await until(conn, "SELECT status = 'failed' FROM job_queue WHERE id = %s", (job,))

    run_with([worker], scenario)
    assert conn.execute("SELECT error_code FROM job_queue").fetchone() == ("TIMEOUT",)


def test_progress_logs_and_result_are_written(conn, database_url) -> None:
    reg = Registry()

    @reg.handler()
    async def steps(ctx: JobContext) -> dict[str, int]:
        for i in range(1, 5):
            ctx.progress(i * 25, f"step {i}")
            ctx.log("info", f"did step {i}", step=i)
        return {"steps": 4}

    worker = make_worker(reg, database_url)
    listener = psycopg.connect(database_url, autocommit=True)
    listener.execute("LISTEN job_status_changed")

    async def scenario() -> None:
        job = create(conn, "steps")
        await until(conn, "SELECT status = 'completed' FROM job_queue WHERE id = %s", (job,))

    run_with([worker], scenario)
    assert conn.execute("SELECT result, progress_percent FROM job_queue").fetchone() == (
        {"steps": 4},
        100,
    )
    logs = conn.execute("SELECT message, metadata FROM job_log ORDER BY id").fetchall()
    assert logs == [(f"did step {i}", {"step": i}) for i in range(1, 5)]
    statuses = [n.payload for n in listener.notifies(timeout=0.5)]
    assert any('"status": "completed"' in p for p in statuses)
    listener.close()


def test_periodic_job_enqueued_once_per_tick_across_workers(conn, database_url) -> None:
    reg = Registry()
    reg.periodic("@every 1s", "tick", {"source": "test"})

    @reg.handler()
    def tick(ctx: JobContext) -> str:
        return ctx.params["_jobq_tick"]

    workers = [
        make_worker(reg, database_url, leader_retry=0.2, run_maintenance=False) for _ in range(3)
    ]

    async def scenario() -> None:
        await until(
            conn, "SELECT count(DISTINCT params->>'_jobq_tick') >= 4 FROM job_queue", timeout=30
        )
        # leadership moves: stop the leader, another takes over and keeps ticking
        leader = next(w for w in workers if w.is_leader)
        leader.stop()
        before = conn.execute("SELECT count(*) FROM job_queue").fetchone()[0]
        await until(conn, "SELECT count(*) >= %s FROM job_queue", (before + 3,), timeout=30)

    run_with(workers, scenario)
    per_tick = conn.execute(
        "SELECT params->>'_jobq_tick', count(*) FROM job_queue GROUP BY 1 HAVING count(*) > 1"
    ).fetchall()
    assert per_tick == [], "exactly one job per tick"
    assert sum(w.is_leader for w in workers) >= 1


def test_exactly_one_maintenance_leader(conn, database_url) -> None:
    reg = Registry()
    workers = [make_worker(reg, database_url, leader_retry=0.2) for _ in range(3)]

    async def scenario() -> None:
        await until(
            conn,
            "SELECT count(*) = 1 FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid"
            " WHERE l.locktype = 'advisory' AND l.granted"
            " AND a.application_name LIKE 'jobq-leader:%%'",
        )
        await eventually(lambda: any(w.is_leader for w in workers))
        assert sum(w.is_leader for w in workers) == 1

    run_with(workers, scenario)


def test_status_reports_in_process_mode_and_the_leader(conn, database_url) -> None:
    reg = Registry()
    worker = make_worker(reg, database_url, worker_id="the-leader")

    async def scenario() -> None:
        await until(
            conn,
            "SELECT count(*) = 1 FROM pg_stat_activity"
            " WHERE application_name = 'jobq-leader:the-leader'",
        )
        await until(
            conn, "SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
        st = await asyncio.to_thread(
            schedule.status, psycopg.connect(database_url, autocommit=True)
        )
        assert st.mode == "in-process"
        assert st.leader == "jobq-leader:the-leader"

    run_with([worker], scenario)


def test_expire_and_cleanup_run_in_process(conn, database_url) -> None:
    conn.execute(
        "SELECT create_job(%s, 'never_claimed', '{}', p_ttl := interval '1 second')", (USER,)
    )
    conn.execute(
        "UPDATE job_queue SET expires_at = now() - interval '1 second',"
        " run_after = now() + interval '1 day'"
    )
    reg = Registry()
    tasks = schedule.every(schedule.maintenance_tasks(cleanup_after=timedelta(days=7)), "@every 1s")
    worker = make_worker(reg, database_url, maintenance=tasks, job_types=["nothing"])

    async def scenario() -> None:
        await until(conn, "SELECT status = 'expired' FROM job_queue")

    run_with([worker], scenario)
