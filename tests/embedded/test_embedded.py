"""The embedded server: concurrent first starts, stop, restart. Own data dir each."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from jobq import embedded

START = "from jobq.embedded import embedded_url; print(embedded_url('postgres'))"


@pytest.fixture
def own_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    pgdata = tmp_path / "c" / "pg18"
    monkeypatch.setenv(embedded.ENV_DIR, str(pgdata))
    try:
        yield pgdata
    finally:
        embedded.stop()


def test_concurrent_first_start_from_two_processes(own_cluster: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", START], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    urls = {out.strip() for out, _ in outputs}
    assert len(urls) == 1
    # Still running after both processes exited: the next command reuses it.
    status = embedded.status()
    assert status.running
    with psycopg.connect(urls.pop()) as conn:
        assert conn.execute("show server_version_num").fetchone()[0].startswith("18")  # type: ignore[index]


def test_stop_and_restart(own_cluster: Path) -> None:
    url = embedded.embedded_url()
    pid = embedded.status().pid
    assert embedded.restart() == url
    assert embedded.status().pid != pid
    with psycopg.connect(url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)

    assert embedded.stop() is True
    assert not embedded.status().running
    assert embedded.stop() is False
    # Started again on demand, in the same process that had it cached.
    assert embedded.embedded_url() == url
    assert embedded.status().running
