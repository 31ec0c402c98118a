"""Fixtures for worker tests: worker processes, event-driven waits, PostgreSQL restarts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from jobq import embedded

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))  # worker_apps, as the worker processes import it

from worker_apps import EXECUTIONS_DDL  # noqa: E402


class Waiter:
    """Waits for a condition on the database, woken by job_status_changed
    notifications (re-checked at least every half second)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._listener = psycopg.connect(url, autocommit=True)
        self._listener.execute("LISTEN job_status_changed")

    def until(
        self, check: Callable[[], bool], timeout: float = 60.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            try:
                for _ in self._listener.notifies(timeout=min(remaining, 0.5), stop_after=50):
                    pass
            except psycopg.OperationalError:
                # the server restarted under us: listen again
                self._listener = psycopg.connect(self.url, autocommit=True)
                self._listener.execute("LISTEN job_status_changed")

    def scalar(self, query: str, params: Any = None) -> Any:
        with psycopg.connect(self.url, autocommit=True) as c:
            row = c.execute(query, params).fetchone()
            return row[0] if row else None

    def until_sql(self, query: str, timeout: float = 60.0) -> None:
        self.until(lambda: bool(self.scalar(query)), timeout, query)

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def waiter(database_url: str) -> Iterator[Waiter]:
    w = Waiter(database_url)
    yield w
    w.close()


@pytest.fixture
def worker_db(database_url: str, conn: psycopg.Connection[Any]) -> str:
    """The test database, ready for worker_apps: executions table, fast retries."""
    conn.execute(EXECUTIONS_DDL)
    conn.execute(
        "UPDATE job_queue_config SET retry_base_delay = '0', max_active_jobs_per_user = 100000"
    )
    return database_url


class WorkerProcs:
    def __init__(self, url: str, log_dir: Path) -> None:
        self.url = url
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "DATABASE_URL": self.url, "PYTHONPATH": str(HERE)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobq", "worker", "worker_apps:registry", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(self.log_dir / f"worker-{len(self.procs)}.log").open("wb"),
        )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def workers(
    worker_db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[WorkerProcs]:
    procs = WorkerProcs(worker_db, tmp_path)
    yield procs
    procs.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- worker logs ---\n{procs.logs()[-20000:]}")


@pytest.fixture
def restart_postgres(admin_url: str) -> Callable[[], None]:
    """Restart the server under test: the embedded one, or this machine's PostgreSQL 15."""

    def restart() -> None:
        if not os.environ.get("DATABASE_URL"):
            embedded.restart()
            return
        info = conninfo_to_dict(admin_url)
        local = (
            info.get("host") in ("127.0.0.1", "localhost") and str(info.get("port", 5432)) == "5432"
        )
        if not (local and shutil.which("pg_ctlcluster")):
            pytest.skip("cannot restart this DATABASE_URL's server from here")
        version = subprocess.run(
            ["psql", admin_url, "-Atc", "show server_version_num"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()[:2]
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True
        )

    return restart


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
