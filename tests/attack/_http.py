"""The HTTP attack runner: one request, its exact status, and what it showed or changed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
from tests.attack._arena import Arena, Party, party_snapshot
from tests.attack._recorder import RECORDER, Attempt, Leak, Unexpected, markers_in
from tests.sql.helpers import Conn
from tests.sql.test_security import snapshot

HttpCheck = Callable[[httpx.Response], str | None]


def request_text(request: httpx.Request) -> str:
    body = request.content.decode("utf-8", "replace") if request.content else ""
    return f"{request.url} {body} {dict(request.headers)}"


def http_attack(
    conn: Conn,
    *,
    kind: str,
    who: str,
    victim: Party,
    target: str,
    send: Callable[[], httpx.Response],
    expect: int,
    check: HttpCheck | None = None,
    state_may_change: bool = False,
    cleanup: Callable[[httpx.Response], None] | None = None,
) -> Attempt:
    """Send one request and record the verdict.

    A refusal must have exactly status ``expect`` and change nothing at all; an
    allowed answer (2xx/3xx ``expect``) must hold none of the victim's markers
    (those the request itself carried excepted: a path or body naming a job id
    is not a leak of it) and pass ``check``. The victim's jobs and logs must be
    unchanged either way. ``cleanup`` runs after the verdict (e.g. to delete a
    job the caller created, so that the rate limit does not interfere).
    """

    def run() -> str:
        before_all, before_victim = snapshot(conn), party_snapshot(conn, victim)
        response = send()
        try:
            body = response.text
            echoed = {m for m in victim.markers if m in request_text(response.request)}
            leaked = markers_in(body, victim.markers - echoed)
            if leaked:
                raise Leak(
                    f"{response.status_code} with {victim.name}'s data {leaked}: {body:.300}"
                )
            if party_snapshot(conn, victim) != before_victim:
                raise Leak(f"{response.status_code}, and {victim.name}'s jobs or logs changed")
            status = response.status_code
            if expect >= 400:
                if status < 400:
                    raise Leak(f"{status} where {expect} was due: {body:.200}")
                if status != expect:
                    raise Unexpected(f"expected {expect}, got {status}: {body:.200}")
                if snapshot(conn) != before_all:
                    raise Leak(f"refused with {status}, but the database changed")
                return f"refused {status}"
            if status != expect:
                raise Unexpected(f"expected {expect}, got {status}: {body:.300}")
            if not state_may_change and snapshot(conn) != before_all:
                raise Leak("the database changed")
            problem = check(response) if check else None
            if problem:
                raise Leak(problem)
            return f"{status}, nothing of {victim.name}'s"
        finally:
            if cleanup is not None:
                cleanup(response)

    return RECORDER.attempt(kind, who, target, run)


# -- checks of allowed answers ------------------------------------------------------------


def own_jobs(me: Party) -> HttpCheck:
    def check(r: httpx.Response) -> str | None:
        jobs = r.json()["jobs"]
        foreign = [j["id"] for j in jobs if j["user_id"] != str(me.user)]
        return f"jobs of other users: {foreign}" if foreign else None

    return check


def own_logs(conn: Conn, me: Party) -> HttpCheck:
    def check(r: httpx.Response) -> str | None:
        ids = [line["job_id"] for line in r.json()["logs"]]
        foreign = conn.execute(
            "select id from public.job_queue where id = any(%s::uuid[]) and user_id <> %s",
            (ids, me.user),
        ).fetchall()
        return f"log lines of other users' jobs: {foreign}" if foreign else None

    return check


def created_for(conn: Conn, me: Party, *, created: bool | None = None) -> HttpCheck:
    """The answer names a job of the caller's (new when ``created``)."""

    def check(r: httpx.Response) -> str | None:
        body = r.json()
        row = conn.execute(
            "select user_id from public.job_queue where id = %s", (body["job_id"],)
        ).fetchone()
        if row is None or row[0] != me.user:
            return f"the answer's job {body['job_id']} is not the caller's"
        if body.get("cached"):
            return f"a cached result was returned: {body}"
        if created is not None and body["created"] is not created:
            return f"created is {body['created']}, expected {created}"
        return None

    return check


def stats_are_own(conn: Conn, me: Party) -> HttpCheck:
    def check(r: httpx.Response) -> str | None:
        rows = r.json()["stats"]
        total = sum(row["job_count"] for row in rows)
        row = conn.execute(
            "select count(*) from public.job_queue where user_id = %s", (me.user,)
        ).fetchone()
        assert row is not None
        return None if total == row[0] else f"stats count {total} jobs, the caller has {row[0]}"

    return check


def throughput_is_own(conn: Conn, me: Party) -> HttpCheck:
    def check(r: httpx.Response) -> str | None:
        types = {row["job_type"] for row in r.json()["per_type"]}
        mine = {
            t
            for (t,) in conn.execute(
                "select distinct job_type from public.job_queue where user_id = %s", (me.user,)
            )
        }
        return f"job types of other users: {types - mine}" if types - mine else None

    return check


def delete_created(conn: Conn) -> Callable[[httpx.Response], None]:
    """Remove the job a request created (as the admin), whatever the verdict."""

    def cleanup(r: httpx.Response) -> None:
        try:
            job_id = r.json().get("job_id")
        except (json.JSONDecodeError, AttributeError):
            return
        if job_id and r.status_code == 201:
            conn.execute("delete from public.job_queue where id = %s", (job_id,))

    return cleanup


def tokens_for(arena: Arena, tokens: Any) -> dict[str, str]:
    return {"A": tokens.user(arena.a.user), "B": tokens.user(arena.b.user)}
