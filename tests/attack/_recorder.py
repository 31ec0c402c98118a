"""The one recorder every attack goes through, and the verdicts it keeps.

``RECORDER.attempt(kind, who, target, fn)`` runs ``fn``, which returns a short
outcome ("refused 42501", "nothing", "literal", ...) when the attack was
refused or saw nothing, raises :class:`Leak` when it returned another user's
data, changed their state or succeeded where it must be refused, and raises
:class:`Unexpected` (or fails an assert) when the refusal was not the exact
one expected (another SQLSTATE or HTTP status). conftest.py fails the test
that recorded a leak or an unexpected outcome, naming them, and prints the
session's counts in the terminal summary.

Imported as ``from tests.attack._recorder import RECORDER`` everywhere, so that
there is one recorder per session.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The kinds of attack, in the order of the summary line.
KINDS = ("sql functions", "tables", "role escalation", "http", "events", "injection")


class Leak(Exception):
    """The attack returned another user's data, changed it, or was not refused."""


class Unexpected(Exception):
    """The attack was refused, but not with the exact SQLSTATE/status expected."""


@dataclass(frozen=True)
class Attempt:
    kind: str
    who: str
    target: str
    outcome: str  # what happened ("refused 42501", "nothing", ...), or why it is bad
    verdict: str  # "ok", "leak" or "unexpected"
    test: str

    def __str__(self) -> str:
        outcome = " ".join(self.outcome.split())
        return f"[{self.kind}] {self.who} -> {self.target}: {outcome}"


@dataclass
class Recorder:
    attempts: list[Attempt] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # findings that are not leaks
    current_test: str = ""

    def attempt(self, kind: str, who: str, target: str, fn: Callable[[], str]) -> Attempt:
        assert kind in KINDS, kind
        try:
            outcome, verdict = fn(), "ok"
        except Leak as exc:
            outcome, verdict = str(exc), "leak"
        except (Unexpected, AssertionError) as exc:
            outcome, verdict = str(exc) or repr(exc), "unexpected"
        found = Attempt(kind, who, target, outcome, verdict, self.current_test)
        self.attempts.append(found)
        return found

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def bad(self, test: str | None = None) -> list[Attempt]:
        return [a for a in self.attempts if a.verdict != "ok" and (test is None or a.test == test)]

    def summary(self) -> str:
        per_kind = Counter(a.kind for a in self.attempts)
        leaks = sum(a.verdict == "leak" for a in self.attempts)
        unexpected = sum(a.verdict == "unexpected" for a in self.attempts)
        kinds = ", ".join(f"{k} {per_kind[k]}" for k in KINDS if per_kind[k])
        line = f"attack suite: {len(self.attempts)} attempts, {leaks} leaks"
        if unexpected:
            line += f", {unexpected} unexpected refusals"
        return f"{line} ({kinds})"


RECORDER = Recorder()


def markers_in(value: Any, markers: frozenset[str]) -> list[str]:
    """The markers (ids, secrets) of the victim found in ``value``, rendered as text."""
    text = repr(value) if not isinstance(value, str | bytes) else str(value)
    return sorted(m for m in markers if m in text)
