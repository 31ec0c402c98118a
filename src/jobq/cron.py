"""Schedules: cron expressions (as pg_cron reads them) or ``@every 30s``.

Ticks are pure functions of the schedule and the clock, so every worker computes
the same tick times: that is what lets periodic jobs be enqueued exactly once
per tick (the tick time is part of the dedup key).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

_EVERY = re.compile(r"^@every\s+(\d+)\s*(s|m|h)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class Schedule:
    text: str
    every: timedelta | None  # None: a cron expression

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment`` (UTC)."""
        moment = moment.astimezone(UTC)
        if self.every is not None:
            step = self.every.total_seconds()
            ticks = int(moment.timestamp() // step) + 1
            return datetime.fromtimestamp(ticks * step, UTC)
        nxt: datetime = croniter(self.text, moment).get_next(datetime)
        return nxt.astimezone(UTC)

    def last_at_or_before(self, moment: datetime) -> datetime:
        """The latest tick at or before ``moment`` (UTC)."""
        moment = moment.astimezone(UTC)
        if self.every is not None:
            step = self.every.total_seconds()
            return datetime.fromtimestamp((moment.timestamp() // step) * step, UTC)
        prev: datetime = croniter(self.text, moment + timedelta(microseconds=1)).get_prev(datetime)
        return prev.astimezone(UTC)

    @property
    def is_cron(self) -> bool:
        return self.every is None


def parse_schedule(text: str) -> Schedule:
    """Parse ``text``; raise ValueError with the reason when it is not a schedule."""
    text = text.strip()
    m = _EVERY.match(text)
    if m:
        seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        if seconds <= 0:
            raise ValueError(f"schedule {text!r}: the period must be positive")
        return Schedule(text, timedelta(seconds=seconds))
    if not croniter.is_valid(text) or len(text.split()) != 5:
        raise ValueError(
            f"schedule {text!r} is neither a 5-field cron expression nor '@every N(s|m|h)'"
        )
    return Schedule(text, None)
