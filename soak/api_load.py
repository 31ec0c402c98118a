"""Sustained mixed load at the HTTP API: ``python -m soak.api_load`` (``make load``).

    python -m soak.api_load [--users 50] [--duration 600] [--workers 1]
                            [--database-url URL] [--out soak/results] [--name NAME]

On ``$DATABASE_URL`` (or ``--database-url``), else jobq's embedded PostgreSQL 18,
in a scratch database dropped at the end, it starts

* the real API server, ``jobq serve`` (uvicorn) on a free loopback port with an
  HS256 secret made for the run;
* ``--workers`` worker processes (``jobq worker soak.api_load:registry``) whose
  handler runs each job in a few steps, reporting progress and writing a log
  line at each: the progress and log writes go through the worker, the only
  writer the system allows (the API has no endpoint for them);

then drives ``--users`` users, each with its own JWT and user id, in a closed
loop for ``--duration`` seconds from one asyncio process (httpx, one keep-alive
connection per user). Each user picks its next request at random by weight:
create a job (POST /jobs), read a job's status (GET /jobs/{id}), list its jobs
(GET /jobs) and read a job's logs (GET /jobs/{id}/logs). A 429 on create is the
10-active-jobs-per-user limit working: counted as a refusal, not an error.

Reported (``soak/results/load-<date>.md`` and ``.json``): requests/s per
operation and overall, p50/p95/p99 latency, answers by status, errors (any
status other than the expected ones, and transport errors), rate-limit
refusals, jobs created vs completed, and for job_queue and every job_log
partition the total, heap, TOAST and each index's size before and after,
with pg_stat_user_tables' live/dead tuples and (auto)vacuum/analyze counts
under the spec's autovacuum settings. Exit 1 on any error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from bench.api_bench import free_port, wait_healthy
from bench.common import admin_url as default_admin_url
from bench.common import percentile

from jobq import embedded
from jobq.api import mint_token
from jobq.handlers import JobContext, Registry
from soak.report import machine_info
from soak.server import create_scratch, drop_scratch, server_facts

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# -- the worker's handler ------------------------------------------------------------

registry = Registry()
JOB_TYPE = "load.steps"


@registry.handler(JOB_TYPE)
async def steps(ctx: JobContext) -> dict[str, Any]:
    """``params.steps`` steps of ``params.step_ms``: progress and a log line at each."""
    n = int(ctx.params.get("steps", 3))
    step_ms = float(ctx.params.get("step_ms", 20))
    for i in range(1, n + 1):
        await asyncio.sleep(step_ms / 1000.0)
        ctx.progress(int(100 * i / (n + 1)), f"step {i} of {n}")
        ctx.log("info", f"load step {i} of {n}", step=i, user=str(ctx.job.user_id))
    return {"steps": n}


# -- the load ------------------------------------------------------------------------

OPS = ("create", "status", "list", "logs")
# The answers each operation expects; anything else is an error.
EXPECTED = {"create": {201}, "status": {200}, "list": {200}, "logs": {200}}
RATE_LIMITED = 429  # create only: the per-user active job limit


def parse_mix(text: str) -> dict[str, float]:
    """``create=2,status=4,list=2,logs=2`` -> weights (every op needs one)."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        mix[name.strip()] = float(weight) if weight else 1.0
    unknown = set(mix) - set(OPS)
    if unknown or set(mix) != set(OPS) or any(w <= 0 for w in mix.values()):
        raise ValueError(f"the mix needs a positive weight for each of {OPS}, got {text!r}")
    return mix


@dataclass
class Tally:
    """What the users saw, per operation."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: {op: Counter() for op in OPS})
    transport: dict[str, Counter[str]] = field(
        default_factory=lambda: {op: Counter() for op in OPS}
    )
    per_second: Counter[int] = field(default_factory=Counter)
    # latencies by minute of the run, for the timeline
    per_minute: dict[int, list[float]] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    created_ids: int = 0

    def errors(self, op: str) -> int:
        bad = sum(
            n
            for status, n in self.statuses[op].items()
            if status not in EXPECTED[op] and not (op == "create" and status == RATE_LIMITED)
        )
        return bad + sum(self.transport[op].values())

    @property
    def total_errors(self) -> int:
        return sum(self.errors(op) for op in OPS)


class User:
    def __init__(self, uid: uuid.UUID, http: httpx.AsyncClient, rng: random.Random) -> None:
        self.uid = uid
        self.http = http
        self.rng = rng
        self.jobs: list[str] = []  # this user's job ids, newest last

    def pick_job(self) -> str:
        # mostly recent jobs (the ones a user watches), sometimes an older one
        if self.rng.random() < 0.8:
            return self.rng.choice(self.jobs[-10:])
        return self.rng.choice(self.jobs)


async def user_loop(
    user: User,
    mix: dict[str, float],
    tally: Tally,
    stop_at: float,
    t0: float,
    params: dict[str, Any],
    think: float,
) -> None:
    ops, weights = list(mix), list(mix.values())
    while True:
        now = time.monotonic()
        if now >= stop_at:
            return
        op = "create" if not user.jobs else user.rng.choices(ops, weights)[0]
        if op == "create":
            method, path, body = "POST", "/jobs", {"job_type": JOB_TYPE, "params": params}
        elif op == "status":
            method, path, body = "GET", f"/jobs/{user.pick_job()}", None
        elif op == "list":
            method, path, body = "GET", "/jobs?limit=20", None
        else:
            method, path, body = "GET", f"/jobs/{user.pick_job()}/logs?limit=20", None
        start = time.perf_counter()
        try:
            r = await user.http.request(method, path, json=body)
        except httpx.TransportError as exc:
            tally.transport[op][type(exc).__name__] += 1
            if len(tally.error_examples) < 20:
                tally.error_examples.append(f"{method} {path}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.1)
            continue
        elapsed = time.perf_counter() - start
        tally.latencies[op].append(elapsed)
        tally.statuses[op][r.status_code] += 1
        second = int(time.monotonic() - t0)
        tally.per_second[second] += 1
        tally.per_minute.setdefault(second // 60, []).append(elapsed)
        if op == "create" and r.status_code == 201:
            user.jobs.append(r.json()["job_id"])
            tally.created_ids += 1
        elif (
            r.status_code not in EXPECTED[op]
            and not (op == "create" and r.status_code == RATE_LIMITED)
            and len(tally.error_examples) < 20
        ):
            tally.error_examples.append(f"{method} {path}: {r.status_code} {r.text[:200]}")
        if think:
            await asyncio.sleep(user.rng.uniform(0, 2 * think))


async def drive(
    base: str,
    secret: str,
    users: int,
    duration: float,
    mix: dict[str, float],
    seed: int,
    params: dict[str, Any],
    think: float,
) -> tuple[Tally, float]:
    """``users`` closed-loop users for ``duration`` seconds: (tally, seconds)."""
    rng = random.Random(seed)  # noqa: S311 - load data, not secrets
    tally = Tally()
    ttl = int(duration) + 3600
    people = []
    for i in range(users):
        uid = uuid.UUID(int=rng.getrandbits(128), version=4)
        token = mint_token(secret, user_id=uid, ttl=ttl)
        http = httpx.AsyncClient(
            base_url=base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        people.append(User(uid, http, random.Random(seed * 1000 + i)))  # noqa: S311
    try:
        await wait_healthy(people[0].http)
        t0 = time.monotonic()
        stop_at = t0 + duration
        await asyncio.gather(
            *(user_loop(u, mix, tally, stop_at, t0, params, think) for u in people)
        )
        seconds = time.monotonic() - t0
    finally:
        for u in people:
            await u.http.aclose()
    return tally, seconds


# -- sizes and table statistics ------------------------------------------------------

SIZES = """
WITH rels AS (
    SELECT 'job_queue'::regclass AS rel
    UNION ALL
    SELECT relid FROM pg_partition_tree('job_log') WHERE isleaf
)
SELECT c.relname,
       pg_total_relation_size(c.oid),
       pg_relation_size(c.oid),
       coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),
       pg_indexes_size(c.oid),
       coalesce(
           (SELECT json_object_agg(i.relname, pg_relation_size(i.oid) ORDER BY i.relname)
              FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
             WHERE x.indrelid = c.oid),
           '{}'::json)
  FROM rels JOIN pg_class c ON c.oid = rels.rel
 ORDER BY c.relname
"""

STATS = """
SELECT relname, n_live_tup, n_dead_tup, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del,
       autovacuum_count, autoanalyze_count, vacuum_count, analyze_count,
       last_autovacuum::text, last_autoanalyze::text
  FROM pg_stat_user_tables
 WHERE relname = 'job_queue' OR relname LIKE 'job\\_log\\_%'
 ORDER BY relname
"""

STAT_COLS = (
    "live",
    "dead",
    "inserted",
    "updated",
    "hot_updated",
    "deleted",
    "autovacuum_count",
    "autoanalyze_count",
    "vacuum_count",
    "analyze_count",
    "last_autovacuum",
    "last_autoanalyze",
)


def snapshot(url: str) -> dict[str, Any]:
    """Sizes (bytes) and pg_stat_user_tables rows of job_queue and job_log's partitions."""
    with psycopg.connect(url, autocommit=True) as c:
        sizes = {
            name: {"total": t, "heap": h, "toast": toast, "indexes": ix, "index": idx}
            for name, t, h, toast, ix, idx in c.execute(SIZES).fetchall()
        }
        stats = {row[0]: dict(zip(STAT_COLS, row[1:], strict=True)) for row in c.execute(STATS)}
    return {"sizes": sizes, "stats": stats}


def autovacuum_settings(url: str) -> dict[str, str]:
    with psycopg.connect(url, autocommit=True) as c:
        out = {
            name: str(value)
            for name, value in c.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('autovacuum', 'autovacuum_naptime', 'autovacuum_vacuum_scale_factor',"
                " 'autovacuum_vacuum_threshold', 'autovacuum_vacuum_cost_limit',"
                " 'autovacuum_vacuum_cost_delay') ORDER BY name"
            )
        }
        for rel, opts in c.execute(
            "SELECT c.relname, array_to_string(c.reloptions, ', ') FROM pg_class c"
            " WHERE c.relname IN ('job_queue', 'job_log') AND c.reloptions IS NOT NULL"
        ):
            out[f"{rel} reloptions"] = str(opts)
    return out


SAMPLE = """
SELECT s.n_live_tup, s.n_dead_tup, s.autovacuum_count, pg_total_relation_size('job_queue'),
       (SELECT sum(pg_total_relation_size(relid))::bigint
          FROM pg_partition_tree('job_log') WHERE isleaf)
  FROM pg_stat_user_tables s WHERE s.relid = 'job_queue'::regclass
"""


class Sampler(threading.Thread):
    """job_queue's live/dead tuples, autovacuums and sizes every ``every`` seconds."""

    def __init__(self, url: str, every: float = 10.0) -> None:
        super().__init__(daemon=True, name="load-sampler")
        self.url = url
        self.every = every
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self._done = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as c:
                while not self._done.is_set():
                    row = c.execute(SAMPLE).fetchone()
                    if row is not None:
                        live, dead, av, queue, log = row
                        self.samples.append(
                            {
                                "t": time.monotonic() - self.t0,
                                "live": live,
                                "dead": dead,
                                "autovacuum_count": av,
                                "job_queue_bytes": queue,
                                "job_log_bytes": log,
                            }
                        )
                    self._done.wait(self.every)
        except psycopg.Error as exc:  # the figures go without a timeline, not the run
            print(f"load: sampler stopped: {exc}", file=sys.stderr)

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(10)


def job_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as c:
        return {
            str(s): int(n)
            for s, n in c.execute("SELECT status, count(*) FROM job_queue GROUP BY status")
        }


def log_and_progress(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(
            "SELECT (SELECT count(*) FROM job_log),"
            " (SELECT count(*) FROM job_queue WHERE progress_percent > 0)"
        ).fetchone()
    assert row is not None
    return {"log_rows": int(row[0]), "jobs_with_progress": int(row[1])}


def wait_drained(url: str, timeout: float) -> float:
    """Wait until no job is pending or processing (at most ``timeout`` s): seconds waited."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        counts = job_counts(url)
        if not counts.get("pending") and not counts.get("processing"):
            break
        time.sleep(0.5)
    return time.monotonic() - t


# -- processes -----------------------------------------------------------------------


def start_server(url: str, secret: str, port: int, pool: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "JOBQ_JWT_SECRET": secret,
        "JOBQ_POOL_MIN_SIZE": str(pool),
        "JOBQ_POOL_MAX_SIZE": str(pool),
    }
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "jobq", "serve", "--port", str(port), "--no-access-log"],
            env=env,
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def start_worker(url: str, i: int, concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "COLUMNS": "500",  # one log line per record (rich wraps at the terminal width)
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    cmd = [
        sys.executable,
        "-m",
        "jobq",
        "worker",
        "soak.api_load:registry",
        "--concurrency",
        str(concurrency),
        "--poll-interval",
        "1",
        "--worker-id",
        f"load-w{i}",
    ]
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


REFUSED = re.compile(r"write refused \((\w+)\): (.*?)(?:\s+\w+\.py:\d+)?\s*$")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def refusals(log_dir: Path) -> dict[str, int]:
    """The workers' refused writes, by reason (from their logs)."""
    found: Counter[str] = Counter()
    for log in log_dir.glob("worker-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            m = REFUSED.search(line)
            if m:
                found[f"{m[1]} {UUID_RE.sub('<id>', m[2]).strip()}"] += 1
    return dict(found)


def tree() -> str:
    """The commit the run used, and whether the sources had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True
        ).stdout.split("\n")
    except OSError:
        return "?"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted: {', '.join(changed)}" if changed else "")


# -- the run -------------------------------------------------------------------------


@dataclass
class LoadConfig:
    users: int = 50
    duration: float = 600.0
    workers: int = 1
    worker_concurrency: int = 20
    pool_size: int = 10
    mix: dict[str, float] = field(
        default_factory=lambda: {"create": 2.0, "status": 4.0, "list": 2.0, "logs": 2.0}
    )
    steps: int = 4
    step_ms: float = 250.0
    think_ms: float = 0.0
    drain: float = 60.0
    seed: int = 1


def run_load(cfg: LoadConfig, url: str, log_dir: Path) -> dict[str, Any]:
    """The load on ``url`` (a migrated jobq database): the figures, as a dict."""
    secret = secrets.token_hex(32)
    port = free_port()
    before = snapshot(url)
    load_start = os.getloadavg()[0]
    server = start_server(url, secret, port, cfg.pool_size, log_dir / "server.log")
    workers = [
        start_worker(url, i + 1, cfg.worker_concurrency, log_dir / f"worker-{i + 1}.log")
        for i in range(cfg.workers)
    ]
    params = {"steps": cfg.steps, "step_ms": cfg.step_ms}
    sampler = Sampler(url)
    try:
        sampler.start()
        tally, seconds = asyncio.run(
            drive(
                f"http://127.0.0.1:{port}",
                secret,
                cfg.users,
                cfg.duration,
                cfg.mix,
                cfg.seed,
                params,
                cfg.think_ms / 1000.0,
            )
        )
        load_end = os.getloadavg()[0]
        sampler.stop()
        at_stop = job_counts(url)
        drained = wait_drained(url, cfg.drain)
    finally:
        stop([server, *workers])  # first: nothing below may leave them running
        sampler.stop()
    time.sleep(1.0)  # let the backends' statistics reach pg_stat_user_tables
    after = snapshot(url)
    return figures(cfg, tally, seconds, before, after, at_stop, job_counts(url), url) | {
        "drain_seconds": drained,
        "samples": sampler.samples,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "autovacuum_settings": autovacuum_settings(url),
        "writes": log_and_progress(url),
        "worker_write_refusals": refusals(log_dir),
        "server_exit": server.returncode,
        "worker_exits": [w.returncode for w in workers],
    }


def figures(
    cfg: LoadConfig,
    tally: Tally,
    seconds: float,
    before: dict[str, Any],
    after: dict[str, Any],
    at_stop: dict[str, int],
    at_end: dict[str, int],
    url: str,
) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    for op in OPS:
        lat = tally.latencies[op]
        ops[op] = {
            "requests": len(lat),
            "rps": len(lat) / seconds if seconds else 0.0,
            "p50_ms": percentile(lat, 50) * 1000 if lat else None,
            "p95_ms": percentile(lat, 95) * 1000 if lat else None,
            "p99_ms": percentile(lat, 99) * 1000 if lat else None,
            "max_ms": max(lat) * 1000 if lat else None,
            "statuses": {str(k): v for k, v in sorted(tally.statuses[op].items())},
            "transport_errors": dict(tally.transport[op]),
            "errors": tally.errors(op),
        }
    all_lat = [x for op in OPS for x in tally.latencies[op]]
    per_s = [tally.per_second.get(s, 0) for s in range(int(seconds))]
    per_10s = [sum(per_s[i : i + 10]) / 10 for i in range(0, len(per_s) - 9, 10)]
    five_xx = sum(n for op in OPS for s, n in tally.statuses[op].items() if s >= 500)
    transport = sum(sum(tally.transport[op].values()) for op in OPS)
    return {
        "config": cfg.__dict__,
        "seconds": seconds,
        "operations": ops,
        "overall": {
            "requests": len(all_lat),
            "rps": len(all_lat) / seconds if seconds else 0.0,
            "p50_ms": percentile(all_lat, 50) * 1000 if all_lat else None,
            "p95_ms": percentile(all_lat, 95) * 1000 if all_lat else None,
            "p99_ms": percentile(all_lat, 99) * 1000 if all_lat else None,
            "rps_10s_min": min(per_10s) if per_10s else None,
            "rps_10s_max": max(per_10s) if per_10s else None,
        },
        "minutes": [
            {
                "minute": m + 1,
                "rps": sum(per_s[m * 60 : (m + 1) * 60])
                / max(1, len(per_s[m * 60 : (m + 1) * 60])),
                "p50_ms": percentile(lat, 50) * 1000,
                "p99_ms": percentile(lat, 99) * 1000,
            }
            for m, lat in sorted(tally.per_minute.items())
            if m * 60 < int(seconds)
        ],
        "errors": tally.total_errors,
        "five_xx": five_xx,
        "transport_errors": transport,
        "rate_limited": tally.statuses["create"].get(RATE_LIMITED, 0),
        "error_examples": tally.error_examples,
        "jobs_created": tally.created_ids,
        "jobs_at_stop": at_stop,
        "jobs_at_end": at_end,
        "before": before,
        "after": after,
    }


# -- the report ----------------------------------------------------------------------


def _b(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / 1024:.0f} kB"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def passed(fig: dict[str, Any]) -> bool:
    ok_ops = all(fig["operations"][op]["requests"] > 0 for op in OPS)
    return fig["errors"] == 0 and ok_ops and fig["server_exit"] in (0, -signal.SIGTERM)


def headline(fig: dict[str, Any]) -> str:
    ops = fig["operations"]
    return (
        f"{'PASS' if passed(fig) else 'FAIL'}: {fig['overall']['rps']:,.0f} req/s over "
        f"{fig['seconds']:.0f} s, {fig['config']['users']} users; "
        + ", ".join(f"{op} p99 {_ms(ops[op]['p99_ms'])} ms" for op in OPS)
        + f"; {fig['errors']} errors ({fig['five_xx']} 5xx, {fig['transport_errors']} transport)"
        f", {fig['rate_limited']:,} rate-limited creates; {fig['jobs_created']:,} jobs created, "
        f"{fig['jobs_at_end'].get('completed', 0):,} completed"
    )


def render(fig: dict[str, Any], machine: dict[str, str], command: str, date: str) -> str:
    cfg = fig["config"]
    out: list[str] = []
    w = out.append
    w(f"# jobq sustained API load, {date}\n")
    w(f"`{command}`\n")
    w(f"**{headline(fig)}**\n")
    w(
        f"{cfg['users']} users (each its own JWT and user id), closed loop, think time "
        f"{cfg['think_ms']:g} ms, for {fig['seconds']:.0f} s against one `jobq serve` (uvicorn,"
        f" pool of {cfg['pool_size']}) and {cfg['workers']} worker process(es) (concurrency "
        f"{cfg['worker_concurrency']}); mix "
        + ", ".join(f"{k} {v:g}" for k, v in cfg["mix"].items())
        + f". Each job runs {cfg['steps']} steps of {cfg['step_ms']:g} ms, reporting progress"
        " and writing a log line at each (written by the worker).\n"
    )
    w("## Requests\n")
    w("| operation | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | answers | errors |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    names = {
        "create": "POST /jobs",
        "status": "GET /jobs/{id}",
        "list": "GET /jobs?limit=20",
        "logs": "GET /jobs/{id}/logs?limit=20",
    }
    for op in OPS:
        o = fig["operations"][op]
        answers = ", ".join(f"{k}: {v:,}" for k, v in o["statuses"].items())
        if o["transport_errors"]:
            answers += ", " + ", ".join(f"{k}: {v}" for k, v in o["transport_errors"].items())
        w(
            f"| {op} (`{names[op]}`) | {o['requests']:,} | {o['rps']:,.1f} | {_ms(o['p50_ms'])} "
            f"| {_ms(o['p95_ms'])} | {_ms(o['p99_ms'])} | {_ms(o['max_ms'])} | {answers} "
            f"| {o['errors']} |"
        )
    ov = fig["overall"]
    w(
        f"| **all** | {ov['requests']:,} | {ov['rps']:,.1f} | {_ms(ov['p50_ms'])} "
        f"| {_ms(ov['p95_ms'])} | {_ms(ov['p99_ms'])} | | | {fig['errors']} |\n"
    )
    if ov["rps_10s_min"] is not None:
        w(
            f"Throughput per 10 s window: {ov['rps_10s_min']:,.0f} to {ov['rps_10s_max']:,.0f}"
            " req/s.\n"
        )
    if len(fig["minutes"]) > 1:
        w(
            "By minute (job_queue's tuples and sizes sampled every 10 s,"
            " the last sample of the minute):\n"
        )
        w(
            "| minute | req/s | p50 ms | p99 ms | job_queue live | dead | autovacuums"
            " | job_queue | job_log |"
        )
        w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for m in fig["minutes"]:
            inside = [x for x in fig["samples"] if x["t"] < m["minute"] * 60]
            last = inside[-1] if inside else {}
            w(
                f"| {m['minute']} | {m['rps']:,.0f} | {m['p50_ms']:.0f} | {m['p99_ms']:.0f} "
                f"| {last.get('live', 0):,} | {last.get('dead', 0):,} "
                f"| {last.get('autovacuum_count', 0)} | {_b(last.get('job_queue_bytes'))} "
                f"| {_b(last.get('job_log_bytes'))} |"
            )
        w("")
        if fig["samples"]:
            w(
                f"Most dead tuples in job_queue at a sample: "
                f"{max(x['dead'] for x in fig['samples']):,}.\n"
            )
    w(
        f"Errors: **{fig['errors']}** ({fig['five_xx']} 5xx, {fig['transport_errors']} transport"
        f" errors, the rest unexpected 4xx). Rate-limit refusals (429 on create, the"
        f" 10-active-jobs-per-user limit): {fig['rate_limited']:,}.\n"
    )
    if fig["error_examples"]:
        w("First errors:\n")
        for e in fig["error_examples"]:
            w(f"- `{e}`")
        w("")
    w("## Jobs\n")
    at_stop = ", ".join(f"{k} {v:,}" for k, v in sorted(fig["jobs_at_stop"].items()))
    at_end = ", ".join(f"{k} {v:,}" for k, v in sorted(fig["jobs_at_end"].items()))
    w(f"- created (201): {fig['jobs_created']:,}")
    w(f"- when the load stopped: {at_stop}")
    w(f"- after draining ({fig['drain_seconds']:.1f} s): {at_end}")
    wr = fig["writes"]
    refused = fig.get("worker_write_refusals") or {}
    if refused:
        w(
            "- worker writes refused by the database (logged by the worker, dropped): "
            + "; ".join(f"{n:,} x `{k}`" for k, n in sorted(refused.items()))
        )
    w(
        f"- written by the worker: {wr['log_rows']:,} log rows; {wr['jobs_with_progress']:,}"
        " jobs with progress > 0\n"
    )
    w("## Sizes before and after\n")
    w(
        "`pg_total_relation_size` (total), main fork (heap), TOAST and indexes of job_queue"
        " and each job_log partition; before is the freshly migrated database.\n"
    )
    w("| relation | total | heap | TOAST | indexes |")
    w("| --- | ---: | ---: | ---: | ---: |")
    bs, as_ = fig["before"]["sizes"], fig["after"]["sizes"]
    for rel in sorted(set(bs) | set(as_)):
        b, a = bs.get(rel, {}), as_.get(rel, {})
        if not a.get("total") and not b.get("total"):
            continue
        w(
            f"| {rel} | {_b(b.get('total'))} → {_b(a.get('total'))} "
            f"| {_b(b.get('heap'))} → {_b(a.get('heap'))} "
            f"| {_b(b.get('toast'))} → {_b(a.get('toast'))} "
            f"| {_b(b.get('indexes'))} → {_b(a.get('indexes'))} |"
        )
    w("")
    w("| index | before | after |")
    w("| --- | ---: | ---: |")
    for rel in sorted(as_):
        a_idx = as_[rel]["index"]
        if not as_[rel]["heap"]:
            continue
        b_idx = bs.get(rel, {}).get("index", {})
        for name in sorted(a_idx):
            w(f"| {name} | {_b(b_idx.get(name))} | {_b(a_idx[name])} |")
    w("")
    w("## Tuples and (auto)vacuum\n")
    w("From pg_stat_user_tables after the run (partitions with rows only).\n")
    w(
        "| relation | live | dead | inserted | updated (HOT) | deleted | autovacuum |"
        " autoanalyze | last autovacuum |"
    )
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for rel, s in sorted(fig["after"]["stats"].items()):
        if not s["inserted"]:
            continue
        w(
            f"| {rel} | {s['live']:,} | {s['dead']:,} | {s['inserted']:,} | {s['updated']:,}"
            f" ({s['hot_updated']:,}) | {s['deleted']:,} | {s['autovacuum_count']}"
            f" | {s['autoanalyze_count']} | {s['last_autovacuum'] or '-'} |"
        )
    w("")
    w(
        "Autovacuum settings: "
        + "; ".join(f"{k} = {v}" for k, v in fig["autovacuum_settings"].items())
        + "\n"
    )
    w("## Machine\n")
    w("| | |")
    w("| --- | --- |")
    for k, v in machine.items():
        w(f"| {k} | {v} |")
    w(
        f"| load average (1 min), start / end | {fig['loadavg_start']:.2f} /"
        f" {fig['loadavg_end']:.2f} |"
    )
    w("")
    w(
        "The client, the server, the worker and PostgreSQL share the machine's cores (and"
        " other engineers' work): the figures include the load generator's own cost."
    )
    return "\n".join(out) + "\n"


# -- command line --------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = LoadConfig()
    ap = argparse.ArgumentParser(
        prog="python -m soak.api_load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--users", type=int, default=d.users, help="concurrent users")
    ap.add_argument("--duration", type=float, default=d.duration, help="seconds of load")
    ap.add_argument("--workers", type=int, default=d.workers, help="worker processes")
    ap.add_argument("--worker-concurrency", type=int, default=d.worker_concurrency)
    ap.add_argument("--pool-size", type=int, default=d.pool_size, help="the server's pool")
    ap.add_argument(
        "--mix",
        default=",".join(f"{k}={v:g}" for k, v in d.mix.items()),
        help="request weights: create, status, list, logs (default %(default)s)",
    )
    ap.add_argument("--steps", type=int, default=d.steps, help="progress/log steps per job")
    ap.add_argument("--step-ms", type=float, default=d.step_ms, help="ms per step")
    ap.add_argument("--think-ms", type=float, default=d.think_ms, help="mean pause per user")
    ap.add_argument("--drain", type=float, default=d.drain, help="seconds to wait for jobs")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--out", type=Path, default=HERE / "results", help="where the report goes")
    ap.add_argument("--name", help="report name without extension (default load-<date>)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        mix = parse_mix(args.mix)
    except ValueError as exc:
        print(f"python -m soak.api_load: {exc}", file=sys.stderr)
        return 2
    cfg = LoadConfig(
        users=args.users,
        duration=args.duration,
        workers=args.workers,
        worker_concurrency=args.worker_concurrency,
        pool_size=args.pool_size,
        mix=mix,
        steps=args.steps,
        step_ms=args.step_ms,
        think_ms=args.think_ms,
        drain=args.drain,
        seed=args.seed,
    )
    if args.database_url:
        admin, kind = args.database_url, "DATABASE_URL"
    else:
        admin, kind = default_admin_url(), f"embedded ({embedded.data_dir()})"
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python -m soak.api_load", *(shlex.quote(a) for a in given)])
    print(f"load: {cfg.users} users for {cfg.duration:g} s, server {kind}", flush=True)
    name, url = create_scratch(admin)
    try:
        machine = machine_info(server_facts(url), kind)
        machine["jobq"] = tree()
        with tempfile.TemporaryDirectory(prefix="jobq-load-") as logs:
            try:
                fig = run_load(cfg, url, Path(logs))
            except Exception:
                for log in sorted(Path(logs).glob("*.log")):
                    print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
                raise
    finally:
        try:
            drop_scratch(admin, name)
        except Exception as exc:
            print(f"load: could not drop {name}: {exc}", file=sys.stderr)
    date = dt.date.today().isoformat()
    stem = args.name or f"load-{date}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(render(fig, machine, command, date))
    (args.out / f"{stem}.json").write_text(
        json.dumps({"machine": machine, **fig}, indent=1, default=str) + "\n"
    )
    print(headline(fig))
    print(f"report: {args.out / (stem + '.md')}")
    return 0 if passed(fig) else 1


if __name__ == "__main__":
    sys.exit(main())
