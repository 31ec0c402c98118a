"""The migration's tables, tuning and Supabase bootstrap, read from the catalogue."""

from __future__ import annotations

from typing import Any

import psycopg

from jobq import migrate


def test_job_queue_autovacuum_is_the_specs(conn: psycopg.Connection[Any]) -> None:
    opts = conn.execute(
        "SELECT reloptions FROM pg_class WHERE oid = 'public.job_queue'::regclass"
    ).fetchone()[0]
    assert set(opts) == {
        "autovacuum_vacuum_scale_factor=0.05",
        "autovacuum_analyze_scale_factor=0.05",
        "autovacuum_vacuum_cost_delay=10",
        "autovacuum_vacuum_cost_limit=1000",
    }


def test_statistics_targets_are_the_specs(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT attname, attstattarget FROM pg_attribute"
        " WHERE attrelid = 'public.job_queue'::regclass"
        " AND attname IN ('status', 'job_type', 'user_id')"
    ).fetchall()
    assert dict(rows) == {"status": 1000, "job_type": 1000, "user_id": 500}


def test_every_log_partition_keeps_more_inline(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT c.relname, c.reloptions FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'public.job_log'::regclass"
    ).fetchall()
    assert len(rows) >= 5  # default + this month + 3 ahead
    assert all(opts == ["toast_tuple_target=8160"] for _, opts in rows), rows


def test_enumerated_and_bounded_columns_have_checks(conn: psycopg.Connection[Any]) -> None:
    checked = {
        r[0]
        for r in conn.execute(
            "SELECT a.attname FROM pg_constraint c"
            " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)"
            " WHERE c.conrelid = 'public.job_queue'::regclass AND c.contype = 'c'"
        ).fetchall()
    }
    assert checked >= {
        "job_type",
        "status",
        "priority",
        "params",
        "progress_percent",
        "progress_message",
        "error_message",
        "error_code",
        "attempts",
        "max_retries",
        "worker_id",
    }
    log_checked = {
        r[0]
        for r in conn.execute(
            "SELECT a.attname FROM pg_constraint c"
            " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)"
            " WHERE c.conrelid = 'public.job_log'::regclass AND c.contype = 'c'"
        ).fetchall()
    }
    assert log_checked >= {"level", "message", "metadata"}


def test_service_role_bypasses_rls_and_api_roles_cannot_log_in(
    conn: psycopg.Connection[Any],
) -> None:
    roles = {
        r[0]: (r[1], r[2])
        for r in conn.execute(
            "SELECT rolname, rolcanlogin, rolbypassrls FROM pg_roles"
            " WHERE rolname IN ('anon', 'authenticated', 'service_role')"
        ).fetchall()
    }
    assert roles["service_role"] == (False, True)
    assert roles["anon"][0] is False
    assert roles["authenticated"][0] is False


def test_existing_supabase_auth_functions_are_left_alone(empty_database_url: str) -> None:
    """On Supabase auth.uid() exists (and may not be replaced): the migration keeps it."""
    with psycopg.connect(empty_database_url, autocommit=True) as c:
        c.execute("CREATE SCHEMA auth")
        c.execute(
            "CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE"
            " AS $$ SELECT '33333333-3333-3333-3333-333333333333'::uuid $$"
        )
        c.execute("GRANT USAGE ON SCHEMA auth TO PUBLIC")
        before = c.execute(
            "SELECT prosrc FROM pg_proc WHERE oid = 'auth.uid()'::regprocedure"
        ).fetchone()
        migrate.migrate(c)
        after = c.execute(
            "SELECT prosrc FROM pg_proc WHERE oid = 'auth.uid()'::regprocedure"
        ).fetchone()
        assert after == before
        # and jobq uses it: the "caller" is whoever Supabase's auth.uid() says
        with c.transaction():
            c.execute("SELECT set_config('role', 'authenticated', true)")
            job = c.execute("SELECT create_job(NULL, 'x')").fetchone()[0]
        owner = c.execute("SELECT user_id::text FROM job_queue WHERE id = %s", (job,)).fetchone()
        assert owner == ("33333333-3333-3333-3333-333333333333",)
        # the helpers the migration did not find were created
        assert c.execute("SELECT to_regprocedure('auth.role()') IS NOT NULL").fetchone() == (True,)
