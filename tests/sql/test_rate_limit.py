"""The per-user limit of active jobs, 10 by default. Active: pending, processing,
and failed with a retry scheduled (it will run again).

The concurrent tests start 20 callers, one connection each, released together
by a threading.Barrier. With ``gated`` they are also made to wait, all 20 of
them, on a SHARE lock of job_queue held by the test (an INSERT cannot pass it)
until pg_locks shows every one of them waiting: only then is the lock released,
so the 20 calls provably overlap instead of probably.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from tests.sql._support import (
    Conn,
    as_service,
    as_user,
    call,
    claim_one,
    create_job,
    digest,
    job_in_state,
    new_user,
    raises_sqlstate,
    scalar,
    start_concurrently,
    status,
    wait_until_blocked,
)

CALLERS = 20
LIMIT = 10


def _active(conn: Conn, user: uuid.UUID) -> int:
    return int(
        scalar(
            conn,
            "select count(*) from public.job_queue where user_id = %s "
            "and (status in ('pending', 'processing') "
            "     or (status = 'failed' and next_retry_at is not null))",
            (user,),
        )
    )


def _fill(conn: Conn, user: uuid.UUID, n: int) -> list[uuid.UUID]:
    """``n`` active jobs for ``user``, made as admin (not limited); half of them running."""
    ids = [create_job(conn, user, "fill", {"n": i}) for i in range(n)]
    for job_id in ids[: n // 2]:
        claim_one(conn, job_id)
    assert _active(conn, user) == n
    return ids


def _overlapping(
    make_conn: Callable[..., Conn],
    user: uuid.UUID,
    call_one: Callable[[Conn, int], Any],
    *,
    gated: bool,
) -> list[Any]:
    """Run ``call_one(conn, i)`` as ``user`` on CALLERS connections at once."""
    admin = make_conn()
    conns = [make_conn() for _ in range(CALLERS)]
    index = {id(c): i for i, c in enumerate(conns)}

    def work(c: Conn, barrier: threading.Barrier) -> Any:
        with as_user(c, user):
            barrier.wait()
            return call_one(c, index[id(c)])

    if not gated:
        return start_concurrently(conns, work)()
    gate = make_conn()
    with gate.transaction():
        gate.execute("lock table public.job_queue in share mode")
        join = start_concurrently(conns, work)
        wait_until_blocked(admin, [c.info.backend_pid for c in conns])
    return join()


def _outcomes(results: list[Any]) -> tuple[list[Any], list[psycopg.Error]]:
    ok = [r for r in results if not isinstance(r, psycopg.Error)]
    errors = [r for r in results if isinstance(r, psycopg.Error)]
    return ok, errors


@pytest.mark.parametrize("gated", [False, True], ids=["barrier", "barrier+lock"])
def test_concurrent_create_job_admits_exactly_one(make_conn: Any, gated: bool) -> None:
    admin = make_conn()
    user = new_user()
    _fill(admin, user, LIMIT - 1)

    def create(c: Conn, i: int) -> uuid.UUID:
        return call(c, "create_job", user, "burst", {"i": i})[0]["create_job"]

    ok, errors = _outcomes(_overlapping(make_conn, user, create, gated=gated))
    assert len(ok) == 1
    assert len(errors) == CALLERS - 1
    for e in errors:
        assert e.sqlstate == "53400", e
        assert e.diag.message_primary == f"rate limit: {LIMIT} active jobs, the limit is {LIMIT}"
    assert _active(admin, user) == LIMIT
    assert scalar(admin, "select count(*) from public.job_queue where job_type = 'burst'") == 1
    assert status(admin, ok[0]) == "pending"


@pytest.mark.parametrize("gated", [False, True], ids=["barrier", "barrier+lock"])
def test_concurrent_find_or_create_job_admits_exactly_one(make_conn: Any, gated: bool) -> None:
    admin = make_conn()
    user = new_user()
    _fill(admin, user, LIMIT - 1)

    def find_or_create(c: Conn, i: int) -> dict[str, Any]:
        rows = call(c, "find_or_create_job", user, "burst", {"distinct": i})
        return rows[0]

    ok, errors = _outcomes(_overlapping(make_conn, user, find_or_create, gated=gated))
    assert len(ok) == 1
    assert ok[0]["created"] is True
    assert {e.sqlstate for e in errors} == {"53400"}
    assert len(errors) == CALLERS - 1
    assert _active(admin, user) == LIMIT


def test_concurrent_creates_for_different_users_are_independent(make_conn: Any) -> None:
    """The limit serialises one user's calls, not everyone's: 20 users, 20 jobs."""
    admin = make_conn()
    users = [new_user() for _ in range(CALLERS)]
    for u in users:
        _fill(admin, u, LIMIT - 1)
    conns = [make_conn() for _ in range(CALLERS)]
    index = {id(c): i for i, c in enumerate(conns)}

    def work(c: Conn, barrier: threading.Barrier) -> Any:
        u = users[index[id(c)]]
        with as_user(c, u):
            barrier.wait()
            return call(c, "create_job", u, "burst")[0]["create_job"]

    ok, errors = _outcomes(start_concurrently(conns, work)())
    assert (len(ok), errors) == (CALLERS, [])
    assert all(_active(admin, u) == LIMIT for u in users)


def test_create_job_at_the_limit(conn: Conn) -> None:
    user = new_user()
    _fill(conn, user, LIMIT - 1)
    with as_user(conn, user):
        call(conn, "create_job", user, "tenth")
    before = digest(conn)
    with (
        raises_sqlstate("53400", "rate limit: 10 active jobs, the limit is 10") as info,
        as_user(conn, user),
    ):
        call(conn, "create_job", user, "eleventh")
    assert info.value.diag.message_hint == "wait for active jobs to finish"
    assert digest(conn) == before


def test_other_users_are_not_limited_by_someone_elses_jobs(conn: Conn) -> None:
    full, other = new_user(), new_user()
    _fill(conn, full, LIMIT)
    with as_user(conn, other):
        for _ in range(LIMIT):
            call(conn, "create_job", other, "mine")
    assert _active(conn, other) == LIMIT


@pytest.mark.parametrize("how", ["complete", "fail", "cancel", "expire"])
def test_a_finished_job_frees_a_slot(conn: Conn, how: str) -> None:
    user = new_user()
    ids = _fill(conn, user, LIMIT)
    with raises_sqlstate("53400"), as_user(conn, user):
        call(conn, "create_job", user, "blocked")
    running, waiting = ids[0], ids[-1]
    assert (status(conn, running), status(conn, waiting)) == ("processing", "pending")
    if how == "complete":
        call(conn, "complete_job", running, {"ok": True})
    elif how == "fail":
        call(conn, "fail_job", running, "boom", "E", False)  # final: no retry
    elif how == "cancel":
        with as_user(conn, user):
            call(conn, "cancel_job", running)
    else:
        conn.execute(
            "update public.job_queue set expires_at = now() - interval '1 second' where id = %s",
            (waiting,),
        )
        assert call(conn, "expire_stale_jobs")[0]["expire_stale_jobs"] == 1
    with as_user(conn, user):
        call(conn, "create_job", user, "admitted")
    assert _active(conn, user) == LIMIT
    with raises_sqlstate("53400"), as_user(conn, user):
        call(conn, "create_job", user, "blocked-again")


def test_a_failed_job_waiting_for_retry_still_counts(conn: Conn) -> None:
    """It will run again: failing with a retry scheduled frees no slot; the final failure does."""
    user = new_user()
    ids = _fill(conn, user, LIMIT)
    running = ids[0]
    assert call(conn, "fail_job", running, "boom")[0]["fail_job"] is not None
    before = digest(conn)
    with raises_sqlstate("53400", "rate limit: 10 active jobs"), as_user(conn, user):
        call(conn, "create_job", user, "blocked")
    assert digest(conn) == before
    # its retry brings it back to pending: still one slot, not two
    conn.execute("update public.job_queue set next_retry_at = now() where id = %s", (running,))
    assert call(conn, "retry_failed_jobs")[0]["retry_failed_jobs"] == 1
    assert _active(conn, user) == LIMIT
    # the last attempt fails for good: the slot is free
    call(conn, "start_job", running, "w1")
    assert call(conn, "fail_job", running, "boom", "E", False)[0]["fail_job"] is None
    with as_user(conn, user):
        call(conn, "create_job", user, "admitted")
    assert _active(conn, user) == LIMIT


@pytest.mark.parametrize("role", ["service_role", "admin"])
def test_service_is_not_limited(conn: Conn, role: str) -> None:
    user = new_user()
    _fill(conn, user, LIMIT)
    for i in range(5):
        if role == "service_role":
            with as_service(conn):
                call(conn, "create_job", user, "svc", {"i": i})
                call(conn, "find_or_create_job", user, "svc", {"foc": i})
        else:
            call(conn, "create_job", user, "svc", {"i": i})
            call(conn, "find_or_create_job", user, "svc", {"foc": i})
    with as_service(conn):
        call(conn, "create_jobs", user, Jsonb([{"job_type": "svc"}] * 5))
    assert _active(conn, user) == LIMIT + 15


def test_find_or_create_job_at_the_limit(conn: Conn) -> None:
    user = new_user()
    ids = _fill(conn, user, LIMIT)
    with as_user(conn, user):
        # an existing job is found without counting against the limit
        found = call(conn, "find_or_create_job", user, "fill", {"n": 3})[0]
    assert (found["job_id"], found["created"]) == (ids[3], False)
    before = digest(conn)
    with raises_sqlstate("53400"), as_user(conn, user):
        call(conn, "find_or_create_job", user, "fill", {"n": "new"})
    assert digest(conn) == before


@pytest.mark.parametrize(
    ("active", "new", "admitted"), [(8, 3, False), (8, 2, True), (0, 11, False), (0, 10, True)]
)
def test_create_jobs_counts_the_whole_batch(
    conn: Conn, active: int, new: int, admitted: bool
) -> None:
    user = new_user()
    _fill(conn, user, active)
    before = digest(conn)
    batch = Jsonb([{"job_type": "batch", "params": {"i": i}} for i in range(new)])
    if admitted:
        with as_user(conn, user):
            assert len(call(conn, "create_jobs", user, batch)) == new
        assert _active(conn, user) == active + new
    else:
        with (
            raises_sqlstate("53400", f"rate limit: {active} active jobs, the limit is 10"),
            as_user(conn, user),
        ):
            call(conn, "create_jobs", user, batch)
        assert digest(conn) == before
        assert scalar(conn, "select count(*) from public.job_queue where job_type = 'batch'") == 0


def test_retry_job_by_a_user_is_limited(conn: Conn) -> None:
    user = new_user()
    failed = job_in_state(conn, user, "failed", max_retries=0)  # final: not active
    _fill(conn, user, LIMIT)
    before = digest(conn)
    with raises_sqlstate("53400"), as_user(conn, user):
        call(conn, "retry_job", failed)
    assert digest(conn) == before
    call(conn, "retry_job", failed)  # the service may
    assert status(conn, failed) == "pending"


def test_the_limit_is_configurable(conn: Conn) -> None:
    conn.execute("update public.job_queue_config set max_active_jobs_per_user = 2")
    user = new_user()
    with as_user(conn, user):
        call(conn, "create_job", user, "a")
        call(conn, "create_job", user, "b")
    with raises_sqlstate("53400", "rate limit: 2 active jobs, the limit is 2"), as_user(conn, user):
        call(conn, "create_job", user, "c")


def test_concurrent_create_job_under_repeatable_read(make_conn: Any) -> None:
    """Callers whose snapshot predates the others' inserts must not count with it:
    exactly one is admitted, the others are refused (53400) or told to retry (40001)."""
    admin = make_conn()
    user = new_user()
    _fill(admin, user, LIMIT - 1)
    conns = [make_conn() for _ in range(CALLERS)]

    def work(c: Conn, barrier: threading.Barrier) -> Any:
        with c.transaction():
            c.execute("set transaction isolation level repeatable read")
            with as_user(c, user):
                barrier.wait()
                return call(c, "create_job", user, "burst")[0]["create_job"]

    ok, errors = _outcomes(start_concurrently(conns, work)())
    assert len(ok) == 1
    assert len(errors) == CALLERS - 1
    assert {e.sqlstate for e in errors} <= {"53400", "40001"}
    assert _active(admin, user) == LIMIT
