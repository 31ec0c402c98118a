"""One soak run: worker processes, a producer, a chaos driver and a sampler.

Threads, each with its own reconnecting connection (application_name
``soak-driver:*``, so the pg_terminate_backend fault never hits them):

- producer: creates the jobs with ``create_jobs`` (as service, for ``users``
  users) in batches, at ``rate`` or as fast as the ``backlog`` bound allows. A
  batch whose commit is in doubt (connection lost mid-call) is looked up by its
  batch number before it is sent again, so no job is created twice.
- sampler: every ``sample_every`` seconds counts unfinished jobs, watches for
  processing jobs whose heartbeat is older than stuck timeout + margin (stuck),
  restarts a worker that died by itself (an anomaly) and prints progress.
- the calling thread runs the chaos: at random moments (seeded) one fault of
  the mix - kill -9 a worker (and start a new one), pg_terminate_backend of
  worker backends, restart PostgreSQL, cancel random pending/processing jobs,
  SIGTERM a worker (a deploy: it finishes or releases its jobs) and start a
  new one.

The run ends when every job is final, or at ``duration`` (faults and
production stop ``drain`` seconds before, so the last rescues can finish).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from jobq import db as jobq_db
from soak import app
from soak.config import SoakConfig
from soak.server import Restarter

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

TRANSITIONS_DDL = """
CREATE TABLE IF NOT EXISTS soak_transitions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      uuid NOT NULL,
    from_status text NOT NULL,
    to_status   text NOT NULL,
    worker_id   text,
    attempts    int  NOT NULL,
    error_code  text,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS soak_transitions_job ON soak_transitions (job_id);
CREATE OR REPLACE FUNCTION soak_record_transition() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    INSERT INTO public.soak_transitions
        (job_id, from_status, to_status, worker_id, attempts, error_code)
    VALUES (NEW.id, OLD.status, NEW.status, NEW.worker_id, NEW.attempts, NEW.error_code);
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS soak_transitions ON job_queue;
CREATE TRIGGER soak_transitions AFTER UPDATE OF status ON job_queue
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION soak_record_transition();
"""

SAMPLE_SQL = """
SELECT count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'processing'),
       count(*) FILTER (WHERE status = 'failed' AND next_retry_at IS NOT NULL),
       coalesce(max(extract(epoch FROM clock_timestamp() - heartbeat_at))
                FILTER (WHERE status = 'processing'), 0)::float8
  FROM job_queue
 WHERE status IN ('pending', 'processing', 'failed')
"""

STUCK_SQL = """
SELECT id, worker_id, extract(epoch FROM clock_timestamp() - heartbeat_at)::float8
  FROM job_queue
 WHERE status = 'processing' AND heartbeat_at < clock_timestamp() - make_interval(secs => %s)
"""


def prepare_database(url: str) -> None:
    """The soak's bookkeeping tables and fast-recovery settings in its database."""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(app.EXECUTIONS_DDL)
        c.execute(TRANSITIONS_DDL)
        c.execute(
            "UPDATE job_queue_config SET retry_base_delay = '0', retry_max_delay = '1 second',"
            " max_active_jobs_per_user = 1000000"
        )


# ---------------------------------------------------------------------------
# Connections that survive restarts
# ---------------------------------------------------------------------------
class Conn:
    """One autocommit connection that reconnects (for one thread)."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self._conn: psycopg.Connection[Any] | None = None

    def get(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = psycopg.connect(
                self.url,
                autocommit=True,
                application_name=f"soak-driver:{self.name}",
                connect_timeout=5,
            )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def run(
        self,
        fn: Callable[[psycopg.Connection[Any]], T],
        *,
        give_up_after: float = 180.0,
        stop: threading.Event | None = None,
    ) -> T:
        """``fn(conn)``, retried on connection loss (``fn`` must be safe to repeat)."""
        deadline = time.monotonic() + give_up_after
        delay = 0.05
        while True:
            try:
                return fn(self.get())
            except psycopg.OperationalError:
                self.close()
                if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)


# ---------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------
@dataclass
class WorkerProc:
    worker_id: str
    proc: subprocess.Popen[bytes]
    started: float
    killed: float | None = None
    terminated: float | None = None  # SIGTERM sent (a deploy)
    exited: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


class Fleet:
    def __init__(self, url: str, cfg: SoakConfig, log_dir: Path, tag: str) -> None:
        self.url = url
        self.cfg = cfg
        self.log_dir = log_dir
        self.tag = tag
        self.all: list[WorkerProc] = []
        self._lock = threading.Lock()

    def start(self) -> WorkerProc:
        cfg = self.cfg
        with self._lock:
            worker_id = f"soak-{self.tag}-w{len(self.all) + 1}"
            env = {
                **os.environ,
                "DATABASE_URL": self.url,
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
                ),
            }
            cmd = [
                sys.executable,
                "-m",
                "jobq",
                "worker",
                "soak.app:registry",
                "--concurrency",
                str(cfg.concurrency),
                "--stuck-timeout",
                str(cfg.stuck_timeout),
                "--heartbeat-interval",
                str(cfg.heartbeat_interval),
                "--maintenance-every",
                cfg.maintenance_every,
                "--poll-interval",
                str(cfg.poll_interval),
                "--shutdown-grace",
                str(cfg.shutdown_grace),
                "--worker-id",
                worker_id,
            ]
            log = (self.log_dir / f"{worker_id}.log").open("wb")
            proc = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, close_fds=True
            )
            log.close()
            wp = WorkerProc(worker_id, proc, time.time())
            self.all.append(wp)
            return wp

    def live(self) -> list[WorkerProc]:
        """Running (a SIGTERMed worker still shutting down counts: it holds its jobs)."""
        with self._lock:
            return [w for w in self.all if w.killed is None and w.proc.poll() is None]

    def serving(self) -> list[WorkerProc]:
        """Running and not told to stop: what a fault may pick."""
        return [w for w in self.live() if w.terminated is None]

    @property
    def live_ids(self) -> set[str]:
        return {w.worker_id for w in self.live()}

    @property
    def killed_ids(self) -> set[str]:
        with self._lock:
            return {w.worker_id for w in self.all if w.killed is not None}

    def kill9(self, victim: WorkerProc) -> None:
        victim.killed = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim.pid, signal.SIGKILL)
        victim.proc.wait()
        victim.exited = time.time()

    def sigterm(self, victim: WorkerProc) -> None:
        victim.terminated = time.time()
        with contextlib.suppress(ProcessLookupError):
            victim.proc.send_signal(signal.SIGTERM)

    def reap(self) -> list[WorkerProc]:
        """Workers that exited without being told to (an anomaly), or that failed to
        shut down cleanly after a SIGTERM."""
        died = []
        with self._lock:
            for w in self.all:
                if w.killed is None and w.exited is None and w.proc.poll() is not None:
                    w.exited = time.time()
                    if w.terminated is None or w.proc.returncode != 0:
                        died.append(w)
        return died

    def stop_all(self, timeout: float = 20.0) -> None:
        with self._lock:
            procs = [w for w in self.all if w.proc.poll() is None]
        for w in procs:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for w in procs:
            try:
                w.proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            w.exited = w.exited or time.time()

    def log_tail(self, worker_id: str, chars: int = 4000) -> str:
        path = self.log_dir / f"{worker_id}.log"
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# ---------------------------------------------------------------------------
# What happened
# ---------------------------------------------------------------------------
@dataclass
class Fault:
    n: int
    kind: str
    at: float  # epoch seconds, local clock
    ended: float
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class StuckSighting:
    job_id: str
    worker_id: str
    max_age: float
    holder_dead: bool


@dataclass
class RunRecord:
    """Everything the run observed; analysis.py turns it into figures."""

    cfg: SoakConfig
    url: str
    started: float = 0.0
    chaos_ended: float = 0.0
    ended: float = 0.0
    clock_offset: float = 0.0  # database clock minus local clock, seconds
    created: dict[int, list[str]] = field(default_factory=dict)  # batch -> job ids
    create_retries: int = 0
    faults: list[Fault] = field(default_factory=list)
    cancels: dict[str, str] = field(default_factory=dict)  # job id -> outcome
    foreign_cancel_attempts: int = 0
    foreign_cancel_leaks: int = 0
    stuck: dict[str, StuckSighting] = field(default_factory=dict)
    max_heartbeat_age: float = 0.0
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    restart_how: str = ""
    restart_note: str = ""
    all_final: bool = False
    workers_started: int = 0
    worker_ids_killed: set[str] = field(default_factory=set)
    worker_killed_at: dict[str, float] = field(default_factory=dict)
    # worker -> (started, SIGTERM sent, exited), epoch seconds (None: did not happen)
    worker_times: dict[str, tuple[float, float | None, float | None]] = field(default_factory=dict)
    worker_pids: dict[str, int] = field(default_factory=dict)
    log_dir: str = ""

    @property
    def created_count(self) -> int:
        return sum(len(ids) for ids in self.created.values())


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
class Soak:
    def __init__(
        self,
        cfg: SoakConfig,
        url: str,
        restarter: Restarter | None,
        log_dir: Path,
        *,
        restart_note: str = "",
        echo: Callable[[str], None] | None = None,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        self.url = url
        self.restarter = restarter if cfg.restart else None
        self.rec = RunRecord(cfg=cfg, url=url, log_dir=str(log_dir))
        if self.restarter is not None:
            self.rec.restart_how = self.restarter.how
        else:
            self.rec.restart_note = (
                "disabled (--no-restart)" if not cfg.restart else restart_note or "not possible"
            )
        self.fleet = Fleet(url, cfg, log_dir, uuid.uuid4().hex[:4])
        self._echo = echo or _print
        self._lock = threading.Lock()
        self._unfinished = 0
        self._producer_done = threading.Event()
        self._all_final = threading.Event()
        self._stop = threading.Event()
        self._created_total = 0
        self._restarting_since: float | None = None

    def echo(self, msg: str) -> None:
        if not self.cfg.quiet:
            self._echo(f"[{time.time() - self.rec.started:7.1f}s] {msg}")

    # -- orchestration ----------------------------------------------------------

    def run(self) -> RunRecord:
        cfg, rec = self.cfg, self.rec
        prepare_database(self.url)
        rec.clock_offset = _clock_offset(self.url)
        rec.started = time.time()
        chaos_end = rec.started + cfg.duration - cfg.drain
        hard_end = rec.started + cfg.duration
        for _ in range(cfg.workers):
            self.fleet.start()
        producer = threading.Thread(
            target=self._guard(self._produce, chaos_end), name="soak-producer", daemon=True
        )
        sampler = threading.Thread(
            target=self._guard(self._sample), name="soak-sampler", daemon=True
        )
        producer.start()
        sampler.start()
        try:
            self._chaos(chaos_end)
            rec.chaos_ended = time.time()
            self.echo("chaos over; waiting for the last jobs")
            while not self._all_final.is_set() and time.time() < hard_end:
                self._all_final.wait(0.2)
            rec.all_final = self._all_final.is_set()
        finally:
            rec.ended = time.time()
            self._stop.set()
            producer.join(timeout=30)
            sampler.join(timeout=30)
            self.fleet.stop_all()
            rec.workers_started = len(self.fleet.all)
            rec.worker_ids_killed = self.fleet.killed_ids
            rec.worker_killed_at = {
                w.worker_id: w.killed for w in self.fleet.all if w.killed is not None
            }
            rec.worker_times = {
                w.worker_id: (w.started, w.terminated, w.exited) for w in self.fleet.all
            }
            rec.worker_pids = {w.worker_id: w.pid for w in self.fleet.all}
        return rec

    def _guard(self, fn: Callable[..., None], *args: Any) -> Callable[[], None]:
        def run() -> None:
            try:
                fn(*args)
            except Exception as exc:  # a dead helper thread must not hang the run
                self.rec.anomalies.append(f"{fn.__name__} crashed: {exc!r}")
                self._producer_done.set()
                self.echo(f"!! {fn.__name__} crashed: {exc!r}")

        return run

    # -- producer ----------------------------------------------------------------

    def _produce(self, until: float) -> None:
        cfg, rec = self.cfg, self.rec
        rng = random.Random(f"{cfg.seed}:jobs")  # noqa: S311 - reproducible, not secret
        users = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(cfg.users)]
        conn = Conn(self.url, "producer")
        seq = 0
        batch_no = 0
        t0 = time.time()
        step = cfg.batch if cfg.rate <= 0 else max(1, min(cfg.batch, int(cfg.rate * 0.2)))
        try:
            while seq < cfg.jobs and not self._stop.is_set() and time.time() < until:
                n = min(step, cfg.jobs - seq)
                if cfg.rate > 0:
                    due = t0 + seq / cfg.rate
                    if self._stop.wait(max(0.0, due - time.time())):
                        break
                if not self._wait_backlog(conn, n, until):
                    break
                jobs = [self._job(rng, users, batch_no, seq + k) for k in range(n)]
                ids = self._create(conn, batch_no, jobs)
                with self._lock:
                    rec.created[batch_no] = ids
                    self._created_total += len(ids)
                    self._unfinished += len(ids)
                seq += n
                batch_no += 1
        finally:
            conn.close()
            self._producer_done.set()
            self.echo(f"producer done: {seq:,} jobs created")

    def _job(self, rng: random.Random, users: list[str], b: int, i: int) -> dict[str, Any]:
        cfg = self.cfg
        params: dict[str, Any] = {
            "b": b,
            "i": i,
            "cpu_ms": round(rng.uniform(*cfg.cpu_ms), 2),
            "wait_ms": round(rng.uniform(*cfg.wait_ms), 2),
        }
        roll = rng.random()
        if roll < cfg.doomed_rate:
            params["doomed"] = True
        elif roll < cfg.doomed_rate + cfg.flaky_rate:
            params["flaky"] = True
        if rng.random() < cfg.talk_rate:
            params["talk"] = True
        return {
            "job_type": "soak.cpu" if rng.random() < 0.5 else "soak.io",
            "user_id": users[rng.randrange(len(users))],
            "params": params,
            "max_retries": 3,
        }

    def _wait_backlog(self, conn: Conn, n: int, until: float) -> bool:
        while not self._stop.is_set() and time.time() < until:
            active = conn.run(
                lambda c: _scalar(
                    c, "SELECT count(*) FROM job_queue WHERE status IN ('pending', 'processing')"
                ),
                stop=self._stop,
            )
            if active + n <= self.cfg.backlog:
                return True
            self._stop.wait(0.1)
        return False

    def _create(self, conn: Conn, batch_no: int, jobs: list[dict[str, Any]]) -> list[str]:
        """create_jobs for one batch, exactly once even when the commit is in doubt."""
        while True:
            try:
                rows = (
                    conn.get()
                    .execute(
                        "SELECT job_id FROM create_jobs(NULL, %s) ORDER BY idx", (Jsonb(jobs),)
                    )
                    .fetchall()
                )
                return [str(r[0]) for r in rows]
            except psycopg.OperationalError:
                conn.close()
                self.rec.create_retries += 1
            # In doubt: did that batch commit? (all or nothing: n rows or none)
            found = conn.run(
                lambda c: [
                    str(r[0])
                    for r in c.execute(
                        "SELECT id FROM job_queue WHERE params @> %s ORDER BY (params->>'i')::int",
                        (Jsonb({"b": batch_no}),),
                    ).fetchall()
                ],
                stop=self._stop,
            )
            if len(found) == len(jobs):
                return found
            if found:
                self.rec.anomalies.append(
                    f"batch {batch_no}: {len(found)} of {len(jobs)} jobs exist after a lost call"
                )
                return found
            if self._stop.is_set():
                return []

    # -- sampler -----------------------------------------------------------------

    def _sample(self) -> None:
        cfg, rec = self.cfg, self.rec
        conn = Conn(self.url, "sampler")
        stuck_after = cfg.stuck_timeout + cfg.stuck_margin
        last_print = 0.0
        last_unfinished = -1
        try:
            while not self._stop.is_set():
                now = time.time()
                for w in self.fleet.reap():
                    if w.terminated is not None:
                        msg = f"worker {w.worker_id} exited with {w.proc.returncode} on SIGTERM"
                    else:
                        msg = f"worker {w.worker_id} exited by itself (rc {w.proc.returncode})"
                        self.fleet.start()
                    rec.anomalies.append(msg + "\n" + self.fleet.log_tail(w.worker_id, 2000))
                    self.echo("!! " + msg)
                try:
                    row = conn.run(lambda c: c.execute(SAMPLE_SQL).fetchone(), give_up_after=5.0)
                    assert row is not None
                    pending, processing, retrying, max_age = row
                except psycopg.OperationalError:
                    self._stop.wait(cfg.sample_every)
                    continue
                unfinished = pending + processing + retrying
                rec.samples.append((now, pending, processing, retrying))
                rec.max_heartbeat_age = max(rec.max_heartbeat_age, max_age)
                with self._lock:
                    self._unfinished = unfinished
                if max_age > stuck_after:
                    self._record_stuck(conn, stuck_after)
                if self._producer_done.is_set() and unfinished == 0:
                    self._all_final.set()
                if now - last_print >= 5.0 or (unfinished == 0 and last_unfinished != 0):
                    last_print = now
                    with self._lock:
                        created = self._created_total
                    self.echo(
                        f"created {created:,}, final {created - unfinished:,}; pending {pending:,}"
                        f", processing {processing}, awaiting retry {retrying}; faults "
                        f"{len(rec.faults)}; workers {len(self.fleet.live())}"
                    )
                last_unfinished = unfinished
                self._stop.wait(cfg.sample_every)
        finally:
            conn.close()

    def _record_stuck(self, conn: Conn, stuck_after: float) -> None:
        try:
            rows = conn.run(
                lambda c: c.execute(STUCK_SQL, (stuck_after,)).fetchall(), give_up_after=5.0
            )
        except psycopg.OperationalError:
            return
        live = self.fleet.live_ids
        now = time.time()
        for job_id, worker_id, raw_age in rows:
            # Time PostgreSQL was down (restarting) does not count: nothing can
            # heartbeat or detect then. A slow restart would look like stuck jobs.
            age = raw_age - self._downtime(now - raw_age, now)
            if age <= stuck_after:
                continue
            key = str(job_id)
            seen = self.rec.stuck.get(key)
            dead = worker_id not in live
            if seen is None:
                self.rec.stuck[key] = StuckSighting(key, worker_id, age, dead)
                self.echo(f"!! job {key} processing by {worker_id}, no heartbeat for {age:.1f}s")
            else:
                seen.max_age = max(seen.max_age, age)
                seen.holder_dead = seen.holder_dead or dead

    def _downtime(self, start: float, end: float) -> float:
        """Seconds of [start, end] spent in restart faults (the current one too)."""
        windows = [(f.at, f.ended) for f in list(self.rec.faults) if f.kind == "restart"]
        if self._restarting_since is not None:
            windows.append((self._restarting_since, end))
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in windows)

    # -- chaos -------------------------------------------------------------------

    def _chaos(self, until: float) -> None:
        cfg, rec = self.cfg, self.rec
        rng = random.Random(f"{cfg.seed}:chaos")  # noqa: S311 - reproducible, not secret
        mix = {k: w for k, w in cfg.fault_mix.items() if w > 0}
        if self.restarter is None:
            mix.pop("restart", None)
        bag: list[str] = []
        conn = Conn(self.url, "chaos")
        next_at = rec.started + cfg.first_fault_after
        try:
            while True:
                if cfg.max_faults is not None and len(rec.faults) >= cfg.max_faults:
                    break
                if not mix:
                    break
                wait = min(next_at, until) - time.time()
                if wait > 0 and self._all_final.wait(wait):
                    break
                if self._all_final.is_set() or time.time() >= until:
                    break
                if not bag:
                    bag = [k for k, w in mix.items() for _ in range(w)]
                    rng.shuffle(bag)
                kind = bag.pop()
                try:
                    fault = self._fault(kind, rng, conn)
                except Exception as exc:  # the driver's own failure: report, carry on
                    rec.anomalies.append(f"fault {kind} could not run: {exc!r}")
                    fault = Fault(len(rec.faults) + 1, kind, time.time(), time.time(), repr(exc))
                rec.faults.append(fault)
                self._restarting_since = None  # a restart's window is in rec.faults now
                self.echo(f"fault {fault.n} {kind}: {fault.detail}")
                next_at = time.time() + rng.uniform(*cfg.fault_gap)
        finally:
            conn.close()

    def _fault(self, kind: str, rng: random.Random, conn: Conn) -> Fault:
        n = len(self.rec.faults) + 1
        at = time.time()
        if kind == "kill9":
            detail, data = self._kill9(rng, conn)
        elif kind == "terminate":
            detail, data = self._terminate(rng, conn)
        elif kind == "restart":
            detail, data = self._restart(rng)
        elif kind == "cancel":
            detail, data = self._cancel(rng, conn)
        elif kind == "sigterm":
            detail, data = self._sigterm(rng, conn)
        else:  # pragma: no cover - validated in SoakConfig
            raise ValueError(kind)
        return Fault(n, kind, at, time.time(), detail, data)

    def _kill9(self, rng: random.Random, conn: Conn) -> tuple[str, dict[str, Any]]:
        live = self.fleet.serving()
        if not live:
            return "no live worker to kill", {}
        victim = rng.choice(live)
        self.fleet.kill9(victim)
        held = conn.run(
            lambda c: [
                str(r[0])
                for r in c.execute(
                    "SELECT id FROM job_queue WHERE status = 'processing' AND worker_id = %s",
                    (victim.worker_id,),
                )
            ]
        )
        new = self.fleet.start()
        return (
            f"kill -9 {victim.worker_id} (pid {victim.pid}) holding {len(held)} jobs;"
            f" started {new.worker_id}",
            {"victim": victim.worker_id, "pid": victim.pid, "held": held, "new": new.worker_id},
        )

    def _sigterm(self, rng: random.Random, conn: Conn) -> tuple[str, dict[str, Any]]:
        # Only a worker that has connected (its signal handlers are in place by
        # then): a SIGTERM during its imports ends it with nothing claimed, which
        # is harmless but not the graceful deploy this fault tests.
        connected = set(
            conn.run(
                lambda c: [
                    str(r[0]).split(":", 1)[1]
                    for r in c.execute(
                        "SELECT application_name FROM pg_stat_activity"
                        " WHERE application_name LIKE 'jobq-worker:%'"
                    )
                ]
            )
        )
        live = [w for w in self.fleet.serving() if w.worker_id in connected]
        if not live:
            return "no started worker to stop", {}
        victim = rng.choice(live)
        held = conn.run(
            lambda c: _scalar(
                c,
                "SELECT count(*) FROM job_queue WHERE status = 'processing' AND worker_id = %s",
                (victim.worker_id,),
            )
        )
        self.fleet.sigterm(victim)
        new = self.fleet.start()
        return (
            f"SIGTERM {victim.worker_id} (a deploy) holding {held} jobs; started {new.worker_id}",
            {"victim": victim.worker_id, "held_count": held, "new": new.worker_id},
        )

    def _terminate(self, rng: random.Random, conn: Conn) -> tuple[str, dict[str, Any]]:
        backends = conn.run(
            lambda c: c.execute(
                "SELECT pid, application_name FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name LIKE 'jobq-%%'"
                " AND pid <> pg_backend_pid()"
            ).fetchall()
        )
        if not backends:
            return "no worker backend connected", {}
        scope = rng.choice(("all", "one worker", "random half"))
        if scope == "all":
            chosen = backends
        elif scope == "one worker":
            worker = rng.choice(sorted({name.split(":", 1)[-1] for _, name in backends}))
            chosen = [b for b in backends if b[1].endswith(":" + worker)]
        else:
            chosen = [b for b in backends if rng.random() < 0.5] or [rng.choice(backends)]
        killed = conn.run(
            lambda c: _scalar(
                c,
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                " FROM unnest(%s::int[]) AS pid",
                ([pid for pid, _ in chosen],),
            )
        )
        kinds: dict[str, int] = {}
        for _, name in chosen:
            k = name.split(":", 1)[0]
            kinds[k] = kinds.get(k, 0) + 1
        what = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
        return (
            f"pg_terminate_backend on {killed} of {len(backends)} backends ({scope}: {what})",
            {"scope": scope, "terminated": killed, "of": len(backends), "kinds": kinds},
        )

    def _restart(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        assert self.restarter is not None
        down = rng.uniform(0, self.cfg.pg_down) if self.cfg.pg_down > 0 else 0.0
        t = time.time()
        self._restarting_since = t
        try:
            if down > 0:
                self.restarter.stop()
                time.sleep(down)
                self.restarter.start()
            else:
                self.restarter.restart()
        except Exception as exc:
            self.rec.anomalies.append(f"restart failed: {exc!r}")
            with contextlib.suppress(Exception):
                self.restarter.start()
            return f"restart FAILED: {exc!r}", {"failed": True}
        took = time.time() - t
        how = self.restarter.how if down == 0 else f"stop, {down:.1f} s down, start"
        return f"{how}: back after {took:.1f}s", {"took": took}

    def _cancel(self, rng: random.Random, conn: Conn) -> tuple[str, dict[str, Any]]:
        k = rng.randint(*self.cfg.cancel_batch)
        # Which jobs are pending at this moment depends on timing anyway: the
        # database's random() picks them.
        picked = conn.run(
            lambda c: c.execute(
                """(SELECT id, user_id, status FROM job_queue WHERE status = 'processing'
                     ORDER BY random() LIMIT %s)
                   UNION ALL
                   (SELECT id, user_id, status FROM job_queue WHERE status = 'pending'
                     ORDER BY random() LIMIT %s)""",
                (max(1, k // 2), k - max(1, k // 2)),
            ).fetchall()
        )
        if not picked:
            return "nothing pending or processing to cancel", {}
        outcomes: dict[str, int] = {}
        # First, someone else tries: another user must get P0002 and change nothing.
        job_id, owner, _ = picked[0]
        self.rec.foreign_cancel_attempts += 1
        if not self._foreign_cancel_refused(conn, job_id, owner):
            self.rec.foreign_cancel_leaks += 1
            self.rec.anomalies.append(f"another user could cancel job {job_id}")
        for job_id, owner, status in picked:
            as_owner = rng.random() < 0.5
            outcome = self._cancel_one(conn, job_id, owner if as_owner else None)
            self.rec.cancels[str(job_id)] = outcome
            label = f"{outcome} ({status}, as {'owner' if as_owner else 'service'})"
            outcomes[label] = outcomes.get(label, 0) + 1
        detail = ", ".join(f"{v} {k}" for k, v in sorted(outcomes.items()))
        return f"cancel_job on {len(picked)} jobs: {detail}", {"outcomes": outcomes}

    def _cancel_one(self, conn: Conn, job_id: uuid.UUID, owner: uuid.UUID | None) -> str:
        def call(c: psycopg.Connection[Any]) -> str:
            try:
                with c.transaction():
                    if owner is not None:
                        jobq_db.act_as(c, "authenticated", owner)
                    c.execute("SELECT cancel_job(%s)", (job_id,))
                return "cancelled"
            except psycopg.errors.ObjectNotInPrerequisiteState:
                status = _scalar(c, "SELECT status FROM job_queue WHERE id = %s", (job_id,))
                # a retried call whose first try committed finds its own work done
                return "cancelled" if status == "cancelled" else f"too late: {status}"

        try:
            return conn.run(call)
        except psycopg.Error as exc:
            self.rec.anomalies.append(f"cancel_job({job_id}) failed: {exc.sqlstate} {exc}")
            return f"error {exc.sqlstate}"

    def _foreign_cancel_refused(self, conn: Conn, job_id: uuid.UUID, owner: uuid.UUID) -> bool:
        stranger = uuid.uuid4()
        while stranger == owner:  # pragma: no cover
            stranger = uuid.uuid4()

        def call(c: psycopg.Connection[Any]) -> bool:
            before = _scalar(c, "SELECT status FROM job_queue WHERE id = %s", (job_id,))
            try:
                with c.transaction():
                    jobq_db.act_as(c, "authenticated", stranger)
                    c.execute("SELECT cancel_job(%s)", (job_id,))
            except psycopg.errors.NoDataFound:
                after = _scalar(c, "SELECT status FROM job_queue WHERE id = %s", (job_id,))
                return bool(after != "cancelled" or before == "cancelled")
            return False

        return conn.run(call)


_print_lock = threading.Lock()


def _print(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _clock_offset(url: str) -> float:
    """Database clock minus local clock (0 on this machine; the report's times use it)."""
    with psycopg.connect(url, autocommit=True) as c:
        best: tuple[float, float] | None = None
        for _ in range(5):
            t1 = time.time()
            db_now = float(_scalar(c, "SELECT extract(epoch FROM clock_timestamp())"))
            t2 = time.time()
            if best is None or t2 - t1 < best[0]:
                best = (t2 - t1, db_now - (t1 + t2) / 2)
        assert best is not None
        return best[1]


@contextlib.contextmanager
def scratch_dir(keep: bool) -> Iterator[Path]:
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="jobq-soak-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
