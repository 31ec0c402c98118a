"""``python -m soak [--jobs N] [--workers 3] [--duration S] [--seed N] ...``

Runs the chaos soak on ``$DATABASE_URL`` (or ``--database-url``), else on the
soak's own embedded PostgreSQL 18 (never the user's: the soak restarts it), in a
scratch database it drops at the end. Prints the figures, writes
``soak/results/<date>.md`` (and ``.json``), exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

from jobq import embedded
from soak import run_soak
from soak.config import SoakConfig, parse_mix, parse_range
from soak.driver import scratch_dir
from soak.report import headline, machine_info, render
from soak.server import (
    create_scratch,
    drop_scratch,
    find_restarter,
    server_facts,
    soak_embedded_dir,
    use_embedded,
)

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = SoakConfig()
    ap = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    ap.add_argument("--jobs", type=int, default=d.jobs, help="jobs to run (default %(default)s)")
    ap.add_argument("--workers", type=int, default=d.workers, help="worker processes")
    ap.add_argument("--concurrency", type=int, default=d.concurrency, help="jobs per worker")
    ap.add_argument(
        "--duration", type=float, default=d.duration, help="hard bound on the run, seconds"
    )
    ap.add_argument(
        "--drain", type=float, default=d.drain, help="fault-free seconds left at the end"
    )
    ap.add_argument("--seed", type=int, default=None, help="RNG seed (default: random)")
    ap.add_argument("--rate", type=float, default=d.rate, help="jobs/s created (0: backlog-bound)")
    ap.add_argument("--backlog", type=int, default=d.backlog, help="most unfinished jobs at once")
    ap.add_argument("--batch", type=int, default=d.batch, help="jobs per create_jobs call")
    ap.add_argument(
        "--fault-gap",
        default="{:g}:{:g}".format(*d.fault_gap),
        help="seconds between faults, MIN:MAX",
    )
    ap.add_argument(
        "--faults",
        default=",".join(f"{k}={v}" for k, v in d.fault_mix.items()),
        help="fault mix, kind=weight (kill9, terminate, restart, cancel, sigterm)",
    )
    ap.add_argument("--max-faults", type=int, default=None, help="stop the chaos after N faults")
    ap.add_argument("--no-restart", action="store_true", help="never restart PostgreSQL")
    ap.add_argument(
        "--pg-down",
        type=float,
        default=d.pg_down,
        help="keep PostgreSQL down up to this many extra seconds per restart",
    )
    ap.add_argument("--stuck-timeout", type=float, default=d.stuck_timeout)
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument(
        "--embedded-dir",
        type=Path,
        default=soak_embedded_dir(),
        help="the soak's embedded cluster, when no database URL is given",
    )
    ap.add_argument("--out", type=Path, default=HERE / "results", help="where the report goes")
    ap.add_argument("--name", help="report file name without extension (default: the date)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the workers' logs")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(3), "big")
    cfg = SoakConfig(
        jobs=args.jobs,
        workers=args.workers,
        concurrency=args.concurrency,
        duration=args.duration,
        drain=args.drain,
        seed=seed,
        rate=args.rate,
        backlog=args.backlog,
        batch=args.batch,
        fault_gap=parse_range(args.fault_gap),
        fault_mix=parse_mix(args.faults),
        max_faults=args.max_faults,
        restart=not args.no_restart,
        pg_down=args.pg_down,
        stuck_timeout=args.stuck_timeout,
        quiet=args.quiet,
    )
    try:
        cfg.validate()
    except ValueError as exc:
        print(f"python -m soak: {exc}", file=sys.stderr)
        return 2

    started_embedded = False
    if args.database_url:
        admin_url = args.database_url
        server_kind = "DATABASE_URL"
    else:
        admin_url, started_embedded = use_embedded(args.embedded_dir)
        server_kind = f"embedded ({args.embedded_dir})"
    command = "python -m soak " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.seed is None:
        command += f"  # --seed {seed}"
    print(f"soak: {cfg.jobs:,} jobs, {cfg.workers} workers, seed {seed}, server {server_kind}")

    name, url = create_scratch(admin_url)
    exit_code = 1
    try:
        restarter, note = find_restarter(admin_url)
        if restarter is None and cfg.restart:
            print(f"soak: no PostgreSQL restarts: {note}")
        facts = server_facts(url)
        with scratch_dir(keep=args.keep_logs) as logs:
            t = time.time()
            load_before = os.getloadavg()[0]
            rec, fig = run_soak(cfg, url, restarter=restarter, log_dir=logs, restart_note=note)
            date = dt.date.today().isoformat()
            machine = machine_info(facts, server_kind)
            # other work on the machine shares its cores: say how busy it was
            machine["load average (1 min), start / end"] = (
                f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"
            )
            text = render(rec, fig, machine, command, date)
            args.out.mkdir(parents=True, exist_ok=True)
            stem = args.name or date
            (args.out / f"{stem}.md").write_text(text)
            (args.out / f"{stem}.json").write_text(
                json.dumps(
                    {"config": cfg.__dict__, "machine": machine, "figures": fig.to_json()},
                    indent=1,
                    default=str,
                )
            )
            print(f"\n{headline(fig)}")
            print(f"report: {args.out / (stem + '.md')} ({time.time() - t:.0f} s)")
            if args.keep_logs:
                print(f"worker logs: {logs}")
            exit_code = 0 if fig.passed else 1
    finally:
        try:
            drop_scratch(admin_url, name)
        except Exception as exc:
            print(f"soak: could not drop {name}: {exc}", file=sys.stderr)
        if started_embedded:
            embedded.stop()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
