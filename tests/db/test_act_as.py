"""Acting as a role per transaction, the PostgREST way, against real RLS helpers."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import psycopg
import pytest

from jobq import db


def test_claims_shape() -> None:
    uid = uuid.uuid4()
    assert db.jwt_claims("authenticated", uid) == {"sub": str(uid), "role": "authenticated"}
    assert db.jwt_claims("service_role") == {"role": "service_role"}
    assert db.jwt_claims("anon", extra_claims={"aal": "aal1"}) == {"aal": "aal1", "role": "anon"}
    # extra claims cannot override the role being acted as
    assert db.jwt_claims("anon", extra_claims={"role": "service_role"})["role"] == "anon"


@pytest.mark.parametrize("role", ["postgres", "authenticator", "supabase_admin", "", "ANON"])
def test_only_api_roles_are_allowed(role: str) -> None:
    with pytest.raises(ValueError, match="cannot act as role"):
        db.act_as_query(role)


def test_user_id_rules() -> None:
    with pytest.raises(ValueError, match="needs a user_id"):
        db.jwt_claims("authenticated")
    with pytest.raises(ValueError, match="does not take a user_id"):
        db.jwt_claims("service_role", uuid.uuid4())


def test_act_as_lasts_one_transaction(conn: psycopg.Connection[Any]) -> None:
    uid = uuid.uuid4()
    with conn.transaction():
        db.act_as(conn, "authenticated", uid)
        row = conn.execute(
            "select current_user, auth.uid(), auth.role(), current_setting('request.jwt.claims')"
        ).fetchone()
        assert row is not None
        assert row[:3] == ("authenticated", uid, "authenticated")
        assert json.loads(row[3]) == {"sub": str(uid), "role": "authenticated"}
    row = conn.execute("select current_user, auth.uid()").fetchone()
    assert row == ("postgres", None)


def test_act_as_on_a_cursor_applies_rls(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction(), conn.cursor() as cur:
        db.act_as(cur, "anon")
        cur.execute("select current_user")
        assert cur.fetchone() == ("anon",)
        # anon has no privilege on the queue at all: the database says no, not Python.
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            cur.execute("select count(*) from public.job_queue")


def test_act_as_async(database_url: str) -> None:
    async def run() -> tuple[Any, ...] | None:
        async with await db.connect_async(database_url) as aconn, aconn.transaction():
            await db.act_as_async(aconn, "service_role")
            cur = await aconn.execute("select current_user, auth.uid(), auth.role()")
            return await cur.fetchone()

    assert asyncio.run(run()) == ("service_role", None, "service_role")


def test_database_url_prefers_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://example/x")
    assert db.database_url() == "postgresql://example/x"
