"""``python -m bench [--quick] [--only spec,scale,throughput,latency] [--large-jobs N ...]``

Runs the benchmarks on $DATABASE_URL or the embedded PostgreSQL 18 (each in
scratch databases it drops at the end), prints the table and writes
``bench/results/<date>[-quick].md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
from pathlib import Path

from bench import common, latency, report, scale, spec_table, throughput
from bench.results_model import Section

HERE = Path(__file__).resolve().parent
SECTIONS = ("spec", "scale", "throughput", "latency")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, a couple of minutes")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--large-jobs", type=int, help="jobs in the large scale table (full: 10M)")
    ap.add_argument("--large-logs", type=int, help="log rows in the large scale table (full: 10M)")
    ap.add_argument("--spec-jobs", type=int, help="jobs in the spec table database (full: 1M)")
    ap.add_argument("--seconds", type=float, help="seconds per throughput measurement")
    ap.add_argument(
        "--merge", action="store_true", help="keep other sections of today's earlier run"
    )
    ap.add_argument("--rounds", type=int, help="interleaved rounds per throughput figure")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="where results go")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")

    spec_sizes = spec_table.QUICK if args.quick else spec_table.FULL
    if args.spec_jobs:
        spec_sizes = dataclasses.replace(
            spec_sizes, jobs=args.spec_jobs, users=max(1, args.spec_jobs // 1000)
        )
    scale_sizes = scale.QUICK if args.quick else scale.FULL
    if args.large_jobs:
        scale_sizes = dataclasses.replace(scale_sizes, large_jobs=args.large_jobs)
    if args.large_logs:
        scale_sizes = dataclasses.replace(scale_sizes, large_logs=args.large_logs)
    tput_sizes = throughput.QUICK if args.quick else throughput.FULL
    if args.rounds:
        tput_sizes = dataclasses.replace(tput_sizes, rounds=args.rounds)
    if args.seconds:
        tput_sizes = dataclasses.replace(tput_sizes, seconds=args.seconds)
    lat_sizes = latency.QUICK if args.quick else latency.FULL

    admin = common.admin_url()
    machine = common.machine_info(admin)
    started = time.perf_counter()
    sections: dict[str, Section] = {}
    try:
        for name in only:
            print(f"== {name} ...", file=sys.stderr, flush=True)
            if name == "spec":
                sections[name] = spec_table.run(admin, spec_sizes)
            elif name == "scale":
                sections[name] = scale.run(admin, scale_sizes)
            elif name == "throughput":
                sections[name] = throughput.run(admin, tput_sizes)
            elif name == "latency":
                sections[name] = latency.run(admin, lat_sizes)
            print(f"   {name} took {sections[name].seconds:.0f} s", file=sys.stderr, flush=True)
    finally:
        common.drop_all()
    total = time.perf_counter() - started
    machine["load at end"] = common.machine_load()

    today = dt.date.today().isoformat()
    stem = today + ("-quick" if args.quick else "")
    mode = "quick" if args.quick else "full"
    title = f"jobq benchmarks, {today} ({mode} mode)"
    header = [
        f"`python -m bench{' --quick' if args.quick else ''}` ran {', '.join(only)} "
        f"in {total / 60:.1f} minutes.",
        "Sizes: "
        + "; ".join(
            f"{k}: {v}"
            for k, v in (
                ("spec", spec_sizes),
                ("scale", scale_sizes),
                ("throughput", tput_sizes),
                ("latency", lat_sizes),
            )
            if k in only
        ),
        "",
        "Latencies are client-side wall time of the named query jobq runs (queries.sql), as the",
        "identity that runs it, one transaction per call; writes include their COMMIT",
        "(fsync on). Plans are what auto_explain reported for the statements inside the",
        "function (EXPLAIN ANALYZE, FORMAT JSON). Rates are closed-loop, one process per client.",
        "Baselines use a table made with LIKE job_queue INCLUDING ALL: same columns and",
        "indexes, no triggers, no RLS. Spec rows are judged on p50 (the note says when p95",
        "is over the figure); ratios of rates are medians of interleaved rounds.",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / f"{stem}.json"
    if args.merge and previous.exists():
        # Keep the sections of an earlier run today that this run did not redo.
        _, before = report.load_json(previous)
        kept = [k for k in before if k not in sections]
        for k in kept:
            sections[k] = before[k]
        if kept:
            header.append("")
            header.append(f"Sections {', '.join(kept)} are from an earlier run today (--merge).")
        sections = {k: sections[k] for k in SECTIONS if k in sections}
    md = report.markdown(title, machine, sections, header)
    (args.out / f"{stem}.md").write_text(md)
    report.save_json(args.out / f"{stem}.json", machine, sections)
    source = f"bench/results/{stem}.md"
    (args.out / f"{stem}-summary.md").write_text(report.summary(machine, sections, source))
    report.chart(args.out / f"{stem}.png", sections, title)
    print(md)
    print(f"wrote {args.out / (stem + '.md')} and .png/.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
