"""Fixtures for the HTTP API: a real uvicorn server on a loopback port over a
fresh migrated database, tokens of every kind, and an SSE reader."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from tests.api._support import SECRET, Api, Keys, SSEReader, Tokens, make_keys

from jobq.api import Settings, create_app
from jobq.api.server import ThreadedServer


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("jwks"))


@pytest.fixture(scope="session")
def tokens(keys: Keys) -> Tokens:
    return Tokens(keys)


@pytest.fixture
def api_settings(database_url: str, keys: Keys) -> Settings:
    return Settings(
        database_url=database_url,
        jwt_secret=SECRET,
        jwks_file=str(keys.jwks_path),
        pool_max_size=4,
        sse_keepalive=0.5,
    )


StartApi = Callable[..., Api]


@pytest.fixture
def start_api(api_settings: Settings, tokens: Tokens) -> Iterator[StartApi]:
    """Start an API server (settings overridable); all are stopped afterwards."""
    started: list[Api] = []

    def start(**overrides: Any) -> Api:
        server = ThreadedServer(create_app(replace(api_settings, **overrides)))
        server.start()
        api = Api(server, tokens)
        started.append(api)
        return api

    yield start
    for api in started:
        api.close()
        api.server.stop()


@pytest.fixture
def api(start_api: StartApi) -> Api:
    return start_api()


@pytest.fixture
def sse() -> Iterator[Callable[[Api, str], SSEReader]]:
    readers: list[SSEReader] = []

    def open_reader(api: Api, token: str) -> SSEReader:
        reader = SSEReader(api.url, token)
        readers.append(reader)
        return reader.start()

    yield open_reader
    for r in readers:
        r.close()
