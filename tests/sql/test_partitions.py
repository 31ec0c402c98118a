"""Monthly job_log partitions: create_job_log_partitions / drop_old_job_log_partitions."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from .helpers import Conn, expect_error, scalar, sqlstate, wait_until_blocked

SPEC_LOG_INDEXES = {
    "idx_job_log_job_time",
    "idx_job_log_errors",
    "idx_job_log_message_fts",
    "idx_job_log_metadata_gin",
}


@pytest.fixture
def admin(conn: Conn) -> Conn:
    # Partition names and bounds are calendar months in UTC, as on a Supabase server.
    conn.execute("set timezone = 'UTC'")
    return conn


def month_start(now: datetime, ahead: int) -> datetime:
    index = now.year * 12 + (now.month - 1) + ahead
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def part_name(start: datetime) -> str:
    return f"job_log_{start:%Y_%m}"


def db_now(conn: Conn) -> datetime:
    value = scalar(conn, "select now()")
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


def partitions(conn: Conn) -> dict[str, list[str] | None]:
    """Partitions of job_log by name, with their reloptions."""
    rows = conn.execute(
        "select c.relname, c.reloptions from pg_catalog.pg_inherits i"
        " join pg_catalog.pg_class c on c.oid = i.inhrelid"
        " where i.inhparent = 'public.job_log'::regclass"
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def create(conn: Conn, months_ahead: int) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "select * from public.create_job_log_partitions(%s)", (months_ahead,)
        ).fetchall()
    ]


def insert_log(conn: Conn, created_at: datetime, message: str = "line") -> tuple[int, str]:
    """Insert a log line as the admin; returns (id, partition it landed in)."""
    row = conn.execute(
        "insert into public.job_log (job_id, level, message, metadata, created_at)"
        " values (%s, 'info', %s, %s::jsonb, %s) returning id, tableoid::regclass::text",
        (uuid.uuid4(), message, '{"k": "v"}', created_at),
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def routed_to(conn: Conn, created_at: datetime) -> str:
    """The partition a log line with this created_at lands in (the row is not kept)."""
    with conn.transaction():
        _, part = insert_log(conn, created_at)
        raise psycopg.Rollback
    return part


def assert_covers_month(conn: Conn, start: datetime) -> None:
    """Both ends of the UTC month land in its partition."""
    end = month_start(start, 1)
    name = part_name(start)
    assert routed_to(conn, start) == name
    assert routed_to(conn, end - timedelta(microseconds=1)) == name


# ---------------------------------------------------------------------------
# create_job_log_partitions
# ---------------------------------------------------------------------------
def test_migration_created_four_months_and_a_default(admin: Conn) -> None:
    now = db_now(admin)
    parts = partitions(admin)
    assert "job_log_default" in parts
    monthly = sorted(p for p in parts if p != "job_log_default")
    # The template is migrated once per test session: normally this month, but
    # a session that crosses midnight at the end of a month migrated last month.
    for first in (month_start(now, 0), month_start(now, -1)):
        if monthly == [part_name(month_start(first, k)) for k in range(4)]:
            break
    else:
        pytest.fail(f"expected this (or last) month and the 3 after it, got {monthly}")
    for name in monthly:
        year, month = int(name[8:12]), int(name[13:15])
        assert_covers_month(admin, datetime(year, month, 1, tzinfo=UTC))


def test_creates_this_month_through_n_months_ahead(admin: Conn) -> None:
    now = db_now(admin)
    before = set(partitions(admin))
    expected = [part_name(month_start(now, k)) for k in range(7)]

    created = create(admin, 6)

    assert created == [name for name in expected if name not in before]
    assert created, "the migration creates 3 months ahead, so 6 ahead must add some"
    after = set(partitions(admin))
    assert after == before | set(expected)
    for k in range(7):
        assert_covers_month(admin, month_start(now, k))
    # nothing beyond +6: the month after routes to the default partition
    assert routed_to(admin, month_start(now, 7)) == "job_log_default"


def test_is_idempotent(admin: Conn) -> None:
    create(admin, 6)
    before = partitions(admin)
    assert create(admin, 6) == []
    assert create(admin, 2) == []
    assert create(admin, 0) == []
    assert partitions(admin) == before


def test_zero_months_ahead_creates_only_this_month(admin: Conn) -> None:
    now = db_now(admin)
    this_month = part_name(month_start(now, 0))
    admin.execute(f"drop table public.{this_month}")
    next_month = part_name(month_start(now, 1))
    assert this_month not in partitions(admin)

    assert create(admin, 0) == [this_month]
    assert this_month in partitions(admin)
    assert next_month in partitions(admin)  # untouched
    assert_covers_month(admin, month_start(now, 0))


def test_new_partitions_get_every_job_log_index(admin: Conn) -> None:
    now = db_now(admin)
    create(admin, 6)
    name = part_name(month_start(now, 6))
    parents = {
        r[0]
        for r in admin.execute(
            "select coalesce(pg_partition_root(x.indexrelid), x.indexrelid)::regclass::text"
            " from pg_catalog.pg_index x where x.indrelid = %s::regclass",
            (f"public.{name}",),
        ).fetchall()
    }
    assert parents == {"job_log_pkey"} | SPEC_LOG_INDEXES


def test_rows_in_the_default_partition_move_into_the_new_partition(admin: Conn) -> None:
    now = db_now(admin)
    # +5 and +6 have no partition yet (the migration made 3 ahead); +8 won't get one.
    m5, m6, m8 = (month_start(now, k) for k in (5, 6, 8))
    strays = []
    for ts in (m5, m5 + timedelta(days=3), m6 + timedelta(days=27), m8):
        log_id, part = insert_log(admin, ts, f"stray {ts.isoformat()}")
        assert part == "job_log_default"
        strays.append(log_id)
    rows_before = admin.execute(
        "select id, job_id, level, message, metadata, created_at from public.job_log"
        " where id = any(%s) order by id",
        (strays,),
    ).fetchall()

    created = create(admin, 6)

    assert part_name(m5) in created
    assert part_name(m6) in created
    located = dict(
        admin.execute(
            "select id, tableoid::regclass::text from public.job_log where id = any(%s)",
            (strays,),
        ).fetchall()
    )
    assert located == {
        strays[0]: part_name(m5),
        strays[1]: part_name(m5),
        strays[2]: part_name(m6),
        strays[3]: "job_log_default",  # no partition for +8: left where it is
    }
    rows_after = admin.execute(
        "select id, job_id, level, message, metadata, created_at from public.job_log"
        " where id = any(%s) order by id",
        (strays,),
    ).fetchall()
    assert rows_after == rows_before  # same ids (OVERRIDING SYSTEM VALUE) and columns
    # the identity sequence is not disturbed: new rows get fresh ids
    new_id, _ = insert_log(admin, m5)
    assert new_id > max(strays)
    # no temp table is left behind in this session
    assert scalar(admin, "select to_regclass('pg_temp.jobq_strays') is null")


def test_moving_rows_happens_in_the_callers_transaction(admin: Conn) -> None:
    now = db_now(admin)
    m5 = month_start(now, 5)
    log_id, _ = insert_log(admin, m5)
    with admin.transaction():
        assert part_name(m5) in create(admin, 6)
        raise psycopg.Rollback
    # rolled back: no partition, the row is back in the default partition
    assert part_name(m5) not in partitions(admin)
    where = scalar(
        admin, "select tableoid::regclass::text from public.job_log where id = %s", (log_id,)
    )
    assert where == "job_log_default"
    # and it works after a rollback in the same session
    assert part_name(m5) in create(admin, 6)


def test_toast_tuple_target_is_set_on_every_partition(admin: Conn) -> None:
    now = db_now(admin)
    insert_log(admin, month_start(now, 5))  # a stray: exercises the move path too
    create(admin, 8)
    parts = partitions(admin)
    assert len(parts) >= 10
    missing = {
        name: opts for name, opts in parts.items() if "toast_tuple_target=8160" not in (opts or [])
    }
    assert not missing, f"partitions without toast_tuple_target=8160: {missing}"


@pytest.mark.parametrize("months", [-1, 37, None])
def test_create_rejects_bad_months(admin: Conn, months: Any) -> None:
    before = partitions(admin)
    with sqlstate("22023"):
        admin.execute("select public.create_job_log_partitions(%s::integer)", (months,))
    assert partitions(admin) == before


# ---------------------------------------------------------------------------
# drop_old_job_log_partitions
# ---------------------------------------------------------------------------
def make_partition(conn: Conn, name: str, start: str, end: str) -> None:
    conn.execute(
        f"create table public.{name} partition of public.job_log"
        f" for values from ('{start}') to ('{end}')"
    )


def drop_older_than(conn: Conn, cutoff: str) -> list[str]:
    """drop_old_job_log_partitions with the interval that puts the cutoff at ``cutoff``."""
    return [
        r[0]
        for r in conn.execute(
            "select * from public.drop_old_job_log_partitions(now() - %s::timestamptz)",
            (cutoff,),
        ).fetchall()
    ]


def test_drop_only_partitions_wholly_older_than_the_cutoff(admin: Conn) -> None:
    make_partition(admin, "job_log_2020_01", "2020-01-01 00:00+00", "2020-02-01 00:00+00")
    make_partition(admin, "job_log_2020_02", "2020-02-01 00:00+00", "2020-03-01 00:00+00")
    # not a monthly partition by name: never dropped by the function
    make_partition(admin, "job_log_archive", "2019-01-01 00:00+00", "2019-02-01 00:00+00")
    jan_id, part = insert_log(admin, datetime(2020, 1, 15, tzinfo=UTC))
    assert part == "job_log_2020_01"
    feb_id, part = insert_log(admin, datetime(2020, 2, 15, tzinfo=UTC))
    assert part == "job_log_2020_02"
    current = set(partitions(admin)) - {"job_log_2020_01", "job_log_2020_02"}

    # cutoff mid-February: January is wholly older, February is not
    assert drop_older_than(admin, "2020-02-15 00:00+00") == ["job_log_2020_01"]
    parts = set(partitions(admin))
    assert "job_log_2020_01" not in parts
    assert parts == current | {"job_log_2020_02"}
    assert scalar(admin, "select count(*) from public.job_log where id = %s", (jan_id,)) == 0
    assert scalar(admin, "select count(*) from public.job_log where id = %s", (feb_id,)) == 1

    # cutoff just past February's end: February goes, nothing else
    assert drop_older_than(admin, "2020-03-01 00:00:01+00") == ["job_log_2020_02"]
    assert set(partitions(admin)) == current
    assert "job_log_archive" in current
    assert "job_log_default" in current


def test_drop_with_the_default_keeps_the_recent_partitions(admin: Conn) -> None:
    before = set(partitions(admin))
    assert [r[0] for r in admin.execute("select * from drop_old_job_log_partitions()")] == []
    assert set(partitions(admin)) == before


def test_drop_never_touches_this_or_future_months(admin: Conn) -> None:
    now = db_now(admin)
    last = month_start(now, -1)
    create(admin, 3)
    make_partition(admin, part_name(last), last.isoformat(), month_start(now, 0).isoformat())
    keep = set(partitions(admin)) - {part_name(last)}

    # a zero interval puts the cutoff at now(): only last month is wholly older
    assert [
        r[0] for r in admin.execute("select * from drop_old_job_log_partitions(interval '0')")
    ] == [part_name(last)]
    assert set(partitions(admin)) == keep


@pytest.mark.parametrize("older_than", ["-1 day", None])
def test_drop_rejects_bad_intervals(admin: Conn, older_than: str | None) -> None:
    before = partitions(admin)
    expect_error(
        admin,
        "22023",
        "select public.drop_old_job_log_partitions(%s::interval)",
        (older_than,),
    )
    assert partitions(admin) == before


# ---------------------------------------------------------------------------
# The caller's time zone
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/Los_Angeles"])
def test_partitions_are_utc_months_whatever_the_session_time_zone(admin: Conn, zone: str) -> None:
    now = db_now(admin)
    admin.execute("select set_config('timezone', %s, false)", (zone,))
    create(admin, 6)
    for k in range(7):
        assert_covers_month(admin, month_start(now, k))


# ---------------------------------------------------------------------------
# Two maintenance runs at once (pg_cron and an in-process scheduler, say)
# ---------------------------------------------------------------------------
def test_concurrent_calls_do_not_collide(admin: Conn, make_conn: Any) -> None:
    first: Conn = make_conn()
    second: Conn = make_conn()
    for c in (first, second):
        c.execute("set timezone = 'UTC'")
    second_pid = scalar(second, "select pg_backend_pid()")
    outcome: dict[str, Any] = {}

    def run_second() -> None:
        try:
            outcome["created"] = create(second, 6)
        except psycopg.Error as e:
            outcome["error"] = e

    with first.transaction():
        assert create(first, 6), "the first call must create something"
        thread = threading.Thread(target=run_second)
        thread.start()
        wait_until_blocked(admin, second_pid)
    thread.join(timeout=60)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["created"] == []
