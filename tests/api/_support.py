"""Shared by the API tests: tokens of every kind, a running server, an SSE reader.

Imported as ``from tests.api._support import ...``; the fixtures are in conftest.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from jobq.api.runtime import Runtime
from jobq.api.server import ThreadedServer

SECRET = "jobq-test-secret-0123456789abcdef0123456789abcdef"  # noqa: S105
A = UUID("00000000-0000-4000-8000-00000000000a")
B = UUID("00000000-0000-4000-8000-00000000000b")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Keys:
    ec: ec.EllipticCurvePrivateKey
    rsa: rsa.RSAPrivateKey
    stranger: ec.EllipticCurvePrivateKey  # not in the JWKS
    jwks_path: Path


def make_keys(directory: Path) -> Keys:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_jwk = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    rsa_jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    jwks = {
        "keys": [
            {**ec_jwk, "kid": "ec-1", "alg": "ES256", "use": "sig"},
            {**rsa_jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"},
        ]
    }
    path = directory / "jwks.json"
    path.write_text(json.dumps(jwks))
    return Keys(ec_key, rsa_key, ec.generate_private_key(ec.SECP256R1()), path)


class Tokens:
    """Tokens as Supabase issues them, and every kind of bad one."""

    def __init__(self, keys: Keys, secret: str = SECRET) -> None:
        self.keys = keys
        self.secret = secret

    @staticmethod
    def user_claims(user: UUID, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": "https://project.supabase.co/auth/v1",
            "sub": str(user),
            "aud": "authenticated",
            "role": "authenticated",
            "iat": now,
            "exp": now + 3600,
            "email": "someone@example.com",
            "session_id": str(uuid.uuid4()),
        }
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    @staticmethod
    def legacy_claims(role: str, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": "supabase", "ref": "project", "role": role, "iat": now}
        claims["exp"] = now + 3600
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def hs256(self, claims: dict[str, Any], secret: str | None = None) -> str:
        return jwt.encode(claims, secret or self.secret, algorithm="HS256")

    def es256(self, claims: dict[str, Any], kid: str = "ec-1", key: Any = None) -> str:
        return jwt.encode(claims, key or self.keys.ec, algorithm="ES256", headers={"kid": kid})

    def rs256(self, claims: dict[str, Any], kid: str = "rsa-1") -> str:
        return jwt.encode(claims, self.keys.rsa, algorithm="RS256", headers={"kid": kid})

    def user(self, user: UUID = A, **extra: Any) -> str:
        return self.hs256(self.user_claims(user, **extra))

    def service(self) -> str:
        return self.hs256(self.legacy_claims("service_role"))

    def anon(self) -> str:
        return self.hs256(self.legacy_claims("anon"))

    def unsigned(self, claims: dict[str, Any]) -> str:
        header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{header}.{b64(json.dumps(claims).encode())}."

    def hmac_with_public_key(self, claims: dict[str, Any]) -> str:
        """The classic algorithm-confusion forgery: HS256 keyed with the RSA public key."""
        pem = self.keys.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signing_input = (
            b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
            + "."
            + b64(json.dumps(claims).encode())
        )
        mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64(mac)}"

    def bad(self) -> dict[str, str]:
        """Every token that must be refused, by name."""
        past = int(time.time()) - 3600
        return {
            "expired": self.user(exp=past, iat=past - 60),
            "wrong secret": self.hs256(self.user_claims(A), secret=SECRET[::-1]),
            "alg none": self.unsigned(self.user_claims(A)),
            "alg none (service)": self.unsigned(self.legacy_claims("service_role")),
            "unknown kid": self.es256(self.user_claims(A), kid="nope", key=self.keys.stranger),
            "known kid, other key": self.es256(self.user_claims(A), key=self.keys.stranger),
            "ES256 with the RSA kid": self.es256(self.user_claims(A), kid="rsa-1"),
            "role postgres": self.hs256(self.legacy_claims("postgres")),
            "role supabase_admin": self.hs256(self.legacy_claims("supabase_admin")),
            "role authenticator": self.hs256(self.user_claims(A, role="authenticator")),
            "no role": self.hs256(self.user_claims(A, role=None)),
            "missing sub": self.hs256(self.user_claims(A, sub=None)),
            "sub not a uuid": self.hs256(self.user_claims(A, sub="not-a-uuid")),
            "wrong aud": self.hs256(self.user_claims(A, aud="someone-else")),
            "no aud": self.hs256(self.user_claims(A, aud=None)),
            "no exp": self.hs256(self.user_claims(A, exp=None)),
            "HS256 keyed with the RSA public key": self.hmac_with_public_key(self.user_claims(A)),
            "garbage": "not.a.jwt",
            "empty": "",
        }


@dataclass
class Api:
    """A running API server: its URL, app runtime, and HTTP helpers."""

    server: ThreadedServer
    tokens: Tokens
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def runtime(self) -> Runtime:
        rt: Runtime = self.server.server.app.state.jobq
        return rt

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(c)
        return c

    def as_user(self, user: UUID = A) -> httpx.Client:
        return self.client(self.tokens.user(user))

    def as_service(self) -> httpx.Client:
        return self.client(self.tokens.service())

    def as_anon(self) -> httpx.Client:
        return self.client(self.tokens.anon())

    def close(self) -> None:
        for c in self.clients:
            c.close()


# ---------------------------------------------------------------------------
# Server-Sent Events
# ---------------------------------------------------------------------------


@dataclass
class Frame:
    event: str
    id: str | None
    data: Any


class SSEReader:
    """Reads /events in a thread; frames are waited for, never slept for."""

    def __init__(self, url: str, token: str) -> None:
        self._url = url
        self._token = token
        self.frames: queue.Queue[Frame | None] = queue.Queue()
        self.seen: list[Frame] = []
        self.comments: list[str] = []
        self.connected = threading.Event()
        self.kept_alive = threading.Event()  # a ": keep-alive" comment arrived
        self.ended = threading.Event()
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self, timeout: float = 30) -> SSEReader:
        self._thread.start()
        if not self.connected.wait(timeout):
            raise AssertionError(f"/events did not connect (status {self.status})")
        return self

    def _read(self) -> None:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "text/event-stream"}
        try:
            with httpx.stream(
                "GET", self._url + "/events", headers=headers, timeout=httpx.Timeout(30)
            ) as r:
                self.status, self.headers = r.status_code, r.headers
                if r.status_code != 200:
                    r.read()
                    self.connected.set()
                    return
                event, ident, data = "message", None, []
                for line in r.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith(":"):
                        self.comments.append(line[1:].strip())
                        if line.strip() == ": connected":
                            self.connected.set()
                        elif line.strip() == ": keep-alive":
                            self.kept_alive.set()
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("id:"):
                        ident = line[3:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line == "" and data:
                        frame = Frame(event, ident, json.loads("\n".join(data)))
                        self.seen.append(frame)
                        self.frames.put(frame)
                        event, ident, data = "message", None, []
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()
            self.connected.set()
            self.frames.put(None)

    def wait_for(self, predicate: Callable[[Frame], bool], timeout: float = 30) -> Frame:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching event within {timeout}s; seen {self.seen}")
            try:
                frame = self.frames.get(timeout=remaining)
            except queue.Empty:
                continue
            if frame is None:
                raise AssertionError(f"the stream ended; seen {self.seen}")
            if predicate(frame):
                return frame

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
