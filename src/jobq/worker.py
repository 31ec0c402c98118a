"""The job processor: claim, run, report, heartbeat, complete or fail, shut down.

One asyncio loop per process runs a few cooperating tasks:

- claim loop: claims batches with ``claim_jobs`` (SKIP LOCKED) when slots are
  free; sleeps until a LISTEN wake-up, a freed slot or the poll interval.
- listener: LISTEN job_status_changed on its own connection; wakes the claim
  loop for new jobs and stops handlers of jobs cancelled meanwhile. Optional
  (PgBouncer in transaction mode has no LISTEN): polling works without it.
- heartbeat: tells the database which jobs are still running here and learns
  which ones it no longer holds.
- flusher: writes progress, logs, completions (batched) and failures queued
  by handlers, retrying through connection loss so that nothing is dropped.
- leader: the one worker holding an advisory lock runs maintenance (unless
  pg_cron does) and enqueues periodic jobs.

Every state change is one SQL function call; the worker never decides what a
failure means (retry, backoff, final) - ``fail_job`` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from jobq import schedule
from jobq._aio import wait_event
from jobq.cron import parse_schedule
from jobq.db import database_url
from jobq.handlers import JobContext, JobFailed, PeriodicJob, Registry
from jobq.models import Job, LogLevel, from_row
from jobq.queries import get as query

log = logging.getLogger("jobq.worker")

NOTIFY_CHANNEL = "job_status_changed"
_TRANSIENT = (psycopg.OperationalError, PoolTimeout)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class _Running:
    job: Job
    ctx: JobContext
    task: asyncio.Task[None] | None = None
    # Why the handler was stopped early: "cancelled" (by a user), "lost" (no
    # longer held: rescued or deleted) or "shutdown" (grace period over).
    stopped: str | None = None


@dataclass(frozen=True)
class _Progress:
    attempt: int  # the job's attempts when it was claimed: the write is for that run
    percent: int
    message: str | None


@dataclass(frozen=True)
class _Completion:
    attempt: int
    result: Any


@dataclass(frozen=True)
class _Failure:
    attempt: int
    code: str
    message: str
    retryable: bool


@dataclass
class _Outbox:
    """Writes queued by handlers, drained by the flusher in batches.

    Every job write names the attempt it is for, so that the database refuses it
    (55000, or completed = false) once the job runs another attempt, should this
    worker have claimed it again meanwhile."""

    progress: dict[UUID, _Progress] = field(default_factory=dict)
    logs: list[tuple[UUID, str, str, dict[str, Any]]] = field(default_factory=list)
    completions: dict[UUID, _Completion] = field(default_factory=dict)
    failures: dict[UUID, _Failure] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __bool__(self) -> bool:
        return bool(self.progress or self.logs or self.completions or self.failures)

    def progress_update(
        self, job_id: UUID, attempt: int, percent: int, message: str | None
    ) -> None:
        queued = self.progress.get(job_id)
        if queued is not None and queued.attempt > attempt:
            return  # a late report of an earlier attempt: the later one's stays
        self.progress[job_id] = _Progress(attempt, percent, message)
        self.wake.set()

    def log_line(
        self, job_id: UUID, level: LogLevel, message: str, metadata: dict[str, Any]
    ) -> None:
        self.logs.append((job_id, level, message, metadata))
        self.wake.set()


class _Reporter:
    """The Reporter of one attempt's JobContext: its progress names that attempt."""

    def __init__(self, outbox: _Outbox, attempt: int) -> None:
        self._outbox = outbox
        self._attempt = attempt

    def progress(self, job_id: UUID, percent: int, message: str | None) -> None:
        self._outbox.progress_update(job_id, self._attempt, percent, message)

    def log(self, job_id: UUID, level: LogLevel, message: str, metadata: dict[str, Any]) -> None:
        self._outbox.log_line(job_id, level, message, metadata)


class Worker:
    """Runs the handlers of ``registry`` for jobs in the database at ``url``."""

    def __init__(
        self,
        registry: Registry,
        *,
        url: str | None = None,
        concurrency: int = 10,
        batch_size: int | None = None,
        poll_interval: float = 2.0,
        heartbeat_interval: float = 5.0,
        shutdown_grace: float = 30.0,
        listen: bool = True,
        job_types: Sequence[str] | None = None,
        worker_id: str | None = None,
        maintenance: Sequence[schedule.MaintenanceTask] | None = None,
        run_maintenance: bool = True,
        leader_retry: float = 5.0,
        burst: bool = False,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.registry = registry
        self.url = url or database_url()
        self.concurrency = concurrency
        self.batch_size = batch_size or concurrency
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.shutdown_grace = shutdown_grace
        self.listen = listen
        # None: claim every type, so a job nobody handles fails with
        # UNKNOWN_JOB_TYPE instead of waiting until it expires.
        self.job_types = list(job_types) if job_types is not None else None
        self.worker_id = worker_id or default_worker_id()
        self.maintenance = (
            list(maintenance) if maintenance is not None else schedule.maintenance_tasks()
        )
        self.run_maintenance = run_maintenance
        self.leader_retry = leader_retry
        # burst: stop once nothing is runnable and nothing runs (scripts, tests, cron)
        self.burst = burst

        self.completed = 0
        self.failed = 0
        self.is_leader = False
        self.maintenance_runs: Counter[str] = Counter()
        # "pg_cron" or "in-process" once this worker leads; None before.
        self.maintenance_mode: str | None = None
        self._running: dict[UUID, _Running] = {}
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._outbox = _Outbox()
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="jobq-handler"
        )
        self._pool: AsyncConnectionPool | None = None
        self._started = asyncio.Event()
        # the flush loop and shutdown both flush: one at a time
        self._flush_lock = asyncio.Lock()
        self._claim_task: asyncio.Task[None] | None = None

    # -- public -------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; running jobs get ``shutdown_grace`` seconds to finish."""
        self._stopping.set()
        self._wake.set()

    async def wait_started(self) -> None:
        await self._started.wait()

    def run_forever(self) -> None:
        """Run until SIGTERM/SIGINT (the ``jobq worker`` command)."""
        asyncio.run(self.run(install_signal_handlers=True))

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        self._pool = AsyncConnectionPool(
            self.url,
            min_size=2,
            max_size=4,
            kwargs={"autocommit": True, "application_name": f"jobq-worker:{self.worker_id}"[:63]},
            configure=_as_service_role,
            # No check= on checkout: after a restart the pool holds only dead
            # connections, and the check backs off 1, 2, 4, 8, 16 s between them,
            # stalling claims and heartbeats up to the pool timeout. A dead one now
            # fails its statement at once, is discarded, and the caller retries.
            open=False,
            reconnect_timeout=3600,  # keep trying through a database restart
        )
        await self._pool.open(wait=False)
        self._claim_task = asyncio.create_task(self._claim_loop(), name="jobq-claim")
        tasks = [
            self._claim_task,
            asyncio.create_task(self._heartbeat_loop(), name="jobq-heartbeat"),
            asyncio.create_task(self._flush_loop(), name="jobq-flush"),
            asyncio.create_task(self._leader_loop(), name="jobq-leader"),
        ]
        if self.listen:
            tasks.append(asyncio.create_task(self._listen_loop(), name="jobq-listen"))
        log.info("worker %s started (concurrency %d)", self.worker_id, self.concurrency)
        self._started.set()
        try:
            await self._stopping.wait()
            await self._shutdown()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._pool.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            log.info(
                "worker %s stopped: %d completed, %d failed",
                self.worker_id,
                self.completed,
                self.failed,
            )

    # -- claiming and running -----------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = _Backoff()
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                await self._nap(self.poll_interval)
                continue
            want = min(free, self.batch_size)
            self._wake.clear()  # before claiming, so a NOTIFY during the claim is kept
            try:
                jobs = await self._claim(want)
            except _TRANSIENT as exc:
                log.warning("claim failed, retrying: %s", exc)
                # the other idle connections probably died too (restart, failover):
                # replace them all now rather than fail on each in turn
                await self._pool_check()
                await self._nap(backoff.next())
                continue
            backoff.reset()
            for job in jobs:
                self._start(job)
            if self.burst and not jobs and not self._running:
                log.info("burst: nothing left to run, stopping")
                self.stop()
                return
            if len(jobs) < want:
                await self._nap(self.poll_interval)

    async def _claim(self, limit: int) -> list[Job]:
        assert self._pool is not None
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                query("claim_jobs"),
                {"worker_id": self.worker_id, "limit": limit, "job_types": self.job_types},
            )
            return [from_row(Job, row) for row in await cur.fetchall()]

    async def _pool_check(self) -> None:
        assert self._pool is not None
        try:
            await self._pool.check()
        except Exception as exc:  # the pool is closing, or the database still down
            log.debug("pool check: %s", exc)

    def _start(self, job: Job) -> None:
        # Claimed again (an earlier attempt here was rescued while its writes waited
        # in the outbox): those writes belong to that attempt, not to this one.
        self._outbox.completions.pop(job.id, None)
        self._outbox.failures.pop(job.id, None)
        self._outbox.progress.pop(job.id, None)
        reporter = _Reporter(self._outbox, job.attempts)
        ctx = JobContext(job, self.worker_id, reporter, asyncio.get_running_loop())
        running = _Running(job, ctx)
        self._running[job.id] = running
        running.task = asyncio.create_task(self._run_job(running), name=f"jobq-job-{job.id}")

    async def _run_job(self, running: _Running) -> None:
        job, ctx = running.job, running.ctx
        spec = self.registry.get(job.job_type)

        def current() -> bool:
            # False once this job was claimed here again (this attempt was rescued
            # while it ran): its result or failure would land on the new attempt.
            return self._running.get(job.id) is running

        def fail(code: str, message: str, retryable: bool) -> None:
            if current():
                self._fail(job.id, job.attempts, code, message, retryable)

        try:
            if spec is None:
                raise JobFailed(
                    f"no handler for job type {job.job_type!r}",
                    code="UNKNOWN_JOB_TYPE",
                    retryable=False,
                )
            if spec.is_async:
                call = spec.func(ctx)
            else:
                call = asyncio.get_running_loop().run_in_executor(self._executor, spec.func, ctx)
            result = await asyncio.wait_for(call, spec.timeout)
            try:
                json.dumps(result, allow_nan=False)  # jsonb has no NaN or Infinity
            except (TypeError, ValueError) as exc:
                raise JobFailed(
                    f"handler returned a value that is not JSON: {exc}",
                    code="RESULT_NOT_JSON",
                    retryable=False,
                ) from exc
            if current():
                self._outbox.completions[job.id] = _Completion(job.attempts, result)
                self._outbox.wake.set()
        except asyncio.CancelledError:
            # Stopped on purpose: a cancelled or lost job has nothing to write;
            # a shutdown-stopped one is released by _shutdown.
            if running.stopped is None:
                raise
        except TimeoutError:
            ctx._cancel()  # a sync handler's thread cannot be killed: ask it to stop
            fail("TIMEOUT", f"handler ran longer than {spec.timeout if spec else '?'}s", True)
        except JobFailed as exc:
            fail(exc.code, str(exc), exc.retryable)
        except Exception as exc:
            if running.stopped is None:
                fail(type(exc).__name__, str(exc) or repr(exc), True)
        finally:
            if current():
                del self._running[job.id]
            self._wake.set()

    def _fail(self, job_id: UUID, attempt: int, code: str, message: str, retryable: bool) -> None:
        self._outbox.failures[job_id] = _Failure(attempt, code[:100], message[:4000], retryable)
        self._outbox.wake.set()

    def _stop_job(self, job_id: UUID, reason: str) -> None:
        running = self._running.get(job_id)
        if running is None or running.stopped is not None:
            return
        running.stopped = reason
        running.ctx._cancel()
        if running.task is not None and self.registry.get(running.job.job_type) is not None:
            spec = self.registry.get(running.job.job_type)
            if spec is not None and spec.is_async:
                running.task.cancel()
        log.info("job %s stopped: %s", job_id, reason)

    async def _nap(self, seconds: float) -> None:
        await wait_event(self._wake, seconds)

    # -- listening ------------------------------------------------------------

    async def _listen_loop(self) -> None:
        backoff = _Backoff()
        while not self._stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, application_name=f"jobq-listen:{self.worker_id}"[:63]
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    backoff.reset()
                    self._wake.set()  # catch up on anything sent while we were away
                    while not self._stopping.is_set():
                        async for note in conn.notifies(timeout=1.0):
                            self._on_notify(note.payload)
            except psycopg.Error as exc:
                log.warning("listener lost its connection, reconnecting: %s", exc)
                await wait_event(self._stopping, backoff.next())

    def _on_notify(self, payload: str) -> None:
        try:
            event = json.loads(payload)
            status = event["status"]
        except (ValueError, KeyError, TypeError):
            return
        if status == "pending":
            self._wake.set()
        elif status != "processing" or event.get("attempts") is None:
            try:
                job_id = UUID(event["job_id"])
            except (KeyError, ValueError, TypeError):
                return
            running = self._running.get(job_id)
            if running is None or status not in ("cancelled", "failed", "expired", "completed"):
                return
            attempts = event.get("attempts")
            if attempts is not None and attempts != running.job.attempts:
                # A late event about an earlier attempt of a job claimed here again
                # (it failed, was retried, and this worker took it back meanwhile).
                return
            self._stop_job(job_id, "cancelled" if status == "cancelled" else "lost")

    # -- heartbeat --------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        # Until run() cancels it after the shutdown: jobs finishing within the
        # shutdown grace are still held here and must stay alive meanwhile.
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            # Jobs whose completion or failure waits in the outbox (the database was
            # away) are still held here: keep them alive until it is written.
            ids = list({*self._running, *self._outbox.completions, *self._outbox.failures})
            if not ids:
                continue
            try:
                assert self._pool is not None
                async with self._pool.connection() as conn:
                    cur = await conn.execute(
                        query("heartbeat_jobs"), {"worker_id": self.worker_id, "job_ids": ids}
                    )
                    lost = await cur.fetchall()
            except _TRANSIENT as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            for job_id, status in lost:
                self._stop_job(job_id, "cancelled" if status == "cancelled" else "lost")

    # -- writing results ----------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._outbox.wake.wait()
            self._outbox.wake.clear()
            await self._flush_with_retry(deadline=None)

    async def _flush_with_retry(self, deadline: float | None) -> bool:
        """Flush until the outbox is empty; through connection loss, until ``deadline``."""
        backoff = _Backoff()
        loop = asyncio.get_running_loop()
        while self._outbox:
            try:
                async with self._flush_lock:
                    await self._flush_once()
                backoff.reset()
            except _TRANSIENT as exc:
                if deadline is not None and loop.time() > deadline:
                    log.error("could not write results before shutdown: %s", exc)
                    return False
                log.warning("writing results failed, retrying: %s", exc)
                await asyncio.sleep(backoff.next())
        return True

    async def _flush_once(self) -> None:
        """One pass. Items leave the outbox only once written (or refused for good)."""
        assert self._pool is not None
        ob = self._outbox
        # Ends are taken before any progress is written: a handler that reports
        # progress and then ends during this pass has both wait for the next one,
        # where the progress lands first (else it is refused: the job has ended).
        completions = dict(ob.completions)
        failures = dict(ob.failures)
        async with self._pool.connection() as conn:
            # Logs and progress first, so a job's last words land before its end.
            while ob.logs:
                job_id, level, message, metadata = ob.logs[0]
                await _best_effort(
                    conn,
                    query("add_job_log"),
                    {
                        "job_id": job_id,
                        "level": level,
                        "message": message,
                        "metadata": Jsonb(metadata),
                    },
                )
                ob.logs.pop(0)
            # An entry leaves only if it is still the one written: one queued meanwhile
            # (a newer report, or the next attempt's end) waits for the next pass.
            for job_id in list(ob.progress):
                progress = ob.progress[job_id]
                await _best_effort(
                    conn,
                    query("update_job_progress"),
                    {
                        "job_id": job_id,
                        "percent": progress.percent,
                        "message": progress.message,
                        "worker_id": self.worker_id,
                        "attempt": progress.attempt,
                    },
                )
                if ob.progress.get(job_id) is progress:
                    del ob.progress[job_id]
            if completions:
                await self._complete(conn, completions)
                for job_id, completion in completions.items():
                    if ob.completions.get(job_id) is completion:
                        del ob.completions[job_id]
            for job_id, failure in failures.items():
                ok = await _best_effort(
                    conn,
                    query("fail_job"),
                    {
                        "job_id": job_id,
                        "message": failure.message,
                        "code": failure.code,
                        "retryable": failure.retryable,
                        "worker_id": self.worker_id,
                        "attempt": failure.attempt,
                    },
                )
                self.failed += ok
                if ob.failures.get(job_id) is failure:
                    del ob.failures[job_id]

    async def _complete(
        self, conn: psycopg.AsyncConnection[Any], batch: dict[UUID, _Completion]
    ) -> None:
        ids = list(batch)
        try:
            cur = await conn.execute(
                query("complete_jobs"),
                {
                    "worker_id": self.worker_id,
                    "job_ids": ids,
                    "results": [Jsonb(batch[i].result) for i in ids],
                    "attempts": [batch[i].attempt for i in ids],
                },
            )
            rows = await cur.fetchall()
            self.completed += sum(1 for _, done in rows if done)
        except psycopg.Error as exc:
            if _lost_connection(exc):
                raise
            # One result refused (over max_result_bytes, or a value jsonb rejects):
            # complete the others one by one and fail that job. An error escaping
            # here would end the flusher, and no result of this worker would be
            # written again.
            for job_id in ids:
                try:
                    await conn.execute(
                        query("complete_job"),
                        {
                            "job_id": job_id,
                            "result": Jsonb(batch[job_id].result),
                            "worker_id": self.worker_id,
                            "attempt": batch[job_id].attempt,
                        },
                    )
                    self.completed += 1
                except psycopg.errors.ObjectNotInPrerequisiteState:
                    pass  # no longer ours, or no longer this attempt
                except psycopg.Error as refused:
                    if _lost_connection(refused):
                        raise
                    code = (
                        "RESULT_TOO_LARGE"
                        if isinstance(refused, psycopg.errors.ProgramLimitExceeded)
                        else "RESULT_NOT_JSON"
                    )
                    message = refused.diag.message_primary or str(refused)
                    self._fail(job_id, batch[job_id].attempt, code, message, False)

    # -- shutdown -------------------------------------------------------------------

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_grace
        # A claim on its way back when the stop came starts its jobs after this point:
        # let the claim loop end first, then give every running job the grace.
        if self._claim_task is not None:
            await asyncio.wait([self._claim_task], timeout=self.shutdown_grace)
        while True:
            tasks = [r.task for r in self._running.values() if r.task and not r.task.done()]
            if not tasks or loop.time() >= deadline:
                break
            log.info("waiting up to %.0fs for %d running jobs", deadline - loop.time(), len(tasks))
            await asyncio.wait(tasks, timeout=deadline - loop.time())
        leftover = list(self._running)
        for job_id in leftover:
            self._stop_job(job_id, "shutdown")
        still = [r.task for r in self._running.values() if r.task is not None]
        if still:
            await asyncio.wait(still, timeout=1.0)
        await self._flush_with_retry(deadline=loop.time() + 30)
        if leftover:
            await self._release(leftover)

    async def _release(self, job_ids: list[UUID]) -> None:
        assert self._pool is not None
        backoff = _Backoff()
        for _ in range(10):
            try:
                async with self._pool.connection() as conn:
                    cur = await conn.execute(
                        query("release_jobs"), {"worker_id": self.worker_id, "job_ids": job_ids}
                    )
                    row = await cur.fetchone()
                    log.info("released %s unfinished jobs back to pending", row[0] if row else 0)
                    return
            except _TRANSIENT as exc:
                log.warning("release failed, retrying: %s", exc)
                await asyncio.sleep(backoff.next())
        log.error("could not release %d jobs; stuck detection will rescue them", len(job_ids))

    # -- leader: maintenance and periodic jobs ------------------------------------------

    async def _leader_loop(self) -> None:
        if not (self.run_maintenance and self.maintenance) and not self.registry.periodic_jobs:
            return
        backoff = _Backoff(cap=self.leader_retry)
        while not self._stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, application_name=f"jobq-leader:{self.worker_id}"[:63]
                ) as conn:
                    await _as_service_role(conn)
                    while not self._stopping.is_set():
                        cur = await conn.execute(
                            "SELECT pg_try_advisory_lock(%s)", (schedule.LEADER_LOCK_KEY,)
                        )
                        row = await cur.fetchone()
                        if row and row[0]:
                            self.is_leader = True
                            log.info("worker %s is the maintenance leader", self.worker_id)
                            await self._lead(conn)
                            return
                        await wait_event(self._stopping, self.leader_retry)
            except psycopg.Error as exc:
                self.is_leader = False
                log.warning("leader connection lost: %s", exc)
                await wait_event(self._stopping, backoff.next())

    async def _lead(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Holding the lock: run due maintenance and enqueue periodic ticks until stopped."""
        loop = asyncio.get_running_loop()
        clock = schedule.TaskClock(self.maintenance) if self.run_maintenance else None
        periodic = _PeriodicClock(self.registry.periodic_jobs)
        cron_checked_at = -1e9
        cron_active = False
        while not self._stopping.is_set():
            if loop.time() - cron_checked_at > 60:
                cron_active = await asyncio.to_thread(schedule.pg_cron_manages, self.url)
                cron_checked_at = loop.time()
                self.maintenance_mode = "pg_cron" if cron_active else "in-process"
            now = datetime.now(UTC)
            if clock is not None:
                for task in clock.pop_due(now):
                    if not cron_active:
                        await schedule.run_task(conn, task)
                        self.maintenance_runs[task.name] += 1
            for pj, tick in periodic.pop_due(now):
                await _enqueue_tick(conn, pj, tick)
            nexts = [d for d in (clock.next_due() if clock else None, periodic.next_due()) if d]
            wake_at = min(nexts, default=now + timedelta(seconds=60))
            await schedule.sleep_until(min(wake_at, now + timedelta(seconds=60)), self._stopping)


class _PeriodicClock:
    def __init__(self, jobs: Sequence[PeriodicJob]) -> None:
        now = datetime.now(UTC)
        self._jobs = list(jobs)
        # Start with the current tick: if the previous leader already enqueued
        # it, dedup returns its job instead of making another.
        self._next = {
            i: parse_schedule(j.schedule).last_at_or_before(now) for i, j in enumerate(self._jobs)
        }

    def pop_due(self, now: datetime) -> list[tuple[PeriodicJob, datetime]]:
        due = []
        for i, pj in enumerate(self._jobs):
            tick = self._next[i]
            if tick <= now:
                due.append((pj, tick))
                self._next[i] = parse_schedule(pj.schedule).next_after(now)
        return due

    def next_due(self) -> datetime | None:
        return min(self._next.values(), default=None)


async def _enqueue_tick(
    conn: psycopg.AsyncConnection[Any], pj: PeriodicJob, tick: datetime
) -> None:
    sched = parse_schedule(pj.schedule)
    period = sched.next_after(tick) - tick
    params = {**pj.params, "_jobq_tick": tick.isoformat()}
    try:
        cur = await conn.execute(
            query("enqueue_periodic"),
            {
                "user_id": pj.user_id,
                "job_type": pj.job_type,
                "params": Jsonb(params),
                "window": max(period * 2, timedelta(hours=1)),
                "priority": pj.priority,
            },
        )
        row = await cur.fetchone()
        if row and row[1]:
            log.info("periodic %s enqueued for tick %s", pj.job_type, tick.isoformat())
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.OperationalError):
            raise
        log.warning("periodic %s for tick %s not enqueued: %s", pj.job_type, tick, exc)


async def _best_effort(
    conn: psycopg.AsyncConnection[Any], sql: Any, params: dict[str, Any]
) -> bool:
    """Run one write; a refusal for good (job gone, cancelled, bad input) is logged and
    dropped, a transient error propagates so the caller retries."""
    try:
        await conn.execute(sql, params)
        return True
    except psycopg.Error as exc:
        # A refusal of a class-55 kind (the job is no longer processing: completed or
        # cancelled meanwhile) is an OperationalError too: only a lost connection retries.
        if _lost_connection(exc):
            raise
        log.info("write refused (%s): %s", exc.sqlstate, exc.diag.message_primary)
        return False


def _lost_connection(exc: psycopg.Error) -> bool:
    """True for connection trouble (worth retrying), False for a refusal of the write."""
    state = exc.sqlstate or ""
    # no SQLSTATE: the connection or the pool failed; 08: connection exception;
    # 57P01-57P03: server shutting down / starting; 53: out of resources.
    return not state or state.startswith(("08", "57P", "53"))


async def _as_service_role(conn: psycopg.AsyncConnection[Any]) -> None:
    """Workers act as service_role, as the spec's edge function does."""
    await conn.execute("SET ROLE service_role")
    if not conn.autocommit:
        await conn.commit()


class _Backoff:
    """Exponential backoff from 0.1s to ``cap`` seconds."""

    def __init__(self, cap: float = 5.0) -> None:
        self.cap = cap
        self._n = 0

    def next(self) -> float:
        delay = min(self.cap, 0.1 * 2.0**self._n)
        self._n += 1
        return delay

    def reset(self) -> None:
        self._n = 0
