"""Handlers the benchmark's worker processes run (``jobq worker bench.worker_app:registry``)."""

from __future__ import annotations

import time
from typing import Any

from jobq.handlers import JobContext, Registry

registry = Registry()


@registry.handler()
async def noop(ctx: JobContext) -> None:
    """Does nothing: what is left is the queue's own cost per job."""
    return None


@registry.handler()
async def stamp(ctx: JobContext) -> dict[str, Any]:
    """Returns the wall-clock time at which the handler started."""
    return {"t": time.time()}
