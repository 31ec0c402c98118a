"""The SQL functions take any JSON and any string: a result, or a clean refusal.

Random JSON (hypothesis ``recursive``: unicode keys and strings, NUL characters,
big and small numbers, deep nesting) and random strings (job types, order
words, search text, level names, log and progress messages, uuids in text) go
to the functions a client reaches. Each call either does what it says, exactly
(the row holds what was sent), or raises a documented SQLSTATE - or, for a NUL
character, PostgreSQL's own refusal (22P05 in jsonb, or psycopg's refusal to
send it in text) - and leaves every row as it was: no crash, no half-written
row, no other error class.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any
from uuid import UUID

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from ._support import (
    DOCUMENTED,
    Conn,
    has_nul,
    is_nul_refusal,
    json_objects,
    json_values,
    profile,
    refused,
    refused_nul,
    run_as,
    snapshot,
)

JOB_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
ORDER_BY = {"created_at", "updated_at", "completed_at", "priority", "status", "job_type"}
ORDER_BY |= {"progress_percent"}
STATUSES = {"pending", "processing", "completed", "failed", "cancelled", "expired"}
LEVELS = {"debug", "info", "warning", "error"}
CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")

# Strings as a client might send them: words that almost match, unicode, NUL,
# SQL punctuation.
words = st.sampled_from(
    ["created_at", "CREATED_AT", "priority", "asc", "DESC", "desc ", "info", "pending", ""]
)
strings = st.text(max_size=40) | words | st.sampled_from(["a'; DROP TABLE job_queue; --", "x\x00y"])


def attempt(
    conn: Conn,
    who: UUID | str | None,
    sql: str,
    params: Any,
    also: Callable[[psycopg.Error], bool] = lambda _: False,
) -> tuple[Any, Any]:
    """(rows, None) or (None, error); a refusal must be clean and change nothing."""
    before = snapshot(conn)
    try:
        return run_as(conn, who, sql, params), None
    except psycopg.Error as exc:
        error = exc
    assert error.sqlstate in DOCUMENTED or is_nul_refusal(error) or also(error), (
        f"not a clean refusal: {error.sqlstate} {type(error).__name__}: {error}"
    )
    assert snapshot(conn) == before, f"refused ({error.sqlstate}) yet changed a row"
    return None, error


@pytest.fixture
def c(database_url: str) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE job_queue_config SET max_active_jobs_per_user = 1000000")
        yield conn


def new_job(c: Conn, user: UUID, *, claim: bool = False) -> UUID:
    job_id = UUID(str(run_as(c, None, "SELECT create_job(%s, 'fuzz')", (user,))[0][0]))
    if claim:
        c.execute("UPDATE job_queue SET priority = 100 WHERE id = %s", (job_id,))  # first in line
        rows = run_as(c, None, "SELECT id FROM claim_jobs('fuzzer', 1)")
        assert rows == [(job_id,)]
    return job_id


def count_jobs(c: Conn, user: UUID) -> int:
    row = c.execute("SELECT count(*) FROM job_queue WHERE user_id = %s", (user,)).fetchone()
    assert row is not None
    return int(row[0])


# ---------------------------------------------------------------------------
# Creating
# ---------------------------------------------------------------------------
@given(job_type=strings, params=json_objects())
@profile()
def test_create_job_stores_exactly_what_it_was_given(c: Conn, job_type: str, params: Any) -> None:
    user = uuid.uuid4()
    rows, error = attempt(c, None, "SELECT create_job(%s, %s, %s)", (user, job_type, Jsonb(params)))
    if "\x00" in job_type or has_nul(params):
        assert refused_nul(error), error
    elif not JOB_TYPE.fullmatch(job_type):
        assert refused(error, "22023"), error
    else:
        assert error is None, error
        same = c.execute(
            "SELECT job_type = %s AND params = %s FROM job_queue WHERE id = %s",
            (job_type, Jsonb(params), rows[0][0]),
        ).fetchone()
        assert same == (True,)
    assert count_jobs(c, user) == (0 if error else 1)


@given(params=json_values().filter(lambda v: not isinstance(v, dict)))
@profile()
def test_params_must_be_an_object(c: Conn, params: Any) -> None:
    user = uuid.uuid4()
    _, error = attempt(c, None, "SELECT create_job(%s, 'a', %s)", (user, Jsonb(params)))
    assert error is not None
    assert error.sqlstate == "22023" or is_nul_refusal(error)


job_fields = st.fixed_dictionaries(
    {},
    optional={
        "job_type": strings | st.sampled_from(["ok", "a.b"]),
        "params": json_values(max_leaves=5),
        "priority": json_values(max_leaves=1) | st.integers(-200, 200),
        "max_retries": json_values(max_leaves=1) | st.integers(-5, 30),
        "ttl": json_values(max_leaves=1) | st.integers(-10, 10**6),
        "run_after": json_values(max_leaves=1) | st.sampled_from(["2030-01-01", "now"]),
    },
)


# create_jobs refuses a field that is not a value of its type, or out of range,
# with 22023 naming the element and the field (test_create_jobs_field_casts_use_
# documented_codes); any class-22 code is still accepted here as a clean refusal
# (clients map class 22 to InvalidInput / HTTP 400).
def class_22(error: psycopg.Error) -> bool:
    return (error.sqlstate or "").startswith("22")


@given(jobs=st.lists(job_fields | json_values(max_leaves=3), max_size=4))
@profile()
def test_create_jobs_is_all_or_nothing_with_clean_refusals(c: Conn, jobs: list[Any]) -> None:
    """Random element shapes and field types: every job or none, and clean refusals."""
    user = uuid.uuid4()
    rows, error = attempt(
        c, user, "SELECT job_id FROM create_jobs(NULL, %s)", (Jsonb(jobs),), also=class_22
    )
    created = count_jobs(c, user)
    if error is None:
        assert created == len(rows) == len(jobs)
    else:
        assert created == 0


@pytest.mark.parametrize(
    "job",
    [
        {"job_type": "a", "run_after": "[]"},  # 22007 invalid_datetime_format
        {"job_type": "a", "priority": 10**20},  # 22003 numeric_value_out_of_range
        # 22008 datetime_field_overflow (a ttl past the end of time; PostgreSQL 15's
        # make_interval wraps a huge ttl round to a negative one instead: 22023)
        {"job_type": "a", "run_after": "294000-01-01", "ttl": 1e10},
        {"job_type": "a", "run_after": "2030-01-01 00:00-16"},  # 22009 time zone
    ],
    ids=["run_after-not-a-date", "priority-out-of-range", "ttl-out-of-range", "time-zone"],
)
def test_create_jobs_field_casts_use_documented_codes(c: Conn, job: dict[str, Any]) -> None:
    user, good = uuid.uuid4(), {"job_type": "ok"}
    with pytest.raises(psycopg.Error) as info:
        run_as(c, None, "SELECT * FROM create_jobs(%s, %s)", (user, Jsonb([good, job])))
    assert info.value.sqlstate in DOCUMENTED, info.value.sqlstate
    assert info.value.sqlstate == "22023", info.value.sqlstate
    message = info.value.diag.message_primary or ""
    assert message.startswith("p_jobs[1]: "), message
    field = "ttl" if "ttl" in job else next(k for k in job if k != "job_type")
    assert field in message, message
    assert count_jobs(c, user) == 0, "all or nothing"


@given(params=json_objects(max_leaves=10))
@profile()
def test_find_or_create_job_finds_its_own_equal_params(c: Conn, params: Any) -> None:
    user = uuid.uuid4()
    sql = "SELECT job_id, created FROM find_or_create_job(NULL, 'dedupe', %s)"
    first, error = attempt(c, user, sql, (Jsonb(params),))
    if has_nul(params):
        assert refused_nul(error), error
        return
    assert error is None, error
    second, error = attempt(c, user, sql, (Jsonb(params),))
    assert error is None, error
    assert first[0][1] is True
    assert second == [(first[0][0], False)], "equal params: the same job"
    cached, error = attempt(
        c, user, "SELECT * FROM get_cached_job_result(NULL, 'dedupe', %s)", (Jsonb(params),)
    )
    assert error is None, error
    assert cached == [], "not completed: no cached result"


# ---------------------------------------------------------------------------
# Reading with client-chosen words
# ---------------------------------------------------------------------------
@given(
    order_by=strings,
    order_dir=strings,
    status=st.none() | strings,
    job_type=st.none() | strings,
    limit=st.integers(-5, 2000),
    offset=st.integers(-5, 2_000_000),
    contains=st.none() | json_values(max_leaves=4),
)
@profile()
def test_get_user_jobs_takes_any_words(
    c: Conn,
    order_by: str,
    order_dir: str,
    status: str | None,
    job_type: str | None,
    limit: int,
    offset: int,
    contains: Any,
) -> None:
    user = uuid.uuid4()
    run_as(c, None, "SELECT create_job(%s, 'listed', '{\"k\": 1}')", (user,))
    rows, error = attempt(
        c,
        user,
        "SELECT id, user_id FROM get_user_jobs(NULL, p_status := %s, p_job_type := %s,"
        " p_limit := %s, p_offset := %s, p_order_by := %s, p_order_dir := %s,"
        " p_params_contains := %s)",
        (
            status,
            job_type,
            limit,
            offset,
            order_by,
            order_dir,
            None if contains is None else Jsonb(contains),
        ),
    )
    texts = [order_by, order_dir, status or "", job_type or ""]
    if any("\x00" in t for t in texts) or has_nul(contains):
        assert refused_nul(error), error
        return
    ascii_words = all(t.isascii() for t in texts)
    valid = (
        order_by.lower() in ORDER_BY
        and order_dir.upper() in {"ASC", "DESC"}
        and (status is None or status in STATUSES)
        and 1 <= limit <= 1000
        and 0 <= offset <= 1_000_000
    )
    if ascii_words:
        assert (error is None) is valid, error
    if error is None:
        assert len(rows) <= limit
        assert all(r[1] == user for r in rows), "only the caller's jobs"
    else:
        assert error.sqlstate == "22023"


@given(
    search=st.none() | strings | st.text(min_size=490, max_size=520),
    level=st.none() | strings,
    metadata=st.none() | json_values(max_leaves=4),
)
@profile()
def test_get_job_logs_takes_any_search_text(
    c: Conn, search: str | None, level: str | None, metadata: Any
) -> None:
    user = uuid.uuid4()
    job = new_job(c, user)
    run_as(c, None, "SELECT add_job_log(%s, 'info', 'hello fuzzy world', '{\"k\": 1}')", (job,))
    rows, error = attempt(
        c,
        user,
        "SELECT job_id FROM get_job_logs(%s, p_level := %s, p_search := %s,"
        " p_metadata_contains := %s)",
        (job, level, search, None if metadata is None else Jsonb(metadata)),
    )
    if "\x00" in (search or "") + (level or "") or has_nul(metadata):
        assert refused_nul(error), error
    elif (level is not None and level not in LEVELS) or len(search or "") > 500:
        assert refused(error, "22023"), error
    else:
        assert error is None, error
        assert all(r[0] == job for r in rows)


# ---------------------------------------------------------------------------
# Writing what a handler produced
# ---------------------------------------------------------------------------
@given(
    level=strings,
    message=strings | st.text(min_size=9990, max_size=10010, alphabet="ab"),
    metadata=json_values(max_leaves=8),
)
@profile()
def test_add_job_log_stores_a_line_or_nothing(
    c: Conn, level: str, message: str, metadata: Any
) -> None:
    job = new_job(c, uuid.uuid4())
    rows, error = attempt(
        c,
        "service_role",
        "SELECT add_job_log(%s, %s, %s, %s)",
        (job, level, message, Jsonb(metadata)),
    )
    if "\x00" in level + message or has_nul(metadata):
        assert refused_nul(error), error
    elif level not in LEVELS or message == "":  # checked in this order by add_job_log
        assert refused(error, "22023"), error
    elif len(message) > 10000:
        assert refused(error, "54000"), error
    elif not isinstance(metadata, dict):
        assert refused(error, "22023"), error
    else:
        assert error is None, error
        same = c.execute(
            "SELECT level = %s AND message = %s AND metadata = %s FROM job_log WHERE id = %s",
            (level, message, Jsonb(metadata), rows[0][0]),
        ).fetchone()
        assert same == (True,)


@given(
    percent=st.integers(-1000, 1000),
    message=st.none() | strings | st.text(min_size=995, max_size=1005, alphabet="xy"),
)
@profile()
def test_progress_takes_any_message(c: Conn, percent: int, message: str | None) -> None:
    job = new_job(c, uuid.uuid4(), claim=True)
    _, error = attempt(
        c,
        "service_role",
        "SELECT update_job_progress(%s, %s, %s, 'fuzzer')",
        (job, percent, message),
    )
    if "\x00" in (message or ""):
        assert refused_nul(error), error
    elif not 0 <= percent <= 100:
        assert refused(error, "22023"), error
    elif len(message or "") > 1000:
        assert refused(error, "54000"), error
    else:
        assert error is None, error
        row = c.execute(
            "SELECT progress_percent, progress_message FROM job_queue WHERE id = %s", (job,)
        ).fetchone()
        assert row == (percent, message)


@given(result=json_values(max_leaves=30))
@profile()
def test_complete_job_stores_any_json_result(c: Conn, result: Any) -> None:
    job = new_job(c, uuid.uuid4(), claim=True)
    _, error = attempt(
        c, "service_role", "SELECT complete_job(%s, %s, 'fuzzer')", (job, Jsonb(result))
    )
    if has_nul(result):
        assert refused_nul(error), error
        status = c.execute("SELECT status FROM job_queue WHERE id = %s", (job,)).fetchone()
        assert status == ("processing",), "nothing half-written"
    else:
        assert error is None, error
        same = c.execute(
            "SELECT status = 'completed' AND result = %s FROM job_queue WHERE id = %s",
            (Jsonb(result), job),
        ).fetchone()
        assert same == (True,)


@given(text=strings | st.uuids().map(str))
@profile()
def test_job_ids_in_text(c: Conn, text: str) -> None:
    """A job id arrives as text from a URL: malformed is 22P02, unknown is P0002."""
    _, error = attempt(c, uuid.uuid4(), "SELECT cancel_job(%s::uuid)", (text,))
    assert error is not None
    if "\x00" in text:
        assert is_nul_refusal(error)
    elif CANONICAL_UUID.fullmatch(text):
        assert error.sqlstate == "P0002"
    else:  # PostgreSQL also reads a few other spellings (braces, no dashes)
        assert error.sqlstate in {"22P02", "P0002"}
