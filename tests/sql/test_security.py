"""The security matrix: who may see or do what, directly and through every function.

Actors: anon (no claims), user A (the owner of the jobs under test), user B
(another user), service_role, each acting the PostgREST way (role + claims for
one transaction). The admin connection only sets up state and takes snapshots.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from jobq import migrate

from .helpers import (
    ALL_API_FUNCTIONS,
    SERVICE_FUNCTIONS,
    USER_FUNCTIONS,
    Conn,
    acting,
    expect_error,
    scalar,
    sqlstate,
)

# Functions of the migration that no API role may call.
INTERNAL_FUNCTIONS = {
    "jobq_caller_is_service",
    "jobq_acting_user",
    "jobq_lock_job",
    "jobq_check_holder",
    "jobq_check_json_size",
    "jobq_check_rate_limit",
    "jobq_lock_user",
    "jobq_new_job",
    "jobq_schema_report",
    "job_queue_before_update",
    "notify_job_status_change",
}
API_ROLES = ("anon", "authenticated", "service_role")


@dataclass(frozen=True)
class World:
    a: uuid.UUID
    b: uuid.UUID
    a_pending: uuid.UUID
    a_processing: uuid.UUID  # held by worker w1
    a_completed: uuid.UUID  # result {"ok": true}
    a_failed: uuid.UUID  # final failure (max_retries 0)
    b_pending: uuid.UUID
    a_logs: frozenset[int]
    b_logs: frozenset[int]

    @property
    def a_jobs(self) -> set[uuid.UUID]:
        return {self.a_pending, self.a_processing, self.a_completed, self.a_failed}

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _one(conn: Conn, query: str, params: Any = None) -> Any:
    return scalar(conn, query, params)


@pytest.fixture
def world(conn: Conn) -> World:
    """A's jobs in every interesting state, one job of B, logs of both (made by the admin)."""
    a, b = uuid.uuid4(), uuid.uuid4()

    def job(user: uuid.UUID, job_type: str, n: int, max_retries: int = 3) -> uuid.UUID:
        value = _one(
            conn,
            "select create_job(%s, %s, %s::jsonb, p_max_retries => %s)",
            (user, job_type, json.dumps({"n": n}), max_retries),
        )
        assert isinstance(value, uuid.UUID)
        return value

    a_pending = job(a, "sync_youtube", 1)
    a_processing = job(a, "render_video", 2)
    a_completed = job(a, "send_email", 3)
    a_failed = job(a, "import_csv", 4, max_retries=0)
    b_pending = job(b, "sync_youtube", 1)  # same type and params as A's pending job
    for j in (a_processing, a_completed, a_failed):
        conn.execute("select * from start_job(%s, 'w1')", (j,))
    conn.execute("select complete_job(%s, '{\"ok\": true}', 'w1')", (a_completed,))
    conn.execute("select fail_job(%s, 'boom', 'E1', false, 'w1')", (a_failed,))

    def log(j: uuid.UUID, level: str, message: str, metadata: dict[str, Any]) -> int:
        return int(
            _one(
                conn,
                "select add_job_log(%s, %s, %s, %s::jsonb)",
                (j, level, message, json.dumps(metadata)),
            )
        )

    a_logs = frozenset(
        {
            log(a_pending, "info", "a pending line", {"owner": "a"}),
            log(a_processing, "error", "a processing error", {"owner": "a"}),
            log(a_completed, "info", "a done", {"owner": "a"}),
        }
    )
    b_logs = frozenset({log(b_pending, "info", "b pending line", {"owner": "b"})})
    return World(a, b, a_pending, a_processing, a_completed, a_failed, b_pending, a_logs, b_logs)


def snapshot(conn: Conn) -> tuple[Any, ...]:
    """Everything an attack could change, read as the admin."""
    return (
        conn.execute("select q::text from public.job_queue q order by q.id").fetchall(),
        conn.execute("select l::text from public.job_log l order by l.id").fetchall(),
        conn.execute("select c::text from public.job_queue_config c").fetchall(),
        conn.execute(
            "select c.relname from pg_catalog.pg_class c where c.relnamespace ="
            " 'public'::regnamespace order by 1"
        ).fetchall(),
    )


def status_of(conn: Conn, job: uuid.UUID) -> str:
    return str(_one(conn, "select status from public.job_queue where id = %s", (job,)))


ACTORS = ["anon", "A", "B", "service"]


@dataclass(frozen=True)
class Actor:
    role: str
    user: uuid.UUID | None


def actor(w: World, name: str) -> Actor:
    return {
        "anon": Actor("anon", None),
        "A": Actor("authenticated", w.a),
        "B": Actor("authenticated", w.b),
        "service": Actor("service_role", None),
    }[name]


def as_(conn: Conn, w: World, name: str) -> Any:
    a = actor(w, name)
    return acting(conn, a.role, a.user)


# ---------------------------------------------------------------------------
# job_queue: direct access under RLS
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("who", "expected"),
    [("A", "a_jobs"), ("B", "b_jobs"), ("service", "all")],
)
def test_job_queue_select(conn: Conn, world: World, who: str, expected: str) -> None:
    with as_(conn, world, who):
        seen = {r[0] for r in conn.execute("select id from public.job_queue").fetchall()}
    want = {
        "a_jobs": world.a_jobs,
        "b_jobs": {world.b_pending},
        "all": world.a_jobs | {world.b_pending},
    }[expected]
    assert seen == want


def test_job_queue_select_by_id_of_another_user_finds_nothing(conn: Conn, world: World) -> None:
    with as_(conn, world, "B"):
        assert (
            conn.execute(
                "select * from public.job_queue where id = %s", (world.a_pending,)
            ).fetchall()
            == []
        )


@pytest.mark.parametrize(
    "query",
    [
        "select * from public.job_queue",
        "insert into public.job_queue (user_id, job_type) values (gen_random_uuid(), 'x')",
        "update public.job_queue set status = 'cancelled'",
        "delete from public.job_queue",
        "select * from public.job_log",
        "insert into public.job_log (job_id, message) values (gen_random_uuid(), 'x')",
        "update public.job_log set message = 'x'",
        "delete from public.job_log",
        "select * from public.job_queue_config",
        "update public.job_queue_config set max_active_jobs_per_user = 1000",
    ],
)
def test_anon_has_no_access_at_all(conn: Conn, world: World, query: str) -> None:
    before = snapshot(conn)
    with sqlstate("42501"), as_(conn, world, "anon"):
        conn.execute(query)
    assert snapshot(conn) == before


@pytest.mark.parametrize("who", ["A", "B"])
def test_users_cannot_insert_jobs_directly(conn: Conn, world: World, who: str) -> None:
    # job_queue_insert_own exists, but authenticated has no INSERT privilege:
    # jobs are created through create_job and its rate limit.
    me = actor(world, who).user
    before = snapshot(conn)
    with sqlstate("42501"), as_(conn, world, who):
        conn.execute(
            "insert into public.job_queue (user_id, job_type) values (%s, 'sync_youtube')", (me,)
        )
    assert snapshot(conn) == before


def test_owner_may_cancel_own_job_directly(conn: Conn, world: World) -> None:
    with as_(conn, world, "A"):
        cur = conn.execute(
            "update public.job_queue set status = 'cancelled' where id = %s", (world.a_pending,)
        )
        assert cur.rowcount == 1
    assert status_of(conn, world.a_pending) == "cancelled"
    assert _one(
        conn, "select completed_at is not null from job_queue where id = %s", (world.a_pending,)
    )
    # a running job too: the worker learns it at its next heartbeat
    with as_(conn, world, "A"):
        conn.execute(
            "update public.job_queue set status = 'cancelled' where id = %s", (world.a_processing,)
        )
    assert status_of(conn, world.a_processing) == "cancelled"


@pytest.mark.parametrize(
    ("assignment", "job"),
    [
        # Transitions the state machine allows, so that the policy is what refuses
        # them: its WITH CHECK admits status = 'cancelled' only.
        ("status = 'completed'", "a_processing"),
        ("status = 'failed'", "a_processing"),
        ("status = 'expired'", "a_pending"),
        ("status = 'processing'", "a_pending"),
        ("status = 'pending'", "a_failed"),  # a retry is retry_job's job
        ("status = 'pending'", "a_pending"),  # no change, still not 'cancelled'
        # no column privilege beyond status
        ("priority = 100", "a_pending"),
        ("result = '{\"forged\": true}'", "a_completed"),
        ("user_id = gen_random_uuid()", "a_pending"),
        ("worker_id = 'mine'", "a_processing"),
        ("status = 'cancelled', priority = 100", "a_pending"),
    ],
)
def test_owner_may_not_update_anything_else(
    conn: Conn, world: World, assignment: str, job: str
) -> None:
    before = snapshot(conn)
    with sqlstate("42501"), as_(conn, world, "A"):
        conn.execute(
            f"update public.job_queue set {assignment} where id = %s", (getattr(world, job),)
        )
    assert snapshot(conn) == before


def test_owner_cancel_of_a_finished_job_is_refused_by_the_state_machine(
    conn: Conn, world: World
) -> None:
    before = snapshot(conn)
    with sqlstate("55000"), as_(conn, world, "A"):
        conn.execute(
            "update public.job_queue set status = 'cancelled' where id = %s", (world.a_completed,)
        )
    assert snapshot(conn) == before


def test_other_users_cannot_update_or_cancel(conn: Conn, world: World) -> None:
    before = snapshot(conn)
    with as_(conn, world, "B"):
        cur = conn.execute(
            "update public.job_queue set status = 'cancelled' where id = any(%s)",
            (list(world.a_jobs),),
        )
        assert cur.rowcount == 0
    with as_(conn, world, "A"):
        cur = conn.execute(
            "update public.job_queue set status = 'cancelled' where id = %s", (world.b_pending,)
        )
        assert cur.rowcount == 0
    assert snapshot(conn) == before


@pytest.mark.parametrize("who", ["A", "B"])
def test_users_cannot_delete_jobs(conn: Conn, world: World, who: str) -> None:
    before = snapshot(conn)
    with sqlstate("42501"), as_(conn, world, who):
        conn.execute("delete from public.job_queue where id = %s", (world.a_pending,))
    assert snapshot(conn) == before


def test_service_may_do_everything_on_job_queue(conn: Conn, world: World) -> None:
    with as_(conn, world, "service"):
        new = _one(
            conn,
            "insert into public.job_queue (user_id, job_type) values (%s, 'x') returning id",
            (world.b,),
        )
        assert (
            conn.execute(
                "update public.job_queue set priority = 5 where id = %s", (world.a_pending,)
            ).rowcount
            == 1
        )
        assert conn.execute("delete from public.job_queue where id = %s", (new,)).rowcount == 1
    assert _one(conn, "select priority from job_queue where id = %s", (world.a_pending,)) == 5


# ---------------------------------------------------------------------------
# job_log: direct access under RLS
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["A", "B", "service"])
def test_job_log_select(conn: Conn, world: World, who: str) -> None:
    with as_(conn, world, who):
        seen = {r[0] for r in conn.execute("select id from public.job_log").fetchall()}
    want = {"A": world.a_logs, "B": world.b_logs, "service": world.a_logs | world.b_logs}[who]
    assert seen == want


@pytest.mark.parametrize("who", ["A", "B"])
@pytest.mark.parametrize(
    "query",
    [
        "insert into public.job_log (job_id, message) values (%(a_pending)s, 'forged')",
        "update public.job_log set message = 'x' where job_id = %(a_pending)s",
        "delete from public.job_log where job_id = %(a_pending)s",
    ],
)
def test_users_cannot_write_logs(conn: Conn, world: World, who: str, query: str) -> None:
    before = snapshot(conn)
    with sqlstate("42501"), as_(conn, world, who):
        conn.execute(query, world.params())
    assert snapshot(conn) == before


def test_service_may_write_logs(conn: Conn, world: World) -> None:
    with as_(conn, world, "service"):
        new = _one(
            conn,
            "insert into public.job_log (job_id, message) values (%s, 'svc') returning id",
            (world.b_pending,),
        )
        assert (
            conn.execute(
                "update public.job_log set message = 'edited' where id = %s", (new,)
            ).rowcount
            == 1
        )
        assert conn.execute("delete from public.job_log where id = %s", (new,)).rowcount == 1


@pytest.mark.parametrize("who", ["anon", "A", "service"])
def test_partitions_are_not_reachable_directly(conn: Conn, world: World, who: str) -> None:
    # RLS of job_log does not apply to a partition queried by name: no role of
    # the API may touch the partitions, only the parent.
    parts = [
        r[0]
        for r in conn.execute(
            "select inhrelid::regclass::text from pg_inherits"
            " where inhparent = 'public.job_log'::regclass"
        ).fetchall()
    ]
    assert "job_log_default" in parts
    with as_(conn, world, who):
        for part in parts:
            expect_error(conn, "42501", sql.SQL("select * from {}").format(sql.Identifier(part)))


# ---------------------------------------------------------------------------
# job_queue_config
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("who", ["anon", "A"])
def test_config_is_invisible_to_api_users(conn: Conn, world: World, who: str) -> None:
    with as_(conn, world, who):
        expect_error(conn, "42501", "select * from public.job_queue_config")
        expect_error(
            conn, "42501", "update public.job_queue_config set max_active_jobs_per_user = 99"
        )
    assert not _one(
        conn, "select has_table_privilege('authenticated', 'public.job_queue_config', 'SELECT')"
    )
    assert not _one(conn, "select has_table_privilege('anon', 'public.job_queue_config', 'SELECT')")


def test_config_is_readable_by_service(conn: Conn, world: World) -> None:
    with as_(conn, world, "service"):
        assert _one(conn, "select max_active_jobs_per_user from public.job_queue_config") == 10


# ---------------------------------------------------------------------------
# Every function
# ---------------------------------------------------------------------------
# One call per function aimed at user A's data, for the anon/B/no-EXECUTE checks.
CALLS: dict[str, str] = {
    "create_job": "select create_job(%(a)s, 'sync_youtube', '{}')",
    "create_jobs": 'select * from create_jobs(%(a)s, \'[{"job_type": "x"}]\')',
    "find_or_create_job": "select * from find_or_create_job(%(a)s, 'sync_youtube', '{\"n\": 1}')",
    "get_cached_job_result": (
        "select * from get_cached_job_result(%(a)s, 'send_email', '{\"n\": 3}')"
    ),
    "cancel_job": "select cancel_job(%(a_pending)s)",
    "retry_job": "select retry_job(%(a_failed)s)",
    "get_user_jobs": "select * from get_user_jobs(%(a)s)",
    "get_job_logs": "select * from get_job_logs(%(a_pending)s)",
    "get_job_queue_stats": "select * from get_job_queue_stats(%(a)s)",
    "get_job_throughput": "select * from get_job_throughput(%(a)s)",
    "update_job_progress": "select update_job_progress(%(a_processing)s, 50)",
    "start_job": "select * from start_job(%(a_pending)s, 'evil')",
    "complete_job": "select complete_job(%(a_processing)s, '{\"forged\": true}')",
    "complete_jobs": (
        "select * from complete_jobs('w1', array[%(a_processing)s]::uuid[], array['{}']::jsonb[])"
    ),
    "fail_job": "select fail_job(%(a_processing)s, 'forged')",
    "add_job_log": "select add_job_log(%(a_pending)s, 'info', 'forged')",
    "retry_failed_jobs": "select retry_failed_jobs()",
    "cleanup_old_jobs": "select cleanup_old_jobs(interval '0')",
    "expire_stale_jobs": "select expire_stale_jobs()",
    "detect_stuck_jobs": "select detect_stuck_jobs(interval '1 microsecond')",
    "claim_jobs": "select * from claim_jobs('evil', 10)",
    "heartbeat_jobs": "select * from heartbeat_jobs('w1', array[%(a_processing)s]::uuid[])",
    "release_jobs": "select release_jobs('w1')",
    "create_job_log_partitions": "select * from create_job_log_partitions(6)",
    "drop_old_job_log_partitions": "select * from drop_old_job_log_partitions(interval '0')",
    "get_queue_depth": "select * from get_queue_depth()",
}


def test_the_matrix_covers_every_function(conn: Conn) -> None:
    ours = {
        r[0]
        for r in conn.execute(
            "select proname from pg_proc where pronamespace = 'public'::regnamespace"
        ).fetchall()
    }
    assert set(ALL_API_FUNCTIONS) == set(CALLS)
    assert ours == set(CALLS) | INTERNAL_FUNCTIONS, (
        "a function was added or removed: give it a row in this module's matrix"
    )


@pytest.mark.parametrize("function", sorted(CALLS))
def test_anon_may_call_no_function(conn: Conn, world: World, function: str) -> None:
    before = snapshot(conn)
    with sqlstate("42501") as excinfo, as_(conn, world, "anon"):
        conn.execute(CALLS[function], world.params())
    assert "permission denied for function" in str(excinfo.value)
    assert snapshot(conn) == before


@pytest.mark.parametrize("who", ["A", "B"])
@pytest.mark.parametrize("function", sorted(SERVICE_FUNCTIONS))
def test_users_may_not_call_worker_or_maintenance_functions(
    conn: Conn, world: World, who: str, function: str
) -> None:
    before = snapshot(conn)
    with sqlstate("42501") as excinfo, as_(conn, world, who):
        conn.execute(CALLS[function], world.params())
    assert "permission denied for function" in str(excinfo.value)
    assert snapshot(conn) == before


# B against A: naming A is 42501; a job id of A's reads as unknown (P0002).
B_AGAINST_A = [
    ("create_job", CALLS["create_job"], "42501"),
    ("create_jobs", CALLS["create_jobs"], "42501"),
    (
        "create_jobs",
        "select * from create_jobs(null, jsonb_build_array("
        "jsonb_build_object('user_id', %(a)s::text, 'job_type', 'x')))",
        "42501",
    ),
    ("find_or_create_job", CALLS["find_or_create_job"], "42501"),
    ("get_cached_job_result", CALLS["get_cached_job_result"], "42501"),
    ("cancel_job", CALLS["cancel_job"], "P0002"),
    ("cancel_job", "select cancel_job(%(a_pending)s, %(a)s)", "42501"),
    ("cancel_job", "select cancel_job(%(a_processing)s, %(b)s)", "P0002"),
    ("retry_job", CALLS["retry_job"], "P0002"),
    ("get_user_jobs", CALLS["get_user_jobs"], "42501"),
    ("get_user_jobs", "select * from get_user_jobs(%(a)s, 'pending')", "42501"),
    ("get_job_logs", CALLS["get_job_logs"], "P0002"),
    ("get_job_logs", "select * from get_job_logs(%(a_pending)s, %(a)s)", "42501"),
    ("get_job_logs", "select * from get_job_logs(%(a_pending)s, %(b)s)", "P0002"),
    ("get_job_logs", "select * from get_job_logs(null, %(a)s)", "42501"),
    ("get_job_queue_stats", CALLS["get_job_queue_stats"], "42501"),
    ("get_job_throughput", CALLS["get_job_throughput"], "42501"),
]


def test_every_user_function_is_tried_against_another_user() -> None:
    assert {name for name, _, _ in B_AGAINST_A} == USER_FUNCTIONS


@pytest.mark.parametrize(
    ("function", "query", "code"),
    B_AGAINST_A,
    ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(B_AGAINST_A)],
)
def test_user_functions_refuse_another_users_data(
    conn: Conn, world: World, function: str, query: str, code: str
) -> None:
    before = snapshot(conn)
    with sqlstate(code), as_(conn, world, "B"):
        conn.execute(query, world.params())
    assert snapshot(conn) == before


@pytest.mark.parametrize(
    ("function", "query"),
    [
        ("cancel_job", "select cancel_job(%s)"),
        ("retry_job", "select retry_job(%s)"),
        ("get_job_logs", "select * from get_job_logs(%s)"),
    ],
)
def test_another_users_job_looks_exactly_like_a_missing_one(
    conn: Conn, world: World, function: str, query: str
) -> None:
    missing = uuid.uuid4()
    with as_(conn, world, "B"):
        theirs = expect_error(conn, "P0002", query, (world.a_failed,))
        nothing = expect_error(conn, "P0002", query, (missing,))

    # Same message, detail and hint once the id is blanked out. (The CONTEXT
    # lines may differ: plpgsql reports more of it on an expression's first run.)
    def shape(e: psycopg.Error, job: uuid.UUID) -> tuple[str | None, ...]:
        d = e.diag
        return tuple(
            None if v is None else v.replace(str(job), "<id>")
            for v in (d.sqlstate, d.message_primary, d.message_detail, d.message_hint)
        )

    assert shape(theirs, world.a_failed) == shape(nothing, missing)


def test_user_functions_without_a_user_id_mean_the_caller(conn: Conn, world: World) -> None:
    with as_(conn, world, "B"):
        listed = {r[0] for r in conn.execute("select id from get_user_jobs(null)").fetchall()}
        assert listed == {world.b_pending}
        by_params = conn.execute(
            "select id from get_user_jobs(null, p_params_contains => '{\"n\": 1}')"
        ).fetchall()
        assert by_params == [(world.b_pending,)]
        by_result = conn.execute(
            "select id from get_user_jobs(null, p_result_contains => '{\"ok\": true}')"
        ).fetchall()
        assert by_result == []
        stats = conn.execute("select job_type, status, job_count from get_job_queue_stats()")
        assert stats.fetchall() == [("sync_youtube", "pending", 1)]
        # dedup and the cache are per user: B never gets A's job or result
        found = conn.execute(
            "select job_id, created from find_or_create_job(null, 'sync_youtube', '{\"n\": 1}')"
        ).fetchall()
        assert found == [(world.b_pending, False)]
        cached = conn.execute(
            "select * from get_cached_job_result(null, 'send_email', '{\"n\": 3}')"
        ).fetchall()
        assert cached == []


def test_owner_may_use_every_user_function_on_own_jobs(conn: Conn, world: World) -> None:
    """The refusals above are about the other user, not about the functions."""
    with as_(conn, world, "A"):
        p = world.params()
        assert {r[0] for r in conn.execute("select id from get_user_jobs(%(a)s)", p)} == (
            world.a_jobs
        )
        logs = conn.execute("select id from get_job_logs(%(a_pending)s, %(a)s)", p).fetchall()
        assert {r[0] for r in logs} <= world.a_logs
        assert len(logs) == 1
        assert conn.execute("select * from get_job_queue_stats(%(a)s)", p).fetchall()
        cached = conn.execute(
            "select job_id from get_cached_job_result(%(a)s, 'send_email', '{\"n\": 3}')", p
        ).fetchall()
        assert cached == [(world.a_completed,)]
        assert _one(conn, "select cancel_job(%(a_pending)s, %(a)s)", p) == "cancelled"
        assert _one(conn, "select retry_job(%(a_failed)s)", p) == "pending"
        assert _one(conn, CALLS["create_job"], p) is not None
        assert conn.execute(CALLS["create_jobs"], p).fetchall()


def test_service_may_act_for_any_user(conn: Conn, world: World) -> None:
    with as_(conn, world, "service"):
        p = world.params()
        assert {r[0] for r in conn.execute("select id from get_user_jobs(%(a)s)", p)} == (
            world.a_jobs
        )
        assert {r[0] for r in conn.execute("select id from get_user_jobs(null)", p)} == (
            world.a_jobs | {world.b_pending}
        )
        assert _one(conn, "select add_job_log(%(a_pending)s, 'info', 'from service')", p)
        assert _one(conn, "select cancel_job(%(a_pending)s)", p) == "cancelled"
        # service must name the user a job is for
        expect_error(conn, "22023", "select create_job(null, 'x')")


def test_claims_cannot_make_a_user_the_service(conn: Conn, world: World) -> None:
    """Only the role decides: a 'role' claim (or old-style claim setting) is not trusted."""
    before = snapshot(conn)
    with conn.transaction():
        conn.execute(
            "select set_config('role', 'authenticated', true),"
            " set_config('request.jwt.claims', %s, true),"
            " set_config('request.jwt.claim.role', 'service_role', true)",
            (json.dumps({"sub": str(world.b), "role": "service_role"}),),
        )
        assert _one(conn, "select auth.role()") == "service_role"  # what the token claims
        expect_error(conn, "42501", "select * from get_user_jobs(%s)", (world.a,))
        expect_error(conn, "P0002", "select cancel_job(%s)", (world.a_pending,))
        expect_error(conn, "42501", "select * from claim_jobs('evil')")
        assert conn.execute("select id from get_user_jobs(null)").fetchall() == [(world.b_pending,)]
    assert snapshot(conn) == before


@pytest.mark.parametrize("function", sorted(INTERNAL_FUNCTIONS))
def test_internal_helpers_are_callable_by_no_api_role(conn: Conn, function: str) -> None:
    oids = [
        r[0]
        for r in conn.execute(
            "select oid from pg_proc where pronamespace = 'public'::regnamespace and proname = %s",
            (function,),
        ).fetchall()
    ]
    assert len(oids) == 1
    for role in API_ROLES:
        assert not _one(conn, "select has_function_privilege(%s, %s, 'EXECUTE')", (role, oids[0]))


def test_internal_helper_called_directly_as_a_user_is_refused(conn: Conn, world: World) -> None:
    with as_(conn, world, "B"):
        expect_error(conn, "42501", "select public.jobq_lock_job(%s)", (world.a_pending,))
        expect_error(conn, "42501", "select public.jobq_acting_user(%s)", (world.a,))
        expect_error(conn, "42501", "select public.jobq_caller_is_service()")


# ---------------------------------------------------------------------------
# Catalogue
# ---------------------------------------------------------------------------
def test_security_definer_functions_pin_an_empty_search_path(conn: Conn) -> None:
    rows = conn.execute(
        "select proname, proconfig from pg_proc"
        " where pronamespace = 'public'::regnamespace and prosecdef"
    ).fetchall()
    assert {r[0] for r in rows} >= set(ALL_API_FUNCTIONS)
    bad = {name: cfg for name, cfg in rows if 'search_path=""' not in (cfg or [])}
    assert not bad, f"SECURITY DEFINER without search_path='': {bad}"


def test_every_function_of_ours_pins_its_search_path(conn: Conn) -> None:
    rows = conn.execute(
        "select proname, proconfig from pg_proc where pronamespace = 'public'::regnamespace"
    ).fetchall()
    bad = {n: c for n, c in rows if not any(s.startswith("search_path=") for s in c or [])}
    assert not bad


def test_no_function_is_executable_by_public_or_anon(conn: Conn) -> None:
    rows = conn.execute(
        """
        select p.proname,
               has_function_privilege('anon', p.oid, 'EXECUTE'),
               exists (select 1 from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                        where a.grantee = 0 and a.privilege_type = 'EXECUTE')
          from pg_proc p where p.pronamespace = 'public'::regnamespace
        """
    ).fetchall()
    assert len(rows) == len(CALLS) + len(INTERNAL_FUNCTIONS)
    assert [r[0] for r in rows if r[1]] == [], "anon may execute"
    assert [r[0] for r in rows if r[2]] == [], "PUBLIC may execute"


@pytest.mark.parametrize(
    ("role", "expected"),
    [("authenticated", USER_FUNCTIONS), ("service_role", frozenset(ALL_API_FUNCTIONS))],
)
def test_execute_grants_are_exactly_the_documented_ones(
    conn: Conn, role: str, expected: frozenset[str]
) -> None:
    granted = {
        r[0]
        for r in conn.execute(
            "select proname from pg_proc where pronamespace = 'public'::regnamespace"
            " and has_function_privilege(%s, oid, 'EXECUTE')",
            (role,),
        ).fetchall()
    }
    assert granted == expected


def test_table_privileges_are_exactly_the_documented_ones(conn: Conn) -> None:
    kinds = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]
    expected = {
        ("anon", "job_queue"): set(),
        ("anon", "job_log"): set(),
        ("anon", "job_queue_config"): set(),
        ("authenticated", "job_queue"): {"SELECT"},  # UPDATE on status only, below
        ("authenticated", "job_log"): {"SELECT"},
        ("authenticated", "job_queue_config"): set(),
        ("service_role", "job_queue"): {"SELECT", "INSERT", "UPDATE", "DELETE"},
        ("service_role", "job_log"): {"SELECT", "INSERT", "UPDATE", "DELETE"},
        ("service_role", "job_queue_config"): {"SELECT", "UPDATE"},
    }
    for (role, table), want in expected.items():
        got = {
            k
            for k in kinds
            if _one(conn, "select has_table_privilege(%s, %s, %s)", (role, f"public.{table}", k))
        }
        assert got == want, (role, table)
    columns = [
        r[0]
        for r in conn.execute(
            "select attname from pg_attribute where attrelid = 'public.job_queue'::regclass"
            " and attnum > 0 and not attisdropped"
        )
    ]
    updatable = {
        c
        for c in columns
        if _one(
            conn,
            "select has_column_privilege('authenticated', 'public.job_queue', %s, 'UPDATE')",
            (c,),
        )
    }
    assert updatable == {"status"}


def test_rls_is_enabled_and_roles_are_shaped_like_supabase(conn: Conn) -> None:
    rls = dict(
        conn.execute(
            "select relname, relrowsecurity from pg_class where oid in"
            " ('public.job_queue'::regclass, 'public.job_log'::regclass,"
            " 'public.job_queue_config'::regclass)"
        ).fetchall()
    )
    assert rls == {"job_queue": True, "job_log": True, "job_queue_config": True}
    roles = {
        r[0]: r[1:]
        for r in conn.execute(
            "select rolname, rolsuper, rolbypassrls, rolcanlogin from pg_roles"
            " where rolname = any(%s)",
            (list(API_ROLES),),
        )
    }
    assert roles == {
        "anon": (False, False, False),
        "authenticated": (False, False, False),
        "service_role": (False, True, False),
    }


def test_the_six_policies_are_the_spec_ones(conn: Conn) -> None:
    rows = conn.execute(
        "select policyname, tablename, cmd, roles::text[] from pg_policies"
        " where schemaname = 'public' order by 1"
    ).fetchall()
    assert rows == [
        ("job_log_insert_service", "job_log", "INSERT", ["service_role"]),
        ("job_log_select_own", "job_log", "SELECT", ["authenticated"]),
        ("job_queue_insert_own", "job_queue", "INSERT", ["authenticated"]),
        ("job_queue_select_own", "job_queue", "SELECT", ["authenticated"]),
        ("job_queue_service_all", "job_queue", "ALL", ["service_role"]),
        ("job_queue_update_own", "job_queue", "UPDATE", ["authenticated"]),
    ]


# ---------------------------------------------------------------------------
# SQL injection through the text arguments
# ---------------------------------------------------------------------------
PAYLOADS = [
    "created_at; drop table job_queue--",
    "id) or true--",
    "created_at desc, (select pg_sleep(0))--",
    "' or '1'='1",
    "completed'; delete from job_queue; --",
    'status"; drop table job_log; --',
    "Robert'); DROP TABLE job_queue;--",
]


def _tables_intact(conn: Conn, before: tuple[Any, ...]) -> None:
    for table in ("public.job_queue", "public.job_log", "public.job_queue_config"):
        assert _one(conn, "select to_regclass(%s) is not null", (table,)), table
    assert snapshot(conn) == before


@pytest.mark.parametrize("who", ["A", "service"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_injection_is_refused_or_taken_literally(
    conn: Conn, world: World, who: str, payload: str
) -> None:
    before = snapshot(conn)
    user = world.a if who == "A" else None
    with as_(conn, world, who):
        for argument in ("p_order_by", "p_order_dir", "p_status"):
            expect_error(
                conn,
                "22023",
                sql.SQL("select * from get_user_jobs({}, {} => {})").format(
                    sql.Literal(user), sql.Identifier(argument), sql.Literal(payload)
                ),
            )
        # compared as values, never spliced: nothing matches
        rows = conn.execute(
            "select * from get_user_jobs(%s, p_job_type => %s)", (user, payload)
        ).fetchall()
        assert rows == []
        rows = conn.execute(
            "select * from get_user_jobs(%s, p_params_contains => %s::jsonb)",
            (user, json.dumps({"n": payload})),
        ).fetchall()
        assert rows == []
        rows = conn.execute(
            "select * from get_job_logs(%s, p_search => %s)", (world.a_pending, payload)
        ).fetchall()
        assert rows == []
        expect_error(
            conn,
            "22023",
            "select * from get_job_logs(%s, p_level => %s)",
            (world.a_pending, payload),
        )
        expect_error(conn, "22023", "select create_job(%s, %s)", (world.a, payload))
    _tables_intact(conn, before)


# ---------------------------------------------------------------------------
# A login that is only a member of authenticated (what `authenticator` is on Supabase)
# ---------------------------------------------------------------------------
@pytest.fixture
def member_of_authenticated(conn: Conn, database_url: str, make_conn: Any) -> Iterator[Conn]:
    name = f"jobq_forge_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    conn.execute(
        sql.SQL("create role {} login password {}").format(
            sql.Identifier(name), sql.Literal(password)
        )
    )
    try:
        conn.execute(sql.SQL("grant authenticated to {}").format(sql.Identifier(name)))
        c = make_conn(make_conninfo(database_url, user=name, password=password))
        try:
            yield c
        finally:
            c.close()
    finally:
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


@pytest.mark.parametrize(
    "query",
    [
        "set role service_role",
        "select set_config('role', 'service_role', false)",
        "set role postgres",
        "set session authorization postgres",
        "set role anon",
    ],
)
def test_a_forged_set_role_fails(
    conn: Conn, world: World, member_of_authenticated: Conn, query: str
) -> None:
    forge = member_of_authenticated
    before = snapshot(conn)
    expect_error(forge, "42501", query)
    assert _one(forge, "select current_setting('role')") == "none"
    # and it is no service caller: no claims, no user
    expect_error(forge, "42501", "select * from get_user_jobs(%s)", (world.a,))
    expect_error(forge, "42501", "select * from claim_jobs('evil')")
    expect_error(forge, "42501", "select * from public.job_queue_config")
    assert snapshot(conn) == before


def test_the_member_may_become_authenticated_and_nothing_more(
    world: World, member_of_authenticated: Conn
) -> None:
    forge = member_of_authenticated
    with forge.transaction():
        forge.execute("set local role authenticated")
        assert _one(forge, "select current_user") == "authenticated"
        expect_error(forge, "42501", "select * from get_user_jobs(null)")  # no claims: nobody
        expect_error(forge, "42501", "set local role service_role")


# ---------------------------------------------------------------------------
# Supabase's default privileges (older projects grant every new table, sequence
# and function in public to anon, authenticated and service_role)
# ---------------------------------------------------------------------------
@pytest.fixture
def supabase_like_db(template_db: str, empty_database_url: str) -> Iterator[Conn]:
    # (template_db: the API roles exist once a first migration has run on the server)
    with psycopg.connect(empty_database_url, autocommit=True) as c:
        for kind in ("tables", "sequences", "functions"):
            c.execute(
                f"alter default privileges in schema public grant all on {kind}"
                " to anon, authenticated, service_role"
            )
        with psycopg.connect(empty_database_url) as m:
            migrate.migrate(m)
        c.execute("select public.create_job_log_partitions(6)")
        yield c


def test_default_privileges_are_taken_back_from_functions_and_tables(
    supabase_like_db: Conn,
) -> None:
    c = supabase_like_db
    for role, expected in (
        ("anon", set()),
        ("authenticated", set(USER_FUNCTIONS)),
        ("service_role", set(ALL_API_FUNCTIONS)),
    ):
        granted = {
            r[0]
            for r in c.execute(
                "select proname from pg_proc where pronamespace = 'public'::regnamespace"
                " and has_function_privilege(%s, oid, 'EXECUTE')",
                (role,),
            ).fetchall()
        }
        assert granted == expected, role
    for table in ("job_queue", "job_log", "job_queue_config"):
        assert not _one(c, "select has_table_privilege('anon', %s, 'SELECT')", (f"public.{table}",))


def test_partitions_get_no_default_privileges(supabase_like_db: Conn) -> None:
    c = supabase_like_db
    # What it would mean: user A reads user B's log line through the partition.
    b_job = _one(c, "select create_job(gen_random_uuid(), 'sync_youtube')")
    _one(c, "select add_job_log(%s, 'info', 'b secret')", (b_job,))
    part = _one(c, "select tableoid::regclass::text from public.job_log")
    with acting(c, "authenticated", uuid.uuid4()):
        assert c.execute("select * from public.job_log").fetchall() == []  # RLS on the parent
        expect_error(c, "42501", sql.SQL("select * from {}").format(sql.Identifier(part)))
    parts = [
        r[0]
        for r in c.execute(
            "select inhrelid::regclass::text from pg_inherits"
            " where inhparent = 'public.job_log'::regclass"
        ).fetchall()
    ]
    granted = [
        (role, part)
        for part in parts
        for role in API_ROLES
        if _one(c, "select has_table_privilege(%s, %s, 'SELECT')", (role, part))
    ]
    assert granted == []


def test_log_sequence_gets_no_default_privileges(supabase_like_db: Conn) -> None:
    c = supabase_like_db
    for role in ("anon", "authenticated"):
        for kind in ("USAGE", "SELECT", "UPDATE"):
            assert not _one(
                c, "select has_sequence_privilege(%s, 'public.job_log_id_seq', %s)", (role, kind)
            ), (role, kind)


def test_migrations_table_gets_no_default_privileges(supabase_like_db: Conn) -> None:
    c = supabase_like_db
    for role in API_ROLES:
        for kind in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"):
            assert not _one(
                c, "select has_table_privilege(%s, 'public.jobq_migrations', %s)", (role, kind)
            ), (role, kind)
