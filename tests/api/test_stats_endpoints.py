"""GET /stats/throughput and GET /stats/depth: the dashboard's charts, per identity."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
import pytest
from tests.api._support import A, Api, B

Conn = psycopg.Connection[Any]


def _finished(conn: Conn, user: UUID, job_type: str, outcome: str, run_ms: int = 100) -> UUID:
    job_id = conn.execute("select create_job(%s, %s)", (user, job_type)).fetchone()
    assert job_id is not None
    conn.execute("select * from start_job(%s, 'w1')", (job_id[0],))
    if outcome == "completed":
        conn.execute("select complete_job(%s, '{}', 'w1')", (job_id[0],))
    else:
        conn.execute("select fail_job(%s, 'boom', 'E1', false, 'w1')", (job_id[0],))
    conn.execute(
        "update job_queue set started_at = completed_at - make_interval(secs => %s / 1000.0)"
        " where id = %s",
        (run_ms, job_id[0]),
    )
    return UUID(str(job_id[0]))


@pytest.fixture
def history(conn: Conn) -> None:
    for ms in (100, 200, 300):
        _finished(conn, A, "resize", "completed", ms)
    _finished(conn, A, "resize", "failed")
    _finished(conn, B, "email", "completed", 1000)
    conn.execute("select create_job(%s, 'resize')", (A,))  # pending: depth, not throughput


def _totals(body: dict[str, Any]) -> tuple[int, int]:
    return body["total"]["completed"], body["total"]["failed"]


@pytest.mark.usefixtures("history")
def test_throughput_per_identity(api: Api) -> None:
    mine = api.as_user(A).get("/stats/throughput")
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["minutes"] == 60
    assert _totals(body) == (3, 1)
    assert [r["job_type"] for r in body["per_type"]] == ["resize"]
    assert body["per_type"][0]["p50_duration_ms"] == pytest.approx(200)
    assert body["per_minute"], "this minute saw finishes"
    assert all(r["bucket"] is not None and r["job_type"] is None for r in body["per_minute"])
    assert sum(r["completed"] for r in body["per_minute"]) == 3

    assert _totals(api.as_user(B).get("/stats/throughput").json()) == (1, 0)
    service = api.as_service()
    assert _totals(service.get("/stats/throughput").json()) == (4, 1)
    assert _totals(service.get("/stats/throughput", params={"user_id": str(B)}).json()) == (1, 0)


def test_throughput_refusals(api: Api) -> None:
    assert api.as_anon().get("/stats/throughput").status_code == 401
    assert api.client().get("/stats/throughput").status_code == 401
    other = api.as_user(B).get("/stats/throughput", params={"user_id": str(A)})
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "forbidden"
    for minutes in (0, 1441, "soon"):
        r = api.as_user(A).get("/stats/throughput", params={"minutes": minutes})
        assert r.status_code == 422, (minutes, r.text)
    assert api.as_user(A).get("/stats/throughput", params={"minutes": 1440}).status_code == 200


@pytest.mark.usefixtures("history")
def test_depth_is_for_the_service(api: Api) -> None:
    r = api.as_service().get("/stats/depth")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "depth": [
            {"job_type": "resize", "status": "failed", "job_count": 1},
            {"job_type": "resize", "status": "pending", "job_count": 1},
        ]
    }
    assert api.as_user(A).get("/stats/depth").status_code == 403
    assert api.as_anon().get("/stats/depth").status_code == 401


@pytest.mark.usefixtures("history")
@pytest.mark.parametrize("path", ["/stats/throughput", "/stats/depth"])
def test_cache_headers(api: Api, path: str) -> None:
    service = api.as_service()
    first = service.get(path)
    assert first.headers["cache-control"] == "private, no-cache"
    assert "Authorization" in first.headers["vary"]
    again = service.get(path, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
