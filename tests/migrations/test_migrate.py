"""Applying migrations: idempotent, concurrent, checksummed, and equal to `jobq sql`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobq import migrate

CONCURRENT_RUNS = 10


def _versions(conn: psycopg.Connection[Any]) -> list[tuple[int, str, str]]:
    return conn.execute(
        "select version, name, checksum from public.jobq_migrations order by version"
    ).fetchall()


def _shipped() -> list[tuple[int, str, str]]:
    return [(m.version, m.name, m.checksum) for m in migrate.load_migrations()]


def test_there_are_migrations_and_complete_sql() -> None:
    migrations = migrate.load_migrations()
    assert migrations, "no migrations shipped"
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    assert "DO" in migrate.complete_sql()


def test_migrate_twice_applies_nothing_the_second_time(empty_database_url: str) -> None:
    notices: list[str] = []
    with psycopg.connect(empty_database_url) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        first = migrate.migrate(conn)
        assert [m.version for m in first] == [v for v, _, _ in _shipped()]
        assert any("MIGRATION COMPLETE" in n for n in notices)

        notices.clear()
        assert migrate.migrate(conn) == []
        assert not any("MIGRATION COMPLETE" in n for n in notices)
        assert _versions(conn) == _shipped()
        assert all(s.applied and s.checksum_ok for s in migrate.status(conn))
        assert migrate.verify(conn).ok


def test_template_clone_is_migrated(conn: psycopg.Connection[Any]) -> None:
    assert _versions(conn) == _shipped()
    assert migrate.migrate(conn) == []


def test_status_on_empty_database_lists_all_pending(empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url) as conn:
        statuses = migrate.status(conn)
    assert [s.version for s in statuses] == [v for v, _, _ in _shipped()]
    assert not any(s.applied for s in statuses)


def test_concurrent_migrate_runs_apply_each_migration_once(empty_database_url: str) -> None:
    barrier = threading.Barrier(CONCURRENT_RUNS)
    results: list[list[int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            with psycopg.connect(empty_database_url) as conn:
                barrier.wait(timeout=30)
                applied = migrate.migrate(conn)
            with lock:
                results.append([m.version for m in applied])
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(CONCURRENT_RUNS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert errors == []
    assert len(results) == CONCURRENT_RUNS
    # Exactly one run applied everything; the others found nothing pending.
    assert sorted(results, key=len)[-1] == [v for v, _, _ in _shipped()]
    assert sum(1 for r in results if r) == 1
    with psycopg.connect(empty_database_url) as conn:
        assert _versions(conn) == _shipped()


def test_edited_migration_is_refused(conn: psycopg.Connection[Any]) -> None:
    conn.execute("update public.jobq_migrations set checksum = 'edited' where version = 1")
    with pytest.raises(migrate.MigrationError, match="edited after it was applied"):
        migrate.migrate(conn)
    statuses = {s.version: s for s in migrate.status(conn)}
    assert statuses[1].checksum_ok is False


def test_unknown_applied_migration_is_refused(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "insert into public.jobq_migrations (version, name, checksum) values (9999, 'future', 'x')"
    )
    with pytest.raises(migrate.MigrationError, match="does not ship"):
        migrate.migrate(conn)
    assert [s.shipped for s in migrate.status(conn)][-1] is False


def test_migrate_refuses_a_connection_inside_a_transaction(empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url) as conn:
        conn.execute("select 1")  # opens a transaction (autocommit off)
        with pytest.raises(migrate.MigrationError, match="inside a transaction"):
            migrate.migrate(conn)


def test_verify_reports_a_missing_object(conn: psycopg.Connection[Any]) -> None:
    report = migrate.verify(conn)
    assert report.ok, report
    assert {c.kind for c in report.checks} >= {"triggers", "policies"}

    conn.execute("drop policy job_queue_select_own on public.job_queue")
    report = migrate.verify(conn)
    assert not report.ok
    missing = {name for c in report.checks for name in c.missing}
    assert missing == {"job_queue_select_own"}


# --- `jobq sql` equals `jobq migrate` --------------------------------------

CATALOGUE_QUERIES: dict[str, str] = {
    "schemas": """
        select nspname from pg_namespace
        where nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
          and nspname not like 'pg_temp%' and nspname not like 'pg_toast_temp%'
        """,
    "relations": """
        select n.nspname, c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
               c.relpersistence, c.relispartition, pg_get_expr(c.relpartbound, c.oid),
               coalesce(c.relacl::text, '')
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')
          and c.relkind not in ('i', 'I', 't')
        """,
    "columns": """
        select table_schema, table_name, column_name, ordinal_position, data_type, udt_name,
               column_default, is_nullable, is_identity, is_generated, generation_expression
        from information_schema.columns
        where table_schema not in ('pg_catalog', 'information_schema')
        """,
    "constraints": """
        select n.nspname, t.relname, c.conname, pg_get_constraintdef(c.oid)
        from pg_constraint c join pg_class t on t.oid = c.conrelid
        join pg_namespace n on n.oid = t.relnamespace
        where n.nspname not in ('pg_catalog', 'information_schema')
        """,
    "indexes": """
        select schemaname, tablename, indexname, indexdef from pg_indexes
        where schemaname not in ('pg_catalog', 'information_schema')
        """,
    "functions": """
        select n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_function_result(p.oid), p.prokind, p.prosecdef, p.provolatile,
               coalesce(p.proconfig::text, ''), md5(p.prosrc), coalesce(p.proacl::text, '')
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname not in ('pg_catalog', 'information_schema')
        """,
    "triggers": """
        select n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        from pg_trigger t join pg_class c on c.oid = t.tgrelid
        join pg_namespace n on n.oid = c.relnamespace
        where not t.tgisinternal
        """,
    "policies": """
        select schemaname, tablename, policyname, permissive, roles::text, cmd, qual, with_check
        from pg_policies
        """,
    "table_grants": """
        select grantor, grantee, table_schema, table_name, privilege_type, is_grantable
        from information_schema.role_table_grants
        where table_schema not in ('pg_catalog', 'information_schema')
        """,
    "column_grants": """
        select grantor, grantee, table_schema, table_name, column_name, privilege_type
        from information_schema.column_privileges
        where table_schema not in ('pg_catalog', 'information_schema')
        """,
    "routine_grants": """
        select grantor, grantee, routine_schema, routine_name, privilege_type, is_grantable
        from information_schema.role_routine_grants
        where routine_schema not in ('pg_catalog', 'information_schema')
        """,
    "extensions": "select extname from pg_extension",
    "migrations": "select version, name, checksum from public.jobq_migrations",
}


def _catalogue(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {
            key: sorted(conn.execute(query.encode()).fetchall(), key=repr)
            for key, query in CATALOGUE_QUERIES.items()
        }


def test_render_sql_via_psql_equals_migrate(
    empty_database_url: str, create_database: Callable[[], str], psql: str, tmp_path: Path
) -> None:
    script = tmp_path / "jobq.sql"
    script.write_text(migrate.render_sql(), encoding="utf-8")
    proc = subprocess.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", empty_database_url, "-f", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "MIGRATION COMPLETE" in proc.stderr

    migrated_url = create_database()
    with psycopg.connect(migrated_url) as conn:
        migrate.migrate(conn)
    via_psql, via_migrate = _catalogue(empty_database_url), _catalogue(migrated_url)

    assert via_psql["functions"], "catalogue query found no functions"
    for key in CATALOGUE_QUERIES:
        assert via_psql[key] == via_migrate[key], key


# --- the CLI ---------------------------------------------------------------


def _jobq(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("jobq")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "jobq"]
    env = {**os.environ, "DATABASE_URL": url, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_cli_migrate_migrate_verify(empty_database_url: str) -> None:
    first = _jobq("migrate", url=empty_database_url)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_" in first.stdout
    assert "ASYNC ARCHITECTURE MIGRATION COMPLETE!" in first.stdout

    second = _jobq("migrate", url=empty_database_url)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert "MIGRATION COMPLETE" not in second.stdout

    verify = _jobq("verify", url=empty_database_url)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "schema OK" in verify.stdout
    assert "policies" in verify.stdout

    status = _jobq("status", url=empty_database_url)
    assert status.returncode == 0, status.stderr
    assert "pending" not in status.stdout
    assert "applied" in status.stdout

    assert _jobq("db-url", url=empty_database_url).stdout.strip() == empty_database_url


def test_cli_verify_fails_on_missing_object_and_edited_migration(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("drop policy job_queue_select_own on public.job_queue")
    verify = _jobq("verify", url=database_url)
    assert verify.returncode == 1
    assert "job_queue_select_own" in verify.stdout

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("update public.jobq_migrations set checksum = 'edited'")
    result = _jobq("migrate", url=database_url)
    assert result.returncode == 1
    assert "edited after it was applied" in result.stderr


def test_cli_sql_prints_render_sql(empty_database_url: str) -> None:
    result = _jobq("sql", url=empty_database_url)
    assert result.returncode == 0
    assert result.stdout == migrate.render_sql()
