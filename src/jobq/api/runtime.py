"""What one app instance holds: settings, token verifier, cache rules, and the
database side (pool, client, event hub), which the lifespan opens and closes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from psycopg_pool import AsyncConnectionPool

from jobq.api.auth import TokenVerifier
from jobq.api.caching import CacheRules
from jobq.api.events import EventHub
from jobq.api.settings import Settings
from jobq.client import AsyncClient


@dataclass
class Runtime:
    settings: Settings
    verifier: TokenVerifier
    rules: CacheRules
    pool: AsyncConnectionPool[Any] | None = None
    client: AsyncClient | None = None
    hub: EventHub | None = None

    @property
    def ready(self) -> tuple[AsyncConnectionPool[Any], AsyncClient, EventHub]:
        if self.pool is None or self.client is None or self.hub is None:
            raise RuntimeError("the jobq API has not started (is the lifespan running?)")
        return self.pool, self.client, self.hub


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.jobq
    return rt
