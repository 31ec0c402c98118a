"""Subscribing to events: A's /events stream never carries B's jobs, and the reverse.

Changes to the victim's jobs are made first, then one to the subscriber's own
job; the hub dispatches notifications in order from its single LISTEN
connection, so once the subscriber's own frame arrives every victim frame
would already have been delivered (no sleeps: the test waits for that frame).

Also documented here: LISTEN on ``job_status_changed`` needs no privilege in
PostgreSQL, so any SQL login (one that is only a member of authenticated or of
anon included) receives every user's payload. No API path lets a user run
LISTEN (the HTTP API runs fixed queries; a user may create no function), so it
is recorded as a finding, not as a leak.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from psycopg import sql
from tests.api._support import Api, Frame, SSEReader
from tests.attack._arena import Arena, Party
from tests.attack._recorder import RECORDER, Leak, markers_in
from tests.sql.helpers import Conn

KIND = "events"
CHANNEL = "job_status_changed"


def victim_changes(conn: Conn, v: Party) -> list[tuple[str, Callable[[], Any]]]:
    """Every kind of change to the victim's jobs, each one a notification (made as the admin)."""

    def run(query: str, *params: Any) -> Callable[[], Any]:
        return lambda: conn.execute(query, params)

    return [
        ("progress", run("select update_job_progress(%s, 42, 'bsecret progress')", v.processing)),
        ("log line", run("select add_job_log(%s, 'info', 'bsecret line')", v.processing)),
        ("new job", run("select create_job(%s, 'bsecret.new', '{\"n\": 1}')", v.user)),
        ("cancel", run("select cancel_job(%s)", v.pending)),
        ("retry", run("select retry_job(%s)", v.failed)),
        ("complete", run("select complete_job(%s, '{\"secret\": \"bsecret\"}')", v.processing)),
    ]  # fmt: skip


def own_final(conn: Conn, me: Party) -> str:
    """A change to the subscriber's own job: the frame to wait for. Returns its job id."""
    job = conn.execute(
        "select create_job(%s, 'own.final', '{\"final\": true}')", (me.user,)
    ).fetchone()
    assert job is not None
    return str(job[0])


def frames_of(reader: SSEReader) -> list[Frame]:
    return [f for f in reader.seen if f.event == "job"]


@pytest.mark.parametrize(("who", "victim"), [("A", "B"), ("B", "A")], ids=["A-vs-B", "B-vs-A"])
def test_a_users_stream_never_carries_another_users_jobs(
    conn: Conn,
    arena: Arena,
    api: Api,
    sse: Callable[[Api, str], SSEReader],
    who: str,
    victim: str,
) -> None:
    me, v = arena.party(who), arena.party(victim)
    mine = sse(api, api.tokens.user(me.user))
    everyone = sse(api, api.tokens.service())  # the control: the changes do make frames
    changes = victim_changes(conn, v)
    for _, change in changes:
        change()
    final = own_final(conn, me)
    mine.wait_for(lambda f: f.event == "job" and f.data.get("job_id") == final)
    everyone.wait_for(lambda f: f.event == "job" and f.data.get("job_id") == final)
    victims_frames = [f for f in frames_of(everyone) if f.data.get("user_id") == str(v.user)]
    assert len(victims_frames) >= len(changes) - 1  # a log line is no status change

    for name, _ in changes:

        def verdict(name: str = name) -> str:
            seen = frames_of(mine)
            leaked = markers_in([f.data for f in seen], v.markers)
            if leaked:
                raise Leak(f"{who}'s stream carried {v.name}'s {leaked} after the {name}")
            foreign = [f.data for f in seen if f.data.get("user_id") != str(me.user)]
            if foreign:
                raise Leak(f"{who}'s stream carried other users' frames: {foreign!r:.200}")
            return f"not delivered ({len(seen)} own frames)"

        RECORDER.attempt(KIND, who, f"/events: {v.name}'s {name}", verdict)


# -- LISTEN in SQL ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["authenticated", "anon"])
def test_listen_as_a_sql_login_sees_every_users_payload(
    conn: Conn, arena: Arena, login_in: Callable[[str], Conn], role: str
) -> None:
    """What a SQL login in an API role receives on the channel: everything (documented)."""
    listener = login_in(role)
    listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
    v = arena.b
    conn.execute("select complete_job(%s, '{\"secret\": \"bsecret\"}', 'w1')", (v.processing,))
    note = next(listener.notifies(timeout=30, stop_after=1))
    payload = json.loads(note.payload)
    assert payload["user_id"] == str(v.user)
    assert payload["result"] == {"secret": "bsecret"}  # results of completed jobs included

    def verdict() -> str:
        # The API roles are NOLOGIN; a user reaches the database only through the API
        # (fixed queries) or the SQL functions, none of which runs LISTEN, and may not
        # create a function that would. So this is no leak of the API; it is recorded.
        can_login = conn.execute(
            "select rolcanlogin from pg_roles where rolname = %s", (role,)
        ).fetchone()
        if can_login != (False,):
            raise Leak(f"role {role} can log in and LISTEN to every user's jobs")
        return "delivered to a SQL login (no API path to LISTEN): documented, not a leak"

    RECORDER.attempt(KIND, f"sql login in {role}", f"LISTEN {CHANNEL}: B's completion", verdict)
    RECORDER.note(
        f"LISTEN {CHANNEL} needs no privilege: any SQL login (incl. one that is only a member "
        "of anon or authenticated) receives every user's job payloads, results included; "
        "the API roles are NOLOGIN and no API path runs LISTEN, so this is not counted as a leak"
    )
