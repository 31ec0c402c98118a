"""Client (sync) against a real, freshly migrated PostgreSQL database per test."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import pq, sql
from psycopg_pool import ConnectionPool

from jobq import (
    Client,
    Forbidden,
    InvalidInput,
    InvalidTransition,
    Job,
    NewJob,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    StatRow,
    queries,
)
from jobq.db import act_as

Connect = Callable[..., psycopg.Connection[Any]]

A = UUID("00000000-0000-4000-8000-00000000000a")
B = UUID("00000000-0000-4000-8000-00000000000b")


@pytest.fixture
def client(database_url: str) -> Iterator[Client]:
    with Client(database_url, max_size=4) as c:
        yield c


def _count(conn: psycopg.Connection[Any], where: str = "true") -> int:
    row = conn.execute(f"select count(*) from public.job_queue where {where}").fetchone()
    assert row is not None
    return int(row[0])


def _complete(conn: psycopg.Connection[Any], job_id: UUID, result: Any) -> None:
    """Run the one pending job to completion, as a worker would (admin connection)."""
    claimed = conn.execute("select id from public.claim_jobs('w', 1)").fetchall()
    assert claimed == [(job_id,)]
    conn.execute("select public.complete_job(%s, %s::jsonb, 'w')", (job_id, json.dumps(result)))


# --------------------------------------------------------------------------
# queries.sql
# --------------------------------------------------------------------------
def test_named_queries_load_by_name() -> None:
    names = queries.names()
    for name in (
        "create_job",
        "create_jobs",
        "find_or_create_job",
        "get_cached_job_result",
        "get_job",
        "get_user_jobs",
        "get_job_logs",
        "cancel_job",
        "retry_job",
        "get_job_queue_stats",
    ):
        assert name in names
        assert isinstance(queries.get(name), sql.SQL)
    with pytest.raises(KeyError, match="no query named"):
        queries.get("no_such_query")


def test_named_query_parser_rejects_duplicates_and_empty_blocks() -> None:
    assert queries.parse("-- name: a\nselect 1;\n-- name: b\n-- comment\nselect 2;\n") == {
        "a": "select 1",
        "b": "-- comment\nselect 2",
    }
    with pytest.raises(ValueError, match="twice"):
        queries.parse("-- name: a\nselect 1;\n-- name: a\nselect 2;\n")
    with pytest.raises(ValueError, match="empty"):
        queries.parse("-- name: a\n\n-- name: b\nselect 2;\n")


# --------------------------------------------------------------------------
# create / get
# --------------------------------------------------------------------------
def test_create_and_get(client: Client) -> None:
    run_after = datetime.fromisoformat("2030-01-01T00:00:00+00:00")
    job_id = client.create_job(
        "email.send",
        {"to": "a@example.com", "n": [1, 2]},
        user_id=A,
        priority=5,
        max_retries=7,
        run_after=run_after,
    )
    job = client.get_job(job_id)
    assert isinstance(job, Job)
    assert job.id == job_id
    assert job.user_id == A
    assert job.job_type == "email.send"
    assert job.status == "pending"
    assert job.params == {"to": "a@example.com", "n": [1, 2]}
    assert (job.priority, job.max_retries, job.attempts) == (5, 7, 0)
    assert job.run_after == run_after
    assert job.expires_at == run_after + timedelta(hours=24)
    assert client.get_job(str(job_id)) == job


def test_create_defaults_and_ttl_none_never_expires(client: Client) -> None:
    default = client.get_job(client.create_job("t", user_id=A))
    assert default.params == {}
    assert (default.priority, default.max_retries) == (0, 3)
    assert default.expires_at is not None
    assert default.expires_at - default.run_after == timedelta(hours=24)

    forever = client.get_job(client.create_job("t", user_id=A, ttl=None))
    assert forever.expires_at is None

    short = client.get_job(client.create_job("t", user_id=A, ttl=timedelta(minutes=1)))
    assert short.expires_at is not None
    assert short.expires_at - short.run_after == timedelta(minutes=1)


def test_service_client_must_name_the_user(client: Client) -> None:
    with pytest.raises(InvalidInput, match="p_user_id is required"):
        client.create_job("t")


def test_get_unknown_job_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound):
        client.get_job(uuid.uuid4())
    with pytest.raises(InvalidInput):
        client.get_job("not-a-uuid")


# --------------------------------------------------------------------------
# list: offset + total, cursor
# --------------------------------------------------------------------------
def test_list_jobs_offset_with_total_count(client: Client) -> None:
    a_ids = [client.create_job("a", {"i": i}, user_id=A, priority=i) for i in range(7)]
    client.create_job("b", user_id=B)
    client.create_job("b", user_id=B)

    first = client.list_jobs(user_id=A, limit=3)
    assert first.total_count == 7
    assert [j.id for j in first.jobs] == a_ids[::-1][:3]  # newest first

    last = client.list_jobs(user_id=A, limit=3, offset=6)
    assert last.total_count == 7
    assert [j.id for j in last.jobs] == [a_ids[0]]

    beyond = client.list_jobs(user_id=A, limit=3, offset=20)
    assert beyond.jobs == []
    assert beyond.total_count == 7

    assert client.list_jobs().total_count == 9  # service, no user: every user's jobs
    assert client.list_jobs(job_type="b").total_count == 2
    assert client.list_jobs(user_id=B, status="completed").total_count == 0
    assert client.list_jobs(user_id=uuid.uuid4()).jobs == []

    by_priority = client.list_jobs(user_id=A, order_by="priority", order_dir="ASC")
    assert [j.priority for j in by_priority.jobs] == list(range(7))

    contains = client.list_jobs(params_contains={"i": 3})
    assert [j.id for j in contains.jobs] == [a_ids[3]]
    assert contains.total_count == 1


def test_cursor_pagination_three_pages_no_duplicates_or_gaps(
    client: Client, conn: psycopg.Connection[Any]
) -> None:
    # Five jobs from one statement share created_at: the id tie-break must hold.
    bulk = client.create_jobs([NewJob("p", {"i": i}) for i in range(5)], user_id=A)
    singles = [client.create_job("p", {"i": 5 + i}, user_id=A) for i in range(3)]
    client.create_job("p", user_id=B)  # another user's job never shows up
    row = conn.execute(
        "select count(distinct created_at) from public.job_queue where id = any(%s)", (bulk,)
    ).fetchone()
    assert row == (1,)

    expected = [j.id for j in client.list_jobs(user_id=A, limit=100).jobs]
    assert set(expected) == set(bulk) | set(singles)

    user = client.as_user(A)
    pages = []
    cursor = None
    while True:
        page = user.list_jobs_page(cursor=cursor, limit=3)
        pages.append([j.id for j in page.jobs])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 2]
    flat = [i for p in pages for i in p]
    assert flat == expected  # same order, nothing missing, nothing twice
    assert len(set(flat)) == len(flat)

    # An exact multiple of the limit ends with an empty page and no cursor.
    two = user.list_jobs_page(limit=4)
    assert two.next_cursor is not None
    end = user.list_jobs_page(limit=4, cursor=two.next_cursor)
    assert len(end.jobs) == 4
    assert end.next_cursor is not None
    empty = user.list_jobs_page(limit=4, cursor=end.next_cursor)
    assert (empty.jobs, empty.next_cursor) == ([], None)

    filtered = client.list_jobs_page(limit=10, user_id=A, status="pending", job_type="p")
    assert [j.id for j in filtered.jobs] == expected


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64 !!",
        base64.urlsafe_b64encode(b"2024-01-01T00:00:00+00:00").decode(),  # no id
        base64.urlsafe_b64encode(b"yesterday|" + str(uuid.uuid4()).encode()).decode(),
        base64.urlsafe_b64encode(b"2024-01-01T00:00:00+00:00|nope").decode(),
        base64.urlsafe_b64encode(b"2024-01-01T00:00:00|" + str(uuid.uuid4()).encode()).decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_malformed_cursor_is_invalid_input(client: Client, cursor: str) -> None:
    with pytest.raises(InvalidInput, match="malformed cursor"):
        client.list_jobs_page(cursor=cursor)


# --------------------------------------------------------------------------
# bulk
# --------------------------------------------------------------------------
def test_bulk_create_1000_jobs_in_one_call(client: Client, conn: psycopg.Connection[Any]) -> None:
    jobs = [NewJob("bulk", {"i": i}, priority=i % 7) for i in range(1000)]
    ids = client.create_jobs(jobs, user_id=A)
    assert len(ids) == 1000
    assert len(set(ids)) == 1000
    rows = conn.execute(
        "select id, (params->>'i')::int, priority, user_id from public.job_queue"
    ).fetchall()
    assert len(rows) == 1000
    index = {r[0]: r[1] for r in rows}
    assert [index[i] for i in ids] == list(range(1000))  # ids come back in input order
    assert all(r[2] == r[1] % 7 and r[3] == A for r in rows)


def test_bulk_create_mappings_users_and_options(
    client: Client, conn: psycopg.Connection[Any]
) -> None:
    run_after = datetime.fromisoformat("2031-05-01T12:00:00+00:00")
    ids = client.create_jobs(
        [
            {"job_type": "m", "params": {"x": 1}, "user_id": A},
            NewJob("m", user_id=B, ttl=None, run_after=run_after, max_retries=0),
            {"job_type": "m", "user_id": str(B), "ttl": timedelta(seconds=90)},
        ]
    )
    a, b1, b2 = (client.get_job(i) for i in ids)
    assert (a.user_id, a.params) == (A, {"x": 1})
    assert (b1.user_id, b1.expires_at, b1.run_after, b1.max_retries) == (B, None, run_after, 0)
    assert b2.expires_at is not None
    assert b2.expires_at - b2.run_after == timedelta(seconds=90)

    # Service without a user: every job must name one (the SQL says so).
    with pytest.raises(InvalidInput, match="every job needs a user_id"):
        client.create_jobs([NewJob("m", user_id=A), NewJob("m")])
    # A bad element fails the whole call: nothing of it is inserted.
    with pytest.raises(InvalidInput, match="invalid job_type"):
        client.create_jobs([NewJob("ok"), NewJob("not ok")], user_id=A)
    with pytest.raises(InvalidInput, match="bad job"):
        client.create_jobs([{"job_type": "m", "colour": "red"}], user_id=A)
    with pytest.raises(InvalidInput, match="not JSON-serialisable"):
        client.create_jobs([NewJob("m", {"when": datetime.now()})], user_id=A)
    assert _count(conn) == 3
    assert client.create_jobs([], user_id=A) == []


def test_bulk_create_as_user_is_limited_and_all_or_nothing(
    client: Client, conn: psycopg.Connection[Any]
) -> None:
    user = client.as_user(A)
    with pytest.raises(RateLimited):
        user.create_jobs([NewJob("r") for _ in range(11)])
    assert _count(conn) == 0
    with pytest.raises(Forbidden):
        user.create_jobs([NewJob("r", user_id=B)])
    ids = user.create_jobs([NewJob("r") for _ in range(10)])
    assert {client.get_job(i).user_id for i in ids} == {A}


# --------------------------------------------------------------------------
# dedup and cache
# --------------------------------------------------------------------------
def test_find_or_create_dedups_within_the_window(client: Client) -> None:
    first = client.find_or_create_job("report", {"month": "2024-05"}, user_id=A)
    assert first.created
    assert first.status == "pending"
    again = client.find_or_create_job("report", {"month": "2024-05"}, user_id=A)
    assert (again.job_id, again.created, again.status) == (first.job_id, False, "pending")

    other_params = client.find_or_create_job("report", {"month": "2024-06"}, user_id=A)
    assert other_params.created
    assert other_params.job_id != first.job_id
    other_user = client.find_or_create_job("report", {"month": "2024-05"}, user_id=B)
    assert other_user.created

    outside = client.find_or_create_job(
        "report", {"month": "2024-05"}, user_id=A, dedupe_window=timedelta(0)
    )
    assert outside.created
    assert outside.job_id != first.job_id

    user = client.as_user(A)
    mine = user.find_or_create_job("report", {"month": "2024-05"})
    assert not mine.created
    assert mine.job_id == outside.job_id  # the newest equal job


def test_cached_result_is_honoured(client: Client, conn: psycopg.Connection[Any]) -> None:
    params = {"url": "https://example.com"}
    assert client.get_cached_job_result("fetch", params, user_id=A) is None
    job_id = client.create_job("fetch", params, user_id=A)
    assert client.get_cached_job_result("fetch", params, user_id=A) is None  # not completed
    _complete(conn, job_id, {"status": 200, "body": "ok"})

    hit = client.get_cached_job_result("fetch", params, user_id=A)
    assert hit is not None
    assert (hit.job_id, hit.result) == (job_id, {"status": 200, "body": "ok"})
    assert hit.completed_at == client.get_job(job_id).completed_at

    assert client.as_user(A).get_cached_job_result("fetch", params) == hit
    assert client.get_cached_job_result("fetch", params, user_id=A, ttl=timedelta(0)) is None
    assert client.get_cached_job_result("fetch", {"url": "other"}, user_id=A) is None
    assert client.get_cached_job_result("fetch", params, user_id=B) is None
    assert client.as_user(B).get_cached_job_result("fetch", params) is None


# --------------------------------------------------------------------------
# identity: as_user, RLS, caller checks
# --------------------------------------------------------------------------
def test_as_user_sees_and_touches_only_own_jobs(
    client: Client, conn: psycopg.Connection[Any]
) -> None:
    alice, bob = client.as_user(A), client.as_user(str(B))
    assert (alice.user_id, alice.role, client.user_id, client.role) == (
        A,
        "authenticated",
        None,
        "service_role",
    )
    mine = alice.create_job("own", {"k": 1})
    assert client.get_job(mine).user_id == A
    conn.execute("select public.add_job_log(%s, 'info', 'hello')", (mine,))

    assert alice.get_job(mine).id == mine
    assert [j.id for j in alice.list_jobs().jobs] == [mine]
    assert alice.get_logs(mine).total_count == 1

    with pytest.raises(NotFound):
        bob.get_job(mine)
    with pytest.raises(NotFound):
        bob.cancel_job(mine)
    with pytest.raises(NotFound):
        bob.retry_job(mine)
    with pytest.raises(NotFound):
        bob.get_logs(mine)
    assert bob.list_jobs().total_count == 0
    assert bob.list_jobs_page().jobs == []
    assert bob.stats() == []
    with pytest.raises(Forbidden):
        bob.list_jobs(user_id=A)
    with pytest.raises(Forbidden):
        bob.create_job("own", user_id=A)
    with pytest.raises(Forbidden):
        bob.stats(user_id=A)
    with pytest.raises(Forbidden):
        bob.find_or_create_job("own", user_id=A)

    assert alice.cancel_job(mine) == "cancelled"
    with pytest.raises(InvalidTransition):
        alice.cancel_job(mine)
    assert client.get_job(mine).status == "cancelled"

    with pytest.raises(InvalidInput, match="not a UUID"):
        client.as_user("alice")


def test_views_share_the_pool_and_do_not_close_it(database_url: str) -> None:
    with Client(database_url, max_size=2) as c:
        view = c.as_user(A)
        assert view.pool is c.pool
        view.close()
        view.create_job("still-open")
    assert c.pool.closed


def test_a_pool_passed_in_stays_the_callers(database_url: str) -> None:
    with ConnectionPool(database_url, min_size=1, max_size=2, open=True) as pool:
        with pytest.raises(ValueError, match="not both"):
            Client(database_url, pool=pool)
        with Client(pool=pool) as c:
            job_id = c.create_job("t", user_id=A)
        assert not pool.closed
        assert Client(pool=pool).get_job(job_id).user_id == A


def test_rate_limited_at_the_eleventh_active_job(
    client: Client, conn: psycopg.Connection[Any]
) -> None:
    user = client.as_user(A)
    ids = [user.create_job("r", {"i": i}) for i in range(10)]
    with pytest.raises(RateLimited) as info:
        user.create_job("r", {"i": 10})
    assert info.value.sqlstate == "53400"
    with pytest.raises(RateLimited):
        user.find_or_create_job("r", {"i": 10})
    assert _count(conn) == 10
    # The service is trusted and not limited; another user has their own budget.
    client.create_job("r", user_id=A)
    client.as_user(B).create_job("r")
    # Finishing one active job makes room again.
    user.cancel_job(ids[0])
    user.cancel_job(ids[1])
    user.create_job("r", {"i": 11})


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.create_job("bad type!", user_id=A), "invalid job_type"),
        (lambda c: c.create_job("", user_id=A), "invalid job_type"),
        (lambda c: c.create_job("t", [1, 2], user_id=A), "params must be a JSON object"),
        (lambda c: c.create_job("t", "text", user_id=A), "params must be a JSON object"),
        (lambda c: c.create_job("t", user_id=A, priority=1000), "priority"),
        (lambda c: c.create_job("t", user_id=A, max_retries=-1), "max_retries"),
        (lambda c: c.create_job("t", user_id=A, ttl=timedelta(0)), "ttl must be positive"),
        (lambda c: c.create_job("t", user_id="nobody"), "uuid"),
        (lambda c: c.list_jobs(order_by="params"), "p_order_by"),
        (lambda c: c.list_jobs(order_dir="sideways"), "p_order_dir"),
        (lambda c: c.list_jobs(limit=0), "p_limit"),
        (lambda c: c.list_jobs(limit=1001), "p_limit"),
        (lambda c: c.list_jobs(offset=-1), "p_offset"),
        (lambda c: c.list_jobs(status="done"), "unknown status"),
        (lambda c: c.list_jobs_page(limit=0), "p_limit"),
        (lambda c: c.get_logs(uuid.uuid4(), level="loud"), "level"),
        (lambda c: c.find_or_create_job("t", user_id=A, dedupe_window=timedelta(-1)), "window"),
        (lambda c: c.get_cached_job_result("t", [1], user_id=A), "JSON object"),
    ],
)
def test_invalid_input(client: Client, call: Callable[[Client], object], match: str) -> None:
    with pytest.raises(InvalidInput, match=match) as info:
        call(client)
    assert info.value.sqlstate is not None
    assert info.value.sqlstate.startswith("22")


def test_unserialisable_params_fail_before_any_sql(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    # A pool of one connection that cannot be opened would fail any SQL.
    with Client(database_url, max_size=1) as c:
        c.pool.close()
        for bad in ({"x": object()}, {"x": float("nan")}, {"when": datetime.now()}):
            with pytest.raises(InvalidInput, match="not JSON-serialisable") as info:
                c.create_job("t", bad, user_id=A)
            assert info.value.sqlstate is None
        with pytest.raises(InvalidInput, match="not JSON-serialisable"):
            c.find_or_create_job("t", {"x": {1, 2}}, user_id=A)
        with pytest.raises(InvalidInput, match="not JSON-serialisable"):
            c.list_jobs(params_contains={"x": b"bytes"})
        with pytest.raises(InvalidInput, match="malformed cursor"):
            c.list_jobs_page(cursor="%%%")
    assert _count(conn) == 0


def test_payload_too_large(client: Client) -> None:
    with pytest.raises(PayloadTooLarge):
        client.create_job("big", {"blob": "x" * 70_000}, user_id=A)


# --------------------------------------------------------------------------
# logs, cancel, retry, stats
# --------------------------------------------------------------------------
def test_logs_paged_filtered_and_searched(client: Client, conn: psycopg.Connection[Any]) -> None:
    job_id = client.create_job("l", user_id=A)
    for i in range(5):
        conn.execute(
            "select public.add_job_log(%s, %s, %s, %s::jsonb)",
            (
                job_id,
                "error" if i == 4 else "info",
                f"step {i} of the upload",
                json.dumps({"i": i}),
            ),
        )
    page = client.get_logs(job_id, limit=2)
    assert page.total_count == 5
    assert [log.message for log in page.logs] == ["step 4 of the upload", "step 3 of the upload"]
    assert page.logs[0].metadata == {"i": 4}
    assert page.logs[0].job_id == job_id
    assert client.get_logs(job_id, offset=4).total_count == 5
    beyond = client.get_logs(job_id, offset=10)
    assert (beyond.logs, beyond.total_count) == ([], 5)
    errors = client.get_logs(job_id, level="error")
    assert [log.level for log in errors.logs] == ["error"]
    assert client.get_logs(job_id, search="step 2").total_count == 1
    empty = client.get_logs(client.create_job("l", user_id=A))
    assert (empty.logs, empty.total_count) == ([], 0)
    with pytest.raises(NotFound):
        client.get_logs(uuid.uuid4())


def test_cancel_and_retry(client: Client, conn: psycopg.Connection[Any]) -> None:
    pending = client.create_job("c", user_id=A)
    assert client.cancel_job(pending) == "cancelled"
    with pytest.raises(InvalidTransition):
        client.cancel_job(pending)
    with pytest.raises(InvalidTransition, match="only failed jobs"):
        client.retry_job(pending)
    with pytest.raises(NotFound):
        client.cancel_job(uuid.uuid4())

    failing = client.create_job("c", user_id=A, max_retries=0)
    conn.execute("select public.claim_jobs('w', 1)")
    conn.execute("select public.fail_job(%s, 'boom', 'E_BOOM', false, 'w')", (failing,))
    job = client.get_job(failing)
    assert (job.status, job.error_code, job.next_retry_at) == ("failed", "E_BOOM", None)
    assert client.as_user(A).retry_job(failing) == "pending"
    job = client.get_job(failing)
    assert (job.status, job.max_retries) == ("pending", 1)


def test_stats(client: Client, conn: psycopg.Connection[Any]) -> None:
    done = client.create_job("s", user_id=A)
    _complete(conn, done, {"ok": True})
    client.create_job("s", user_id=A)
    client.create_job("s", user_id=B)
    client.create_job("t", user_id=B)

    every = client.stats()
    assert all(isinstance(r, StatRow) for r in every)
    assert {(r.job_type, r.status, r.job_count) for r in every} == {
        ("s", "completed", 1),
        ("s", "pending", 2),
        ("t", "pending", 1),
    }
    completed = next(r for r in every if r.status == "completed")
    assert completed.avg_duration_ms is not None
    assert completed.avg_duration_ms >= 0

    mine = client.as_user(A).stats()
    assert {(r.job_type, r.status, r.job_count) for r in mine} == {
        ("s", "completed", 1),
        ("s", "pending", 1),
    }
    assert client.stats(user_id=B, since=datetime.fromisoformat("2999-01-01T00:00:00+00:00")) == []


# --------------------------------------------------------------------------
# transactional enqueue on the caller's connection
# --------------------------------------------------------------------------
@pytest.fixture
def orders(conn: psycopg.Connection[Any]) -> None:
    conn.execute("create table public.orders (id int primary key)")


@pytest.mark.usefixtures("orders")
def test_enqueue_commits_with_the_callers_transaction(
    client: Client, make_conn: Connect, conn: psycopg.Connection[Any]
) -> None:
    with make_conn(autocommit=False) as mine:
        mine.execute("insert into public.orders values (1)")
        job_id = client.create_job("ship", {"order": 1}, user_id=A, conn=mine)
        assert mine.info.transaction_status == pq.TransactionStatus.INTRANS
        # Not visible to anyone else until the caller commits.
        with pytest.raises(NotFound):
            client.get_job(job_id)
        assert client.get_job(job_id, conn=mine).status == "pending"  # but to the caller
        mine.commit()
    assert client.get_job(job_id).params == {"order": 1}
    assert conn.execute("select count(*) from public.orders").fetchone() == (1,)


@pytest.mark.usefixtures("orders")
def test_enqueue_rolls_back_with_the_callers_transaction(
    client: Client, make_conn: Connect, conn: psycopg.Connection[Any]
) -> None:
    mine = make_conn()  # autocommit, with an explicit transaction block
    with mine.transaction():
        mine.execute("insert into public.orders values (2)")
        ids = client.create_jobs([NewJob("ship"), NewJob("ship")], user_id=A, conn=mine)
        found = client.find_or_create_job("ship2", user_id=A, conn=mine)
        assert _count(mine) == 3
        raise psycopg.Rollback  # the caller changes its mind
    assert _count(conn) == 0
    assert conn.execute("select count(*) from public.orders").fetchone() == (0,)
    for job_id in [*ids, found.job_id]:
        with pytest.raises(NotFound):
            client.get_job(job_id)


def test_callers_role_and_claims_are_restored(client: Client, make_conn: Connect) -> None:
    mine = make_conn(autocommit=False)
    identity = "select current_user, current_setting('role'), auth.uid()"
    before = mine.execute(identity).fetchone()
    client.create_job("t", user_id=A, conn=mine)
    assert mine.execute(identity).fetchone() == before  # the session user again, not service_role
    client.as_user(B).create_job("t", conn=mine)
    assert mine.execute(identity).fetchone() == before
    mine.commit()

    # A caller that acts as a user itself gets that user back after a service call.
    with mine.transaction():
        act_as(mine, "authenticated", A)
        service_job = client.create_job("t", user_id=B, conn=mine)
        assert mine.execute(identity).fetchone() == ("authenticated", "authenticated", A)
        # ... and RLS applies to the caller again: B's job is invisible to A.
        assert mine.execute(
            "select count(*) from public.job_queue where id = %s", (service_job,)
        ).fetchone() == (0,)
        # A Python-side error (no row -> NotFound) after the SQL ran restores too.
        with pytest.raises(NotFound):
            client.get_job(uuid.uuid4(), conn=mine)
        assert mine.execute(identity).fetchone() == ("authenticated", "authenticated", A)
        with pytest.raises(NotFound):
            client.as_user(A).get_job(service_job, conn=mine)
    assert client.get_job(service_job).user_id == B


def test_error_on_the_callers_connection_aborts_its_transaction(
    client: Client, make_conn: Connect, conn: psycopg.Connection[Any]
) -> None:
    mine = make_conn(autocommit=False)
    client.create_job("t", user_id=A, conn=mine)
    with pytest.raises(InvalidInput):
        client.create_job("bad type", user_id=A, conn=mine)
    assert mine.info.transaction_status == pq.TransactionStatus.INERROR
    mine.rollback()
    assert _count(conn) == 0
    assert mine.execute("select current_setting('role')").fetchone() == ("none",)


def test_autocommit_connection_outside_a_block_runs_its_own_transaction(
    client: Client, make_conn: Connect
) -> None:
    mine = make_conn()  # autocommit, idle
    job_id = client.as_user(A).create_job("t", conn=mine)
    assert mine.info.transaction_status == pq.TransactionStatus.IDLE
    assert client.get_job(job_id).user_id == A  # committed already
    assert mine.execute("select current_setting('role')").fetchone() == ("none",)


# --------------------------------------------------------------------------
# find_or_create_job with a start time and ttl; the user's full claims; NUL bytes
# --------------------------------------------------------------------------
def test_find_or_create_job_takes_run_after_and_ttl(
    client: Client, conn: psycopg.Connection[Any]
) -> None:
    later = datetime.now().astimezone() + timedelta(hours=2)
    made = client.find_or_create_job("report", {"n": 1}, user_id=A, run_after=later, ttl=None)
    assert made.created
    row = conn.execute(
        "select run_after, expires_at from public.job_queue where id = %s", (made.job_id,)
    ).fetchone()
    assert row is not None
    assert abs((row[0] - later).total_seconds()) < 0.001
    assert row[1] is None, "ttl None: never expires"
    again = client.find_or_create_job("report", {"n": 1}, user_id=A)
    assert (again.job_id, again.created) == (made.job_id, False)


def test_as_user_passes_the_rest_of_the_jwt_to_sql(
    client: Client, conn: psycopg.Connection[Any]
) -> None:
    """auth.jwt() sees what PostgREST would show it (email, session_id ...)."""
    # record the claims every insert runs with
    conn.execute(
        """
        create table public.seen_claims (claims jsonb);
        create function record_claims() returns trigger language plpgsql as $$
        begin insert into public.seen_claims values (auth.jwt()); return new; end $$;
        create trigger record_claims after insert on public.job_queue
            for each row execute function record_claims();
        """
    )
    user = client.as_user(A, {"email": "ada@example.com", "role": "service_role"})
    job_id = user.create_job("x")
    claims = conn.execute("select claims from seen_claims").fetchone()
    assert claims is not None
    assert claims[0] == {"email": "ada@example.com", "role": "authenticated", "sub": str(A)}
    # a claim cannot change the role: the view still acts as authenticated for A
    assert user.get_job(job_id).user_id == A
    with pytest.raises(NotFound):
        client.as_user(B, {"role": "service_role"}).get_job(job_id)


def test_nul_byte_in_a_string_is_invalid_input(client: Client) -> None:
    with pytest.raises(InvalidInput):
        client.create_job("bad\x00type", user_id=A)


def _frontend_messages(trace: str) -> list[str]:
    """The message types libpq sent, from a PQtrace file (``F <len> <Type> ...``)."""
    return [line.split("\t")[2] for line in trace.splitlines() if line.startswith("F\t")]


@pytest.mark.parametrize("fails", [False, True])
def test_a_pooled_call_is_one_message_and_leaves_no_identity_behind(
    database_url: str, tmp_path: Any, fails: bool
) -> None:
    # A pool of the caller's (not autocommit) with one connection, traced at the
    # protocol level: the identity switch and the call travel as one Query
    # message (one round trip, one implicit transaction), whether the call
    # succeeds or is refused, and the connection goes back as it came.
    trace_path = tmp_path / "libpq.trace"
    with (
        ConnectionPool(database_url, min_size=1, max_size=1, open=True) as pool,
        open(trace_path, "w") as trace,
    ):
        user = Client(pool=pool).as_user(A)
        if fails:
            for i in range(10):
                user.create_job(f"fill.{i}")
        with pool.connection() as conn:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        if fails:
            with pytest.raises(RateLimited):
                user.create_job("one.too.many")
        else:
            user.create_job("traced")
        with pool.connection() as conn:
            conn.pgconn.untrace()
            assert not conn.autocommit
            assert conn.info.transaction_status == pq.TransactionStatus.IDLE
            row = conn.execute(
                "select current_user = session_user,"
                " coalesce(current_setting('request.jwt.claims', true), '')"
            ).fetchone()
            assert row == (True, "")
            conn.rollback()
    assert _frontend_messages(trace_path.read_text()) == ["Query"]


def test_get_jobs_reads_many_and_hides_what_is_not_the_callers(client: Client) -> None:
    mine = [client.as_user(A).create_job(f"poll.{i}") for i in range(3)]
    theirs = client.as_user(B).create_job("poll.b")
    unknown = uuid.uuid4()
    got = client.as_user(A).get_jobs([*mine, str(theirs), unknown])
    assert set(got) == set(mine)
    assert all(got[j].user_id == A and got[j].id == j for j in mine)
    # the service sees every job; an empty list reads nothing
    assert set(client.get_jobs([*mine, theirs])) == {*mine, theirs}
    assert client.as_user(A).get_jobs([]) == {}


@pytest.mark.parametrize(
    ("ids", "match"),
    [(["not-a-uuid"], "malformed job id"), ([uuid.uuid4()] * 1001, "at most 1000")],
)
def test_get_jobs_refuses_bad_ids_before_any_sql(
    client: Client, ids: list[Any], match: str
) -> None:
    with pytest.raises(InvalidInput, match=match):
        client.as_user(A).get_jobs(ids)
