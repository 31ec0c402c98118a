"""``create_app(settings)``: the jobq HTTP API as an ASGI app (FastAPI).

The lifespan opens the database side: an autocommit connection pool, the
service_role :class:`~jobq.client.AsyncClient` over it (requests act as users
through ``client.as_user``), and the event hub's single LISTEN connection
(opened on the first /events subscriber). The pool opens without waiting, so
the app starts while the database is down and /health says 503 until it is up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from psycopg_pool import AsyncConnectionPool

import jobq
from jobq import dashboard, db
from jobq.api import responses
from jobq.api.auth import TokenVerifier
from jobq.api.caching import PUBLIC_PATHS, CacheHeaders, CacheRules
from jobq.api.events import EventHub
from jobq.api.routes import router
from jobq.api.runtime import Runtime
from jobq.api.settings import Settings, SettingsError
from jobq.client import AsyncClient

log = logging.getLogger("jobq.api")

DESCRIPTION = """\
Jobs, their logs and live events, for end users (a Supabase-style user JWT) and
for trusted services (a service_role key). Every request runs as the token's
identity inside PostgreSQL (role and request.jwt.claims per transaction), so
row-level security and jobq's SQL functions decide what it may see and do.

Errors are `{"error": {"code": "...", "message": "..."}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API app; ``settings`` default to :meth:`Settings.from_env`."""
    settings = settings or Settings.from_env()
    if not settings.auth_configured:
        raise SettingsError(
            "no token verification configured: set JOBQ_JWT_SECRET (HS256) and/or "
            "JOBQ_JWKS_URL or JOBQ_JWKS_FILE (ES256/RS256)"
        )
    verifier = TokenVerifier.from_settings(settings)
    private_paths = [
        r.path for r in router.routes if isinstance(r, APIRoute) and r.path not in PUBLIC_PATHS
    ]
    rules = CacheRules(settings, private_paths)
    rt = Runtime(settings=settings, verifier=verifier, rules=rules)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.database_url
        if url is None:
            url = await asyncio.to_thread(db.database_url)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.pool_timeout,
            kwargs={"autocommit": True, "application_name": "jobq-api"},
            open=False,
            name="jobq-api",
        )
        await pool.open(wait=False)
        rt.pool = pool
        rt.client = AsyncClient(pool=pool)
        rt.hub = EventHub(url)
        try:
            yield
        finally:
            await rt.hub.close()
            await pool.close()
            rt.pool = rt.client = rt.hub = None

    app = FastAPI(
        title="jobq",
        version=jobq.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.jobq = rt
    app.include_router(router)
    dashboard.mount(app)  # the web dashboard at / (static files)
    responses.install(app)
    app.add_middleware(responses.BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(CacheHeaders, rules=rules)  # outermost: the last word on caching
    return app
