"""Cache-Control, Vary and ETags: what the spec's edge function sends, made safe.

* Job status (GET /jobs/{id}): ``private, max-age=5`` with an ETag; a matching
  ``If-None-Match`` gets 304.
* Other per-user data: ``private, no-cache`` (with an ETag on GETs, so a
  revalidation costs a 304 rather than the body); writes and the event stream:
  ``no-store``. Every private response carries ``Vary: Authorization``.
* Public routes (/health, /openapi.json, /docs): ``public, max-age=300``.
* More public routes (and their policies) can be configured per path or path
  prefix: ``JOBQ_CACHE_ROUTES='{"/dashboard/*": "seo"}'`` gives them the SEO
  policy ``public, max-age=3600``.

Nothing private is ever publicly cacheable: :class:`CacheHeaders` rewrites any
Cache-Control on a non-public route that lacks ``private`` or ``no-store``, and
a configured public route may not shadow an authenticated one (refused when
the app is built). Error responses are ``no-store``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobq.api.settings import Settings, SettingsError, is_private_policy

log = logging.getLogger("jobq.api")

PUBLIC_PATHS: tuple[str, ...] = ("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect")
PRIVATE_DEFAULT = "private, no-cache"
NO_STORE = "no-store"


def _matches(pattern: str, path: str) -> bool:
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern


class CacheRules:
    """Which paths are public, and with which Cache-Control."""

    def __init__(self, settings: Settings, private_paths: Iterable[str] = ()) -> None:
        # Most specific pattern first: exact paths, then longer prefixes.
        configured = sorted(
            settings.cache_routes.items(), key=lambda kv: (kv[0].endswith("*"), -len(kv[0]))
        )
        self._routes = [(p, settings.route_policy(v)) for p, v in configured]
        for pattern, value in self._routes:
            if not is_private_policy(value):
                shadowed = [p for p in private_paths if _matches(pattern, p)]
                if shadowed:
                    raise SettingsError(
                        f"cache route {pattern!r} would make authenticated routes "
                        f"{shadowed} publicly cacheable"
                    )
        self._public_default = settings.cache_public
        self.job_status = settings.cache_job_status

    def public_value(self, path: str) -> str | None:
        """The Cache-Control of a public path; None for a private one."""
        for pattern, value in self._routes:
            if _matches(pattern, path):
                return value
        if path in PUBLIC_PATHS:
            return self._public_default
        return None


def _add_vary(headers: MutableHeaders, name: str) -> None:
    present = [v.strip().lower() for v in headers.get("vary", "").split(",") if v.strip()]
    if name.lower() not in present and "*" not in present:
        headers.append("Vary", name)


class CacheHeaders:
    """ASGI middleware: the last word on Cache-Control and Vary for every response."""

    def __init__(self, app: ASGIApp, rules: CacheRules) -> None:
        self.app = app
        self.rules = rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        public = self.rules.public_value(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                status: int = message["status"]
                current = headers.get("cache-control")
                if status >= 400 and current is None:
                    headers["Cache-Control"] = NO_STORE
                elif public is not None:
                    if current is None:
                        headers["Cache-Control"] = public
                elif current is None:
                    headers["Cache-Control"] = PRIVATE_DEFAULT
                elif not is_private_policy(current):
                    log.warning("refusing Cache-Control %r on private %s", current, scope["path"])
                    headers["Cache-Control"] = PRIVATE_DEFAULT
                if public is None:
                    _add_vary(headers, "Authorization")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def etag_of(body: bytes) -> str:
    """A strong ETag for a representation (its hash)."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def matches_etag(if_none_match: str | None, etag: str) -> bool:
    """True when an If-None-Match header names ``etag`` (weak comparison, or ``*``)."""
    if not if_none_match:
        return False
    bare = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == bare:
            return True
    return False
