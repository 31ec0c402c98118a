"""Every SQL function of the migration, called as anon, A and B against the other's jobs.

The list of functions comes from the catalogue: a function in public that this
module does not attack fails ``test_every_function_is_attacked``. Each attack
is refused with its exact SQLSTATE (42501 no EXECUTE or another user named,
P0002 another user's job, which reads exactly like a missing one), or, where a
user may call the function, it answers with the caller's own rows only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from tests.attack._arena import ALLOWED, Arena, Check, Party, sql_attack
from tests.sql.helpers import Conn
from tests.sql.test_security import B_AGAINST_A, CALLS, INTERNAL_FUNCTIONS, SERVICE_FUNCTIONS

KIND = "sql functions"

Rows = list[dict[str, Any]]


def own_rows(column: str) -> Callable[[Party], Check]:
    """Every row's job (``column`` is its id) belongs to the caller (read as the admin)."""

    def for_caller(me: Party) -> Check:
        def check(conn: Conn, rows: Rows) -> str | None:
            ids = [r[column] for r in rows]
            foreign = conn.execute(
                "select id from public.job_queue where id = any(%s) and user_id <> %s",
                (ids, me.user),
            ).fetchall()
            missing = conn.execute(
                "select count(*) from unnest(%s::uuid[]) i"
                " where not exists (select 1 from public.job_queue q where q.id = i)",
                (ids,),
            ).fetchone()
            if foreign:
                return f"rows of other users' jobs: {[str(r[0]) for r in foreign]}"
            if missing and missing[0]:
                return f"{missing[0]} rows of jobs that do not exist"
            return None

        return check

    return for_caller


def empty(me: Party) -> Check:
    def check(conn: Conn, rows: Rows) -> str | None:
        return f"expected no rows, got {rows!r:.300}" if rows else None

    return check


def same_as_service(function: str) -> Callable[[Party], Check]:
    """Aggregates: what the caller gets is what service_role gets for the caller alone."""

    def for_caller(me: Party) -> Check:
        def check(conn: Conn, rows: Rows) -> str | None:
            cur = conn.execute(f"select * from public.{function}(%s)", (me.user,))
            names = [d.name for d in cur.description or ()]
            expected = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            if rows != expected:
                return f"{function} counted other users' jobs: {rows!r:.300} != {expected!r:.300}"
            return None

        return check

    return for_caller


# (query, what a user gets, check of an allowed answer, may the caller's own state change)
Attack = tuple[str, str | None, Callable[[Party], Check] | None, bool]


def refused(query: str, code: str = "42501") -> Attack:
    return (query, code, None, False)


def allowed(
    query: str, check: Callable[[Party], Check] | None = None, *, changes_own: bool = False
) -> Attack:
    return (query, ALLOWED, check, changes_own)


# %(v)s, %(v_pending)s, ...: the victim's; %(me)s, %(me_pending)s, ...: the caller's own.
ATTACKS: dict[str, list[Attack]] = {
    # -- what an authenticated user may EXECUTE ----------------------------------------
    "create_job": [
        refused("select create_job(%(v)s, 'x')"),
        refused("select create_job(%(v)s, %(v_type)s, %(v_params)s::jsonb)"),
    ],
    "create_jobs": [
        refused('select * from create_jobs(%(v)s, \'[{"job_type": "x"}]\')'),
        refused(
            "select * from create_jobs(null, jsonb_build_array("
            "jsonb_build_object('user_id', %(v)s::text, 'job_type', 'x')))"
        ),
        refused(
            "select * from create_jobs(%(me)s, jsonb_build_array("
            "jsonb_build_object('user_id', %(v)s::text, 'job_type', 'x')))"
        ),
    ],
    "find_or_create_job": [
        refused("select * from find_or_create_job(%(v)s, %(v_type)s, %(v_params)s::jsonb)"),
        # the victim's dedup key: a new job of the caller's, never the victim's
        allowed(
            "select * from find_or_create_job(null, %(v_type)s, %(v_params)s::jsonb)",
            own_rows("job_id"),
            changes_own=True,
        ),
        allowed(
            "select * from find_or_create_job(null, %(v_pending_type)s,"
            " %(v_pending_params)s::jsonb)",
            own_rows("job_id"),
            changes_own=True,
        ),
    ],
    "get_cached_job_result": [
        refused("select * from get_cached_job_result(%(v)s, %(v_type)s, %(v_params)s::jsonb)"),
        allowed(
            "select * from get_cached_job_result(null, %(v_type)s, %(v_params)s::jsonb)", empty
        ),
        allowed(
            "select * from get_cached_job_result(null, %(v_type)s, %(v_params)s::jsonb,"
            " interval '100 years')",
            empty,
        ),
    ],
    "cancel_job": [
        refused("select cancel_job(%(v_pending)s)", "P0002"),
        refused("select cancel_job(%(v_processing)s)", "P0002"),
        refused("select cancel_job(%(v_completed)s)", "P0002"),
        refused("select cancel_job(%(v_pending)s, %(v)s)"),
        refused("select cancel_job(%(v_pending)s, %(me)s)", "P0002"),
    ],
    "retry_job": [
        refused("select retry_job(%(v_failed)s)", "P0002"),
        refused("select retry_job(%(v_completed)s)", "P0002"),
    ],
    "get_user_jobs": [
        refused("select * from get_user_jobs(%(v)s)"),
        refused("select * from get_user_jobs(%(v)s, 'completed')"),
        allowed("select * from get_user_jobs(null)", own_rows("id")),
        allowed("select * from get_user_jobs(%(me)s, p_with_total => true)", own_rows("id")),
        allowed("select * from get_user_jobs(null, p_job_type => %(v_type)s)", own_rows("id")),
        allowed(
            "select * from get_user_jobs(null, p_params_contains => %(v_params)s::jsonb)",
            own_rows("id"),
        ),
        allowed(
            "select * from get_user_jobs(null, p_result_contains => %(v_result)s::jsonb)",
            own_rows("id"),
        ),
        allowed(
            "select * from get_user_jobs(null, p_cursor_created_at => now() + interval '1 day',"
            " p_cursor_id => %(v_completed)s)",
            own_rows("id"),
        ),
        refused("select * from get_user_jobs(null, p_order_by => 'user_id')", "22023"),
    ],
    "get_job_logs": [
        refused("select * from get_job_logs(%(v_pending)s)", "P0002"),
        refused("select * from get_job_logs(%(v_processing)s)", "P0002"),
        refused("select * from get_job_logs(%(v_completed)s, %(me)s)", "P0002"),
        refused("select * from get_job_logs(%(v_pending)s, %(v)s)"),
        refused("select * from get_job_logs(null, %(v)s)"),
        allowed("select * from get_job_logs(null)", own_rows("job_id")),
        allowed("select * from get_job_logs(null, p_search => %(v_word)s)", own_rows("job_id")),
        allowed(
            'select * from get_job_logs(null, p_metadata_contains => \'{"owner": "bsecret"}\')',
            own_rows("job_id"),
        ),
    ],
    "get_job_queue_stats": [
        refused("select * from get_job_queue_stats(%(v)s)"),
        allowed("select * from get_job_queue_stats(null)", same_as_service("get_job_queue_stats")),
        allowed(
            "select * from get_job_queue_stats(%(me)s)", same_as_service("get_job_queue_stats")
        ),
    ],
    "get_job_throughput": [
        refused("select * from get_job_throughput(%(v)s)"),
        allowed("select * from get_job_throughput(null)", same_as_service("get_job_throughput")),
    ],
    # -- service_role only: workers and maintenance ----------------------------------
    "update_job_progress": [
        refused("select update_job_progress(%(v_processing)s, 50)"),
        refused("select update_job_progress(%(me_processing)s, 99, 'forged', 'w1')"),
    ],
    "start_job": [
        refused("select * from start_job(%(v_pending)s, 'evil')"),
        refused("select * from start_job(%(me_pending)s, 'evil')"),
    ],
    "complete_job": [
        refused("select complete_job(%(v_processing)s, '{\"forged\": true}')"),
        refused("select complete_job(%(me_processing)s, '{\"forged\": true}', 'w1')"),
    ],
    "complete_jobs": [
        refused(
            "select * from complete_jobs('w1', array[%(v_processing)s]::uuid[],"
            " array['{}']::jsonb[])"
        ),
        refused(
            "select * from complete_jobs('w1', array[%(me_processing)s]::uuid[],"
            " array['{}']::jsonb[])"
        ),
    ],
    "fail_job": [
        refused("select fail_job(%(v_processing)s, 'forged')"),
        refused("select fail_job(%(me_processing)s, 'forged', 'E', false, 'w1')"),
    ],
    "add_job_log": [
        refused("select add_job_log(%(v_pending)s, 'info', 'forged')"),
        refused("select add_job_log(%(me_pending)s, 'error', 'forged')"),
    ],
    "retry_failed_jobs": [refused("select retry_failed_jobs()")],
    "cleanup_old_jobs": [refused("select cleanup_old_jobs(interval '0')")],
    "expire_stale_jobs": [refused("select expire_stale_jobs()")],
    "detect_stuck_jobs": [refused("select detect_stuck_jobs(interval '1 microsecond')")],
    "claim_jobs": [
        refused("select * from claim_jobs('evil', 10)"),
        refused("select * from claim_jobs('evil', 10, array[%(v_pending_type)s])"),
    ],
    "heartbeat_jobs": [
        refused("select * from heartbeat_jobs('w1', array[%(v_processing)s]::uuid[])"),
    ],
    "release_jobs": [
        refused("select release_jobs('w1')"),
        refused("select release_jobs('w1', array[%(v_processing)s]::uuid[])"),
    ],
    "create_job_log_partitions": [refused("select * from create_job_log_partitions(6)")],
    "drop_old_job_log_partitions": [
        refused("select * from drop_old_job_log_partitions(interval '0')")
    ],
    "get_queue_depth": [refused("select * from get_queue_depth()")],
    # -- internal helpers: no API role may EXECUTE them -------------------------------
    "jobq_caller_is_service": [refused("select public.jobq_caller_is_service()")],
    "jobq_acting_user": [
        refused("select public.jobq_acting_user(%(v)s)"),
        refused("select public.jobq_acting_user(%(v)s, true)"),
    ],
    "jobq_lock_job": [refused("select public.jobq_lock_job(%(v_pending)s)")],
    "jobq_check_holder": [
        refused("select public.jobq_check_holder(null::public.job_queue, 'w1')"),
    ],
    "jobq_check_json_size": [refused("select public.jobq_check_json_size('{}', 1, 'x')")],
    "jobq_check_rate_limit": [refused("select public.jobq_check_rate_limit(%(v)s, 1000)")],
    "jobq_lock_user": [refused("select public.jobq_lock_user(%(v)s)")],
    "jobq_new_job": [
        refused("select public.jobq_new_job(%(v)s, 'x', '{}', 0, 3, null, null)"),
    ],
    "jobq_schema_report": [refused("select public.jobq_schema_report()")],
    "job_queue_before_update": [refused("select public.job_queue_before_update()")],
    "notify_job_status_change": [refused("select public.notify_job_status_change()")],
}

# Who attacks whom: anon (against both), A against B, B against A.
PAIRS = [("anon", "B"), ("anon", "A"), ("A", "B"), ("B", "A")]


def our_functions(conn: Conn) -> set[str]:
    """Every function in public that is not an extension's: the migration's."""
    rows = conn.execute(
        """
        select p.proname from pg_catalog.pg_proc p
         where p.pronamespace = 'public'::regnamespace
           and not exists (select 1 from pg_catalog.pg_depend d
                            where d.classid = 'pg_catalog.pg_proc'::regclass
                              and d.objid = p.oid and d.deptype = 'e')
        """
    ).fetchall()
    return {r[0] for r in rows}


def test_every_function_is_attacked(conn: Conn) -> None:
    ours = our_functions(conn)
    overloaded = conn.execute(
        "select proname from pg_proc where pronamespace = 'public'::regnamespace"
        " group by proname having count(*) > 1"
    ).fetchall()
    assert not overloaded, f"overloads the attacks (by name) would not tell apart: {overloaded}"
    missing = sorted(ours - set(ATTACKS))
    assert not missing, f"functions the attack suite does not attack: {missing}"
    gone = sorted(set(ATTACKS) - ours)
    assert not gone, f"attacks on functions that no longer exist: {gone}"
    # the same catalogue as tests/sql/test_security.py's matrix
    assert ours == set(CALLS) | INTERNAL_FUNCTIONS


def _params(arena: Arena, who: str, victim: Party) -> dict[str, Any]:
    me = victim if who == "anon" else arena.party(who)
    params = victim.params("v") | me.params("me")
    if who == "anon":
        params["me"] = None
    return params


@pytest.mark.parametrize(("who", "victim"), PAIRS, ids=[f"{w}-vs-{v}" for w, v in PAIRS])
def test_every_function_refuses_or_answers_only_for_the_caller(
    conn: Conn, arena: Arena, who: str, victim: str
) -> None:
    target = arena.party(victim)
    me = arena.party(who) if who != "anon" else target
    params = _params(arena, who, target)
    for function, attacks in ATTACKS.items():
        for query, user_expect, check, changes_own in attacks:
            # anon has EXECUTE on nothing: every call is refused for the privilege
            expect = "42501" if who == "anon" else user_expect
            sql_attack(
                conn,
                arena,
                kind=KIND,
                who=who,
                victim=target,
                target=f"{function}: {query}",
                query=query,
                params=params,
                expect=expect,
                check=None if expect is not None or check is None else check(me),
                state_may_change=changes_own,
            )


@pytest.mark.parametrize("who", ["anon", "B"])
def test_the_security_matrix_calls_against_a(conn: Conn, arena: Arena, who: str) -> None:
    """tests/sql/test_security.py's own per-function calls, recorded as attacks on A."""
    params = arena.world.params()
    calls: list[tuple[str, str, str]] = [(f, q, "42501") for f, q in CALLS.items()]
    if who == "B":
        calls = [(f, CALLS[f], "42501") for f in sorted(SERVICE_FUNCTIONS)] + list(B_AGAINST_A)
    for function, query, code in calls:
        sql_attack(
            conn,
            arena,
            kind=KIND,
            who=who,
            victim=arena.a,
            target=f"{function} (security matrix): {query}",
            query=query,
            params=params,
            expect=code,
        )


def test_owner_controls_are_not_refused(conn: Conn, arena: Arena) -> None:
    """The refusals above are about the other user: the owner's same calls work."""
    for who in ("A", "B"):
        me = arena.party(who)
        with conn.transaction(force_rollback=True):
            conn.execute(
                "select set_config('role', 'authenticated', true),"
                " set_config('request.jwt.claims', %s, true)",
                (json.dumps({"sub": str(me.user), "role": "authenticated"}),),
            )
            jobs = {r[0] for r in conn.execute("select id from get_user_jobs(null)")}
            assert jobs == set(me.jobs)
            logs = {r[0] for r in conn.execute("select id from get_job_logs(null)")}
            assert logs == set(me.logs)
            assert conn.execute(
                "select job_id from get_cached_job_result(null, %s, %s::jsonb)",
                (me.completed_type, json.dumps(me.completed_params)),
            ).fetchall() == [(me.completed,)]
            assert conn.execute("select cancel_job(%s)", (me.pending,)).fetchone() == ("cancelled",)
