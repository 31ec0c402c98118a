"""Every jobq SQL function: its results, and its errors (SQLSTATE + message).

Time is controlled by moving timestamps as admin (``update job_queue set
next_retry_at = now() - ...``), never by sleeping. Errors are checked for their
SQLSTATE and for leaving the database exactly as it was (``digest``).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from tests.sql._support import (
    Conn,
    as_service,
    as_user,
    call,
    claim,
    claim_one,
    create_job,
    digest,
    job,
    job_in_state,
    new_user,
    raises_sqlstate,
    run_concurrently,
    scalar,
    status,
)

# ---------------------------------------------------------------------------
# create_job
# ---------------------------------------------------------------------------


def test_create_job_defaults(conn: Conn) -> None:
    user = new_user()
    with conn.transaction():
        job_id = create_job(conn, user, "sync_youtube", {"social_account_id": "abc"})
        now = scalar(conn, "select now()")
    row = job(conn, job_id)
    assert row["user_id"] == user
    assert row["job_type"] == "sync_youtube"
    assert row["params"] == {"social_account_id": "abc"}
    assert row["status"] == "pending"
    assert row["priority"] == 0
    assert row["max_retries"] == 3
    assert row["attempts"] == 0
    assert row["progress_percent"] == 0
    assert row["result"] is None
    assert row["worker_id"] is None
    assert row["next_retry_at"] is None
    assert row["started_at"] is None
    assert row["completed_at"] is None
    assert row["created_at"] == now
    assert row["run_after"] == now
    assert row["expires_at"] == now + timedelta(hours=24)


def test_create_job_default_params_is_empty_object(conn: Conn) -> None:
    job_id = scalar(conn, "select public.create_job(%s, 'bare')", (new_user(),))
    assert job(conn, job_id)["params"] == {}


def test_create_job_options(conn: Conn) -> None:
    user = new_user()
    with conn.transaction():
        job_id = create_job(
            conn,
            user,
            "later",
            {"x": [1, 2]},
            priority=7,
            max_retries=0,
            run_after=None,
            ttl=timedelta(minutes=5),
        )
        now = scalar(conn, "select now()")
    row = job(conn, job_id)
    assert (row["priority"], row["max_retries"]) == (7, 0)
    assert row["expires_at"] == now + timedelta(minutes=5)


def test_create_job_ttl_null_never_expires(conn: Conn) -> None:
    job_id = create_job(conn, new_user(), ttl=None)
    assert job(conn, job_id)["expires_at"] is None
    conn.execute(
        "update public.job_queue set created_at = now() - interval '30 days', "
        "run_after = now() - interval '30 days' where id = %s",
        (job_id,),
    )
    assert call(conn, "expire_stale_jobs")[0]["expire_stale_jobs"] == 0
    assert [r["id"] for r in claim(conn)] == [job_id]


def test_create_job_run_after_delays_the_job_and_its_expiry(conn: Conn) -> None:
    with conn.transaction():
        later = scalar(conn, "select now() + interval '1 hour'")
        job_id = create_job(conn, new_user(), run_after=later)
    row = job(conn, job_id)
    assert row["run_after"] == later
    # the ttl counts from when the job becomes runnable
    assert row["expires_at"] == later + timedelta(hours=24)
    assert claim(conn) == []
    conn.execute(
        "update public.job_queue set run_after = now() - interval '1 second' where id = %s",
        (job_id,),
    )
    assert [r["id"] for r in claim(conn)] == [job_id]


def test_create_job_as_user_null_means_self(conn: Conn) -> None:
    user = new_user()
    with as_user(conn, user):
        job_id = call(conn, "create_job", user_id=None, job_type="mine")[0]["create_job"]
    assert job(conn, job_id)["user_id"] == user


def test_create_job_as_service_needs_a_user(conn: Conn) -> None:
    before = digest(conn)
    with raises_sqlstate("22023", "p_user_id is required"), as_service(conn):
        call(conn, "create_job", user_id=None, job_type="x")
    assert digest(conn) == before


@pytest.mark.parametrize("fn", ["create_job", "find_or_create_job"])
def test_only_service_may_raise_the_priority(conn: Conn, fn: str) -> None:
    """Users share one queue: a user may lower their job's priority, not jump the queue."""
    user = new_user()
    with as_user(conn, user):
        for prio in (0, -1, -100):
            call(conn, fn, user_id=user, job_type="t", params={"p": prio}, priority=prio)
    before = digest(conn)
    for prio in (1, 100):
        with (
            raises_sqlstate("42501", "only service callers may set a priority above 0"),
            as_user(conn, user),
        ):
            call(conn, fn, user_id=user, job_type="t", params={"p": prio}, priority=prio)
    with raises_sqlstate("42501"), as_user(conn, user):
        call(
            conn, "create_jobs", user, Jsonb([{"job_type": "t"}, {"job_type": "t", "priority": 5}])
        )
    assert digest(conn) == before
    with as_service(conn):
        call(conn, fn, user_id=user, job_type="t", params={"p": 100}, priority=100)
    assert scalar(conn, "select max(priority) from public.job_queue") == 100


# ---------------------------------------------------------------------------
# create_jobs
# ---------------------------------------------------------------------------


def test_create_jobs_returns_ids_in_input_order(conn: Conn) -> None:
    user = new_user()
    specs: list[dict[str, Any]] = [
        {"job_type": f"t{i}", "params": {"i": i}, "priority": i, "max_retries": i % 4}
        for i in range(1, 8)
    ]
    specs[2]["ttl"] = 60
    specs[3].pop("params")
    rows = call(conn, "create_jobs", user, Jsonb(specs))
    assert [r["idx"] for r in rows] == list(range(1, 8))
    assert len({r["job_id"] for r in rows}) == 7
    for r, spec in zip(rows, specs, strict=True):
        row = job(conn, r["job_id"])
        assert row["user_id"] == user
        assert row["job_type"] == spec["job_type"]
        assert row["params"] == spec.get("params", {})
        assert row["priority"] == spec["priority"]
        assert row["max_retries"] == spec["max_retries"]
        expected_ttl = timedelta(seconds=spec["ttl"]) if "ttl" in spec else timedelta(hours=24)
        assert row["expires_at"] - row["run_after"] == expected_ttl
    assert scalar(conn, "select count(*) from public.job_queue") == 7


def test_create_jobs_empty_array(conn: Conn) -> None:
    assert call(conn, "create_jobs", new_user(), Jsonb([])) == []


def test_create_jobs_run_after(conn: Conn) -> None:
    rows = call(
        conn,
        "create_jobs",
        new_user(),
        Jsonb([{"job_type": "a", "run_after": "2999-01-01T00:00:00Z"}]),
    )
    assert job(conn, rows[0]["job_id"])["run_after"].year == 2999


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ({"job_type": "has space"}, "22023"),
        ({"job_type": "ok", "params": [1]}, "22023"),
        ({"params": {}}, "22023"),  # no job_type
        ({"job_type": "ok", "priority": 101}, "22023"),
        ({"job_type": "ok", "priority": "high"}, "22023"),
        ({"job_type": "ok", "priority": 10**20}, "22023"),
        ({"job_type": "ok", "max_retries": 1.5}, "22023"),
        ({"job_type": "ok", "run_after": "not a date"}, "22023"),
        ({"job_type": "ok", "run_after": "2030-01-01 00:00-16"}, "22023"),
        ({"job_type": "ok", "ttl": "forever"}, "22023"),
        ({"job_type": "ok", "ttl": 1e13}, "22023"),  # PostgreSQL 15's make_interval wraps
        ({"job_type": "ok", "run_after": "294000-01-01", "ttl": 1e10}, "22023"),
        ({"job_type": "ok", "max_retries": 26}, "22023"),
        ({"job_type": "ok", "ttl": -5}, "22023"),
        ({"job_type": "ok", "params": {"big": "x" * 70000}}, "54000"),
        ("not an object", "22023"),
    ],
)
def test_create_jobs_is_all_or_nothing(conn: Conn, bad: Any, code: str) -> None:
    user = new_user()
    create_job(conn, user, "existing")
    before = digest(conn)
    jobs = [{"job_type": "first"}, {"job_type": "second"}, bad, {"job_type": "last"}]
    with raises_sqlstate(code):
        call(conn, "create_jobs", user, Jsonb(jobs))
    assert digest(conn) == before


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"job_type": "ok", "priority": "high"}, r"^p_jobs\[2\]: invalid priority: "),
        ({"job_type": "ok", "priority": 10**20}, r"^p_jobs\[2\]: invalid priority: "),
        ({"job_type": "ok", "max_retries": "x"}, r"^p_jobs\[2\]: invalid max_retries: "),
        ({"job_type": "ok", "run_after": "[]"}, r"^p_jobs\[2\]: invalid run_after: "),
        ({"job_type": "ok", "ttl": 1e13}, r"^p_jobs\[2\]: invalid ttl: "),
        ({"job_type": "ok", "ttl": "NaN"}, r"^p_jobs\[2\]: invalid ttl: "),
        ({"job_type": "ok", "run_after": "294000-01-01", "ttl": 1e10}, r"^p_jobs\[2\]: ttl .*"),
        ({"job_type": "ok", "priority": 101}, r"^p_jobs\[2\]: priority must be between"),
        ({"job_type": "a b"}, r"^p_jobs\[2\]: invalid job_type 'a b'$"),
    ],
)
def test_create_jobs_names_the_element_and_field_it_refuses(
    conn: Conn, bad: dict[str, Any], match: str
) -> None:
    before = digest(conn)
    with raises_sqlstate("22023", match):
        call(conn, "create_jobs", new_user(), Jsonb([{"job_type": "a"}, {"job_type": "b"}, bad]))
    assert digest(conn) == before


def test_create_jobs_keeps_the_code_of_other_refusals(conn: Conn) -> None:
    user = new_user()
    with raises_sqlstate("42501", r"^p_jobs\[1\]: only service callers"), as_user(conn, user):
        call(
            conn, "create_jobs", None, Jsonb([{"job_type": "a"}, {"job_type": "b", "priority": 5}])
        )
    conn.execute("update public.job_queue_config set max_params_bytes = 50")
    with raises_sqlstate("54000", r"^p_jobs\[0\]: params is"):
        call(conn, "create_jobs", user, Jsonb([{"job_type": "a", "params": {"v": "x" * 100}}]))


def test_create_jobs_ttl_as_before(conn: Conn) -> None:
    rows = call(
        conn,
        "create_jobs",
        new_user(),
        Jsonb(
            [
                {"job_type": "a", "ttl": None},
                {"job_type": "b", "ttl": "90"},
                {"job_type": "c", "ttl": 0.5},
                {"job_type": "d", "ttl": 1e11},
            ]
        ),
    )
    ttls = [
        (job(conn, r["job_id"])["expires_at"], job(conn, r["job_id"])["run_after"]) for r in rows
    ]
    assert ttls[0][0] is None, "null: never expires"
    assert [e - r for e, r in ttls[1:]] == [
        timedelta(seconds=90),
        timedelta(seconds=0.5),
        timedelta(seconds=1e11),
    ]


def test_create_job_ttl_past_the_end_of_time(conn: Conn) -> None:
    before = digest(conn)
    with raises_sqlstate("22023", "past the end of time"):
        call(
            conn,
            "create_job",
            new_user(),
            "a",
            run_after="294000-01-01T00:00:00Z",
            ttl=timedelta(days=365 * 1000),
        )
    assert digest(conn) == before


def test_create_jobs_at_most_10000(conn: Conn) -> None:
    user = new_user()
    before = digest(conn)
    with raises_sqlstate("54000", "at most 10000 jobs per call, got 10001"):
        conn.execute(
            "select * from public.create_jobs(%s, (select jsonb_agg(jsonb_build_object("
            "'job_type', 'bulk')) from generate_series(1, 10001)))",
            (user,),
        )
    assert digest(conn) == before
    n = scalar(
        conn,
        "select count(*) from public.create_jobs(%s, (select jsonb_agg(jsonb_build_object("
        "'job_type', 'bulk', 'params', jsonb_build_object('n', g))) "
        "from generate_series(1, 10000) g))",
        (user,),
    )
    assert n == 10000
    assert scalar(conn, "select count(distinct params) from public.job_queue") == 10000


@pytest.mark.parametrize("p_jobs", [{"job_type": "x"}, "x", 3, None])
def test_create_jobs_needs_an_array(conn: Conn, p_jobs: Any) -> None:
    before = digest(conn)
    value = Jsonb(p_jobs) if p_jobs is not None else None
    with raises_sqlstate("22023", "p_jobs must be a JSON array"):
        conn.execute("select * from public.create_jobs(%s, %s::jsonb)", (new_user(), value))
    assert digest(conn) == before


def test_create_jobs_service_for_many_users(conn: Conn) -> None:
    u1, u2 = new_user(), new_user()
    with as_service(conn):
        rows = call(
            conn,
            "create_jobs",
            None,
            Jsonb(
                [
                    {"job_type": "a", "user_id": str(u1)},
                    {"job_type": "b", "user_id": str(u2)},
                ]
            ),
        )
    assert [job(conn, r["job_id"])["user_id"] for r in rows] == [u1, u2]


def test_create_jobs_service_with_null_user_needs_user_id_per_job(conn: Conn) -> None:
    before = digest(conn)
    with raises_sqlstate("22023", "every job needs a user_id"), as_service(conn):
        call(
            conn,
            "create_jobs",
            None,
            Jsonb(
                [
                    {"job_type": "a", "user_id": str(new_user())},
                    {"job_type": "b"},
                ]
            ),
        )
    assert digest(conn) == before


def test_create_jobs_user_cannot_name_another_user(conn: Conn) -> None:
    user = new_user()
    before = digest(conn)
    with raises_sqlstate("42501"), as_user(conn, user):
        call(
            conn,
            "create_jobs",
            None,
            Jsonb(
                [
                    {"job_type": "a", "user_id": str(user)},
                    {"job_type": "b", "user_id": str(new_user())},
                ]
            ),
        )
    assert digest(conn) == before
    with as_user(conn, user):
        rows = call(conn, "create_jobs", None, Jsonb([{"job_type": "a", "user_id": str(user)}]))
    assert job(conn, rows[0]["job_id"])["user_id"] == user


# ---------------------------------------------------------------------------
# update_job_progress
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("pct", [0, 1, 50, 99, 100])
def test_update_job_progress_in_range(conn: Conn, pct: int) -> None:
    job_id = job_in_state(conn, new_user(), "processing")
    conn.execute(
        "update public.job_queue set heartbeat_at = now() - interval '10 minutes' where id = %s",
        (job_id,),
    )
    with conn.transaction():
        call(conn, "update_job_progress", job_id, pct, "halfway there", "w1")
        now = scalar(conn, "select now()")
    row = job(conn, job_id)
    assert (row["progress_percent"], row["progress_message"]) == (pct, "halfway there")
    assert row["heartbeat_at"] == now
    assert row["status"] == "processing"


@pytest.mark.parametrize("pct", [-1, 101, None, 1000])
def test_update_job_progress_out_of_range(conn: Conn, pct: int | None) -> None:
    job_id = job_in_state(conn, new_user(), "processing")
    before = digest(conn)
    with raises_sqlstate("22023", "progress must be between 0 and 100"):
        call(conn, "update_job_progress", job_id, pct, None, "w1")
    assert digest(conn) == before


def test_update_job_progress_message_too_long(conn: Conn) -> None:
    job_id = job_in_state(conn, new_user(), "processing")
    before = digest(conn)
    with raises_sqlstate("54000"):
        call(conn, "update_job_progress", job_id, 10, "x" * 1001, "w1")
    assert digest(conn) == before
    call(conn, "update_job_progress", job_id, 10, "é" * 1000, "w1")
    assert job(conn, job_id)["progress_message"] == "é" * 1000


@pytest.mark.parametrize("state", ["pending", "completed", "failed", "cancelled", "expired"])
def test_update_job_progress_needs_processing(conn: Conn, state: str) -> None:
    job_id = job_in_state(conn, new_user(), state)
    before = digest(conn)
    with raises_sqlstate("55000", f"is {state}, not processing"):
        call(conn, "update_job_progress", job_id, 10, None, "w1")
    assert digest(conn) == before


def test_update_job_progress_other_worker(conn: Conn) -> None:
    job_id = job_in_state(conn, new_user(), "processing")  # held by w1
    before = digest(conn)
    with raises_sqlstate("55000", "held by another worker"):
        call(conn, "update_job_progress", job_id, 10, None, "w2")
    assert digest(conn) == before
    # NULL worker id is the admin override
    call(conn, "update_job_progress", job_id, 20, None, None)
    assert job(conn, job_id)["progress_percent"] == 20


def test_update_job_progress_unknown_job(conn: Conn) -> None:
    with raises_sqlstate("P0002", "not found"):
        call(conn, "update_job_progress", uuid.uuid4(), 10)


# ---------------------------------------------------------------------------
# start_job
# ---------------------------------------------------------------------------


def test_start_job(conn: Conn) -> None:
    job_id = create_job(conn, new_user())
    with conn.transaction():
        row = claim_one(conn, job_id, "worker-a")
        now = scalar(conn, "select now()")
    assert row["id"] == job_id
    assert row["status"] == "processing"
    assert row["attempts"] == 1
    assert row["worker_id"] == "worker-a"
    assert row["started_at"] == row["heartbeat_at"] == now
    assert job(conn, job_id) == row


def test_start_job_twice(conn: Conn) -> None:
    job_id = create_job(conn, new_user())
    claim_one(conn, job_id, "worker-a")
    before = digest(conn)
    with raises_sqlstate("55000", "is processing, not pending"):
        call(conn, "start_job", job_id, "worker-b")
    assert digest(conn) == before
    assert job(conn, job_id)["worker_id"] == "worker-a"


@pytest.mark.parametrize("worker", ["", None])
def test_start_job_needs_a_worker(conn: Conn, worker: str | None) -> None:
    job_id = create_job(conn, new_user())
    before = digest(conn)
    with raises_sqlstate("22023", "p_worker_id is required"):
        call(conn, "start_job", job_id, worker)
    assert digest(conn) == before


def test_start_job_unknown(conn: Conn) -> None:
    with raises_sqlstate("P0002"):
        call(conn, "start_job", uuid.uuid4(), "w")


# ---------------------------------------------------------------------------
# complete_job / complete_jobs
# ---------------------------------------------------------------------------


def test_complete_job(conn: Conn) -> None:
    job_id = job_in_state(conn, new_user(), "processing")
    call(conn, "update_job_progress", job_id, 40, "working", "w1")
    with conn.transaction():
        call(conn, "complete_job", job_id, {"videos": 12, "nested": {"a": [1, 2]}}, "w1")
        now = scalar(conn, "select now()")
    row = job(conn, job_id)
    assert row["status"] == "completed"
    assert row["progress_percent"] == 100
    assert row["result"] == {"videos": 12, "nested": {"a": [1, 2]}}
    assert row["completed_at"] == now
    assert row["error_message"] is None
    assert row["error_code"] is None


def test_complete_job_without_result(conn: Conn) -> None:
    job_id = job_in_state(conn, new_user(), "processing")
    call(conn, "complete_job", job_id)
    row = job(conn, job_id)
    assert (row["status"], row["result"], row["progress_percent"]) == ("completed", None, 100)


def test_complete_job_result_over_the_cap(conn: Conn) -> None:
    conn.execute("update public.job_queue_config set max_result_bytes = 100")
    job_id = job_in_state(conn, new_user(), "processing")
    ok = {"v": "x" * 80}
    size = scalar(conn, "select octet_length(%s::jsonb::text)", (Jsonb(ok),))
    assert size <= 100
    too_big = {"v": "x" * 100}
    before = digest(conn)
    with raises_sqlstate("54000", r"result is \d+ bytes, over the limit of 100 bytes"):
        call(conn, "complete_job", job_id, too_big, "w1")
    assert digest(conn) == before
    call(conn, "complete_job", job_id, ok, "w1")
    assert job(conn, job_id)["result"] == ok


@pytest.mark.parametrize("state", ["pending", "completed", "failed", "cancelled", "expired"])
def test_complete_job_needs_processing(conn: Conn, state: str) -> None:
    job_id = job_in_state(conn, new_user(), state)
    before = digest(conn)
    with raises_sqlstate("55000"):
        call(conn, "complete_job", job_id, {"r": 1})
    assert digest(conn) == before


def test_complete_job_other_worker(conn: Conn) -> None:
    job_id = job_in_state(conn, new_user(), "processing")
    before = digest(conn)
    with raises_sqlstate("55000", "held by another worker"):
        call(conn, "complete_job", job_id, {"r": 1}, "w2")
    assert digest(conn) == before


def test_complete_jobs_skips_jobs_no_longer_held(conn: Conn) -> None:
    user = new_user()
    held = [job_in_state(conn, user, "processing") for _ in range(2)]
    cancelled = job_in_state(conn, user, "processing")
    call(conn, "cancel_job", cancelled)
    other = create_job(conn, user)
    claim_one(conn, other, "w2")
    ids = [held[0], cancelled, held[1], other, uuid.uuid4()]
    results = [Jsonb({"n": i}) for i in range(len(ids))]
    rows = conn.execute(
        "select * from public.complete_jobs('w1', %s, %s::jsonb[])", (ids, results)
    ).fetchall()
    assert rows == [
        (ids[0], True),
        (ids[1], False),
        (ids[2], True),
        (ids[3], False),
        (ids[4], False),
    ]
    assert job(conn, held[0])["result"] == {"n": 0}
    assert job(conn, held[1])["result"] == {"n": 2}
    assert status(conn, cancelled) == "cancelled"
    assert status(conn, other) == "processing"


# ---------------------------------------------------------------------------
# The attempt a write is for (p_attempt / p_attempts)
# ---------------------------------------------------------------------------


def _second_attempt_by_the_same_worker(conn: Conn) -> uuid.UUID:
    """A job that w1 ran (attempt 1), that was rescued, and that w1 runs again (attempt 2)."""
    job_id = create_job(conn, new_user())
    claim_one(conn, job_id, "w1")
    conn.execute(
        "update public.job_queue set heartbeat_at = now() - interval '1 hour' where id = %s",
        (job_id,),
    )
    call(conn, "detect_stuck_jobs", timedelta(minutes=1))
    _retry_now(conn, job_id)
    assert claim_one(conn, job_id, "w1")["attempts"] == 2
    return job_id


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        ("update_job_progress", (50, "late")),
        ("complete_job", ({"late": True},)),
        ("fail_job", ("late", "E_LATE", True)),
    ],
)
def test_a_write_for_an_earlier_attempt_is_refused(
    conn: Conn, fn: str, args: tuple[Any, ...]
) -> None:
    job_id = _second_attempt_by_the_same_worker(conn)
    before = digest(conn)
    with raises_sqlstate("55000", "is running attempt 2, not attempt 1"):
        call(conn, fn, job_id, *args, worker_id="w1", attempt=1)
    assert digest(conn) == before
    # the admin override names no worker, but an attempt still has to match
    with raises_sqlstate("55000", "is running attempt 2, not attempt 1"):
        call(conn, fn, job_id, *args, attempt=1)
    assert digest(conn) == before
    call(conn, fn, job_id, *args, worker_id="w1", attempt=2)
    assert job(conn, job_id)["attempts"] == 2


@pytest.mark.parametrize("attempt", [None, 2])
def test_a_write_without_or_with_the_current_attempt_is_taken(
    conn: Conn, attempt: int | None
) -> None:
    job_id = _second_attempt_by_the_same_worker(conn)
    call(conn, "update_job_progress", job_id, 60, "now", "w1", attempt)
    assert job(conn, job_id)["progress_percent"] == 60
    call(conn, "complete_job", job_id, {"ok": 2}, "w1", attempt)
    assert (status(conn, job_id), job(conn, job_id)["result"]) == ("completed", {"ok": 2})


def test_complete_jobs_skips_an_earlier_attempt(conn: Conn) -> None:
    stale = _second_attempt_by_the_same_worker(conn)
    current = job_in_state(conn, new_user(), "processing")  # w1, attempt 1
    unchecked = job_in_state(conn, new_user(), "processing")
    ids = [stale, current, unchecked]
    rows = conn.execute(
        "select * from public.complete_jobs('w1', %s, %s::jsonb[], %s::integer[])",
        (ids, [Jsonb({"n": i}) for i in range(3)], [1, 1, None]),
    ).fetchall()
    assert rows == [(stale, False), (current, True), (unchecked, True)]
    assert (status(conn, stale), job(conn, stale)["result"]) == ("processing", None)
    assert job(conn, current)["result"] == {"n": 1}
    before = digest(conn)
    with raises_sqlstate("22023", "p_job_ids and p_attempts must have the same length"):
        conn.execute(
            "select * from public.complete_jobs('w1', %s, %s::jsonb[], %s::integer[])",
            ([stale], [Jsonb({})], [2, 2]),
        )
    assert digest(conn) == before


def test_complete_jobs_bad_input(conn: Conn) -> None:
    job_id = job_in_state(conn, new_user(), "processing")
    before = digest(conn)
    with raises_sqlstate("22023", "same length"):
        conn.execute(
            "select * from public.complete_jobs('w1', %s, %s::jsonb[])",
            ([job_id], [Jsonb({}), Jsonb({})]),
        )
    assert digest(conn) == before
    conn.execute("update public.job_queue_config set max_result_bytes = 50")
    before = digest(conn)
    with raises_sqlstate("54000"):
        conn.execute(
            "select * from public.complete_jobs('w1', %s, %s::jsonb[])",
            ([job_id], [Jsonb({"v": "x" * 100})]),
        )
    assert digest(conn) == before


# ---------------------------------------------------------------------------
# fail_job: exponential backoff, final failure
# ---------------------------------------------------------------------------


def _fail_now(conn: Conn, job_id: uuid.UUID, **kwargs: Any) -> tuple[Any, Any]:
    """fail_job's return value and now() of the same transaction."""
    with conn.transaction():
        nxt = call(conn, "fail_job", job_id, "boom", "E_BOOM", **kwargs)[0]["fail_job"]
        now = scalar(conn, "select now()")
    return nxt, now


def _retry_now(conn: Conn, job_id: uuid.UUID) -> None:
    conn.execute(
        "update public.job_queue set next_retry_at = now() - interval '1 second' where id = %s",
        (job_id,),
    )
    assert call(conn, "retry_failed_jobs")[0]["retry_failed_jobs"] == 1
    assert status(conn, job_id) == "pending"


def test_fail_job_backoff_then_final(conn: Conn) -> None:
    job_id = create_job(conn, new_user(), max_retries=3)
    for attempt in (1, 2, 3):
        assert [r["id"] for r in claim(conn)] == [job_id]
        nxt, now = _fail_now(conn, job_id)
        assert nxt == now + timedelta(seconds=10 * 2 ** (attempt - 1))
        row = job(conn, job_id)
        assert (row["status"], row["attempts"], row["next_retry_at"]) == ("failed", attempt, nxt)
        assert (row["error_message"], row["error_code"]) == ("boom", "E_BOOM")
        assert row["completed_at"] == now
        _retry_now(conn, job_id)
    assert [r["id"] for r in claim(conn)] == [job_id]
    nxt, _ = _fail_now(conn, job_id)
    assert nxt is None
    row = job(conn, job_id)
    assert (row["status"], row["attempts"], row["next_retry_at"]) == ("failed", 4, None)
    conn.execute("update public.job_queue set completed_at = now() - interval '30 days'")
    assert call(conn, "retry_failed_jobs")[0]["retry_failed_jobs"] == 0


def test_fail_job_backoff_is_capped(conn: Conn) -> None:
    conn.execute(
        "update public.job_queue_config set retry_base_delay = '10 seconds', "
        "retry_max_delay = '25 seconds'"
    )
    job_id = create_job(conn, new_user(), max_retries=5)
    delays = []
    for _ in range(4):
        claim(conn)
        nxt, now = _fail_now(conn, job_id)
        delays.append((nxt - now).total_seconds())
        _retry_now(conn, job_id)
    assert delays == [10, 20, 25, 25]


def test_fail_job_not_retryable(conn: Conn) -> None:
    job_id = job_in_state(conn, new_user(), "processing", max_retries=5)
    nxt, _ = _fail_now(conn, job_id, retryable=False)
    assert nxt is None
    row = job(conn, job_id)
    assert (row["status"], row["next_retry_at"], row["attempts"]) == ("failed", None, 1)


def test_fail_job_max_retries_zero_is_final_at_once(conn: Conn) -> None:
    job_id = job_in_state(conn, new_user(), "processing", max_retries=0)
    nxt, _ = _fail_now(conn, job_id)
    assert nxt is None


def test_fail_job_message_defaults_and_truncation(conn: Conn) -> None:
    user = new_user()
    a = job_in_state(conn, user, "processing")
    call(conn, "fail_job", a, None)
    assert job(conn, a)["error_message"] == "unknown error"
    b = job_in_state(conn, user, "processing")
    call(conn, "fail_job", b, "e" * 5000, "C" * 150)
    row = job(conn, b)
    assert (len(row["error_message"]), len(row["error_code"])) == (4000, 100)


@pytest.mark.parametrize("state", ["pending", "completed", "failed", "cancelled", "expired"])
def test_fail_job_needs_processing(conn: Conn, state: str) -> None:
    job_id = job_in_state(conn, new_user(), state)
    before = digest(conn)
    with raises_sqlstate("55000"):
        call(conn, "fail_job", job_id, "x")
    assert digest(conn) == before


def test_fail_job_other_worker(conn: Conn) -> None:
    job_id = job_in_state(conn, new_user(), "processing")
    before = digest(conn)
    with raises_sqlstate("55000", "held by another worker"):
        call(conn, "fail_job", job_id, "x", None, True, "w2")
    assert digest(conn) == before


# ---------------------------------------------------------------------------
# cancel_job
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["pending", "processing"])
def test_cancel_job(conn: Conn, state: str) -> None:
    job_id = job_in_state(conn, new_user(), state)
    with conn.transaction():
        assert call(conn, "cancel_job", job_id)[0]["cancel_job"] == "cancelled"
        now = scalar(conn, "select now()")
    row = job(conn, job_id)
    assert (row["status"], row["error_code"], row["completed_at"]) == (
        "cancelled",
        "CANCELLED",
        now,
    )
    assert row["error_message"] == "cancelled by service"


def test_cancel_job_by_its_user(conn: Conn) -> None:
    user = new_user()
    job_id = create_job(conn, user)
    with as_user(conn, user):
        assert call(conn, "cancel_job", job_id)[0]["cancel_job"] == "cancelled"
    row = job(conn, job_id)
    assert (row["status"], row["error_message"]) == ("cancelled", "cancelled by user")


@pytest.mark.parametrize("state", ["completed", "failed", "cancelled", "expired"])
def test_cancel_job_finished(conn: Conn, state: str) -> None:
    job_id = job_in_state(conn, new_user(), state)
    before = digest(conn)
    with raises_sqlstate("55000", f"is {state}: only pending or processing"):
        call(conn, "cancel_job", job_id)
    assert digest(conn) == before


def test_cancel_job_service_naming_wrong_user(conn: Conn) -> None:
    job_id = create_job(conn, new_user())
    before = digest(conn)
    with raises_sqlstate("P0002"):
        call(conn, "cancel_job", job_id, new_user())
    assert digest(conn) == before


# ---------------------------------------------------------------------------
# add_job_log
# ---------------------------------------------------------------------------


def test_add_job_log_levels(conn: Conn) -> None:
    job_id = create_job(conn, new_user())
    ids = [
        call(conn, "add_job_log", job_id, level, f"{level} line", {"level": level})[0][
            "add_job_log"
        ]
        for level in ("debug", "info", "warning", "error")
    ]
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    rows = conn.execute(
        "select id, job_id, level, message, metadata from public.job_log order by id"
    ).fetchall()
    assert rows == [
        (i, job_id, level, f"{level} line", {"level": level})
        for i, level in zip(ids, ("debug", "info", "warning", "error"), strict=True)
    ]


def test_add_job_log_metadata_defaults(conn: Conn) -> None:
    job_id = create_job(conn, new_user())
    a = scalar(conn, "select public.add_job_log(%s, 'info', 'no metadata')", (job_id,))
    b = scalar(conn, "select public.add_job_log(%s, 'info', 'null metadata', NULL)", (job_id,))
    rows = dict(conn.execute("select id, metadata from public.job_log").fetchall())
    assert rows == {a: {}, b: {}}


@pytest.mark.parametrize(
    ("level", "message", "metadata", "code", "match"),
    [
        ("fatal", "m", {}, "22023", "level must be"),
        (None, "m", {}, "22023", "level must be"),
        ("INFO", "m", {}, "22023", "level must be"),
        ("info", "", {}, "22023", "message is required"),
        ("info", None, {}, "22023", "message is required"),
        ("info", "x" * 10001, {}, "54000", "over 10000"),
        ("info", "m", [1, 2], "22023", "metadata must be a JSON object"),
        ("info", "m", "text", "22023", "metadata must be a JSON object"),
        ("info", "m", {"big": "x" * 70000}, "54000", "metadata is"),
    ],
)
def test_add_job_log_bad_input(
    conn: Conn, level: str | None, message: str | None, metadata: Any, code: str, match: str
) -> None:
    job_id = create_job(conn, new_user())
    before = digest(conn)
    with raises_sqlstate(code, match):
        conn.execute(
            "select public.add_job_log(%s, %s, %s, %s::jsonb)",
            (job_id, level, message, Jsonb(metadata)),
        )
    assert digest(conn) == before


def test_add_job_log_unknown_job(conn: Conn) -> None:
    before = digest(conn)
    with raises_sqlstate("P0002", "not found"):
        call(conn, "add_job_log", uuid.uuid4(), "info", "hello")
    assert digest(conn) == before


# ---------------------------------------------------------------------------
# get_user_jobs
# ---------------------------------------------------------------------------

_LISTING = [
    # (job_type, final state, priority, progress)
    ("alpha", "pending", 5, 0),
    ("beta", "processing", 1, 40),
    ("alpha", "completed", 3, 100),
    ("gamma", "failed", 1, 10),
    ("beta", "cancelled", 0, 0),
    ("alpha", "expired", -2, 0),
    ("gamma", "completed", 9, 100),
    ("alpha", "processing", 5, 70),
]


def _listing(conn: Conn) -> tuple[uuid.UUID, uuid.UUID, list[uuid.UUID]]:
    """User A: the _LISTING jobs at distinct created_at, plus two sharing one. User B: 2 jobs."""
    a, b = new_user(), new_user()
    ids = []
    for i, (job_type, state, prio, progress) in enumerate(_LISTING):
        job_id = job_in_state(conn, a, state, job_type=job_type, priority=prio)
        conn.execute(
            "update public.job_queue set created_at = now() - make_interval(mins => %s), "
            "progress_percent = %s where id = %s",
            (100 - i, progress, job_id),
        )
        ids.append(job_id)
    # two jobs created in the same instant: the id breaks the tie
    for _ in range(2):
        job_id = create_job(conn, a, "delta")
        conn.execute(
            "update public.job_queue set created_at = now() - interval '50 minutes' where id = %s",
            (job_id,),
        )
        ids.append(job_id)
    for _ in range(2):
        create_job(conn, b, "alpha")
    return a, b, ids


def _all_rows(conn: Conn, user: uuid.UUID) -> list[dict[str, Any]]:
    return call(conn, "get_user_jobs", user, limit=1000)


def test_get_user_jobs_total_count_and_offset_paging(conn: Conn) -> None:
    a, _, ids = _listing(conn)
    pages = [call(conn, "get_user_jobs", a, limit=3, offset=off) for off in (0, 3, 6, 9)]
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert {r["total_count"] for p in pages for r in p} == {len(ids)}
    listed = [r["id"] for p in pages for r in p]
    assert sorted(listed) == sorted(ids)
    expected = [
        r["id"]
        for r in sorted(
            (job(conn, i) for i in ids), key=lambda r: (r["created_at"], r["id"]), reverse=True
        )
    ]
    assert listed == expected
    assert call(conn, "get_user_jobs", a, limit=3, offset=10) == []


def test_get_user_jobs_rows_are_whole_jobs(conn: Conn) -> None:
    a, _, ids = _listing(conn)
    for r in call(conn, "get_user_jobs", a, limit=1000):
        total = r.pop("total_count")
        assert total == len(ids)
        assert r == job(conn, r["id"])


@pytest.mark.parametrize(
    ("status_filter", "type_filter"),
    [
        ("pending", None),
        ("completed", None),
        ("processing", None),
        (None, "alpha"),
        (None, "delta"),
        ("completed", "gamma"),
        ("failed", "alpha"),
        ("expired", None),
    ],
)
def test_get_user_jobs_filters(
    conn: Conn, status_filter: str | None, type_filter: str | None
) -> None:
    a, _, ids = _listing(conn)
    expected = {
        i
        for i in ids
        if (status_filter is None or job(conn, i)["status"] == status_filter)
        and (type_filter is None or job(conn, i)["job_type"] == type_filter)
    }
    rows = call(conn, "get_user_jobs", a, status=status_filter, job_type=type_filter, limit=1000)
    assert {r["id"] for r in rows} == expected
    assert {r["total_count"] for r in rows} <= {len(expected)}
    page = call(conn, "get_user_jobs", a, status=status_filter, job_type=type_filter, limit=1)
    assert len(page) == min(1, len(expected))
    if page:
        assert page[0]["total_count"] == len(expected)


def test_get_user_jobs_params_and_result_contains(conn: Conn) -> None:
    user = new_user()
    x = create_job(conn, user, "s", {"account": "abc", "n": 1})
    create_job(conn, user, "s", {"account": "def"})
    y = job_in_state(conn, user, "processing", params={"account": "abc", "n": 2})
    call(conn, "complete_job", y, {"videos": 3})
    rows = call(conn, "get_user_jobs", user, params_contains={"account": "abc"})
    assert {r["id"] for r in rows} == {x, y}
    rows = call(conn, "get_user_jobs", user, result_contains={"videos": 3})
    assert [r["id"] for r in rows] == [y]


_ORDER_COLUMNS = [
    "created_at",
    "updated_at",
    "completed_at",
    "priority",
    "status",
    "job_type",
    "progress_percent",
]


@pytest.mark.parametrize("direction", ["ASC", "DESC"])
@pytest.mark.parametrize("column", _ORDER_COLUMNS)
def test_get_user_jobs_order(conn: Conn, column: str, direction: str) -> None:
    a, _, ids = _listing(conn)
    rows = call(conn, "get_user_jobs", a, limit=1000, order_by=column, order_dir=direction)
    jobs = [job(conn, i) for i in ids]
    desc = direction == "DESC"
    if column == "completed_at":
        # NULLS LAST in both directions
        with_value = sorted(
            (j for j in jobs if j[column] is not None),
            key=lambda j: (j[column], j["id"]),
            reverse=desc,
        )
        without = sorted(
            (j for j in jobs if j[column] is None), key=lambda j: j["id"], reverse=desc
        )
        expected = with_value + without
    else:
        expected = sorted(jobs, key=lambda j: (j[column], j["id"]), reverse=desc)
    assert [r["id"] for r in rows] == [j["id"] for j in expected]
    # the same order, page by page
    paged = [
        r["id"]
        for off in range(0, len(ids), 4)
        for r in call(
            conn, "get_user_jobs", a, limit=4, offset=off, order_by=column, order_dir=direction
        )
    ]
    assert paged == [j["id"] for j in expected]


def test_get_user_jobs_order_words_are_case_insensitive(conn: Conn) -> None:
    a, _, _ = _listing(conn)
    assert call(conn, "get_user_jobs", a, order_by="PRIORITY", order_dir="asc") == call(
        conn, "get_user_jobs", a, order_by="priority", order_dir="ASC"
    )


@pytest.mark.parametrize("direction", ["DESC", "ASC"])
def test_get_user_jobs_cursor_paging(conn: Conn, direction: str) -> None:
    a, _, ids = _listing(conn)
    seen: list[dict[str, Any]] = []
    cursor: dict[str, Any] = {}
    while True:
        page = call(conn, "get_user_jobs", a, limit=3, order_dir=direction, **cursor)
        if not page:
            break
        # offset paging (the first page) counts; cursor pages do not
        expected_total = None if cursor else len(ids)
        assert {r["total_count"] for r in page} == {expected_total}
        seen += page
        cursor = {"cursor_created_at": page[-1]["created_at"], "cursor_id": page[-1]["id"]}
        assert len(seen) <= len(ids)
    jobs = [job(conn, i) for i in ids]
    expected = sorted(jobs, key=lambda j: (j["created_at"], j["id"]), reverse=direction == "DESC")
    assert [r["id"] for r in seen] == [j["id"] for j in expected]


def test_get_user_jobs_cursor_with_filter(conn: Conn) -> None:
    a, _, _ = _listing(conn)
    first = call(conn, "get_user_jobs", a, job_type="alpha", limit=2)
    rest = call(
        conn,
        "get_user_jobs",
        a,
        job_type="alpha",
        limit=100,
        cursor_created_at=first[-1]["created_at"],
        cursor_id=first[-1]["id"],
    )
    everything = call(conn, "get_user_jobs", a, job_type="alpha", limit=100)
    assert [r["id"] for r in first + rest] == [r["id"] for r in everything]
    assert all(r["total_count"] is None for r in rest)
    assert everything[0]["total_count"] == len(everything) == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"limit": 0}, "p_limit"),
        ({"limit": -1}, "p_limit"),
        ({"limit": 1001}, "p_limit"),
        ({"limit": 2**31 - 1}, "p_limit"),
        ({"limit": None}, "p_limit"),
        ({"offset": -1}, "p_offset"),
        ({"offset": 1000001}, "p_offset"),
        ({"offset": None}, "p_offset"),
        ({"status": "running"}, "unknown status"),
        ({"status": "PENDING"}, "unknown status"),
        ({"order_by": "id"}, "p_order_by must be one of"),
        ({"order_by": "params"}, "p_order_by must be one of"),
        ({"order_by": "user_id"}, "p_order_by must be one of"),
        ({"order_by": "created_at; drop table public.job_queue"}, "p_order_by must be one of"),
        ({"order_by": "created_at desc, (select 1)"}, "p_order_by must be one of"),
        ({"order_dir": "sideways"}, "p_order_dir must be ASC or DESC"),
        ({"order_dir": "DESC; --"}, "p_order_dir must be ASC or DESC"),
        ({"cursor_id": "00000000-0000-0000-0000-000000000000"}, "needs both"),
        ({"cursor_created_at": "2020-01-01"}, "needs both"),
        (
            {
                "cursor_created_at": "2020-01-01",
                "cursor_id": "00000000-0000-0000-0000-000000000000",
                "offset": 5,
            },
            "takes no offset",
        ),
        (
            {
                "cursor_created_at": "2020-01-01",
                "cursor_id": "00000000-0000-0000-0000-000000000000",
                "order_by": "priority",
            },
            "orders by created_at",
        ),
    ],
)
def test_get_user_jobs_bad_arguments(conn: Conn, kwargs: dict[str, Any], match: str) -> None:
    user = new_user()
    create_job(conn, user)
    with raises_sqlstate("22023", match), as_user(conn, user):
        call(conn, "get_user_jobs", user, **kwargs)
    assert scalar(conn, "select count(*) from public.job_queue") == 1


def test_get_user_jobs_null_user(conn: Conn) -> None:
    a, b, ids = _listing(conn)
    with as_service(conn):
        rows = call(conn, "get_user_jobs", None, limit=1000)
    assert len(rows) == len(ids) + 2
    assert {r["user_id"] for r in rows} == {a, b}
    assert {r["total_count"] for r in rows} == {len(ids) + 2}
    # a user's NULL means "me", never "everyone"
    with as_user(conn, b):
        rows = call(conn, "get_user_jobs", None, limit=1000)
    assert {r["user_id"] for r in rows} == {b}
    assert {r["total_count"] for r in rows} == {2}


# ---------------------------------------------------------------------------
# get_job_logs
# ---------------------------------------------------------------------------

_LOGS = [
    ("info", "started sync of channel", {"step": 1}),
    ("debug", "fetched page one", {"step": 2, "page": 1}),
    ("warning", "disk quota nearly full", {"step": 2, "page": 2}),
    ("error", "network timeout talking to youtube", {"step": 3}),
    ("info", "disk cleanup done", {"step": 4}),
    ("error", "disk full on worker", {"step": 5, "fatal": True}),
]


def _logged_job(conn: Conn, user: uuid.UUID | None = None) -> tuple[uuid.UUID, list[int]]:
    job_id = create_job(conn, user or new_user())
    ids = [
        call(conn, "add_job_log", job_id, level, message, meta)[0]["add_job_log"]
        for level, message, meta in _LOGS
    ]
    return job_id, ids


def test_get_job_logs_newest_first_with_paging(conn: Conn) -> None:
    job_id, ids = _logged_job(conn)
    _logged_job(conn)  # another job's logs never show up
    pages = [call(conn, "get_job_logs", job_id, limit=4, offset=off) for off in (0, 4, 8)]
    assert [len(p) for p in pages] == [4, 2, 0]
    rows = pages[0] + pages[1]
    assert [r["id"] for r in rows] == list(reversed(ids))
    assert {r["total_count"] for r in rows} == {len(_LOGS)}
    assert [(r["level"], r["message"], r["metadata"]) for r in rows] == list(reversed(_LOGS))
    assert {r["job_id"] for r in rows} == {job_id}


def test_get_job_logs_same_instant_breaks_ties_by_id(conn: Conn) -> None:
    job_id = create_job(conn, new_user())
    with conn.transaction():  # one transaction: one now() for every line
        ids = [
            call(conn, "add_job_log", job_id, "info", f"line {i}")[0]["add_job_log"]
            for i in range(5)
        ]
    assert [r["id"] for r in call(conn, "get_job_logs", job_id)] == list(reversed(ids))


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_get_job_logs_level_filter(conn: Conn, level: str) -> None:
    job_id, _ = _logged_job(conn)
    rows = call(conn, "get_job_logs", job_id, level=level)
    expected = [m for lv, m, _ in reversed(_LOGS) if lv == level]
    assert [r["message"] for r in rows] == expected
    assert {r["total_count"] for r in rows} == {len(expected)}


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("disk", ["disk full on worker", "disk cleanup done", "disk quota nearly full"]),
        ("disk -full", ["disk cleanup done"]),
        ('"disk full"', ["disk full on worker"]),
        ("network or cleanup", ["disk cleanup done", "network timeout talking to youtube"]),
        ("YouTube", ["network timeout talking to youtube"]),
        ("nothing-like-this", []),
        ("", [m for _, m, _ in reversed(_LOGS)]),
    ],
)
def test_get_job_logs_websearch(conn: Conn, search: str, expected: list[str]) -> None:
    job_id, _ = _logged_job(conn)
    rows = call(conn, "get_job_logs", job_id, search=search)
    assert [r["message"] for r in rows] == expected


def test_get_job_logs_search_is_not_sql(conn: Conn) -> None:
    job_id, _ = _logged_job(conn)
    rows = call(conn, "get_job_logs", job_id, search="disk') or true --")
    assert {r["message"] for r in rows} <= {m for _, m, _ in _LOGS}
    assert scalar(conn, "select count(*) from public.job_log") == len(_LOGS)


def test_get_job_logs_metadata_contains(conn: Conn) -> None:
    job_id, _ = _logged_job(conn)
    rows = call(conn, "get_job_logs", job_id, metadata_contains={"step": 2})
    assert [r["message"] for r in rows] == ["disk quota nearly full", "fetched page one"]
    rows = call(
        conn, "get_job_logs", job_id, metadata_contains={"step": 2}, level="warning", search="quota"
    )
    assert [r["message"] for r in rows] == ["disk quota nearly full"]
    assert rows[0]["total_count"] == 1


def test_get_job_logs_unknown_job(conn: Conn) -> None:
    with raises_sqlstate("P0002", "not found"):
        call(conn, "get_job_logs", uuid.uuid4())


def test_get_job_logs_as_owner_and_as_another_user(conn: Conn) -> None:
    owner = new_user()
    job_id, ids = _logged_job(conn, owner)
    with as_user(conn, owner):
        assert [r["id"] for r in call(conn, "get_job_logs", job_id)] == list(reversed(ids))
    with raises_sqlstate("P0002"), as_user(conn, new_user()):
        call(conn, "get_job_logs", job_id)


def test_get_job_logs_every_job_only_for_service(conn: Conn) -> None:
    """p_job_id NULL and p_user_id NULL: every user's logs, for a service caller only."""
    user = new_user()
    mine, _ = _logged_job(conn, user)
    theirs, _ = _logged_job(conn)
    with as_service(conn):
        rows = call(conn, "get_job_logs", None, limit=1000, level="error")
    assert len(rows) == 4
    assert {r["job_id"] for r in rows} == {mine, theirs}
    assert {r["total_count"] for r in rows} == {4}
    # a user's NULL means "me": only the logs of their own jobs
    with as_user(conn, user):
        rows = call(conn, "get_job_logs", None, limit=1000, level="error")
    assert {r["job_id"] for r in rows} == {mine}
    assert {r["total_count"] for r in rows} == {2}


def test_get_job_logs_all_jobs_of_one_user(conn: Conn) -> None:
    user = new_user()
    mine, _ = _logged_job(conn, user)
    other_mine, _ = _logged_job(conn, user)
    _logged_job(conn)
    with as_service(conn):
        rows = call(conn, "get_job_logs", None, user, limit=1000)
    assert {r["job_id"] for r in rows} == {mine, other_mine}
    assert {r["total_count"] for r in rows} == {2 * len(_LOGS)}
    with as_service(conn):
        rows = call(conn, "get_job_logs", None, new_user(), limit=1000)
    assert rows == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"limit": 0}, "p_limit"),
        ({"limit": -5}, "p_limit"),
        ({"limit": 1001}, "p_limit"),
        ({"offset": -1}, "p_offset"),
        ({"offset": 2_000_000}, "p_offset"),
        ({"level": "fatal"}, "level must be"),
        ({"search": "x" * 501}, "search text"),
    ],
)
def test_get_job_logs_bad_arguments(conn: Conn, kwargs: dict[str, Any], match: str) -> None:
    job_id, _ = _logged_job(conn)
    with raises_sqlstate("22023", match):
        call(conn, "get_job_logs", job_id, **kwargs)


# ---------------------------------------------------------------------------
# find_or_create_job
# ---------------------------------------------------------------------------


def _foc(conn: Conn, user: uuid.UUID, params: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    rows = call(conn, "find_or_create_job", user_id=user, job_type="sync", params=params, **kwargs)
    assert len(rows) == 1
    return rows[0]


def test_find_or_create_job_dedupes_within_the_window(conn: Conn) -> None:
    user = new_user()
    first = _foc(conn, user, {"a": 1, "b": 2})
    assert (first["created"], first["status"]) == (True, "pending")
    again = _foc(conn, user, {"b": 2, "a": 1})  # same jsonb value, other key order
    assert (again["job_id"], again["created"], again["status"]) == (
        first["job_id"],
        False,
        "pending",
    )
    claim_one(conn, first["job_id"])
    assert _foc(conn, user, {"a": 1, "b": 2})["status"] == "processing"
    call(conn, "complete_job", first["job_id"])
    done = _foc(conn, user, {"a": 1, "b": 2})
    assert (done["job_id"], done["created"], done["status"]) == (
        first["job_id"],
        False,
        "completed",
    )
    assert scalar(conn, "select count(*) from public.job_queue") == 1


def test_find_or_create_job_row_is_a_real_job(conn: Conn) -> None:
    user = new_user()
    made = _foc(conn, user, {"k": "v"}, priority=4, max_retries=1)
    row = job(conn, made["job_id"])
    assert (
        row["user_id"],
        row["job_type"],
        row["params"],
        row["priority"],
        row["max_retries"],
    ) == (user, "sync", {"k": "v"}, 4, 1)
    assert row["expires_at"] - row["created_at"] == timedelta(hours=24)


@pytest.mark.parametrize(
    "other",
    [
        {"a": 1},  # a subset is not equal
        {"a": 1, "b": 2, "c": 3},  # a superset is not equal
        {"a": "1", "b": 2},
        {"a": 1, "b": [2]},
    ],
)
def test_find_or_create_job_other_params_create(conn: Conn, other: dict[str, Any]) -> None:
    user = new_user()
    first = _foc(conn, user, {"a": 1, "b": 2})
    second = _foc(conn, user, other)
    assert second["created"] is True
    assert second["job_id"] != first["job_id"]


def test_find_or_create_job_other_type_or_user_create(conn: Conn) -> None:
    user = new_user()
    first = _foc(conn, user, {})
    other_type = call(conn, "find_or_create_job", user_id=user, job_type="other", params={})[0]
    other_user = _foc(conn, new_user(), {})
    assert other_type["created"]
    assert other_user["created"]
    assert len({first["job_id"], other_type["job_id"], other_user["job_id"]}) == 3


def test_find_or_create_job_after_the_window(conn: Conn) -> None:
    user = new_user()
    first = _foc(conn, user, {"a": 1})
    conn.execute("update public.job_queue set created_at = now() - interval '6 minutes'")
    later = _foc(conn, user, {"a": 1})
    assert later["created"]
    assert later["job_id"] != first["job_id"]
    # within a longer window the newest match wins
    found = _foc(conn, user, {"a": 1}, dedupe_window=timedelta(hours=1))
    assert (found["job_id"], found["created"]) == (later["job_id"], False)


def test_find_or_create_job_zero_window_always_creates(conn: Conn) -> None:
    user = new_user()
    ids = {_foc(conn, user, {"a": 1}, dedupe_window="0")["job_id"] for _ in range(3)}
    assert len(ids) == 3


@pytest.mark.parametrize("state", ["failed", "cancelled", "expired"])
def test_find_or_create_job_ignores_failed_and_cancelled(conn: Conn, state: str) -> None:
    user = new_user()
    old = job_in_state(conn, user, state, job_type="sync", params={"a": 1})
    made = _foc(conn, user, {"a": 1})
    assert made["created"] is True
    assert made["job_id"] != old


def test_find_or_create_job_double_click(make_conn: Any) -> None:
    user = new_user()
    conns = [make_conn() for _ in range(8)]

    def work(c: Conn, barrier: Any) -> Any:
        with as_user(c, user):
            barrier.wait()
            return _foc(c, user, {"click": 1})

    results = run_concurrently(conns, work)
    assert sum(r["created"] for r in results) == 1
    assert len({r["job_id"] for r in results}) == 1


@pytest.mark.parametrize(
    ("kwargs", "code", "match"),
    [
        ({"dedupe_window": "-1 second"}, "22023", "p_dedupe_window"),
        ({"dedupe_window": None}, "22023", "p_dedupe_window"),
        ({"params": [1]}, "22023", "params must be a JSON object"),
        ({"params": None}, "22023", "params must be a JSON object"),
        ({"job_type": ""}, "22023", "invalid job_type"),
        ({"params": {"big": "x" * 70000}}, "54000", "over the limit"),
    ],
)
def test_find_or_create_job_bad_input(
    conn: Conn, kwargs: dict[str, Any], code: str, match: str
) -> None:
    user = new_user()
    args: dict[str, Any] = {"user_id": user, "job_type": "sync", "params": {}}
    args.update(kwargs)
    before = digest(conn)
    with raises_sqlstate(code, match):
        conn.execute(
            "select * from public.find_or_create_job(p_user_id := %s, p_job_type := %s, "
            "p_params := %s::jsonb, p_dedupe_window := %s::interval)",
            (
                args["user_id"],
                args["job_type"],
                None if args["params"] is None else Jsonb(args["params"]),
                args.get("dedupe_window", "5 minutes"),
            ),
        )
    assert digest(conn) == before


# ---------------------------------------------------------------------------
# get_cached_job_result
# ---------------------------------------------------------------------------


def _completed(conn: Conn, user: uuid.UUID, params: dict[str, Any], result: Any) -> uuid.UUID:
    job_id = job_in_state(conn, user, "processing", job_type="sync", params=params)
    call(conn, "complete_job", job_id, result)
    return job_id


def _cached(conn: Conn, user: uuid.UUID, params: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
    return call(conn, "get_cached_job_result", user_id=user, job_type="sync", params=params, **kw)


def test_get_cached_job_result_newest_within_ttl(conn: Conn) -> None:
    user = new_user()
    older = _completed(conn, user, {"a": 1}, {"v": "old"})
    newer = _completed(conn, user, {"a": 1}, {"v": "new"})
    conn.execute(
        "update public.job_queue set completed_at = now() - interval '10 minutes' where id = %s",
        (older,),
    )
    rows = _cached(conn, user, {"a": 1})
    assert rows == [
        {"job_id": newer, "result": {"v": "new"}, "completed_at": job(conn, newer)["completed_at"]}
    ]


def test_get_cached_job_result_expires_after_ttl(conn: Conn) -> None:
    user = new_user()
    job_id = _completed(conn, user, {"a": 1}, {"v": 1})
    conn.execute("update public.job_queue set completed_at = now() - interval '61 minutes'")
    assert _cached(conn, user, {"a": 1}) == []
    assert [r["job_id"] for r in _cached(conn, user, {"a": 1}, cache_ttl="2 hours")] == [job_id]


def test_get_cached_job_result_misses(conn: Conn) -> None:
    user = new_user()
    _completed(conn, user, {"a": 1, "b": 2}, {"v": 1})
    assert _cached(conn, user, {"a": 1}) == []  # equality, not containment
    assert _cached(conn, user, {"a": 1, "b": 2, "c": 3}) == []
    assert _cached(conn, user, {"a": 2, "b": 2}) == []
    assert _cached(conn, new_user(), {"a": 1, "b": 2}) == []
    assert (
        call(conn, "get_cached_job_result", user_id=user, job_type="other", params={"a": 1, "b": 2})
        == []
    )
    assert len(_cached(conn, user, {"b": 2, "a": 1})) == 1


@pytest.mark.parametrize("state", ["pending", "processing", "failed", "cancelled", "expired"])
def test_get_cached_job_result_only_completed(conn: Conn, state: str) -> None:
    user = new_user()
    job_in_state(conn, user, state, job_type="sync", params={"a": 1})
    assert _cached(conn, user, {"a": 1}) == []


@pytest.mark.parametrize(
    ("params", "ttl", "match"),
    [
        ([1], "1 hour", "params must be a JSON object"),
        (None, "1 hour", "params must be a JSON object"),
        ({}, "-1 hour", "p_cache_ttl"),
        ({}, None, "p_cache_ttl"),
    ],
)
def test_get_cached_job_result_bad_input(conn: Conn, params: Any, ttl: Any, match: str) -> None:
    with raises_sqlstate("22023", match):
        conn.execute(
            "select * from public.get_cached_job_result(%s, 'sync', %s::jsonb, %s::interval)",
            (new_user(), None if params is None else Jsonb(params), ttl),
        )


# ---------------------------------------------------------------------------
# retry_failed_jobs
# ---------------------------------------------------------------------------


def test_retry_failed_jobs_only_due_ones(conn: Conn) -> None:
    user = new_user()
    due = [job_in_state(conn, user, "failed") for _ in range(3)]
    not_due = job_in_state(conn, user, "failed")
    final = job_in_state(conn, user, "failed", max_retries=0)
    assert job(conn, final)["next_retry_at"] is None
    others = {s: job_in_state(conn, user, s) for s in ("pending", "processing", "completed")}
    conn.execute(
        "update public.job_queue set next_retry_at = now() - interval '1 second' "
        "where id = any(%s)",
        (due,),
    )
    before_other = {i: job(conn, i) for i in [not_due, final, *others.values()]}
    assert call(conn, "retry_failed_jobs", limit=2)[0]["retry_failed_jobs"] == 2
    assert call(conn, "retry_failed_jobs")[0]["retry_failed_jobs"] == 1
    assert call(conn, "retry_failed_jobs")[0]["retry_failed_jobs"] == 0
    for i in due:
        row = job(conn, i)
        assert row["status"] == "pending"
        assert (row["worker_id"], row["heartbeat_at"], row["completed_at"]) == (None, None, None)
        assert row["progress_percent"] == 0
        assert row["attempts"] == 1
    for i, row in before_other.items():
        assert job(conn, i) == row


def test_retry_failed_jobs_bad_limit(conn: Conn) -> None:
    for bad in (0, -1, None):
        with raises_sqlstate("22023"):
            call(conn, "retry_failed_jobs", limit=bad)


# ---------------------------------------------------------------------------
# cleanup_old_jobs
# ---------------------------------------------------------------------------


def test_cleanup_old_jobs(conn: Conn) -> None:
    user = new_user()
    old = {
        "completed": job_in_state(conn, user, "completed"),
        "failed_final": job_in_state(conn, user, "failed", max_retries=0),
        "cancelled": job_in_state(conn, user, "cancelled"),
        "expired": job_in_state(conn, user, "expired"),
    }
    kept = {
        "failed_awaiting_retry": job_in_state(conn, user, "failed"),
        "pending": job_in_state(conn, user, "pending"),
        "processing": job_in_state(conn, user, "processing"),
        "recent_completed": job_in_state(conn, user, "completed"),
    }
    for i in [*old.values(), *kept.values()]:
        call(conn, "add_job_log", i, "info", "a line")
        call(conn, "add_job_log", i, "error", "another line")
    conn.execute(
        "update public.job_queue set created_at = now() - interval '30 days', "
        "completed_at = CASE WHEN completed_at IS NOT NULL THEN now() - interval '8 days' END "
        "where id <> %s",
        (kept["recent_completed"],),
    )
    before = {i: job(conn, i) for i in kept.values()}
    assert call(conn, "cleanup_old_jobs")[0]["cleanup_old_jobs"] == len(old)
    remaining = {r[0] for r in conn.execute("select id from public.job_queue")}
    assert remaining == set(kept.values())
    logs = conn.execute("select job_id, count(*) from public.job_log group by job_id").fetchall()
    assert dict(logs) == {i: 2 for i in kept.values()}
    assert {i: job(conn, i) for i in kept.values()} == before
    assert call(conn, "cleanup_old_jobs")[0]["cleanup_old_jobs"] == 0
    # a shorter interval reaches the recent one
    assert call(conn, "cleanup_old_jobs", older_than="0")[0]["cleanup_old_jobs"] == 1


def test_cleanup_old_jobs_in_batches(conn: Conn) -> None:
    user = new_user()
    for _ in range(5):
        job_in_state(conn, user, "completed")
    conn.execute("update public.job_queue set completed_at = now() - interval '8 days'")
    counts = [call(conn, "cleanup_old_jobs", batch_size=2)[0]["cleanup_old_jobs"] for _ in range(4)]
    assert counts == [2, 2, 1, 0]


@pytest.mark.parametrize(
    ("older_than", "batch"), [("-1 day", 10), (None, 10), ("1 day", 0), ("1 day", None)]
)
def test_cleanup_old_jobs_bad_arguments(conn: Conn, older_than: Any, batch: Any) -> None:
    job_in_state(conn, new_user(), "completed")
    conn.execute("update public.job_queue set completed_at = now() - interval '8 days'")
    before = digest(conn)
    with raises_sqlstate("22023"):
        conn.execute(
            "select public.cleanup_old_jobs(%s::interval, %s::integer)", (older_than, batch)
        )
    assert digest(conn) == before


# ---------------------------------------------------------------------------
# expire_stale_jobs
# ---------------------------------------------------------------------------


def test_expire_stale_jobs(conn: Conn) -> None:
    user = new_user()
    stale = [create_job(conn, user) for _ in range(2)]
    fresh = create_job(conn, user)
    forever = create_job(conn, user, ttl=None)
    running = job_in_state(conn, user, "processing")
    conn.execute(
        "update public.job_queue set expires_at = now() - interval '1 second' "
        "where id = any(%s) or id = %s",
        (stale, running),
    )
    conn.execute(
        "update public.job_queue set created_at = now() - interval '30 days' where id = %s",
        (forever,),
    )
    untouched = {i: job(conn, i) for i in (fresh, forever, running)}
    with conn.transaction():
        assert call(conn, "expire_stale_jobs")[0]["expire_stale_jobs"] == 2
        now = scalar(conn, "select now()")
    for i in stale:
        row = job(conn, i)
        assert (row["status"], row["error_code"], row["completed_at"]) == (
            "expired",
            "EXPIRED",
            now,
        )
        assert row["error_message"]
    assert {i: job(conn, i) for i in untouched} == untouched
    assert call(conn, "expire_stale_jobs")[0]["expire_stale_jobs"] == 0


def test_expired_jobs_are_not_claimed_before_expiry_runs(conn: Conn) -> None:
    job_id = create_job(conn, new_user())
    conn.execute("update public.job_queue set expires_at = now() - interval '1 second'")
    assert claim(conn) == []
    assert status(conn, job_id) == "pending"


# ---------------------------------------------------------------------------
# detect_stuck_jobs
# ---------------------------------------------------------------------------


def test_detect_stuck_jobs(conn: Conn) -> None:
    user = new_user()
    stuck = job_in_state(conn, user, "processing")
    stuck_last = job_in_state(conn, user, "processing", max_retries=0)
    alive = job_in_state(conn, user, "processing")
    conn.execute(
        "update public.job_queue set heartbeat_at = now() - interval '31 minutes' "
        "where id = any(%s)",
        ([stuck, stuck_last],),
    )
    conn.execute(
        "update public.job_queue set heartbeat_at = now() - interval '29 minutes' where id = %s",
        (alive,),
    )
    before_alive = job(conn, alive)
    with conn.transaction():
        assert call(conn, "detect_stuck_jobs")[0]["detect_stuck_jobs"] == 2
        now = scalar(conn, "select now()")
    row = job(conn, stuck)
    assert (row["status"], row["error_code"]) == ("failed", "STUCK")
    assert "w1" in row["error_message"]
    assert row["next_retry_at"] == now + timedelta(seconds=10)
    assert row["completed_at"] == now
    last = job(conn, stuck_last)
    assert (last["status"], last["error_code"], last["next_retry_at"]) == ("failed", "STUCK", None)
    assert job(conn, alive) == before_alive
    # the retry policy then applies
    conn.execute("update public.job_queue set next_retry_at = now() where id = %s", (stuck,))
    assert call(conn, "retry_failed_jobs")[0]["retry_failed_jobs"] == 1
    assert [(r["id"], r["attempts"]) for r in claim(conn, "w9")] == [(stuck, 2)]


def test_detect_stuck_jobs_custom_timeout(conn: Conn) -> None:
    job_id = job_in_state(conn, new_user(), "processing")
    conn.execute("update public.job_queue set heartbeat_at = now() - interval '2 minutes'")
    assert call(conn, "detect_stuck_jobs")[0]["detect_stuck_jobs"] == 0
    assert call(conn, "detect_stuck_jobs", timeout="1 minute")[0]["detect_stuck_jobs"] == 1
    assert status(conn, job_id) == "failed"


@pytest.mark.parametrize("timeout", ["0", "-1 minute", None])
def test_detect_stuck_jobs_bad_timeout(conn: Conn, timeout: Any) -> None:
    with raises_sqlstate("22023"):
        conn.execute("select public.detect_stuck_jobs(%s::interval)", (timeout,))


# ---------------------------------------------------------------------------
# get_job_queue_stats
# ---------------------------------------------------------------------------


def _stats_fixture(conn: Conn) -> tuple[uuid.UUID, uuid.UUID]:
    a, b = new_user(), new_user()
    for seconds in (1, 2, 3, 10):
        job_id = job_in_state(conn, a, "completed", job_type="sync")
        conn.execute(
            "update public.job_queue set started_at = completed_at - make_interval(secs => %s) "
            "where id = %s",
            (seconds, job_id),
        )
    job_in_state(conn, a, "pending", job_type="sync")
    job_in_state(conn, a, "pending", job_type="sync")
    job_in_state(conn, a, "failed", job_type="export")
    job_in_state(conn, b, "pending", job_type="sync")
    job_in_state(conn, b, "cancelled", job_type="other")
    return a, b


def test_get_job_queue_stats_per_type_and_status(conn: Conn) -> None:
    a, _ = _stats_fixture(conn)
    rows = {(r["job_type"], r["status"]): r for r in call(conn, "get_job_queue_stats", a)}
    assert {k: r["job_count"] for k, r in rows.items()} == {
        ("export", "failed"): 1,
        ("sync", "completed"): 4,
        ("sync", "pending"): 2,
    }
    done = rows[("sync", "completed")]
    assert done["avg_duration_ms"] == pytest.approx(4000)
    assert done["p50_duration_ms"] == pytest.approx(2500)
    assert done["p95_duration_ms"] == pytest.approx(3000 + 0.85 * 7000)
    pending = rows[("sync", "pending")]
    assert pending["avg_duration_ms"] is None
    assert pending["oldest_created_at"] <= pending["newest_created_at"]


def test_get_job_queue_stats_since(conn: Conn) -> None:
    a, _ = _stats_fixture(conn)
    conn.execute(
        "update public.job_queue set created_at = now() - interval '2 days' "
        "where user_id = %s and status = 'completed'",
        (a,),
    )
    with conn.transaction():
        since = scalar(conn, "select now() - interval '1 day'")
    rows = call(conn, "get_job_queue_stats", a, since)
    assert {(r["job_type"], r["status"]): r["job_count"] for r in rows} == {
        ("export", "failed"): 1,
        ("sync", "pending"): 2,
    }


def test_get_job_queue_stats_null_user(conn: Conn) -> None:
    _, b = _stats_fixture(conn)
    with as_service(conn):
        everyone = {
            (r["job_type"], r["status"]): r["job_count"]
            for r in call(conn, "get_job_queue_stats", None)
        }
    assert everyone == {
        ("export", "failed"): 1,
        ("sync", "completed"): 4,
        ("sync", "pending"): 3,
        ("other", "cancelled"): 1,
    }
    with as_user(conn, b):
        mine = {
            (r["job_type"], r["status"]): r["job_count"]
            for r in call(conn, "get_job_queue_stats", None)
        }
    assert mine == {("sync", "pending"): 1, ("other", "cancelled"): 1}


# ---------------------------------------------------------------------------
# get_queue_depth
# ---------------------------------------------------------------------------


def test_get_queue_depth(conn: Conn) -> None:
    a, b = new_user(), new_user()
    for user in (a, b):
        job_in_state(conn, user, "pending", job_type="sync")
        job_in_state(conn, user, "processing", job_type="sync")
        job_in_state(conn, user, "failed", job_type="mail")
        for state in ("completed", "cancelled", "expired"):
            job_in_state(conn, user, state, job_type="sync")
    job_in_state(conn, a, "pending", job_type="mail")
    rows = call(conn, "get_queue_depth")
    assert [(r["job_type"], r["status"], r["job_count"]) for r in rows] == [
        ("mail", "failed", 2),
        ("mail", "pending", 1),
        ("sync", "pending", 2),
        ("sync", "processing", 2),
    ]


# ---------------------------------------------------------------------------
# claim_jobs
# ---------------------------------------------------------------------------


def _queue(conn: Conn, specs: list[tuple[str, int, int]]) -> dict[str, uuid.UUID]:
    """Jobs named by spec: (name, priority, created minutes ago)."""
    user = new_user()
    ids = {}
    for name, prio, ago in specs:
        ids[name] = create_job(conn, user, "work", {"name": name}, priority=prio)
        conn.execute(
            "update public.job_queue set created_at = now() - make_interval(mins => %s) "
            "where id = %s",
            (ago, ids[name]),
        )
    return ids


def test_claim_jobs_priority_then_fifo(conn: Conn) -> None:
    ids = _queue(
        conn,
        [
            ("low-old", 0, 50),
            ("high-new", 5, 10),
            ("high-old", 5, 20),
            ("low-new", 0, 5),
            ("urgent", 100, 1),
            ("neg", -100, 100),
        ],
    )
    order = []
    while rows := claim(conn):
        assert len(rows) == 1
        order.append(rows[0]["params"]["name"])
    assert order == ["urgent", "high-old", "high-new", "low-old", "low-new", "neg"]
    assert len(ids) == len(order)


def test_claim_jobs_batch_takes_the_best(conn: Conn) -> None:
    _queue(conn, [("a", 0, 50), ("b", 5, 10), ("c", 5, 20), ("d", 0, 5)])
    with conn.transaction():
        rows = claim(conn, "w7", limit=3)
        now = scalar(conn, "select now()")
    assert {r["params"]["name"] for r in rows} == {"b", "c", "a"}
    for r in rows:
        assert (r["status"], r["worker_id"], r["attempts"]) == ("processing", "w7", 1)
        assert r["started_at"] == r["heartbeat_at"] == now
        assert r == job(conn, r["id"])
    assert [r["params"]["name"] for r in claim(conn, limit=10)] == ["d"]


def test_claim_jobs_honours_run_after_retry_and_expiry(conn: Conn) -> None:
    user = new_user()
    ready = create_job(conn, user, "work")
    later = create_job(conn, user, "work")
    backing_off = create_job(conn, user, "work")
    expired = create_job(conn, user, "work")
    conn.execute(
        "update public.job_queue set run_after = now() + interval '1 minute' where id = %s",
        (later,),
    )
    conn.execute(
        "update public.job_queue set next_retry_at = now() + interval '1 minute' where id = %s",
        (backing_off,),
    )
    conn.execute(
        "update public.job_queue set expires_at = now() - interval '1 second' where id = %s",
        (expired,),
    )
    assert [r["id"] for r in claim(conn, limit=10)] == [ready]
    conn.execute(
        "update public.job_queue set run_after = now(), next_retry_at = now() where id = any(%s)",
        ([later, backing_off],),
    )
    assert {r["id"] for r in claim(conn, limit=10)} == {later, backing_off}
    assert status(conn, expired) == "pending"


def test_claim_jobs_job_types(conn: Conn) -> None:
    user = new_user()
    a = create_job(conn, user, "email")
    b = create_job(conn, user, "sms")
    c = create_job(conn, user, "push")
    assert {r["id"] for r in claim(conn, limit=10, job_types=["sms", "push", "nope"])} == {b, c}
    assert claim(conn, limit=10, job_types=["sms"]) == []
    assert claim(conn, limit=10, job_types=[]) == []
    assert [r["id"] for r in claim(conn, limit=10)] == [a]


@pytest.mark.parametrize(
    ("worker", "limit"),
    [("", 1), (None, 1), ("w" * 201, 1), ("w", 0), ("w", -1), ("w", 1001), ("w", None)],
)
def test_claim_jobs_bad_arguments(conn: Conn, worker: Any, limit: Any) -> None:
    create_job(conn, new_user())
    before = digest(conn)
    with raises_sqlstate("22023"):
        conn.execute("select * from public.claim_jobs(%s::text, %s::integer)", (worker, limit))
    assert digest(conn) == before


def test_claim_jobs_skips_locked_rows(make_conn: Any) -> None:
    admin = make_conn()
    ids = _queue(admin, [("first", 0, 3), ("second", 0, 2), ("third", 0, 1)])
    a, b = make_conn(), make_conn()
    b.execute("set lock_timeout = '5s'")  # if SKIP LOCKED were missing, b would block here
    with a.transaction():
        got_a = claim(a, "worker-a")
        with b.transaction():
            got_b = claim(b, "worker-b")
        # b committed while a still holds its row
        assert [r["id"] for r in got_a] == [ids["first"]]
        assert [r["id"] for r in got_b] == [ids["second"]]
    assert job(admin, ids["first"])["worker_id"] == "worker-a"
    assert job(admin, ids["second"])["worker_id"] == "worker-b"


def test_claim_jobs_concurrent_workers_never_share(make_conn: Any) -> None:
    admin = make_conn()
    user = new_user()
    call(
        admin,
        "create_jobs",
        user,
        Jsonb([{"job_type": "bulk", "params": {"n": n}} for n in range(300)]),
    )
    conns = [make_conn() for _ in range(6)]

    def work(c: Conn, barrier: Any) -> list[uuid.UUID]:
        worker = f"worker-{c.info.backend_pid}"
        got: list[uuid.UUID] = []
        barrier.wait()
        while rows := claim(c, worker, limit=7):
            got += [r["id"] for r in rows]
        return got

    results = run_concurrently(conns, work)
    everything = [i for got in results for i in got]
    assert len(everything) == len(set(everything)) == 300
    assert (
        scalar(
            admin,
            "select count(*) from public.job_queue where status = 'processing' and attempts = 1",
        )
        == 300
    )
    per_worker = dict(
        admin.execute(
            "select worker_id, count(*) from public.job_queue group by worker_id"
        ).fetchall()
    )
    assert per_worker == {
        f"worker-{c.info.backend_pid}": len(got)
        for c, got in zip(conns, results, strict=True)
        if got
    }


# ---------------------------------------------------------------------------
# heartbeat_jobs
# ---------------------------------------------------------------------------


def test_heartbeat_jobs(conn: Conn) -> None:
    user = new_user()
    held = job_in_state(conn, user, "processing")
    cancelled = job_in_state(conn, user, "processing")
    elsewhere = create_job(conn, user)
    claim_one(conn, elsewhere, "w2")
    finished = job_in_state(conn, user, "processing")
    call(conn, "complete_job", finished)
    missing = uuid.uuid4()
    call(conn, "cancel_job", cancelled)
    conn.execute("update public.job_queue set heartbeat_at = now() - interval '10 minutes'")
    before_other = job(conn, elsewhere)
    with conn.transaction():
        rows = call(conn, "heartbeat_jobs", "w1", [held, cancelled, elsewhere, finished, missing])
        now = scalar(conn, "select now()")
    assert {(r["job_id"], r["status"]) for r in rows} == {
        (cancelled, "cancelled"),
        (elsewhere, "processing"),
        (finished, "completed"),
        (missing, "missing"),
    }
    assert job(conn, held)["heartbeat_at"] == now
    assert job(conn, elsewhere) == before_other
    assert call(conn, "heartbeat_jobs", "w1", [held]) == []


def test_heartbeat_jobs_needs_a_worker(conn: Conn) -> None:
    with raises_sqlstate("22023"):
        call(conn, "heartbeat_jobs", "", [uuid.uuid4()])


# ---------------------------------------------------------------------------
# release_jobs
# ---------------------------------------------------------------------------


def test_release_jobs(conn: Conn) -> None:
    user = new_user()
    a, b, c = (create_job(conn, user) for _ in range(3))
    claim(conn, "w1", limit=2)
    claim_one(conn, c, "w2")
    call(conn, "update_job_progress", a, 50, "half", "w1")
    assert call(conn, "release_jobs", "w1", [a])[0]["release_jobs"] == 1
    row = job(conn, a)
    assert (row["status"], row["attempts"], row["worker_id"], row["progress_percent"]) == (
        "pending",
        0,
        None,
        0,
    )
    assert row["heartbeat_at"] is None
    assert row["completed_at"] is None
    assert status(conn, b) == "processing"
    assert call(conn, "release_jobs", "w1")[0]["release_jobs"] == 1
    assert (status(conn, b), job(conn, b)["attempts"]) == ("pending", 0)
    assert status(conn, c) == "processing"  # another worker's job
    assert call(conn, "release_jobs", "w1")[0]["release_jobs"] == 0
    # released jobs run again as a first attempt
    assert {(r["id"], r["attempts"]) for r in claim(conn, "w3", limit=5)} == {(a, 1), (b, 1)}


def test_release_jobs_keeps_the_attempts_of_earlier_runs(conn: Conn) -> None:
    job_id = job_in_state(conn, new_user(), "failed")
    conn.execute("update public.job_queue set next_retry_at = now()")
    call(conn, "retry_failed_jobs")
    claim(conn, "w1")
    assert job(conn, job_id)["attempts"] == 2
    call(conn, "release_jobs", "w1")
    assert (status(conn, job_id), job(conn, job_id)["attempts"]) == ("pending", 1)


# ---------------------------------------------------------------------------
# retry_job
# ---------------------------------------------------------------------------


def test_retry_job_failed_to_pending(conn: Conn) -> None:
    job_id = job_in_state(conn, new_user(), "failed", max_retries=0)  # final failure
    assert job(conn, job_id)["next_retry_at"] is None
    assert call(conn, "retry_job", job_id)[0]["retry_job"] == "pending"
    row = job(conn, job_id)
    assert (row["status"], row["next_retry_at"], row["worker_id"], row["completed_at"]) == (
        "pending",
        None,
        None,
        None,
    )
    assert row["max_retries"] == 1  # one more attempt granted
    assert [(r["id"], r["attempts"]) for r in claim(conn)] == [(job_id, 2)]


def test_retry_job_by_its_owner(conn: Conn) -> None:
    user = new_user()
    job_id = job_in_state(conn, user, "failed")
    with as_user(conn, user):
        assert call(conn, "retry_job", job_id)[0]["retry_job"] == "pending"
    assert status(conn, job_id) == "pending"


def test_retry_job_after_every_attempt_at_the_cap(conn: Conn) -> None:
    """26 runs of max_retries 25 used: max_retries cannot go above 25, so attempts
    goes back to 25 and the job runs once more (the 26th again), then fails for good."""
    job_id = create_job(conn, new_user(), max_retries=25)
    for _ in range(26):
        assert [r["id"] for r in claim(conn)] == [job_id]
        call(conn, "fail_job", job_id, "boom", "E", False, "w1")
        if _ < 25:
            call(conn, "retry_job", job_id)
    row = job(conn, job_id)
    assert (row["status"], row["attempts"], row["max_retries"]) == ("failed", 26, 25)
    assert call(conn, "retry_job", job_id)[0]["retry_job"] == "pending"
    row = job(conn, job_id)
    assert (row["attempts"], row["max_retries"]) == (25, 25)
    assert [(r["id"], r["attempts"]) for r in claim(conn)] == [(job_id, 26)]
    assert call(conn, "fail_job", job_id, "boom", "E", True, "w1")[0]["fail_job"] is None


def test_retry_job_keeps_unused_attempts(conn: Conn) -> None:
    job_id = create_job(conn, new_user(), max_retries=3)
    claim(conn)
    call(conn, "fail_job", job_id, "boom", "E", False, "w1")
    call(conn, "retry_job", job_id)
    row = job(conn, job_id)
    assert (row["attempts"], row["max_retries"]) == (1, 3)


@pytest.mark.parametrize("state", ["pending", "processing", "completed", "cancelled", "expired"])
def test_retry_job_other_states(conn: Conn, state: str) -> None:
    job_id = job_in_state(conn, new_user(), state)
    before = digest(conn)
    with raises_sqlstate("55000", f"is {state}: only failed jobs can be retried"):
        call(conn, "retry_job", job_id)
    assert digest(conn) == before


def test_retry_job_unknown(conn: Conn) -> None:
    with raises_sqlstate("P0002"):
        call(conn, "retry_job", uuid.uuid4())


# ---------------------------------------------------------------------------
# Bad input (issue 2): refused with a clear message and SQLSTATE, nothing written
# ---------------------------------------------------------------------------

BAD_UUID_CALLS = [
    "select public.create_job('not-a-uuid', 'x')",
    "select public.cancel_job('not-a-uuid')",
    "select public.retry_job('12345')",
    "select * from public.start_job('zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz', 'w')",
    "select public.complete_job('not-a-uuid', '{}')",
    "select public.fail_job('not-a-uuid', 'x')",
    "select public.update_job_progress('', 5)",
    "select public.add_job_log('not-a-uuid', 'info', 'm')",
    "select * from public.get_user_jobs('not-a-uuid')",
    "select * from public.get_job_logs('not-a-uuid')",
    "select * from public.find_or_create_job('not-a-uuid', 'x')",
    "select * from public.get_cached_job_result('not-a-uuid', 'x')",
    "select * from public.get_job_queue_stats('not-a-uuid')",
    "select * from public.heartbeat_jobs('w', '{not-a-uuid}')",
    "select public.release_jobs('w', '{not-a-uuid}')",
    'select * from public.create_jobs(null, \'[{"job_type": "a", "user_id": "nope"}]\')',
]


@pytest.mark.parametrize("query", BAD_UUID_CALLS)
def test_invalid_uuid(conn: Conn, query: str) -> None:
    job_in_state(conn, new_user(), "processing")
    before = digest(conn)
    with raises_sqlstate("22P02", "invalid input syntax for type uuid"):
        conn.execute(query)
    assert digest(conn) == before


@pytest.mark.parametrize("params", ["[]", "[1, 2]", '"text"', "42", "true", "null"])
@pytest.mark.parametrize("fn", ["create_job", "find_or_create_job"])
def test_non_object_params(conn: Conn, fn: str, params: str) -> None:
    user = new_user()
    create_job(conn, user)
    before = digest(conn)
    with raises_sqlstate("22023", "params must be a JSON object"), as_user(conn, user):
        conn.execute(f"select * from public.{fn}(%s, 'x', %s::jsonb)", (user, params))
    assert digest(conn) == before


def test_params_over_the_cap(conn: Conn) -> None:
    assert scalar(conn, "select max_params_bytes from public.job_queue_config") == 65536
    user = new_user()
    before = digest(conn)
    with raises_sqlstate("54000", r"params is \d+ bytes, over the limit of 65536 bytes"):
        create_job(conn, user, "x", {"blob": "x" * 65536})
    assert digest(conn) == before
    # the cap counts bytes, not characters
    with raises_sqlstate("54000"):
        create_job(conn, user, "x", {"blob": "€" * 22000})
    assert digest(conn) == before
    # exactly at the cap is accepted; a byte over is not
    body = {"blob": "x" * 100}
    size = scalar(conn, "select octet_length(%s::jsonb::text)", (Jsonb(body),))
    conn.execute("update public.job_queue_config set max_params_bytes = %s", (size,))
    create_job(conn, user, "x", body)
    conn.execute("update public.job_queue_config set max_params_bytes = %s", (size - 1,))
    before = digest(conn)
    with raises_sqlstate("54000"):
        create_job(conn, user, "x", body)
    assert digest(conn) == before


@pytest.mark.parametrize(
    ("job_type", "extra", "match"),
    [
        ("", {}, "invalid job_type"),
        (None, {}, "invalid job_type"),
        ("has space", {}, "invalid job_type"),
        ("drop table x;", {}, "invalid job_type"),
        ("x" * 101, {}, "invalid job_type"),
        ("_leading", {}, "invalid job_type"),
        ("ok", {"priority": 101}, "priority"),
        ("ok", {"priority": -101}, "priority"),
        ("ok", {"priority": None}, "priority"),
        ("ok", {"max_retries": -1}, "max_retries"),
        ("ok", {"max_retries": 26}, "max_retries"),
        ("ok", {"ttl": timedelta(0)}, "ttl must be positive"),
        ("ok", {"ttl": timedelta(seconds=-1)}, "ttl must be positive"),
    ],
)
def test_create_job_bad_arguments(
    conn: Conn, job_type: str | None, extra: dict[str, Any], match: str
) -> None:
    user = new_user()
    create_job(conn, user)
    before = digest(conn)
    with raises_sqlstate("22023", match), as_user(conn, user):
        call(conn, "create_job", user_id=user, job_type=job_type, params={}, **extra)
    assert digest(conn) == before


def test_valid_job_types(conn: Conn) -> None:
    user = new_user()
    for job_type in ("a", "sync_youtube", "Email.Send", "v2:resize-image", "x" * 100, "9lives"):
        assert job(conn, create_job(conn, user, job_type))["job_type"] == job_type


def test_error_messages_are_clear(conn: Conn) -> None:
    """The message names the argument and the rule; the SQLSTATE is the documented one."""
    with pytest.raises(psycopg.Error) as info:
        call(conn, "get_user_jobs", new_user(), limit=-5)
    err = info.value
    assert err.sqlstate == "22023"
    assert err.diag.message_primary == "p_limit must be between 1 and 1000"
    assert isinstance(err, psycopg.errors.InvalidParameterValue)
