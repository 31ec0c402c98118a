"""Every SQL example of the spec (002_async_job_queue.sql's pre-flight checklist) runs
as written, as an authenticated user whose claims are set the Supabase way:

    set local role authenticated;
    set local request.jwt.claims = '{"sub": "<uuid>", "role": "authenticated"}';

The examples below are copied from the spec verbatim; only the placeholders the
spec leaves for the reader (cursor values, ``p_job_id := '...'``) are filled in.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from tests.sql._support import Conn, call, create_job, job_in_state, new_user, raises_sqlstate

TEST_BASIC_OPERATIONS = """\
-- Test job creation
SELECT create_job(
    auth.uid(),
    'sync_youtube',
    '{"social_account_id": "test"}'::jsonb
);

-- Test job listing
SELECT * FROM get_user_jobs(auth.uid(), NULL, NULL, 10, 0);

-- Test analytics
SELECT * FROM get_job_queue_stats(auth.uid());
"""

GET_CACHED_JOB_RESULT = """\
SELECT * FROM get_cached_job_result(
    p_user_id := auth.uid(),
    p_job_type := 'sync_youtube',
    p_params := '{"social_account_id": "abc"}'::jsonb,
    p_cache_ttl := INTERVAL '1 hour'
);
"""

FIND_OR_CREATE_JOB = """\
SELECT * FROM find_or_create_job(
    p_user_id := auth.uid(),
    p_job_type := 'sync_youtube',
    p_params := '{"social_account_id": "abc"}'::jsonb,
    p_dedupe_window := INTERVAL '5 minutes'
);
"""

GET_USER_JOBS = """\
SELECT * FROM get_user_jobs(
    p_user_id := auth.uid(),
    p_status := 'completed',
    p_limit := 50,
    p_offset := 0, -- Page 1: 0, Page 2: 50, Page 3: 100
    p_order_by := 'created_at',
    p_order_dir := 'DESC'
);
"""

CURSOR_PAGE = """\
SELECT * FROM job_queue
WHERE user_id = auth.uid()
  AND (created_at, id) < (cursor_created_at, cursor_id)
ORDER BY created_at DESC, id DESC
LIMIT 50;
"""

GET_JOB_LOGS = """\
SELECT * FROM get_job_logs(
    p_job_id := '...',
    p_user_id := auth.uid(),
    p_limit := 100,
    p_offset := 0
);
"""


@contextmanager
def supabase_user(conn: Conn, user: uuid.UUID) -> Iterator[psycopg.Cursor[Any]]:
    """A transaction acting as ``user`` exactly as the Supabase docs' pgTAP tests do."""
    claims = json.dumps({"sub": str(user), "role": "authenticated"})
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("set local role authenticated")
        # SET takes no bind parameters: the claims are a quoted literal
        cur.execute(f"set local request.jwt.claims = '{claims}'")
        yield cur


def _results(cur: psycopg.Cursor[Any]) -> list[list[dict[str, Any]]]:
    """Every result set of a multi-statement script."""
    sets = [cur.fetchall()]
    while cur.nextset():
        sets.append(cur.fetchall())
    return sets


def test_the_session_acts_as_the_user(conn: Conn) -> None:
    user = new_user()
    with supabase_user(conn, user) as cur:
        cur.execute("select current_user, auth.uid(), auth.role(), auth.jwt() ->> 'sub' as sub")
        assert cur.fetchone() == {
            "current_user": "authenticated",
            "uid": user,
            "role": "authenticated",
            "sub": str(user),
        }


def test_basic_operations_block(conn: Conn) -> None:
    user = new_user()
    create_job(conn, new_user(), "sync_youtube")  # someone else's job: never listed
    with supabase_user(conn, user) as cur:
        cur.execute(TEST_BASIC_OPERATIONS)  # the whole block, as the SQL editor runs it
        created, listed, stats = _results(cur)
    assert len(created) == 1
    job_id = created[0]["create_job"]
    assert isinstance(job_id, uuid.UUID)
    assert [
        (r["id"], r["user_id"], r["job_type"], r["params"], r["status"], r["total_count"])
        for r in listed
    ] == [(job_id, user, "sync_youtube", {"social_account_id": "test"}, "pending", 1)]
    assert [(r["job_type"], r["status"], r["job_count"]) for r in stats] == [
        ("sync_youtube", "pending", 1)
    ]


def test_basic_operations_one_statement_at_a_time(conn: Conn) -> None:
    user = new_user()
    statements = [s.strip() for s in TEST_BASIC_OPERATIONS.split(";") if s.strip()]
    assert len(statements) == 3
    with supabase_user(conn, user) as cur:
        results = []
        for s in statements:
            cur.execute(s)
            results.append(cur.fetchall())
    assert results[1][0]["id"] == results[0][0]["create_job"]
    assert results[2][0]["job_count"] == 1


def test_get_cached_job_result_example(conn: Conn) -> None:
    user = new_user()
    with supabase_user(conn, user) as cur:
        cur.execute(GET_CACHED_JOB_RESULT)
        assert cur.fetchall() == []  # a miss
    job_id = job_in_state(
        conn, user, "processing", job_type="sync_youtube", params={"social_account_id": "abc"}
    )
    call(conn, "complete_job", job_id, {"videos": 42})
    with supabase_user(conn, user) as cur:
        cur.execute(GET_CACHED_JOB_RESULT)
        rows = cur.fetchall()
    assert [(r["job_id"], r["result"]) for r in rows] == [(job_id, {"videos": 42})]
    with supabase_user(conn, new_user()) as cur:  # another user's cache is not yours
        cur.execute(GET_CACHED_JOB_RESULT)
        assert cur.fetchall() == []


def test_find_or_create_job_example(conn: Conn) -> None:
    user = new_user()
    with supabase_user(conn, user) as cur:
        cur.execute(FIND_OR_CREATE_JOB)
        first = cur.fetchall()
    with supabase_user(conn, user) as cur:
        cur.execute(FIND_OR_CREATE_JOB)
        second = cur.fetchall()
    assert len(first) == len(second) == 1
    assert (first[0]["created"], first[0]["status"]) == (True, "pending")
    assert (second[0]["job_id"], second[0]["created"]) == (first[0]["job_id"], False)
    row = conn.execute(
        "select user_id, job_type, params from public.job_queue where id = %s",
        (first[0]["job_id"],),
    ).fetchone()
    assert row == (user, "sync_youtube", {"social_account_id": "abc"})


def test_get_user_jobs_example(conn: Conn) -> None:
    user = new_user()
    done = []
    for i in range(3):
        done.append(job_in_state(conn, user, "completed", params={"i": i}))
    job_in_state(conn, user, "pending")
    job_in_state(conn, new_user(), "completed")
    with supabase_user(conn, user) as cur:
        cur.execute(GET_USER_JOBS)
        rows = cur.fetchall()
    assert [r["id"] for r in rows] == list(reversed(done))  # newest first
    assert {r["total_count"] for r in rows} == {3}
    assert {r["status"] for r in rows} == {"completed"}


def test_cursor_example(conn: Conn) -> None:
    user = new_user()
    call(
        conn,
        "create_jobs",
        user,
        Jsonb([{"job_type": "feed", "params": {"i": i}} for i in range(60)]),
    )
    create_job(conn, new_user(), "feed")  # another user's: filtered out (and hidden by RLS)
    # spread created_at, with a tie so that the id decides
    conn.execute(
        "update public.job_queue "
        "set created_at = now() - make_interval(secs => (params->>'i')::int / 2) "
        "where user_id = %s",
        (user,),
    )
    with supabase_user(conn, user) as cur:
        cur.execute("select * from get_user_jobs(auth.uid(), p_limit := 50)")
        page1 = cur.fetchall()
    last = page1[-1]
    query = CURSOR_PAGE.replace("cursor_created_at", "%(cursor_created_at)s").replace(
        "cursor_id", "%(cursor_id)s"
    )
    assert query.count("%(") == 2
    with supabase_user(conn, user) as cur:
        cur.execute(query, {"cursor_created_at": last["created_at"], "cursor_id": last["id"]})
        page2 = cur.fetchall()
        cur.execute(
            query, {"cursor_created_at": page2[-1]["created_at"], "cursor_id": page2[-1]["id"]}
        )
        page3 = cur.fetchall()
    assert (len(page1), len(page2), page3) == (50, 10, [])
    everything = conn.execute(
        "select id from public.job_queue where user_id = %s order by created_at desc, id desc",
        (user,),
    ).fetchall()
    assert [r["id"] for r in page1 + page2] == [r[0] for r in everything]
    # and the function's own cursor mode agrees with the spec's query
    with supabase_user(conn, user) as cur:
        cur.execute(
            "select * from get_user_jobs(auth.uid(), p_limit := 50, "
            "p_cursor_created_at := %s, p_cursor_id := %s)",
            (last["created_at"], last["id"]),
        )
        assert [r["id"] for r in cur.fetchall()] == [r["id"] for r in page2]


def test_get_job_logs_example(conn: Conn) -> None:
    user = new_user()
    job_id = create_job(conn, user, "sync_youtube")
    ids = [
        call(conn, "add_job_log", job_id, "info", f"step {i}")[0]["add_job_log"] for i in range(3)
    ]
    query = GET_JOB_LOGS.replace("'...'", f"'{job_id}'")
    assert query != GET_JOB_LOGS
    with supabase_user(conn, user) as cur:
        cur.execute(query)
        rows = cur.fetchall()
    assert [r["id"] for r in rows] == list(reversed(ids))
    assert {r["total_count"] for r in rows} == {3}
    with raises_sqlstate("P0002"), supabase_user(conn, new_user()) as cur:
        cur.execute(query)


def test_auth_uid_reads_an_ended_setting_as_null(conn: Conn) -> None:
    """After a transaction that used set_config(..., true), the setting reads '' (not NULL)."""
    user = new_user()
    claims = json.dumps({"sub": str(user), "role": "authenticated"})
    with conn.transaction():
        conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        conn.execute("select set_config('request.jwt.claim.sub', %s, true)", (str(user),))
        conn.execute("select set_config('request.jwt.claim.role', 'authenticated', true)")
        assert conn.execute("select auth.uid(), auth.role()").fetchone() == (user, "authenticated")
    settings = conn.execute(
        "select current_setting('request.jwt.claims', true), "
        "current_setting('request.jwt.claim.sub', true)"
    ).fetchone()
    assert settings == ("", "")
    assert conn.execute("select auth.uid(), auth.role(), auth.jwt()").fetchone() == (
        None,
        None,
        None,
    )


def test_old_postgrest_claim_sub(conn: Conn) -> None:
    user = new_user()
    with conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claim.sub', %s, true)", (str(user),))
        job_id = conn.execute("select create_job(auth.uid(), 'legacy')").fetchone()
    assert job_id is not None
    owner = conn.execute("select user_id from public.job_queue where id = %s", job_id).fetchone()
    assert owner == (user,)


def test_no_claims_left_means_not_authenticated(conn: Conn) -> None:
    """A user-role session whose claims ended is refused cleanly, not with a cast error."""
    user = new_user()
    with conn.transaction():
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (json.dumps({"sub": str(user), "role": "authenticated"}),),
        )
    conn.execute("set role authenticated")
    try:
        assert conn.execute("select auth.uid()").fetchone() == (None,)
        before = conn.execute("select count(*) from public.job_queue").fetchone()
        with raises_sqlstate("42501", "not authenticated"):
            conn.execute("select create_job(auth.uid(), 'sync_youtube', '{}'::jsonb)")
        with raises_sqlstate("42501", "not authenticated"):
            conn.execute("select * from get_user_jobs(auth.uid(), NULL, NULL, 10, 0)")
        assert conn.execute("select count(*) from public.job_queue").fetchone() == before
    finally:
        conn.execute("reset role")
