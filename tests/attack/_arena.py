"""The arena: users A and B with jobs in every state and logs, and the SQL attack runner.

Built on tests/sql/test_security.py's ``world`` (A's jobs in every state, B's
pending job with A's type and params) plus B's own processing, completed and
failed jobs with secret-looking types, params, results and log lines, so that
B is a victim worth attacking (and A too, symmetrically).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from tests.attack._recorder import RECORDER, Attempt, Leak, Unexpected, markers_in
from tests.sql.helpers import Conn
from tests.sql.test_security import World, snapshot

from jobq import db

MARK = "bsecret"  # in every one of B's job types, params, results and log lines


@dataclass(frozen=True)
class Party:
    """One user's jobs, as seen by an attacker aiming at them."""

    name: str
    user: uuid.UUID
    pending: uuid.UUID
    processing: uuid.UUID
    completed: uuid.UUID
    failed: uuid.UUID
    completed_type: str
    completed_params: dict[str, Any]
    completed_result: dict[str, Any]
    pending_type: str
    pending_params: dict[str, Any]
    jobs: frozenset[uuid.UUID]
    logs: frozenset[int]
    log_word: str  # a word of one of the party's log lines
    secrets: frozenset[str] = frozenset()

    @property
    def markers(self) -> frozenset[str]:
        """Strings that may appear in an answer only if the party's data leaked."""
        return frozenset({str(self.user), *(str(j) for j in self.jobs), *self.secrets})

    def params(self, prefix: str) -> dict[str, Any]:
        """Query parameters: ``{prefix}`` the user, ``{prefix}_pending`` a job, ..."""
        return {
            prefix: self.user,
            f"{prefix}_pending": self.pending,
            f"{prefix}_processing": self.processing,
            f"{prefix}_completed": self.completed,
            f"{prefix}_failed": self.failed,
            f"{prefix}_type": self.completed_type,
            f"{prefix}_params": json.dumps(self.completed_params),
            f"{prefix}_result": json.dumps(self.completed_result),
            f"{prefix}_pending_type": self.pending_type,
            f"{prefix}_pending_params": json.dumps(self.pending_params),
            f"{prefix}_word": self.log_word,
        }


@dataclass(frozen=True)
class Arena:
    world: World
    a: Party
    b: Party

    def party(self, name: str) -> Party:
        return {"A": self.a, "B": self.b}[name]

    def other(self, name: str) -> Party:
        return {"A": self.b, "B": self.a}[name]


def build_arena(conn: Conn, w: World) -> Arena:
    """B's jobs in every state (made by the admin) next to the ``world``'s."""

    def one(query: str, params: Any) -> Any:
        row = conn.execute(query, params).fetchone()
        assert row is not None
        return row[0]

    def job(job_type: str, params: dict[str, Any], max_retries: int = 3) -> uuid.UUID:
        value = one(
            "select create_job(%s, %s, %s::jsonb, p_max_retries => %s)",
            (w.b, job_type, json.dumps(params), max_retries),
        )
        assert isinstance(value, uuid.UUID)
        return value

    b_result = {"secret": f"{MARK}-result", "ok": True}
    b_params = {"owner": MARK, "n": 3, "key with 'quote": "value; drop table job_queue"}
    b_processing = job(f"{MARK}.render", {"owner": MARK, "n": 2})
    b_completed = job(f"{MARK}.mail", b_params)
    b_failed = job(f"{MARK}.import", {"owner": MARK, "n": 4}, max_retries=0)
    for j in (b_processing, b_completed, b_failed):
        conn.execute("select * from start_job(%s, 'w1')", (j,))
    conn.execute("select complete_job(%s, %s::jsonb, 'w1')", (b_completed, json.dumps(b_result)))
    conn.execute("select fail_job(%s, %s, 'E1', false, 'w1')", (b_failed, f"{MARK} boom"))
    b_logs = set(w.b_logs)
    for j, level, message in (
        (b_processing, "error", f"{MARK} processing error zebra"),
        (b_completed, "info", f"{MARK} done zebra"),
        (b_failed, "warning", f"{MARK} failed zebra"),
    ):
        b_logs.add(
            int(
                one(
                    "select add_job_log(%s, %s, %s, %s::jsonb)",
                    (j, level, message, json.dumps({"owner": MARK})),
                )
            )
        )
    a = Party(
        name="A",
        user=w.a,
        pending=w.a_pending,
        processing=w.a_processing,
        completed=w.a_completed,
        failed=w.a_failed,
        completed_type="send_email",
        completed_params={"n": 3},
        completed_result={"ok": True},
        pending_type="sync_youtube",
        pending_params={"n": 1},
        jobs=frozenset(w.a_jobs),
        logs=frozenset(w.a_logs),
        log_word="processing",
    )
    b = Party(
        name="B",
        user=w.b,
        pending=w.b_pending,
        processing=b_processing,
        completed=b_completed,
        failed=b_failed,
        completed_type=f"{MARK}.mail",
        completed_params=b_params,
        completed_result=b_result,
        pending_type="sync_youtube",
        pending_params={"n": 1},
        jobs=frozenset({w.b_pending, b_processing, b_completed, b_failed}),
        logs=frozenset(b_logs),
        log_word="zebra",
        secrets=frozenset({MARK}),
    )
    return Arena(w, a, b)


def party_snapshot(conn: Conn, party: Party) -> tuple[Any, ...]:
    """The party's jobs and log lines, read as the admin."""
    row = conn.execute(
        """
        select (select coalesce(string_agg(q::text, '|' order by q.id), '')
                  from public.job_queue q where q.user_id = %(u)s),
               (select coalesce(string_agg(l::text, '|' order by l.id), '')
                  from public.job_log l join public.job_queue q on q.id = l.job_id
                 where q.user_id = %(u)s)
        """,
        {"u": party.user},
    ).fetchone()
    assert row is not None
    return tuple(row)


# ---------------------------------------------------------------------------
# Acting as anon, A or B
# ---------------------------------------------------------------------------
ALLOWED = None  # the call may succeed: it must show and change nothing of the victim's

Check = Callable[[Conn, list[dict[str, Any]]], str | None]  # a leak's description, or None


def actor(arena: Arena, who: str) -> tuple[str, uuid.UUID | None]:
    if who == "anon":
        return "anon", None
    return "authenticated", arena.party(who).user


def sql_attack(
    conn: Conn,
    arena: Arena,
    *,
    kind: str,
    who: str,
    victim: Party,
    target: str,
    query: Any,
    params: Mapping[str, Any] | None = None,
    expect: str | None,
    check: Check | None = None,
    state_may_change: bool = False,
) -> Attempt:
    """Run ``query`` as ``who`` (anon, A, B) against ``victim`` and record the verdict.

    ``expect`` is the exact SQLSTATE of the refusal, or ALLOWED: then the rows
    may hold none of the victim's markers and ``check`` (if any) must pass.
    Either way the victim's jobs and logs must be unchanged; a refused call
    must change nothing at all (and, unless ``state_may_change``, so must an
    allowed one). Everything happens in one transaction that is rolled back;
    the admin reads the state inside it after the attack, so even a change
    the attacker could not commit would be seen.
    """
    role, user = actor(arena, who)

    def run() -> str:
        with conn.transaction(force_rollback=True):
            before_all, before_victim = snapshot(conn), party_snapshot(conn, victim)
            rows: list[dict[str, Any]] = []
            error: psycopg.Error | None = None
            db.act_as(conn, role, user)
            try:
                with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    cur.execute(query, params)
                    rows = cur.fetchall() if cur.description else []
            except psycopg.Error as exc:
                error = exc
            conn.execute("reset role")
            after_all, after_victim = snapshot(conn), party_snapshot(conn, victim)
            leaked = markers_in(rows, victim.markers)
            if leaked:
                raise Leak(f"returned {victim.name}'s data {leaked}: {rows!r:.300}")
            if after_victim != before_victim:
                raise Leak(f"changed {victim.name}'s jobs or logs")
            if expect is not None:
                if error is None:
                    raise Leak(f"succeeded where it must be refused with {expect}: {rows!r:.200}")
                if error.sqlstate != expect:
                    raise Unexpected(f"expected SQLSTATE {expect}, got {error.sqlstate}: {error}")
                if after_all != before_all:
                    raise Leak("refused, but changed the database")
                return f"refused {expect}"
            if error is not None:
                raise Unexpected(f"expected success, got {error.sqlstate}: {error}")
            if not state_may_change and after_all != before_all:
                raise Leak("changed the database")
            if check is not None:
                problem = check(conn, rows)
                if problem:
                    raise Leak(problem)
            return f"allowed, {len(rows)} rows, none of {victim.name}'s"

    return RECORDER.attempt(kind, who, target, run)
