"""Enqueue-to-start latency with an idle worker, next to a bare LISTEN/NOTIFY wake-up.

jobq: ``t0 = time.time()`` just before ``Client.create_job``; the worker's
``stamp`` handler returns ``time.time()`` as its first act; the bench learns
the result from the job's completion notification. Latency = handler start -
t0 (one machine, one clock). The worker process is idle between jobs (10-30 ms
pauses), as on a quiet queue: it is woken by LISTEN, claims, starts the handler.

Baseline: a listener process waiting in psycopg's ``notifies()`` as the worker
does, woken by one autocommit ``pg_notify`` (see baselines.listen_notify).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import dataclass

import psycopg

from bench import baselines, common
from bench.common import Timing
from bench.results_model import Row, Section
from bench.throughput import start_workers, stop_workers, wait_listening
from jobq import Client


@dataclass(frozen=True)
class LatencySizes:
    samples: int = 300


QUICK = LatencySizes(samples=100)
FULL = LatencySizes()


def enqueue_to_start(url: str, *, samples: int) -> tuple[Timing, Timing]:
    """(enqueue -> handler start, enqueue -> create_job returned), per job."""
    warm = 5
    out: list[float] = []
    returned: list[float] = []
    with tempfile.TemporaryDirectory(prefix="jobq-bench-") as logdir:
        workers = start_workers(url, 1, concurrency=10, batch=10, logdir=logdir)
        try:
            wait_listening(url, 1)
            with (
                Client(url, min_size=1, max_size=1) as client,
                psycopg.connect(url, autocommit=True) as listener,
            ):
                listener.execute("LISTEN job_status_changed")
                for i in range(samples + warm):
                    time.sleep(random.uniform(0.01, 0.03))  # noqa: S311
                    t0 = time.time()
                    job = str(client.create_job("stamp", {"i": i}, user_id=common.BENCH_USER))
                    t_ret = time.time()
                    started = None
                    deadline = time.monotonic() + 10
                    while started is None:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"job {job} did not complete")
                        for note in listener.notifies(timeout=1.0):
                            ev = json.loads(note.payload)
                            if ev["job_id"] == job and ev["status"] == "completed":
                                started = ev["result"]["t"]
                                break
                    if i >= warm:
                        out.append(started - t0)
                        returned.append(t_ret - t0)
        finally:
            stop_workers(workers)
    return Timing(out), Timing(returned)


def run(admin: str, sizes: LatencySizes) -> Section:
    section = Section()
    t_start = time.perf_counter()
    with common.scratch_db(admin, "latency") as url:
        baselines.create_bare_table(url)
        bare = baselines.listen_notify(url, samples=sizes.samples)
        durable = baselines.listen_notify(
            url, samples=sizes.samples, statement=baselines.DURABLE_PING
        )
        for timing, name, note in (
            (bare, "bare LISTEN/NOTIFY wake-up (autocommit pg_notify -> listener)", ""),
            (
                durable,
                "durable enqueue + wake-up (INSERT of a row and pg_notify, one commit -> listener)",
                "a bare NOTIFY writes no WAL: its commit waits for no disk flush",
            ),
        ):
            section.rows.append(
                Row(
                    section="baseline",
                    name=name,
                    size=f"{sizes.samples} pings",
                    p50=timing.p50 * 1000,
                    p95=timing.p99 * 1000,
                    note="; ".join(x for x in ("p95 column is p99", note) if x),
                )
            )
        jobq, enqueued = enqueue_to_start(url, samples=sizes.samples)
        ratio = jobq.p50 / bare.p50
        section.rows.append(
            Row(
                section="latency",
                name="enqueue-to-start, idle worker (create_job -> handler starts)",
                size=f"{sizes.samples} jobs",
                p50=jobq.p50 * 1000,
                p95=jobq.p99 * 1000,
                ratio=ratio,
                ratio_of="bare LISTEN/NOTIFY p50",
                target="p50 <= 1.5 x bare",
                ok=ratio <= 1.5,
                note=f"p95 column is p99; {jobq.p50 / durable.p50:.2f} x the durable"
                " enqueue + wake-up",
            )
        )
        # Where the time goes: the enqueue itself (one message: role switch and
        # create_job, its commit's flush), then the worker's wake-up, claim and start.
        section.rows.append(
            Row(
                section="cost",
                name="enqueue-to-start, part 1: create_job returns (commit flushed)",
                size=f"{sizes.samples} jobs",
                p50=enqueued.p50 * 1000,
                p95=enqueued.p99 * 1000,
                ratio=enqueued.p50 / bare.p50,
                ratio_of="bare LISTEN/NOTIFY p50",
                note="p95 column is p99",
            )
        )
    section.seconds = time.perf_counter() - t_start
    return section
