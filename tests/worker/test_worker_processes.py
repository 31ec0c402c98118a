"""Real worker processes against real PostgreSQL: nothing lost, nothing run twice."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import psycopg

USER = "11111111-1111-1111-1111-111111111111"


def enqueue(conn: psycopg.Connection[Any], job_type: str, n: int, params: str = "{}") -> None:
    conn.execute(
        """SELECT count(*) FROM create_jobs(NULL, (
             SELECT jsonb_agg(jsonb_build_object('job_type', %s::text, 'user_id', %s::text,
                                                 'params', %s::jsonb, 'max_retries', 3))
               FROM generate_series(1, %s)))""",
        (job_type, USER, params, n),
    )


def assert_each_completed_once(conn: psycopg.Connection[Any], n: int) -> None:
    statuses = dict(conn.execute("SELECT status, count(*) FROM job_queue GROUP BY 1").fetchall())
    assert statuses == {"completed": n}
    runs = conn.execute(
        "SELECT count(*), count(DISTINCT job_id), max(c) FROM"
        " (SELECT job_id, count(*) c FROM executions GROUP BY 1) e"
    ).fetchone()
    assert runs == (n, n, 1), "every job ran exactly once"


def test_four_processes_drain_5000_jobs_each_exactly_once(conn, workers, waiter) -> None:
    enqueue(conn, "record", 5000)
    procs = [workers.start("--concurrency", "8") for _ in range(4)]
    waiter.until_sql(
        "SELECT count(*) = 5000 FROM job_queue WHERE status = 'completed'", timeout=240
    )
    assert_each_completed_once(conn, 5000)
    pids = {r[0] for r in conn.execute("SELECT DISTINCT pid FROM executions")}
    assert pids <= {p.pid for p in procs}
    assert len(pids) >= 2, "the work was shared between processes"


def test_kill_9_mid_job_is_rescued_by_another_worker(conn, workers, waiter) -> None:
    fast = [
        "--stuck-timeout",
        "3",
        "--maintenance-every",
        "@every 1s",
        "--heartbeat-interval",
        "0.5",
    ]
    victim = workers.start(*fast, "--worker-id", "victim")
    waiter.until_sql(
        "SELECT count(*) = 1 FROM pg_stat_activity"
        " WHERE application_name LIKE 'jobq-leader:victim%'"
    )
    conn.execute("SELECT create_job(%s, 'hang_first_attempt', '{}')", (USER,))
    waiter.until_sql("SELECT count(*) = 1 FROM executions WHERE attempt = 1")
    job = conn.execute("SELECT worker_id, status FROM job_queue").fetchone()
    assert job == ("victim", "processing")

    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    workers.start(*fast, "--worker-id", "rescuer")

    waiter.until_sql("SELECT status = 'completed' FROM job_queue", timeout=60)
    row = conn.execute("SELECT worker_id, attempts, result FROM job_queue").fetchone()
    assert row == ("rescuer", 2, {"attempt": 2})
    # at-least-once: the killed attempt ran, then the rescue; the job completed once
    assert conn.execute("SELECT array_agg(attempt ORDER BY attempt) FROM executions").fetchone()[
        0
    ] == [1, 2]


def test_sigterm_finishes_or_releases_running_jobs(conn, workers, waiter) -> None:
    enqueue(conn, "takes", 3, '{"seconds": 0.2}')
    enqueue(conn, "takes", 3, '{"seconds": 300}')
    proc = workers.start("--concurrency", "10", "--shutdown-grace", "2")
    waiter.until_sql("SELECT count(*) = 6 FROM executions")
    waiter.until_sql("SELECT count(*) = 3 FROM job_queue WHERE status = 'completed'")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0

    rows = conn.execute(
        "SELECT params->>'seconds', status, attempts, error_code FROM job_queue ORDER BY 1, 2"
    ).fetchall()
    assert rows == [("0.2", "completed", 1, None)] * 3 + [("300", "pending", 0, "RELEASED")] * 3

    # nothing lost: another worker picks the released jobs up
    conn.execute("UPDATE job_queue SET params = '{\"seconds\": 0}' WHERE status = 'pending'")
    workers.start()
    waiter.until_sql("SELECT count(*) = 6 FROM job_queue WHERE status = 'completed'")


def test_worker_survives_postgres_restart(
    conn, workers, waiter, restart_postgres: Callable[[], None]
) -> None:
    enqueue(conn, "takes", 300, '{"seconds": 0.02}')
    workers.start("--concurrency", "5", "--stuck-timeout", "20", "--maintenance-every", "@every 1s")
    waiter.until_sql("SELECT count(*) >= 50 FROM job_queue WHERE status = 'completed'")
    restart_postgres()
    conn = psycopg.connect(waiter.url, autocommit=True)
    waiter.until_sql("SELECT count(*) = 300 FROM job_queue WHERE status = 'completed'", timeout=120)
    assert (
        conn.execute(
            "SELECT max(c) FROM (SELECT count(*) c FROM executions GROUP BY job_id) e"
        ).fetchone()[0]
        == 1
    )
    conn.close()
