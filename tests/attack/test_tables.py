"""Direct SELECT/INSERT/UPDATE/DELETE/TRUNCATE on every relation of the migration.

As anon, A and B: job_queue and job_log answer a user with their own rows only
(row-level security) and refuse every write but the owner's cancel; the log
partitions, job_queue_config, job_queue_user_lock, jobq_migrations and the log
sequence refuse everything (42501); DDL that would get around the policies is
refused too. The list of relations comes from the catalogue.
"""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql
from tests.attack._arena import ALLOWED, Arena, sql_attack
from tests.sql.helpers import Conn

KIND = "tables"

# (statement, what a user gets: a SQLSTATE or ALLOWED, i.e. nothing of the victim's)
Statement = tuple[str, str | None]

JOB_QUEUE: list[Statement] = [
    ("select * from public.job_queue", ALLOWED),
    ("select * from public.job_queue where id = %(v_pending)s", ALLOWED),
    ("select * from public.job_queue where user_id = %(v)s", ALLOWED),
    ("select * from public.job_queue where id = %(v_pending)s for update", ALLOWED),
    ("select array_agg(id) filter (where user_id = %(v)s) from public.job_queue", ALLOWED),
    ("insert into public.job_queue (user_id, job_type) values (%(v)s, 'x')", "42501"),
    ("insert into public.job_queue (user_id, job_type) values (%(me)s, 'x')", "42501"),
    ("update public.job_queue set status = 'cancelled' where id = %(v_pending)s", ALLOWED),
    ("update public.job_queue set status = 'cancelled' where user_id = %(v)s", ALLOWED),
    ("update public.job_queue set status = 'cancelled' where id = %(v_processing)s", ALLOWED),
    ("update public.job_queue set priority = 100 where id = %(v_pending)s", "42501"),
    ("update public.job_queue set user_id = %(me)s where id = %(v_pending)s", "42501"),
    ("update public.job_queue set user_id = %(v)s where id = %(me_pending)s", "42501"),
    ("update public.job_queue set result = '{}' where id = %(v_completed)s", "42501"),
    ("delete from public.job_queue where id = %(v_pending)s", "42501"),
    ("delete from public.job_queue", "42501"),
    ("truncate public.job_queue", "42501"),
    ("truncate public.job_queue cascade", "42501"),
]
JOB_LOG: list[Statement] = [
    ("select * from public.job_log", ALLOWED),
    ("select * from public.job_log where job_id = %(v_pending)s", ALLOWED),
    ("select array_agg(job_id) from public.job_log where job_id <> %(me_pending)s", ALLOWED),
    (
        "select * from public.job_log where job_id in"
        " (select id from public.job_queue where user_id = %(v)s)",
        ALLOWED,
    ),
    ("insert into public.job_log (job_id, message) values (%(v_pending)s, 'forged')", "42501"),
    ("insert into public.job_log (job_id, message) values (%(me_pending)s, 'forged')", "42501"),
    ("update public.job_log set message = 'x' where job_id = %(v_pending)s", "42501"),
    ("delete from public.job_log where job_id = %(v_pending)s", "42501"),
    ("truncate public.job_log", "42501"),
]
REFUSED_EVERYTHING = [
    "select * from {t}",
    "insert into {t} default values",
    "update {t} set {c} = {c}",
    "delete from {t}",
    "truncate {t}",
]
SEQUENCE: list[Statement] = [
    ("select nextval('public.job_log_id_seq')", "42501"),
    ("select setval('public.job_log_id_seq', 1)", "42501"),
    ("select * from public.job_log_id_seq", "42501"),
]
# Getting around the policies by DDL: no API role owns anything or may create in public.
DDL: list[Statement] = [
    ("create table public.evil (x int)", "42501"),
    ("create view public.evil as select * from public.job_queue", "42501"),
    (
        "create function public.evil() returns setof public.job_queue language sql"
        " security definer as 'select * from public.job_queue'",
        "42501",
    ),
    ("alter table public.job_queue disable row level security", "42501"),
    ("alter table public.job_queue no force row level security", "42501"),
    ("drop policy job_queue_select_own on public.job_queue", "42501"),
    (
        "create policy evil on public.job_queue for select to authenticated using (true)",
        "42501",
    ),
    ("drop table public.job_log", "42501"),
    ("alter table public.job_log detach partition public.job_log_default", "42501"),
    ("grant select on public.job_queue_config to authenticated", "42501"),
    ("comment on table public.job_queue is 'mine'", "42501"),
]


def relations(conn: Conn) -> dict[str, str]:
    """Every table, partition and sequence of the migration in public: name -> relkind."""
    rows = conn.execute(
        "select c.relname, c.relkind from pg_catalog.pg_class c"
        " where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'S')"
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def plain_column(conn: Conn, table: str) -> str:
    row = conn.execute(
        "select attname from pg_attribute where attrelid = %s::regclass and attnum > 0"
        " and not attisdropped and attidentity = '' and attgenerated = '' order by attnum limit 1",
        (f"public.{table}",),
    ).fetchone()
    assert row is not None
    return str(row[0])


def statements_for(conn: Conn, name: str, kind: str) -> list[tuple[Any, str | None, bool]]:
    """(statement, expected for a user, allowed for anon too) of one relation."""
    if name == "job_queue":
        return [(q, e, False) for q, e in JOB_QUEUE]
    if name == "job_log":
        return [(q, e, False) for q, e in JOB_LOG]
    if kind == "S":
        return [(q, e, False) for q, e in SEQUENCE]
    table, column = sql.Identifier("public", name), sql.Identifier(plain_column(conn, name))
    return [(sql.SQL(q).format(t=table, c=column), "42501", False) for q in REFUSED_EVERYTHING]


def test_every_relation_is_attacked(conn: Conn) -> None:
    rels = relations(conn)
    expected = {
        "job_queue",
        "job_log",
        "job_log_default",
        "job_queue_config",
        "job_queue_user_lock",
        "jobq_migrations",
        "job_log_id_seq",
    }
    assert expected <= set(rels)
    partitions = {
        r[0]
        for r in conn.execute(
            "select inhrelid::regclass::text from pg_inherits"
            " where inhparent = 'public.job_log'::regclass"
        )
    }
    assert set(rels) == expected | partitions, "a relation was added: attack it here"
    assert len(partitions) >= 2  # the default one and the monthly ones


PAIRS = [("anon", "B"), ("A", "B"), ("B", "A")]


@pytest.mark.parametrize(("who", "victim"), PAIRS, ids=[f"{w}-vs-{v}" for w, v in PAIRS])
def test_direct_access_to_every_relation(conn: Conn, arena: Arena, who: str, victim: str) -> None:
    target = arena.party(victim)
    me = target if who == "anon" else arena.party(who)
    params = target.params("v") | me.params("me")
    for name, relkind in sorted(relations(conn).items()):
        for query, user_expect, _ in statements_for(conn, name, relkind):
            expect = "42501" if who == "anon" else user_expect
            text = query if isinstance(query, str) else query.as_string(conn)
            sql_attack(
                conn,
                arena,
                kind=KIND,
                who=who,
                victim=target,
                target=f"{name}: {text}",
                query=query,
                params=params if isinstance(query, str) else None,
                expect=expect,
            )
    for query, code in DDL:
        sql_attack(
            conn,
            arena,
            kind=KIND,
            who=who,
            victim=target,
            target=f"ddl: {query}",
            query=query,
            expect=code,
        )
