"""Exceptions: one class per SQLSTATE that jobq's SQL raises.

The database decides (caller checks, state machine, limits); Python only maps
its answer to a class a caller can catch. ``sqlstate`` keeps the raw code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


class JobqError(Exception):
    """Base of every error jobq raises on purpose."""

    sqlstate: str | None = None

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if sqlstate is not None:
            self.sqlstate = sqlstate


class Forbidden(JobqError):
    """42501: the caller may not act for that user, or may not call that function."""


class NotFound(JobqError):
    """P0002: no such job, or not the caller's (existence is never revealed)."""


class InvalidInput(JobqError):
    """22023 and friends: an argument is malformed or out of range."""


class PayloadTooLarge(JobqError):
    """54000: params, result or a message is over its size cap."""


class InvalidTransition(JobqError):
    """55000: the job is not in a state that allows this (or not held by this worker)."""


class RateLimited(JobqError):
    """53400: the user already has the maximum number of active jobs."""


class DatabaseUnavailable(JobqError):
    """The database could not be reached (connection refused, restarting, ...)."""


# Class 22 (data exceptions: bad uuid, bad json, out-of-range values) and class
# 23 (a value a constraint refused) are the caller's input.
_BY_SQLSTATE: dict[str, type[JobqError]] = {
    "42501": Forbidden,
    "P0002": NotFound,
    "54000": PayloadTooLarge,
    "55000": InvalidTransition,
    "53400": RateLimited,
}


def error_class(sqlstate: str | None) -> type[JobqError] | None:
    """The jobq exception class for a SQLSTATE, or None if it is not one of ours."""
    if sqlstate is None:
        return None
    if sqlstate in _BY_SQLSTATE:
        return _BY_SQLSTATE[sqlstate]
    if sqlstate.startswith(("22", "23")):
        return InvalidInput
    if sqlstate.startswith("08") or sqlstate in {"57P01", "57P02", "57P03"}:
        return DatabaseUnavailable
    return None


def translate(exc: psycopg.Error) -> Exception:
    """The jobq exception for a psycopg error (the error itself if not ours)."""
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        return DatabaseUnavailable(str(exc).strip() or "database unavailable")
    if isinstance(exc, psycopg.DataError) and exc.sqlstate is None:
        # refused by psycopg before it reached the server (a NUL in a string, say)
        return InvalidInput(str(exc).strip() or "invalid input")
    cls = error_class(exc.sqlstate)
    if cls is None:
        return exc
    message = exc.diag.message_primary or str(exc)
    return cls(message, sqlstate=exc.sqlstate)


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise psycopg errors as jobq exceptions (chained, so nothing is hidden)."""
    try:
        yield
    except psycopg.Error as exc:
        mapped = translate(exc)
        if mapped is exc:
            raise
        raise mapped from exc
