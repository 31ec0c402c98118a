"""JSON bodies, and every error as ``{"error": {"code": ..., "message": ...}}``.

The database decides; this module only maps its answer (a jobq exception,
i.e. a SQLSTATE) to an HTTP status. Unexpected exceptions are logged here and
answered with a 500 that reveals nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from psycopg_pool import PoolTimeout
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobq import errors
from jobq.api.auth import AuthError, KeysUnavailable

log = logging.getLogger("jobq.api")

NO_STORE = "no-store"

# jobq exception -> (HTTP status, error code). Order matters: first match wins.
_STATUS: tuple[tuple[type[errors.JobqError], int, str], ...] = (
    (errors.InvalidInput, 400, "invalid_input"),
    (errors.Forbidden, 403, "forbidden"),
    (errors.NotFound, 404, "not_found"),
    (errors.InvalidTransition, 409, "invalid_transition"),
    (errors.PayloadTooLarge, 413, "payload_too_large"),
    (errors.RateLimited, 429, "rate_limited"),
    (errors.DatabaseUnavailable, 503, "database_unavailable"),
)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}

NOT_FOUND_MESSAGE = "job not found"


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(payload: Any) -> bytes:
    """Compact JSON; UUIDs, datetimes and dataclasses (Job, JobLog, ...) included."""
    return json.dumps(payload, default=_default, separators=(",", ":"), ensure_ascii=False).encode()


class JSONBody(Response):
    media_type = "application/json"


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = dumps({"error": {"code": code, "message": message}})
    all_headers = {"Cache-Control": NO_STORE, **(headers or {})}
    return JSONBody(body, status_code=status, headers=all_headers)


def _retry_after(request: Request) -> dict[str, str]:
    seconds = getattr(request.app.state.jobq.settings, "retry_after", 5)
    return {"Retry-After": str(seconds)}


async def _jobq_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.JobqError)
    status, code = next(
        ((s, c) for cls, s, c in _STATUS if isinstance(exc, cls)), (400, "invalid_input")
    )
    message = exc.message
    headers: dict[str, str] = {}
    if status == 404:
        message = NOT_FOUND_MESSAGE  # one answer for "no such job" and "not yours"
    elif status in (429, 503):
        headers = _retry_after(request)
    if status == 503:
        log.warning("database unavailable: %s", exc.message)
        message = "the database is unavailable; retry later"
    return error_response(status, code, message, headers)


async def _auth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthError)
    challenge = f'Bearer error="invalid_token", error_description="{exc.code}"'
    if exc.code == "missing_token":
        challenge = "Bearer"
    return error_response(401, exc.code, exc.message, {"WWW-Authenticate": challenge})


async def _keys_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("JWKS unavailable: %s", exc)
    return error_response(
        503, "keys_unavailable", "token keys cannot be fetched; retry later", _retry_after(request)
    )


async def _database_down(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", exc)
    return error_response(
        503,
        "database_unavailable",
        "the database is unavailable; retry later",
        _retry_after(request),
    )


async def _psycopg_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, psycopg.Error)
    if isinstance(exc, psycopg.DataError) and exc.sqlstate is None:
        # Refused by psycopg before reaching the server (a NUL in a string, ...).
        return error_response(400, "invalid_input", str(exc).strip() or "invalid input")
    if isinstance(exc, psycopg.OperationalError):
        return await _database_down(request, exc)
    return await _unexpected(request, exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = exc.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        return error_response(400, "malformed_json", "the request body is not valid JSON")
    parts = []
    for p in problems[:5]:
        where = ".".join(str(x) for x in p.get("loc", ()) if x not in ("body",)) or "body"
        parts.append(f"{where}: {p.get('msg', 'invalid')}")
    return error_response(422, "validation_error", "; ".join(parts) or "invalid request")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, detail, dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


class BodyLimit:
    """ASGI middleware: request bodies over ``max_bytes`` get 413 (JSON), declared or not."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                await error_response(400, "bad_request", "bad Content-Length")(scope, receive, send)
                return
            if too_large:
                response = error_response(413, "payload_too_large", self._message)
                await response(scope, receive, send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._message)
            return message

        await self.app(scope, limited, send)

    @property
    def _message(self) -> str:
        return f"the request body is over {self.max_bytes} bytes"


def install(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into JSON errors."""
    app.add_exception_handler(AuthError, _auth_error)
    app.add_exception_handler(KeysUnavailable, _keys_unavailable)
    app.add_exception_handler(errors.JobqError, _jobq_error)
    app.add_exception_handler(PoolTimeout, _database_down)
    app.add_exception_handler(psycopg.Error, _psycopg_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
