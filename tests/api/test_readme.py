"""The README's HTTP API example, run as written against a live server.

The shell block of the "HTTP API" section runs in bash with only the port
changed (8000 -> a free one). The harness waits for the background event
stream to be connected before the commands after it run (a reader would have
it open in another terminal), then checks what each command printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def http_api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## HTTP API\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "the HTTP API section has no sh code block"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_text(path: Path, pattern: str, timeout: float) -> str:
    """The file's text once ``pattern`` appears in it (it is written by curl)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(encoding="utf-8", errors="replace")
        if re.search(pattern, text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} never appeared in:\n{text}")
        time.sleep(0.05)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_examples_work_as_written(database_url: str, tmp_path: Path) -> None:
    block = http_api_block()
    assert "jobq serve --port 8000 &" in block
    port = free_port()
    script_lines = []
    for line in block.replace("8000", str(port)).splitlines():
        script_lines.append(line)
        if "/events" in line and line.rstrip().endswith("&"):
            # the harness, not the README: let the stream connect first
            script_lines.append(
                'for _ in $(seq 600); do grep -q "^: connected" "$README_OUT" && break; '
                "sleep 0.05; done"
            )
    script = tmp_path / "readme.sh"
    script.write_text("set -euo pipefail\n" + "\n".join(script_lines) + "\n")
    out = tmp_path / "out.txt"
    err = tmp_path / "err.txt"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "README_OUT": str(out),
    }
    env.pop("JOBQ_JWT_SECRET", None)
    with out.open("w") as stdout, err.open("w") as stderr:
        shell = subprocess.Popen(
            ["bash", str(script)], stdout=stdout, stderr=stderr, env=env, start_new_session=True
        )
        try:
            assert shell.wait(timeout=120) == 0, err.read_text() + out.read_text()
            printed = out.read_text()
            job = next(
                json.loads(line) for line in printed.splitlines() if line.startswith('{"id":')
            )
            job_id = job["id"]
            assert job["user_id"] == "9d4b6a55-1c7e-4f0b-9a43-3f1f0f6c2b10"
            assert (job["job_type"], job["status"]) == ("send_email", "pending")
            assert job["params"] == {"to": "ada@example.com"}
            assert '{"status":"ok"}' in printed
            assert json.dumps({"job_id": job_id, "status": "cancelled"}).replace(" ", "") in printed
            # the background stream saw the job created and cancelled
            printed = wait_for_text(out, rf'"job_id": "{job_id}"[^\n]*"status": "cancelled"', 30)
            frames = [
                json.loads(line[6:]) for line in printed.splitlines() if line.startswith("data: ")
            ]
            statuses = [f["status"] for f in frames if f["job_id"] == job_id]
            assert statuses == ["pending", "cancelled"]
            assert "event: job" in printed
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGTERM)  # the server and the stream
            shell.wait(timeout=30)
