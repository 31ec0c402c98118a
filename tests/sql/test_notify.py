"""Realtime: job_status_change_notify sends pg_notify('job_status_changed', payload).

A LISTENing connection must get exactly the expected notifications, in order.
"Nothing was sent" is shown by making a following, known change and checking
that the next notification is that one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from tests.sql._support import (
    Conn,
    as_user,
    call,
    claim,
    create_job,
    job_in_state,
    new_user,
    raises_sqlstate,
)

CHANNEL = "job_status_changed"
PAYLOAD_FIELDS = {
    "job_id",
    "user_id",
    "job_type",
    "status",
    "progress_percent",
    "progress_message",
    "error_message",
    "error_code",
}
NOTIFY_LIMIT = 8000  # bytes, PostgreSQL's cap on a NOTIFY payload


@pytest.fixture
def listen(make_conn: Callable[..., Conn]) -> Callable[..., list[dict[str, Any]]]:
    """``listen(n)`` returns the next ``n`` payloads (parsed), failing if fewer arrive."""
    listener = make_conn()
    listener.execute(f"listen {CHANNEL}")

    def receive(n: int = 1, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        got = list(listener.notifies(timeout=timeout, stop_after=n))
        assert len(got) == n, f"expected {n} notifications, got {len(got)}"
        payloads = []
        for note in got:
            assert note.channel == CHANNEL
            size = len(note.payload.encode("utf-8"))
            assert size < NOTIFY_LIMIT, f"payload of {size} bytes"
            payload = json.loads(note.payload)
            assert payload.keys() >= PAYLOAD_FIELDS
            payloads.append(payload)
        return payloads

    return receive


def test_lifecycle_payloads(conn: Conn, listen: Callable[..., list[dict[str, Any]]]) -> None:
    user = new_user()
    with as_user(conn, user):
        job_id = call(conn, "create_job", user, "sync_youtube", {"a": 1})[0]["create_job"]
    [created] = listen()
    assert created == {
        **created,
        "event": "insert",
        "job_id": str(job_id),
        "user_id": str(user),
        "job_type": "sync_youtube",
        "status": "pending",
        "progress_percent": 0,
        "progress_message": None,
        "error_message": None,
        "error_code": None,
        "attempts": 0,
    }
    assert "result" not in created

    assert [r["id"] for r in claim(conn, "w1")] == [job_id]
    [claimed] = listen()
    assert (claimed["event"], claimed["status"], claimed["attempts"]) == ("update", "processing", 1)
    assert claimed["job_id"] == str(job_id)

    call(conn, "update_job_progress", job_id, 40, "fetching videos", "w1")
    [progress] = listen()
    assert (progress["status"], progress["progress_percent"], progress["progress_message"]) == (
        "processing",
        40,
        "fetching videos",
    )

    call(conn, "complete_job", job_id, {"videos": 12, "title": "ünïcödé"}, "w1")
    [done] = listen()
    assert (done["status"], done["progress_percent"]) == ("completed", 100)
    assert done["result"] == {"videos": 12, "title": "ünïcödé"}
    assert "result_omitted" not in done


def test_failure_and_cancel_payloads(
    conn: Conn, listen: Callable[..., list[dict[str, Any]]]
) -> None:
    user = new_user()
    failing = job_in_state(conn, user, "processing")
    running = job_in_state(conn, user, "processing")
    listen(4)  # two creates, two starts
    call(conn, "fail_job", failing, "quota exceeded", "E_QUOTA")
    [failed] = listen()
    assert (failed["job_id"], failed["status"], failed["error_message"], failed["error_code"]) == (
        str(failing),
        "failed",
        "quota exceeded",
        "E_QUOTA",
    )
    assert "result" not in failed
    call(conn, "cancel_job", running)
    [cancelled] = listen()
    assert (cancelled["job_id"], cancelled["status"], cancelled["error_code"]) == (
        str(running),
        "cancelled",
        "CANCELLED",
    )


def test_large_result_is_omitted(conn: Conn, listen: Callable[..., list[dict[str, Any]]]) -> None:
    job_id = job_in_state(conn, new_user(), "processing")
    listen(2)
    result = {"blob": "x" * 100_000}
    call(conn, "complete_job", job_id, result, "w1")
    [done] = listen()
    assert done["status"] == "completed"
    assert done["result_omitted"] is True
    assert "result" not in done
    # the result itself is stored whole
    stored = conn.execute("select result from public.job_queue where id = %s", (job_id,)).fetchone()
    assert stored == (result,)


def test_multibyte_progress_message_stays_under_the_cap(
    conn: Conn, listen: Callable[..., list[dict[str, Any]]]
) -> None:
    job_id = job_in_state(conn, new_user(), "processing", job_type="t" * 100)
    listen(2)
    message = "😀" * 1000  # 1000 characters, 4000 bytes
    call(conn, "update_job_progress", job_id, 99, message, "w1")
    [progress] = listen()  # listen() asserts the byte size
    assert progress["progress_percent"] == 99
    assert message.startswith(progress["progress_message"])
    assert len(progress["progress_message"]) > 0


def test_results_near_the_cap_are_inlined_or_omitted_never_too_long(
    conn: Conn, listen: Callable[..., list[dict[str, Any]]]
) -> None:
    """Around the cap, with every variable field at its longest and multibyte."""
    user = new_user()
    outcomes = set()
    for size in range(6600, 8200, 97):
        job_id = job_in_state(conn, user, "processing", job_type="j" * 100)
        call(conn, "update_job_progress", job_id, 50, "€" * 1000, "w1")
        listen(3)
        result = {"s": "ä" * (size // 2)}
        call(conn, "complete_job", job_id, result, "w1")
        [done] = listen()
        if "result" in done:
            assert done["result"] == result
            outcomes.add("inlined")
        else:
            assert done["result_omitted"] is True
            outcomes.add("omitted")
    assert outcomes == {"inlined", "omitted"}


def test_long_error_message_stays_under_the_cap(
    conn: Conn, listen: Callable[..., list[dict[str, Any]]]
) -> None:
    job_id = job_in_state(conn, new_user(), "processing")
    listen(2)
    call(conn, "fail_job", job_id, "漢" * 4000, "C" * 100)
    [failed] = listen()
    assert failed["status"] == "failed"
    assert failed["error_code"] == "C" * 100


def test_heartbeats_send_nothing(conn: Conn, listen: Callable[..., list[dict[str, Any]]]) -> None:
    job_id = job_in_state(conn, new_user(), "processing")
    listen(2)
    assert call(conn, "heartbeat_jobs", "w1", [job_id]) == []
    conn.execute("update public.job_queue set heartbeat_at = now() where id = %s", (job_id,))
    conn.execute("update public.job_queue set priority = 5 where id = %s", (job_id,))
    call(conn, "update_job_progress", job_id, 10, None, "w1")  # the known change
    [next_one] = listen()
    assert (next_one["job_id"], next_one["progress_percent"]) == (str(job_id), 10)
    assert call(conn, "heartbeat_jobs", "w1", [job_id]) == []
    call(conn, "cancel_job", job_id)
    [after] = listen()
    assert after["status"] == "cancelled"


def test_rolled_back_changes_send_nothing(
    conn: Conn, listen: Callable[..., list[dict[str, Any]]]
) -> None:
    user = new_user()

    with conn.transaction():
        create_job(conn, user, "never")
        raise psycopg.Rollback  # leaves the block, rolled back, without an error
    with raises_sqlstate("22023"):
        create_job(conn, user, "bad", {}, priority=1000)
    marker = create_job(conn, user, "marker")
    [first] = listen()
    assert (first["job_id"], first["job_type"]) == (str(marker), "marker")


def test_one_notification_per_job_of_a_batch(
    conn: Conn, listen: Callable[..., list[dict[str, Any]]]
) -> None:
    user = new_user()
    ids = [create_job(conn, user, "batch", {"i": i}) for i in range(5)]
    listen(5)
    rows = claim(conn, "w1", limit=5)
    assert len(rows) == 5
    payloads = listen(5)
    assert sorted(p["job_id"] for p in payloads) == sorted(str(i) for i in ids)
    assert {p["status"] for p in payloads} == {"processing"}
    marker = create_job(conn, user, "marker")
    [next_one] = listen()
    assert next_one["job_id"] == str(marker)


def test_supabase_realtime_broadcast_per_user(
    conn: Conn, listen: Callable[..., list[dict[str, Any]]]
) -> None:
    """Where realtime.send exists (Supabase), each change also goes to topic jobs:<user>."""
    conn.execute(
        """
        create schema if not exists realtime;
        create table realtime.sent (
            n serial, payload jsonb, event text, topic text, private boolean);
        create function realtime.send(payload jsonb, event text, topic text, private boolean)
        returns void language sql
        as $$ insert into realtime.sent (payload, event, topic, private)
              values (payload, event, topic, private) $$;
        """
    )
    user = new_user()
    job_id = create_job(conn, user, "rt")
    [notified] = listen()
    call(conn, "cancel_job", job_id)
    listen()
    sent = conn.execute(
        "select payload, event, topic, private from realtime.sent order by n"
    ).fetchall()
    assert [(s[1], s[2], s[3]) for s in sent] == [("job_status_changed", f"jobs:{user}", True)] * 2
    assert sent[0][0] == notified
    assert sent[1][0]["status"] == "cancelled"


def test_payload_job_id_is_the_row(conn: Conn, listen: Callable[..., list[dict[str, Any]]]) -> None:
    user = new_user()
    job_id = create_job(conn, user)
    [p] = listen()
    assert uuid.UUID(p["job_id"]) == job_id
    assert uuid.UUID(p["user_id"]) == user
