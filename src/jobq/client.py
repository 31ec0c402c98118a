"""Client and AsyncClient: enqueue, query, cancel. Thin over the SQL functions.

Every call is one transaction in which the client first acts as its identity,
the way PostgREST does (``set_config('role', ...)`` and
``set_config('request.jwt.claims', ...)``, local to the transaction):

* a bare client acts as ``service_role`` (trusted, sees every job);
* ``client.as_user(user_id)`` acts as ``authenticated`` with ``sub = user_id``,
  so RLS and the SQL functions' caller checks decide what it may see and do.
  Python never authorises anything itself: it only sets the claims.

Transactional enqueue: pass ``conn=`` (your own psycopg connection) and the
call runs on it, inside your transaction, so the job commits or rolls back
with your data. No savepoint is taken (savepoints in a long transaction cost
subtransactions); an error therefore aborts your transaction, as any failed
statement would. The role and claims in force before the call are restored
after it, so your next statements do not run as the client's identity. On an
autocommit connection outside a transaction block the call runs in a
transaction of its own.

The operations themselves (SQL name, parameters, parsing) live in
:mod:`jobq._ops`, shared by both clients.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar
from uuid import UUID

import psycopg
from psycopg import pq, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from jobq import _ops, queries
from jobq._ops import (
    DEFAULT_CACHE_TTL,
    DEFAULT_DEDUPE_WINDOW,
    DEFAULT_TTL,
    CachedResult,
    CursorPage,
    DedupResult,
    JobId,
    JobPage,
    LogPage,
    NewJob,
    Op,
    Row,
    UserId,
)
from jobq.db import act_as, act_as_async, as_identity_params, as_identity_query, database_url
from jobq.errors import InvalidInput, translated
from jobq.models import DepthRow, Job, StatRow, Throughput

__all__ = [
    "AsyncClient",
    "CachedResult",
    "Client",
    "CursorPage",
    "DedupResult",
    "JobPage",
    "LogPage",
    "NewJob",
]

T = TypeVar("T")
SyncConn: TypeAlias = psycopg.Connection[Any]
AsyncConn: TypeAlias = psycopg.AsyncConnection[Any]

SERVICE_ROLE = "service_role"
USER_ROLE = "authenticated"


def _user_uuid(user_id: UserId) -> UUID:
    try:
        return user_id if isinstance(user_id, UUID) else UUID(str(user_id))
    except ValueError as exc:
        raise InvalidInput(f"user_id {user_id!r} is not a UUID") from exc


def _runs_alone(conn: SyncConn | AsyncConn) -> bool:
    """True when ``conn`` is autocommit and outside a transaction block.

    Then the call needs a transaction of its own (local settings and the call
    must share one). Otherwise it joins the transaction in progress, or the one
    psycopg begins implicitly on a non-autocommit connection.
    """
    return conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE


# _POOLED_PATH: on a connection of the client's pool, a query and the identity
# switch before it go as one simple-protocol message (client-side binding; every
# named query casts its parameters), which PostgreSQL runs as one implicit
# transaction: one round trip instead of four (BEGIN, switch, query, COMMIT).
# An operation that needs a second query (a page past the last one asks for the
# total) sends it the same way, as a transaction of its own; both are reads.


@functools.cache
def _one_message(name: str) -> sql.Composed:
    """The named query behind the identity switch, composed once per name."""
    return as_identity_query(queries.get(name))


@contextmanager
def _autocommit(conn: SyncConn) -> Iterator[None]:
    """Autocommit while the client uses a pooled connection (it may be the caller's pool)."""
    if conn.autocommit:
        yield
        return
    conn.autocommit = True
    try:
        yield
    finally:
        if not conn.closed:
            conn.autocommit = False


@asynccontextmanager
async def _autocommit_async(conn: AsyncConn) -> AsyncIterator[None]:
    if conn.autocommit:
        yield
        return
    await conn.set_autocommit(True)
    try:
        yield
    finally:
        if not conn.closed:
            await conn.set_autocommit(False)


class _Identity:
    """Who a client acts as: service_role, or authenticated with sub = user_id."""

    _user_id: UUID | None = None
    # The rest of the caller's JWT (email, aud, session_id, ...), so that
    # auth.jwt() in SQL sees what PostgREST would show it.
    _claims: dict[str, Any] | None = None
    _owns_pool: bool

    def _view(self, user_id: UserId, claims: Mapping[str, Any] | None) -> Self:
        view = copy.copy(self)
        view._user_id = _user_uuid(user_id)
        view._claims = dict(claims) if claims else None
        view._owns_pool = False
        return view

    @property
    def user_id(self) -> UUID | None:
        """The user this client acts as (None: service_role)."""
        return self._user_id

    @property
    def role(self) -> str:
        return SERVICE_ROLE if self._user_id is None else USER_ROLE

    def _as_identity(self, query: _ops.Query) -> tuple[sql.Composed, dict[str, Any]]:
        params = as_identity_params(query.params, self.role, self._user_id, self._claims)
        return _one_message(query.name), params

    def _user(self, user_id: UserId | None) -> UserId | None:
        """An explicit user_id argument, else this view's user (None for the service)."""
        return self._user_id if user_id is None else user_id


class Client(_Identity):
    """Synchronous client over a :class:`psycopg_pool.ConnectionPool`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        pool: ConnectionPool[Any] | None = None,
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        if pool is not None and url is not None:
            raise ValueError("pass url or pool, not both")
        self._owns_pool = pool is None
        self._pool: ConnectionPool[Any] = (
            pool
            if pool is not None
            else ConnectionPool(
                url or database_url(),
                min_size=min_size,
                max_size=max_size,
                kwargs={"autocommit": True},  # see _POOLED_PATH
                open=True,
                name="jobq",
            )
        )

    @property
    def pool(self) -> ConnectionPool[Any]:
        return self._pool

    def as_user(self, user_id: UserId, claims: Mapping[str, Any] | None = None) -> Client:
        """A view of this client, on the same pool, acting as ``user_id`` (with the
        rest of the user's JWT ``claims``, if any; ``role`` and ``sub`` are ours)."""
        return self._view(user_id, claims)

    def close(self) -> None:
        """Close the pool this client created (a pool passed in is the caller's)."""
        if self._owns_pool:
            self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- running an operation ----------------------------------------------
    @contextmanager
    def _cursor(self, conn: SyncConn) -> Iterator[psycopg.Cursor[Row]]:
        if _runs_alone(conn):
            with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                act_as(cur, self.role, self._user_id, self._claims)
                yield cur
        else:
            with conn.cursor(row_factory=dict_row) as cur:
                saved = cur.execute(queries.get("current_identity")).fetchone()
                act_as(cur, self.role, self._user_id, self._claims)
                try:
                    yield cur
                finally:
                    # After an SQL error the caller's transaction is aborted and its
                    # rollback resets both settings; otherwise (success, or a Python
                    # error such as NotFound) put them back now.
                    if conn.info.transaction_status == pq.TransactionStatus.INTRANS:
                        cur.execute(queries.get("restore_identity"), saved)

    def _run(self, op: Op[T], conn: SyncConn | None) -> T:
        with translated():
            query = next(op)  # argument checks (JSON, cursor) run before any SQL
            if conn is None:
                return self._run_pooled(op, query)
            with self._cursor(conn) as cur:
                while True:
                    rows = cur.execute(queries.get(query.name), query.params).fetchall()
                    try:
                        query = op.send(rows)
                    except StopIteration as done:
                        result: T = done.value
                        return result

    def _run_pooled(self, op: Op[T], query: _ops.Query) -> T:
        # One message per query: see _POOLED_PATH.
        with (
            self._pool.connection() as pooled,
            _autocommit(pooled),
            psycopg.ClientCursor(pooled, row_factory=dict_row) as cur,
        ):
            while True:
                cur.execute(*self._as_identity(query))
                cur.nextset()
                rows = cur.fetchall()
                try:
                    query = op.send(rows)
                except StopIteration as done:
                    result: T = done.value
                    return result

    # -- operations ----------------------------------------------------------
    def create_job(
        self,
        job_type: str,
        params: Mapping[str, Any] | None = None,
        *,
        user_id: UserId | None = None,
        priority: int = 0,
        max_retries: int = 3,
        run_after: datetime | None = None,
        ttl: timedelta | None = DEFAULT_TTL,
        conn: SyncConn | None = None,
    ) -> UUID:
        """Enqueue one job; returns its id. ``ttl=None``: the job never expires."""
        return self._run(
            _ops.create_job(
                job_type,
                params,
                user_id=self._user(user_id),
                priority=priority,
                max_retries=max_retries,
                run_after=run_after,
                ttl=ttl,
            ),
            conn,
        )

    def create_jobs(
        self,
        jobs: Sequence[NewJob | Mapping[str, Any]],
        *,
        user_id: UserId | None = None,
        conn: SyncConn | None = None,
    ) -> list[UUID]:
        """Enqueue many jobs in one statement, all or nothing; ids in input order."""
        return self._run(_ops.create_jobs(jobs, user_id=self._user(user_id)), conn)

    def find_or_create_job(
        self,
        job_type: str,
        params: Mapping[str, Any] | None = None,
        *,
        user_id: UserId | None = None,
        dedupe_window: timedelta = DEFAULT_DEDUPE_WINDOW,
        priority: int = 0,
        max_retries: int = 3,
        run_after: datetime | None = None,
        ttl: timedelta | None = DEFAULT_TTL,
        conn: SyncConn | None = None,
    ) -> DedupResult:
        """The same user's equal job from within ``dedupe_window``, or a new one."""
        return self._run(
            _ops.find_or_create_job(
                job_type,
                params,
                user_id=self._user(user_id),
                dedupe_window=dedupe_window,
                priority=priority,
                max_retries=max_retries,
                run_after=run_after,
                ttl=ttl,
            ),
            conn,
        )

    def get_cached_job_result(
        self,
        job_type: str,
        params: Mapping[str, Any] | None = None,
        *,
        user_id: UserId | None = None,
        ttl: timedelta = DEFAULT_CACHE_TTL,
        conn: SyncConn | None = None,
    ) -> CachedResult | None:
        """The newest result of an equal job completed within ``ttl``; None on a miss."""
        return self._run(
            _ops.get_cached_job_result(job_type, params, user_id=self._user(user_id), ttl=ttl),
            conn,
        )

    def get_job(self, job_id: JobId, *, conn: SyncConn | None = None) -> Job:
        """One job (NotFound if it does not exist or is not the user's)."""
        return self._run(_ops.get_job(job_id), conn)

    def get_jobs(
        self, job_ids: Sequence[JobId], *, conn: SyncConn | None = None
    ) -> dict[UUID, Job]:
        """Up to 1,000 jobs in one read, by id; ids that do not exist or are not
        the user's are absent from the result (a status poll of many jobs)."""
        return self._run(_ops.get_jobs(job_ids), conn)

    def list_jobs(
        self,
        *,
        user_id: UserId | None = None,
        status: str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        offset: int = 0,
        order_by: str = "created_at",
        order_dir: str = "DESC",
        params_contains: Mapping[str, Any] | None = None,
        result_contains: Any = None,
        conn: SyncConn | None = None,
    ) -> JobPage:
        """A page of jobs and the total matching the filters (service: all users by default)."""
        return self._run(
            _ops.list_jobs(
                user_id=self._user(user_id),
                status=status,
                job_type=job_type,
                limit=limit,
                offset=offset,
                order_by=order_by,
                order_dir=order_dir,
                params_contains=params_contains,
                result_contains=result_contains,
            ),
            conn,
        )

    def list_jobs_page(
        self,
        *,
        cursor: str | None = None,
        limit: int = 50,
        status: str | None = None,
        job_type: str | None = None,
        user_id: UserId | None = None,
        conn: SyncConn | None = None,
    ) -> CursorPage:
        """Newest first, keyset paginated: pass ``next_cursor`` back for the next page."""
        return self._run(
            _ops.list_jobs_page(
                cursor=cursor,
                limit=limit,
                status=status,
                job_type=job_type,
                user_id=self._user(user_id),
            ),
            conn,
        )

    def get_logs(
        self,
        job_id: JobId,
        *,
        limit: int = 100,
        offset: int = 0,
        level: str | None = None,
        search: str | None = None,
        conn: SyncConn | None = None,
    ) -> LogPage:
        """A job's log lines, newest first, and their total."""
        return self._run(
            _ops.get_logs(job_id, limit=limit, offset=offset, level=level, search=search), conn
        )

    def cancel_job(self, job_id: JobId, *, conn: SyncConn | None = None) -> str:
        """Cancel a pending or running job; returns its new status."""
        return self._run(_ops.cancel_job(job_id), conn)

    def retry_job(self, job_id: JobId, *, conn: SyncConn | None = None) -> str:
        """Send a failed job back to pending now; returns its new status."""
        return self._run(_ops.retry_job(job_id), conn)

    def stats(
        self,
        *,
        user_id: UserId | None = None,
        since: datetime | None = None,
        conn: SyncConn | None = None,
    ) -> list[StatRow]:
        """Counts and durations per job type and status."""
        return self._run(_ops.stats(user_id=self._user(user_id), since=since), conn)

    def throughput(
        self,
        *,
        user_id: UserId | None = None,
        since: timedelta = timedelta(hours=1),
        conn: SyncConn | None = None,
    ) -> Throughput:
        """Jobs finished in the last ``since`` (at most a day): per minute, per type, in all."""
        return self._run(_ops.throughput(user_id=self._user(user_id), since=since), conn)

    def queue_depth(self, *, conn: SyncConn | None = None) -> list[DepthRow]:
        """Pending, processing and failed jobs by type, across users (service_role only)."""
        return self._run(_ops.queue_depth(), conn)


class AsyncClient(_Identity):
    """Asynchronous client over a :class:`psycopg_pool.AsyncConnectionPool`.

    The pool it creates opens on first use (or ``await client.open()``, or
    ``async with AsyncClient() as client``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        pool: AsyncConnectionPool[Any] | None = None,
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        if pool is not None and url is not None:
            raise ValueError("pass url or pool, not both")
        self._owns_pool = pool is None  # closes it (views share it but do not)
        self._opens_pool = pool is None  # opens it on first use (views too)
        self._pool: AsyncConnectionPool[Any] = (
            pool
            if pool is not None
            else AsyncConnectionPool(
                url or database_url(),
                min_size=min_size,
                max_size=max_size,
                kwargs={"autocommit": True},  # see _POOLED_PATH
                open=False,
                name="jobq",
            )
        )

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        return self._pool

    def as_user(self, user_id: UserId, claims: Mapping[str, Any] | None = None) -> AsyncClient:
        """A view of this client, on the same pool, acting as ``user_id`` (with the
        rest of the user's JWT ``claims``, if any; ``role`` and ``sub`` are ours)."""
        return self._view(user_id, claims)

    async def open(self) -> None:
        """Open the pool this client created (idempotent)."""
        if self._opens_pool and self._pool.closed:
            await self._pool.open()

    async def close(self) -> None:
        """Close the pool this client created (a pool passed in is the caller's)."""
        if self._owns_pool:
            await self._pool.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- running an operation ----------------------------------------------
    @asynccontextmanager
    async def _cursor(self, conn: AsyncConn) -> AsyncIterator[psycopg.AsyncCursor[Row]]:
        if _runs_alone(conn):
            async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                await act_as_async(cur, self.role, self._user_id, self._claims)
                yield cur
        else:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(queries.get("current_identity"))
                saved = await cur.fetchone()
                await act_as_async(cur, self.role, self._user_id, self._claims)
                try:
                    yield cur
                finally:
                    # As in Client._cursor: restore unless the transaction is aborted.
                    if conn.info.transaction_status == pq.TransactionStatus.INTRANS:
                        await cur.execute(queries.get("restore_identity"), saved)

    async def _run(self, op: Op[T], conn: AsyncConn | None) -> T:
        with translated():
            query = next(op)  # argument checks (JSON, cursor) run before any SQL
            if conn is None:
                return await self._run_pooled(op, query)
            async with self._cursor(conn) as cur:
                while True:
                    await cur.execute(queries.get(query.name), query.params)
                    rows = await cur.fetchall()
                    try:
                        query = op.send(rows)
                    except StopIteration as done:
                        result: T = done.value
                        return result

    async def _run_pooled(self, op: Op[T], query: _ops.Query) -> T:
        # One message per query: see _POOLED_PATH.
        await self.open()
        async with (
            self._pool.connection() as pooled,
            _autocommit_async(pooled),
            psycopg.AsyncClientCursor(pooled, row_factory=dict_row) as cur,
        ):
            while True:
                await cur.execute(*self._as_identity(query))
                cur.nextset()
                rows = await cur.fetchall()
                try:
                    query = op.send(rows)
                except StopIteration as done:
                    result: T = done.value
                    return result

    # -- operations (same signatures and meaning as Client's) --------------
    async def create_job(
        self,
        job_type: str,
        params: Mapping[str, Any] | None = None,
        *,
        user_id: UserId | None = None,
        priority: int = 0,
        max_retries: int = 3,
        run_after: datetime | None = None,
        ttl: timedelta | None = DEFAULT_TTL,
        conn: AsyncConn | None = None,
    ) -> UUID:
        """Enqueue one job; returns its id. ``ttl=None``: the job never expires."""
        return await self._run(
            _ops.create_job(
                job_type,
                params,
                user_id=self._user(user_id),
                priority=priority,
                max_retries=max_retries,
                run_after=run_after,
                ttl=ttl,
            ),
            conn,
        )

    async def create_jobs(
        self,
        jobs: Sequence[NewJob | Mapping[str, Any]],
        *,
        user_id: UserId | None = None,
        conn: AsyncConn | None = None,
    ) -> list[UUID]:
        """Enqueue many jobs in one statement, all or nothing; ids in input order."""
        return await self._run(_ops.create_jobs(jobs, user_id=self._user(user_id)), conn)

    async def find_or_create_job(
        self,
        job_type: str,
        params: Mapping[str, Any] | None = None,
        *,
        user_id: UserId | None = None,
        dedupe_window: timedelta = DEFAULT_DEDUPE_WINDOW,
        priority: int = 0,
        max_retries: int = 3,
        run_after: datetime | None = None,
        ttl: timedelta | None = DEFAULT_TTL,
        conn: AsyncConn | None = None,
    ) -> DedupResult:
        """The same user's equal job from within ``dedupe_window``, or a new one."""
        return await self._run(
            _ops.find_or_create_job(
                job_type,
                params,
                user_id=self._user(user_id),
                dedupe_window=dedupe_window,
                priority=priority,
                max_retries=max_retries,
                run_after=run_after,
                ttl=ttl,
            ),
            conn,
        )

    async def get_cached_job_result(
        self,
        job_type: str,
        params: Mapping[str, Any] | None = None,
        *,
        user_id: UserId | None = None,
        ttl: timedelta = DEFAULT_CACHE_TTL,
        conn: AsyncConn | None = None,
    ) -> CachedResult | None:
        """The newest result of an equal job completed within ``ttl``; None on a miss."""
        return await self._run(
            _ops.get_cached_job_result(job_type, params, user_id=self._user(user_id), ttl=ttl),
            conn,
        )

    async def get_job(self, job_id: JobId, *, conn: AsyncConn | None = None) -> Job:
        """One job (NotFound if it does not exist or is not the user's)."""
        return await self._run(_ops.get_job(job_id), conn)

    async def get_jobs(
        self, job_ids: Sequence[JobId], *, conn: AsyncConn | None = None
    ) -> dict[UUID, Job]:
        """Up to 1,000 jobs in one read, by id (see Client.get_jobs)."""
        return await self._run(_ops.get_jobs(job_ids), conn)

    async def list_jobs(
        self,
        *,
        user_id: UserId | None = None,
        status: str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        offset: int = 0,
        order_by: str = "created_at",
        order_dir: str = "DESC",
        params_contains: Mapping[str, Any] | None = None,
        result_contains: Any = None,
        conn: AsyncConn | None = None,
    ) -> JobPage:
        """A page of jobs and the total matching the filters (service: all users by default)."""
        return await self._run(
            _ops.list_jobs(
                user_id=self._user(user_id),
                status=status,
                job_type=job_type,
                limit=limit,
                offset=offset,
                order_by=order_by,
                order_dir=order_dir,
                params_contains=params_contains,
                result_contains=result_contains,
            ),
            conn,
        )

    async def list_jobs_page(
        self,
        *,
        cursor: str | None = None,
        limit: int = 50,
        status: str | None = None,
        job_type: str | None = None,
        user_id: UserId | None = None,
        conn: AsyncConn | None = None,
    ) -> CursorPage:
        """Newest first, keyset paginated: pass ``next_cursor`` back for the next page."""
        return await self._run(
            _ops.list_jobs_page(
                cursor=cursor,
                limit=limit,
                status=status,
                job_type=job_type,
                user_id=self._user(user_id),
            ),
            conn,
        )

    async def get_logs(
        self,
        job_id: JobId,
        *,
        limit: int = 100,
        offset: int = 0,
        level: str | None = None,
        search: str | None = None,
        conn: AsyncConn | None = None,
    ) -> LogPage:
        """A job's log lines, newest first, and their total."""
        return await self._run(
            _ops.get_logs(job_id, limit=limit, offset=offset, level=level, search=search), conn
        )

    async def cancel_job(self, job_id: JobId, *, conn: AsyncConn | None = None) -> str:
        """Cancel a pending or running job; returns its new status."""
        return await self._run(_ops.cancel_job(job_id), conn)

    async def retry_job(self, job_id: JobId, *, conn: AsyncConn | None = None) -> str:
        """Send a failed job back to pending now; returns its new status."""
        return await self._run(_ops.retry_job(job_id), conn)

    async def stats(
        self,
        *,
        user_id: UserId | None = None,
        since: datetime | None = None,
        conn: AsyncConn | None = None,
    ) -> list[StatRow]:
        """Counts and durations per job type and status."""
        return await self._run(_ops.stats(user_id=self._user(user_id), since=since), conn)

    async def throughput(
        self,
        *,
        user_id: UserId | None = None,
        since: timedelta = timedelta(hours=1),
        conn: AsyncConn | None = None,
    ) -> Throughput:
        """Jobs finished in the last ``since`` (at most a day): per minute, per type, in all."""
        return await self._run(_ops.throughput(user_id=self._user(user_id), since=since), conn)

    async def queue_depth(self, *, conn: AsyncConn | None = None) -> list[DepthRow]:
        """Pending, processing and failed jobs by type, across users (service_role only)."""
        return await self._run(_ops.queue_depth(), conn)
