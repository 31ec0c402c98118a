"""The named queries of ``jobq/sql/queries.sql``, loaded once and fetched by name.

The file is a list of blocks, each starting with a ``-- name: <name>`` line
(procrastinate's layout)::

    -- name: cancel_job
    SELECT public.cancel_job(p_job_id => %(job_id)s::uuid) AS status;

``get("cancel_job")`` returns that block as a :class:`psycopg.sql.SQL`, ready
for ``cursor.execute(query, params)``.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from psycopg import sql

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split a named-query file into ``{name: sql}`` (comments kept, ``;`` dropped)."""
    found: dict[str, str] = {}
    marks = list(_NAME.finditer(text))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end() : end].strip().rstrip(";").rstrip()
        name = mark.group(1)
        if name in found:
            raise ValueError(f"query {name!r} is defined twice")
        if not body:
            raise ValueError(f"query {name!r} is empty")
        found[name] = body
    return found


@cache
def _all() -> dict[str, sql.SQL]:
    text = files("jobq").joinpath("sql", "queries.sql").read_text(encoding="utf-8")
    # The file ships with the package: it is as trusted as a literal in the code.
    return {name: sql.SQL(body) for name, body in parse(text).items()}


def names() -> list[str]:
    """Every query name, in file order."""
    return list(_all())


def get(name: str) -> sql.SQL:
    """The query called ``name``; KeyError naming the known ones if there is none."""
    try:
        return _all()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in queries.sql (known: {names()})") from None
