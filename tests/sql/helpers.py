"""Shared helpers of the SQL tests: acting as a role, expected SQLSTATEs, plans.

Imported by the test modules of this directory as ``from .helpers import ...``
(pytest runs with ``--import-mode=importlib``, which names them ``tests.sql.*``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from jobq import db

Conn = psycopg.Connection[Any]

# Every function jobq's migration creates in public that the API may call.
SPEC_FUNCTIONS = (
    "create_job",
    "update_job_progress",
    "start_job",
    "complete_job",
    "fail_job",
    "cancel_job",
    "add_job_log",
    "get_user_jobs",
    "get_job_logs",
    "find_or_create_job",
    "get_cached_job_result",
    "retry_failed_jobs",
    "cleanup_old_jobs",
    "expire_stale_jobs",
    "detect_stuck_jobs",
    "get_job_queue_stats",
)
JOBQ_FUNCTIONS = (
    "create_jobs",
    "claim_jobs",
    "complete_jobs",
    "heartbeat_jobs",
    "release_jobs",
    "retry_job",
    "create_job_log_partitions",
    "drop_old_job_log_partitions",
    "get_queue_depth",
    "get_job_throughput",
)
ALL_API_FUNCTIONS = SPEC_FUNCTIONS + JOBQ_FUNCTIONS

# What an authenticated user may EXECUTE; everything else is service_role only.
USER_FUNCTIONS = frozenset(
    {
        "create_job",
        "create_jobs",
        "find_or_create_job",
        "get_cached_job_result",
        "cancel_job",
        "retry_job",
        "get_user_jobs",
        "get_job_logs",
        "get_job_queue_stats",
        "get_job_throughput",
    }
)
SERVICE_FUNCTIONS = frozenset(ALL_API_FUNCTIONS) - USER_FUNCTIONS


# ---------------------------------------------------------------------------
# Acting as a role, expecting errors
# ---------------------------------------------------------------------------
@contextmanager
def acting(conn: Conn, role: str, user_id: UUID | None = None) -> Iterator[Conn]:
    """A transaction in which ``conn`` acts as ``role`` (and user), rolled back or committed.

    ``role`` is ``anon``, ``authenticated`` (needs ``user_id``) or ``service_role``.
    """
    with conn.transaction():
        db.act_as(conn, role, user_id)
        yield conn


@contextmanager
def sqlstate(code: str) -> Iterator[pytest.ExceptionInfo[psycopg.Error]]:
    """Expect the block to raise a database error with SQLSTATE ``code``."""
    with pytest.raises(psycopg.Error) as excinfo:
        yield excinfo
    got = excinfo.value.sqlstate
    assert got == code, f"expected SQLSTATE {code}, got {got}: {excinfo.value}"


def expect_error(conn: Conn, code: str, query: Any, params: Any = None) -> psycopg.Error:
    """Run ``query`` in a savepoint (so the enclosing transaction survives) and expect ``code``."""
    with sqlstate(code) as excinfo, conn.transaction():
        conn.execute(query, params)
    return excinfo.value


def scalar(conn: Conn, query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None, f"no row from {query!r}"
    return row[0]


# ---------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------
def plan_nodes(plan: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan tree, depth first."""
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


def explain_json(conn: Conn, query: Any, params: Any = None) -> dict[str, Any]:
    """``EXPLAIN (FORMAT JSON)`` of ``query``; returns the root ``Plan`` node."""
    if isinstance(query, str):
        query = sql.SQL(query)
    raw = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + query, params).fetchone()
    assert raw is not None
    doc = raw[0] if not isinstance(raw[0], str) else json.loads(raw[0])
    return dict(doc[0]["Plan"])


def parent_index(conn: Conn, index_name: str) -> str:
    """The index a (partition) index belongs to: itself, or its partitioned root.

    Partition indexes get derived names (``job_log_2026_11_created_at_idx``); the
    root of their partition tree is the index created on ``public.job_log``.
    """
    row = conn.execute(
        """
        select coalesce(pg_partition_root(c.oid), c.oid)::regclass::text
          from pg_catalog.pg_class c
          join pg_catalog.pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'public' and c.relname = %s and c.relkind in ('i', 'I')
        """,
        (index_name,),
    ).fetchone()
    assert row is not None, f"no index named {index_name!r} in public"
    return str(row[0]).removeprefix("public.")


@dataclass(frozen=True)
class Scan:
    node_type: str
    relation: str | None
    index: str | None  # the spec (parent) index name, when the scan uses an index


def scans(conn: Conn, plan: Mapping[str, Any]) -> list[Scan]:
    """Every scan node of a plan, with partition indexes mapped to their parent index."""
    out: list[Scan] = []
    for node in plan_nodes(plan):
        rel = node.get("Relation Name")
        idx = node.get("Index Name")
        if rel is None and idx is None:
            continue
        out.append(Scan(node["Node Type"], rel, parent_index(conn, idx) if idx else None))
    return out


def used_indexes(conn: Conn, plan: Mapping[str, Any]) -> set[str]:
    return {s.index for s in scans(conn, plan) if s.index is not None}


# ---------------------------------------------------------------------------
# Statements of plpgsql functions, made explainable
# ---------------------------------------------------------------------------
def function_source(conn: Conn, name: str) -> str:
    rows = conn.execute(
        "select p.prosrc from pg_catalog.pg_proc p where p.pronamespace = 'public'::regnamespace"
        " and p.proname = %s",
        (name,),
    ).fetchall()
    assert len(rows) == 1, f"expected one function public.{name}, found {len(rows)}"
    return str(rows[0][0])


def statement_of(source: str, start: str) -> str:
    """The SQL statement of a plpgsql body that begins with ``start`` (up to its ``;``)."""
    begin = source.find(start)
    assert begin >= 0, f"statement starting with {start!r} not found in the function body"
    assert source.find(start, begin + 1) < 0, f"{start!r} occurs more than once"
    end = source.find(";", begin)
    assert end > begin
    return source[begin:end]


@dataclass(frozen=True)
class Param:
    """A plpgsql variable of a statement: its SQL type and the value to plan with."""

    type: str
    value: Any


def parameterize(statement: str, params: Mapping[str, Param], drop_into: str | None = None) -> str:
    """Replace the plpgsql variables of ``statement`` by ``$1..$n`` (in ``params`` order).

    ``drop_into`` removes a plpgsql ``INTO <target>`` clause, which is not SQL.
    """
    text = statement
    if drop_into is not None:
        text, n = re.subn(rf"\s+INTO\s+{re.escape(drop_into)}\b", "", text)
        assert n == 1, f"no INTO {drop_into} in {statement!r}"
    for i, name in enumerate(params, start=1):
        text, n = re.subn(rf"(?<![\w.$]){re.escape(name)}\b", f"${i}", text)
        assert n > 0, f"variable {name} is not used by {statement!r}"
    leftover = re.findall(r"(?<![\w.$])[pv]_\w+", text)
    assert not leftover, f"plpgsql variables left unbound: {leftover} in {text!r}"
    return text


def explain_prepared(
    conn: Conn,
    query: str,
    params: Mapping[str, Param] | Sequence[Param],
    *,
    generic: bool,
) -> dict[str, Any]:
    """EXPLAIN a parameterised statement the way plpgsql runs it: prepared, then executed.

    ``generic=False`` shows the custom plan (what the first executions in a session
    get, and what ``EXECUTE ... USING`` always gets); ``generic=True`` the generic
    plan the plan cache may switch to in a long-lived session.
    """
    values = list(params.values()) if isinstance(params, Mapping) else list(params)
    types = sql.SQL(", ").join(sql.SQL(p.type) for p in values)
    args = sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Literal(p.value), sql.SQL(p.type)) for p in values
    )
    name = sql.Identifier("jobq_plan_probe")
    mode = "force_generic_plan" if generic else "force_custom_plan"
    try:
        with conn.transaction():
            conn.execute(sql.SQL("set local plan_cache_mode = {}").format(sql.Literal(mode)))
            if values:
                prepare = sql.SQL("prepare {} ({}) as {}").format(name, types, sql.SQL(query))
                execute = sql.SQL("execute {} ({})").format(name, args)
            else:
                prepare = sql.SQL("prepare {} as {}").format(name, sql.SQL(query))
                execute = sql.SQL("execute {}").format(name)
            conn.execute(prepare)
            return explain_json(conn, execute)
    finally:
        # prepared statements outlive transactions: never leave one behind
        if conn.execute(
            "select 1 from pg_catalog.pg_prepared_statements where name = 'jobq_plan_probe'"
        ).fetchone():
            conn.execute(sql.SQL("deallocate {}").format(name))


# ---------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------
def wait_until_blocked(conn: Conn, pid: int, *, timeout: float = 30.0) -> None:
    """Return once backend ``pid`` waits for a lock another backend holds.

    Polls pg_blocking_pids (a condition, not a guess at a duration); fails after
    ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.execute("select cardinality(pg_blocking_pids(%s)) > 0", (pid,)).fetchone() == (
            True,
        ):
            return
    pytest.fail(f"backend {pid} never blocked within {timeout}s")
