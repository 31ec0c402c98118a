"""Raw-SQL baselines, on the same server in the same run.

The bare table is ``CREATE TABLE bench_bare_jobs (LIKE job_queue INCLUDING ALL)``:
the same columns, defaults, CHECK constraints and the same 11 indexes, but no
triggers (no state machine, no pg_notify), no RLS and no functions in the way.
So a ratio jobq/baseline is the price of jobq's semantics, not of the schema.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time
from typing import Any

import psycopg

from bench import seed
from bench.common import Timing
from bench.load import BARE_TABLE

CLAIM = f"""
WITH c AS (
    SELECT id FROM {BARE_TABLE}
     WHERE status = 'pending'
     ORDER BY priority DESC, created_at, id
     LIMIT %s
       FOR UPDATE SKIP LOCKED)
UPDATE {BARE_TABLE} b
   SET status = 'processing', worker_id = %s, attempts = b.attempts + 1,
       started_at = now(), heartbeat_at = now()
  FROM c WHERE b.id = c.id
RETURNING b.id"""

COMPLETE = f"""
UPDATE {BARE_TABLE}
   SET status = 'completed', result = 'null'::jsonb, completed_at = now(), updated_at = now()
 WHERE id = ANY(%s)"""


def create_bare_table(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"CREATE TABLE IF NOT EXISTS {BARE_TABLE} (LIKE public.job_queue INCLUDING ALL)")


def load_bare_pending(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"TRUNCATE {BARE_TABLE}")
        c.execute(
            f"""INSERT INTO {BARE_TABLE} (user_id, job_type, params, expires_at, created_at)
                SELECT {seed.user_sql("g % 1000")}, 'noop', jsonb_build_object('n', g),
                       now() + interval '1 day', now() - interval '1 hour' + g * interval '1 ms'
                  FROM generate_series(1, {int(n)}) g""".encode()
        )
        c.execute(f"VACUUM ANALYZE {BARE_TABLE}")


def _claimer(url: str, proc: int, batch: int, ready: Any, start: Any, out: Any) -> None:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SELECT 1")
    ready.put(proc)
    start.wait()
    done = 0
    while True:
        ids = [r[0] for r in conn.execute(CLAIM, (batch, f"bare-{proc}")).fetchall()]
        if not ids:
            break
        conn.execute(COMPLETE, (ids,))
        done += len(ids)
    out.put((proc, done, time.monotonic()))


def bare_claim_complete(url: str, *, jobs: int, procs: int, batch: int = 100) -> float:
    """Jobs per second: ``procs`` processes claim ``batch`` with SKIP LOCKED and complete
    them, until the ``jobs`` pending rows are done."""
    load_bare_pending(url, jobs)
    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    start = ctx.Event()
    children = [
        ctx.Process(target=_claimer, args=(url, p, batch, ready, start, out), daemon=True)
        for p in range(procs)
    ]
    for c in children:
        c.start()
    for _ in children:
        ready.get(timeout=60)
    t0 = time.monotonic()
    start.set()
    results = [out.get(timeout=600) for _ in children]
    for c in children:
        c.join(timeout=30)
    total = sum(r[1] for r in results)
    assert total == jobs, f"bare claim completed {total} of {jobs}"
    return float(jobs / (max(r[2] for r in results) - t0))


# -- LISTEN/NOTIFY wake-up --------------------------------------------------------------


def _listener(url: str, channel: str, ready: Any, out: Any, count: int) -> None:
    """Waits on LISTEN the way the worker does (asyncio, psycopg notifies())."""

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(f"LISTEN {channel}")
            ready.put(True)
            seen = 0
            while seen < count:
                async for note in conn.notifies(timeout=1.0):
                    out.put((note.payload, time.time()))
                    seen += 1

    asyncio.run(main())


# A bare NOTIFY writes no WAL, so its commit waits for no disk flush; a job
# queue's enqueue must be durable. The second baseline is the least a durable
# enqueue with a wake-up can cost: one row inserted and a NOTIFY, one commit.
PING = "SELECT pg_notify('bench_ping', %s)"
DURABLE_PING = (
    f"WITH j AS (INSERT INTO {BARE_TABLE} (user_id, job_type, params, expires_at)"
    " VALUES (gen_random_uuid(), 'ping', '{}', now() + interval '24 hours') RETURNING id)"
    " SELECT pg_notify('bench_ping', %s) FROM j"
)


def listen_notify(url: str, *, samples: int, statement: str = PING) -> Timing:
    """Seconds from just before a NOTIFY is sent (one autocommit statement) until a
    listening process holds it, with the listener idle between pings."""
    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    warm = 5
    child = ctx.Process(
        target=_listener, args=(url, "bench_ping", ready, out, samples + warm), daemon=True
    )
    child.start()
    ready.get(timeout=60)
    latencies: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(samples + warm):
            time.sleep(random.uniform(0.01, 0.03))  # noqa: S311
            t0 = time.time()
            conn.execute(statement, (str(i),))
            payload, t1 = out.get(timeout=10)
            assert payload == str(i)
            if i >= warm:
                latencies.append(t1 - t0)
    child.join(timeout=10)
    return Timing(latencies)
