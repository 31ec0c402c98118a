"""Shared by the property tests: hypothesis settings, calling as an identity, SQLSTATEs.

``JOBQ_PROPERTY_EXAMPLES`` sets how many examples each property runs (CI: a few
dozen, a few seconds per test; e.g. ``JOBQ_PROPERTY_EXAMPLES=1000 make test
PYTEST_ARGS=tests/properties`` for a long run).
"""

from __future__ import annotations

import os
from typing import Any
from uuid import UUID

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from jobq import db

# Every refusal a jobq function may raise (docs/sql.md, "Error codes").
DOCUMENTED = frozenset({"42501", "P0002", "22023", "22P02", "54000", "55000", "53400"})
# PostgreSQL's own refusals of a NUL character: in jsonb (\u0000) and in text.
NUL_REFUSALS = frozenset({"22P05", "22021"})

EXAMPLES = int(os.environ.get("JOBQ_PROPERTY_EXAMPLES", "40"))


def profile(examples: int | None = None, **kw: Any) -> settings:
    return settings(
        max_examples=examples if examples is not None else EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        **kw,
    )


Conn = psycopg.Connection[Any]


def run_as(conn: Conn, who: UUID | str | None, sql: Any, params: Any = None) -> list[Any]:
    """One transaction as ``who``: a user's uuid (authenticated), "service_role", or
    None (the session's own role: a superuser, which jobq treats as service)."""
    with conn.transaction():
        if isinstance(who, UUID):
            db.act_as(conn, "authenticated", who)
        elif who is not None:
            db.act_as(conn, who)
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def snapshot(conn: Conn) -> dict[str, Any]:
    """Everything a refused call must leave alone."""
    jobs = conn.execute("SELECT to_jsonb(j) FROM job_queue j ORDER BY id").fetchall()
    logs = conn.execute("SELECT to_jsonb(l) FROM job_log l ORDER BY id").fetchall()
    return {"jobs": [r[0] for r in jobs], "logs": [r[0] for r in logs]}


def is_nul_refusal(exc: psycopg.Error) -> bool:
    """PostgreSQL refusing a NUL character: 22P05/22021 from the server, or psycopg
    refusing to send one in a text parameter (no SQLSTATE, a DataError)."""
    if exc.sqlstate in NUL_REFUSALS:
        return True
    return exc.sqlstate is None and isinstance(exc, psycopg.DataError) and "NUL" in str(exc).upper()


def refused(error: psycopg.Error | None, code: str) -> bool:
    return error is not None and error.sqlstate == code


def refused_nul(error: psycopg.Error | None) -> bool:
    return error is not None and is_nul_refusal(error)


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any JSON value: unicode (and NUL) in strings and keys, big and small numbers."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(10**30), max_value=10**30)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=30)
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=12), children, max_size=5)
        ),
        max_leaves=max_leaves,
    )


def json_objects(max_leaves: int = 20) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.text(max_size=12), json_values(max_leaves), max_size=6)


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False
