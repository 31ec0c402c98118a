"""Cache-Control, Vary and ETag/304 on every route, as the spec's edge function
sends them; nothing private is ever publicly cacheable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from tests.api._support import A, Api, B

from jobq.api import Settings, SettingsError, create_app
from jobq.api.caching import CacheRules, matches_etag

StartApi = Callable[..., Api]
Conn = psycopg.Connection[Any]


def directives(r: httpx.Response) -> set[str]:
    return {d.strip().lower() for d in r.headers["cache-control"].split(",")}


def vary(r: httpx.Response) -> set[str]:
    return {v.strip().lower() for v in r.headers.get("vary", "").split(",") if v.strip()}


def test_every_authenticated_route_is_private_or_no_store(api: Api, conn: Conn) -> None:
    """Each route of the OpenAPI document that takes a token, for every identity and
    outcome (2xx, 304, 4xx): Cache-Control has private or no-store, Vary has Authorization."""
    owner, other, service = api.as_user(A), api.as_user(B), api.as_service()
    job = owner.post("/jobs", json={"job_type": "c.t"}).json()["job_id"]
    spec = api.client().get("/openapi.json").json()
    checked = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if not op.get("security"):
                continue
            url = path.replace("{job_id}", job)
            for client in (owner, other, service, api.as_anon(), api.client()):
                if path == "/events":
                    with client.stream(method, url) as r:
                        response = r
                else:
                    body = {"job_type": "c.t", "user_id": str(A)} if method == "post" else None
                    response = client.request(method, url, json=body)
                found = directives(response)
                assert {"private", "no-store"} & found, (method, path, response.headers)
                assert "public" not in found
                assert "authorization" in vary(response), (method, path, response.headers)
                checked += 1
    assert checked >= 8 * 5


def test_job_status_is_private_max_age_5_with_etag_and_304(api: Api, conn: Conn) -> None:
    owner = api.as_user(A)
    job = owner.post("/jobs", json={"job_type": "c.t"}).json()["job_id"]
    first = owner.get(f"/jobs/{job}")
    assert directives(first) == {"private", "max-age=5"}
    etag = first.headers["etag"]
    assert etag.startswith('"')
    again = owner.get(f"/jobs/{job}", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert directives(again) == {"private", "max-age=5"}
    assert "authorization" in vary(again)
    # weak form and lists match too; another tag does not
    assert owner.get(f"/jobs/{job}", headers={"If-None-Match": f'"x", W/{etag}'}).status_code == 304
    assert owner.get(f"/jobs/{job}", headers={"If-None-Match": '"other"'}).status_code == 200
    # a change (progress) changes the ETag
    conn.execute("SELECT claim_jobs('w', 1)")
    conn.execute("SELECT update_job_progress(%s, 40, 'forty', 'w')", (job,))
    changed = owner.get(f"/jobs/{job}", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["progress_percent"] == 40
    assert changed.headers["etag"] != etag
    # the service's view has the same representation, hence the same ETag
    assert api.as_service().get(f"/jobs/{job}").headers["etag"] == changed.headers["etag"]


def test_lists_logs_and_stats_revalidate_with_etags(api: Api) -> None:
    owner = api.as_user(A)
    job = owner.post("/jobs", json={"job_type": "c.t"}).json()["job_id"]
    for path in ["/jobs", "/jobs?limit=1", f"/jobs/{job}/logs", "/stats"]:
        r = owner.get(path)
        assert r.status_code == 200, path
        assert directives(r) == {"private", "no-cache"}, path
        assert r.headers["etag"]
        not_modified = owner.get(path, headers={"If-None-Match": r.headers["etag"]})
        assert not_modified.status_code == 304, path
        assert directives(not_modified) == {"private", "no-cache"}
    # a new job changes the list
    etag = owner.get("/jobs").headers["etag"]
    owner.post("/jobs", json={"job_type": "c.t"})
    assert owner.get("/jobs", headers={"If-None-Match": etag}).status_code == 200


def test_writes_and_events_are_no_store(api: Api) -> None:
    owner = api.as_user(A)
    created = owner.post("/jobs", json={"job_type": "c.t"})
    assert directives(created) == {"no-store"}
    assert "etag" not in created.headers
    job = created.json()["job_id"]
    assert directives(owner.post(f"/jobs/{job}/cancel")) == {"no-store"}
    assert directives(owner.post(f"/jobs/{job}/retry")) == {"no-store"}  # 409
    with owner.stream("GET", "/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert directives(r) == {"no-store"}


def test_errors_are_no_store(api: Api) -> None:
    for r in [
        api.client().get("/jobs"),
        api.as_user(A).get("/jobs/00000000-0000-0000-0000-000000000000"),
        api.as_user(A).get("/jobs?limit=0"),
        api.client().get("/nope"),
    ]:
        assert r.status_code >= 400
        assert directives(r) == {"no-store"}


def test_public_routes_are_public_max_age_300(api: Api) -> None:
    for path in ["/health", "/openapi.json", "/docs"]:
        for client in (api.client(), api.as_user(A)):
            r = client.get(path)
            assert r.status_code == 200, path
            assert directives(r) == {"public", "max-age=300"}, path
            assert "authorization" not in vary(r)


def test_seo_policy_is_configurable_per_route(start_api: StartApi) -> None:
    api = start_api(cache_routes={"/openapi.json": "seo", "/docs": "public, max-age=60"})
    assert directives(api.client().get("/openapi.json")) == {"public", "max-age=3600"}
    assert directives(api.client().get("/docs")) == {"public", "max-age=60"}
    assert directives(api.client().get("/health")) == {"public", "max-age=300"}
    custom = start_api(
        cache_seo="public, max-age=86400, immutable", cache_routes={"/health": "seo"}
    )
    assert directives(custom.client().get("/health")) == {"public", "max-age=86400", "immutable"}


def test_settings_refuse_public_caching_of_private_routes(api_settings: Settings) -> None:
    for routes in ({"/jobs": "seo"}, {"/jobs/*": "public"}, {"/*": "public, max-age=10"}):
        with pytest.raises(SettingsError, match="publicly cacheable"):
            create_app(Settings(**{**api_settings.__dict__, "cache_routes": routes}))
    # a private policy for a private route is fine; so is a public one for a public path
    create_app(Settings(**{**api_settings.__dict__, "cache_routes": {"/jobs": "private"}}))
    create_app(Settings(**{**api_settings.__dict__, "cache_routes": {"/dashboard/*": "seo"}}))
    with pytest.raises(SettingsError, match="private or no-store"):
        Settings(cache_job_status="public, max-age=5")
    with pytest.raises(SettingsError):
        Settings(cache_routes={"no-slash": "seo"})


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://x@h/db",
            "JOBQ_JWT_SECRET": "s" * 32,
            "JOBQ_CACHE_ROUTES": '{"/dashboard/*": "seo"}',
            "JOBQ_SSE_KEEPALIVE": "2.5",
        }
    )
    assert s.database_url == "postgresql://x@h/db"
    assert s.sse_keepalive == 2.5
    assert CacheRules(s).public_value("/dashboard/app.js") == "public, max-age=3600"
    assert CacheRules(s).public_value("/jobs") is None
    with pytest.raises(SettingsError, match="JSON"):
        Settings.from_env({"JOBQ_CACHE_ROUTES": "{nope"})
    with pytest.raises(SettingsError, match="number"):
        Settings.from_env({"JOBQ_POOL_TIMEOUT": "soon"})


def test_etag_matching() -> None:
    assert matches_etag('"a"', '"a"')
    assert matches_etag('W/"a"', '"a"')
    assert matches_etag('"b", "a"', '"a"')
    assert matches_etag("*", '"a"')
    assert not matches_etag('"b"', '"a"')
    assert not matches_etag(None, '"a"')
    assert not matches_etag("", '"a"')
