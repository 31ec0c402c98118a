"""Bearer JWTs as Supabase issues them, mapped to the identity a request acts as.

The algorithm is never taken from the token: the configuration fixes which
families are accepted (HS256 when a secret is set; ES256/RS256 when a JWKS is
set), and the header's ``alg`` only selects one of them. An HS256 token is
checked against the secret alone; an ES256/RS256 token against the JWKS key
its ``kid`` names, with that key's own algorithm. ``exp`` is required. Only the
roles anon, authenticated and service_role are accepted; user tokens
(authenticated) need the configured ``aud`` and a uuid ``sub``.

Nothing here decides what an identity may do: the database does, once the
request's transaction acts as it (role and ``request.jwt.claims``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from uuid import UUID

import jwt

from jobq.api.settings import Settings

Role = Literal["anon", "authenticated", "service_role"]
ROLES: frozenset[str] = frozenset({"anon", "authenticated", "service_role"})
ASYMMETRIC: frozenset[str] = frozenset({"ES256", "RS256"})
SYMMETRIC = "HS256"


class AuthError(Exception):
    """A token is missing, malformed or refused: 401 with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class KeysUnavailable(Exception):
    """The JWKS could not be fetched (the token cannot be checked now): 503."""


@dataclass(frozen=True)
class Identity:
    """Who a request acts as. ``user_id`` is set for authenticated only."""

    role: Role
    user_id: UUID | None = None
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class KeySource(Protocol):
    """ES256/RS256 public keys by ``kid`` (None: no such key)."""

    @property
    def blocking(self) -> bool: ...

    def get(self, kid: str) -> jwt.PyJWK | None: ...


def _signing_keys(jwks: jwt.PyJWKSet) -> dict[str, jwt.PyJWK]:
    return {
        k.key_id: k
        for k in jwks.keys
        if k.key_id and k.public_key_use in ("sig", None) and k.algorithm_name in ASYMMETRIC
    }


class FileKeys:
    """A JWKS read once from a file (offline use, tests)."""

    blocking = False

    def __init__(self, path: str | Path) -> None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            self._keys = _signing_keys(jwt.PyJWKSet.from_dict(data))
        except (OSError, ValueError, jwt.PyJWKSetError) as exc:
            raise ValueError(f"cannot read a JWKS from {path}: {exc}") from exc

    def get(self, kid: str) -> jwt.PyJWK | None:
        return self._keys.get(kid)


class UrlKeys:
    """A JWKS fetched and cached by PyJWT's PyJWKClient.

    An unknown ``kid`` refreshes the set at most once per cooldown, so a flood
    of made-up kids cannot turn into a flood of fetches.
    """

    blocking = True  # urllib: call it from a thread

    def __init__(self, url: str, *, lifespan: float = 300, timeout: float = 5) -> None:
        self._client = jwt.PyJWKClient(
            url, cache_jwk_set=True, lifespan=lifespan, timeout=timeout, cooldown_duration=30
        )

    def get(self, kid: str) -> jwt.PyJWK | None:
        try:
            key = self._client.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as exc:
            raise KeysUnavailable(str(exc)) from exc
        except jwt.PyJWKClientError:
            return None
        return key if key.algorithm_name in ASYMMETRIC else None


class TokenVerifier:
    """Checks a bearer token and returns the identity it grants."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        keys: KeySource | None = None,
        audience: str = "authenticated",
        leeway: float = 10.0,
    ) -> None:
        self._secret = secret
        self._keys = keys
        self._audience = audience
        self._leeway = leeway

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        keys: KeySource | None = None
        if settings.jwks_file:
            keys = FileKeys(settings.jwks_file)
        elif settings.jwks_url:
            keys = UrlKeys(settings.jwks_url)
        return cls(
            secret=settings.jwt_secret,
            keys=keys,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway,
        )

    @property
    def configured(self) -> bool:
        return self._secret is not None or self._keys is not None

    @property
    def blocking(self) -> bool:
        """True when verifying may do network I/O (a JWKS URL): run it in a thread."""
        return self._keys is not None and self._keys.blocking

    def _key_for(self, header: dict[str, Any]) -> tuple[Any, list[str]]:
        alg = header.get("alg")
        if alg == SYMMETRIC and self._secret is not None:
            return self._secret, [SYMMETRIC]
        if alg in ASYMMETRIC and self._keys is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise AuthError("invalid_token", "token header has no kid")
            jwk = self._keys.get(kid)
            if jwk is None:
                raise AuthError("unknown_kid", "no key with the token's kid")
            return jwk.key, [jwk.algorithm_name]
        raise AuthError("unsupported_algorithm", f"tokens signed with {alg!r} are not accepted")

    def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthError("invalid_token", "malformed token") from exc
        key, algorithms = self._key_for(header)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                options={"require": ["exp"], "verify_aud": False},
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token_expired", "token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError("invalid_token", f"invalid token: {exc}") from exc
        return self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> Identity:
        role = claims.get("role")
        if role not in ROLES:
            raise AuthError(
                "invalid_role", "token role must be anon, authenticated or service_role"
            )
        if role == "authenticated":
            aud = claims.get("aud")
            auds = aud if isinstance(aud, list) else [aud]
            if self._audience not in auds:
                raise AuthError("invalid_audience", f"user tokens need aud {self._audience!r}")
            sub = claims.get("sub")
            try:
                user_id = UUID(sub) if isinstance(sub, str) else None
            except ValueError:
                user_id = None
            if user_id is None:
                raise AuthError("invalid_subject", "user tokens need a uuid sub")
            return Identity("authenticated", user_id, claims)
        return Identity("anon" if role == "anon" else "service_role", None, claims)


def mint_token(
    secret: str,
    *,
    role: str = "authenticated",
    user_id: UUID | str | None = None,
    ttl: int = 3600,
    audience: str = "authenticated",
    issuer: str = "jobq",
) -> str:
    """A development HS256 token shaped like Supabase's (user token or legacy key)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {sorted(ROLES)}")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    now = int(time.time())
    claims: dict[str, Any] = {"iss": issuer, "role": role, "iat": now, "exp": now + ttl}
    if role == "authenticated":
        if user_id is None:
            raise ValueError("an authenticated token needs a user id")
        claims["sub"] = str(UUID(str(user_id)))
        claims["aud"] = audience
    elif user_id is not None:
        claims["sub"] = str(UUID(str(user_id)))
    return jwt.encode(claims, secret, algorithm=SYMMETRIC)
