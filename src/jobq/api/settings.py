"""The API's settings, from the environment (``Settings.from_env``) or built in code.

=========================  ================================================================
``DATABASE_URL``           the database; unset: the embedded PostgreSQL 18 (jobq.db)
``JOBQ_JWT_SECRET``        HS256 secret (Supabase's legacy JWT secret); enables HS256
``JOBQ_JWKS_URL``          a JWKS to fetch (and cache) ES256/RS256 public keys from
``JOBQ_JWKS_FILE``         a JWKS JSON file, for offline use (instead of the URL)
``JOBQ_JWT_AUDIENCE``      ``aud`` user tokens must carry (default ``authenticated``)
``JOBQ_JWT_LEEWAY``        seconds of clock skew allowed on exp/nbf/iat (default 10)
``JOBQ_POOL_MIN_SIZE``     connections kept open (default 1)
``JOBQ_POOL_MAX_SIZE``     connections at most (default 10)
``JOBQ_POOL_TIMEOUT``      seconds a request waits for a connection before 503 (default 5)
``JOBQ_RETRY_AFTER``       ``Retry-After`` seconds on 429 and 503 (default 5)
``JOBQ_MAX_BODY_BYTES``    request bodies over this are refused with 413 (default 1 MiB)
``JOBQ_SSE_KEEPALIVE``     seconds between ``: keep-alive`` comments on /events (default 15)
``JOBQ_CACHE_PUBLIC``      Cache-Control of public routes (default ``public, max-age=300``)
``JOBQ_CACHE_SEO``         the ``seo`` policy (default ``public, max-age=3600``)
``JOBQ_CACHE_JOB_STATUS``  GET /jobs/{id} (default ``private, max-age=5``; must stay private)
``JOBQ_CACHE_ROUTES``      JSON object: public path (or prefix ending in ``*``) -> policy,
                           where a policy is ``public``, ``seo`` or a Cache-Control value,
                           e.g. ``{"/openapi.json": "seo", "/dashboard/*": "seo"}``
=========================  ================================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_PUBLIC = "public, max-age=300"
DEFAULT_SEO = "public, max-age=3600"
DEFAULT_JOB_STATUS = "private, max-age=5"


class SettingsError(ValueError):
    """A setting is malformed or unsafe (refused at start-up, never at request time)."""


def _is_private(value: str) -> bool:
    words = {w.strip().split("=")[0].lower() for w in value.split(",")}
    return "private" in words or "no-store" in words


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwks_file: str | None = None
    jwt_audience: str = "authenticated"
    jwt_leeway: float = 10.0
    pool_min_size: int = 1
    pool_max_size: int = 10
    pool_timeout: float = 5.0
    retry_after: int = 5
    max_body_bytes: int = 1 << 20
    sse_keepalive: float = 15.0
    cache_public: str = DEFAULT_PUBLIC
    cache_seo: str = DEFAULT_SEO
    cache_job_status: str = DEFAULT_JOB_STATUS
    cache_routes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.jwks_url and self.jwks_file:
            raise SettingsError("set JOBQ_JWKS_URL or JOBQ_JWKS_FILE, not both")
        if not _is_private(self.cache_job_status):
            raise SettingsError(
                "the job status Cache-Control must be private or no-store: "
                f"{self.cache_job_status!r}"
            )
        if self.pool_min_size < 0 or self.pool_max_size < max(1, self.pool_min_size):
            raise SettingsError("pool sizes: 0 <= min <= max, max >= 1")
        for pattern, policy in self.cache_routes.items():
            if not pattern.startswith("/"):
                raise SettingsError(f"cache route {pattern!r} must start with /")
            self.route_policy(policy)  # validates

    @property
    def auth_configured(self) -> bool:
        return bool(self.jwt_secret or self.jwks_url or self.jwks_file)

    def route_policy(self, policy: str) -> str:
        """The Cache-Control value of a configured policy name or literal value."""
        named = {"public": self.cache_public, "seo": self.cache_seo}
        value = named.get(policy, policy).strip()
        if not value or any(c in value for c in "\r\n"):
            raise SettingsError(f"bad Cache-Control policy {policy!r}")
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env

        def text(name: str) -> str | None:
            value = e.get(name, "").strip()
            return value or None

        def number(name: str, default: float) -> float:
            raw = text(name)
            try:
                return default if raw is None else float(raw)
            except ValueError as exc:
                raise SettingsError(f"{name} must be a number, got {raw!r}") from exc

        routes: dict[str, str] = {}
        raw_routes = text("JOBQ_CACHE_ROUTES")
        if raw_routes:
            try:
                parsed = json.loads(raw_routes)
            except ValueError as exc:
                raise SettingsError(f"JOBQ_CACHE_ROUTES is not JSON: {exc}") from exc
            if not isinstance(parsed, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
            ):
                raise SettingsError("JOBQ_CACHE_ROUTES must be a JSON object of strings")
            routes = parsed

        return cls(
            database_url=text("DATABASE_URL"),
            jwt_secret=text("JOBQ_JWT_SECRET"),
            jwks_url=text("JOBQ_JWKS_URL"),
            jwks_file=text("JOBQ_JWKS_FILE"),
            jwt_audience=text("JOBQ_JWT_AUDIENCE") or "authenticated",
            jwt_leeway=number("JOBQ_JWT_LEEWAY", 10.0),
            pool_min_size=int(number("JOBQ_POOL_MIN_SIZE", 1)),
            pool_max_size=int(number("JOBQ_POOL_MAX_SIZE", 10)),
            pool_timeout=number("JOBQ_POOL_TIMEOUT", 5.0),
            retry_after=int(number("JOBQ_RETRY_AFTER", 5)),
            max_body_bytes=int(number("JOBQ_MAX_BODY_BYTES", 1 << 20)),
            sse_keepalive=number("JOBQ_SSE_KEEPALIVE", 15.0),
            cache_public=text("JOBQ_CACHE_PUBLIC") or DEFAULT_PUBLIC,
            cache_seo=text("JOBQ_CACHE_SEO") or DEFAULT_SEO,
            cache_job_status=text("JOBQ_CACHE_JOB_STATUS") or DEFAULT_JOB_STATUS,
            cache_routes=routes,
        )


def is_private_policy(value: str) -> bool:
    """True when a Cache-Control value keeps a response out of shared caches."""
    return _is_private(value)
