"""The report: a Markdown table per section, the machine, and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

from bench.results_model import Row, Section

TITLES = {
    "spec": "The spec's table",
    "scale": "Scale",
    "throughput": "Throughput (full semantics)",
    "latency": "Latency",
    "baseline": "Baselines (raw SQL, same server, same run)",
    "cost": "Cost breakdown",
}
ORDER = ["spec", "scale", "throughput", "latency", "baseline", "cost"]


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return ""
    if unit == "/s":
        return f"{v:,.0f}/s"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _ok(ok: bool | None) -> str:
    return {True: "met", False: "**missed**", None: ""}[ok]


def table(rows: list[Row]) -> str:
    out = [
        "| figure | size | p50 / rate | p95 (ms) | target | met? | ratio | plan / note |",
        "| --- | --- | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for r in rows:
        p50 = _num(r.p50, r.unit) + (" ms" if r.unit == "ms" and r.p50 is not None else "")
        p95 = _num(r.p95, "ms") if r.unit == "ms" else ""
        ratio = f"{r.ratio:.2f} x {r.ratio_of}" if r.ratio is not None else ""
        extra = "; ".join(x for x in (r.plan, r.note) if x)
        out.append(
            f"| {r.name} | {r.size} | {p50} | {p95} | {r.target} | {_ok(r.ok)} | {ratio}"
            f" | {extra} |"
        )
    return "\n".join(out)


def markdown(
    title: str, machine: dict[str, str], sections: dict[str, Section], header: list[str]
) -> str:
    rows = [r for s in sections.values() for r in s.rows]
    lines = [f"# {title}", ""]
    lines += header
    lines += ["", "## Machine", ""]
    lines += ["| | |", "| --- | --- |"]
    keys = ("cpu", "cores", "ram", "postgres", "python", "kernel", "server", "pg_settings")
    for k in (*keys, "load at start", "load at end"):
        lines.append(f"| {k} | {machine.get(k, '')} |")
    for key in ORDER:
        sel = [r for r in rows if r.section == key]
        if sel:
            lines += ["", f"## {TITLES[key]}", "", table(sel)]
    notes = [n for s in sections.values() for n in s.notes]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    timing = ", ".join(f"{k} {s.seconds:.0f} s" for k, s in sections.items())
    lines += ["", f"Time taken: {timing}."]
    return "\n".join(lines) + "\n"


def chart(path: Path, sections: dict[str, Section], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for s in sections.values() for r in s.rows]
    spec = [r for r in rows if r.section in ("spec", "scale") and r.unit == "ms" and r.p50]
    ratios = [r for r in rows if r.ratio is not None and r.section in ("throughput", "latency")]
    fig, axes = plt.subplots(1, 2, figsize=(16, max(6, 0.32 * max(len(spec), len(ratios)) + 2)))
    ax = axes[0]
    labels = [f"{r.name[:48]} [{r.size[:28]}]" for r in spec]
    ax.barh(range(len(spec)), [r.p50 or 0 for r in spec], color="#4c78a8", label="p50")
    ax.barh(
        range(len(spec)),
        [max(0.0, (r.p95 or 0) - (r.p50 or 0)) for r in spec],
        left=[r.p50 or 0 for r in spec],
        color="#9ecae9",
        label="p95",
    )
    for i, r in enumerate(spec):
        limit = _limit(r.target)
        if limit:
            ax.plot([limit, limit], [i - 0.4, i + 0.4], color="#e45756", lw=2)
    ax.set_yticks(range(len(spec)), labels, fontsize=7)
    ax.invert_yaxis()
    if spec:
        ax.set_xscale("log")
    ax.set_xlabel("ms (log scale); red tick = spec's figure")
    ax.set_title("Query latency (p50, p95)")
    ax.legend(loc="lower right")
    ax = axes[1]
    ax.barh(
        range(len(ratios)),
        [r.ratio or 0 for r in ratios],
        color=["#54a24b" if r.ok or r.ok is None else "#e45756" for r in ratios],
    )
    ax.set_yticks(range(len(ratios)), [r.name[:60] for r in ratios], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ratio to the same-run raw-SQL baseline")
    ax.set_title("jobq / baseline (green: target met or none)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _limit(target: str) -> float | None:
    import re

    m = re.search(r"< ([0-9.]+) ms", target)
    return float(m.group(1)) if m else None


def save_json(path: Path, machine: dict[str, str], sections: dict[str, Section]) -> None:
    data = {
        "machine": machine,
        "sections": {
            k: {"rows": [r.as_dict() for r in s.rows], "notes": s.notes, "seconds": s.seconds}
            for k, s in sections.items()
        },
    }
    path.write_text(json.dumps(data, indent=1, default=str))


def load_json(path: Path) -> tuple[dict[str, str], dict[str, Section]]:
    data = json.loads(path.read_text())
    sections = {
        k: Section(rows=[Row(**r) for r in v["rows"]], notes=v["notes"], seconds=v["seconds"])
        for k, v in data["sections"].items()
    }
    return data["machine"], sections


def summary(machine: dict[str, str], sections: dict[str, Section], source: str) -> str:
    """The short table for the README: every judged figure, its target and ratio."""
    lines = [
        f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('ram')} RAM, "
        f"PostgreSQL {machine.get('postgres')} ({machine.get('server')}, default settings, "
        f"fsync on), Python {machine.get('python')}; shared with other test runs "
        f"({machine.get('load at start')}). Full report: `{source}`.",
        "",
        "| figure | size | jobq | target | met? |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for key in ORDER:
        for r in (r for s in sections.values() for r in s.rows if r.section == key):
            if key in ("baseline", "cost"):
                continue
            if key == "scale" and r.ratio is None:
                continue
            if r.unit == "/s":
                value = f"{r.p50:,.0f}/s"
            else:
                value = f"{_num(r.p50, 'ms')} ms (p95 {_num(r.p95, 'ms')})"
            if r.ratio is not None:
                value += f"; {r.ratio:.2f} x {r.ratio_of}"
            lines.append(f"| {r.name} | {r.size} | {value} | {r.target} | {_ok(r.ok)} |")
    return "\n".join(lines) + "\n"
