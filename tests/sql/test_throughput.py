"""get_job_throughput: finished jobs per minute, per type and in all, with p50/p95 run times.

Jobs are driven through the real functions (create_job, start_job,
complete_job/fail_job/cancel_job), then their timestamps are moved as admin
(``completed_at`` and ``started_at`` are plain columns once the job has
finished), never by sleeping. The plan test seeds a queue shaped like a live
one and checks that the all-users call reads idx_job_queue_cleanup, not the
table.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from .helpers import (
    Conn,
    Param,
    acting,
    expect_error,
    explain_prepared,
    function_source,
    parameterize,
    scalar,
    scans,
    statement_of,
    used_indexes,
)

Row = dict[str, Any]


def _job(conn: Conn, user: uuid.UUID, job_type: str, outcome: str) -> uuid.UUID:
    """A job of ``user`` taken to ``outcome`` (completed, failed, cancelled, expired or pending)."""
    job_id = scalar(
        conn, "select create_job(%s, %s, %s::jsonb)", (user, job_type, json.dumps({"t": job_type}))
    )
    if outcome == "expired":
        conn.execute("update job_queue set status = 'expired' where id = %s", (job_id,))
        return uuid.UUID(str(job_id))
    if outcome == "cancelled":
        conn.execute("select cancel_job(%s)", (job_id,))
        return uuid.UUID(str(job_id))
    if outcome == "pending":
        return uuid.UUID(str(job_id))
    conn.execute("select * from start_job(%s, 'w1')", (job_id,))
    if outcome == "completed":
        conn.execute("select complete_job(%s, '{}', 'w1')", (job_id,))
    elif outcome == "failed":
        conn.execute("select fail_job(%s, 'boom', 'E1', false, 'w1')", (job_id,))
    elif outcome != "processing":
        raise ValueError(outcome)
    return uuid.UUID(str(job_id))


def _finished_at(conn: Conn, job_id: uuid.UUID, at: datetime, run_ms: float | None = None) -> None:
    """Move a finished job's completed_at to ``at`` (and its run time to ``run_ms``)."""
    conn.execute(
        "update job_queue set completed_at = %s,"
        " started_at = coalesce(%s::timestamptz - make_interval(secs => %s / 1000.0), started_at)"
        " where id = %s",
        (at, at if run_ms is not None else None, run_ms, job_id),
    )


def _throughput(conn: Conn, query: str, params: Any = None) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def _minute(conn: Conn, minutes_ago: int) -> datetime:
    now: datetime = scalar(conn, "select date_trunc('minute', now(), 'UTC')")
    return now - timedelta(minutes=minutes_ago)


@pytest.fixture
def users() -> tuple[uuid.UUID, uuid.UUID]:
    return uuid.uuid4(), uuid.uuid4()


def test_buckets_types_and_total(conn: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, _ = users
    m5, m2 = _minute(conn, 5), _minute(conn, 2)
    # five minutes ago: three completed "resize" runs of 100, 200 and 300 ms, one failure
    for ms in (100, 200, 300):
        _finished_at(conn, _job(conn, a, "resize", "completed"), m5 + timedelta(seconds=10), ms)
    _finished_at(conn, _job(conn, a, "resize", "failed"), m5 + timedelta(seconds=20), 5000)
    # two minutes ago: one completed "email" of 1 s, one cancelled, one expired
    _finished_at(conn, _job(conn, a, "email", "completed"), m2 + timedelta(seconds=1), 1000)
    _finished_at(conn, _job(conn, a, "email", "cancelled"), m2 + timedelta(seconds=2))
    _finished_at(conn, _job(conn, a, "resize", "expired"), m2 + timedelta(seconds=3))
    # unfinished jobs are not throughput
    _job(conn, a, "resize", "pending")
    _job(conn, a, "resize", "processing")

    rows = _throughput(conn, "select * from get_job_throughput(null)")
    minutes = [r for r in rows if r["bucket"] is not None]
    types = [r for r in rows if r["bucket"] is None and r["job_type"] is not None]
    totals = [r for r in rows if r["bucket"] is None and r["job_type"] is None]

    assert [(r["bucket"], r["job_type"]) for r in minutes] == [(m5, None), (m2, None)]
    five, two = minutes
    assert (five["completed"], five["failed"], five["cancelled"], five["expired"]) == (3, 1, 0, 0)
    assert (two["completed"], two["failed"], two["cancelled"], two["expired"]) == (1, 0, 1, 1)
    # durations are those of completed runs only (the 5 s failure is left out)
    assert five["p50_duration_ms"] == pytest.approx(200)
    assert five["p95_duration_ms"] == pytest.approx(290)
    assert two["p50_duration_ms"] == pytest.approx(1000)

    by_type = {r["job_type"]: r for r in types}
    assert list(by_type) == ["email", "resize"]
    assert (by_type["resize"]["completed"], by_type["resize"]["failed"]) == (3, 1)
    assert by_type["resize"]["expired"] == 1
    assert (by_type["email"]["completed"], by_type["email"]["cancelled"]) == (1, 1)
    assert by_type["email"]["p95_duration_ms"] == pytest.approx(1000)

    assert len(totals) == 1
    total = totals[0]
    assert (total["completed"], total["failed"], total["cancelled"], total["expired"]) == (
        4,
        1,
        1,
        1,
    )
    assert total["p50_duration_ms"] == pytest.approx(250)
    # the rows come in that order: minutes ascending, then types, then the total
    assert rows == minutes + types + totals


def test_buckets_are_utc_minutes_whatever_the_session_time_zone(
    conn: Conn, users: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, _ = users
    conn.execute("set timezone = 'Asia/Kathmandu'")  # UTC+05:45
    at = _minute(conn, 3) + timedelta(seconds=59)
    _finished_at(conn, _job(conn, a, "resize", "completed"), at, 10)
    rows = _throughput(conn, "select * from get_job_throughput(null) where bucket is not null")
    assert [r["bucket"] for r in rows] == [_minute(conn, 3)]
    assert rows[0]["bucket"].astimezone(UTC).second == 0


def test_the_window_is_p_since(conn: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, _ = users
    _finished_at(conn, _job(conn, a, "resize", "completed"), _minute(conn, 30), 10)
    _finished_at(conn, _job(conn, a, "resize", "completed"), _minute(conn, 90), 10)
    _finished_at(conn, _job(conn, a, "resize", "completed"), _minute(conn, 60 * 25), 10)

    def total(since: str) -> int:
        return int(
            scalar(
                conn,
                "select completed from get_job_throughput(null, %s::interval)"
                " where bucket is null and job_type is null",
                (since,),
            )
        )

    assert total("10 minutes") == 0
    assert total("1 hour") == 1  # the default window
    assert total("2 hours") == 2
    assert total("1 day") == 2  # 25 hours ago is outside the largest window


def test_an_idle_window_still_has_its_total_row(conn: Conn) -> None:
    rows = _throughput(conn, "select * from get_job_throughput(null)")
    assert rows == [
        {
            "bucket": None,
            "job_type": None,
            "completed": 0,
            "failed": 0,
            "cancelled": 0,
            "expired": 0,
            "p50_duration_ms": None,
            "p95_duration_ms": None,
        }
    ]


def test_a_failed_job_retried_since_is_not_counted(
    conn: Conn, users: tuple[uuid.UUID, uuid.UUID]
) -> None:
    a, _ = users
    job_id = _job(conn, a, "resize", "failed")
    conn.execute("select retry_job(%s)", (job_id,))
    rows = _throughput(conn, "select failed from get_job_throughput(null) where bucket is null")
    assert rows == [{"failed": 0}]


@pytest.mark.parametrize("since", ["0", "-1 minute", "25 hours", None])
def test_bad_windows_are_refused(conn: Conn, since: str | None) -> None:
    query = "select * from get_job_throughput(null, %s::interval)"
    err = expect_error(conn, "22023", query, (since,))
    assert "p_since" in str(err)


def test_users_see_only_their_own_jobs(conn: Conn, users: tuple[uuid.UUID, uuid.UUID]) -> None:
    a, b = users
    for _ in range(2):
        _job(conn, a, "resize", "completed")
    _job(conn, b, "resize", "completed")
    query = "select completed from get_job_throughput(%s) where bucket is null and job_type is null"
    with acting(conn, "authenticated", a):
        assert scalar(conn, query, (None,)) == 2  # NULL means the caller
        assert scalar(conn, query, (a,)) == 2
        expect_error(conn, "42501", query, (b,))
    with acting(conn, "authenticated", b):
        assert scalar(conn, query, (None,)) == 1
    with acting(conn, "service_role"):
        assert scalar(conn, query, (None,)) == 3  # NULL means every user
        assert scalar(conn, query, (b,)) == 1
    with acting(conn, "anon"):
        expect_error(conn, "42501", query, (None,))


# ---------------------------------------------------------------------------
# The plan: a bounded range scan of idx_job_queue_cleanup
# ---------------------------------------------------------------------------
N_JOBS = 40_000

# 40k jobs of 400 users over 8 days, mostly finished; ~250 finished in the last hour.
SEED = f"""
INSERT INTO public.job_queue (user_id, job_type, status, params, result, progress_percent,
    attempts, worker_id, heartbeat_at, started_at, completed_at, created_at, updated_at)
SELECT md5('user' || (i % 400))::uuid,
       (ARRAY['resize', 'email', 'report', 'import'])[1 + i % 4],
       s.status, '{{}}'::jsonb,
       CASE WHEN s.status = 'completed' THEN '{{}}'::jsonb END,
       CASE WHEN s.status = 'completed' THEN 100 ELSE 0 END,
       CASE WHEN s.status = 'pending' THEN 0 ELSE 1 END,
       CASE WHEN s.status = 'processing' THEN 'w1' END,
       CASE WHEN s.status = 'processing' THEN now() END,
       CASE WHEN s.status <> 'pending' THEN t.at - interval '2 seconds' END,
       CASE WHEN s.status NOT IN ('pending', 'processing') THEN t.at END,
       t.at - interval '3 seconds', t.at
  FROM generate_series(1, {N_JOBS}) AS i,
  LATERAL (SELECT CASE WHEN i % 100 < 85 THEN 'completed' WHEN i % 100 < 90 THEN 'failed'
                       WHEN i % 100 < 94 THEN 'cancelled' WHEN i % 100 < 96 THEN 'expired'
                       WHEN i % 100 < 99 THEN 'pending' ELSE 'processing' END AS status) s,
  LATERAL (SELECT now() - ({N_JOBS} - i) * interval '17 seconds' AS at) t
"""


@pytest.fixture(scope="module")
def seeded(admin_url: str, template_db: str) -> Iterator[Conn]:
    name = f"jobq_tp_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    try:
        with psycopg.connect(make_conninfo(admin_url, dbname=name), autocommit=True) as conn:
            with conn.transaction():
                conn.execute("set local session_replication_role = replica")
                conn.execute(SEED)
            conn.execute("vacuum analyze public.job_queue")
            yield conn
    finally:
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


@pytest.mark.parametrize("since", ["1 hour", "1 day"])
def test_all_users_read_the_cleanup_index(seeded: Conn, since: str) -> None:
    statement = statement_of(function_source(seeded, "get_job_throughput"), "SELECT date_trunc")
    params = {"p_since": Param("interval", since), "v_user": Param("uuid", None)}
    # the function forces custom plans (plan_cache_mode), so that is the plan to check
    plan = explain_prepared(seeded, parameterize(statement, params), params, generic=False)
    found = scans(seeded, plan)
    assert "idx_job_queue_cleanup" in used_indexes(seeded, plan), found
    assert not [s for s in found if s.node_type == "Seq Scan" and s.relation == "job_queue"]


def test_one_user_reads_an_index(seeded: Conn) -> None:
    statement = statement_of(function_source(seeded, "get_job_throughput"), "SELECT date_trunc")
    user = scalar(seeded, "select md5('user7')::uuid")
    params = {"p_since": Param("interval", "1 day"), "v_user": Param("uuid", str(user))}
    plan = explain_prepared(seeded, parameterize(statement, params), params, generic=False)
    found = scans(seeded, plan)
    assert used_indexes(seeded, plan) & {
        "idx_job_queue_cleanup",
        "idx_job_queue_user_status_created",
    }, found
    assert not [s for s in found if s.node_type == "Seq Scan" and s.relation == "job_queue"]


def test_the_function_forces_custom_plans(seeded: Conn) -> None:
    config = scalar(
        seeded,
        "select proconfig from pg_proc where proname = 'get_job_throughput'"
        " and pronamespace = 'public'::regnamespace",
    )
    assert "plan_cache_mode=force_custom_plan" in config
    rows = _throughput(seeded, "select * from get_job_throughput(null)")
    total = rows[-1]
    # ~3600 s / 17 s per job, 85 % of them completed
    assert 150 < total["completed"] < 250
