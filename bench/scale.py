"""Scale: list, pickup and status at a small and a large table; logs across partitions.

Both databases have the same shape (1,000 jobs per user, 10,000 pending, the
rest mostly completed); only the number of users, hence rows, differs. The
degradation is p50(large) / p50(small). Log search (a word on 1,000 lines, over every
job's logs, service) and log paging (a job's 1,000 lines, 100 a page, as its
user) run over monthly partitions holding the log rows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench import common, seed
from bench.measure import Measured, measure, op_params
from bench.results_model import Section
from bench.spec_table import m_list, m_pickup, m_status, row_from
from jobq import _ops


@dataclass(frozen=True)
class ScaleSizes:
    small_jobs: int = 100_000
    large_jobs: int = 10_000_000
    small_logs: int = 100_000
    large_logs: int = 10_000_000
    runs: int = 200


QUICK = ScaleSizes(large_jobs=1_000_000, large_logs=1_000_000, runs=60)
FULL = ScaleSizes()


def _fmt(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}K"


def _logs_params(job: Any, *, search: str | None = None, offset: int = 0) -> Mapping[str, Any]:
    return op_params(_ops.get_logs(job, limit=100, offset=offset, level=None, search=search))


def _seed_db(admin: str, jobs: int, logs: int, notes: list[str]) -> tuple[str, Any]:
    url = common.create_db(admin, f"scale{_fmt(jobs).lower()}")
    rep = seed.seed_jobs(url, jobs=jobs, users=jobs // 1000, pending=10_000)
    lrep, log_job = seed.seed_logs(url, logs=logs, log_job_lines=1000)
    notes.append(
        f"scale {_fmt(jobs)}: seeded {jobs:,} jobs in {rep.seconds:.0f} s "
        f"(+ VACUUM ANALYZE {rep.vacuum_seconds:.0f} s) and {logs:,} log rows in "
        f"{lrep.seconds:.0f} s (+ {lrep.vacuum_seconds:.0f} s)"
    )
    return url, log_job


def _found(n: int) -> Any:
    def check(rows: list[Any]) -> None:
        assert len(rows) == n, f"{len(rows)} log rows, expected {n}"

    return check


def _figures(url: str, logs: int, log_job: Any, runs: int) -> dict[str, Measured]:
    user = seed.user_id(7)
    return {
        "list": m_list(url, user, runs),
        "pickup": m_pickup(url, runs),
        "status": m_status(url, user, runs),
        "log_search": measure(
            url,
            "get_job_logs",
            lambda i: _logs_params(None, search=f"tok{(i * 37) % max(1, logs // 1000)}"),
            runs=runs,
            role="service_role",
            check=_found(100),
        ),
        "log_page": measure(
            url,
            "get_job_logs",
            lambda i: _logs_params(log_job),
            runs=runs,
            role="authenticated",
            user=seed.LOG_USER,
            check=_found(100),
        ),
        "log_page_deep": measure(
            url,
            "get_job_logs",
            lambda i: _logs_params(log_job, offset=900),
            runs=runs,
            role="authenticated",
            user=seed.LOG_USER,
            check=_found(100),
        ),
    }


def _merge(into: dict[str, Measured], more: dict[str, Measured]) -> None:
    for k, m in more.items():
        if k in into:
            into[k].timing.samples.extend(m.timing.samples)
            into[k].plan = m.plan
        else:
            into[k] = m


def _measure_both(
    admin: str, sizes: ScaleSizes, notes: list[str]
) -> tuple[dict[str, Measured], dict[str, Measured]]:
    """Both databases seeded first, then measured in alternating blocks, so that a
    change of load on the shared machine hits both sides of each ratio alike."""
    small_url, small_job = _seed_db(admin, sizes.small_jobs, sizes.small_logs, notes)
    large_url, large_job = _seed_db(admin, sizes.large_jobs, sizes.large_logs, notes)
    small: dict[str, Measured] = {}
    large: dict[str, Measured] = {}
    blocks = 4
    try:
        for _ in range(blocks):
            _merge(small, _figures(small_url, sizes.small_logs, small_job, sizes.runs // blocks))
            _merge(large, _figures(large_url, sizes.large_logs, large_job, sizes.runs // blocks))
    finally:
        common.drop_db(large_url)
        common.drop_db(small_url)
    return small, large


def run(admin: str, sizes: ScaleSizes) -> Section:
    section = Section()
    t_start = time.perf_counter()
    small, large = _measure_both(admin, sizes, section.notes)
    judged = sizes.large_jobs >= 10_000_000
    s, lg = _fmt(sizes.small_jobs), _fmt(sizes.large_jobs)
    names = {
        "list": ("User job list (50/page, as the user)", 5.0),
        "pickup": ("Worker job pickup (claim 1, 10K pending)", 10.0),
        "status": ("Job status check (as the user)", 2.0),
    }
    for key, (name, limit) in names.items():
        a, b = small[key], large[key]
        section.rows.append(
            row_from("scale", name, f"{s} jobs in table", a, limit_ms=limit, judged=False)
        )
        row = row_from("scale", name, f"{lg} jobs in table", b, limit_ms=limit, judged=judged)
        row.ratio = b.timing.p50 / a.timing.p50
        row.ratio_of = f"p50 at {s}"
        row.target = f"<= 1.5 x p50 at {s}; < {limit:g} ms"
        row.ok = (row.ratio <= 1.5 and b.timing.p50 * 1000 < limit) if judged else None
        section.rows.append(row)
    ls, ll = _fmt(sizes.small_logs), _fmt(sizes.large_logs)
    for key, name in (
        (
            "log_search",
            "Log search, every job's logs (word on 1,000 lines: 100/page + total, service)",
        ),
        ("log_page", "Log paging, one job's 1,000 lines (first page of 100, as the user)"),
        ("log_page_deep", "Log paging, one job's 1,000 lines (page 10 of 10, as the user)"),
    ):
        a, b = small[key], large[key]
        section.rows.append(
            row_from("scale", name, f"{ls} log rows", a, limit_ms=None, judged=False)
        )
        row = row_from(
            "scale", name, f"{ll} log rows, monthly partitions", b, limit_ms=None, judged=False
        )
        row.ratio = b.timing.p50 / a.timing.p50
        row.ratio_of = f"p50 at {ls} log rows"
        section.rows.append(row)
    section.seconds = time.perf_counter() - t_start
    return section
