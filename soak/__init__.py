"""jobq's chaos soak: many jobs through worker processes while a driver breaks things.

``python -m soak`` (``make soak``) runs it and writes ``soak/results/<date>.md``;
``run_soak`` runs it on a database the caller made (the CI test does).
See ``soak/driver.py`` for what happens and ``soak/analysis.py`` for what counts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from soak.analysis import Figures, analyse
from soak.config import SoakConfig
from soak.driver import RunRecord, Soak
from soak.report import headline, machine_info, render
from soak.server import Restarter, find_restarter, server_facts

__all__ = [
    "Figures",
    "Restarter",
    "RunRecord",
    "SoakConfig",
    "find_restarter",
    "headline",
    "machine_info",
    "render",
    "run_soak",
    "server_facts",
]


def run_soak(
    cfg: SoakConfig,
    url: str,
    *,
    restarter: Restarter | None,
    log_dir: Path,
    restart_note: str = "",
    echo: Callable[[str], None] | None = None,
) -> tuple[RunRecord, Figures]:
    """Run the soak on ``url`` (a migrated jobq database it may fill and break)."""
    rec = Soak(cfg, url, restarter, log_dir, restart_note=restart_note, echo=echo).run()
    return rec, analyse(rec, url)
