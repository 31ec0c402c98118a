"""The job state machine, enforced by trigger job_queue_updated_at on every UPDATE.

Legal: pending -> processing | cancelled | expired; processing -> completed |
failed | cancelled; failed -> pending. Everything else raises 55000 naming
both states, whoever runs the UPDATE (here: the admin, with no function in
between).
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.sql._support import (
    ALL_STATUSES,
    Conn,
    as_user,
    call,
    create_job,
    job,
    new_user,
    raises_sqlstate,
    scalar,
)

LEGAL = {
    ("pending", "processing"),
    ("pending", "cancelled"),
    ("pending", "expired"),
    ("processing", "completed"),
    ("processing", "failed"),
    ("processing", "cancelled"),
    ("failed", "pending"),
}
TERMINAL_ON_ENTRY = {"completed", "failed", "cancelled", "expired"}

# How to reach each state from pending with legal direct UPDATEs.
PATH = {
    "pending": [],
    "processing": ["processing"],
    "completed": ["processing", "completed"],
    "failed": ["processing", "failed"],
    "cancelled": ["cancelled"],
    "expired": ["expired"],
}


def _set_status(conn: Conn, job_id: uuid.UUID, new: str) -> None:
    # a processing job needs a worker (CHECK job_queue_processing_check); attempts
    # stay within max_retries + 1
    conn.execute(
        "update public.job_queue set status = %s, worker_id = coalesce(worker_id, 'w'), "
        "attempts = least(attempts + (%s = 'processing')::int, max_retries + 1) where id = %s",
        (new, new, job_id),
    )


def _job_in(conn: Conn, state: str) -> uuid.UUID:
    job_id = create_job(conn, new_user())
    for step in PATH[state]:
        _set_status(conn, job_id, step)
    assert job(conn, job_id)["status"] == state
    return job_id


def test_the_matrix_is_complete() -> None:
    assert len(ALL_STATUSES) == 6
    assert {s for pair in LEGAL for s in pair} <= set(ALL_STATUSES)
    assert len(set(itertools.product(ALL_STATUSES, repeat=2))) == 36


@pytest.mark.parametrize(
    ("old", "new"),
    [(a, b) for a, b in itertools.product(ALL_STATUSES, repeat=2) if a != b],
)
def test_transition(conn: Conn, old: str, new: str) -> None:
    job_id = _job_in(conn, old)
    before = job(conn, job_id)
    if (old, new) in LEGAL:
        with conn.transaction():
            _set_status(conn, job_id, new)
            now = scalar(conn, "select now()")
        after = job(conn, job_id)
        assert after["status"] == new
        assert after["updated_at"] == now
        if new in TERMINAL_ON_ENTRY:
            assert after["completed_at"] == now
        else:
            assert before["completed_at"] is not None or old == "pending"
            assert after["completed_at"] is None, "runnable again: not finished"
        if new == "cancelled":
            assert after["error_code"] == "CANCELLED"
        if new == "completed":
            assert after["progress_percent"] == 100
        if new in ("completed", "cancelled", "expired"):
            assert after["next_retry_at"] is None
    else:
        with raises_sqlstate("55000", rf"\b{old} -> {new}\b"):
            _set_status(conn, job_id, new)
        assert job(conn, job_id) == before


def test_legal_transitions_are_exactly_seven() -> None:
    assert len(LEGAL) == 7


@pytest.mark.parametrize("state", ALL_STATUSES)
def test_same_status_is_not_a_transition(conn: Conn, state: str) -> None:
    job_id = _job_in(conn, state)
    before = job(conn, job_id)
    with conn.transaction():
        conn.execute(
            "update public.job_queue set status = status, priority = 9 where id = %s", (job_id,)
        )
        now = scalar(conn, "select now()")
    after = job(conn, job_id)
    assert (after["status"], after["priority"], after["updated_at"]) == (state, 9, now)
    # completed_at marks entering a final state, not touching the row again
    assert after["completed_at"] == before["completed_at"]


@pytest.mark.parametrize("state", ALL_STATUSES)
def test_illegal_transition_message(conn: Conn, state: str) -> None:
    """The message names both states and the job."""
    job_id = _job_in(conn, state)
    target = "expired" if state in ("processing", "completed") else "completed"
    with pytest.raises(psycopg.Error) as info:
        _set_status(conn, job_id, target)
    assert info.value.sqlstate == "55000"
    assert info.value.diag.message_primary == (
        f"illegal job status transition {state} -> {target} (job {job_id})"
    )


def test_several_rows_one_illegal_rolls_back_the_statement(conn: Conn) -> None:
    ok = _job_in(conn, "pending")
    bad = _job_in(conn, "completed")
    with raises_sqlstate("55000", "completed -> cancelled"):
        conn.execute(
            "update public.job_queue set status = 'cancelled' where id = any(%s)", ([ok, bad],)
        )
    assert (job(conn, ok)["status"], job(conn, bad)["status"]) == ("pending", "completed")


@pytest.mark.parametrize("column", ["id", "user_id"])
@pytest.mark.parametrize("state", ["pending", "completed"])
def test_id_and_user_id_cannot_change(conn: Conn, column: str, state: str) -> None:
    job_id = _job_in(conn, state)
    before = job(conn, job_id)
    with raises_sqlstate("55000", "id and user_id cannot change"):
        conn.execute(
            f"update public.job_queue set {column} = gen_random_uuid() where id = %s", (job_id,)
        )
    assert job(conn, job_id) == before
    # not even together with a legal transition
    if state == "pending":
        with raises_sqlstate("55000", "cannot change"):
            conn.execute(
                f"update public.job_queue set {column} = gen_random_uuid(), "
                "status = 'cancelled' where id = %s",
                (job_id,),
            )
        assert job(conn, job_id) == before


def test_updated_at_moves_on_every_update(conn: Conn) -> None:
    job_id = _job_in(conn, "pending")
    # backdate without the trigger (it would overwrite updated_at)
    with conn.transaction():
        conn.execute("set local session_replication_role = replica")
        conn.execute(
            "update public.job_queue set updated_at = now() - interval '1 day' where id = %s",
            (job_id,),
        )
    old = job(conn, job_id)["updated_at"]
    for stmt in (
        "update public.job_queue set priority = 3 where id = %s",
        "update public.job_queue set heartbeat_at = now() where id = %s",
        "update public.job_queue set params = params where id = %s",  # no actual change
        "update public.job_queue set updated_at = '2000-01-01' where id = %s",  # ignored
    ):
        with conn.transaction():
            conn.execute(stmt, (job_id,))
            now = scalar(conn, "select now()")
        updated = job(conn, job_id)["updated_at"]
        assert updated == now
        assert updated > old
        old = updated


def test_a_users_direct_cancel_goes_through_the_state_machine(conn: Conn) -> None:
    user = new_user()
    pending = create_job(conn, user)
    done = create_job(conn, user)
    _set_status(conn, done, "processing")
    _set_status(conn, done, "completed")
    with as_user(conn, user):
        conn.execute("update public.job_queue set status = 'cancelled' where id = %s", (pending,))
    assert job(conn, pending)["status"] == "cancelled"
    assert job(conn, pending)["completed_at"] is not None
    with raises_sqlstate("55000", "completed -> cancelled"), as_user(conn, user):
        conn.execute("update public.job_queue set status = 'cancelled' where id = %s", (done,))
    assert job(conn, done)["status"] == "completed"


# ---------------------------------------------------------------------------
# Property: random sequences of operations keep the invariants and agree with
# a model of the state machine.
# ---------------------------------------------------------------------------

EXPECTED_ERRORS = {"55000", "22023"}


@dataclass
class Model:
    status: str = "pending"
    attempts: int = 0
    max_retries: int = 0
    retry_scheduled: bool = False
    started: bool = False  # ever claimed: such a job no longer expires
    frozen: dict[str, Any] | None = None  # the row once it reached a final state


@dataclass
class World:
    ids: list[uuid.UUID] = field(default_factory=list)
    model: dict[uuid.UUID, Model] = field(default_factory=dict)


def _pick(world: World, i: int) -> uuid.UUID | None:
    return world.ids[i % len(world.ids)] if world.ids else None


def _expect_error(fn: Any, *args: Any) -> str | None:
    """The SQLSTATE ``fn`` raised (only the expected refusals are caught), else None."""
    try:
        fn(*args)
    except psycopg.Error as e:
        if e.sqlstate not in EXPECTED_ERRORS:
            raise
        return e.sqlstate
    return None


def _apply(conn: Conn, world: World, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "create":
        job_id = create_job(conn, new_user(), max_retries=op[1])
        world.ids.append(job_id)
        world.model[job_id] = Model(max_retries=op[1])
        return
    if kind == "claim":
        rows = call(conn, "claim_jobs", "w", 1)
        pending = [i for i in world.ids if world.model[i].status == "pending"]
        # FIFO among equal priorities: the earliest created pending job
        assert [r["id"] for r in rows] == pending[:1]
        for r in rows:
            m = world.model[r["id"]]
            m.status, m.attempts, m.retry_scheduled = "processing", m.attempts + 1, False
            m.started = True
        return
    if kind == "retry_due":
        conn.execute(
            "update public.job_queue set next_retry_at = now() - interval '1 second' "
            "where status = 'failed' and next_retry_at is not null"
        )
        n = call(conn, "retry_failed_jobs")[0]["retry_failed_jobs"]
        due = [m for m in world.model.values() if m.status == "failed" and m.retry_scheduled]
        assert n == len(due)
        for m in due:
            m.status, m.retry_scheduled = "pending", False
        return
    if kind == "release":
        n = call(conn, "release_jobs", "w")[0]["release_jobs"]
        held = [m for m in world.model.values() if m.status == "processing"]
        assert n == len(held)
        for m in held:
            m.status, m.attempts = "pending", m.attempts - 1
        return
    job_id = _pick(world, op[1])
    if job_id is None:
        return
    m = world.model[job_id]
    if kind == "progress":
        pct = op[2]
        err = _expect_error(call, conn, "update_job_progress", job_id, pct, "p", "w")
        if not 0 <= pct <= 100:
            assert err == "22023"
        else:
            assert err == (None if m.status == "processing" else "55000")
    elif kind == "complete":
        err = _expect_error(call, conn, "complete_job", job_id, {"done": True}, "w")
        assert err == (None if m.status == "processing" else "55000")
        if err is None:
            m.status = "completed"
    elif kind == "fail":
        retryable = op[2]
        err = _expect_error(call, conn, "fail_job", job_id, "e", None, retryable, "w")
        assert err == (None if m.status == "processing" else "55000")
        if err is None:
            m.status = "failed"
            m.retry_scheduled = retryable and m.attempts <= m.max_retries
    elif kind == "cancel":
        err = _expect_error(call, conn, "cancel_job", job_id)
        assert err == (None if m.status in ("pending", "processing") else "55000")
        if err is None:
            m.status = "cancelled"
    elif kind == "retry_job":
        err = _expect_error(call, conn, "retry_job", job_id)
        assert err == (None if m.status == "failed" else "55000")
        if err is None:
            m.status, m.retry_scheduled = "pending", False
            m.max_retries = max(m.max_retries, m.attempts)
    elif kind == "expire":
        conn.execute(
            "update public.job_queue set expires_at = now() - interval '1 second' "
            "where id = %s and status = 'pending'",
            (job_id,),
        )
        n = call(conn, "expire_stale_jobs")[0]["expire_stale_jobs"]
        expires = m.status == "pending" and not m.started
        assert n == (1 if expires else 0)
        if expires:
            m.status = "expired"
    elif kind == "stuck":
        conn.execute(
            "update public.job_queue set heartbeat_at = now() - interval '1 hour' "
            "where id = %s and status = 'processing'",
            (job_id,),
        )
        n = call(conn, "detect_stuck_jobs")[0]["detect_stuck_jobs"]
        assert n == (1 if m.status == "processing" else 0)
        if m.status == "processing":
            m.status = "failed"
            m.retry_scheduled = m.attempts <= m.max_retries
    else:  # pragma: no cover
        raise AssertionError(kind)


def _check(conn: Conn, world: World) -> None:
    rows = {r["id"]: r for r in call(conn, "get_user_jobs", None, limit=1000)}
    assert set(rows) == set(world.ids)
    for job_id, m in world.model.items():
        r = dict(rows[job_id])
        r.pop("total_count")
        assert r["status"] in ALL_STATUSES
        assert r["status"] == m.status, (job_id, r["status"], m)
        assert r["attempts"] == m.attempts
        assert r["max_retries"] == m.max_retries
        assert 0 <= r["attempts"] <= r["max_retries"] + 1
        assert 0 <= r["progress_percent"] <= 100
        if m.status == "failed":
            assert (r["next_retry_at"] is not None) == m.retry_scheduled
        if m.status in ("processing", "completed", "cancelled", "expired"):
            assert r["next_retry_at"] is None
        if m.status == "pending":
            assert r["worker_id"] is None
        if m.status == "processing":
            assert r["worker_id"] == "w"
        if m.status == "completed":
            assert r["progress_percent"] == 100
        if m.status in ("completed", "failed", "cancelled", "expired"):
            assert r["completed_at"] is not None
        if m.status in ("pending", "processing"):
            assert r["completed_at"] is None
        if m.status in ("completed", "cancelled", "expired"):
            if m.frozen is None:
                m.frozen = r
            assert r == m.frozen, "a final job changed"


_ops = st.one_of(
    st.tuples(st.just("create"), st.integers(0, 2)),
    st.tuples(st.just("claim")),
    st.tuples(st.just("retry_due")),
    st.tuples(st.just("release")),
    st.tuples(st.just("progress"), st.integers(0, 50), st.integers(-5, 105)),
    st.tuples(st.just("complete"), st.integers(0, 50)),
    st.tuples(st.just("fail"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("retry_job"), st.integers(0, 50)),
    st.tuples(st.just("expire"), st.integers(0, 50)),
    st.tuples(st.just("stuck"), st.integers(0, 50)),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(_ops, min_size=1, max_size=40))
def test_random_operations_keep_the_invariants(conn: Conn, ops: list[tuple[Any, ...]]) -> None:
    # one database per test function: start every example from an empty queue
    conn.execute("truncate public.job_queue, public.job_log")
    world = World()
    for op in [("create", 0), ("create", 1), ("create", 2), *ops]:
        _apply(conn, world, op)
        _check(conn, world)
