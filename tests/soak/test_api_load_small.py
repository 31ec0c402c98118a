"""The sustained API load tool, small: 10 users for about 5 s against a real
``jobq serve`` and a worker. Every operation answers, none with an error (a 429
on create is the per-user limit, not an error), and the report renders.

``make load`` runs the full one (50 users, 10 minutes); see soak/api_load.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))  # the soak and bench packages, as the worker imports them

from soak.api_load import OPS, LoadConfig, headline, passed, render, run_load  # noqa: E402


def test_small_api_load_has_no_errors(database_url: str, tmp_path: Path) -> None:
    # short jobs, so that every one created is done when the test looks
    cfg = LoadConfig(users=10, duration=5.0, drain=30.0, steps=3, step_ms=20.0)
    fig = run_load(cfg, database_url, tmp_path)
    print(render(fig, {"machine": "test"}, "test_api_load_small", "ci"))
    print(headline(fig))

    assert fig["errors"] == 0, fig["error_examples"]
    assert fig["five_xx"] == 0
    assert fig["transport_errors"] == 0
    for op in OPS:
        assert fig["operations"][op]["requests"] > 0, op
        assert fig["operations"][op]["rps"] > 0, op
    assert passed(fig)
    assert fig["jobs_created"] > 0
    # the worker ran them: progress and log lines written, every job completed
    assert fig["jobs_at_end"].get("completed", 0) == fig["jobs_created"], fig["jobs_at_end"]
    assert fig["writes"]["log_rows"] >= fig["jobs_created"] * cfg.steps
    assert (
        fig["after"]["sizes"]["job_queue"]["total"] >= fig["before"]["sizes"]["job_queue"]["total"]
    )
    assert fig["after"]["stats"]["job_queue"]["inserted"] == fig["jobs_created"]
