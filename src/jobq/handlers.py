"""What users write: handlers registered per job type, and the context they get.

A handler is ``def handle(ctx: JobContext) -> result`` or ``async def``. Its
return value becomes the job's result; an exception fails the attempt and the
SQL retry policy decides what happens next. ``JobFailed`` lets a handler choose
the error code and whether retrying makes sense.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from jobq.models import Job, LogLevel

# Periodic jobs are owned by this user unless they name another.
SYSTEM_USER_ID = UUID("00000000-0000-0000-0000-000000000000")

Handler = Callable[["JobContext"], Any] | Callable[["JobContext"], Awaitable[Any]]


class JobFailed(Exception):
    """Raise from a handler to fail the attempt with a chosen code.

    ``retryable=False`` makes the failure final whatever attempts remain (bad
    params, say, will not get better by retrying).
    """

    def __init__(self, message: str, *, code: str = "JOB_FAILED", retryable: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class JobCancelled(Exception):
    """Raised by ``JobContext.raise_if_cancelled`` once the job was cancelled."""


class Reporter(Protocol):
    """Where a context sends progress and logs (the worker's outbox)."""

    def progress(self, job_id: UUID, percent: int, message: str | None) -> None: ...

    def log(
        self, job_id: UUID, level: LogLevel, message: str, metadata: dict[str, Any]
    ) -> None: ...


@dataclass(frozen=True)
class HandlerSpec:
    job_type: str
    func: Handler
    timeout: float | None = None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)


@dataclass(frozen=True)
class PeriodicJob:
    """Enqueue ``job_type`` on every tick of ``schedule`` (cron, or '@every 30s')."""

    schedule: str
    job_type: str
    params: Mapping[str, Any] = field(default_factory=dict)
    user_id: UUID = SYSTEM_USER_ID
    priority: int = 0


class Registry:
    """Handlers by job type, plus the periodic jobs declared next to them."""

    def __init__(self) -> None:
        self._handlers: dict[str, HandlerSpec] = {}
        self.periodic_jobs: list[PeriodicJob] = []

    def handler(
        self, job_type: str | None = None, *, timeout: float | None = None
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function for ``job_type`` (default: its name)."""

        def register(func: Handler) -> Handler:
            name = job_type or func.__name__
            if name in self._handlers:
                raise ValueError(f"a handler for job type {name!r} is already registered")
            self._handlers[name] = HandlerSpec(name, func, timeout)
            return func

        return register

    def periodic(
        self,
        schedule: str,
        job_type: str,
        params: Mapping[str, Any] | None = None,
        *,
        user_id: UUID = SYSTEM_USER_ID,
        priority: int = 0,
    ) -> None:
        """Declare a periodic job; exactly one is enqueued per tick across all workers."""
        from jobq.cron import parse_schedule  # validate now, not at the first tick

        parse_schedule(schedule)
        self.periodic_jobs.append(
            PeriodicJob(schedule, job_type, dict(params or {}), user_id, priority)
        )

    def get(self, job_type: str) -> HandlerSpec | None:
        return self._handlers.get(job_type)

    @property
    def job_types(self) -> list[str]:
        return sorted(self._handlers)


class JobContext:
    """What a handler sees: the job, and ways to report and to notice cancellation.

    ``progress`` and ``log`` never block: they queue the write for the worker,
    which batches them, so they are safe from sync handlers in threads and from
    async handlers alike.
    """

    def __init__(
        self, job: Job, worker_id: str, reporter: Reporter, loop: asyncio.AbstractEventLoop
    ):
        self.job = job
        self.worker_id = worker_id
        self._reporter = reporter
        self._loop = loop
        self._cancelled_flag = threading.Event()
        self._cancelled_event = asyncio.Event()

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    @property
    def attempt(self) -> int:
        """1 on the first run, 2 on the first retry, ..."""
        return self.job.attempts

    def progress(self, percent: int, message: str | None = None) -> None:
        if not 0 <= percent <= 100:
            raise ValueError(f"progress must be between 0 and 100, got {percent}")
        self._call_in_loop(self._reporter.progress, self.job.id, percent, message)

    def log(self, level: LogLevel, message: str, **metadata: Any) -> None:
        self._call_in_loop(self._reporter.log, self.job.id, level, message, metadata)

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled (or the worker gave up on it): stop soon."""
        return self._cancelled_flag.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise JobCancelled(f"job {self.job.id} was cancelled")

    async def wait_cancelled(self) -> None:
        await self._cancelled_event.wait()

    def _cancel(self) -> None:
        """Called by the worker, in its loop."""
        self._cancelled_flag.set()
        self._cancelled_event.set()

    def _call_in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)
