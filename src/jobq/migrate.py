"""Apply, list and verify the versioned SQL migrations.

Migrations are ``jobq/sql/migrations/NNNN_name.sql``, applied in version order,
each in its own transaction, and recorded in ``public.jobq_migrations`` with the
sha256 of their text. Released migrations are never edited: a changed checksum
is an error, not something to re-apply.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import psycopg
from psycopg import sql

# Session advisory lock key serializing every migrate() on a database
# (the bytes of "jobqmigr" as a bigint).
LOCK_KEY = int.from_bytes(b"jobqmigr", "big")

TABLE = "public.jobq_migrations"

_CREATE_TABLE = """\
CREATE TABLE IF NOT EXISTS public.jobq_migrations (
    version    int PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);"""

_FILENAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


class MigrationError(RuntimeError):
    """The database and the shipped migrations disagree; nothing was applied."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


@dataclass(frozen=True)
class AppliedRow:
    version: int
    name: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: datetime | None
    checksum_ok: bool | None  # None when not applied, or applied but not shipped
    shipped: bool = True

    @property
    def applied(self) -> bool:
        return self.applied_at is not None


@dataclass(frozen=True)
class SchemaCheck:
    kind: str
    expected: int
    found: int
    missing: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing


@dataclass(frozen=True)
class VerifyReport:
    checks: list[SchemaCheck]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def _sql_root() -> Traversable:
    return files("jobq").joinpath("sql")


def load_migrations() -> list[Migration]:
    """The shipped migrations, sorted by version."""
    found: dict[int, Migration] = {}
    directory = _sql_root().joinpath("migrations")
    entries = list(directory.iterdir()) if directory.is_dir() else []
    for entry in entries:
        match = _FILENAME.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations share version {version:04d}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def complete_sql() -> str:
    """The DO block that reports (RAISE NOTICE) on the installed schema."""
    return _sql_root().joinpath("complete.sql").read_text(encoding="utf-8")


def _table_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("select to_regclass(%s) is not null", (TABLE,)).fetchone()
    return bool(row and row[0])


def _applied(conn: psycopg.Connection[Any]) -> dict[int, AppliedRow]:
    if not _table_exists(conn):
        return {}
    rows = conn.execute(
        "select version, name, checksum, applied_at from public.jobq_migrations order by version"
    ).fetchall()
    return {r[0]: AppliedRow(*r) for r in rows}


def _check_history(applied: dict[int, AppliedRow], shipped: list[Migration]) -> None:
    by_version = {m.version: m for m in shipped}
    for version, row in applied.items():
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version:04d}_{row.name}, which this jobq "
                "does not ship: upgrade jobq instead of running an older one against it"
            )
        if migration.checksum != row.checksum:
            raise MigrationError(
                f"migration {migration.filename} was edited after it was applied "
                f"(checksum {row.checksum[:12]}… in the database, {migration.checksum[:12]}… "
                "shipped). Released migrations are never edited: add a new migration instead."
            )


@contextmanager
def _autocommit(conn: psycopg.Connection[Any]) -> Iterator[None]:
    # A session advisory lock and per-migration transactions need a connection
    # that is not already inside a transaction.
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise MigrationError("migrate() needs a connection that is not inside a transaction")
    previous = conn.autocommit
    conn.autocommit = True
    try:
        yield
    finally:
        conn.autocommit = previous


@contextmanager
def _migration_lock(conn: psycopg.Connection[Any]) -> Iterator[None]:
    conn.execute("select pg_advisory_lock(%s)", (LOCK_KEY,))
    try:
        yield
    finally:
        conn.execute("select pg_advisory_unlock(%s)", (LOCK_KEY,))


def migrate(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Apply pending migrations; return those applied (empty when up to date).

    Safe to run concurrently from many processes: everything happens under one
    session advisory lock. ``complete.sql`` runs (and RAISEs its NOTICE report)
    only when something was applied; add a notice handler to see it.
    """
    shipped = load_migrations()
    applied_now: list[Migration] = []
    with _autocommit(conn), _migration_lock(conn):
        if not _table_exists(conn):
            conn.execute(_CREATE_TABLE)
        applied = _applied(conn)
        _check_history(applied, shipped)
        for migration in shipped:
            if migration.version in applied:
                continue
            with conn.transaction():
                # bytes: sent as-is (no placeholder parsing), several statements allowed.
                conn.execute(migration.sql.encode("utf-8"))
                conn.execute(
                    "insert into public.jobq_migrations (version, name, checksum)"
                    " values (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            applied_now.append(migration)
        if applied_now:
            conn.execute(complete_sql().encode("utf-8"))
    return applied_now


def status(conn: psycopg.Connection[Any]) -> list[MigrationStatus]:
    """Every shipped migration (and any unknown applied one), applied or pending."""
    shipped = load_migrations()
    applied = _applied(conn)
    result: list[MigrationStatus] = []
    for m in shipped:
        row = applied.get(m.version)
        result.append(
            MigrationStatus(
                version=m.version,
                name=m.name,
                applied_at=row.applied_at if row else None,
                checksum_ok=(row.checksum == m.checksum) if row else None,
            )
        )
    known = {m.version for m in shipped}
    for version, row in applied.items():
        if version not in known:
            result.append(MigrationStatus(version, row.name, row.applied_at, None, shipped=False))
    return sorted(result, key=lambda s: s.version)


def render_sql() -> str:
    """All migrations as one script, for the Supabase SQL editor or ``psql -f``.

    Equivalent to :func:`migrate` on an empty database (a test checks it), and
    records the same rows in ``public.jobq_migrations``.
    """
    parts = [
        "-- jobq schema: every migration in order, generated by `jobq sql`.",
        "-- Run with: psql -v ON_ERROR_STOP=1 -f jobq.sql  (or paste into the Supabase SQL editor)",
        "",
        _CREATE_TABLE,
        "",
    ]
    for m in load_migrations():
        record = sql.SQL(
            "INSERT INTO public.jobq_migrations (version, name, checksum) "
            "VALUES ({}, {}, {}) ON CONFLICT DO NOTHING;"
        ).format(m.version, m.name, m.checksum)
        parts += [
            f"-- >>> {m.filename}",
            "BEGIN;",
            m.sql.rstrip(),
            "",
            record.as_string(None),
            "COMMIT;",
            f"-- <<< {m.filename}",
            "",
        ]
    parts.append(complete_sql().rstrip())
    return "\n".join(parts) + "\n"


def verify(conn: psycopg.Connection[Any]) -> VerifyReport:
    """Compare the installed schema with what the migrations create.

    Reads ``public.jobq_schema_report()``, which the migration itself defines, so
    the expectations live next to the DDL they describe.
    """
    rows = conn.execute(
        "select kind, expected, found, missing from public.jobq_schema_report()"
    ).fetchall()
    return VerifyReport(
        checks=[
            SchemaCheck(kind, expected, found, list(missing or []))
            for kind, expected, found, missing in rows
        ]
    )
