"""Role escalation from a login that is only a member of authenticated (or of anon).

That is what ``authenticator`` is on Supabase: it may become the API roles and
nothing more. Every escalation to service_role, postgres or a predefined role
is refused with 42501; forged claims (a 'role' claim of service_role) give no
service powers; and superuser-only escape hatches (files, programs, signals,
session_replication_role, row_security off) stay closed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from tests.attack._arena import Arena, party_snapshot
from tests.attack._recorder import RECORDER, Leak, Unexpected, markers_in
from tests.sql.helpers import Conn
from tests.sql.test_security import snapshot

KIND = "role escalation"

# (statement, SQLSTATE) tried on a plain session of the login
ESCALATIONS: list[tuple[str, str]] = [
    ("set role service_role", "42501"),
    ("set role postgres", "42501"),
    ("set role pg_read_all_data", "42501"),
    ("set role pg_write_all_data", "42501"),
    ("set session authorization postgres", "42501"),
    ("set session authorization service_role", "42501"),
    ("select set_config('role', 'service_role', false)", "42501"),
    ("select set_config('role', 'postgres', false)", "42501"),
    ("select set_config('session_authorization', 'postgres', false)", "42501"),
    ("grant service_role to current_user", "42501"),
    ("grant postgres to current_user", "42501"),
    ("alter role current_user superuser", "42501"),
    ("alter role current_user bypassrls", "42501"),
    ("alter role authenticated bypassrls", "42501"),
    ("create role jobq_evil superuser login", "42501"),
    ("select set_config('session_replication_role', 'replica', false)", "42501"),
    ("select pg_read_file('postgresql.conf')", "42501"),
    ("select lo_import('/etc/passwd')", "42501"),
    ("copy (select 1) to program 'true'", "42501"),
    ("select pg_terminate_backend(%(admin_pid)s)", "42501"),
    ("select pg_cancel_backend(%(admin_pid)s)", "42501"),
]
# (statement, SQLSTATE) inside a transaction acting as the role with claims of the caller
ACTING: list[tuple[str, str]] = [
    ("set local role service_role", "42501"),
    ("set local role postgres", "42501"),
    ("select set_config('role', 'service_role', true)", "42501"),
    ("set local session authorization postgres", "42501"),
    ("reset role; set local role service_role", "42501"),
]


def _claims(sub: Any, role: str = "authenticated") -> str:
    return json.dumps({"sub": str(sub), "role": role, "aud": "authenticated"})


def attack(
    conn: Conn,
    forge: Conn,
    arena: Arena,
    *,
    who: str,
    target: str,
    run: Callable[[], Any],
    expect: str | None,
    check: Callable[[Any], str | None] | None = None,
) -> None:
    """Run ``run`` on the forged login; the refusal must be exact, nothing may change."""
    victim = arena.b if who != "B" else arena.a
    role_before = forge.execute("select current_user, current_setting('role')").fetchone()

    def verdict() -> str:
        before, before_victim = snapshot(conn), party_snapshot(conn, victim)
        error: psycopg.Error | None = None
        result: Any = None
        try:
            result = run()
        except psycopg.Error as exc:
            error = exc
        if forge.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            forge.rollback()
        role_after = forge.execute("select current_user, current_setting('role')").fetchone()
        if markers_in(result, victim.markers):
            raise Leak(f"returned {victim.name}'s data: {result!r:.200}")
        if snapshot(conn) != before or party_snapshot(conn, victim) != before_victim:
            raise Leak("changed the database")
        if role_after != role_before:
            raise Leak(f"the session became {role_after} (was {role_before})")
        if expect is None:
            if error is not None:
                raise Unexpected(f"expected success, got {error.sqlstate}: {error}")
            problem = check(result) if check else None
            if problem:
                raise Leak(problem)
            return "allowed, nothing gained"
        if error is None:
            raise Leak(f"succeeded where it must be refused with {expect}: {result!r:.200}")
        if error.sqlstate != expect:
            raise Unexpected(f"expected SQLSTATE {expect}, got {error.sqlstate}: {error}")
        return f"refused {expect}"

    RECORDER.attempt(KIND, who, target, verdict)


def _execute(forge: Conn, query: str, params: Any = None) -> Callable[[], Any]:
    def run() -> Any:
        cur = forge.execute(query, params)
        return cur.fetchall() if cur.description else None

    return run


def _in_transaction(forge: Conn, setup: str, params: Any, query: str) -> Callable[[], Any]:
    def run() -> Any:
        with forge.transaction():
            forge.execute(setup, params)
            cur = forge.execute(query)
            return cur.fetchall() if cur.description else None

    return run


ACT_AS = "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)"


@pytest.mark.parametrize("role", ["authenticated", "anon"])
def test_no_escalation_from_a_login_in_an_api_role(
    conn: Conn, arena: Arena, login_in: Callable[[str], Conn], role: str
) -> None:
    forge = login_in(role)
    admin_pid = conn.info.backend_pid
    who = "A" if role == "authenticated" else "anon"
    for query, code in ESCALATIONS:
        attack(
            conn,
            forge,
            arena,
            who=who,
            target=f"login in {role}: {query}",
            run=_execute(forge, query, {"admin_pid": admin_pid} if "%(" in query else None),
            expect=code,
        )
    # acting as the role the PostgREST way, with the claims of A (or none: anon)
    claims = _claims(arena.a.user) if role == "authenticated" else json.dumps({"role": "anon"})
    for query, code in ACTING:
        attack(
            conn,
            forge,
            arena,
            who=who,
            target=f"acting as {role}: {query}",
            run=_in_transaction(forge, ACT_AS, (role, claims), query),
            expect=code,
        )


def test_the_member_login_of_authenticated_fixture_cannot_escalate(
    conn: Conn, arena: Arena, member_of_authenticated: Conn
) -> None:
    """tests/sql/test_security.py's login (granted authenticated): the same refusals."""
    for query, code in ESCALATIONS[:10]:
        attack(
            conn,
            member_of_authenticated,
            arena,
            who="B",
            target=f"member_of_authenticated: {query}",
            run=_execute(
                member_of_authenticated,
                query,
                {"admin_pid": conn.info.backend_pid} if "%(" in query else None,
            ),
            expect=code,
        )


def test_forged_service_claims_give_no_service_powers(
    conn: Conn, arena: Arena, login_in: Callable[[str], Conn]
) -> None:
    forge = login_in("authenticated")
    a, b = arena.a, arena.b
    service_claims = _claims(a.user, role="service_role")
    setups = [
        ("role claim service_role", ACT_AS, ("authenticated", service_claims)),
        (
            "legacy request.jwt.claim.role",
            ACT_AS + ", set_config('request.jwt.claim.role', 'service_role', true)",
            ("authenticated", _claims(a.user)),
        ),
        (
            "claims of service_role, no sub",
            ACT_AS,
            ("authenticated", json.dumps({"role": "service_role"})),
        ),
    ]
    victim_calls: list[tuple[str, str | None]] = [
        (f"select * from get_user_jobs('{b.user}')", "42501"),
        (f"select * from get_job_logs('{b.pending}')", "P0002"),
        (f"select cancel_job('{b.pending}')", "P0002"),
        (f"select * from get_cached_job_result('{b.user}', 'x', '{{}}')", "42501"),
        ("select * from claim_jobs('evil', 10)", "42501"),
        (f"select complete_job('{b.processing}', '{{}}')", "42501"),
        ("select * from get_queue_depth()", "42501"),
        ("select * from public.job_queue_config", "42501"),
        (f"select * from public.job_queue where user_id = '{b.user}'", None),
        ("select * from public.job_log", None),
    ]
    for label, setup, params in setups:
        for query, code in victim_calls:
            if "no sub" in label and code == "P0002":
                code = "42501"  # no user at all: "not authenticated", before any lookup
            attack(
                conn,
                forge,
                arena,
                who="A",
                target=f"{label}: {query}",
                run=_in_transaction(forge, setup, params, query),
                expect=code,
            )


def test_row_security_off_is_an_error_not_a_bypass(
    conn: Conn, arena: Arena, login_in: Callable[[str], Conn]
) -> None:
    forge = login_in("authenticated")
    for query in (
        "select * from public.job_queue",
        "select * from public.job_log",
    ):
        attack(
            conn,
            forge,
            arena,
            who="A",
            target=f"row_security = off: {query}",
            run=_in_transaction(
                forge,
                ACT_AS + ", set_config('row_security', 'off', true)",
                ("authenticated", _claims(arena.a.user)),
                query,
            ),
            expect="42501",
        )
