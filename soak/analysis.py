"""The figures of a soak run, from its database and what the driver saw.

Sources of truth:

- ``job_queue``: each job's final state, attempts, holder and result;
- ``soak_transitions`` (an AFTER UPDATE trigger in the soak's database): every
  status change with the holder and error code, so "completed twice" is
  counted from what happened, not assumed from the state machine;
- ``soak_executions`` (written by the handlers): every run of a handler, and
  whether it finished its work;
- the driver's record: the jobs it created (acknowledged ids), the faults, the
  cancellations it made, and the stuck jobs its sampler saw.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from soak.driver import Fault, RunRecord

FINAL_STATES = ("completed", "cancelled", "failed", "expired")
PRE_FAULT_WINDOW = 5.0  # seconds of completions that give the pre-fault rate
RATE_WINDOW = 1.0  # sliding window for "throughput back to half"
RECOVERY_HORIZON = 180.0


@dataclass
class FaultFigures:
    n: int
    kind: str
    at: float  # seconds since the start
    detail: str
    pre_rate: float | None  # completions/s in the 5 s before
    first_completion: float | None  # s from the fault to the next completion
    half_rate: float | None  # s from the fault until a 1 s window reached half pre_rate
    held: int = 0  # kill9: jobs the victim held
    held_completed: int = 0
    held_other: dict[str, int] = field(default_factory=dict)  # final states of the others
    held_rescued_in: float | None = None  # kill9: s until the last held job completed again


@dataclass
class Figures:
    created: int
    not_created: int
    in_table: int
    missing: list[str]
    unexpected_rows: int
    statuses: dict[str, int]
    unfinished: dict[str, int]
    lost: int
    completed: int
    cancelled: int
    failed_final: int
    expired: int
    completed_twice: int
    transitions_from_terminal: int
    wrong_result: int
    executions: int
    executions_finished: int
    runs_per_job: dict[str, int]
    reexecutions_by_cause: dict[str, int]
    double_success_jobs: int
    double_success_extra: int
    double_success_by_cause: dict[str, int]
    double_success_examples: list[str]
    unexplained_reexecutions: int
    unexplained_examples: list[str]
    kill9s: int
    kill9_interrupted_jobs: int
    stuck_dead_holder: int
    slow_rescue_live_holder: int
    stuck_at_end: int
    max_heartbeat_age: float
    stuck_rescues: int
    cancels_confirmed: int
    cancels_too_late: int
    cancelled_unexplained: int
    foreign_cancel_attempts: int
    foreign_cancel_leaks: int
    failed_final_by_code: dict[str, int]
    doomed_not_failed: int
    flaky_completed_first_try: int
    create_retries: int
    wall_seconds: float
    processing_seconds: float
    throughput: float
    peak_10s_rate: float
    faults: list[FaultFigures] = field(default_factory=list)
    fault_counts: dict[str, int] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.completed_twice == 0
            and self.stuck_dead_holder == 0
            and self.stuck_at_end == 0
            and self.wrong_result == 0
            and self.transitions_from_terminal == 0
            and self.unexpected_rows == 0
            and self.foreign_cancel_leaks == 0
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out


def analyse(rec: RunRecord, url: str) -> Figures:
    with psycopg.connect(url, autocommit=True) as c:
        return _analyse(rec, c)


def _analyse(rec: RunRecord, c: psycopg.Connection[Any]) -> Figures:
    created = {jid for ids in rec.created.values() for jid in ids}
    rows = c.execute(
        """SELECT id::text, status, next_retry_at IS NOT NULL, attempts, worker_id,
                  result->>'exec_id', extract(epoch FROM completed_at)::float8,
                  extract(epoch FROM created_at)::float8, error_code,
                  coalesce((params->>'doomed')::boolean, false),
                  coalesce((params->>'flaky')::boolean, false)
             FROM job_queue"""
    ).fetchall()
    off = rec.clock_offset
    by_id = {r[0]: r for r in rows}
    missing = sorted(created - by_id.keys())
    unexpected = len(by_id.keys() - created)

    statuses: Counter[str] = Counter()
    unfinished: Counter[str] = Counter()
    failed_final_by_code: Counter[str] = Counter()
    completions: list[float] = []
    first_created = min((r[7] - off for r in rows), default=rec.started)
    doomed_not_failed = flaky_first_try = 0
    for jid, status, retrying, attempts, _w, _e, done_at, _c, code, doomed, flaky in rows:
        if jid not in created:
            continue
        key = "failed (awaiting retry)" if status == "failed" and retrying else status
        statuses[key] += 1
        if status in ("pending", "processing") or (status == "failed" and retrying):
            unfinished[key] += 1
        if status == "failed" and not retrying:
            failed_final_by_code[code or "?"] += 1
        if status == "completed":
            completions.append(done_at - off)
            if flaky and attempts == 1:
                flaky_first_try += 1
                rec.anomalies.append(f"flaky job {jid} completed on its first attempt")
        if doomed and status not in ("failed", "cancelled"):
            doomed_not_failed += 1
            rec.anomalies.append(
                f"doomed job {jid} ended {status} (attempts {attempts}, code {code})"
            )
    completions.sort()
    lost = len(missing) + sum(unfinished.values())

    completed_twice = _count(
        c,
        "SELECT count(*) FROM (SELECT job_id FROM soak_transitions WHERE to_status = 'completed'"
        " GROUP BY job_id HAVING count(*) > 1) t",
    )
    from_terminal = _count(
        c,
        "SELECT count(*) FROM soak_transitions"
        " WHERE from_status IN ('completed', 'cancelled', 'expired')",
    )
    stuck_rescues = _count(
        c,
        "SELECT count(*) FROM soak_transitions WHERE to_status = 'failed' AND error_code = 'STUCK'",
    )
    wrong_result = _count(
        c,
        """SELECT count(*) FROM job_queue j
             LEFT JOIN soak_executions e ON e.exec_id = (j.result->>'exec_id')::uuid
            WHERE j.status = 'completed'
              AND (e.exec_id IS NULL OR e.finished_at IS NULL OR e.job_id <> j.id
                   OR e.worker_id IS DISTINCT FROM j.worker_id OR e.attempt <> j.attempts)""",
    )
    executions, finished = c.execute(
        "SELECT count(*), count(finished_at) FROM soak_executions"
    ).fetchone() or (0, 0)
    runs_hist = Counter(
        {
            f"{runs} run{'s' if runs != 1 else ''}": jobs
            for runs, jobs in c.execute(
                "SELECT runs, count(*) FROM (SELECT job_id, count(*) runs FROM soak_executions"
                " GROUP BY job_id) r GROUP BY runs ORDER BY runs"
            ).fetchall()
        }
    )
    reexec = _reexecution_causes(c, rec)
    double = _double_successes(c, rec)

    # stuck: seen processing past stuck timeout + margin with its worker gone
    stuck_dead = sum(1 for s in rec.stuck.values() if s.holder_dead)
    slow_live = sum(1 for s in rec.stuck.values() if not s.holder_dead)
    stuck_at_end = sum(
        1
        for r in rows
        if r[0] in created and r[1] == "processing" and r[4] not in _live_at_end(rec)
    )

    confirmed = {j for j, o in rec.cancels.items() if o == "cancelled"}
    too_late = sum(1 for o in rec.cancels.values() if o.startswith("too late"))
    cancelled_ids = {r[0] for r in rows if r[1] == "cancelled"}
    unexplained = len(cancelled_ids - confirmed)

    last_final = max(
        (r[6] - off for r in rows if r[0] in created and r[6] is not None), default=first_created
    )
    processing_seconds = max(1e-9, last_final - first_created)
    faults = [_fault_figures(f, rec, completions, by_id, off) for f in rec.faults]
    return Figures(
        created=len(created),
        not_created=rec.cfg.jobs - len(created),
        in_table=len(created) - len(missing),
        missing=missing[:20],
        unexpected_rows=unexpected,
        statuses=dict(statuses),
        unfinished=dict(unfinished),
        lost=lost,
        completed=statuses["completed"],
        cancelled=statuses["cancelled"],
        failed_final=statuses["failed"],
        expired=statuses["expired"],
        completed_twice=completed_twice,
        transitions_from_terminal=from_terminal,
        wrong_result=wrong_result,
        executions=int(executions),
        executions_finished=int(finished),
        runs_per_job=dict(runs_hist),
        reexecutions_by_cause=dict(reexec),
        double_success_jobs=double[0],
        double_success_extra=double[1],
        double_success_by_cause=dict(double[2]),
        double_success_examples=double[3],
        unexplained_reexecutions=sum(n for k, n in reexec.items() if UNEXPLAINED in k),
        unexplained_examples=_unexplained_examples(c, rec),
        kill9s=sum(1 for f in rec.faults if f.kind == "kill9" and f.data.get("victim")),
        kill9_interrupted_jobs=sum(len(f.data.get("held", [])) for f in rec.faults),
        stuck_dead_holder=stuck_dead,
        slow_rescue_live_holder=slow_live,
        stuck_at_end=stuck_at_end,
        max_heartbeat_age=rec.max_heartbeat_age,
        stuck_rescues=stuck_rescues,
        cancels_confirmed=len(confirmed),
        cancels_too_late=too_late,
        cancelled_unexplained=unexplained,
        foreign_cancel_attempts=rec.foreign_cancel_attempts,
        foreign_cancel_leaks=rec.foreign_cancel_leaks,
        failed_final_by_code=dict(failed_final_by_code),
        doomed_not_failed=doomed_not_failed,
        flaky_completed_first_try=flaky_first_try,
        create_retries=rec.create_retries,
        wall_seconds=rec.ended - rec.started,
        processing_seconds=processing_seconds,
        throughput=len(completions) / processing_seconds,
        peak_10s_rate=_peak_rate(completions, 10.0),
        faults=faults,
        fault_counts=dict(Counter(f.kind for f in rec.faults)),
        anomalies=list(rec.anomalies),
    )


def _live_at_end(rec: RunRecord) -> set[str]:
    # Workers are stopped after the last snapshot: every worker not killed was live.
    return set(rec.worker_pids) - rec.worker_ids_killed


def _count(c: psycopg.Connection[Any], query: str) -> int:
    row = c.execute(query).fetchone()
    return int(row[0]) if row else 0


UNEXPLAINED = "unexplained"
CAUSE_KILL9 = "its worker was killed (kill -9)"


def _fault_near(rec: RunRecord, at: float) -> str | None:
    """The restart or backend termination whose recovery window (until stuck timeout
    + margin after it ended) holds ``at`` (local clock), if any."""
    horizon = rec.cfg.stuck_timeout + rec.cfg.stuck_margin
    for f in reversed(rec.faults):
        if f.kind in ("restart", "terminate") and f.at <= at <= f.ended + horizon:
            return f.kind
    return None


def _stuck_cause(rec: RunRecord, at: float | None, worker_id: str) -> str:
    killed_at = rec.worker_killed_at.get(worker_id)
    if killed_at is not None and (at is None or at >= killed_at):
        return CAUSE_KILL9
    near = _fault_near(rec, at) if at is not None else None
    if near == "restart":
        return "failed STUCK after a PostgreSQL restart, its worker alive"
    if near == "terminate":
        return "failed STUCK after pg_terminate_backend, its worker alive"
    return f"failed STUCK while its worker lived ({UNEXPLAINED})"


RunEnds = dict[tuple[str, str], list[tuple[int, str, float]]]


def _run_ends(c: psycopg.Connection[Any], rec: RunRecord, job_ids: list[str]) -> RunEnds:
    """Every transition out of processing of these jobs, by (job, worker):
    (attempts, "to_status:error_code", when on the local clock)."""
    ends: RunEnds = {}
    for job_id, worker_id, attempts, to_status, code, at in c.execute(
        """SELECT t.job_id::text, t.worker_id, t.attempts, t.to_status, t.error_code,
                  extract(epoch FROM t.at)::float8
             FROM soak_transitions t
            WHERE t.from_status = 'processing' AND t.job_id = ANY (%s::uuid[])""",
        (job_ids,),
    ).fetchall():
        ends.setdefault((job_id, worker_id or ""), []).append(
            (attempts, f"{to_status}:{code}", at - rec.clock_offset)
        )
    return ends


def _why_run_ended(rec: RunRecord, ends: RunEnds, job_id: str, worker_id: str, attempt: int) -> str:
    """Why a run (job, worker, attempt) did not complete its job."""
    # release_jobs gives the attempt back: its transition carries attempt - 1
    matches = [
        (what, at)
        for a, what, at in ends.get((job_id, worker_id), [])
        if a == attempt or (a == attempt - 1 and what == "failed:RELEASED")
    ]
    if not matches:
        if worker_id in rec.worker_ids_killed:
            return CAUSE_KILL9
        return f"no transition out of processing by its worker ({UNEXPLAINED})"
    what, at = matches[0]
    if what == "failed:STUCK":
        return _stuck_cause(rec, at, worker_id)
    return _explain(what)


def _reexecution_causes(c: psycopg.Connection[Any], rec: RunRecord) -> Counter[str]:
    """Why each execution that was not a job's last one ended without completing it."""
    rows = c.execute(
        """WITH multi AS (SELECT job_id FROM soak_executions GROUP BY job_id HAVING count(*) > 1)
           SELECT e.job_id::text, e.worker_id, e.attempt,
                  row_number() OVER w = count(*) OVER (PARTITION BY e.job_id)
             FROM soak_executions e JOIN multi USING (job_id)
           WINDOW w AS (PARTITION BY e.job_id ORDER BY e.started_at, e.exec_id)"""
    ).fetchall()
    if not rows:
        return Counter()
    ends = _run_ends(c, rec, sorted({r[0] for r in rows}))
    causes: Counter[str] = Counter()
    for job_id, worker_id, attempt, is_last in rows:
        if not is_last:
            causes[_why_run_ended(rec, ends, job_id, worker_id, attempt)] += 1
    return causes


def _unexplained_examples(c: psycopg.Connection[Any], rec: RunRecord, limit: int = 10) -> list[str]:
    """What is known about runs no fault explains: the job's transitions and what
    its worker went through, in seconds since the start of the soak."""
    rows = c.execute(
        """WITH multi AS (SELECT job_id FROM soak_executions GROUP BY job_id HAVING count(*) > 1)
           SELECT e.job_id::text, e.worker_id, e.attempt,
                  extract(epoch FROM e.started_at)::float8,
                  extract(epoch FROM e.finished_at)::float8,
                  row_number() OVER w = count(*) OVER (PARTITION BY e.job_id)
             FROM soak_executions e JOIN multi USING (job_id)
           WINDOW w AS (PARTITION BY e.job_id ORDER BY e.started_at, e.exec_id)"""
    ).fetchall()
    if not rows:
        return []
    ends = _run_ends(c, rec, sorted({r[0] for r in rows}))
    t0, off = rec.started, rec.clock_offset
    out: list[str] = []
    for job_id, worker_id, attempt, started, finished, is_last in rows:
        if is_last or UNEXPLAINED not in _why_run_ended(rec, ends, job_id, worker_id, attempt):
            continue
        path = c.execute(
            """SELECT string_agg(from_status || '>' || to_status || coalesce(':' || error_code, '')
                      || '@' || coalesce(worker_id, '-') || ' '
                      || round((extract(epoch FROM at) - %s)::numeric, 2), ', ' ORDER BY id)
                 FROM soak_transitions WHERE job_id = %s""",
            (t0 + off, job_id),
        ).fetchone()
        born, sigterm, exited = rec.worker_times.get(worker_id, (0.0, None, None))

        def rel(x: float | None, shift: float = 0.0) -> str:
            return "-" if x is None else f"{x - shift - t0:.2f}"

        out.append(
            f"job {job_id} attempt {attempt} on {worker_id} (started {rel(born)},"
            f" SIGTERM {rel(sigterm)}, exited {rel(exited)}): ran {rel(started, off)}"
            f" to {rel(finished, off)}; transitions: {path[0] if path else '?'}"
        )
        if len(out) >= limit:
            break
    return out


def _explain(what: str) -> str:
    return {
        "failed:RuntimeError": "deliberate failure (flaky job, first attempt)",
        "failed:RELEASED": "released on worker shutdown",
        "cancelled:CANCELLED": "cancelled while running",
    }.get(what, what)


DOUBLE_CAUSES = {
    CAUSE_KILL9: "worker killed (kill -9) after the handler finished",
    "released on worker shutdown": "handler finished after the SIGTERM grace; job released",
}


def _double_successes(
    c: psycopg.Connection[Any], rec: RunRecord
) -> tuple[int, int, Counter[str], list[str]]:
    """Completed jobs whose handler finished its work more than once (the
    at-least-once window), and which fault opened it."""
    rows = c.execute(
        """SELECT j.id::text, j.result->>'exec_id',
                  array_agg(e.exec_id::text ORDER BY e.started_at),
                  array_agg(e.worker_id ORDER BY e.started_at),
                  array_agg(e.attempt ORDER BY e.started_at)
             FROM job_queue j JOIN soak_executions e ON e.job_id = j.id
            WHERE j.status = 'completed' AND e.finished_at IS NOT NULL
            GROUP BY j.id, j.result HAVING count(*) > 1"""
    ).fetchall()
    causes: Counter[str] = Counter()
    examples: list[str] = []
    extra = 0
    if not rows:
        return 0, 0, causes, examples
    ids = [r[0] for r in rows]
    ends = _run_ends(c, rec, ids)
    paths = dict(
        c.execute(
            """SELECT job_id::text, string_agg(from_status || '>' || to_status
                      || coalesce(':' || error_code, '') || '@' || coalesce(worker_id, '-'),
                      ' ' ORDER BY id)
                 FROM soak_transitions WHERE job_id = ANY (%s::uuid[]) GROUP BY job_id""",
            (ids,),
        ).fetchall()
    )
    for job_id, result_exec, execs, workers, attempts in rows:
        for exec_id, worker_id, attempt in zip(execs, workers, attempts, strict=True):
            if exec_id == result_exec:
                continue
            extra += 1
            why = _why_run_ended(rec, ends, job_id, worker_id, attempt)
            cause = DOUBLE_CAUSES.get(
                why, why.replace("failed STUCK", "completion not written before STUCK")
            )
            causes[cause] += 1
            if why not in DOUBLE_CAUSES and len(examples) < 10:
                examples.append(
                    f"job {job_id}: attempt {attempt} on {worker_id} finished but did not"
                    f" complete it ({why}); transitions: {paths.get(job_id, '?')}"
                )
    return len(rows), extra, causes, examples


def _peak_rate(times: list[float], window: float) -> float:
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best / window


def _count_between(times: list[float], lo: float, hi: float) -> int:
    return bisect.bisect_right(times, hi) - bisect.bisect_right(times, lo)


def _fault_figures(
    f: Fault, rec: RunRecord, completions: list[float], by_id: dict[str, Any], off: float
) -> FaultFigures:
    prev_end = max(
        [g.ended for g in rec.faults if g.n < f.n] + [rec.started],
    )
    lo = max(f.at - PRE_FAULT_WINDOW, prev_end)
    span = f.at - lo
    pre_count = _count_between(completions, lo, f.at)
    pre_rate = pre_count / span if span >= 1.0 and pre_count >= 5 else None
    # a restart: recovery starts once the server is back; completions committed
    # while it was shutting down do not count
    start = f.ended if f.kind == "restart" else f.at
    i = bisect.bisect_right(completions, start)
    first = completions[i] - f.at if i < len(completions) else None
    half = None
    if pre_rate is not None:
        need = 0.5 * pre_rate * RATE_WINDOW
        t = start + 0.1
        while t <= f.at + RECOVERY_HORIZON and t <= (completions[-1] if completions else t):
            if _count_between(completions, t - RATE_WINDOW, t) >= need:
                half = t - f.at
                break
            t += 0.1
    ff = FaultFigures(f.n, f.kind, f.at - rec.started, f.detail, pre_rate, first, half)
    if f.kind == "kill9":
        held = f.data.get("held", [])
        ff.held = len(held)
        done = [by_id[j][6] - off for j in held if j in by_id and by_id[j][1] == "completed"]
        ff.held_completed = len(done)
        ff.held_other = dict(
            Counter(by_id[j][1] if j in by_id else "missing" for j in held)
            - Counter({"completed": len(done)})
        )
        ff.held_rescued_in = (max(done) - f.at) if done else None
    return ff
