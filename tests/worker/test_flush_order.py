"""A job's last progress report is written before its end, even when both are
queued while the flusher is in the middle of a pass.

Regression: a pass snapshotted the queued progress, then wrote it, then took
the queued completions. A handler that reported progress and finished while
that pass was writing had its completion written in this pass and its progress
in the next, where the database refused it (55000: the job had completed). The
load test counted 2,464 such refusals in 10 minutes.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

import jobq.worker as worker_module
from jobq.handlers import Registry
from jobq.worker import Worker, _as_service_role, _Completion


def _started_job(conn: psycopg.Connection[Any], worker_id: str) -> uuid.UUID:
    row = conn.execute("select create_job(%s, 'x')", (uuid.uuid4(),)).fetchone()
    assert row is not None
    conn.execute("select * from start_job(%s, %s)", (row[0], worker_id))
    job_id: uuid.UUID = row[0]
    return job_id


def test_progress_queued_mid_pass_lands_before_the_completion(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = Worker(Registry(), url=database_url, worker_id="w-flush")
    with psycopg.connect(database_url, autocommit=True) as conn:
        earlier = _started_job(conn, worker.worker_id)
        finishing = _started_job(conn, worker.worker_id)

    outcomes: list[bool] = []
    real_best_effort = worker_module._best_effort

    async def best_effort(conn: Any, sql: str, params: dict[str, Any]) -> bool:
        if params["job_id"] == earlier:
            # While the pass writes `earlier`'s progress, `finishing`'s handler
            # reports its last progress and ends.
            worker._outbox.progress_update(finishing, 1, 90, "almost")
            worker._outbox.completions[finishing] = _Completion(1, {"ok": True})
        ok = await real_best_effort(conn, sql, params)
        outcomes.append(ok)
        return ok

    monkeypatch.setattr(worker_module, "_best_effort", best_effort)

    async def run() -> None:
        worker._pool = AsyncConnectionPool(
            database_url,
            min_size=1,
            kwargs={"autocommit": True},
            configure=_as_service_role,
            open=False,
        )
        await worker._pool.open()
        try:
            worker._outbox.progress_update(earlier, 1, 10, "started")
            await worker._flush_once()
            await worker._flush_once()
        finally:
            await worker._pool.close()

    asyncio.run(run())

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "select status, progress_message from job_queue where id = %s", (finishing,)
        ).fetchone()
    assert outcomes == [True, True], "a progress write was refused"
    assert row == ("completed", "almost")
    assert not worker._outbox
