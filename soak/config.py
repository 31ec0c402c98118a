"""What a soak run does: sizes, fault mix, the workers' timing knobs."""

from __future__ import annotations

from dataclasses import dataclass, field

FAULT_KINDS = ("kill9", "terminate", "restart", "cancel", "sigterm")


@dataclass
class SoakConfig:
    jobs: int = 100_000
    workers: int = 3
    concurrency: int = 8
    # Hard bound on the run (production + chaos + drain), in seconds. Faults and
    # production stop ``drain`` seconds before it, so the last rescues can finish.
    duration: float = 1800.0
    drain: float = 60.0
    seed: int = 1
    # Producer: jobs per second (0: as fast as the backlog bound allows), jobs per
    # create_jobs call, most unfinished jobs at once, users the jobs belong to.
    rate: float = 0.0
    batch: int = 500
    backlog: int = 10_000
    users: int = 20
    # Handler work per job, drawn uniformly (ms): CPU hashing and waiting.
    cpu_ms: tuple[float, float] = (0.5, 4.0)
    wait_ms: tuple[float, float] = (0.0, 6.0)
    flaky_rate: float = 0.02  # fail on the first attempt, then succeed
    doomed_rate: float = 0.005  # fail for good (JobFailed, retryable=False)
    talk_rate: float = 0.1  # report progress and log a line
    # Chaos: seconds between faults (uniform), the mix (kind -> weight, drawn
    # from shuffled bags so every kind comes up regularly), an optional cap.
    fault_gap: tuple[float, float] = (4.0, 12.0)
    fault_mix: dict[str, int] = field(
        default_factory=lambda: {
            "kill9": 2,
            "terminate": 2,
            "restart": 1,
            "cancel": 2,
            "sigterm": 1,
        }
    )
    max_faults: int | None = None
    first_fault_after: float = 3.0
    restart: bool = True  # restart PostgreSQL when this machine can
    # Extra seconds PostgreSQL stays down on a restart (uniform 0..pg_down): 0 is
    # a plain restart; more than stuck_timeout makes every running job look stuck.
    pg_down: float = 0.0
    cancel_batch: tuple[int, int] = (1, 12)  # jobs per cancel fault
    # Worker knobs (fast recovery): heartbeat every second, stuck after 5 s,
    # maintenance (retries, stuck detection, expiry) every second.
    stuck_timeout: float = 5.0
    heartbeat_interval: float = 1.0
    maintenance_every: str = "@every 1s"
    poll_interval: float = 1.0
    shutdown_grace: float = 5.0
    # A processing job whose heartbeat is older than stuck_timeout + stuck_margin
    # counts as stuck (detection runs every second; a restart pauses it a while).
    stuck_margin: float = 10.0
    sample_every: float = 0.5
    quiet: bool = False

    def validate(self) -> None:
        if self.jobs < 1 or self.workers < 1 or self.concurrency < 1:
            raise ValueError("jobs, workers and concurrency must be at least 1")
        if not 1 <= self.batch <= 10_000:
            raise ValueError("batch must be 1..10000 (create_jobs takes at most 10,000)")
        if self.drain <= 0 or self.duration <= self.drain:
            raise ValueError("duration must be longer than drain, both positive")
        lo, hi = self.fault_gap
        if not 0 < lo <= hi:
            raise ValueError("fault gap must be 0 < min <= max")
        unknown = set(self.fault_mix) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if any(w < 0 for w in self.fault_mix.values()):
            raise ValueError("fault weights must be >= 0")


def parse_mix(text: str) -> dict[str, int]:
    """``kill9=2,terminate=2,restart=1,cancel=2`` -> dict (0 or a missing kind: never)."""
    mix: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        mix[name.strip()] = int(weight) if weight else 1
    return mix


def parse_range(text: str) -> tuple[float, float]:
    """``4:12`` -> (4.0, 12.0); ``5`` -> (5.0, 5.0)."""
    lo, _, hi = text.partition(":")
    return float(lo), float(hi or lo)
