"""The worker's claim commits without waiting for its WAL flush, and only the claim.

synchronous_commit is set local to the claim's own transaction (the named
query sets it in the same statement), so the worker's completions, which must
be durable, and every other statement on the pooled connection keep the
server's setting.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from jobq.queries import get as query


def test_the_claim_alone_commits_asynchronously(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        job = conn.execute("select create_job(%s, 'x')", (uuid.uuid4(),)).fetchone()
        assert job is not None
        assert conn.execute("show synchronous_commit").fetchone() == ("on",)
        params: dict[str, Any] = {"worker_id": "w1", "limit": 5, "job_types": None}
        with conn.transaction():
            claimed = conn.execute(query("claim_jobs"), params).fetchall()
            inside = conn.execute("show synchronous_commit").fetchone()
        after = conn.execute("show synchronous_commit").fetchone()
        status = conn.execute("select status from job_queue where id = %s", job).fetchone()
    assert [row[0] for row in claimed] == [job[0]]
    assert (inside, after, status) == (("off",), ("on",), ("processing",))
