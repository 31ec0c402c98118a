"""A write the database refuses for good is dropped; only a lost connection is retried.

Regression: a progress update that reached the database after its job had
completed was refused with SQLSTATE 55000, which psycopg raises as an
OperationalError; the flusher took it for a lost connection and retried it
forever, holding back every other result of the worker.
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from jobq.queries import get as query
from jobq.worker import _best_effort


def _progress(job_id: object) -> dict[str, object]:
    return {"job_id": job_id, "percent": 100, "message": "late", "worker_id": "w1", "attempt": 1}


def test_a_refused_write_is_dropped(database_url: str) -> None:
    async def run() -> bool:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            cur = await conn.execute("select create_job(%s, 'x')", (uuid.uuid4(),))
            row = await cur.fetchone()
            assert row is not None
            await conn.execute("select * from start_job(%s, 'w1')", (row[0],))
            await conn.execute("select complete_job(%s, '{}', 'w1')", (row[0],))
            # the job is completed: its late progress update is refused (55000), not retried
            return await _best_effort(conn, query("update_job_progress"), _progress(row[0]))

    assert asyncio.run(run()) is False


def test_a_lost_connection_is_raised_for_a_retry(database_url: str) -> None:
    async def run() -> None:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        await conn.close()
        await _best_effort(conn, query("update_job_progress"), _progress(uuid.uuid4()))

    with pytest.raises(psycopg.OperationalError):
        asyncio.run(run())
