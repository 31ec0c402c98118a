"""The chaos soak, small: 3,000 jobs through 3 worker processes while the driver
kills workers (kill -9 and SIGTERM), terminates their backends, restarts
PostgreSQL once and cancels jobs. Nothing may be lost, completed twice or stuck.

``make soak`` runs the full one (100,000 jobs); see soak/__init__.py.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))  # the soak package, as its worker processes import it

from soak import (  # noqa: E402
    SoakConfig,
    find_restarter,
    headline,
    machine_info,
    render,
    run_soak,
    server_facts,
)

FAULTS = {"kill9": 3, "terminate": 3, "restart": 1, "cancel": 3, "sigterm": 1}


def test_small_soak_loses_nothing(database_url: str, admin_url: str, tmp_path: Path) -> None:
    restarter, note = find_restarter(admin_url)
    mix = dict(FAULTS)
    if restarter is None:
        mix.pop("restart")
        print(f"no PostgreSQL restart: {note}")
    cfg = SoakConfig(
        jobs=3000,
        workers=3,
        concurrency=8,
        rate=150.0,  # 20 s of production, the faults spread over it
        batch=50,
        cpu_ms=(0.5, 2.0),
        wait_ms=(5.0, 40.0),  # jobs in flight when a worker dies
        fault_mix=mix,
        max_faults=sum(mix.values()),
        # all 11 faults inside the 20 s of production, even at the longest gaps
        # and with a restart's own seconds (the queue drains soon after it ends)
        fault_gap=(0.8, 1.3),
        first_fault_after=2.0,
        duration=100.0,
        drain=50.0,
        seed=20261130,
    )
    rec, fig = run_soak(cfg, database_url, restarter=restarter, log_dir=tmp_path, restart_note=note)
    report = render(
        rec, fig, machine_info(server_facts(database_url), "test"), "test_soak_small", "ci"
    )
    print(report)
    print(headline(fig))

    assert rec.all_final, "every job reached a final state before the deadline"
    assert fig.created == cfg.jobs
    assert fig.lost == 0, fig.unfinished
    assert fig.completed_twice == 0
    assert fig.stuck_dead_holder == 0
    assert fig.stuck_at_end == 0
    assert fig.wrong_result == 0, "a completed job's result is its last holder's run"
    assert fig.transitions_from_terminal == 0
    assert fig.unexpected_rows == 0
    assert fig.foreign_cancel_leaks == 0
    assert fig.doomed_not_failed == 0
    assert fig.flaky_completed_first_try == 0
    assert fig.cancelled_unexplained == 0
    assert not fig.anomalies, fig.anomalies
    assert fig.fault_counts == mix, "every planned fault ran"
    assert fig.completed + fig.cancelled + fig.failed_final == cfg.jobs
    # failures for good are the deliberate ones only (no job exhausted its retries)
    assert set(fig.failed_final_by_code) <= {"SOAK_DOOMED"}, fig.failed_final_by_code
    # Every re-run should have a fault to explain it (its worker killed, released on
    # SIGTERM, or unheard for longer than the short 5 s stuck timeout after a restart
    # or a backend termination). At-least-once allows others, so they warn, with
    # what is known about them, rather than fail.
    if fig.unexplained_reexecutions:
        warnings.warn(
            f"{fig.unexplained_reexecutions} re-execution(s) no fault explains: "
            + "; ".join(fig.unexplained_examples),
            stacklevel=1,
        )
