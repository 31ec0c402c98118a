"""Requests per second of the HTTP API beside bare SQL, measured in one run.

    python bench/api_bench.py [--requests 3000] [--rounds 3] [--concurrency 16]
                              [--pool-size 8] [--jobs 2000] [--json out.json]

On $DATABASE_URL or the embedded PostgreSQL 18, in a scratch database that is
dropped at the end. The API runs as a real ``jobq serve`` process on a
loopback port; an async httpx client sends a bounded number of requests with a
fixed number in flight. The SQL baselines run in this process over a pool of
the same size and settings as the server's (autocommit, same database):

  sql   SELECT 1                         the floor: one round trip
  sql   SELECT * FROM job_queue WHERE id  one bare indexed read (no role switch)
  sql   SELECT 50 of a user's jobs       the bare page read (no role switch, no count)
  client get_job as the user            what GET /jobs/{id} runs: BEGIN, act as the
                                         user (role + claims), the read under RLS, COMMIT
  client list_jobs as the user           what GET /jobs runs (get_user_jobs, 50 rows)
  http  GET /health                      HTTP + SELECT 1
  http  GET /jobs/{id}                   token check, client call, JSON, ETag
  http  GET /jobs                        the same for a page of 50 jobs with total_count

Every row runs once per round and the rounds are interleaved, so that load
from elsewhere on the machine falls on all rows alike; the median round is
shown. Ratios are against ``SELECT 1`` and against the layer below. The client and
the server share the machine's cores, so the HTTP figures include the load
generator's own cost. Nothing is asserted: this reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from jobq import AsyncClient, NewJob, migrate
from jobq.api import mint_token

SECRET = secrets.token_hex(32)
USER = uuid.UUID("0b7c3a52-9d1e-4f6a-8c2b-5e4d3f2a1b00")


@dataclass
class Result:
    layer: str
    what: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


async def measure(
    layer: str, what: str, call: Callable[[], Awaitable[object]], requests: int, concurrency: int
) -> Result:
    """``requests`` calls with ``concurrency`` in flight (after a warm-up)."""
    for _ in range(min(200, requests // 10 + 1)):
        await call()
    latencies: list[float] = []
    remaining = requests

    async def runner() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return Result(
        layer,
        what,
        len(latencies),
        elapsed,
        statistics.median(latencies) * 1000,
        latencies[int(len(latencies) * 0.99) - 1] * 1000,
    )


async def wait_healthy(http: httpx.AsyncClient, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await http.get("/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("jobq serve did not become healthy")
        await asyncio.sleep(0.1)


def admin_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    from jobq import embedded

    return embedded.embedded_url("postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def seed(url: str, jobs: int) -> uuid.UUID:
    """``jobs`` jobs for USER and as many for other users; returns one of USER's."""
    with psycopg.connect(url) as c:
        migrate.migrate(c)
    from jobq import Client

    with Client(url) as client:
        mine = client.create_jobs(
            [NewJob("bench.api", {"i": i}, user_id=USER) for i in range(jobs)]
        )
        others = [NewJob("bench.api", {"i": i}, user_id=uuid.uuid4()) for i in range(jobs)]
        client.create_jobs(others)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("VACUUM ANALYZE job_queue")
    return mine[len(mine) // 2]


Call = Callable[[], Awaitable[object]]


async def run(args: argparse.Namespace, url: str, job_id: uuid.UUID) -> list[Result]:
    """Every row once per round, rounds interleaved so that background load hits all rows."""
    conc = args.concurrency
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url,
        min_size=args.pool_size,
        max_size=args.pool_size,
        kwargs={"autocommit": True},
        open=False,
    )
    await pool.open(wait=True)
    user = AsyncClient(pool=pool).as_user(USER)

    async def sql_call(query: str, params: tuple[Any, ...] = ()) -> None:
        async with pool.connection() as conn:
            cur = await conn.execute(query, params)
            await cur.fetchall()

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "JOBQ_JWT_SECRET": SECRET,
        "JOBQ_POOL_MIN_SIZE": str(args.pool_size),
        "JOBQ_POOL_MAX_SIZE": str(args.pool_size),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "jobq", "serve", "--port", str(port), "--no-access-log"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {mint_token(SECRET, user_id=USER)}"}
    # One client (one keep-alive connection) per request in flight: a single shared
    # httpx pool serialises on its own lock and would measure itself.
    clients = [httpx.AsyncClient(base_url=base, headers=headers, timeout=60) for _ in range(conc)]
    free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
    for c in clients:
        free.put_nowait(c)

    def http_get(path: str) -> Call:
        async def get() -> None:
            client = await free.get()
            try:
                r = await client.get(path)
            finally:
                free.put_nowait(client)
            if r.status_code != 200:
                raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:200]}")

        return get

    rows: list[tuple[str, str, Call]] = [
        ("sql", "SELECT 1", lambda: sql_call("SELECT 1")),
        (
            "sql",
            "SELECT * FROM job_queue WHERE id",
            lambda: sql_call("SELECT * FROM job_queue WHERE id = %s", (job_id,)),
        ),
        (
            "sql",
            "SELECT 50 of a user's jobs",
            lambda: sql_call(
                "SELECT * FROM job_queue WHERE user_id = %s"
                " ORDER BY created_at DESC, id DESC LIMIT 50",
                (USER,),
            ),
        ),
        ("client", "get_job as user", lambda: user.get_job(job_id)),
        ("client", "list_jobs as user (50)", lambda: user.list_jobs(limit=50)),
        ("http", "GET /health", http_get("/health")),
        ("http", "GET /jobs/{id}", http_get(f"/jobs/{job_id}")),
        ("http", "GET /jobs (50)", http_get("/jobs")),
    ]
    per_round = max(1, args.requests // args.rounds)
    measured: dict[str, list[Result]] = {what: [] for _, what, _ in rows}
    try:
        await wait_healthy(clients[0])
        for _ in range(args.rounds):
            for layer, what, call in rows:
                measured[what].append(await measure(layer, what, call, per_round, conc))
    finally:
        for c in clients:
            await c.aclose()
        await pool.close()
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    results = []
    for layer, what, _ in rows:
        runs = measured[what]
        total = sum(r.requests for r in runs)
        # seconds such that requests / seconds is the median round's req/s
        median_rps = statistics.median(r.rps for r in runs)
        results.append(
            Result(
                layer,
                what,
                total,
                total / median_rps,
                statistics.median(r.p50_ms for r in runs),
                max(r.p99_ms for r in runs),
            )
        )
    return results


def report(results: list[Result], args: argparse.Namespace, server_version: str) -> str:
    by = {r.what: r for r in results}
    floor = by["SELECT 1"].rps
    below = {
        "get_job as user": "SELECT * FROM job_queue WHERE id",
        "list_jobs as user (50)": "SELECT 50 of a user's jobs",
        "GET /health": "SELECT 1",
        "GET /jobs/{id}": "get_job as user",
        "GET /jobs (50)": "list_jobs as user (50)",
    }
    lines = [
        f"jobq API benchmark: {server_version}; {args.requests} requests per row in "
        f"{args.rounds} interleaved rounds (median round shown), {args.concurrency} in flight, "
        f"pool of {args.pool_size}, {os.cpu_count()} cores, {args.jobs} jobs per user",
        "",
        "| layer | what | req/s | p50 ms | p99 ms | vs SELECT 1 | vs the layer below |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        ref = below.get(r.what)
        vs_below = f"{r.rps / by[ref].rps:.2f} x {ref}" if ref else ""
        lines.append(
            f"| {r.layer} | {r.what} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.rps / floor:.2f} | {vs_below} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000, help="requests per row")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    ap.add_argument("--pool-size", type=int, default=8, help="connections (server and baselines)")
    ap.add_argument("--jobs", type=int, default=2000, help="jobs of the benchmark user")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    admin = admin_url()
    name = f"jobq_bench_api_{secrets.token_hex(3)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        version = str(c.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    url = make_conninfo(admin, dbname=name)
    try:
        job_id = seed(url, args.jobs)
        results = asyncio.run(run(args, url, job_id))
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    print(report(results, args, f"PostgreSQL {version}"))
    if args.json:
        args.json.write_text(
            json.dumps([{**asdict(r), "rps": r.rps} for r in results], indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
