"""Timing one named query the way jobq runs it: as an identity, one transaction a call."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg

from bench.common import PlanSummary, Timing, auto_explain, summarize_plans
from jobq import db, queries

Params = Callable[[int], Mapping[str, Any]]


def op_params(op: Any) -> Mapping[str, Any]:
    """The parameters jobq's client would send for this operation (jobq._ops), so the
    bench follows the named queries as they change."""
    params: Mapping[str, Any] = next(op).params
    return params


class _Rollback(Exception):
    pass


@dataclass
class Measured:
    timing: Timing
    plan: PlanSummary
    last_rows: list[Any]


def run_once(
    conn: psycopg.Connection[Any],
    query: Any,
    params: Mapping[str, Any],
    *,
    role: str | None,
    user: UUID | None,
    rollback: bool,
    with_commit: bool,
) -> tuple[float, list[Any]]:
    """One call in its own transaction; seconds for the statement (and its COMMIT)."""
    rows: list[Any] = []
    dt = 0.0
    try:
        tx = conn.transaction()
        with tx:
            if role is not None:
                db.act_as(conn, role, user)
            t0 = time.perf_counter()
            rows = conn.execute(query, params).fetchall()
            dt = time.perf_counter() - t0
            if rollback:
                raise _Rollback
            t1 = time.perf_counter()
        if with_commit:
            dt += time.perf_counter() - t1
    except _Rollback:
        pass
    return dt, rows


def measure(
    url: str,
    name: str,
    params: Params,
    *,
    runs: int,
    role: str | None = "service_role",
    user: UUID | None = None,
    rollback: bool = False,
    with_commit: bool = False,
    warmup: int = 3,
    check: Callable[[list[Any]], None] | None = None,
) -> Measured:
    """p50/p95 of ``runs`` calls of named query ``name`` (or raw SQL when it has a space),
    then one more call under auto_explain for the plan it used."""
    query = queries.get(name) if " " not in name else name.encode()
    samples: list[float] = []
    rows: list[Any] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(warmup + runs):
            dt, rows = run_once(
                conn,
                query,
                params(i),
                role=role,
                user=user,
                rollback=rollback,
                with_commit=with_commit,
            )
            if check is not None:
                check(rows)
            if i >= warmup:
                samples.append(dt)
        with auto_explain(conn) as plans:
            run_once(
                conn,
                query,
                params(warmup + runs),
                role=role,
                user=user,
                rollback=rollback,
                with_commit=False,
            )
    return Measured(Timing(samples), summarize_plans(plans), rows)
