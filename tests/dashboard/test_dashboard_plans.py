"""Every query the dashboard makes reads an index, never a whole big table.

The dashboard's requests are replayed through the real Client (the API's
calls: the same named queries, as a user or as service_role) against a seeded
queue (30k jobs of 300 users, mostly finished, and their logs) with
auto_explain reporting the plan of every statement, nested ones included.
A sequential scan of job_queue or of the populated job_log partition fails the
test: at 1 M jobs it would be the slow request.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool
from tests.sql.helpers import scans

from jobq.client import Client

N_JOBS = 30_000
N_USERS = 300

SEED_JOBS = f"""
INSERT INTO public.job_queue (id, user_id, job_type, status, params, result, progress_percent,
    error_message, error_code, attempts, worker_id, heartbeat_at, started_at, completed_at,
    expires_at, created_at, updated_at)
SELECT md5('job' || i)::uuid, md5('user' || (i % {N_USERS}))::uuid,
       (ARRAY['checksum', 'compress', 'thumbnail', 'flaky', 'long_report'])[1 + i % 5],
       s.status, jsonb_build_object('n', i),
       CASE WHEN s.status = 'completed' THEN '{{"ok": true}}'::jsonb END,
       CASE WHEN s.status = 'completed' THEN 100 ELSE 0 END,
       CASE WHEN s.status = 'failed' THEN 'boom' END,
       CASE WHEN s.status = 'failed' THEN 'E1' END,
       CASE WHEN s.status = 'pending' THEN 0 ELSE 1 END,
       CASE WHEN s.status = 'processing' THEN 'w1' END,
       CASE WHEN s.status = 'processing' THEN now() END,
       CASE WHEN s.status <> 'pending' THEN t.at - interval '2 seconds' END,
       CASE WHEN s.status NOT IN ('pending', 'processing') THEN t.at END,
       CASE WHEN s.status = 'pending' THEN t.at + interval '1 day' END,
       t.at - interval '3 seconds', t.at
  FROM generate_series(1, {N_JOBS}) AS i,
  LATERAL (SELECT CASE WHEN i % 100 < 85 THEN 'completed' WHEN i % 100 < 90 THEN 'failed'
                       WHEN i % 100 < 94 THEN 'cancelled' WHEN i % 100 < 96 THEN 'expired'
                       WHEN i % 100 < 99 THEN 'pending' ELSE 'processing' END AS status) s,
  LATERAL (SELECT now() - ({N_JOBS} - i) * interval '20 seconds' AS at) t
"""
SEED_LOGS = f"""
INSERT INTO public.job_log (job_id, level, message, metadata, created_at)
SELECT md5('job' || (1 + i % {N_JOBS}))::uuid,
       (ARRAY['debug', 'info', 'info', 'warning', 'error'])[1 + i % 5],
       (ARRAY['hashed chunk', 'digest ready', 'rendered row', 'hiccup'])[1 + i % 4] || ' ' || i,
       '{{}}'::jsonb,
       date_trunc('month', now())
           + (now() - date_trunc('month', now())) * (i::float8 / {2 * N_JOBS})
  FROM generate_series(1, {2 * N_JOBS}) AS i
"""


@pytest.fixture(scope="module")
def seeded_url(admin_url: str, template_db: str) -> Iterator[str]:
    name = f"jobq_dp_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    url = make_conninfo(admin_url, dbname=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            try:
                conn.execute("load 'auto_explain'")
            except psycopg.Error as e:  # pragma: no cover - depends on the server build
                pytest.skip(f"auto_explain is not available: {e}")
            with conn.transaction():
                conn.execute("set local session_replication_role = replica")
                conn.execute(SEED_JOBS)
                conn.execute(SEED_LOGS)
            conn.execute("vacuum analyze public.job_queue")
            conn.execute("vacuum analyze public.job_log")
            # every session of this database reports its plans to the client
            for setting, value in [
                ("session_preload_libraries", "auto_explain"),
                ("auto_explain.log_min_duration", "0"),
                ("auto_explain.log_nested_statements", "on"),
                ("auto_explain.log_format", "json"),
                ("auto_explain.log_level", "notice"),
            ]:
                conn.execute(
                    sql.SQL("alter database {} set {} = {}").format(
                        sql.Identifier(name), sql.Identifier(setting), sql.Literal(value)
                    )
                )
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


class Plans:
    def __init__(self) -> None:
        self.plans: list[dict[str, Any]] = []

    def collect(self, diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        if " plan:" in text and "{" in text:
            self.plans.append(json.loads(text[text.index("{") :])["Plan"])


@pytest.fixture(scope="module")
def client(seeded_url: str) -> Iterator[tuple[Client, Plans]]:
    plans = Plans()

    def configure(conn: psycopg.Connection[Any]) -> None:
        conn.add_notice_handler(plans.collect)

    pool = ConnectionPool(seeded_url, min_size=1, max_size=1, configure=configure, open=True)
    try:
        yield Client(pool=pool), plans
    finally:
        pool.close()


def user(n: int) -> UUID:
    import hashlib

    return UUID(hashlib.md5(f"user{n}".encode()).hexdigest())  # noqa: S324 - the seed's ids


def job_of(n: int) -> UUID:
    import hashlib

    return UUID(hashlib.md5(f"job{n}".encode()).hexdigest())  # noqa: S324


U = user(7)
JOB = job_of(7 + N_USERS * 3)  # a job of user 7

Call = Callable[[Client], object]

# What the page asks for, as the client calls it (see app.js: loadJobs, loadStats,
# loadDetail, loadLogs).
USER_VIEW: dict[str, Call] = {
    "jobs, first page": lambda c: c.as_user(U).list_jobs_page(limit=25),
    "jobs, next page": lambda c: c.as_user(U).list_jobs_page(
        cursor=c.as_user(U).list_jobs_page(limit=25).next_cursor, limit=25
    ),
    "jobs by status": lambda c: c.as_user(U).list_jobs_page(limit=25, status="failed"),
    "jobs by type": lambda c: c.as_user(U).list_jobs_page(limit=25, job_type="thumbnail"),
    "one job": lambda c: c.as_user(U).get_job(JOB),
    "its logs": lambda c: c.as_user(U).get_logs(JOB, limit=200),
    "its logs, searched": lambda c: c.as_user(U).get_logs(JOB, limit=200, search="digest"),
    "stats": lambda c: c.as_user(U).stats(),
    "throughput": lambda c: c.as_user(U).throughput(since=timedelta(hours=1)),
}
SERVICE_VIEW: dict[str, Call] = {
    "queue depth": lambda c: c.queue_depth(),
    "throughput, all users": lambda c: c.throughput(since=timedelta(hours=1)),
    "one user's jobs": lambda c: c.list_jobs_page(limit=25, user_id=U),
    "one user's stats": lambda c: c.stats(user_id=U),
    "one user's throughput": lambda c: c.throughput(user_id=U),
    "one job": lambda c: c.get_job(JOB),
    "its logs": lambda c: c.get_logs(JOB, limit=200),
}


def _check(client: tuple[Client, Plans], call: Call) -> None:
    c, plans = client
    plans.plans.clear()
    call(c)
    assert plans.plans, "auto_explain reported nothing"
    seq = []
    indexed = set()
    with psycopg.connect(c.pool.conninfo) as conn:
        for plan in plans.plans:
            for scan in scans(conn, plan):
                big = scan.relation == "job_queue" or (scan.relation or "").startswith("job_log")
                if big and scan.node_type == "Seq Scan" and not _empty(conn, scan.relation):
                    seq.append(scan.relation)
                if scan.index:
                    indexed.add(scan.index)
    assert not seq, f"sequential scan of {seq}"
    assert indexed, "no index was read"


def _empty(conn: psycopg.Connection[Any], relation: str | None) -> bool:
    if relation is None or relation == "job_queue":
        return False
    row = conn.execute(
        "select reltuples <= 0 from pg_class"
        " where relname = %s and relnamespace = 'public'::regnamespace",
        (relation,),
    ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("request_name", list(USER_VIEW))
def test_user_view_reads_indexes(client: tuple[Client, Plans], request_name: str) -> None:
    _check(client, USER_VIEW[request_name])


@pytest.mark.parametrize("request_name", list(SERVICE_VIEW))
def test_service_view_reads_indexes(client: tuple[Client, Plans], request_name: str) -> None:
    _check(client, SERVICE_VIEW[request_name])


def test_service_view_of_every_users_jobs(client: tuple[Client, Plans]) -> None:
    _check(client, lambda c: c.list_jobs_page(limit=25))
