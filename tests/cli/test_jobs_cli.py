"""`jobq enqueue | jobs | job | cancel | stats` as a user types them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psycopg

USER = "22222222-2222-2222-2222-222222222222"


def jobq(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "jobq", *args], env=env, capture_output=True, text=True, check=False
    )


def ok_json(url: str, *args: str) -> Any:
    done = jobq(url, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_enqueue_list_show_cancel_stats(database_url: str, conn: psycopg.Connection[Any]) -> None:
    created = ok_json(database_url, "enqueue", "sync_youtube", '{"account": "abc"}', "--user", USER)
    job_id = created["job_id"]
    row = conn.execute("SELECT user_id::text, job_type, params FROM job_queue").fetchone()
    assert row == (USER, "sync_youtube", {"account": "abc"})

    page = ok_json(database_url, "jobs", "--user", USER, "--status", "pending")
    assert page["total_count"] == 1
    assert [j["id"] for j in page["jobs"]] == [job_id]

    conn.execute("SELECT add_job_log(%s, 'info', 'hello from the worker')", (job_id,))
    shown = ok_json(database_url, "job", job_id)
    assert shown["job"]["status"] == "pending"
    assert [entry["message"] for entry in shown["logs"]] == ["hello from the worker"]

    assert ok_json(database_url, "cancel", job_id) == {"job_id": job_id, "status": "cancelled"}
    stats = ok_json(database_url, "stats", "--user", USER)
    assert [(s["job_type"], s["status"], s["job_count"]) for s in stats] == [
        ("sync_youtube", "cancelled", 1)
    ]

    table = jobq(database_url, "jobs")
    assert table.returncode == 0
    assert job_id in table.stdout
    assert "1 of 1 jobs" in table.stdout


def test_bad_input_exits_2_with_the_sqlstate(database_url: str) -> None:
    cases = {
        ("enqueue", "bad type!"): "InvalidInput (22023)",
        ("jobs", "--status", "nope"): "InvalidInput (22023)",
        ("job", "not-a-uuid"): "InvalidInput (22P02)",
        ("job", "00000000-0000-0000-0000-000000000001"): "NotFound (P0002)",
        ("cancel", "00000000-0000-0000-0000-000000000001"): "NotFound (P0002)",
    }
    for args, expected in cases.items():
        done = jobq(database_url, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert expected in done.stderr, (args, done.stderr)
    not_json = jobq(database_url, "enqueue", "x", '{"a"')
    assert not_json.returncode == 2
    assert "params is not JSON" in not_json.stderr


def test_cancelling_twice_is_an_illegal_transition(database_url: str) -> None:
    job_id = ok_json(database_url, "enqueue", "x")["job_id"]
    assert jobq(database_url, "cancel", job_id).returncode == 0
    again = jobq(database_url, "cancel", job_id)
    assert again.returncode == 2
    assert "InvalidTransition (55000)" in again.stderr
