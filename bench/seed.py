"""Set-based seeding: INSERT ... SELECT generate_series, as the admin, triggers off.

The shape is a live queue's: every user's jobs interleaved over time (so one
user's rows are spread over the heap, as they are in production), the newest
``pending`` jobs still waiting, most of the rest completed, a few failed or
cancelled; log lines spread over monthly partitions. ``session_replication_role
= replica`` turns the notify and state-machine triggers off while seeding (the
rows are written as they would be at rest); VACUUM ANALYZE afterwards brings
the tables to the steady state autovacuum keeps them in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg

JOB_TYPES = ["sync_youtube", "sync_instagram", "sync_tiktok", "send_email", "render_report"]


def user_id(n: int) -> UUID:
    """Deterministic user ids: user 0, 1, 2, ..."""
    return UUID(f"00000000-0000-4000-8000-{n:012x}")


def user_sql(expr: str) -> str:
    return f"('00000000-0000-4000-8000-' || lpad(to_hex({expr}), 12, '0'))::uuid"


# Special users outside the 0..n_users-1 range.
DEDUP_USER = user_id(0xDEDD)
CACHE_USER = user_id(0xCAC4E)
LOG_USER = user_id(0x10C)

_JOB_TYPES_SQL = "ARRAY[" + ", ".join(f"'{t}'" for t in JOB_TYPES) + "]"

SEED_JOBS = f"""
INSERT INTO public.job_queue (
    id, user_id, job_type, status, priority, params, result, progress_percent, attempts,
    max_retries, next_retry_at, run_after, worker_id, heartbeat_at, started_at, completed_at,
    expires_at, created_at, updated_at, error_message, error_code)
SELECT gen_random_uuid(),
       {user_sql("g % :users:")},
       ({_JOB_TYPES_SQL})[1 + g % 5],
       s.status,
       0,
       jsonb_build_object('account', 'acc_' || (g % 5000)),
       CASE WHEN s.status = 'completed' THEN '{{"ok": true}}'::jsonb END,
       CASE WHEN s.status = 'completed' THEN 100 ELSE 0 END,
       CASE WHEN s.status = 'pending' THEN 0 ELSE 1 END,
       3,
       NULL,
       t.created_at,
       CASE WHEN s.status = 'pending' THEN NULL ELSE 'seed-worker' END,
       CASE WHEN s.status = 'pending' THEN NULL ELSE t.created_at + interval '1 second' END,
       CASE WHEN s.status = 'pending' THEN NULL ELSE t.created_at + interval '1 second' END,
       CASE WHEN s.status = 'pending' THEN NULL
            ELSE t.created_at + interval '1 second' + (g % 7) * interval '150 ms' END,
       CASE WHEN s.status = 'pending' THEN now() + interval '24 hours' END,
       t.created_at,
       CASE WHEN s.status = 'pending' THEN t.created_at
            ELSE t.created_at + interval '3 seconds' END,
       CASE s.status WHEN 'failed' THEN 'upstream timed out'
                     WHEN 'cancelled' THEN 'cancelled by user' END,
       CASE s.status WHEN 'failed' THEN 'TIMEOUT' WHEN 'cancelled' THEN 'CANCELLED' END
  FROM generate_series(0, :jobs: - 1) AS g,
       LATERAL (SELECT now() - ':span:'::interval * ((:jobs: - g)::float8 / :jobs:)
                       AS created_at) t,
       LATERAL (SELECT CASE WHEN g >= :jobs: - :pending: THEN 'pending'
                            WHEN g % 53 = 0 THEN 'failed'
                            WHEN g % 97 = 0 THEN 'cancelled'
                            ELSE 'completed' END AS status) s
"""

# A few users shaped for one spec row each.
SEED_SPECIAL = f"""
-- dedup: 100 pending jobs of one user, created in the last minute
INSERT INTO public.job_queue (user_id, job_type, status, params, run_after, expires_at,
                              created_at, updated_at)
SELECT '{DEDUP_USER}', 'sync_youtube', 'pending', jsonb_build_object('account', 'dedup_' || k),
       now() - interval '1 minute', now() + interval '1 day',
       now() - interval '1 minute' + k * interval '100 ms',
       now() - interval '1 minute'
  FROM generate_series(0, 99) k;
-- cache: 100 completed jobs of one user with results, completed in the last 30 minutes
INSERT INTO public.job_queue (user_id, job_type, status, params, result, progress_percent, attempts,
                              worker_id, started_at, completed_at, created_at, updated_at)
SELECT '{CACHE_USER}', 'sync_youtube', 'completed', jsonb_build_object('account', 'cache_' || k),
       jsonb_build_object('videos', k, 'ok', true), 100, 1, 'seed-worker',
       now() - interval '31 minutes', now() - interval '30 minutes' + k * interval '1 second',
       now() - interval '32 minutes', now() - interval '30 minutes'
  FROM generate_series(0, 99) k;
"""

# Log lines: messages of words from a small vocabulary plus one rare token per
# line (tokN), levels mostly info, spread evenly over the last :span:. Each tokN
# is on 1,000 lines whatever the size. Every :every:-th line belongs to the log job.
SEED_LOGS = """
INSERT INTO public.job_log (job_id, level, message, metadata, created_at)
SELECT CASE WHEN g % :every: = 0 THEN ':log_job:'::uuid
            ELSE md5('logjob' || (g % 1000003))::uuid END,
       CASE WHEN g % 100 = 0 THEN 'error' WHEN g % 10 = 0 THEN 'warning' ELSE 'info' END,
       (ARRAY['fetched', 'parsed', 'uploaded', 'retrying', 'skipped', 'stored'])[1 + g % 6]
         || ' page ' || (g % 97) || ' of account acc_' || (g % 5000)
         || ' tok' || (g % :tokmod:),
       jsonb_build_object('step', g % 50),
       now() - ':span:'::interval * ((:logs: - g)::float8 / :logs:)
  FROM generate_series(0, :logs: - 1) AS g
"""


@dataclass
class SeedReport:
    rows: int
    seconds: float
    vacuum_seconds: float


def _fill(template: str, **values: Any) -> str:
    """Put trusted values (ints, intervals, uuids we made) into a seeding statement."""
    for key, value in values.items():
        text = str(value)
        assert "'" not in text
        template = template.replace(f":{key}:", text)
    return template


def _replica(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET session_replication_role = replica")


def _drop_indexes(
    conn: psycopg.Connection[Any], table: str, *, primary_key: bool = False
) -> list[str]:
    """Drop ``table``'s indexes (and its primary key when asked); return the
    statements that rebuild them.

    Loading into a table without its secondary indexes and building them after
    is many times faster than maintaining them row by row (10 M random uuids,
    two GIN indexes). The rebuilt indexes are the migration's own definitions
    (pg_get_indexdef), only freshly packed.
    """
    rows = conn.execute(
        """SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
             FROM pg_index i
            WHERE i.indrelid = %s::regclass AND NOT i.indisprimary
            ORDER BY 1""",
        (table,),
    ).fetchall()
    statements = [ddl for _, ddl in rows]
    for name, _ in rows:
        conn.execute(f"DROP INDEX {name}".encode())
    if primary_key:
        pk = conn.execute(
            """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
                WHERE conrelid = %s::regclass AND contype = 'p'""",
            (table,),
        ).fetchone()
        if pk is not None:
            conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {pk[0]}".encode())
            statements.insert(0, f"ALTER TABLE {table} ADD CONSTRAINT {pk[0]} {pk[1]}")
    return statements


def _rebuild(conn: psycopg.Connection[Any], statements: list[str]) -> None:
    conn.execute("SET maintenance_work_mem = '512MB'")
    for ddl in statements:
        # A partitioned parent's index reads "ON ONLY": build it on every partition.
        conn.execute(ddl.replace(" ON ONLY ", " ON ").encode())


def make_past_partitions(conn: psycopg.Connection[Any], months_back: int) -> None:
    """Monthly job_log partitions for the past, as if maintenance had run for months."""
    conn.execute(
        """
        DO $$
        DECLARE m timestamptz; n text;
        BEGIN
          FOR m IN SELECT generate_series(
                            date_trunc('month', now()) - make_interval(months => :months:),
                            date_trunc('month', now()) - interval '1 month',
                            interval '1 month')
          LOOP
            n := 'job_log_' || to_char(m, 'YYYY_MM');
            CONTINUE WHEN to_regclass('public.' || n) IS NOT NULL;
            EXECUTE format('CREATE TABLE public.%I PARTITION OF public.job_log
                            FOR VALUES FROM (%L) TO (%L) WITH (toast_tuple_target = 8160)',
                           n, m, m + interval '1 month');
          END LOOP;
        END $$""".replace(":months:", str(int(months_back))).encode()
    )


def seed_jobs(
    url: str, *, jobs: int, users: int, pending: int, span: str = "30 days", special: bool = True
) -> SeedReport:
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        _replica(conn)
        rebuild = _drop_indexes(conn, "public.job_queue", primary_key=True)
        conn.execute(
            _fill(SEED_JOBS, users=users, jobs=jobs, pending=min(pending, jobs), span=span).encode()
        )
        if special:
            conn.execute(SEED_SPECIAL.encode())
        _rebuild(conn, rebuild)
        seeded = time.perf_counter()
        conn.execute("VACUUM ANALYZE public.job_queue")
    return SeedReport(jobs, seeded - t0, time.perf_counter() - seeded)


def seed_logs(
    url: str, *, logs: int, log_job_lines: int, span: str = "100 days"
) -> tuple[SeedReport, UUID]:
    """``logs`` lines across monthly partitions; one job (owned by LOG_USER) gets
    ``log_job_lines`` of them. Returns the report and that job's id."""
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        _replica(conn)
        make_past_partitions(conn, 4)
        row = conn.execute(
            """INSERT INTO public.job_queue (user_id, job_type, status, attempts, worker_id,
                                             started_at, completed_at, result, progress_percent)
               VALUES (%s, 'render_report', 'completed', 1, 'seed-worker', now(), now(),
                       '{}', 100) RETURNING id""",
            (LOG_USER,),
        ).fetchone()
        assert row is not None
        log_job: UUID = row[0]
        every = max(1, logs // max(1, log_job_lines))
        rebuild = _drop_indexes(conn, "public.job_log")
        conn.execute(
            _fill(
                SEED_LOGS,
                logs=logs,
                every=every,
                log_job=log_job,
                span=span,
                tokmod=max(1, logs // 1000),
            ).encode()
        )
        _rebuild(conn, rebuild)
        seeded = time.perf_counter()
        conn.execute("VACUUM ANALYZE public.job_log")
    return SeedReport(logs, seeded - t0, time.perf_counter() - seeded), log_job
