"""pg_cron mode: `jobq schedule install` registers the spec's schedules and they run.

Needs a server with pg_cron in shared_preload_libraries (CI's PostgreSQL 15, set
up by .ci/setup-pg-cron). Elsewhere the tests skip, unless JOBQ_REQUIRE_PG_CRON=1
(CI sets it) turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from jobq import schedule
from jobq.handlers import Registry
from jobq.worker import Worker

SPEC_SCHEDULES = {
    "retry-failed-jobs": "*/5 * * * *",
    "cleanup-old-jobs": "0 2 * * *",
    "expire-stale-jobs": "*/10 * * * *",
    "detect-stuck-jobs": "*/15 * * * *",
    "log-partitions": "30 1 * * *",
}


@pytest.fixture
def cron_db(conn: psycopg.Connection[Any], database_url: str) -> Iterator[str]:
    loaded = conn.execute("SELECT current_setting('cron.database_name', true)").fetchone()
    if not (loaded and loaded[0]):
        if os.environ.get("JOBQ_REQUIRE_PG_CRON") == "1":
            pytest.fail("pg_cron is required here (JOBQ_REQUIRE_PG_CRON=1) but is not loaded")
        pytest.skip("pg_cron is not loaded on this server")
    yield database_url
    with psycopg.connect(database_url, autocommit=True) as c:
        schedule.remove_pg_cron(c)  # never leave cron jobs pointing at a dropped database


def jobq(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "jobq", *args], env=env, capture_output=True, text=True, check=False
    )


def cron_jobs(url: str) -> dict[str, str]:
    with psycopg.connect(url, autocommit=True) as c:
        jobs = schedule.pg_cron_jobs(c) or []
    return {j["jobname"].split("jobq-")[1].split("@")[0]: j["schedule"] for j in jobs}


def test_install_is_idempotent_and_status_says_pg_cron(cron_db: str) -> None:
    for _ in range(2):
        done = jobq(cron_db, "schedule", "install")
        assert done.returncode == 0, done.stderr
    assert cron_jobs(cron_db) == SPEC_SCHEDULES
    status = jobq(cron_db, "schedule", "status")
    assert "mode: pg_cron" in status.stdout

    removed = jobq(cron_db, "schedule", "remove")
    assert removed.returncode == 0, removed.stderr
    assert cron_jobs(cron_db) == {}
    assert "mode: in-process" in jobq(cron_db, "schedule", "status").stdout


def test_a_scheduled_maintenance_run_really_happens(
    cron_db: str, conn: psycopg.Connection[Any]
) -> None:
    assert jobq(cron_db, "schedule", "install").returncode == 0
    job = conn.execute(
        "SELECT create_job('11111111-1111-1111-1111-111111111111', 'x', '{}')"
    ).fetchone()[0]
    conn.execute("SELECT claim_jobs('w', 1)")
    conn.execute("SELECT fail_job(%s, 'boom')", (job,))
    conn.execute("UPDATE job_queue SET next_retry_at = now() - interval '1 second'")
    # pg_cron 1.4 ticks at most once a minute: run retry-failed-jobs every minute
    with psycopg.connect(cron_db, autocommit=True) as c:
        cron_conn, target, _ = schedule._connect_cron(c)
    with cron_conn:
        cron_conn.execute(
            "SELECT cron.alter_job(jobid, schedule := '* * * * *') FROM cron.job"
            " WHERE database = %s AND jobname LIKE 'jobq-retry-failed-jobs%%'",
            (target,),
        )
        listener = psycopg.connect(cron_db, autocommit=True)
        listener.execute("LISTEN job_status_changed")
        # the retry sends a notification: wait for it (up to two cron ticks)
        got = [n for n in listener.notifies(timeout=130, stop_after=1)]
        listener.close()
        assert got, "pg_cron did not run retry-failed-jobs within two minutes"
        assert '"status": "pending"' in got[0].payload
        # pg_cron records the outcome just after the command commits
        deadline = time.monotonic() + 30
        while True:
            runs = cron_conn.execute(
                "SELECT d.status FROM cron.job_run_details d JOIN cron.job j USING (jobid)"
                " WHERE j.database = %s AND j.jobname LIKE 'jobq-retry-failed-jobs%%'"
                " AND d.status IN ('succeeded', 'failed')",
                (target,),
            ).fetchall()
            if runs or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert runs
    assert set(runs) == {("succeeded",)}
    assert conn.execute("SELECT status FROM job_queue").fetchone() == ("pending",)


def test_workers_leave_maintenance_to_pg_cron(cron_db: str) -> None:
    assert jobq(cron_db, "schedule", "install").returncode == 0
    tasks = schedule.every(schedule.maintenance_tasks(), "@every 1s")
    worker = Worker(Registry(), url=cron_db, maintenance=tasks, poll_interval=0.2)

    async def main() -> None:
        run = asyncio.create_task(worker.run())
        try:
            while worker.maintenance_mode is None:
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await run

    asyncio.run(asyncio.wait_for(main(), 60))
    assert worker.maintenance_mode == "pg_cron"
    assert sum(worker.maintenance_runs.values()) == 0
