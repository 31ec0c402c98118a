"""Closed-loop load from N client processes for a fixed time: operations per second.

Each process builds its own connection or jobq Client (nothing is shared
across processes), runs a few warm-up calls, waits for the common start, then
calls its operation back to back until the common deadline. Processes, not
threads, so that the client side is not serialised on one GIL: with 2 cores
the clients and PostgreSQL share the same CPUs, as they would on a small host.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from bench import seed

BARE_TABLE = "bench_bare_jobs"

# One call: returns how many jobs (or reads) it did.
Op = Callable[[], int]


def _users(n: int) -> list[UUID]:
    return [seed.user_id(i) for i in range(n)]


# -- baselines: raw SQL on a table shaped like job_queue, no triggers, no RLS ----------


def make_plain_insert(url: str, proc: int) -> Op:
    conn = psycopg.connect(url, autocommit=True)
    users = _users(1000)
    q = (
        f"INSERT INTO {BARE_TABLE} (user_id, job_type, params, expires_at) "
        "VALUES (%s, %s, %s, now() + interval '24 hours') RETURNING id"
    )
    n = 0

    def op() -> int:
        nonlocal n
        n += 1
        conn.execute(q, (users[n % 1000], "send_email", Jsonb({"n": n}))).fetchone()
        return 1

    return op


def make_multirow_insert(url: str, proc: int) -> Op:
    conn = psycopg.connect(url, autocommit=True)
    user = seed.user_id(proc)
    values = ", ".join(["(%s, %s, %s, now() + interval '24 hours')"] * 1000)
    q = (
        f"INSERT INTO {BARE_TABLE} (user_id, job_type, params, expires_at)"
        f" VALUES {values} RETURNING id"
    )

    def op() -> int:
        args: list[Any] = []
        for i in range(1000):
            args += [user, "bulk_item", Jsonb({"n": i})]
        conn.execute(q, args).fetchall()
        return 1000

    return op


def make_bare_select(url: str, proc: int) -> Op:
    conn = psycopg.connect(url, autocommit=True)
    ids = [r[0] for r in conn.execute(f"SELECT id FROM {BARE_TABLE} LIMIT 5000").fetchall()]
    q = f"SELECT * FROM {BARE_TABLE} WHERE id = %s"
    n = proc * 7919

    def op() -> int:
        nonlocal n
        n += 1
        conn.execute(q, (ids[n % len(ids)],)).fetchone()
        return 1

    return op


# -- jobq, full semantics, through the Client -----------------------------------------


def make_create_job_service(url: str, proc: int) -> Op:
    from jobq import Client

    client = Client(url, min_size=1, max_size=1)
    users = _users(1000)
    n = 0

    def op() -> int:
        nonlocal n
        n += 1
        client.create_job("send_email", {"n": n}, user_id=users[n % 1000])
        return 1

    return op


def make_create_job_user(url: str, proc: int) -> Op:
    """As authenticated users (RLS, rate limit): each call acts as the next of 1,000 users."""
    from jobq import Client

    client = Client(url, min_size=1, max_size=1)
    views = [client.as_user(u) for u in _users(1000)]
    n = proc * 250

    def op() -> int:
        nonlocal n
        n += 1
        views[n % 1000].create_job("send_email", {"n": n})
        return 1

    return op


def make_create_job_sql(url: str, proc: int) -> Op:
    """The SQL function alone: one autocommit statement, as the connecting superuser."""
    conn = psycopg.connect(url, autocommit=True)
    users = _users(1000)
    n = 0

    def op() -> int:
        nonlocal n
        n += 1
        conn.execute(
            "SELECT create_job(%s::uuid, %s::text, %s::jsonb)",
            (users[n % 1000], "send_email", Jsonb({"n": n})),
        ).fetchone()
        return 1

    return op


def make_create_jobs_bulk(url: str, proc: int) -> Op:
    from jobq import Client

    client = Client(url, min_size=1, max_size=1)
    user = seed.user_id(proc)

    def op() -> int:
        client.create_jobs(
            [{"job_type": "bulk_item", "params": {"n": i}} for i in range(1000)], user_id=user
        )
        return 1000

    return op


def make_get_job_user(url: str, proc: int) -> Op:
    from jobq import Client

    client = Client(url, min_size=1, max_size=1)
    with psycopg.connect(url) as c:
        rows = c.execute(
            "SELECT id, user_id FROM job_queue ORDER BY random() LIMIT 5000"
        ).fetchall()
    views = {u: client.as_user(u) for _, u in rows}
    pairs = [(views[u], j) for j, u in rows]
    n = proc * 7919

    def op() -> int:
        nonlocal n
        n += 1
        view, job = pairs[n % len(pairs)]
        view.get_job(job)
        return 1

    return op


def make_get_jobs_user(url: str, proc: int) -> Op:
    """Status of 100 jobs per call (Client.get_jobs as their user): a dashboard's poll."""
    from jobq import Client

    client = Client(url, min_size=1, max_size=1)
    with psycopg.connect(url) as c:
        rows = c.execute(
            # pages of 100 jobs of one user, 50 different pages
            "SELECT user_id, array_agg(id) FROM ("
            "  SELECT user_id, id,"
            "         (row_number() OVER (PARTITION BY user_id ORDER BY id) - 1) / 100 AS page"
            "    FROM job_queue) p"
            " GROUP BY user_id, page HAVING count(*) = 100 ORDER BY random() LIMIT 50"
        ).fetchall()
    if not rows:
        raise RuntimeError("get_jobs_user needs users with 100 jobs each")
    polls = [(client.as_user(u), ids) for u, ids in rows]
    n = proc * 7

    def op() -> int:
        nonlocal n
        n += 1
        view, ids = polls[n % len(polls)]
        return len(view.get_jobs(ids))

    return op


KINDS: dict[str, Callable[[str, int], Op]] = {
    "plain_insert": make_plain_insert,
    "multirow_insert": make_multirow_insert,
    "bare_select": make_bare_select,
    "create_job_service": make_create_job_service,
    "create_job_user": make_create_job_user,
    "create_job_sql": make_create_job_sql,
    "create_jobs_bulk": make_create_jobs_bulk,
    "get_job_user": make_get_job_user,
    "get_jobs_user": make_get_jobs_user,
}


def _child(
    kind: str, url: str, proc: int, ready: Any, start: Any, seconds: float, out: Any
) -> None:
    random.seed(proc)
    op = KINDS[kind](url, proc)
    for _ in range(3):
        op()
    ready.put(proc)
    start.wait()
    begin = time.monotonic()
    deadline = begin + seconds
    done = 0
    calls = 0
    while True:
        done += op()
        calls += 1
        now = time.monotonic()
        if now >= deadline:
            break
    out.put((proc, done, calls, now - begin))


def run_load(kind: str, url: str, *, procs: int, seconds: float) -> float:
    """Jobs (or reads) per second over all ``procs`` processes."""
    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    start = ctx.Event()
    children = [
        ctx.Process(target=_child, args=(kind, url, p, ready, start, seconds, out), daemon=True)
        for p in range(procs)
    ]
    for c in children:
        c.start()
    for _ in children:
        ready.get(timeout=120)
    start.set()
    results = [out.get(timeout=seconds + 120) for _ in children]
    for c in children:
        c.join(timeout=30)
    # Each process ran for its own elapsed time (at least `seconds`): sum the rates.
    return float(sum(done / elapsed for _, done, _, elapsed in results))


def run_paired(kinds: list[str], url: str, *, calls: int) -> dict[str, list[float]]:
    """Seconds per call of each kind, measured call by call in turn in one process.

    kinds[0], kinds[1], ..., kinds[0], ...: each call of one kind sits between
    calls of the others, so a drift of the machine (another tenant's fsyncs, a
    checkpoint) hits every kind alike. For one client this compares per-call
    cost far more steadily than rounds of seconds each.
    """
    ops = {kind: KINDS[kind](url, 0) for kind in kinds}
    for op in ops.values():
        for _ in range(3):
            op()
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for i in range(calls):
        # rotate the order so that no kind always follows the same one
        for j in range(len(kinds)):
            kind = kinds[(i + j) % len(kinds)]
            t0 = time.perf_counter()
            ops[kind]()
            times[kind].append(time.perf_counter() - t0)
    return times
