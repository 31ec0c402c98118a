"""Helpers shared by the SQL function, state machine, rate limit, notify and spec tests.

Every helper takes the test's admin connection (autocommit, superuser): as
admin the jobq functions treat the caller as trusted (like service_role), so
fixtures can set up any state; tests that need a user's view wrap their calls
in :func:`as_user`.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from jobq.db import act_as

Conn = psycopg.Connection[Any]
Row = dict[str, Any]

ALL_STATUSES = ("pending", "processing", "completed", "failed", "cancelled", "expired")


def new_user() -> uuid.UUID:
    return uuid.uuid4()


@contextmanager
def acting(conn: Conn, role: str, user_id: uuid.UUID | None = None) -> Iterator[Conn]:
    """One transaction in which ``conn`` acts as ``role`` (and user), the PostgREST way."""
    with conn.transaction():
        act_as(conn, role, user_id)
        yield conn


def as_user(conn: Conn, user_id: uuid.UUID) -> Any:
    return acting(conn, "authenticated", user_id)


def as_service(conn: Conn) -> Any:
    return acting(conn, "service_role")


def _adapt(value: Any) -> Any:
    if isinstance(value, dict):
        return Jsonb(value)
    return value


def call(conn: Conn, fn: str, /, *args: Any, **kwargs: Any) -> list[Row]:
    """``select * from fn(args..., p_k := v, ...)``: rows as dicts.

    Positional args come first; keyword ``k`` becomes named argument ``p_k``.
    dicts are sent as jsonb, lists as arrays (wrap a JSON array in ``Jsonb``).
    """
    parts: list[sql.Composable] = [sql.Placeholder() for _ in args]
    parts += [
        sql.SQL("{} := {}").format(sql.Identifier(f"p_{k}"), sql.Placeholder()) for k in kwargs
    ]
    query = sql.SQL("select * from public.{}({})").format(
        sql.Identifier(fn), sql.SQL(", ").join(parts)
    )
    params = [_adapt(a) for a in args] + [_adapt(v) for v in kwargs.values()]
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else []


def scalar(conn: Conn, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def create_job(
    conn: Conn,
    user_id: uuid.UUID,
    job_type: str = "work",
    params: dict[str, Any] | None = None,
    **kwargs: Any,
) -> uuid.UUID:
    """A pending job for ``user_id`` (as admin: no rate limit)."""
    rows = call(
        conn,
        "create_job",
        user_id=user_id,
        job_type=job_type,
        params=params if params is not None else {},
        **kwargs,
    )
    job_id = rows[0]["create_job"]
    assert isinstance(job_id, uuid.UUID)
    return job_id


def job(conn: Conn, job_id: uuid.UUID) -> Row:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("select * from public.job_queue where id = %s", (job_id,))
        row = cur.fetchone()
    assert row is not None, f"job {job_id} does not exist"
    return row


def status(conn: Conn, job_id: uuid.UUID) -> str:
    return str(job(conn, job_id)["status"])


def claim(conn: Conn, worker: str = "w1", limit: int = 1, **kwargs: Any) -> list[Row]:
    return call(conn, "claim_jobs", worker_id=worker, limit=limit, **kwargs)


def claim_one(conn: Conn, job_id: uuid.UUID, worker: str = "w1") -> Row:
    """Start exactly ``job_id`` for ``worker`` (start_job, the targeted claim)."""
    rows = call(conn, "start_job", job_id, worker)
    assert len(rows) == 1
    return rows[0]


def job_in_state(conn: Conn, user_id: uuid.UUID, state: str, **kwargs: Any) -> uuid.UUID:
    """A job of ``user_id`` brought into ``state`` through the jobq functions."""
    job_id = create_job(conn, user_id, **kwargs)
    if state == "pending":
        return job_id
    if state in ("cancelled",):
        call(conn, "cancel_job", job_id)
        return job_id
    if state == "expired":
        conn.execute(
            "update public.job_queue set expires_at = now() - interval '1 second' where id = %s",
            (job_id,),
        )
        call(conn, "expire_stale_jobs")
        assert status(conn, job_id) == "expired"
        return job_id
    claim_one(conn, job_id)
    if state == "completed":
        call(conn, "complete_job", job_id, {"ok": True})
    elif state == "failed":
        call(conn, "fail_job", job_id, "boom", "E_TEST")
    else:
        assert state == "processing", state
    assert status(conn, job_id) == state
    return job_id


def digest(conn: Conn) -> tuple[Any, ...]:
    """Everything a jobq call could write: if this is unchanged, nothing was half-written."""
    row = conn.execute(
        """
        select (select count(*) from public.job_queue),
               (select md5(coalesce(string_agg(q::text, '|' order by q.id), ''))
                  from public.job_queue q),
               (select count(*) from public.job_log),
               (select md5(coalesce(string_agg(l::text, '|' order by l.id), ''))
                  from public.job_log l),
               (select c::text from public.job_queue_config c)
        """
    ).fetchone()
    assert row is not None
    return tuple(row)


@contextmanager
def raises_sqlstate(
    code: str, match: str | None = None
) -> Iterator[pytest.ExceptionInfo[psycopg.Error]]:
    """Expect a PostgreSQL error with this SQLSTATE (and a message matching ``match``)."""
    with pytest.raises(psycopg.Error) as info:
        yield info
    err = info.value
    assert err.sqlstate == code, f"expected SQLSTATE {code}, got {err.sqlstate}: {err}"
    if match is not None:
        message = err.diag.message_primary or ""
        assert re.search(match, message), f"message {message!r} does not match {match!r}"


def start_concurrently(
    conns: Sequence[Conn],
    work: Callable[[Conn, threading.Barrier], Any],
    *,
    timeout: float = 60.0,
) -> Callable[[], list[Any]]:
    """Start ``work(conn, barrier)`` in one thread per connection; returns ``join``,
    which waits for the threads and returns each one's result, or the psycopg.Error
    it raised, in connection order.

    ``work`` calls ``barrier.wait()`` right before the statement that must
    overlap with the other threads' ones.
    """
    barrier = threading.Barrier(len(conns), timeout=timeout)
    results: list[Any] = [None] * len(conns)

    def target(i: int, c: Conn) -> None:
        try:
            results[i] = work(c, barrier)
        except BaseException as e:  # psycopg errors are results; others fail in join()
            results[i] = e

    threads = [
        threading.Thread(target=target, args=(i, c), daemon=True) for i, c in enumerate(conns)
    ]
    for t in threads:
        t.start()

    def join() -> list[Any]:
        for t in threads:
            t.join(timeout)
            assert not t.is_alive(), "a worker thread did not finish"
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, psycopg.Error):
                raise r
        return results

    return join


def run_concurrently(
    conns: Sequence[Conn],
    work: Callable[[Conn, threading.Barrier], Any],
    *,
    timeout: float = 60.0,
) -> list[Any]:
    """:func:`start_concurrently` and wait for the results."""
    return start_concurrently(conns, work, timeout=timeout)()


def wait_until_blocked(conn: Conn, pids: Sequence[int], *, timeout: float = 30.0) -> None:
    """Return once every backend in ``pids`` waits on a lock (polls pg_locks)."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = scalar(
            conn,
            "select count(distinct pid) from pg_catalog.pg_locks "
            "where not granted and pid = any(%s)",
            (list(pids),),
        )
        if waiting == len(pids):
            return
        assert time.monotonic() < deadline, f"only {waiting} of {len(pids)} backends are waiting"
