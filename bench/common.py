"""Shared pieces of the benchmarks: the server, scratch databases, timing, plans.

Every benchmark runs in databases of its own (``jobq_bench_<what>_<hex>``),
created on the server under test, migrated with :func:`jobq.migrate.migrate`
and dropped at the end. Nothing else on the server is read or changed.
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jobq import migrate

# Scratch databases created by this process, dropped by drop_all() on exit.
_CREATED: list[tuple[str, str]] = []


def admin_url() -> str:
    """Superuser URL of the server under test: DATABASE_URL, else the embedded PG 18."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    from jobq import embedded

    return embedded.embedded_url("postgres")


def url_for(admin: str, dbname: str) -> str:
    return make_conninfo(admin, dbname=dbname)


def create_db(admin: str, tag: str, *, migrated: bool = True) -> str:
    """A new database for one benchmark (migrated unless told otherwise); returns its URL."""
    name = f"jobq_bench_{tag}_{secrets.token_hex(3)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    _CREATED.append((admin, name))
    url = url_for(admin, name)
    if migrated:
        with psycopg.connect(url) as c:
            migrate.migrate(c)
    return url


def drop_db(url: str) -> None:
    name = conninfo_to_dict(url)["dbname"]
    for admin, created in list(_CREATED):
        if created == name:
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            _CREATED.remove((admin, created))


def drop_all() -> None:
    for admin, name in list(_CREATED):
        try:
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        except psycopg.Error as exc:  # pragma: no cover - best effort at exit
            print(f"could not drop {name}: {exc}")
        _CREATED.remove((admin, name))


@contextmanager
def scratch_db(admin: str, tag: str, *, migrated: bool = True) -> Iterator[str]:
    url = create_db(admin, tag, migrated=migrated)
    try:
        yield url
    finally:
        drop_db(url)


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank-interpolated percentile (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def time_calls(fn: Callable[[], Any], runs: int, warmup: int = 3) -> list[float]:
    """Seconds per call of ``fn`` over ``runs`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


@dataclass
class Timing:
    samples: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p95(self) -> float:
        return percentile(self.samples, 95)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 99)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)


# ---------------------------------------------------------------------------
# Plans: the plan each statement inside a function really ran with
# ---------------------------------------------------------------------------


@dataclass
class PlanSummary:
    scans: list[tuple[str, str]] = field(default_factory=list)  # (node type, index or table)
    execution_ms: float | None = None
    # Summed over the statements' plans (nested ones are inside their caller's too,
    # so these are upper bounds): shared buffers hit / read, WAL full-page images.
    hit: int = 0
    read: int = 0
    wal_fpi: int = 0

    @property
    def indexes(self) -> list[str]:
        seen: list[str] = []
        for _, name in self.scans:
            if (name.startswith("idx_") or name.endswith("_pkey")) and name not in seen:
                seen.append(name)
        return seen

    @property
    def index_only(self) -> bool:
        return bool(self.scans) and all(t == "Index Only Scan" for t, _ in self.scans)

    def describe(self) -> str:
        """Scans in plan order; a partitioned table's per-partition scans are folded
        into one item with their count (seq scans there are of empty partitions)."""
        if not self.scans:
            return "no table scan"
        short = {
            "Index Only Scan": "index-only",
            "Index Scan": "index",
            "Bitmap Index Scan": "bitmap",
            "Seq Scan": "seq scan",
        }
        items: dict[str, int] = {}
        for node, name in self.scans:
            m = _PARTITION.match(name)
            if m:
                what = m.group(1) or "(table)"
                key = f"{short.get(node, node)} job_log partitions {what}"
            else:
                key = f"{short.get(node, node)} {name}"
            items[key] = items.get(key, 0) + 1
        return "; ".join(f"{k} x{n}" if n > 1 else k for k, n in items.items())


_PARTITION = re.compile(r"^job_log_(?:\d{4}_\d{2}|default)(?:_(.+))?$")


_SCAN_NODES = {"Index Only Scan", "Index Scan", "Bitmap Index Scan", "Seq Scan"}
_JOB_TABLES = ("job_queue", "job_log")


def _walk(node: dict[str, Any], out: list[tuple[str, str]]) -> None:
    kind = node.get("Node Type", "")
    if kind in _SCAN_NODES:
        rel = node.get("Relation Name", "")
        name = node.get("Index Name") or rel
        # Only scans of jobq's tables matter (not pg_roles in the caller check).
        if (rel or "").startswith(_JOB_TABLES) or (name or "").startswith(("idx_", "job_")):
            out.append((kind, name))
    for child in node.get("Plans", []):
        _walk(child, out)


def summarize_plans(plans: list[dict[str, Any]]) -> PlanSummary:
    summary = PlanSummary()
    total = 0.0
    for p in plans:
        _walk(p["Plan"], summary.scans)
        total = max(total, float(p.get("_duration_ms", 0.0)))
    # The outermost statement (the longest) holds everything nested in it.
    if plans:
        top = max(plans, key=lambda p: float(p.get("_duration_ms", 0.0)))["Plan"]
        summary.hit = int(top.get("Shared Hit Blocks", 0))
        summary.read = int(top.get("Shared Read Blocks", 0))
        summary.wal_fpi = int(top.get("WAL FPI", 0))
    summary.execution_ms = total or None
    return summary


@contextmanager
def auto_explain(conn: psycopg.Connection[Any]) -> Iterator[list[dict[str, Any]]]:
    """Collect EXPLAIN (ANALYZE, FORMAT JSON) of every statement, nested ones included.

    auto_explain reports each plan as a NOTICE on this connection (superuser:
    LOAD). The list fills while the block runs.
    """
    plans: list[dict[str, Any]] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        msg = diag.message_primary or ""
        start = msg.find("{")
        if msg.startswith("duration:") and start >= 0:
            with suppress(ValueError, IndexError):
                plan = json.loads(msg[start:])
                plan["_duration_ms"] = float(msg.split()[1])
                plans.append(plan)

    conn.execute("LOAD 'auto_explain'")
    for k, v in (
        ("auto_explain.log_min_duration", "0"),
        ("auto_explain.log_analyze", "on"),
        ("auto_explain.log_buffers", "on"),
        ("auto_explain.log_wal", "on"),
        ("auto_explain.log_format", "json"),
        ("auto_explain.log_nested_statements", "on"),
        ("auto_explain.log_level", "notice"),
        ("client_min_messages", "notice"),
    ):
        conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(*k.split(".")), sql.Literal(v)))
    conn.add_notice_handler(on_notice)
    try:
        yield plans
    finally:
        conn.remove_notice_handler(on_notice)
        conn.execute("SET auto_explain.log_min_duration = -1")


# ---------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------


def machine_info(admin: str) -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = "?"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                    break
    except OSError:
        pass
    with psycopg.connect(admin, autocommit=True) as c:
        pg = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        settings: dict[str, str] = dict(
            c.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
                (["fsync", "synchronous_commit", "shared_buffers", "wal_sync_method"],),
            ).fetchall()
        )
    try:
        kernel = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    except OSError:
        kernel = "?"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": ram,
        "postgres": pg,
        "python": platform.python_version(),
        "kernel": kernel,
        "server": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded",
        "pg_settings": ", ".join(f"{k}={v}" for k, v in sorted(settings.items())),
        "load at start": machine_load(),
    }


def machine_load() -> str:
    """Load average and other pytest runs: this 2-core machine is shared while we measure."""
    one, five, _ = os.getloadavg()
    try:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        others = sum(1 for line in ps.splitlines() if "pytest" in line and "python" in line)
    except OSError:
        others = -1
    return f"loadavg {one:.1f} (1 min) {five:.1f} (5 min); {others} pytest process(es) running"


# The user bench jobs belong to when no particular user matters.
BENCH_USER = "00000000-0000-4000-8000-0000000b0b0b"
