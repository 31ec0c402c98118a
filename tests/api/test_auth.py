"""Bearer tokens: what is accepted (Supabase user tokens and legacy keys, HS256
and ES256/RS256 from a JWKS) and everything refused with 401, on every endpoint."""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from tests.api._support import SECRET, A, Api, Keys, Tokens
from typer.testing import CliRunner

from jobq.api import Settings, SettingsError, TokenVerifier, create_app, mint_token
from jobq.api.auth import AuthError, KeysUnavailable, UrlKeys
from jobq.cli import app as cli

# (method, path) of every endpoint that needs a signed-in caller; {job} is a job id.
DATA_ENDPOINTS = [
    ("POST", "/jobs"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{job}"),
    ("GET", "/jobs/{job}/logs"),
    ("POST", "/jobs/{job}/cancel"),
    ("POST", "/jobs/{job}/retry"),
    ("GET", "/stats"),
    ("GET", "/events"),
]


@pytest.fixture
def verifier(keys: Keys) -> TokenVerifier:
    return TokenVerifier.from_settings(
        Settings(jwt_secret=SECRET, jwks_file=str(keys.jwks_path), jwt_leeway=0)
    )


# -- the verifier on its own ------------------------------------------------------------


def test_accepts_user_tokens_of_every_algorithm(verifier: TokenVerifier, tokens: Tokens) -> None:
    claims = tokens.user_claims(A)
    for token in (tokens.hs256(claims), tokens.es256(claims), tokens.rs256(claims)):
        ident = verifier.verify(token)
        assert (ident.role, ident.user_id) == ("authenticated", A)
        assert ident.claims["email"] == "someone@example.com"


def test_accepts_legacy_keys_without_sub_or_aud(verifier: TokenVerifier, tokens: Tokens) -> None:
    assert verifier.verify(tokens.service()).role == "service_role"
    assert verifier.verify(tokens.service()).user_id is None
    assert verifier.verify(tokens.anon()).role == "anon"
    # an asymmetric service key works too
    assert verifier.verify(tokens.es256(tokens.legacy_claims("service_role"))).role == (
        "service_role"
    )


def test_aud_may_be_a_list(verifier: TokenVerifier, tokens: Tokens) -> None:
    token = tokens.hs256(tokens.user_claims(A, aud=["other", "authenticated"]))
    assert verifier.verify(token).user_id == A


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("expired", "token_expired"),
        ("wrong secret", "invalid_token"),
        ("alg none", "unsupported_algorithm"),
        ("alg none (service)", "unsupported_algorithm"),
        ("unknown kid", "unknown_kid"),
        ("known kid, other key", "invalid_token"),
        ("ES256 with the RSA kid", "invalid_token"),
        ("role postgres", "invalid_role"),
        ("role supabase_admin", "invalid_role"),
        ("role authenticator", "invalid_role"),
        ("no role", "invalid_role"),
        ("missing sub", "invalid_subject"),
        ("sub not a uuid", "invalid_subject"),
        ("wrong aud", "invalid_audience"),
        ("no aud", "invalid_audience"),
        ("no exp", "invalid_token"),
        ("HS256 keyed with the RSA public key", "invalid_token"),
        ("garbage", "invalid_token"),
        ("empty", "invalid_token"),
    ],
)
def test_refuses(verifier: TokenVerifier, tokens: Tokens, name: str, code: str) -> None:
    with pytest.raises(AuthError) as caught:
        verifier.verify(tokens.bad()[name])
    assert caught.value.code == code


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_algorithms_follow_configuration_not_the_token(keys: Keys, tokens: Tokens) -> None:
    claims = tokens.user_claims(A)
    hs_only = TokenVerifier(secret=SECRET)
    with pytest.raises(AuthError, match="not accepted"):
        hs_only.verify(tokens.es256(claims))  # no JWKS configured: ES256 is not an option
    jwks_only = TokenVerifier.from_settings(Settings(jwks_file=str(keys.jwks_path)))
    with pytest.raises(AuthError, match="not accepted"):
        jwks_only.verify(tokens.hs256(claims))  # no secret: HS256 is not an option
    # HS384/HS512 with the right secret: not in the whitelist either
    with pytest.raises(AuthError, match="not accepted"):
        hs_only.verify(jwt.encode(claims, SECRET, algorithm="HS512"))


def test_a_future_iat_or_nbf_is_refused(verifier: TokenVerifier, tokens: Tokens) -> None:
    later = int(time.time()) + 3600
    with pytest.raises(AuthError):
        verifier.verify(tokens.hs256(tokens.user_claims(A, nbf=later)))
    with pytest.raises(AuthError):
        verifier.verify(tokens.hs256(tokens.user_claims(A, iat=later)))


def test_jwks_file_must_be_readable(tmp_path: Any) -> None:
    bad = tmp_path / "jwks.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read a JWKS"):
        TokenVerifier.from_settings(Settings(jwks_file=str(bad)))


class _JwksHandler(http.server.BaseHTTPRequestHandler):
    body = b""
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def jwks_url(keys: Keys) -> Iterator[str]:
    _JwksHandler.body = keys.jwks_path.read_bytes()
    _JwksHandler.hits = 0
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _JwksHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/auth/v1/.well-known/jwks.json"
    httpd.shutdown()
    httpd.server_close()


def test_jwks_url_is_fetched_once_and_cached(jwks_url: str, tokens: Tokens) -> None:
    verifier = TokenVerifier(keys=UrlKeys(jwks_url))
    assert verifier.blocking
    for _ in range(5):
        assert verifier.verify(tokens.es256(tokens.user_claims(A))).user_id == A
        assert verifier.verify(tokens.rs256(tokens.user_claims(A))).user_id == A
    assert _JwksHandler.hits == 1
    # An unknown kid refreshes at most once per cooldown, however many arrive.
    for _ in range(5):
        with pytest.raises(AuthError) as caught:
            verifier.verify(tokens.bad()["unknown kid"])
        assert caught.value.code == "unknown_kid"
    assert _JwksHandler.hits <= 2


def test_jwks_url_down_is_503_not_401(tokens: Tokens) -> None:
    verifier = TokenVerifier(keys=UrlKeys("http://127.0.0.1:9/jwks.json", timeout=2))
    with pytest.raises(KeysUnavailable):
        verifier.verify(tokens.es256(tokens.user_claims(A)))


# -- over HTTP ---------------------------------------------------------------------------


def _job(api: Api) -> str:
    r = api.as_user(A).post("/jobs", json={"job_type": "auth.t"})
    assert r.status_code == 201, r.text
    job_id: str = r.json()["job_id"]
    return job_id


def _call(client: httpx.Client, token: str | None, method: str, path: str) -> Any:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if path == "/events":
        with client.stream(method, path, headers=headers) as r:
            r.read() if r.status_code != 200 else None
            return r
    body = {"job_type": "auth.t"} if (method, path) == ("POST", "/jobs") else None
    return client.request(method, path, headers=headers, json=body)


def test_every_bad_token_is_refused_on_every_endpoint(api: Api, tokens: Tokens) -> None:
    job = _job(api)
    bad = tokens.bad()
    client = api.client()
    for method, template in DATA_ENDPOINTS:
        path = template.format(job=job)
        for name, token in bad.items():
            if not token:
                continue  # "Bearer " alone: the missing-token test covers it
            r = _call(client, token, method, path)
            assert r.status_code == 401, (method, path, name, r.text)
            error = r.json()["error"]
            assert error["code"] != "internal_error"
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "no-store" in r.headers["cache-control"]
        expired = _call(client, bad["expired"], method, path)
        assert expired.json()["error"]["code"] == "token_expired"


def test_missing_token_and_other_schemes_are_401(api: Api) -> None:
    client = api.client()
    for method, template in DATA_ENDPOINTS:
        path = template.format(job=uuid.uuid4())
        if path == "/events":
            continue
        for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"]["code"] == "missing_token"
            assert r.headers["www-authenticate"] == "Bearer"


def test_anon_is_refused_on_data_endpoints_but_sees_health(api: Api, tokens: Tokens) -> None:
    job = _job(api)
    client = api.client()
    for method, template in DATA_ENDPOINTS:
        r = _call(client, tokens.anon(), method, template.format(job=job))
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "anonymous"
    assert api.as_anon().get("/health").status_code == 200
    assert api.client().get("/health").status_code == 200


def test_es256_and_rs256_user_tokens_work_over_http(api: Api, tokens: Tokens) -> None:
    job = _job(api)
    for token in (tokens.es256(tokens.user_claims(A)), tokens.rs256(tokens.user_claims(A))):
        r = api.client(token).get(f"/jobs/{job}")
        assert r.status_code == 200, r.text
        assert r.json()["user_id"] == str(A)


def test_app_refuses_to_start_without_a_key() -> None:
    with pytest.raises(SettingsError, match="JOBQ_JWT_SECRET"):
        create_app(Settings(database_url="postgresql://unused"))


# -- jobq token ----------------------------------------------------------------------------


def test_jobq_token_mints_a_user_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQ_JWT_SECRET", SECRET)
    user = uuid.uuid4()
    result = CliRunner().invoke(cli, ["token", "--user", str(user), "--ttl", "60"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    ident = TokenVerifier(secret=SECRET).verify(token)
    assert (ident.role, ident.user_id) == ("authenticated", user)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="authenticated")
    assert claims["exp"] - claims["iat"] == 60


def test_jobq_token_service_role(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBQ_JWT_SECRET", SECRET)
    result = CliRunner().invoke(cli, ["token", "--role", "service_role"])
    assert result.exit_code == 0, result.output
    assert TokenVerifier(secret=SECRET).verify(result.stdout.strip()).role == "service_role"


def test_jobq_token_refuses_without_secret_or_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBQ_JWT_SECRET", raising=False)
    result = CliRunner().invoke(cli, ["token", "--user", str(uuid.uuid4())])
    assert result.exit_code == 2
    assert "JOBQ_JWT_SECRET" in result.output
    monkeypatch.setenv("JOBQ_JWT_SECRET", SECRET)
    assert CliRunner().invoke(cli, ["token"]).exit_code != 0  # authenticated needs --user
    assert CliRunner().invoke(cli, ["token", "--user", "nope"]).exit_code != 0
    assert CliRunner().invoke(cli, ["token", "--role", "postgres"]).exit_code != 0


def test_mint_token_shapes() -> None:
    user = uuid.uuid4()
    claims = jwt.decode(
        mint_token(SECRET, user_id=user), SECRET, algorithms=["HS256"], audience="authenticated"
    )
    assert claims["sub"] == str(user)
    assert claims["role"] == "authenticated"
    legacy = jwt.decode(mint_token(SECRET, role="service_role"), SECRET, algorithms=["HS256"])
    assert "aud" not in legacy
    assert "sub" not in legacy
    assert json.dumps(legacy)
