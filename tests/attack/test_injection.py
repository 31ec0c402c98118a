"""SQL injection through every text parameter of the SQL functions, as A and as B.

Each payload is refused with a stable SQLSTATE (22023 for a value outside the
allowed set, 22P02/22007 for a value that is not a uuid/timestamp), or taken
literally: compared as a value (nothing matches, nothing of the other user's
shows) or stored as given (the caller's own new job, params byte for byte).
The admin checks after every payload that the other user's jobs and logs, and
every table, are unchanged. The HTTP side is in test_http.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from psycopg.types.json import Jsonb
from tests.attack._arena import ALLOWED, Arena, Check, Party, sql_attack
from tests.sql.helpers import Conn
from tests.sql.test_security import PAYLOADS

KIND = "injection"

MORE_PAYLOADS = [
    "' or 1=1 --",
    "'; update public.job_queue set status = 'cancelled'; --",
    "$$; drop table public.job_queue; $$",
    "' union select * from public.job_queue --",
    "bsecret' or user_id is not null or '",
    "1; select pg_sleep(0)",
    "zebra | bsecret",  # websearch OR of B's log words
    '"bsecret" or zebra',
    "bsecret:*",
    "%",
    "_%\\",
    "created_at, (select string_agg(id::text, ',') from public.job_queue)",
    "ASC NULLS FIRST; --",
    "ø'\u2028\"",
]
ALL_PAYLOADS = PAYLOADS + MORE_PAYLOADS

Rows = list[dict[str, Any]]


def own_only(me: Party, column: str) -> Check:
    def check(conn: Conn, rows: Rows) -> str | None:
        ids = [r[column] for r in rows]
        foreign = conn.execute(
            "select id from public.job_queue where id = any(%s) and user_id <> %s",
            (ids, me.user),
        ).fetchall()
        return f"other users' rows: {foreign}" if foreign else None

    return check


def empty(me: Party, column: str) -> Check:
    def check(conn: Conn, rows: Rows) -> str | None:
        return f"expected nothing, got {rows!r:.200}" if rows else None

    return check


def stored_literally(params: dict[str, Any]) -> Callable[[Party, str], Check]:
    """The caller's own new job, with exactly the params sent."""

    def make(me: Party, column: str) -> Check:
        def check(conn: Conn, rows: Rows) -> str | None:
            if len(rows) != 1:
                return f"expected one job, got {rows!r:.200}"
            row = conn.execute(
                "select user_id, params from public.job_queue where id = %s", (rows[0][column],)
            ).fetchone()
            if row is None or row[0] != me.user:
                return f"the job is not the caller's: {row}"
            if row[1] != params:
                return f"params not stored literally: {row[1]!r} != {params!r}"
            return None

        return check

    return make


# (target, query, argument builder, user expectation, check, changes the caller's own state)
Slot = tuple[
    str,
    str,
    Callable[[str], tuple[Any, ...]],
    str | None,
    Callable[[Party, str], Check] | None,
    bool,
]


def slots(payload: str) -> list[Slot]:
    keyed = {payload: payload}
    return [
        ("get_user_jobs.p_order_by", "select * from get_user_jobs(null, p_order_by => %s)",
         lambda p: (p,), "22023", None, False),
        ("get_user_jobs.p_order_dir", "select * from get_user_jobs(null, p_order_dir => %s)",
         lambda p: (p,), "22023", None, False),
        ("get_user_jobs.p_status", "select * from get_user_jobs(null, p_status => %s)",
         lambda p: (p,), "22023", None, False),
        ("get_user_jobs.p_job_type", "select * from get_user_jobs(null, p_job_type => %s)",
         lambda p: (p,), ALLOWED, empty, False),
        ("get_user_jobs.p_params_contains (key and value)",
         "select * from get_user_jobs(null, p_params_contains => %s)",
         lambda p: (Jsonb(keyed),), ALLOWED, empty, False),
        ("get_user_jobs.p_params_contains (value of B's key)",
         "select * from get_user_jobs(null, p_params_contains => %s)",
         lambda p: (Jsonb({"owner": p}),), ALLOWED, empty, False),
        ("get_user_jobs.p_result_contains",
         "select * from get_user_jobs(null, p_result_contains => %s)",
         lambda p: (Jsonb(keyed),), ALLOWED, empty, False),
        ("get_user_jobs.p_cursor_id", "select * from get_user_jobs(null, p_cursor_id => %s)",
         lambda p: (p,), "22P02", None, False),
        ("get_user_jobs.p_cursor_created_at",
         "select * from get_user_jobs(null, p_cursor_created_at => %s)",
         lambda p: (p,), "22007", None, False),
        ("get_job_logs.p_search", "select * from get_job_logs(null, p_search => %s)",
         lambda p: (p,), ALLOWED, own_only, False),
        ("get_job_logs.p_level", "select * from get_job_logs(null, p_level => %s)",
         lambda p: (p,), "22023", None, False),
        ("get_job_logs.p_metadata_contains",
         "select * from get_job_logs(null, p_metadata_contains => %s)",
         lambda p: (Jsonb(keyed),), ALLOWED, empty, False),
        ("get_job_logs.p_job_id", "select * from get_job_logs(%s)",
         lambda p: (p,), "22P02", None, False),
        ("cancel_job.p_job_id", "select cancel_job(%s)", lambda p: (p,), "22P02", None, False),
        ("create_job.p_job_type", "select create_job(null, %s)",
         lambda p: (p,), "22023", None, False),
        ("create_job.p_params keys and values", "select create_job(null, 'x', %s) as id",
         lambda p: (Jsonb(keyed),), ALLOWED, stored_literally(keyed), True),
        ("find_or_create_job.p_job_type", "select * from find_or_create_job(null, %s)",
         lambda p: (p,), "22023", None, False),
        ("find_or_create_job dedup key",
         "select job_id as id from find_or_create_job(null, 'x', %s)",
         lambda p: (Jsonb(keyed),), ALLOWED, stored_literally(keyed), True),
        ("get_cached_job_result.p_job_type",
         "select * from get_cached_job_result(null, %s, '{}')",
         lambda p: (p,), ALLOWED, empty, False),
        ("get_cached_job_result cache key",
         "select * from get_cached_job_result(null, 'bsecret.mail', %s)",
         lambda p: (Jsonb({**keyed, "owner": "bsecret"}),), ALLOWED, empty, False),
        ("create_jobs job_type", "select * from create_jobs(null, %s)",
         lambda p: (Jsonb([{"job_type": p}]),), "22023", None, False),
        ("create_jobs params", "select job_id as id from create_jobs(null, %s)",
         lambda p: (Jsonb([{"job_type": "x", "params": keyed}]),), ALLOWED,
         stored_literally(keyed), True),
    ]  # fmt: skip


def test_every_text_parameter_is_covered() -> None:
    """The slots above name every text (or text-bearing jsonb) argument a user can reach."""
    covered = {s[0].split(" ")[0].split(".")[0] for s in slots("x")}
    assert covered == {
        "get_user_jobs",
        "get_job_logs",
        "cancel_job",
        "create_job",
        "find_or_create_job",
        "get_cached_job_result",
        "create_jobs",
    }


PAIRS = [("A", "B"), ("B", "A")]


@pytest.mark.parametrize(("who", "victim"), PAIRS, ids=[f"{w}-vs-{v}" for w, v in PAIRS])
def test_injection_is_refused_or_taken_literally(
    conn: Conn, arena: Arena, who: str, victim: str
) -> None:
    me, target = arena.party(who), arena.party(victim)
    for payload in ALL_PAYLOADS:
        for name, query, args, expect, check, changes_own in slots(payload):
            column = "job_id" if "get_job_logs" in name else "id"
            sql_attack(
                conn,
                arena,
                kind=KIND,
                who=who,
                victim=target,
                target=f"{name} <- {json.dumps(payload)}",
                query=query,
                params=args(payload),
                expect=expect,
                check=None if check is None else check(me, column),
                state_may_change=changes_own,
            )
