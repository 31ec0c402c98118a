"""Maintenance on the spec's schedule: by pg_cron when present, else by workers.

One list of tasks (name, schedule, SQL) feeds both modes. With pg_cron,
``jobq schedule install`` registers them in ``cron.job``; without it, the worker
that holds the leader advisory lock runs the same SQL on the same schedule,
so exactly one worker at a time does maintenance (and enqueues periodic jobs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jobq._aio import wait_event
from jobq.cron import parse_schedule

log = logging.getLogger("jobq.schedule")

# Session advisory lock held by the maintenance leader ("jobqlead").
LEADER_LOCK_KEY = int.from_bytes(b"jobqlead", "big") & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class MaintenanceTask:
    name: str
    schedule: str
    sql: str


def _interval(td: timedelta) -> str:
    return f"interval '{int(td.total_seconds())} seconds'"


def maintenance_tasks(
    *,
    stuck_timeout: timedelta = timedelta(minutes=30),
    cleanup_after: timedelta = timedelta(days=7),
    log_retention: timedelta = timedelta(days=30),
) -> list[MaintenanceTask]:
    """The spec's five schedules (SECTION 9 of its migration)."""
    return [
        MaintenanceTask("retry-failed-jobs", "*/5 * * * *", "SELECT public.retry_failed_jobs()"),
        MaintenanceTask(
            "cleanup-old-jobs",
            "0 2 * * *",
            f"SELECT public.cleanup_old_jobs({_interval(cleanup_after)})",
        ),
        MaintenanceTask("expire-stale-jobs", "*/10 * * * *", "SELECT public.expire_stale_jobs()"),
        MaintenanceTask(
            "detect-stuck-jobs",
            "*/15 * * * *",
            f"SELECT public.detect_stuck_jobs({_interval(stuck_timeout)})",
        ),
        MaintenanceTask(
            "log-partitions",
            "30 1 * * *",
            "SELECT (SELECT count(*) FROM public.create_job_log_partitions(3)),"
            " (SELECT count(*) FROM public.drop_old_job_log_partitions("
            f"{_interval(log_retention)}))",
        ),
    ]


def every(tasks: Sequence[MaintenanceTask], period: str) -> list[MaintenanceTask]:
    """The same tasks on one faster schedule (development, tests, demos)."""
    parse_schedule(period)
    return [replace(t, schedule=period) for t in tasks]


# ---------------------------------------------------------------------------
# pg_cron mode
# ---------------------------------------------------------------------------


class PgCronUnavailable(RuntimeError):
    """pg_cron is not loaded on this server (shared_preload_libraries)."""


def _job_name(task: MaintenanceTask, target_db: str, cron_db: str) -> str:
    # One cron database can serve several app databases: say which one.
    return f"jobq-{task.name}" if target_db == cron_db else f"jobq-{task.name}@{target_db}"


def _cron_database(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_setting('cron.database_name', true)").fetchone()
    if row is None or not row[0]:
        raise PgCronUnavailable(
            "pg_cron is not loaded: add it to shared_preload_libraries and restart PostgreSQL"
        )
    return str(row[0])


def _connect_cron(conn: psycopg.Connection[Any]) -> tuple[psycopg.Connection[Any], str, str]:
    """A connection to the database pg_cron lives in, the target db and the cron db."""
    target_db = str(conn.info.dbname)
    cron_db = _cron_database(conn)
    params = conninfo_to_dict(conn.info.dsn)
    params["dbname"] = cron_db
    if conn.info.password:
        params["password"] = conn.info.password
    cron_conn = psycopg.connect(make_conninfo("", **params), autocommit=True)
    cron_conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
    return cron_conn, target_db, cron_db


def install_pg_cron(conn: psycopg.Connection[Any], tasks: Sequence[MaintenanceTask]) -> list[str]:
    """Register ``tasks`` with pg_cron for ``conn``'s database; idempotent (upsert by name)."""
    cron_conn, target_db, cron_db = _connect_cron(conn)
    with cron_conn:
        names = []
        for task in tasks:
            name = _job_name(task, target_db, cron_db)
            cron_conn.execute(
                "SELECT cron.schedule_in_database(%s, %s, %s, %s)",
                (name, task.schedule, task.sql, target_db),
            )
            names.append(name)
        return names


def remove_pg_cron(conn: psycopg.Connection[Any]) -> list[str]:
    """Unschedule every jobq job of ``conn``'s database (missing ones are fine)."""
    cron_conn, target_db, _ = _connect_cron(conn)
    with cron_conn:
        rows = cron_conn.execute(
            "SELECT jobname, cron.unschedule(jobid) FROM cron.job"
            " WHERE jobname LIKE 'jobq-%%' AND database = %s",
            (target_db,),
        ).fetchall()
        return [str(r[0]) for r in rows]


def pg_cron_jobs(conn: psycopg.Connection[Any]) -> list[dict[str, Any]] | None:
    """The jobq jobs pg_cron runs for this database, or None when pg_cron is not loaded."""
    try:
        cron_conn, target_db, _ = _connect_cron(conn)
    except (PgCronUnavailable, psycopg.Error):
        return None
    with cron_conn:
        cur = cron_conn.execute(
            """SELECT j.jobname, j.schedule, j.command, j.active,
                      (SELECT max(d.end_time) FROM cron.job_run_details d
                        WHERE d.jobid = j.jobid) AS last_run,
                      (SELECT d.status FROM cron.job_run_details d WHERE d.jobid = j.jobid
                        ORDER BY d.end_time DESC NULLS LAST LIMIT 1) AS last_status
                 FROM cron.job j WHERE j.jobname LIKE 'jobq-%%' AND j.database = %s
                ORDER BY j.jobname""",
            (target_db,),
        )
        cols = [c.name for c in cur.description or []]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


@dataclass(frozen=True)
class ScheduleStatus:
    mode: str  # "pg_cron" or "in-process"
    pg_cron_loaded: bool
    jobs: list[dict[str, Any]]
    leader: str | None  # application_name of the worker holding the leader lock


def status(conn: psycopg.Connection[Any]) -> ScheduleStatus:
    jobs = pg_cron_jobs(conn)
    row = conn.execute(
        """SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                  SELECT oid FROM pg_database WHERE datname = current_database())
              AND ((l.classid::bigint << 32) | l.objid::bigint) = %s""",
        (LEADER_LOCK_KEY,),
    ).fetchone()
    leader = str(row[0]) if row else None
    mode = "pg_cron" if jobs else "in-process"
    return ScheduleStatus(mode, jobs is not None, jobs or [], leader)


# ---------------------------------------------------------------------------
# In-process mode: the leader runs due tasks
# ---------------------------------------------------------------------------


class TaskClock:
    """When each task is next due, by its schedule."""

    def __init__(self, tasks: Sequence[MaintenanceTask], now: datetime | None = None) -> None:
        start = now or datetime.now(UTC)
        self._tasks = list(tasks)
        self._due = {t.name: parse_schedule(t.schedule).next_after(start) for t in self._tasks}

    def pop_due(self, now: datetime) -> list[MaintenanceTask]:
        due = [t for t in self._tasks if self._due[t.name] <= now]
        for t in due:
            self._due[t.name] = parse_schedule(t.schedule).next_after(now)
        return due

    def next_due(self) -> datetime | None:
        return min(self._due.values(), default=None)


async def run_task(conn: psycopg.AsyncConnection[Any], task: MaintenanceTask) -> None:
    """Run one task's SQL. A failing task is logged and skipped (maintenance must not
    stop a worker); a lost connection propagates so the leader reconnects."""
    try:
        await conn.execute(sql.SQL(task.sql))  # our own fixed text, never user input
        log.info("maintenance %s done", task.name)
    except psycopg.Error as exc:
        if conn.broken or isinstance(exc, psycopg.OperationalError):
            raise
        log.warning("maintenance %s failed: %s", task.name, exc)


def pg_cron_manages(url: str) -> bool:
    """True when pg_cron runs jobq's schedules for this database (workers then don't)."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            jobs = pg_cron_jobs(conn)
    except psycopg.Error:
        return False
    return any(j["active"] for j in jobs or [])


async def sleep_until(moment: datetime, stop: asyncio.Event) -> None:
    delay = max(0.0, (moment - datetime.now(UTC)).total_seconds())
    await wait_event(stop, delay)
