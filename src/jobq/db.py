"""Connections, and acting as a user the way Supabase/PostgREST does.

Acting as a role means: inside the current transaction, ``set_config('role', ...)``
and ``set_config('request.jwt.claims', ...)`` with ``is_local = true``. Every
statement after that runs as that role, RLS applies and ``auth.uid()`` works,
and both settings vanish at commit/rollback, so a pooled connection is safe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from jobq.embedded import embedded_url

ENV_URL = "DATABASE_URL"

# The only roles a request may act as; everything else (postgres, authenticator,
# supabase_admin, ...) would be a privilege escalation.
API_ROLES = frozenset({"anon", "authenticated", "service_role"})

_ACT_AS_SQL = sql.SQL(
    "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)"
)


def database_url() -> str:
    """``$DATABASE_URL`` when set, else the embedded server (started on demand)."""
    return os.environ.get(ENV_URL) or embedded_url()


def connect(url: str | None = None, **kwargs: Any) -> psycopg.Connection[Any]:
    """A psycopg connection to ``url`` (default: :func:`database_url`)."""
    return psycopg.connect(url or database_url(), **kwargs)


async def connect_async(url: str | None = None, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """An async psycopg connection to ``url`` (default: :func:`database_url`)."""
    return await psycopg.AsyncConnection.connect(url or database_url(), **kwargs)


def jwt_claims(
    role: str, user_id: UUID | None = None, extra_claims: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The claims object PostgREST would put in ``request.jwt.claims``."""
    if role not in API_ROLES:
        raise ValueError(f"cannot act as role {role!r}: allowed roles are {sorted(API_ROLES)}")
    if role == "authenticated" and user_id is None:
        raise ValueError("role 'authenticated' needs a user_id")
    if role != "authenticated" and user_id is not None:
        raise ValueError(f"role {role!r} does not take a user_id")
    claims: dict[str, Any] = dict(extra_claims or {})
    claims["role"] = role
    if user_id is not None:
        claims["sub"] = str(UUID(str(user_id)))
    return claims


def act_as_query(
    role: str, user_id: UUID | None = None, extra_claims: dict[str, Any] | None = None
) -> tuple[sql.SQL, tuple[str, str]]:
    """SQL + params that switch the current transaction to ``role`` (shared by sync/async)."""
    claims = jwt_claims(role, user_id, extra_claims)
    return _ACT_AS_SQL, (role, json.dumps(claims, separators=(",", ":")))


def act_as(
    target: psycopg.Connection[Any] | psycopg.Cursor[Any],
    role: str,
    user_id: UUID | None = None,
    extra_claims: dict[str, Any] | None = None,
) -> None:
    """Act as ``role`` (and user) for the rest of the current transaction.

    Outside a transaction block (autocommit) the settings would last one statement
    only, so use this inside ``with conn.transaction():``.
    """
    query, params = act_as_query(role, user_id, extra_claims)
    target.execute(query, params)


# The same switch with named parameters, to prefix another statement in one message.
_ACT_AS_PREFIX = sql.SQL(
    "select set_config('role', %(jobq_role)s, true),"
    " set_config('request.jwt.claims', %(jobq_claims)s, true)"
)


def as_identity_query(query: sql.SQL) -> sql.Composed:
    """``query`` preceded by the identity switch, as one message: ``<switch>; <query>``.

    Sent through a client-side-binding cursor on an autocommit connection, the
    two statements are one simple-protocol message, which PostgreSQL runs as
    one implicit transaction: the local settings last exactly as long as the
    query. One round trip instead of BEGIN, switch, query, COMMIT. The caller
    reads the query's rows after ``cursor.nextset()``; its parameters are the
    query's plus :func:`as_identity_params`.
    """
    return sql.SQL("{}; {}").format(_ACT_AS_PREFIX, query)


def as_identity_params(
    params: Mapping[str, Any],
    role: str,
    user_id: UUID | None = None,
    extra_claims: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``params`` plus the switch's own two, for :func:`as_identity_query`."""
    if "jobq_role" in params or "jobq_claims" in params:
        raise ValueError("parameter names jobq_role and jobq_claims are reserved")
    _, (role, claims) = act_as_query(role, user_id, extra_claims)
    return {**params, "jobq_role": role, "jobq_claims": claims}


async def act_as_async(
    target: psycopg.AsyncConnection[Any] | psycopg.AsyncCursor[Any],
    role: str,
    user_id: UUID | None = None,
    extra_claims: dict[str, Any] | None = None,
) -> None:
    """Async twin of :func:`act_as`."""
    query, params = act_as_query(role, user_id, extra_claims)
    await target.execute(query, params)
