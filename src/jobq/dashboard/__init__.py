"""The web dashboard: static HTML, CSS and JS (no build step) served by the API.

``mount(app)`` serves the page at ``/`` and its files under ``/dashboard/``. The
page talks to the API like any client: a bearer token (pasted in, or handed
over in the URL fragment ``/#token=...`` by ``jobq up``; a fragment never
reaches the server), JSON endpoints, and ``/events`` read with ``fetch()`` so
that the token travels in the Authorization header, never in a URL.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(str(files("jobq.dashboard") / "static"))

# The page loads nothing from elsewhere and may not be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def mount(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` (index.html) and ``/dashboard/*`` (its files)."""

    @app.get("/", include_in_schema=False)
    async def dashboard_index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)

    app.mount("/dashboard", StaticFiles(directory=STATIC), name="dashboard")
