"""Every HTTP endpoint, as anon, A and B against the other's jobs, and with forged tokens.

The endpoints come from the app's routes (and /openapi.json): one the suite
does not attack fails ``test_every_endpoint_is_attacked``. A user gets 404 for
another user's job (exactly like a missing one), 403 for naming another user,
and their own rows only from lists, stats and throughput; a missing, anon or
forged token gets 401 everywhere; headers and query parameters that try to
name another user change nothing (the request acts as the token's subject).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.routing import Mount, Route
from tests.api._support import SECRET, Api, Tokens, b64
from tests.attack._arena import Arena, Party
from tests.attack._http import (
    created_for,
    delete_created,
    http_attack,
    own_jobs,
    own_logs,
    stats_are_own,
    throughput_is_own,
)
from tests.attack.test_injection import ALL_PAYLOADS
from tests.sql.helpers import Conn

from jobq._ops import encode_cursor
from jobq.dashboard import STATIC

KIND = "http"

# Every route of the app -> the test of this suite that attacks it.
ENDPOINTS = {
    "POST /jobs": "test_user_against_user",
    "GET /jobs": "test_user_against_user",
    "GET /jobs/{job_id}": "test_user_against_user",
    "GET /jobs/{job_id}/logs": "test_user_against_user",
    "POST /jobs/{job_id}/cancel": "test_user_against_user",
    "POST /jobs/{job_id}/retry": "test_user_against_user",
    "GET /stats": "test_user_against_user",
    "GET /stats/throughput": "test_user_against_user",
    "GET /stats/depth": "test_user_against_user",
    "GET /events": "test_events.py",
    "GET /health": "test_public_routes_expose_no_data",
    "GET /": "test_public_routes_expose_no_data",
    "MOUNT /dashboard": "test_public_routes_expose_no_data",
    "GET /openapi.json": "test_public_routes_expose_no_data",
    "GET /docs": "test_public_routes_expose_no_data",
    "GET /docs/oauth2-redirect": "test_public_routes_expose_no_data",
}
# The data endpoints, with {job} for a job id: what a token is checked on.
DATA = [
    ("POST", "/jobs"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{job}"),
    ("GET", "/jobs/{job}/logs"),
    ("POST", "/jobs/{job}/cancel"),
    ("POST", "/jobs/{job}/retry"),
    ("GET", "/stats"),
    ("GET", "/stats/throughput"),
    ("GET", "/stats/depth"),
    ("GET", "/events"),
]


def app_routes(api: Api) -> set[str]:
    """``METHOD /path`` of every route of the app, included routers walked into."""
    found: set[str] = set()

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)  # FastAPI >= 0.165 includes lazily
            if inner is not None:
                context = getattr(route, "include_context", None)
                walk(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
            elif isinstance(route, Mount):
                found.add(f"MOUNT {prefix}{route.path}")
            elif isinstance(route, Route):
                for method in route.methods or ():
                    if method != "HEAD":
                        found.add(f"{method} {prefix}{route.path}")
            else:
                found.add(f"UNKNOWN {route!r}")

    walk(api.server.server.app.routes, "")
    return found


def test_every_endpoint_is_attacked(api: Api) -> None:
    routes = app_routes(api)
    missing = sorted(routes - set(ENDPOINTS))
    assert not missing, f"endpoints the attack suite does not attack: {missing}"
    assert not set(ENDPOINTS) - routes, "attacks on endpoints that no longer exist"
    spec = httpx.get(api.url + "/openapi.json").json()
    in_spec = {f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops}
    assert in_spec <= set(ENDPOINTS)
    assert {f"{m} {p}" for m, p in DATA} == {
        k.replace("{job_id}", "{job}") for k, v in ENDPOINTS.items() if "test_user" in v
    } | {"GET /events"}


def _send(
    client: httpx.Client, method: str, path: str, **kwargs: Any
) -> Callable[[], httpx.Response]:
    return lambda: client.request(method, path, **kwargs)


def _created_at(conn: Conn, job: Any) -> Any:
    row = conn.execute("select created_at from public.job_queue where id = %s", (job,)).fetchone()
    assert row is not None
    return row[0]


PAIRS = [("A", "B"), ("B", "A")]


@pytest.mark.parametrize(("who", "victim"), PAIRS, ids=[f"{w}-vs-{v}" for w, v in PAIRS])
def test_user_against_user(conn: Conn, arena: Arena, api: Api, who: str, victim: str) -> None:
    me, v = arena.party(who), arena.party(victim)
    client = api.client(api.tokens.user(me.user))
    cursor_at_victim = encode_cursor(_created_at(conn, v.completed), v.completed)
    delete = delete_created(conn)

    def attack(
        method: str,
        path: str,
        expect: int,
        check: Any = None,
        *,
        changes_own: bool = False,
        **kwargs: Any,
    ) -> None:
        http_attack(
            conn,
            kind=KIND,
            who=who,
            victim=v,
            target=f"{method} {path} {kwargs or ''}",
            send=_send(client, method, path, **kwargs),
            expect=expect,
            check=check,
            state_may_change=changes_own,
            cleanup=delete if changes_own else None,
        )

    # create: for the victim, or with the victim's dedup/cache key
    attack("POST", "/jobs", 403, json={"job_type": "x", "user_id": str(v.user)})
    attack("POST", "/jobs", 403, json={"job_type": "x", "user_id": str(v.user), "dedupe": True})
    attack(
        "POST",
        "/jobs",
        403,
        json={"job_type": v.completed_type, "params": v.completed_params, "cache": True,
              "user_id": str(v.user)},
    )  # fmt: skip
    for body in (
        {"job_type": v.completed_type, "params": v.completed_params, "dedupe": True},
        {"job_type": v.completed_type, "params": v.completed_params, "cache": True},
        {"job_type": v.completed_type, "params": v.completed_params, "cache": 1e7},
        {"job_type": v.completed_type, "params": v.completed_params, "cache": True,
         "dedupe": True},
    ):  # fmt: skip
        attack(
            "POST", "/jobs", 201, created_for(conn, me, created=True), changes_own=True, json=body
        )
    # the same type and params as one of the caller's own pending jobs: the caller's job
    attack(
        "POST",
        "/jobs",
        200,
        created_for(conn, me, created=False),
        json={"job_type": v.pending_type, "params": v.pending_params, "dedupe": True},
    )
    # list
    attack("GET", "/jobs", 200, own_jobs(me))
    attack("GET", "/jobs", 403, params={"user_id": str(v.user)})
    attack("GET", "/jobs", 403, params={"user_id": str(v.user), "cursor": ""})
    attack("GET", "/jobs", 200, own_jobs(me), params={"job_type": v.completed_type})
    attack("GET", "/jobs", 200, own_jobs(me), params={"status": "completed"})
    attack("GET", "/jobs", 200, own_jobs(me), params={"cursor": cursor_at_victim})
    attack("GET", "/jobs", 200, own_jobs(me), params={"cursor": ""})
    attack("GET", "/jobs", 200, own_jobs(me), params={"limit": 1000, "order_by": "job_type"})
    # one job, its logs, cancel, retry: 404 as for a job that does not exist
    for job in (v.pending, v.processing, v.completed, v.failed):
        attack("GET", f"/jobs/{job}", 404)
        attack("GET", f"/jobs/{job}", 404, headers={"If-None-Match": "*"})
        attack("GET", f"/jobs/{job}/logs", 404)
        attack("GET", f"/jobs/{job}/logs", 404, params={"q": v.log_word, "level": "info"})
        attack("POST", f"/jobs/{job}/cancel", 404)
        attack("POST", f"/jobs/{job}/retry", 404)
    attack("GET", f"/jobs/{me.pending}/logs", 200, own_logs(conn, me), params={"q": v.log_word})
    # stats
    attack("GET", "/stats", 200, stats_are_own(conn, me))
    attack("GET", "/stats", 403, params={"user_id": str(v.user)})
    attack("GET", "/stats/throughput", 200, throughput_is_own(conn, me))
    attack("GET", "/stats/throughput", 403, params={"user_id": str(v.user)})
    attack("GET", "/stats/throughput", 200, throughput_is_own(conn, me), params={"minutes": 1440})
    attack("GET", "/stats/depth", 403)  # every user's queue depth: service_role only


# -- tokens ---------------------------------------------------------------------------------


def forged_tokens(tokens: Tokens, arena: Arena) -> dict[str, str]:
    """Every token that must be refused: the API tests' list and the forgeries of this suite."""
    a_token = tokens.user(arena.a.user)
    header, payload, signature = a_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))

    def resigned_not(**changes: Any) -> str:
        return f"{header}.{b64(json.dumps({**claims, **changes}).encode())}.{signature}"

    other = SECRET[::-1]
    unsigned_service = tokens.unsigned(tokens.legacy_claims("service_role"))
    return {
        **tokens.bad(),
        "B's sub in A's token, not re-signed": resigned_not(sub=str(arena.b.user)),
        "role service_role in A's token, not re-signed": resigned_not(role="service_role"),
        "A's token, signature stripped": f"{header}.{payload}.",
        "A's token, alg none header, signature kept": (
            f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{payload}.{signature}"
        ),
        "service_role signed with another secret": tokens.hs256(
            tokens.legacy_claims("service_role"), secret=other
        ),
        "user token of B signed with another secret": tokens.hs256(
            tokens.user_claims(arena.b.user), secret=other
        ),
        "user token with role service_role, another secret": tokens.hs256(
            tokens.user_claims(arena.a.user, role="service_role"), secret=other
        ),
        "expired service_role": tokens.hs256(
            tokens.legacy_claims("service_role", exp=1_000_000, iat=999_000)
        ),
        "two bearer tokens": f"{a_token}, Bearer {unsigned_service}",
        "anon key": tokens.anon(),
    }  # fmt: skip


def _status_only(
    client: httpx.Client, method: str, path: str, headers: dict[str, str]
) -> httpx.Response:
    """The response's status without reading a body (an accepted /events would never end)."""
    with client.stream(method, path, headers=headers) as r:
        if r.status_code != 200 or path != "/events":
            r.read()
        return r


@pytest.mark.parametrize("victim", ["B", "A"])
def test_missing_anon_and_forged_tokens_are_refused(
    conn: Conn, arena: Arena, api: Api, victim: str
) -> None:
    v = arena.party(victim)
    client = api.client()  # one connection for all (no token of its own)
    forged = forged_tokens(api.tokens, arena)
    headers_by_name: dict[str, dict[str, str]] = {"no token": {}}
    headers_by_name |= {
        name: {"Authorization": f"Bearer {t}".strip()} for name, t in forged.items()
    }
    headers_by_name["Basic credentials"] = {"Authorization": "Basic YTpi"}
    for name, headers in headers_by_name.items():
        who = "anon" if name in ("no token", "anon key", "Basic credentials") else "forged"
        for method, template in DATA:
            path = template.replace("{job}", str(v.pending))
            body = {"job_type": "x", "user_id": str(v.user)} if path == "/jobs" else None
            kwargs: dict[str, Any] = {"json": body} if method == "POST" and body else {}
            http_attack(
                conn,
                kind="events" if path == "/events" else KIND,
                who=who,
                victim=v,
                target=f"{method} {path} with {name}",
                send=(
                    (lambda p=path, h=headers, m=method: _status_only(client, m, p, h))
                    if not kwargs
                    else (lambda p=path, h=headers, m=method, k=kwargs: client.request(
                        m, p, headers=h, **k))
                ),
                expect=401,
            )  # fmt: skip


FORGED_HEADERS: dict[str, Callable[[Party, Tokens], dict[str, str]]] = {
    "X-Forwarded-User": lambda v, t: {"X-Forwarded-User": str(v.user)},
    "X-User-Id": lambda v, t: {"X-User-Id": str(v.user)},
    "X-Supabase-User": lambda v, t: {"X-Supabase-User": str(v.user)},
    "X-JWT-Claims": lambda v, t: {
        "X-JWT-Claims": json.dumps({"sub": str(v.user), "role": "service_role"})
    },
    "X-Role": lambda v, t: {"X-Role": "service_role", "X-Postgres-Role": "service_role"},
    "Prefer": lambda v, t: {"Prefer": f"params=single-object, tx=commit, user_id={v.user}"},
    "apikey (service key)": lambda v, t: {"apikey": t.service()},
    "Cookie": lambda v, t: {"Cookie": f"user_id={v.user}; role=service_role"},
    "X-Forwarded-For/Host": lambda v, t: {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "::1"},
}
FORGED_QUERY = {"sub": "{v}", "role": "service_role", "user": "{v}", "claims": '{{"sub":"{v}"}}'}


@pytest.mark.parametrize(("who", "victim"), PAIRS, ids=[f"{w}-vs-{v}" for w, v in PAIRS])
def test_headers_and_query_cannot_change_the_subject(
    conn: Conn, arena: Arena, api: Api, who: str, victim: str
) -> None:
    me, v = arena.party(who), arena.party(victim)
    client = api.client()
    token = api.tokens.user(me.user)
    query = {k: val.format(v=v.user) for k, val in FORGED_QUERY.items()}
    variants = {name: make(v, api.tokens) for name, make in FORGED_HEADERS.items()}
    variants["query sub/role/user/claims"] = {}
    for name, extra in variants.items():
        params = query if name.startswith("query") else None
        headers = {"Authorization": f"Bearer {token}", **extra}
        for method, path, expect, check in (
            ("GET", "/jobs", 200, own_jobs(me)),
            ("GET", f"/jobs/{v.completed}", 404, None),
            ("GET", f"/jobs/{v.completed}/logs", 404, None),
            ("POST", f"/jobs/{v.pending}/cancel", 404, None),
            ("GET", "/stats", 200, stats_are_own(conn, me)),
            ("GET", "/stats/depth", 403, None),
        ):
            http_attack(
                conn,
                kind=KIND,
                who=who,
                victim=v,
                target=f"{method} {path} with {name}",
                send=(
                    lambda m=method, p=path, h=headers, q=params: client.request(
                        m, p, headers=h, params=q
                    )
                ),
                expect=expect,
                check=check,
            )


def test_public_routes_expose_no_data(conn: Conn, arena: Arena, api: Api) -> None:
    """/health, the dashboard and the docs: the same bytes for everyone, none of anyone's data."""
    files = sorted(p.name for p in STATIC.iterdir() if p.is_file())
    assert "index.html" in files
    paths = ["/health", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect"]
    paths += [f"/dashboard/{f}" for f in files]
    client = api.client()
    for who, token in (
        ("anon", None),
        ("A", api.tokens.user(arena.a.user)),
        ("B", api.tokens.user(arena.b.user)),
    ):
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        for victim in (arena.a, arena.b):
            if victim.name == who:
                continue
            for path in paths:
                http_attack(
                    conn,
                    kind=KIND,
                    who=who,
                    victim=victim,
                    target=f"GET {path}",
                    send=lambda p=path, h=headers: client.get(p, headers=h),
                    expect=200,
                )
    # path tricks under the static mount
    for path in ("/dashboard/../../etc/passwd", "/dashboard/%2e%2e/%2e%2e/etc/passwd"):
        http_attack(
            conn,
            kind=KIND,
            who="anon",
            victim=arena.b,
            target=f"GET {path}",
            send=lambda p=path: client.get(p),
            expect=404,
        )


# -- injection through the HTTP parameters ---------------------------------------------------


@pytest.mark.parametrize(("who", "victim"), PAIRS, ids=[f"{w}-vs-{v}" for w, v in PAIRS])
def test_injection_over_http(conn: Conn, arena: Arena, api: Api, who: str, victim: str) -> None:
    me, v = arena.party(who), arena.party(victim)
    client = api.client(api.tokens.user(me.user))
    delete = delete_created(conn)
    for payload in ALL_PAYLOADS:
        keyed = {payload: payload}
        cases: list[tuple[str, str, int, Any, dict[str, Any]]] = [
            ("GET", "/jobs", 200, own_jobs(me), {"params": {"job_type": payload}}),
            ("GET", "/jobs", 422, None, {"params": {"order_by": payload}}),
            ("GET", "/jobs", 422, None, {"params": {"order_dir": payload}}),
            ("GET", "/jobs", 422, None, {"params": {"status": payload}}),
            ("GET", "/jobs", 400, None, {"params": {"cursor": payload}}),
            ("GET", "/jobs", 400, None, {"params": {"cursor": b64(payload.encode())}}),
            ("GET", "/jobs", 400, None,
             {"params": {"cursor": b64(f"{payload}|{v.completed}".encode())}}),
            ("GET", f"/jobs/{me.pending}/logs", 200, own_logs(conn, me),
             {"params": {"q": payload}}),
            ("GET", f"/jobs/{me.pending}/logs", 422, None, {"params": {"level": payload}}),
            ("GET", f"/jobs/{quote(payload, safe='')}", 422, None, {}),
            ("POST", "/jobs", 400, None, {"json": {"job_type": payload}}),
            ("POST", "/jobs", 201, created_for(conn, me, created=True),
             {"json": {"job_type": "x", "params": keyed}}),
            ("POST", "/jobs", 201, created_for(conn, me, created=True),
             {"json": {"job_type": "x", "params": keyed, "dedupe": True}}),
            ("POST", "/jobs", 201, created_for(conn, me, created=True),
             {"json": {"job_type": v.completed_type, "params": {**v.completed_params, **keyed},
                       "cache": True}}),
        ]  # fmt: skip
        for method, path, expect, check, kwargs in cases:
            creates = method == "POST" and expect == 201
            http_attack(
                conn,
                kind="injection",
                who=who,
                victim=v,
                target=f"{method} {path} {kwargs} <- {json.dumps(payload)}",
                send=_send(client, method, path, **kwargs),
                expect=expect,
                check=check,
                state_may_change=creates,
                cleanup=delete if creates else None,
            )
