"""The soak's report: a Markdown page (and the figures as JSON)."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Iterable
from typing import Any

from soak.analysis import FaultFigures, Figures
from soak.driver import RunRecord

KIND_NAMES = {
    "kill9": "kill -9 a worker",
    "terminate": "pg_terminate_backend",
    "restart": "restart PostgreSQL",
    "cancel": "cancel random jobs",
    "sigterm": "SIGTERM a worker (deploy)",
}


def machine_info(server: dict[str, str], server_kind: str) -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = "?"
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
            ram = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgres": server.get("server_version", "?"),
        "server": server_kind,
        "durability": f"fsync={server.get('fsync', '?')},"
        f" synchronous_commit={server.get('synchronous_commit', '?')}",
    }


def _s(x: float | None, unit: str = "s") -> str:
    return "n/a" if x is None else f"{x:.1f} {unit}"


def _n(x: int | float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:,.0f}"


def _spread(values: Iterable[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "n/a"
    return f"{statistics.median(got):.1f} s / {max(got):.1f} s"


def headline(fig: Figures) -> str:
    verdict = "PASS" if fig.passed else "FAIL"
    return (
        f"{verdict}: {fig.lost} lost, {fig.completed_twice} completed twice,"
        f" {fig.stuck_dead_holder + fig.stuck_at_end} stuck; {fig.double_success_jobs}"
        f" at-least-once re-executions ({fig.kill9s} kill -9s)"
        + (
            f", {fig.unexplained_reexecutions} re-run(s) no fault explains"
            if fig.unexplained_reexecutions
            else ""
        )
        + f"; {fig.throughput:,.0f} jobs/s"
    )


def render(rec: RunRecord, fig: Figures, machine: dict[str, str], command: str, date: str) -> str:
    cfg = rec.cfg
    out: list[str] = []
    w = out.append
    w(f"# jobq chaos soak, {date}\n")
    w(f"`{command}` ran {fig.wall_seconds / 60:.1f} minutes (seed {cfg.seed}).\n")
    w(f"**{headline(fig)}**\n")

    w("## Verdict\n")
    w("| figure | value | target |")
    w("| --- | ---: | --- |")
    w(f"| jobs lost (created, then never final by the deadline, or gone) | {fig.lost} | 0 |")
    w(
        "| jobs completed twice (two transitions to `completed`, from the audit trigger)"
        f" | {fig.completed_twice} | 0 |"
    )
    w(
        "| jobs stuck (processing, worker gone, heartbeat older than"
        f" {cfg.stuck_timeout:g} s + {cfg.stuck_margin:g} s, PostgreSQL's restarts not"
        f" counted) | {fig.stuck_dead_holder} | 0 |"
    )
    w(f"| jobs still processing at the end with no live worker | {fig.stuck_at_end} | 0 |")
    w(
        "| completed jobs whose result is not their last holder's finished run"
        f" | {fig.wrong_result} | 0 |"
    )
    w(
        "| transitions out of completed / cancelled / expired"
        f" | {fig.transitions_from_terminal} | 0 |"
    )
    w(
        "| another user's cancel_job that was not refused (P0002)"
        f" | {fig.foreign_cancel_leaks} of {fig.foreign_cancel_attempts} | 0 |"
    )
    w(
        "| re-executions with no fault to explain them (a run ended, its worker alive,"
        f" no restart or backend termination just before) | {fig.unexplained_reexecutions}"
        " | 0 (reported; at-least-once allows it) |"
    )
    w(
        "| **at-least-once**: completed jobs whose handler finished its work more than once"
        f" | {fig.double_success_jobs} ({fig.double_success_extra} extra runs; "
        f"{fig.kill9s} kill -9s) | documented |"
    )
    w(f"| jobs cancelled (by the chaos driver) | {fig.cancelled} | |")
    w(
        f"| throughput (completed jobs / s, first job created to last job final)"
        f" | {fig.throughput:,.0f} (peak 10 s: {fig.peak_10s_rate:,.0f}) | |"
    )
    w("")

    w("## Recovery after each kind of fault\n")
    w(
        "Median / worst, seconds from the fault. *Next completion*: the first job completed"
        " after it (after the server was back, for a restart). *Half rate*: the first"
        " 1 s window with at least half the completions/s of the 5 s before the fault"
        " (n/a when the queue was idle or empty). For kill -9: how long until every job the"
        " killed worker held was completed by another worker (stuck timeout + detection +"
        " retry).\n"
    )
    w("| fault | count | next completion | half rate | other |")
    w("| --- | ---: | --- | --- | --- |")
    for kind in KIND_NAMES:
        fs = [f for f in fig.faults if f.kind == kind]
        if not fs:
            note = rec.restart_note if kind == "restart" and rec.restart_note else "none"
            w(f"| {KIND_NAMES[kind]} | 0 | {note} | | |")
            continue
        other = ""
        if kind == "kill9":
            other = (
                f"{sum(f.held for f in fs)} jobs held by killed workers; all done again in "
                + _spread(f.held_rescued_in for f in fs)
            )
        if kind == "restart":
            took = [float(d.split("back after ")[1].rstrip("s")) for d in _details(fs)]
            other = f"server down (restart call) {_spread(took)}" if took else ""
        w(
            f"| {KIND_NAMES[kind]} | {len(fs)} | {_spread(f.first_completion for f in fs)}"
            f" | {_spread(f.half_rate for f in fs)} | {other} |"
        )
    w("")

    w("## Jobs\n")
    w("| | count |")
    w("| --- | ---: |")
    w(f"| created (acknowledged by create_jobs) | {_n(fig.created)} |")
    if fig.not_created:
        w(f"| not created (production stopped at the deadline) | {_n(fig.not_created)} |")
    w(f"| missing from job_queue | {len(fig.missing)} |")
    for status in ("completed", "cancelled", "failed", "expired"):
        label = f"{status} (final)" if status == "failed" else status
        w(f"| {label} | {_n(fig.statuses.get(status, 0))} |")
    for status, count in sorted(fig.unfinished.items()):
        w(f"| **unfinished: {status}** | {_n(count)} |")
    w(f"| failed for good, by error code | {_codes(fig.failed_final_by_code)} |")
    w(
        f"| cancel_job calls: cancelled / too late (finished first) | {fig.cancels_confirmed}"
        f" / {fig.cancels_too_late} |"
    )
    w(f"| cancelled jobs the driver did not cancel | {fig.cancelled_unexplained} |")
    w(f"| doomed jobs that did not fail (expected 0) | {fig.doomed_not_failed} |")
    w(
        "| flaky jobs completed on their first attempt (expected 0)"
        f" | {fig.flaky_completed_first_try} |"
    )
    w(f"| create_jobs calls retried after a lost connection | {fig.create_retries} |")
    w("")

    w("## Executions\n")
    w(
        f"{_n(fig.executions)} handler runs recorded, {_n(fig.executions_finished)} finished"
        f" their work. Runs per job: {_codes(fig.runs_per_job)}. Jobs failed STUCK and"
        f" retried: {fig.stuck_rescues}. Oldest heartbeat of a processing job seen:"
        f" {fig.max_heartbeat_age:.1f} s; jobs seen past the stuck timeout + margin while"
        f" their worker lived (a slow rescue, not stuck): {fig.slow_rescue_live_holder}.\n"
    )
    w("Why a run was not a job's last one:\n")
    w("| cause | runs |")
    w("| --- | ---: |")
    for cause, count in sorted(fig.reexecutions_by_cause.items(), key=lambda kv: -kv[1]):
        w(f"| {cause} | {_n(count)} |")
    if not fig.reexecutions_by_cause:
        w("| (none: every job ran once) | 0 |")
    w("")

    w("## The at-least-once window\n")
    w(
        f"{fig.double_success_jobs} completed jobs had their handler finish its work more"
        f" than once ({fig.double_success_extra} extra runs), with {fig.kill9s} workers"
        f" killed with kill -9 ({fig.kill9_interrupted_jobs} jobs held by them at that"
        " moment). By cause of the extra finished run:"
        f" {_codes(fig.double_success_by_cause) or 'none'}.\n"
    )
    w(
        "A worker killed after a handler returned but before its completion was written"
        " leaves the job `processing`; stuck detection fails it (`STUCK`) and another"
        " worker runs it again. The job is still completed once, by its last holder, with"
        " that run's result; the first run's side effects happened too. Handlers make this"
        " harmless by keying their side effects on `ctx.job.id` (an upsert, a unique"
        " constraint, an idempotency key sent to the payment API), or by deduplicating on"
        " the way in with `find_or_create_job`.\n"
    )
    for ex in fig.double_success_examples:
        w(f"- {ex}")
    if fig.double_success_examples:
        w("")

    w("## Faults\n")
    w("| # | at | fault | next completion | half rate | kill -9: held, done again in |")
    w("| ---: | ---: | --- | ---: | ---: | --- |")
    for f in fig.faults:
        held = ""
        if f.kind == "kill9":
            held = f"{f.held_completed}/{f.held} in {_s(f.held_rescued_in)}"
            held += "".join(f", {v} {k}" for k, v in sorted(f.held_other.items()))
        w(
            f"| {f.n} | {f.at:.1f} s | {f.detail} | {_s(f.first_completion)}"
            f" | {_s(f.half_rate)} | {held} |"
        )
    if rec.restart_note:
        w(f"\nPostgreSQL restarts: {rec.restart_note}.")
    w("")

    if fig.unexplained_examples:
        w("## Re-executions no fault explains\n")
        for ex in fig.unexplained_examples:
            w(f"- {ex}")
        w("")

    if fig.anomalies or fig.missing:
        w("## Anomalies\n")
        for a in fig.anomalies:
            w(f"- {a.splitlines()[0]}")
        if fig.missing:
            w(f"- missing jobs (first 20): {', '.join(fig.missing)}")
        w("")

    w("## Run\n")
    w("| setting | value |")
    w("| --- | --- |")
    settings: list[tuple[str, Any]] = [
        ("jobs", _n(cfg.jobs)),
        (
            "worker processes",
            f"{cfg.workers} (`jobq worker soak.app:registry`), concurrency {cfg.concurrency}",
        ),
        ("workers started in all", rec.workers_started),
        (
            "worker knobs",
            f"--stuck-timeout {cfg.stuck_timeout:g} --heartbeat-interval"
            f" {cfg.heartbeat_interval:g} --maintenance-every '{cfg.maintenance_every}'"
            f" --poll-interval {cfg.poll_interval:g}",
        ),
        ("job_queue_config", "retry_base_delay 0, retry_max_delay 1 s"),
        (
            "producer",
            f"create_jobs as service, {cfg.batch} per call, "
            + (f"{cfg.rate:g} jobs/s" if cfg.rate > 0 else "as fast as the backlog allows")
            + f", backlog <= {_n(cfg.backlog)}, {cfg.users} users",
        ),
        (
            "handlers",
            f"soak.cpu (sync) and soak.io (async): {cfg.cpu_ms[0]:g}-{cfg.cpu_ms[1]:g} ms"
            f" hashing + {cfg.wait_ms[0]:g}-{cfg.wait_ms[1]:g} ms waiting; flaky"
            f" {cfg.flaky_rate:.1%}, doomed {cfg.doomed_rate:.1%}, progress + log"
            f" {cfg.talk_rate:.0%}",
        ),
        (
            "faults",
            f"every {cfg.fault_gap[0]:g}-{cfg.fault_gap[1]:g} s, mix "
            + ", ".join(f"{k}={v}" for k, v in cfg.fault_mix.items())
            + (f", at most {cfg.max_faults}" if cfg.max_faults is not None else ""),
        ),
        ("faults run", ", ".join(f"{v} {k}" for k, v in sorted(fig.fault_counts.items()))),
        ("PostgreSQL restart", rec.restart_how or rec.restart_note),
        ("bound", f"{cfg.duration:g} s in all, faults and production stop {cfg.drain:g} s before"),
        ("every job final at the end", "yes" if rec.all_final else "**no**"),
    ]
    for k, v in settings:
        w(f"| {k} | {v} |")
    w("")
    w("## Machine\n")
    w("| | |")
    w("| --- | --- |")
    for k, v in machine.items():
        w(f"| {k} | {v} |")
    w("")
    w("## Rerun\n")
    w(
        "`make soak` (100,000 jobs), `make soak SOAK_ARGS='--jobs 20000 --seed 7'`, or"
        " `python -m soak --help`. With `DATABASE_URL` set it runs on that server (in a"
        " scratch database it drops); without, on its own embedded PostgreSQL 18.\n"
    )
    return "\n".join(out)


def _details(fs: list[FaultFigures]) -> list[str]:
    return [f.detail for f in fs if "back after " in f.detail]


def _codes(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {_n(v)}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
