"""Any sequence of operations on the SQL functions keeps the job state machine's invariants.

A hypothesis ``RuleBasedStateMachine`` drives the real functions on a real
database: users and the service create jobs, two workers claim, report
progress, complete (one by one and in batches), fail (retryable or not),
release; users and the service cancel (and a stranger tries to); maintenance
retries failed jobs (their backoff moved into the past), expires pending jobs
(expires_at moved) and fails stuck ones (heartbeat moved); jobs are retried by
hand. Every call's outcome is predicted from the state before it, and after
every step the invariants hold:

- exactly one of the six statuses; completed, cancelled and expired never change;
- 0 <= attempts <= max_retries + 1; progress within 0..100 (100 when completed);
- a pending job has no holder, a processing one has one (and a heartbeat);
- a user's active jobs (pending + processing + failed awaiting retry) stay within
  the limit, for users whose jobs are all created by themselves;
- a completed job's result is the one written by the call that completed it, by
  its holder (or the admin override);
- a refused call raised one of the documented SQLSTATEs and changed nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg.types.json import Jsonb

from ._support import (
    DOCUMENTED,
    EXAMPLES,
    Conn,
    has_nul,
    json_values,
    profile,
    run_as,
    snapshot,
)

LIMIT = 3
LIMITED = (
    UUID("a0000000-0000-4000-8000-00000000000a"),
    UUID("b0000000-0000-4000-8000-00000000000b"),
)
SERVICED = UUID("c0000000-0000-4000-8000-00000000000c")  # only the service creates its jobs
STRANGER = UUID("d0000000-0000-4000-8000-00000000000d")
WORKERS = ("w1", "w2")
TERMINAL = ("completed", "cancelled", "expired")
STATUSES = ("pending", "processing", "completed", "failed", "cancelled", "expired")

results = json_values(max_leaves=6).filter(lambda v: not has_nul(v))


@dataclass
class Outcome:
    rows: list[Any] | None = None
    error: psycopg.Error | None = None

    @property
    def code(self) -> str | None:
        return None if self.error is None else self.error.sqlstate


class JobMachine(RuleBasedStateMachine):
    conn: Conn  # set by the test

    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        c = self.conn
        c.execute("TRUNCATE job_queue, job_log, job_queue_user_lock")
        c.execute(
            "UPDATE job_queue_config SET max_active_jobs_per_user = %s,"
            " retry_base_delay = '10 seconds', retry_max_delay = '1 hour'",
            (LIMIT,),
        )
        self.seen: dict[UUID, str] = {}  # last status seen
        self.completed_with: dict[UUID, tuple[Any, str | None]] = {}  # result, completer

    # -- helpers ---------------------------------------------------------------

    def call(self, who: UUID | str | None, sql: str, params: Any = None) -> Outcome:
        before = snapshot(self.conn)
        try:
            out = Outcome(rows=run_as(self.conn, who, sql, params))
        except psycopg.Error as exc:
            out = Outcome(error=exc)
        if out.error is not None:
            assert out.code in DOCUMENTED, f"undocumented {out.code}: {out.error}"
            assert snapshot(self.conn) == before, f"refused ({out.code}) yet changed"
        return out

    def job(self, job_id: UUID) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT to_jsonb(j) FROM job_queue j WHERE id = %s", (job_id,)
        ).fetchone()
        assert row is not None, f"job {job_id} vanished"
        return dict(row[0])

    def active(self, user: UUID) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM job_queue WHERE user_id = %s AND (status IN"
            " ('pending', 'processing') OR (status = 'failed' AND next_retry_at IS NOT NULL))",
            (user,),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def has(self, status: str) -> bool:
        row = self.conn.execute(
            "SELECT exists (SELECT 1 FROM job_queue WHERE status = %s)", (status,)
        ).fetchone()
        return bool(row and row[0])

    def owner_of(self, job: dict[str, Any]) -> UUID:
        return UUID(job["user_id"])

    # -- creating ----------------------------------------------------------------

    @initialize(target=jobs)
    def first_job(self) -> UUID:
        out = self.call(None, "SELECT create_job(%s, 'seed')", (SERVICED,))
        assert out.rows is not None
        return UUID(str(out.rows[0][0]))

    @rule(
        target=jobs,
        user=st.sampled_from(LIMITED),
        priority=st.integers(-2, 2),
        max_retries=st.sampled_from([0, 1, 3, 25]),
        job_type=st.sampled_from(["a", "b.c", "x:y-z"]),
    )
    def create_as_user(self, user: UUID, priority: int, max_retries: int, job_type: str) -> Any:
        active = self.active(user)
        out = self.call(
            user,
            "SELECT create_job(NULL, %s, '{}', %s, %s)",
            (job_type, priority, max_retries),
        )
        if priority > 0:
            assert out.code == "42501", "only service callers may jump the queue"
        elif active >= LIMIT:
            assert out.code == "53400", f"{active} active of {LIMIT}: over the limit"
        else:
            assert out.rows is not None, out.error
            return UUID(str(out.rows[0][0]))
        return multiple()  # nothing created

    @rule(target=jobs, priority=st.integers(-2, 2), max_retries=st.sampled_from([0, 1, 3]))
    def create_as_service(self, priority: int, max_retries: int) -> UUID:
        out = self.call(
            "service_role",
            "SELECT create_job(%s, 'svc', '{}', %s, %s)",
            (SERVICED, priority, max_retries),
        )
        assert out.rows is not None, out.error
        return UUID(str(out.rows[0][0]))

    @rule(user=st.sampled_from(LIMITED), n=st.integers(1, 4))
    def create_many_as_user(self, user: UUID, n: int) -> None:
        active = self.active(user)
        out = self.call(
            user,
            "SELECT count(*) FROM create_jobs(NULL, %s)",
            (Jsonb([{"job_type": "bulk"}] * n),),
        )
        if active + n > LIMIT:
            assert out.code == "53400", "all or nothing, within the limit"
        else:
            assert out.rows == [(n,)]

    @rule(
        bad=st.sampled_from(
            [
                ("SELECT create_job(%s, '', '{}')", "22023"),  # empty job_type
                ("SELECT create_job(%s, 'a b', '{}')", "22023"),  # bad character
                ("SELECT create_job(%s, 'a', '[1]')", "22023"),  # params not an object
                ("SELECT create_job(%s, 'a', '{}', 0, 26)", "22023"),  # max_retries over 25
                ("SELECT create_job(%s, 'a', '{}', 101)", "22023"),  # priority over 100
                ("SELECT create_job(%s, 'a', '{}', 0, 3, NULL, '-1 s')", "22023"),  # ttl
                ("SELECT create_job(%s, 'a', '{nope')", "22P02"),  # malformed json
            ]
        )
    )
    def create_refused(self, bad: tuple[str, str]) -> None:
        sql, code = bad
        assert self.call(None, sql, (SERVICED,)).code == code

    @rule(user=st.sampled_from(LIMITED))
    def create_for_someone_else(self, user: UUID) -> None:
        out = self.call(user, "SELECT create_job(%s, 'a')", (STRANGER,))
        assert out.code == "42501"

    # -- workers -------------------------------------------------------------------

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 3))
    def claim(self, worker: str, limit: int) -> None:
        runnable = self.conn.execute(
            """SELECT id FROM job_queue
                WHERE status = 'pending' AND run_after <= now()
                  AND (next_retry_at IS NULL OR next_retry_at <= now())
                  AND (expires_at IS NULL OR expires_at > now() OR started_at IS NOT NULL)
                ORDER BY priority DESC, created_at, id LIMIT %s""",
            (limit,),
        ).fetchall()
        attempts = {r[0]: self.job(r[0])["attempts"] for r in runnable}
        out = self.call("service_role", "SELECT id FROM claim_jobs(%s, %s)", (worker, limit))
        assert out.rows is not None, out.error
        assert [r[0] for r in out.rows] == [r[0] for r in runnable], "priority, then FIFO"
        for job_id, before in attempts.items():
            after = self.job(job_id)
            assert (after["status"], after["worker_id"]) == ("processing", worker)
            assert after["attempts"] == before + 1

    @rule(
        job_id=jobs,
        holder=st.sampled_from(["holder", "other", "admin"]),
        percent=st.integers(-5, 105),
        message=st.none() | st.text(max_size=20).filter(lambda s: "\x00" not in s),
    )
    def progress(self, job_id: UUID, holder: str, percent: int, message: str | None) -> None:
        before = self.job(job_id)
        worker = self.pick_worker(before, holder)
        out = self.call(
            "service_role",
            "SELECT update_job_progress(%s, %s, %s, %s)",
            (job_id, percent, message, worker),
        )
        if not 0 <= percent <= 100:
            assert out.code == "22023"
        elif before["status"] != "processing" or (
            worker is not None and worker != before["worker_id"]
        ):
            assert out.code == "55000", "only the holder of a running job reports progress"
        else:
            assert out.error is None, out.error
            after = self.job(job_id)
            assert (after["progress_percent"], after["progress_message"]) == (percent, message)

    def pick_worker(self, job: dict[str, Any], holder: str) -> str | None:
        if holder == "admin":
            return None  # NULL p_worker_id: the admin override
        if holder == "holder" and job["worker_id"]:
            return str(job["worker_id"])
        return "w2" if job["worker_id"] == "w1" else "w1"

    @rule(job_id=jobs, holder=st.sampled_from(["holder", "other", "admin"]), result=results)
    def complete(self, job_id: UUID, holder: str, result: Any) -> None:
        before = self.job(job_id)
        worker = self.pick_worker(before, holder)
        out = self.call(
            "service_role", "SELECT complete_job(%s, %s, %s)", (job_id, Jsonb(result), worker)
        )
        if before["status"] == "processing" and worker in (None, before["worker_id"]):
            assert out.error is None, out.error
            self.completed_with[job_id] = (result, before["worker_id"])
        else:
            assert out.code == "55000"

    @rule(worker=st.sampled_from(WORKERS), picks=st.lists(jobs, max_size=4, unique=True))
    def complete_many(self, worker: str, picks: list[UUID]) -> None:
        befores = {j: self.job(j) for j in picks}
        res = [{"n": i} for i in range(len(picks))]
        out = self.call(
            "service_role",
            "SELECT job_id, completed FROM complete_jobs(%s, %s::uuid[], %s::jsonb[])",
            (worker, picks, [Jsonb(r) for r in res]),
        )
        assert out.rows is not None, out.error
        done = dict(out.rows)
        for (job_id, before), result in zip(befores.items(), res, strict=True):
            held = before["status"] == "processing" and before["worker_id"] == worker
            assert done[job_id] is held, "completed exactly the jobs this worker holds"
            if held:
                self.completed_with[job_id] = (result, worker)

    @rule(job_id=jobs, holder=st.sampled_from(["holder", "other"]), retryable=st.booleans())
    def fail(self, job_id: UUID, holder: str, retryable: bool) -> None:
        before = self.job(job_id)
        worker = self.pick_worker(before, holder)
        out = self.call(
            "service_role",
            "SELECT fail_job(%s, 'boom', 'E_TEST', %s, %s)",
            (job_id, retryable, worker),
        )
        if before["status"] == "processing" and worker == before["worker_id"]:
            assert out.rows is not None, out.error
            will_retry = retryable and before["attempts"] <= before["max_retries"]
            assert (out.rows[0][0] is not None) is will_retry
            assert self.job(job_id)["status"] == "failed"
        else:
            assert out.code == "55000"

    @rule(worker=st.sampled_from(WORKERS), all_jobs=st.booleans(), picks=st.lists(jobs, max_size=3))
    def release(self, worker: str, all_jobs: bool, picks: list[UUID]) -> None:
        held = {
            r[0]: r[1]
            for r in self.conn.execute(
                "SELECT id, attempts FROM job_queue WHERE status = 'processing' AND worker_id = %s",
                (worker,),
            )
        }
        ids = None if all_jobs else picks
        expected = set(held) if all_jobs else set(held) & set(picks)
        out = self.call("service_role", "SELECT release_jobs(%s, %s::uuid[])", (worker, ids))
        assert out.rows == [(len(expected),)], out.error
        for job_id in expected:
            after = self.job(job_id)
            assert (after["status"], after["worker_id"]) == ("pending", None)
            assert after["attempts"] == max(held[job_id] - 1, 0), "the attempt is given back"

    # -- cancelling and retrying ----------------------------------------------------

    @rule(job_id=jobs, who=st.sampled_from(["owner", "stranger", "service"]))
    def cancel(self, job_id: UUID, who: str) -> None:
        before = self.job(job_id)
        caller: UUID | str = {
            "owner": self.owner_of(before),
            "stranger": STRANGER,
            "service": "service_role",
        }[who]
        out = self.call(caller, "SELECT cancel_job(%s)", (job_id,))
        if who == "stranger":
            assert out.code == "P0002", "another user's job reads as unknown"
        elif before["status"] in ("pending", "processing"):
            assert out.rows == [("cancelled",)], out.error
        else:
            assert out.code == "55000"

    @rule()
    def retry_due_failures(self) -> None:
        self.conn.execute(
            "UPDATE job_queue SET next_retry_at = now() - interval '1 second'"
            " WHERE status = 'failed' AND next_retry_at IS NOT NULL"
        )
        due = {
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM job_queue WHERE status = 'failed' AND next_retry_at IS NOT NULL"
            )
        }
        out = self.call("service_role", "SELECT retry_failed_jobs()")
        assert out.rows == [(len(due),)], out.error
        for job_id in due:
            after = self.job(job_id)
            assert (after["status"], after["worker_id"], after["progress_percent"]) == (
                "pending",
                None,
                0,
            )

    @rule(job_id=jobs, as_owner=st.booleans())
    def retry_by_hand(self, job_id: UUID, as_owner: bool) -> None:
        before = self.job(job_id)
        owner = self.owner_of(before)
        if owner in LIMITED and not as_owner:
            return  # the service may push a user past the limit: not this invariant's case
        active = self.active(owner)
        caller: UUID | str = owner if as_owner else "service_role"
        out = self.call(caller, "SELECT retry_job(%s)", (job_id,))
        if before["status"] != "failed":
            assert out.code == "55000"
        elif as_owner and active + 1 > LIMIT:
            assert out.code == "53400"
        else:
            assert out.rows == [("pending",)], out.error
            after = self.job(job_id)
            assert after["attempts"] <= after["max_retries"], "one more attempt at least"

    # -- maintenance -------------------------------------------------------------------

    @precondition(lambda self: self.has("pending"))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        pending = [
            r[0] for r in self.conn.execute("SELECT id FROM job_queue WHERE status = 'pending'")
        ]
        victims = data.draw(st.lists(st.sampled_from(sorted(pending)), min_size=1, unique=True))
        self.conn.execute(
            "UPDATE job_queue SET expires_at = now() - interval '1 second' WHERE id = ANY(%s)",
            (victims,),
        )
        # a job that has started (and waits for its retry) does not expire
        never_started = {j for j in victims if self.job(j)["started_at"] is None}
        out = self.call("service_role", "SELECT expire_stale_jobs()")
        assert out.rows == [(len(never_started),)], out.error
        for job_id in victims:
            expected = "expired" if job_id in never_started else "pending"
            assert self.job(job_id)["status"] == expected

    @precondition(lambda self: self.has("processing"))
    @rule(data=st.data())
    def detect_stuck(self, data: st.DataObject) -> None:
        running = [
            r[0] for r in self.conn.execute("SELECT id FROM job_queue WHERE status = 'processing'")
        ]
        victims = data.draw(st.lists(st.sampled_from(sorted(running)), min_size=1, unique=True))
        befores = {j: self.job(j) for j in victims}
        self.conn.execute(
            "UPDATE job_queue SET heartbeat_at = now() - interval '1 hour' WHERE id = ANY(%s)",
            (victims,),
        )
        out = self.call("service_role", "SELECT detect_stuck_jobs(interval '30 minutes')")
        assert out.rows == [(len(victims),)], out.error
        for job_id, before in befores.items():
            after = self.job(job_id)
            assert (after["status"], after["error_code"]) == ("failed", "STUCK")
            retry = before["attempts"] <= before["max_retries"]
            assert (after["next_retry_at"] is not None) is retry

    # -- unknown jobs ---------------------------------------------------------------------

    @rule(
        op=st.sampled_from(
            [
                "SELECT cancel_job(%s)",
                "SELECT retry_job(%s)",
                "SELECT complete_job(%s, NULL, 'w1')",
                "SELECT update_job_progress(%s, 5, NULL, 'w1')",
                "SELECT fail_job(%s, 'x')",
            ]
        ),
        who=st.sampled_from([None, "service_role", LIMITED[0]]),
    )
    def unknown_job(self, op: str, who: UUID | str | None) -> None:
        if who == LIMITED[0] and "cancel" not in op and "retry" not in op:
            who = "service_role"  # the worker functions are not a user's to call
        out = self.call(who, op, (uuid.uuid4(),))
        assert out.code == "P0002"

    @rule(text=st.sampled_from(["not-a-uuid", "", "1234", "g" * 36]))
    def malformed_job_id(self, text: str) -> None:
        assert self.call(None, "SELECT cancel_job(%s::uuid)", (text,)).code == "22P02"

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def invariants(self) -> None:
        rows = [r[0] for r in self.conn.execute("SELECT to_jsonb(j) FROM job_queue j")]
        for job in rows:
            job_id = UUID(job["id"])
            status = job["status"]
            assert status in STATUSES
            previous = self.seen.get(job_id)
            if previous in TERMINAL:
                assert status == previous, f"{job_id}: {previous} -> {status}"
            self.seen[job_id] = status
            assert 0 <= job["attempts"] <= job["max_retries"] + 1
            assert 0 <= job["progress_percent"] <= 100
            if status == "pending":
                assert job["worker_id"] is None, "a pending job has no holder"
                assert job["attempts"] <= job["max_retries"], "its next run is allowed"
            if status == "processing":
                assert job["worker_id"] is not None
                assert job["heartbeat_at"] is not None
            if status == "failed" and job["next_retry_at"] is not None:
                assert job["attempts"] <= job["max_retries"]
            if status == "completed":
                assert job["progress_percent"] == 100
                result, holder = self.completed_with[job_id]
                same = self.conn.execute(
                    "SELECT result = %s FROM job_queue WHERE id = %s", (Jsonb(result), job_id)
                ).fetchone()
                assert same == (True,), "the result of the call that completed it"
                assert job["worker_id"] == holder, "completed by its holder"
        for user in LIMITED:
            assert self.active(user) <= LIMIT, f"user {user} over the active job limit"


def test_any_sequence_of_operations_keeps_the_invariants(database_url: str) -> None:
    conn = psycopg.connect(database_url, autocommit=True)
    try:

        class Machine(JobMachine):
            pass

        Machine.conn = conn
        run_state_machine_as_test(
            Machine, settings=profile(examples=max(10, EXAMPLES // 2), stateful_step_count=30)
        )
    finally:
        conn.close()


def test_retry_job_after_all_26_attempts_of_max_retries_25(conn: Conn) -> None:
    """max_retries = 25 is allowed; after the 26th attempt failed, retry_job ("one more
    attempt if all were used") once set max_retries = greatest(max_retries, attempts) = 26
    and violated job_queue_max_retries_check (0..25): an undocumented 23514. At the cap
    it now sets attempts back to 25, so the job runs once more (the 26th run again)."""
    job_id = conn.execute("SELECT create_job(%s, 'cap', '{}', 0, 25)", (SERVICED,)).fetchone()[0]  # type: ignore[index]
    for _ in range(26):
        conn.execute(
            "UPDATE job_queue SET next_retry_at = now() - interval '1 second'"
            " WHERE id = %s AND status = 'failed'",
            (job_id,),
        )
        conn.execute("SELECT retry_failed_jobs()")
        assert conn.execute("SELECT count(*) FROM claim_jobs('w1', 1)").fetchone() == (1,)
        conn.execute("SELECT fail_job(%s, 'boom', 'E', true, 'w1')", (job_id,))
    assert conn.execute(
        "SELECT status, attempts, max_retries, next_retry_at FROM job_queue"
    ).fetchone() == ("failed", 26, 25, None)
    refusal: psycopg.Error | None = None
    try:
        conn.execute("SELECT retry_job(%s)", (job_id,))
    except psycopg.Error as exc:  # a clean refusal would do too
        refusal = exc
    if refusal is not None:
        assert refusal.sqlstate in DOCUMENTED, f"undocumented {refusal.sqlstate}: {refusal}"
    else:
        row = conn.execute("SELECT status, attempts, max_retries FROM job_queue").fetchone()
        assert row is not None
        assert row[0] == "pending"
        assert row[1] <= row[2] <= 25, "one more attempt, within the caps"
        assert conn.execute("SELECT count(*) FROM claim_jobs('w1', 1)").fetchone() == (1,)
        assert conn.execute(
            "SELECT fail_job(%s, 'boom', 'E', true, 'w1')", (job_id,)
        ).fetchone() == (None,), "that was the last run"
