"""The spec's benchmark table, row by row, at the spec's sizes.

| Query Type | Dataset Size | Expected Time |
| User job list (paginated) | 1K jobs/user | <5ms |
| Worker job pickup | 10K pending | <10ms |
| Job status check | N/A | <2ms |
| Job result cache lookup | N/A | <5ms |
| Deduplication check | 100 pending/user | <5ms |
| Bulk job creation | 1K jobs | <100ms |
| Cleanup old jobs | 100K completed | <500ms |
| Analytics query | 1M total jobs | <50ms |

Each row is the named query the client or worker runs (``queries.sql``), as the
identity that runs it (a user, or service_role), one transaction per call;
p50/p95 over repeated calls; the plan is what auto_explain reports for the
statements inside the function (EXPLAIN ANALYZE, FORMAT JSON).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg

from bench import common, seed
from bench.measure import Measured, measure, op_params
from bench.results_model import Row, Section
from jobq import _ops

USER = "authenticated"
SERVICE = "service_role"


@dataclass(frozen=True)
class SpecSizes:
    jobs: int = 1_000_000
    users: int = 1_000
    pending: int = 10_000
    cleanup: int = 100_000
    bulk: int = 1_000
    logs: int = 1_000_000  # log rows beside the jobs (cleanup deletes a job's logs too)
    runs: int = 200
    slow_runs: int = 10  # bulk, cleanup, global analytics

    @property
    def full(self) -> bool:
        return self.jobs >= 1_000_000 and self.cleanup >= 100_000


QUICK = SpecSizes(
    jobs=100_000, users=100, pending=10_000, cleanup=20_000, logs=100_000, runs=60, slow_runs=5
)
FULL = SpecSizes()


def list_params(user: UUID | None, limit: int = 50, offset: int = 0) -> Mapping[str, Any]:
    return op_params(
        _ops.list_jobs(
            user_id=user,
            status=None,
            job_type=None,
            limit=limit,
            offset=offset,
            order_by="created_at",
            order_dir="DESC",
            params_contains=None,
            result_contains=None,
        )
    )


def job_ids_of(url: str, user: UUID, n: int = 1000) -> list[UUID]:
    with psycopg.connect(url) as c:
        return [
            r[0]
            for r in c.execute(
                "SELECT id FROM job_queue WHERE user_id = %s ORDER BY random() LIMIT %s", (user, n)
            ).fetchall()
        ]


def seed_special(url: str) -> None:
    """The dedup and cache users' rows, made fresh (their windows are minutes long)."""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SET session_replication_role = replica")
        c.execute(seed.SEED_SPECIAL.encode())
        c.execute("ANALYZE job_queue")


def row_from(
    section: str,
    name: str,
    size: str,
    m: Measured,
    *,
    limit_ms: float | None,
    judged: bool,
    target: str = "",
    note: str = "",
) -> Row:
    p50 = m.timing.p50 * 1000
    p95 = m.timing.p95 * 1000
    ok = None
    if limit_ms is not None and judged:
        # Judged on the median; a p95 over the figure is said in the note (the
        # machine is shared, so tails carry other people's load).
        ok = p50 < limit_ms
        if p95 >= limit_ms:
            note = "; ".join(x for x in (note, "p95 over the figure") if x)
    if m.plan.hit or m.plan.read:
        io = f"last run: {m.plan.hit} buffers hit, {m.plan.read} read"
        if m.plan.wal_fpi:
            io += f", {m.plan.wal_fpi} WAL full-page images"
        note = "; ".join(x for x in (note, io) if x)
    plan = m.plan.describe()
    if m.plan.scans:
        plan += " (index-only)" if m.plan.index_only else ""
    return Row(
        section=section,
        name=name,
        size=size,
        unit="ms",
        p50=p50,
        p95=p95,
        target=target or (f"< {limit_ms:g} ms" if limit_ms else ""),
        ok=ok,
        plan=plan,
        note=note,
    )


# --- the measurements shared with scale.py ------------------------------------------


def m_list(url: str, user: UUID, runs: int) -> Measured:
    return measure(
        url, "get_user_jobs", lambda i: list_params(None), runs=runs, role=USER, user=user
    )


def m_pickup(url: str, runs: int) -> Measured:
    def check(rows: list[Any]) -> None:
        assert len(rows) == 1, "no pending job to pick up"

    return measure(
        url,
        "claim_jobs",
        lambda i: {"worker_id": "bench-pickup", "limit": 1, "job_types": None},
        runs=runs,
        role=SERVICE,
        with_commit=True,
        check=check,
    )


def m_status(url: str, user: UUID, runs: int) -> Measured:
    ids = job_ids_of(url, user)

    def check(rows: list[Any]) -> None:
        assert len(rows) == 1

    return measure(
        url,
        "get_job",
        lambda i: op_params(_ops.get_job(ids[i % len(ids)])),
        runs=runs,
        role=USER,
        user=user,
        check=check,
    )


def run(admin: str, sizes: SpecSizes) -> Section:
    section = Section()
    t_start = time.perf_counter()
    judged = sizes.full
    list_user = seed.user_id(7)
    with common.scratch_db(admin, "spec") as url:
        rep = seed.seed_jobs(url, jobs=sizes.jobs, users=sizes.users, pending=sizes.pending)
        section.notes.append(
            f"spec table: seeded {sizes.jobs:,} jobs ({sizes.users:,} users x "
            f"{sizes.jobs // sizes.users:,} jobs, {sizes.pending:,} pending)"
            f" in {rep.seconds:.1f} s "
            f"+ VACUUM ANALYZE {rep.vacuum_seconds:.1f} s"
        )
        lrep, _ = seed.seed_logs(url, logs=sizes.logs, log_job_lines=1000)
        section.notes.append(
            f"spec table: {sizes.logs:,} log rows beside them in {lrep.seconds:.1f} s "
            f"+ {lrep.vacuum_seconds:.1f} s"
        )
        seed_special(url)
        jobs_per_user = sizes.jobs // sizes.users
        total = (
            f"{sizes.jobs / 1e6:g}M jobs in table"
            if sizes.jobs >= 1e6
            else f"{sizes.jobs / 1e3:g}K jobs in table"
        )

        m = m_list(url, list_user, sizes.runs)
        assert len(m.last_rows) == 50
        section.rows.append(
            row_from(
                "spec",
                "User job list (paginated, 50/page, as the user)",
                f"{jobs_per_user:,} jobs/user, {total}",
                m,
                limit_ms=5,
                judged=judged,
            )
        )

        m = m_pickup(url, sizes.runs)
        section.rows.append(
            row_from(
                "spec",
                "Worker job pickup (claim_jobs, 1 job)",
                f"{sizes.pending:,} pending, {total}",
                m,
                limit_ms=10,
                judged=judged,
                note="includes COMMIT",
            )
        )

        m = m_status(url, list_user, sizes.runs)
        section.rows.append(
            row_from(
                "spec",
                "Job status check (get_job, as the user)",
                total,
                m,
                limit_ms=2,
                judged=judged,
            )
        )

        def cache_check(rows: list[Any]) -> None:
            assert len(rows) == 1, "cache miss"

        m = measure(
            url,
            "get_cached_job_result",
            lambda i: op_params(
                _ops.get_cached_job_result(
                    "sync_youtube",
                    {"account": f"cache_{i % 100}"},
                    user_id=None,
                    ttl=timedelta(hours=1),
                )
            ),
            runs=sizes.runs,
            role=USER,
            user=seed.CACHE_USER,
            check=cache_check,
        )
        section.rows.append(
            row_from(
                "spec",
                "Job result cache lookup (hit, as the user)",
                total,
                m,
                limit_ms=5,
                judged=judged,
            )
        )

        def dedup_check(rows: list[Any]) -> None:
            assert len(rows) == 1, f"dedup returned {rows}"
            assert rows[0][1] is False, f"dedup missed: {rows}"

        m = measure(
            url,
            "find_or_create_job",
            lambda i: op_params(
                _ops.find_or_create_job(
                    "sync_youtube",
                    {"account": f"dedup_{i % 100}"},
                    user_id=None,
                    dedupe_window=timedelta(minutes=5),
                    priority=0,
                    max_retries=3,
                )
            ),
            runs=sizes.runs,
            role=USER,
            user=seed.DEDUP_USER,
            check=dedup_check,
            with_commit=True,
        )
        section.rows.append(
            row_from(
                "spec",
                "Deduplication check (find_or_create_job, hit)",
                "100 pending/user, " + total,
                m,
                limit_ms=5,
                judged=judged,
            )
        )

        batch = op_params(
            _ops.create_jobs(
                [{"job_type": "bulk_item", "params": {"n": i}} for i in range(sizes.bulk)],
                user_id=list_user,
            )
        )

        def bulk_check(rows: list[Any]) -> None:
            assert len(rows) == sizes.bulk

        m = measure(
            url,
            "create_jobs",
            lambda i: batch,
            runs=sizes.slow_runs * 2,
            role=SERVICE,
            with_commit=True,
            check=bulk_check,
            warmup=2,
        )
        section.rows.append(
            row_from(
                "spec",
                f"Bulk job creation (create_jobs, {sizes.bulk:,} per call)",
                f"{sizes.bulk:,} jobs",
                m,
                limit_ms=100,
                judged=True,
                note="includes COMMIT",
            )
        )

        def cleanup_check(rows: list[Any]) -> None:
            assert rows[0][0] == sizes.cleanup, f"cleanup deleted {rows[0][0]}"

        m = measure(
            url,
            f"SELECT cleanup_old_jobs(p_older_than => '7 days', p_batch_size => {sizes.cleanup})",
            lambda i: {},
            runs=sizes.slow_runs,
            role=SERVICE,
            rollback=True,
            check=cleanup_check,
            warmup=1,
        )
        section.rows.append(
            row_from(
                "spec",
                "Cleanup old jobs (cleanup_old_jobs, one batch)",
                f"{sizes.cleanup:,} completed deleted, {total}",
                m,
                limit_ms=500,
                judged=judged,
                note="rolled back after each run; no COMMIT",
            )
        )

        # What the dashboard's all-users view polls instead of all-time stats
        # (NOTES.md, proposal P3): unfinished work from the depth index, finished
        # jobs of the last hour from the throughput window.
        m = measure(url, "get_queue_depth", lambda i: {}, runs=sizes.runs, role=SERVICE)
        section.rows.append(
            row_from(
                "spec",
                "Analytics, all users: queue depth (get_queue_depth, service)",
                f"{sizes.pending:,} pending, {total}",
                m,
                limit_ms=50,
                judged=judged,
                note="the dashboard's all-users counts",
            )
        )
        m = measure(
            url,
            "get_job_throughput",
            lambda i: op_params(_ops.throughput(user_id=None, since=timedelta(hours=1))),
            runs=sizes.runs,
            role=SERVICE,
        )
        section.rows.append(
            row_from(
                "spec",
                "Analytics, all users: last hour (get_job_throughput, service)",
                total,
                m,
                limit_ms=50,
                judged=judged,
                note="the dashboard's all-users throughput and durations",
            )
        )

        m = measure(
            url,
            "get_job_queue_stats",
            lambda i: op_params(_ops.stats(user_id=None, since=None)),
            runs=sizes.runs,
            role=USER,
            user=list_user,
        )
        section.rows.append(
            row_from(
                "spec",
                "Analytics query (get_job_queue_stats, one user's, as in the spec)",
                f"{jobs_per_user:,} jobs of the user, {total}",
                m,
                limit_ms=50,
                judged=judged,
            )
        )
        m = measure(
            url,
            "get_job_queue_stats",
            lambda i: op_params(_ops.stats(user_id=None, since=None)),
            runs=sizes.slow_runs,
            role=SERVICE,
            warmup=1,
        )
        section.rows.append(
            row_from(
                "spec",
                "Analytics query (get_job_queue_stats, all users, service)",
                total,
                m,
                limit_ms=50,
                judged=judged,
            )
        )
    section.seconds = time.perf_counter() - t_start
    return section
