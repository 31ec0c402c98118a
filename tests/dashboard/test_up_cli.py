"""`jobq up` as a user runs it: a subprocess that prints the dashboard URL and a dev
token, serves the page, runs the demo jobs, and stops cleanly on Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from .conftest import _unavailable, chromium_path


class Lines:
    """A subprocess's stdout, line by line, read by a thread (waits on the pipe, no sleeps)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def until(self, pattern: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return "".join(self.seen)
        raise AssertionError(f"no line matching {pattern!r}; got:\n{''.join(self.seen)}")

    def rest(self, timeout: float = 60) -> str:
        self.until(r"^jobq up: stopped", timeout)
        return "".join(self.seen)


def test_jobq_up_prints_the_dashboard_and_stops_on_ctrl_c(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JOBQ_JWT_SECRET"}
    env["DATABASE_URL"] = database_url
    jobq = str(Path(sys.executable).with_name("jobq"))
    proc = subprocess.Popen(
        [jobq, "up", "--port", "0", "--seed", "3", "--concurrency", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = Lines(proc)
        banner = lines.until(r"^Ctrl-C stops")
        url = re.search(r"dashboard\s+(http://127\.0\.0\.1:\d+)/#token=(\S+)", banner)
        assert url, banner
        base, token = url.group(1), url.group(2)
        assert re.search(r"service\s+http://127\.0\.0\.1:\d+/#token=\S+", banner)
        assert "export JOBQ_JWT_SECRET=" in banner  # made up for this process
        assert "enqueued    3 demo jobs" in banner
        assert "checksum, compress, flaky, long_report, system_snapshot, thumbnail" in banner

        page = httpx.get(base + "/")
        assert page.status_code == 200
        assert "jobq dashboard" in page.text
        jobs = httpx.get(base + "/jobs", headers={"Authorization": f"Bearer {token}"})
        assert jobs.status_code == 200
        assert {j["job_type"] for j in jobs.json()["jobs"]} >= {"checksum", "thumbnail", "compress"}

        proc.send_signal(signal.SIGINT)
        assert "jobq up: stopped" in lines.rest()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # nothing was left running: every job is back in the queue or finished
    with psycopg.connect(database_url) as conn:
        running = conn.execute("select count(*) from job_queue where status = 'processing'")
        assert running.fetchone() == (0,)


def test_jobq_up_refuses_a_taken_port(database_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        jobq = str(Path(sys.executable).with_name("jobq"))
        result = subprocess.run(
            [jobq, "up", "--port", str(port)],
            env={**os.environ, "DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1" in result.stderr


def test_a_missing_browser_fails_where_it_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQ_CHROMIUM", "/nonexistent/chromium")
    assert chromium_path() is None
    monkeypatch.setenv("JOBQ_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="JOBQ_REQUIRE_BROWSER=1"):
        _unavailable("no chromium binary")
    monkeypatch.delenv("JOBQ_REQUIRE_BROWSER")
    with pytest.raises(pytest.skip.Exception):
        _unavailable("no chromium binary")
