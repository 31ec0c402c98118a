"""AsyncClient against a real, freshly migrated PostgreSQL database per test.

No pytest-asyncio: each test runs its coroutine with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import pq

from jobq import (
    AsyncClient,
    Forbidden,
    InvalidInput,
    InvalidTransition,
    NewJob,
    NotFound,
    RateLimited,
)
from jobq.db import act_as_async

A = UUID("00000000-0000-4000-8000-00000000000a")
B = UUID("00000000-0000-4000-8000-00000000000b")


def run(database_url: str, body: Callable[[AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with AsyncClient(database_url, max_size=4) as client:
            await body(client)

    asyncio.run(main())


def test_create_get_cancel(database_url: str) -> None:
    async def body(client: AsyncClient) -> None:
        job_id = await client.create_job("a.b", {"x": 1}, user_id=A, priority=3, ttl=None)
        job = await client.get_job(job_id)
        assert (job.id, job.user_id, job.job_type, job.status) == (job_id, A, "a.b", "pending")
        assert (job.params, job.priority, job.expires_at) == ({"x": 1}, 3, None)
        assert await client.cancel_job(job_id) == "cancelled"
        assert (await client.get_job(job_id)).status == "cancelled"
        with pytest.raises(InvalidTransition):
            await client.cancel_job(job_id)
        with pytest.raises(InvalidTransition):
            await client.retry_job(job_id)
        with pytest.raises(NotFound):
            await client.get_job(uuid.uuid4())

    run(database_url, body)


def test_pool_opens_lazily_and_closes(database_url: str) -> None:
    async def main() -> None:
        client = AsyncClient(database_url, max_size=2)
        assert client.pool.closed
        # The pool opens on first use, also when that use is through a view.
        job_id = await client.as_user(A).create_job("lazy")
        assert not client.pool.closed
        view = client.as_user(A)
        await view.close()  # a view does not own the pool
        assert (await view.get_job(job_id)).user_id == A
        await client.close()
        assert client.pool.closed

    asyncio.run(main())


def test_list_offset_and_cursor(database_url: str) -> None:
    async def body(client: AsyncClient) -> None:
        bulk = await client.create_jobs([NewJob("p", {"i": i}) for i in range(4)], user_id=A)
        singles = [await client.create_job("p", {"i": 4 + i}, user_id=A) for i in range(3)]
        await client.create_job("p", user_id=B)

        page = await client.list_jobs(user_id=A, limit=3, offset=3)
        assert page.total_count == 7
        assert len(page.jobs) == 3
        beyond = await client.list_jobs(user_id=A, offset=50)
        assert (beyond.jobs, beyond.total_count) == ([], 7)
        expected = [j.id for j in (await client.list_jobs(user_id=A)).jobs]
        assert set(expected) == set(bulk) | set(singles)

        user = client.as_user(A)
        seen: list[UUID] = []
        sizes = []
        cursor = None
        while True:
            cp = await user.list_jobs_page(cursor=cursor, limit=3)
            seen += [j.id for j in cp.jobs]
            sizes.append(len(cp.jobs))
            cursor = cp.next_cursor
            if cursor is None:
                break
        assert sizes == [3, 3, 1]
        assert seen == expected

        with pytest.raises(InvalidInput, match="malformed cursor"):
            await client.list_jobs_page(cursor="garbage")

    run(database_url, body)


def test_bulk_1000(database_url: str) -> None:
    async def body(client: AsyncClient) -> None:
        ids = await client.create_jobs(
            [{"job_type": "bulk", "params": {"i": i}} for i in range(1000)], user_id=B
        )
        assert len(set(ids)) == 1000
        page = await client.list_jobs(user_id=B, limit=1000, params_contains={"i": 999})
        assert [j.id for j in page.jobs] == [ids[999]]
        assert (await client.list_jobs(user_id=B, limit=1)).total_count == 1000

    run(database_url, body)


def test_as_user_isolation_and_errors(database_url: str) -> None:
    async def body(client: AsyncClient) -> None:
        alice, bob = client.as_user(A), client.as_user(B)
        mine = await alice.create_job("own")
        assert (await alice.get_job(mine)).user_id == A
        with pytest.raises(NotFound):
            await bob.get_job(mine)
        with pytest.raises(NotFound):
            await bob.cancel_job(mine)
        with pytest.raises(NotFound):
            await bob.get_logs(mine)
        with pytest.raises(Forbidden):
            await bob.create_job("own", user_id=A)
        with pytest.raises(Forbidden):
            await bob.list_jobs(user_id=A)
        assert (await bob.list_jobs()).total_count == 0

        for i in range(9):
            await alice.create_job("own", {"i": i})
        with pytest.raises(RateLimited):
            await alice.create_job("own", {"i": 9})

        with pytest.raises(InvalidInput, match="invalid job_type"):
            await client.create_job("no spaces", user_id=A)
        with pytest.raises(InvalidInput, match="params must be a JSON object"):
            await client.create_job("t", [1], user_id=A)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="not JSON-serialisable"):
            await client.create_job("t", {"x": object()}, user_id=A)
        with pytest.raises(InvalidInput, match="p_order_by"):
            await client.list_jobs(order_by="nope")
        with pytest.raises(InvalidInput, match="p_limit"):
            await client.list_jobs(limit=0)
        with pytest.raises(InvalidInput, match="p_user_id is required"):
            await client.create_job("t")

    run(database_url, body)


def test_dedup_cache_logs_stats(database_url: str, conn: psycopg.Connection[Any]) -> None:
    async def body(client: AsyncClient) -> None:
        first = await client.find_or_create_job("r", {"k": 1}, user_id=A)
        again = await client.find_or_create_job("r", {"k": 1}, user_id=A)
        assert (first.created, again.created, again.job_id) == (True, False, first.job_id)
        fresh = await client.find_or_create_job(
            "r", {"k": 1}, user_id=A, dedupe_window=timedelta(0)
        )
        assert fresh.created
        assert fresh.job_id != first.job_id

        await client.cancel_job(fresh.job_id)
        conn.execute("select public.claim_jobs('w', 1)")
        conn.execute(
            "select public.complete_job(%s, %s::jsonb, 'w')",
            (first.job_id, json.dumps({"answer": 42})),
        )
        conn.execute("select public.add_job_log(%s, 'info', 'done')", (first.job_id,))
        hit = await client.as_user(A).get_cached_job_result("r", {"k": 1})
        assert hit is not None
        assert (hit.job_id, hit.result) == (first.job_id, {"answer": 42})
        assert (
            await client.get_cached_job_result("r", {"k": 1}, user_id=A, ttl=timedelta(0)) is None
        )

        logs = await client.get_logs(first.job_id)
        assert (logs.total_count, [log.message for log in logs.logs]) == (1, ["done"])
        stats = await client.stats(user_id=A)
        assert {(s.status, s.job_count) for s in stats} == {("completed", 1), ("cancelled", 1)}

    run(database_url, body)


def test_transactional_enqueue_on_the_callers_async_connection(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("create table public.orders (id int primary key)")

    async def body(client: AsyncClient) -> None:
        async with await psycopg.AsyncConnection.connect(database_url) as mine:
            identity = "select current_user, current_setting('role'), auth.uid()"
            before = await (await mine.execute(identity)).fetchone()

            await mine.execute("insert into public.orders values (1)")
            kept = await client.create_job("ship", user_id=A, conn=mine)
            assert mine.info.transaction_status == pq.TransactionStatus.INTRANS
            assert await (await mine.execute(identity)).fetchone() == before
            with pytest.raises(NotFound):
                await client.get_job(kept)  # not committed yet
            await mine.commit()
            assert (await client.get_job(kept)).user_id == A

            async with mine.transaction():
                await act_as_async(mine, "authenticated", B)
                await mine.execute("select 1")
                dropped = await client.as_user(B).create_job("ship", conn=mine)
                with pytest.raises(NotFound):
                    await client.get_job(uuid.uuid4(), conn=mine)
                row = await (await mine.execute(identity)).fetchone()
                assert row == ("authenticated", "authenticated", B)
                raise psycopg.Rollback
            with pytest.raises(NotFound):
                await client.get_job(dropped)

            with pytest.raises(InvalidInput):
                await client.create_job("bad type", user_id=A, conn=mine)
            assert mine.info.transaction_status == pq.TransactionStatus.INERROR
            await mine.rollback()

    run(database_url, body)
    assert conn.execute("select count(*) from public.orders").fetchone() == (1,)
    assert conn.execute("select count(*) from public.job_queue").fetchone() == (1,)


def test_get_jobs_and_the_callers_pool_comes_back_unchanged(database_url: str) -> None:
    # A pool of the caller's (not autocommit): the one-message path borrows its
    # connection in autocommit and hands it back as it came, identity unset.
    from psycopg_pool import AsyncConnectionPool

    async def main() -> None:
        async with AsyncConnectionPool(database_url, min_size=1, max_size=1) as pool:
            client = AsyncClient(pool=pool)
            mine = await client.as_user(A).create_job("poll.a")
            theirs = await client.as_user(B).create_job("poll.b")
            assert set(await client.as_user(A).get_jobs([mine, theirs])) == {mine}
            for i in range(9):
                await client.as_user(A).create_job(f"fill.{i}")
            with pytest.raises(RateLimited):
                await client.as_user(A).create_job("one.too.many")
            async with pool.connection() as conn:
                assert not conn.autocommit
                cur = await conn.execute(
                    "select current_user = session_user,"
                    " coalesce(current_setting('request.jwt.claims', true), '')"
                )
                assert await cur.fetchone() == (True, "")
                assert conn.info.transaction_status == pq.TransactionStatus.INTRANS

    asyncio.run(main())
