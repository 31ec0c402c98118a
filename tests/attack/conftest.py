"""The attack suite's fixtures and its two hooks.

* Every test fails when it recorded a leak or an unexpected refusal (named in
  the failure), whatever its own asserts said.
* The terminal summary prints the session's counts, even under ``-q``::

      attack suite: 1234 attempts, 0 leaks (sql functions 600, tables 120, ...)

Fixtures are reused, not copied: the databases come from tests/conftest.py,
``world`` and ``member_of_authenticated`` from tests/sql/test_security.py, the
running API server and its tokens from tests/api/conftest.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from tests.api.conftest import api, api_settings, keys, sse, start_api, tokens
from tests.attack._arena import Arena, build_arena
from tests.attack._recorder import RECORDER
from tests.sql.helpers import Conn
from tests.sql.test_security import member_of_authenticated, world

__all__ = [
    "api",
    "api_settings",
    "arena",
    "keys",
    "member_of_authenticated",
    "sse",
    "start_api",
    "tokens",
    "world",
]


@pytest.fixture
def arena(conn: Conn, world: Any) -> Arena:
    return build_arena(conn, world)


@pytest.fixture
def login_in(conn: Conn, database_url: str) -> Iterator[Callable[[str], Conn]]:
    """A LOGIN role granted only ``role`` (anon or authenticated), connected."""
    made: list[tuple[str, Conn]] = []

    def make(role: str) -> Conn:
        name = f"jobq_attacker_{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(16)
        conn.execute(
            sql.SQL("create role {} login password {} in role {}").format(
                sql.Identifier(name), sql.Literal(password), sql.Identifier(role)
            )
        )
        c = psycopg.connect(
            make_conninfo(database_url, user=name, password=password), autocommit=True
        )
        made.append((name, c))
        return c

    yield make
    for name, c in made:
        c.close()
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    RECORDER.current_test = item.nodeid
    try:
        result = yield
    finally:
        RECORDER.current_test = ""
    bad = RECORDER.bad(item.nodeid)
    if bad:
        lines = "\n  ".join(str(a) for a in bad[:40])
        more = f"\n  ... and {len(bad) - 40} more" if len(bad) > 40 else ""
        leaks = sum(a.verdict == "leak" for a in bad)
        raise AssertionError(
            f"{leaks} leaks, {len(bad) - leaks} unexpected refusals:\n  {lines}{more}"
        )
    return result


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RECORDER.attempts:
        return
    terminalreporter.write_line(RECORDER.summary())
    for note in RECORDER.notes:
        terminalreporter.write_line(f"attack suite note: {note}")
    for a in RECORDER.bad():
        terminalreporter.write_line(f"  {a.verdict.upper()}: {a} ({a.test})")
