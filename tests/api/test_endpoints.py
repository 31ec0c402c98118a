"""Every endpoint as anon, the owner, another user and service_role, against a
real server and database; what the database refuses comes back as the right
status with a JSON error, and nothing a client sends produces a 500."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from tests.api._support import A, Api, B

from jobq.api.server import ThreadedServer

Conn = psycopg.Connection[Any]
StartApi = Callable[..., Api]


def create(client: httpx.Client, **body: Any) -> str:
    body.setdefault("job_type", "email.send")
    r = client.post("/jobs", json=body)
    assert r.status_code == 201, r.text
    job_id: str = r.json()["job_id"]
    return job_id


def run_to(conn: Conn, job_id: str, status: str, result: Any = None) -> None:
    """Drive a job as a worker would (admin connection: trusted like service_role)."""
    conn.execute(
        "UPDATE job_queue SET priority = 100 WHERE id = %s", (job_id,)
    )  # picked first by the claim below
    (claimed,) = conn.execute("SELECT id FROM claim_jobs('test-worker', 1)").fetchone() or (None,)
    assert str(claimed) == job_id
    if status == "completed":
        conn.execute(
            "SELECT complete_job(%s, %s::jsonb, 'test-worker')",
            (job_id, psycopg.types.json.Jsonb(result)),
        )
    elif status == "failed":
        conn.execute("SELECT fail_job(%s, 'boom', 'E_BOOM', false, 'test-worker')", (job_id,))


def add_log(conn: Conn, job_id: str, level: str, message: str) -> None:
    conn.execute("SELECT add_job_log(%s, %s, %s)", (job_id, level, message))


def error(r: httpx.Response) -> dict[str, str]:
    body: dict[str, dict[str, str]] = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return body["error"]


# -- the identity matrix ------------------------------------------------------------------


def test_matrix_anon_owner_other_service(api: Api, conn: Conn) -> None:
    owner, other, service, anon = api.as_user(A), api.as_user(B), api.as_service(), api.as_anon()
    job = create(owner, params={"to": "a@example.com"})
    failed = create(owner, job_type="will.fail")
    run_to(conn, failed, "failed")
    add_log(conn, job, "info", "hello from the worker")

    expectations: list[tuple[str, str, dict[str, Any] | None, dict[str, int]]] = [
        # method, path, json body, {who: status}
        ("GET", f"/jobs/{job}", None, {"owner": 200, "other": 404, "service": 200, "anon": 401}),
        ("GET", f"/jobs/{job}/logs", None, {"owner": 200, "other": 404, "service": 200}),
        ("GET", "/jobs", None, {"owner": 200, "other": 200, "service": 200, "anon": 401}),
        ("GET", "/stats", None, {"owner": 200, "other": 200, "service": 200, "anon": 401}),
        ("POST", f"/jobs/{failed}/retry", None, {"other": 404, "anon": 401}),
        ("POST", f"/jobs/{job}/cancel", None, {"other": 404, "anon": 401}),
        ("POST", "/jobs", {"job_type": "x.y"}, {"owner": 201, "other": 201, "anon": 401}),
        ("POST", "/jobs", {"job_type": "x.y", "user_id": str(A)}, {"other": 403, "service": 201}),
        ("POST", "/jobs", {"job_type": "x.y"}, {"service": 400}),  # service must name a user
        ("GET", f"/jobs?user_id={A}", None, {"owner": 200, "other": 403, "service": 200}),
        ("GET", f"/stats?user_id={A}", None, {"owner": 200, "other": 403, "service": 200}),
        ("GET", "/health", None, {"owner": 200, "other": 200, "service": 200, "anon": 200}),
    ]
    clients = {"owner": owner, "other": other, "service": service, "anon": anon}
    for method, path, body, expected in expectations:
        for who, status in expected.items():
            r = clients[who].request(method, path, json=body)
            assert r.status_code == status, (method, path, who, r.text)
            if status >= 400:
                assert error(r)["code"] != "internal_error"

    # the owner's view and the service's view of the same job are the same job
    assert owner.get(f"/jobs/{job}").json()["id"] == service.get(f"/jobs/{job}").json()["id"]
    # another user's list does not contain it; the owner's and the service's do
    assert job not in [j["id"] for j in other.get("/jobs").json()["jobs"]]
    assert job in [j["id"] for j in owner.get("/jobs").json()["jobs"]]
    assert job in [j["id"] for j in service.get("/jobs").json()["jobs"]]
    # retry and cancel as the owner, and as the service
    assert owner.post(f"/jobs/{failed}/retry").json() == {"job_id": failed, "status": "pending"}
    assert service.post(f"/jobs/{failed}/cancel").json() == {
        "job_id": failed,
        "status": "cancelled",
    }
    assert owner.post(f"/jobs/{job}/cancel").json() == {"job_id": job, "status": "cancelled"}


def test_another_users_job_reads_exactly_like_no_job(api: Api) -> None:
    job = create(api.as_user(A))
    other = api.as_user(B)
    for method, suffix in [("GET", ""), ("GET", "/logs"), ("POST", "/cancel"), ("POST", "/retry")]:
        theirs = other.request(method, f"/jobs/{job}{suffix}")
        missing = other.request(method, f"/jobs/{uuid.uuid4()}{suffix}")
        assert theirs.status_code == missing.status_code == 404
        assert theirs.content == missing.content
        assert theirs.json() == {"error": {"code": "not_found", "message": "job not found"}}
        assert {k: v for k, v in theirs.headers.items() if k != "date"} == {
            k: v for k, v in missing.headers.items() if k != "date"
        }


# -- POST /jobs ------------------------------------------------------------------------------


def test_create_returns_201_with_location(api: Api) -> None:
    owner = api.as_user(A)
    r = owner.post(
        "/jobs",
        json={
            "job_type": "report.build",
            "params": {"month": "2026-11"},
            "priority": -5,
            "max_retries": 1,
            "run_after": "2030-01-01T00:00:00Z",
            "ttl_seconds": 60,
        },
    )
    assert r.status_code == 201
    body = r.json()
    assert body == {"job_id": body["job_id"], "status": "pending", "created": True, "cached": False}
    assert r.headers["location"] == f"/jobs/{body['job_id']}"
    job = owner.get(r.headers["location"]).json()
    assert (job["job_type"], job["params"], job["priority"], job["max_retries"]) == (
        "report.build",
        {"month": "2026-11"},
        -5,
        1,
    )
    assert job["run_after"].startswith("2030-01-01T00:00:00")
    assert job["expires_at"].startswith("2030-01-01T00:01:00")
    never = owner.get(f"/jobs/{create(owner, ttl_seconds=None)}").json()
    assert never["expires_at"] is None


def test_dedupe_returns_the_equal_job(api: Api) -> None:
    owner = api.as_user(A)
    first = owner.post("/jobs", json={"job_type": "sync", "params": {"a": 1}, "dedupe": True})
    again = owner.post("/jobs", json={"job_type": "sync", "params": {"a": 1}, "dedupe": 60})
    different = owner.post("/jobs", json={"job_type": "sync", "params": {"a": 2}, "dedupe": True})
    assert first.status_code == 201
    assert first.json()["created"] is True
    assert again.status_code == 200
    assert again.json() == {**first.json(), "created": False}
    assert again.headers["location"] == first.headers["location"]
    assert different.status_code == 201
    assert different.json()["job_id"] != first.json()["job_id"]
    # another user's equal job is never returned
    theirs = api.as_user(B).post(
        "/jobs", json={"job_type": "sync", "params": {"a": 1}, "dedupe": 1}
    )
    assert theirs.status_code == 201
    assert theirs.json()["job_id"] != first.json()["job_id"]
    bad = owner.post("/jobs", json={"job_type": "sync", "dedupe": True, "ttl_seconds": 5})
    assert bad.status_code == 400
    assert error(bad)["code"] == "invalid_input"


def test_cache_returns_a_cached_result_or_creates(api: Api, conn: Conn) -> None:
    owner = api.as_user(A)
    body = {"job_type": "thumb", "params": {"img": 7}, "cache": True}
    miss = owner.post("/jobs", json=body)
    assert miss.status_code == 201
    assert miss.json()["cached"] is False
    job = miss.json()["job_id"]
    run_to(conn, job, "completed", {"url": "https://cdn.example/7.png"})
    hit = owner.post("/jobs", json=body)
    assert hit.status_code == 200
    assert hit.json()["cached"] is True
    assert hit.json()["job_id"] == job
    assert hit.json()["result"] == {"url": "https://cdn.example/7.png"}
    assert hit.json()["status"] == "completed"
    assert hit.json()["completed_at"]
    # a zero-second cache is always a miss; another user never gets it
    assert owner.post("/jobs", json={**body, "cache": 0}).status_code == 201
    assert api.as_user(B).post("/jobs", json=body).json()["cached"] is False


def test_bad_input_is_4xx_never_500(api: Api, start_api: StartApi) -> None:
    owner = api.as_user(A)
    cases: list[tuple[Any, int, str]] = [
        (b"{not json", 400, "malformed_json"),
        (b"", 422, "validation_error"),
        ({"job_type": "bad type!"}, 400, "invalid_input"),  # the SQL decides the syntax
        ({"job_type": "x", "priority": 1000}, 400, "invalid_input"),
        ({"job_type": "x", "max_retries": -1}, 400, "invalid_input"),
        ({"job_type": "x", "priority": 10**30}, 400, "invalid_input"),
        ({"job_type": "x", "params": {"s": "nul\u0000"}}, 400, "invalid_input"),
        ({"job_type": "nul\u0000"}, 400, "invalid_input"),
        ({"job_type": 5}, 422, "validation_error"),
        ({"job_type": "x", "params": [1, 2]}, 422, "validation_error"),
        ({"job_type": "x", "priority": "high"}, 422, "validation_error"),
        ({"job_type": "x", "run_after": "2030-01-01T00:00:00"}, 422, "validation_error"),
        ({"job_type": "x", "ttl_seconds": 0}, 422, "validation_error"),
        ({"job_type": "x", "ttl_seconds": 1e300}, 422, "validation_error"),
        ({"job_type": "x", "dedupe": "yes"}, 422, "validation_error"),
        ({"job_type": "x", "surprise": 1}, 422, "validation_error"),
        ({"params": {}}, 422, "validation_error"),
        ([1, 2, 3], 422, "validation_error"),
    ]
    for body, status, code in cases:
        if isinstance(body, bytes):
            r = owner.post("/jobs", content=body, headers={"Content-Type": "application/json"})
        else:
            r = owner.post("/jobs", json=body)
        assert r.status_code == status, (body, r.text)
        assert error(r)["code"] == code, (body, r.text)
    nan = owner.post(
        "/jobs",
        content=b'{"job_type": "x", "params": {"v": NaN}}',
        headers={"Content-Type": "application/json"},
    )
    assert nan.status_code in (400, 422)
    for path in ["/jobs/not-a-uuid", "/jobs?limit=0", "/jobs?limit=5000", "/jobs?status=nope"]:
        r = owner.get(path)
        assert r.status_code == 422, (path, r.text)
        assert error(r)["code"] == "validation_error"
    assert error(owner.get("/jobs?cursor=!!notacursor"))["code"] == "invalid_input"
    assert owner.get("/jobs?cursor=&offset=5").status_code == 400
    assert owner.get(
        "/jobs/00000000-0000-0000-0000-000000000000/logs?q=" + "x" * 600
    ).status_code in (
        400,
        404,
    )


def test_payload_too_large_is_413(api: Api, conn: Conn, start_api: StartApi) -> None:
    conn.execute("UPDATE job_queue_config SET max_params_bytes = 100")
    r = api.as_user(A).post("/jobs", json={"job_type": "x", "params": {"blob": "y" * 200}})
    assert r.status_code == 413
    assert error(r)["code"] == "payload_too_large"
    small = start_api(max_body_bytes=1000)
    r = small.as_user(A).post("/jobs", json={"job_type": "x", "params": {"blob": "y" * 5000}})
    assert r.status_code == 413
    assert error(r)["code"] == "payload_too_large"
    # chunked, with no Content-Length to refuse up front
    chunks = iter([b'{"job_type": "x", "params": {"blob": "', b"y" * 5000, b'"}}'])
    r = small.as_user(A).post("/jobs", content=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert error(r)["code"] == "payload_too_large"


def test_rate_limit_is_429_with_retry_after(api: Api, conn: Conn) -> None:
    conn.execute("UPDATE job_queue_config SET max_active_jobs_per_user = 2")
    owner = api.as_user(A)
    create(owner)
    create(owner)
    r = owner.post("/jobs", json={"job_type": "email.send"})
    assert r.status_code == 429
    assert error(r)["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) > 0
    # the limit is per user, and the service is trusted
    assert api.as_user(B).post("/jobs", json={"job_type": "x"}).status_code == 201
    assert (
        api.as_service().post("/jobs", json={"job_type": "x", "user_id": str(A)}).status_code == 201
    )


def test_conflicts_are_409(api: Api) -> None:
    owner = api.as_user(A)
    job = create(owner)
    assert owner.post(f"/jobs/{job}/retry").status_code == 409  # pending, not failed
    assert owner.post(f"/jobs/{job}/cancel").status_code == 200
    r = owner.post(f"/jobs/{job}/cancel")
    assert r.status_code == 409
    assert error(r)["code"] == "invalid_transition"


# -- GET /jobs ---------------------------------------------------------------------------------


def test_list_filters_and_offset_pagination(api: Api, conn: Conn) -> None:
    owner = api.as_user(A)
    ids = [create(owner, job_type="t.a" if i % 2 else "t.b") for i in range(5)]
    run_to(conn, ids[0], "completed", {"ok": True})
    create(api.as_user(B))  # never in A's lists
    page = owner.get("/jobs?limit=2").json()
    assert page["total_count"] == 5
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]
    assert page["next_cursor"]
    last = owner.get("/jobs?limit=2&offset=4").json()
    assert [j["id"] for j in last["jobs"]] == [ids[0]]
    assert last["next_cursor"] is None
    past = owner.get("/jobs?limit=2&offset=10").json()
    assert past == {"jobs": [], "total_count": 5, "next_cursor": None}
    assert owner.get("/jobs?job_type=t.a").json()["total_count"] == 2
    assert [j["id"] for j in owner.get("/jobs?status=completed").json()["jobs"]] == [ids[0]]
    asc = owner.get("/jobs?order_by=created_at&order_dir=asc").json()
    assert [j["id"] for j in asc["jobs"]] == ids
    assert asc["next_cursor"] is None
    everyone = api.as_service().get("/jobs").json()
    assert everyone["total_count"] == 6
    assert api.as_service().get(f"/jobs?user_id={B}").json()["total_count"] == 1


def test_cursor_pagination_walks_every_job_once(api: Api) -> None:
    owner = api.as_user(A)
    ids = [create(owner) for _ in range(7)]
    seen: list[str] = []
    r = owner.get("/jobs?limit=3&cursor=").json()
    assert r["total_count"] is None
    while True:
        seen += [j["id"] for j in r["jobs"]]
        if r["next_cursor"] is None:
            break
        r = owner.get("/jobs", params={"limit": 3, "cursor": r["next_cursor"]}).json()
    assert seen == ids[::-1]
    # the first offset page's next_cursor continues where it stopped
    first = owner.get("/jobs?limit=4").json()
    rest = owner.get("/jobs", params={"limit": 10, "cursor": first["next_cursor"]}).json()
    assert [j["id"] for j in first["jobs"] + rest["jobs"]] == ids[::-1]


# -- logs and stats -----------------------------------------------------------------------------


def test_logs_paginate_search_and_filter(api: Api, conn: Conn) -> None:
    owner = api.as_user(A)
    job = create(owner)
    for i in range(4):
        add_log(conn, job, "info", f"processed chunk {i}")
    add_log(conn, job, "error", "upstream timeout talking to the mail server")
    page = owner.get(f"/jobs/{job}/logs?limit=2").json()
    assert page["total_count"] == 5
    assert len(page["logs"]) == 2
    assert page["logs"][0]["message"].startswith("upstream")  # newest first
    assert owner.get(f"/jobs/{job}/logs?limit=2&offset=4").json()["total_count"] == 5
    errors = owner.get(f"/jobs/{job}/logs?level=error").json()
    assert [entry["level"] for entry in errors["logs"]] == ["error"]
    found = owner.get(f"/jobs/{job}/logs", params={"q": "mail timeout"}).json()
    assert [entry["message"] for entry in found["logs"]] == [
        "upstream timeout talking to the mail server"
    ]
    assert owner.get(f"/jobs/{job}/logs", params={"q": "chunk -3"}).json()["total_count"] == 3


def test_stats_per_user_and_across_users(api: Api) -> None:
    create(api.as_user(A), job_type="only.a")
    create(api.as_user(B), job_type="only.b")
    mine = api.as_user(A).get("/stats").json()["stats"]
    assert {(s["job_type"], s["status"], s["job_count"]) for s in mine} == {
        ("only.a", "pending", 1)
    }
    every = api.as_service().get("/stats").json()["stats"]
    assert {s["job_type"] for s in every} == {"only.a", "only.b"}
    one = api.as_service().get(f"/stats?user_id={B}").json()["stats"]
    assert {s["job_type"] for s in one} == {"only.b"}
    future = api.as_service().get("/stats", params={"since": "2999-01-01T00:00:00+00:00"})
    assert future.json() == {"stats": []}


# -- the database away, and the unexpected ---------------------------------------------------------


def test_database_unreachable_is_503(start_api: StartApi) -> None:
    down = start_api(database_url="postgresql://postgres@127.0.0.1:1/none", pool_timeout=0.5)
    r = down.client().get("/health")
    assert r.status_code == 503
    assert error(r)["code"] == "database_unavailable"
    assert r.headers["cache-control"] == "no-store"
    for method, path in [("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/events")]:
        r = down.as_user(A).request(method, path, json={"job_type": "x"})
        assert r.status_code == 503, (path, r.text)
        assert error(r)["code"] == "database_unavailable"
        assert int(r.headers["retry-after"]) > 0
        assert "127.0.0.1" not in r.text  # no connection details leak


def test_unexpected_errors_are_500_without_internals(
    api_settings: Any, tokens: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from jobq.api import create_app

    app: FastAPI = create_app(api_settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    with ThreadedServer(app) as server, httpx.Client(base_url=server.url) as client:
        r = client.get("/boom")
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
    assert "hunter2" not in r.text
    assert any("hunter2" in str(rec.exc_info) for rec in caplog.records if rec.exc_info)


def test_unknown_routes_and_methods_are_json(api: Api) -> None:
    r = api.client().get("/nope")
    assert r.status_code == 404
    assert error(r)["code"] == "not_found"
    r = api.as_user(A).delete("/jobs")
    assert r.status_code == 405
    assert error(r)["code"] == "method_not_allowed"


@pytest.mark.parametrize("who", ["owner", "service"])
def test_openapi_documents_every_endpoint(api: Api, who: str) -> None:
    spec = api.client().get("/openapi.json").json()
    paths = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert paths >= {
        ("POST", "/jobs"),
        ("GET", "/jobs"),
        ("GET", "/jobs/{job_id}"),
        ("GET", "/jobs/{job_id}/logs"),
        ("POST", "/jobs/{job_id}/cancel"),
        ("POST", "/jobs/{job_id}/retry"),
        ("GET", "/stats"),
        ("GET", "/events"),
        ("GET", "/health"),
    }
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
