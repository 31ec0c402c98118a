"""``jobq up``: the API, the dashboard and a worker in one process, one asyncio loop.

Uses ``DATABASE_URL`` or the embedded PostgreSQL, applies the migrations, then
runs uvicorn (the HTTP API with the dashboard at ``/``) and a
:class:`~jobq.worker.Worker` side by side. Maintenance runs in-process on a
fast schedule (every 10 s, stuck after 60 s) and the example handlers of
:mod:`jobq.examples` keep jobs flowing. It prints the dashboard URL with a
development token; without ``JOBQ_JWT_SECRET`` it makes up a secret for this
process only. Ctrl-C (or SIGTERM) stops claiming, gives running jobs a few
seconds, hands the rest back to the queue and shuts the server down; a second
Ctrl-C stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TextIO
from uuid import UUID

import psycopg
from psycopg.conninfo import conninfo_to_dict

from jobq import db, migrate, schedule
from jobq.api.app import create_app
from jobq.api.auth import mint_token
from jobq.api.server import Server
from jobq.api.settings import Settings
from jobq.client import AsyncClient, NewJob
from jobq.handlers import Registry
from jobq.worker import Worker

log = logging.getLogger("jobq.up")


class UpError(RuntimeError):
    """`jobq up` cannot start (the port is taken, say)."""


@dataclass(frozen=True)
class UpOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    concurrency: int = 4
    examples: bool = True
    seed: int = 6  # demo jobs enqueued at start (with the examples)
    database_url: str | None = None  # None: DATABASE_URL, else the embedded server
    maintenance_every: str = "@every 10s"
    stuck_timeout: timedelta = timedelta(seconds=60)
    shutdown_grace: float = 5.0
    token_ttl: int = 12 * 3600
    settings: Settings | None = None  # None: Settings.from_env()


@dataclass(frozen=True)
class Started:
    """What `jobq up` prints once it is serving."""

    url: str
    user_id: UUID
    user_token: str
    service_token: str
    secret_generated: bool
    jwt_secret: str | None
    database: str
    job_types: list[str]
    seeded: list[UUID]

    @property
    def dashboard_url(self) -> str:
        return f"{self.url}/#token={self.user_token}"

    @property
    def service_url(self) -> str:
        return f"{self.url}/#token={self.service_token}"


def describe_database(url: str, embedded: bool) -> str:
    """Where the database is, without its password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "DATABASE_URL (unparsable)"
    if embedded:
        return f'embedded PostgreSQL 18, database {parts.get("dbname", "")} (psql "$(jobq db-url)")'
    where = f"{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}"
    return f"postgresql://{where}/{parts.get('dbname', '')}"


class _Server(Server):
    """jobq's uvicorn server without uvicorn's own signal handling: `jobq up` owns the
    signals and stops the worker and the server together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Up:
    """One `jobq up` run. ``await up.run()``; ``up.stop()`` from the loop (or a signal)."""

    def __init__(
        self,
        options: UpOptions | None = None,
        *,
        registry: Registry | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.options = options or UpOptions()
        if registry is None:
            if self.options.examples:
                from jobq.examples import registry as example_registry

                registry = example_registry
            else:
                registry = Registry()
        self.registry = registry
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.options.host, self.options.port))
            except OSError as exc:
                sock.close()
                where = f"{self.options.host}:{self.options.port}"
                raise UpError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.started: Started | None = None
        self.ready = threading.Event()  # set once serving (tests wait on it from a thread)
        self.server: _Server | None = None
        self.worker: Worker | None = None
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signals = 0

    @property
    def url(self) -> str:
        host = self.options.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - display only
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{self.port}"

    def stop(self) -> None:
        """Graceful stop; safe from any thread."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            log.warning(
                "stopping: running jobs get %.0fs (Ctrl-C again to force)",
                self.options.shutdown_grace,
            )
            self._stop.set()
        elif self.server is not None:
            self.server.force_exit = True
            if self.worker is not None:
                self.worker.shutdown_grace = 0

    async def run(
        self,
        *,
        install_signal_handlers: bool = False,
        on_started: Callable[[Started], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        opts = self.options
        embedded = opts.database_url is None and not os.environ.get(db.ENV_URL)
        url = opts.database_url
        if url is None:
            url = await asyncio.to_thread(db.database_url)
        await asyncio.to_thread(_migrate, url)

        settings = opts.settings or Settings.from_env()
        generated = not settings.auth_configured
        if generated:
            settings = replace(settings, jwt_secret=secrets.token_hex(32))
        settings = replace(settings, database_url=url)
        if settings.jwt_secret is None:
            raise RuntimeError("jobq up mints its development tokens with JOBQ_JWT_SECRET: set it")

        app = create_app(settings)
        self.server = _Server(app, log_level="warning", access_log=False)
        tasks = schedule.every(
            schedule.maintenance_tasks(stuck_timeout=opts.stuck_timeout), opts.maintenance_every
        )
        self.worker = Worker(
            self.registry,
            url=url,
            concurrency=opts.concurrency,
            maintenance=tasks,
            shutdown_grace=opts.shutdown_grace,
        )
        loop = self._loop
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal)
        server_task = asyncio.create_task(
            self.server.serve(sockets=[self.sock]), name="jobq-up-server"
        )
        worker_task = asyncio.create_task(self.worker.run(), name="jobq-up-worker")
        stop_task = asyncio.create_task(self._stop.wait(), name="jobq-up-stop")
        try:
            while not self.server.started:  # uvicorn has no awaitable "started"
                if server_task.done() or worker_task.done():
                    raise RuntimeError("jobq up: the API server or the worker failed to start")
                await asyncio.sleep(0.05)
            await self.worker.wait_started()
            seeded = await self._seed(url) if opts.examples and opts.seed > 0 else []
            user = _demo_user()
            self.started = Started(
                url=self.url,
                user_id=user,
                user_token=mint_token(
                    settings.jwt_secret,
                    user_id=user,
                    ttl=opts.token_ttl,
                    audience=settings.jwt_audience,
                ),
                service_token=mint_token(
                    settings.jwt_secret, role="service_role", ttl=opts.token_ttl
                ),
                secret_generated=generated,
                jwt_secret=settings.jwt_secret if generated else None,
                database=describe_database(url, embedded),
                job_types=self.registry.job_types,
                seeded=seeded,
            )
            if on_started is not None:
                on_started(self.started)
            self.ready.set()
            await asyncio.wait(
                {stop_task, server_task, worker_task}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self.worker.stop()
            self.server.should_exit = True
            stop_task.cancel()
            results = await asyncio.gather(worker_task, server_task, return_exceptions=True)
            if install_signal_handlers:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            self.sock.close()
            for name, r in zip(("worker", "server"), results, strict=True):
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    log.error("jobq up: the %s stopped with %r", name, r)

    async def _seed(self, url: str) -> list[UUID]:
        from jobq.examples import demo_jobs

        jobs = [NewJob(t, p, user_id=_demo_user()) for t, p in demo_jobs(self.options.seed)]
        async with AsyncClient(url, min_size=1, max_size=1) as client:
            return await client.create_jobs(jobs)


def _demo_user() -> UUID:
    from jobq.examples import DEMO_USER_ID

    return DEMO_USER_ID


def _migrate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        migrate.migrate(conn)


def print_banner(started: Started, out: TextIO) -> None:
    """What `jobq up` prints once serving (plain text: it is meant to be copied)."""
    lines = [
        "",
        "jobq is up: API, dashboard and worker in one process",
        "",
        f"  dashboard   {started.dashboard_url}",
        f"  service     {started.service_url}",
        "              (the same dashboard as service_role: every user's jobs)",
        f"  API docs    {started.url}/docs",
        f"  database    {started.database}",
        f"  handlers    {', '.join(started.job_types) or 'none (--no-examples)'}",
    ]
    if started.seeded:
        lines.append(f"  enqueued    {len(started.seeded)} demo jobs for user {started.user_id}")
    lines += [
        "",
        f"  user token  {started.user_token}",
        f"              (user {started.user_id}; send as Authorization: Bearer ...)",
    ]
    if started.secret_generated:
        lines += [
            "",
            "  JOBQ_JWT_SECRET was not set: this process signs its tokens with",
            f"    export JOBQ_JWT_SECRET={started.jwt_secret}",
            "  (set it yourself to keep tokens valid across restarts)",
        ]
    lines += [
        "",
        "Ctrl-C stops the worker (running jobs finish or go back to the queue) and the server.",
        "",
    ]
    out.write("\n".join(lines) + "\n")
    out.flush()


def up(options: UpOptions, out: TextIO, *, log_level: int = logging.INFO) -> None:
    """Run `jobq up` in the foreground until Ctrl-C / SIGTERM."""
    for noisy in ("jobq.schedule", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("jobq").setLevel(log_level)
    runner = Up(options)
    asyncio.run(runner.run(install_signal_handlers=True, on_started=lambda s: print_banner(s, out)))
    out.write("jobq up: stopped\n")
