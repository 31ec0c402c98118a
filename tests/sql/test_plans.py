"""Every one of the 15 spec indexes serves a query jobq actually runs.

Two ways of looking, on one realistically seeded database per module
(50k jobs of 500 users, mostly finished; 100k log lines):

* EXPLAIN of the statement the function runs. Static statements are cut out of
  the function's own body (``pg_proc.prosrc``), their plpgsql variables turned
  into ``$n`` parameters, then PREPAREd and EXPLAINed as a custom plan (what a
  call gets first) and, for the hot worker paths that run thousands of times per
  session, as the generic plan the plan cache may switch to. The dynamic SQL of
  ``get_user_jobs``/``get_job_logs`` is rebuilt here the way their ``format()``
  builds it, and a drift check asserts those fragments are still in the body.
* The function itself, called for real with ``auto_explain`` reporting the plan
  of every nested statement as a NOTICE (skipped where auto_explain is missing).

No planner switch is turned off: the data is shaped like a live queue (few
pending, a few hundred running, most rows finished) and the planner picks the
indexes on its own.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from jobq import db

from .helpers import (
    Conn,
    Param,
    explain_json,
    explain_prepared,
    function_source,
    parameterize,
    scans,
    statement_of,
    used_indexes,
)

N_JOBS = 50_000
N_USERS = 500
N_LOGS = 100_000

# Users and jobs get deterministic ids so that tests can name them.
USER_SQL = "md5('user' || {})::uuid"
JOB_SQL = "md5('job' || {})::uuid"

SEED_JOBS = f"""
INSERT INTO public.job_queue (id, user_id, job_type, status, priority, params, result,
    progress_percent, error_message, error_code, attempts, max_retries, next_retry_at, run_after,
    worker_id, heartbeat_at, started_at, completed_at, expires_at, created_at, updated_at)
SELECT md5('job' || i)::uuid,
       -- every user gets ~100 jobs of every status, spread over the whole period
       md5('user' || ((i + i / 100) % {N_USERS}))::uuid,
       (ARRAY['sync_youtube', 'sync_instagram', 'sync_tiktok', 'render_video', 'send_email',
              'generate_report', 'import_csv', 'transcode'])[1 + (i * 7) % 8],
       s.status,
       CASE WHEN i % 10 = 0 THEN 10 WHEN i % 25 = 0 THEN -5 ELSE 0 END,
       jsonb_build_object('account_id', 'acc_' || (i % 5000), 'page', i % 7),
       CASE WHEN s.status = 'completed'
            THEN jsonb_build_object('items', i % 100, 'checksum', md5(i::text)) END,
       CASE s.status WHEN 'completed' THEN 100 WHEN 'processing' THEN i % 100 ELSE 0 END,
       CASE WHEN s.status IN ('failed', 'cancelled', 'expired') THEN 'error ' || i END,
       CASE WHEN s.status = 'failed' THEN 'E' || (i % 5) END,
       CASE s.status WHEN 'pending' THEN 0 WHEN 'failed' THEN 1 + i % 3 ELSE 1 END,
       3,
       -- a fifth of the failed jobs wait for a retry, a fifth of those are due
       CASE WHEN s.status = 'failed' AND i % 100 IN (87, 88)
            THEN now() + (i % 600) * interval '1 second' - interval '2 minutes' END,
       t.created_at,
       -- 40 workers with a dozen running jobs each
       CASE WHEN s.status = 'processing' THEN 'worker-' || ((i / 100) % 40) END,
       -- 4% of running jobs have a stale heartbeat
       CASE WHEN s.status = 'processing' THEN now() - CASE WHEN (i / 100) % 25 = 0
            THEN interval '2 hours' ELSE (i % 60) * interval '1 second' END END,
       CASE WHEN s.status IN ('processing', 'completed', 'failed')
            THEN t.created_at + interval '1 second' END,
       CASE WHEN s.status IN ('completed', 'failed', 'cancelled', 'expired')
            THEN t.created_at + (i % 300) * interval '1 second' END,
       CASE WHEN s.status = 'pending' THEN t.created_at + interval '24 hours' END,
       t.created_at, t.created_at
  FROM generate_series(1, {N_JOBS}) AS i,
  LATERAL (SELECT CASE WHEN i % 100 < 80 THEN 'completed' WHEN i % 100 < 86 THEN 'pending'
                       WHEN i % 100 = 86 THEN 'processing' WHEN i % 100 < 92 THEN 'failed'
                       WHEN i % 100 < 97 THEN 'cancelled' ELSE 'expired' END AS status) s,
  -- unfinished jobs are recent; finished ones span the 7-day retention plus a day
  LATERAL (SELECT CASE WHEN s.status IN ('pending', 'processing')
                       THEN now() - (i % 7200) * interval '1 second'
                       ELSE now() - ({N_JOBS} - i) * interval '13 seconds' - interval '10 minutes'
                  END AS created_at) t
"""

# Two lines per job (7919 is coprime with 50000), all in this month's partition.
SEED_LOGS = f"""
INSERT INTO public.job_log (job_id, level, message, metadata, created_at)
SELECT md5('job' || (1 + (i * 7919) % {N_JOBS}))::uuid,
       CASE WHEN i % 50 = 0 THEN 'error' WHEN i % 10 = 0 THEN 'warning'
            WHEN i % 3 = 0 THEN 'debug' ELSE 'info' END,
       (ARRAY['fetched page', 'rendered frame', 'sent email to subscriber', 'parsed csv row',
              'uploaded chunk'])[1 + i % 5] || ' ' || i
           || CASE WHEN i % 50 = 0 THEN ' timeout contacting upstream api' ELSE '' END,
       jsonb_build_object('step', i % 20, 'host', 'host-' || (i % 30))
           || CASE WHEN i % 1000 = 0 THEN jsonb_build_object('trace_id', 't' || i)
                   ELSE '{{}}'::jsonb END,
       date_trunc('month', now()) + (now() - date_trunc('month', now())) * (i::float8 / {N_LOGS})
  FROM generate_series(1, {N_LOGS}) AS i
"""

USER_7 = "md5('user7')::uuid"


@pytest.fixture(scope="module")
def plan_conn(admin_url: str, template_db: str) -> Iterator[Conn]:
    """An autocommit admin connection to a seeded, vacuumed and analysed database."""
    name = f"jobq_plans_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    try:
        with psycopg.connect(make_conninfo(admin_url, dbname=name), autocommit=True) as conn:
            with conn.transaction():
                # Seed data, not jobq events: skip the notify/state-machine triggers.
                conn.execute("set local session_replication_role = replica")
                conn.execute(SEED_JOBS)
                conn.execute(SEED_LOGS)
            # A live queue is vacuumed and analysed by autovacuum; do it now.
            conn.execute("vacuum analyze public.job_queue")
            conn.execute("vacuum analyze public.job_log")
            yield conn
    finally:
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


def test_seed_is_shaped_like_a_live_queue(plan_conn: Conn) -> None:
    counts = dict(plan_conn.execute("select status, count(*) from job_queue group by 1").fetchall())
    assert counts == {
        "completed": 40_000,
        "pending": 3_000,
        "processing": 500,
        "failed": 2_500,
        "cancelled": 2_500,
        "expired": 1_500,
    }
    parts = plan_conn.execute(
        "select tableoid::regclass::text, count(*) from job_log group by 1"
    ).fetchall()
    assert len(parts) == 1, f"the logs should all be in this month's partition: {parts}"
    assert parts[0][0].startswith("job_log_2")
    assert parts[0][1] == N_LOGS


def _assert_index(
    conn: Conn,
    plan: dict[str, Any],
    index: str,
    *,
    node_type: str | None = None,
    seq_scan_ok: bool = False,
) -> None:
    found = scans(conn, plan)
    pretty = [(s.node_type, s.relation, s.index) for s in found]
    assert index in used_indexes(conn, plan), f"{index} not used; scans: {pretty}"
    if node_type is not None:
        assert any(s.index == index and s.node_type == node_type for s in found), (
            f"{index} not used by a {node_type}; scans: {pretty}"
        )
    if seq_scan_ok:
        return
    # The big relations are never read in full (empty future partitions may be).
    big = {"job_queue", _populated_log_partition(conn)}
    seq = [s.relation for s in found if s.node_type == "Seq Scan" and s.relation in big]
    assert not seq, f"sequential scan of {seq}; scans: {pretty}"


def _populated_log_partition(conn: Conn) -> str:
    row = conn.execute(
        "select c.relname from pg_catalog.pg_inherits i join pg_catalog.pg_class c"
        " on c.oid = i.inhrelid where i.inhparent = 'public.job_log'::regclass"
        " order by c.reltuples desc limit 1"
    ).fetchone()
    assert row is not None
    return str(row[0])


# ---------------------------------------------------------------------------
# 1. Static statements, cut out of the function bodies
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Static:
    index: str
    function: str
    start: str  # the statement's first words in the function body
    params: dict[str, Param] = field(default_factory=dict)
    drop_into: str | None = None
    node_type: str | None = None
    generic: bool = True  # also check the generic plan
    seq_scan_ok: bool = False  # another part of the statement may read a whole table


def _held_by(conn: Conn, worker: str) -> str:
    ids = conn.execute(
        "select array_agg(id order by id)::text from job_queue"
        " where worker_id = %s and status = 'processing'",
        (worker,),
    ).fetchone()
    assert ids is not None
    assert ids[0] is not None, f"{worker} holds no jobs in the seed"
    return str(ids[0])


STATIC = [
    Static(
        "idx_job_queue_pending_pickup",
        "claim_jobs",
        "WITH picked AS",
        {
            "p_worker_id": Param("text", "worker-new"),
            "p_limit": Param("integer", 10),
            "p_job_types": Param("text[]", None),
        },
    ),
    Static(
        "idx_job_queue_pending_pickup",
        "claim_jobs",
        "WITH picked AS",
        {
            "p_worker_id": Param("text", "worker-new"),
            "p_limit": Param("integer", 10),
            "p_job_types": Param("text[]", "{send_email,render_video}"),
        },
    ),
    Static(
        "idx_job_queue_user_active",
        "jobq_check_rate_limit",
        "SELECT count(*) INTO v_active FROM (",
        {"p_user_id": Param("uuid", None), "v_limit": Param("integer", 10)},
        drop_into="v_active",
        node_type="Index Only Scan",
    ),
    Static(
        "idx_job_queue_worker_active",
        "heartbeat_jobs",
        "UPDATE public.job_queue q SET heartbeat_at",
        {"p_worker_id": Param("text", "worker-3"), "p_job_ids": Param("uuid[]", None)},
    ),
    Static(
        "idx_job_queue_worker_active",
        "release_jobs",
        "WITH held AS",
        {"p_worker_id": Param("text", "worker-3"), "p_job_ids": Param("uuid[]", None)},
        drop_into="v_ids",
    ),
    # The maintenance functions set plan_cache_mode = force_custom_plan (they
    # run every few minutes): only their custom plans are ever used.
    Static(
        "idx_job_queue_cleanup",
        "cleanup_old_jobs",
        "WITH old AS",
        {"p_older_than": Param("interval", "7 days"), "p_batch_size": Param("integer", 100_000)},
        drop_into="v_count",
        generic=False,
    ),
    Static(
        "idx_job_queue_retry_eligible",
        "retry_failed_jobs",
        "WITH due AS",
        {"p_limit": Param("integer", 1000)},
        generic=False,
    ),
    Static("idx_job_queue_expiration", "expire_stale_jobs", "WITH stale AS", generic=False),
    Static(
        "idx_job_queue_stuck_detection",
        "detect_stuck_jobs",
        "WITH stuck AS",
        {
            "p_timeout": Param("interval", "30 minutes"),
            "v_cfg.retry_base_delay": Param("interval", "10 seconds"),
            "v_cfg.retry_max_delay": Param("interval", "1 hour"),
        },
        generic=False,
    ),
]


def _bind(conn: Conn, case: Static) -> dict[str, Param]:
    """Fill in the values that depend on the seed."""
    params = dict(case.params)
    if case.function == "jobq_check_rate_limit":
        params["p_user_id"] = Param("uuid", conn.execute(f"select {USER_7}").fetchone()[0])
    if case.function == "heartbeat_jobs":
        params["p_job_ids"] = Param("uuid[]", _held_by(conn, "worker-3"))
    return params


STATIC_PLANS = [
    pytest.param(case, generic, id=f"{case.function}-{'generic' if generic else 'custom'}-{i}")
    for i, case in enumerate(STATIC)
    for generic in ((False, True) if case.generic else (False,))
]


@pytest.mark.parametrize(("case", "generic"), STATIC_PLANS)
def test_function_statement_uses_index(plan_conn: Conn, case: Static, generic: bool) -> None:
    source = function_source(plan_conn, case.function)
    params = _bind(plan_conn, case)
    query = parameterize(statement_of(source, case.start), params, case.drop_into)
    plan = explain_prepared(plan_conn, query, params, generic=generic)
    _assert_index(
        plan_conn, plan, case.index, node_type=case.node_type, seq_scan_ok=case.seq_scan_ok
    )


# ---------------------------------------------------------------------------
# 2. The dynamic SQL of get_user_jobs / get_job_logs, rebuilt as format() builds it
# ---------------------------------------------------------------------------
def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# Fragments of the function bodies the rebuilt SQL below relies on.
USER_JOBS_FRAGMENTS = [
    "' AND j.user_id = $1'",
    "' AND j.status = $2'",
    "' AND j.job_type = $3'",
    "' AND j.params @> $6'",
    "' AND j.result @> $7'",
    "'WITH total AS (SELECT count(*) AS n FROM public.job_queue j WHERE %s) "
    "SELECT j.*, total.n FROM public.job_queue j, total WHERE %s "
    "ORDER BY j.%I %s%s, j.id %s LIMIT $4 OFFSET $5'",
    "USING v_user, p_status, p_job_type, p_limit, p_offset, p_params_contains, "
    "p_result_contains, p_cursor_created_at, p_cursor_id",
]
JOB_LOGS_FRAGMENTS = [
    "' AND l.job_id = $1'",
    "' AND l.level = $2'",
    "' AND to_tsvector(''simple''::regconfig, l.message) @@ "
    "websearch_to_tsquery(''simple''::regconfig, $3)'",
    "' AND l.metadata @> $4'",
    "'WITH total AS (SELECT count(*) AS n FROM public.job_log l WHERE %s) "
    "SELECT l.id, l.job_id, l.level, l.message, l.metadata, l.created_at, total.n "
    "FROM public.job_log l, total WHERE %s "
    "ORDER BY l.created_at DESC, l.id DESC LIMIT $5 OFFSET $6'",
    "USING p_job_id, p_level, p_search, p_metadata_contains, p_limit, p_offset",
]


@pytest.mark.parametrize(
    ("function", "fragments"),
    [("get_user_jobs", USER_JOBS_FRAGMENTS), ("get_job_logs", JOB_LOGS_FRAGMENTS)],
)
def test_rebuilt_dynamic_sql_matches_the_function(
    plan_conn: Conn, function: str, fragments: list[str]
) -> None:
    source = _norm(function_source(plan_conn, function))
    missing = [f for f in fragments if _norm(f) not in source]
    assert not missing, f"{function} changed; update the rebuilt SQL in this module: {missing}"


def user_jobs_sql(
    *,
    user: bool = False,
    status: bool = False,
    job_type: bool = False,
    params: bool = False,
    result: bool = False,
    order: str = "created_at",
    direction: str = "DESC",
    with_total: bool = True,
) -> str:
    where = "true"
    where += " AND j.user_id = $1" if user else ""
    where += " AND j.status = $2" if status else ""
    where += " AND j.job_type = $3" if job_type else ""
    where += " AND j.params @> $6" if params else ""
    where += " AND j.result @> $7" if result else ""
    nulls = " NULLS LAST" if order == "completed_at" else ""
    if not with_total:
        return (
            f"SELECT j.*, NULL::bigint FROM public.job_queue j WHERE {where}"
            f" ORDER BY j.{order} {direction}{nulls}, j.id {direction} LIMIT $4 OFFSET $5"
        )
    return (
        f"WITH total AS (SELECT count(*) AS n FROM public.job_queue j WHERE {where})"
        f" SELECT j.*, total.n FROM public.job_queue j, total WHERE {where}"
        f" ORDER BY j.{order} {direction}{nulls}, j.id {direction} LIMIT $4 OFFSET $5"
    )


def job_logs_sql(
    *, job: bool = False, level: bool = False, search: bool = False, metadata: bool = False
) -> str:
    where = "true"
    where += " AND l.job_id = $1" if job else ""
    where += " AND l.level = $2" if level else ""
    if search:
        where += (
            " AND to_tsvector('simple'::regconfig, l.message)"
            " @@ websearch_to_tsquery('simple'::regconfig, $3)"
        )
    where += " AND l.metadata @> $4" if metadata else ""
    return (
        f"WITH total AS (SELECT count(*) AS n FROM public.job_log l WHERE {where})"
        " SELECT l.id, l.job_id, l.level, l.message, l.metadata, l.created_at, total.n"
        f" FROM public.job_log l, total WHERE {where}"
        " ORDER BY l.created_at DESC, l.id DESC LIMIT $5 OFFSET $6"
    )


def user_jobs_params(
    user: str | None = None,
    status: str | None = None,
    params: str | None = None,
    result: str | None = None,
) -> list[Param]:
    """The USING list of get_user_jobs: v_user, p_status, p_job_type, p_limit, p_offset, ..."""
    return [
        Param("uuid", user),
        Param("text", status),
        Param("text", None),
        Param("integer", 50),
        Param("integer", 0),
        Param("jsonb", params),
        Param("jsonb", result),
        Param("timestamptz", None),
        Param("uuid", None),
    ]


def job_logs_params(
    job: str | None = None,
    level: str | None = None,
    search: str | None = None,
    metadata: str | None = None,
) -> list[Param]:
    """The USING list of get_job_logs: p_job_id, p_level, p_search, p_metadata_contains, ..."""
    return [
        Param("uuid", job),
        Param("text", level),
        Param("text", search),
        Param("jsonb", metadata),
        Param("integer", 100),
        Param("integer", 0),
    ]


def _id(conn: Conn, expr: str) -> str:
    return str(conn.execute(f"select {expr}").fetchone()[0])


@dataclass(frozen=True)
class Dynamic:
    index: str
    query: Callable[[], str]
    params: Callable[[Conn], list[Param]]


DYNAMIC = {
    # a user's history page: status filter, newest first
    "listing": Dynamic(
        "idx_job_queue_user_status_created",
        lambda: user_jobs_sql(user=True, status=True),
        lambda c: user_jobs_params(user=_id(c, USER_7), status="completed"),
    ),
    # a user's jobs newest first, any status (the default listing): the page
    # reads jobq's idx_job_queue_user_created
    "listing-any-status": Dynamic(
        "idx_job_queue_user_created",
        lambda: user_jobs_sql(user=True),
        lambda c: user_jobs_params(user=_id(c, USER_7)),
    ),
    # every user's jobs newest first, the first page of a cursor walk (service)
    "all-users-newest": Dynamic(
        "idx_job_queue_created",
        lambda: user_jobs_sql(with_total=False),
        lambda c: user_jobs_params(),
    ),
    # admin search by params across users (service, p_user_id NULL)
    "params": Dynamic(
        "idx_job_queue_params_gin",
        lambda: user_jobs_sql(params=True),
        lambda c: user_jobs_params(params='{"account_id": "acc_17"}'),
    ),
    "result": Dynamic(
        "idx_job_queue_result_gin",
        lambda: user_jobs_sql(result=True),
        lambda c: user_jobs_params(result=json.dumps({"checksum": _id(c, "md5('17')")})),
    ),
    "logs-of-a-job": Dynamic(
        "idx_job_log_job_time",
        lambda: job_logs_sql(job=True),
        lambda c: job_logs_params(job=_id(c, JOB_SQL.format(7))),
    ),
    "errors": Dynamic(
        "idx_job_log_errors",
        lambda: job_logs_sql(level=True),
        lambda c: job_logs_params(level="error"),
    ),
    "search": Dynamic(
        "idx_job_log_message_fts",
        lambda: job_logs_sql(search=True),
        lambda c: job_logs_params(search="timeout upstream"),
    ),
    "metadata": Dynamic(
        "idx_job_log_metadata_gin",
        lambda: job_logs_sql(metadata=True),
        lambda c: job_logs_params(metadata='{"trace_id": "t5000"}'),
    ),
}


@pytest.mark.parametrize("name", list(DYNAMIC))
def test_dynamic_query_uses_index(plan_conn: Conn, name: str) -> None:
    case = DYNAMIC[name]
    # EXECUTE ... USING plans once with the values known: a custom plan.
    plan = explain_prepared(plan_conn, case.query(), case.params(plan_conn), generic=False)
    _assert_index(plan_conn, plan, case.index)


def test_queue_depth_by_type_uses_index(plan_conn: Conn) -> None:
    # The dashboard's queue depth (spec: "Analytics dashboard, GROUP BY queries").
    # NOTE: no jobq function runs this query today: get_job_queue_stats groups
    # every status and so reads the whole table; see the report.
    plan = explain_json(
        plan_conn,
        "SELECT job_type, status, count(*) FROM public.job_queue"
        " WHERE status IN ('pending', 'processing', 'failed') GROUP BY job_type, status",
    )
    _assert_index(plan_conn, plan, "idx_job_queue_type_status", node_type="Index Only Scan")


# ---------------------------------------------------------------------------
# 3. The functions themselves, with auto_explain showing their nested plans
# ---------------------------------------------------------------------------
def nested_plans(
    conn: Conn, call: str, *, role: str | None = None, user: str | None = None
) -> list[dict[str, Any]]:
    """Run ``call`` (rolled back) and return the plan of every statement it ran."""
    try:
        conn.execute("load 'auto_explain'")
    except psycopg.Error as e:  # pragma: no cover - depends on the server build
        pytest.skip(f"auto_explain is not available: {e}")
    notices: list[str] = []

    def collect(diag: psycopg.errors.Diagnostic) -> None:
        if diag.message_primary and " plan:" in diag.message_primary:
            notices.append(diag.message_primary)

    conn.add_notice_handler(collect)
    try:
        with conn.transaction():
            for setting, value in [
                ("auto_explain.log_min_duration", "0"),
                ("auto_explain.log_nested_statements", "on"),
                ("auto_explain.log_format", "json"),
                ("auto_explain.log_level", "notice"),
                ("client_min_messages", "notice"),
            ]:
                conn.execute("select set_config(%s, %s, true)", (setting, value))
            if role is not None:
                db.act_as(conn, role, UUID(user) if user else None)
            conn.execute(call).fetchall()
            raise psycopg.Rollback
    finally:
        conn.remove_notice_handler(collect)
    plans = []
    for text in notices:
        doc = json.loads(text[text.index("{") :])
        plans.append(doc["Plan"])
    assert plans, f"auto_explain reported no plan for {call}"
    return plans


E2E = {
    "idx_job_queue_pending_pickup": ("select * from claim_jobs('worker-new', 10)", None),
    "idx_job_queue_user_active": (
        # the rate limit runs for users only (service callers are not limited)
        "select create_job(null, 'send_email', '{\"to\": \"a@example.com\"}')",
        "authenticated",
    ),
    "idx_job_queue_worker_active": ("select release_jobs('worker-3')", None),
    "idx_job_queue_cleanup": ("select cleanup_old_jobs()", None),
    "idx_job_queue_retry_eligible": ("select retry_failed_jobs()", None),
    "idx_job_queue_expiration": ("select expire_stale_jobs()", None),
    "idx_job_queue_stuck_detection": ("select detect_stuck_jobs()", None),
    "idx_job_queue_user_status_created": (
        f"select * from get_user_jobs({USER_7}, 'completed')",
        None,
    ),
    "idx_job_queue_params_gin": (
        'select * from get_user_jobs(null, p_params_contains => \'{"account_id": "acc_17"}\')',
        None,
    ),
    "idx_job_queue_result_gin": (
        "select * from get_user_jobs(null, p_result_contains =>"
        " jsonb_build_object('checksum', md5('17')))",
        None,
    ),
    "idx_job_log_job_time": (f"select * from get_job_logs({JOB_SQL.format(7)})", None),
    "idx_job_log_errors": ("select * from get_job_logs(null, p_level => 'error')", None),
    "idx_job_log_message_fts": (
        "select * from get_job_logs(null, p_search => 'timeout upstream')",
        None,
    ),
    "idx_job_log_metadata_gin": (
        'select * from get_job_logs(null, p_metadata_contains => \'{"trace_id": "t5000"}\')',
        None,
    ),
}


@pytest.mark.parametrize("index", list(E2E))
def test_function_call_uses_index(plan_conn: Conn, index: str) -> None:
    call, role = E2E[index]
    user = _id(plan_conn, USER_7) if role == "authenticated" else None
    plans = nested_plans(plan_conn, call, role=role, user=user)
    used = set().union(*(used_indexes(plan_conn, p) for p in plans))
    assert index in used, f"{call} did not use {index}; used {sorted(used)}"
    if index == "idx_job_queue_user_active":
        kinds = {s.node_type for p in plans for s in scans(plan_conn, p) if s.index == index}
        assert "Index Only Scan" in kinds, kinds


def test_every_spec_index_is_covered(plan_conn: Conn) -> None:
    """The cases above name each of the 17 indexes the migration creates."""
    spec = {
        r[0]
        for r in plan_conn.execute(
            "select indexrelid::regclass::text from pg_index"
            " where indrelid in ('public.job_queue'::regclass, 'public.job_log'::regclass)"
            " and indexrelid::regclass::text like 'idx\\_%'"
        ).fetchall()
    }
    assert len(spec) == 17  # the spec's 15 and jobq's two listing indexes
    covered = {c.index for c in STATIC} | {d.index for d in DYNAMIC.values()}
    covered.add("idx_job_queue_type_status")
    assert covered == spec
    assert set(E2E) == spec - {
        "idx_job_queue_type_status",
        "idx_job_queue_user_created",
        "idx_job_queue_created",
    }
