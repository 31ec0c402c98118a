"""Browser tests of the dashboard: `jobq up` (API + dashboard + worker with the
example handlers, one asyncio loop) on a loopback port over a fresh database,
driven by Playwright in the machine's headless Chromium.

Playwright cannot download a browser here: it launches Debian's ``chromium``
(``/usr/bin/chromium``, or ``$JOBQ_CHROMIUM``). Without it the tests skip,
unless ``JOBQ_REQUIRE_BROWSER=1`` (CI sets it) turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pytest

from jobq.api import Settings, mint_token
from jobq.up import Started, Up, UpOptions

SECRET = "jobq-dashboard-test-secret-0123456789abcdef"  # noqa: S105
OTHER_USER = UUID("00000000-0000-4000-8000-0000000000b2")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    configured = os.environ.get("JOBQ_CHROMIUM")
    if configured:
        return configured if os.path.exists(configured) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def _unavailable(reason: str) -> None:
    if os.environ.get("JOBQ_REQUIRE_BROWSER") == "1":
        pytest.fail(f"the browser tests are required here (JOBQ_REQUIRE_BROWSER=1): {reason}")
    pytest.skip(reason)


# Module scope: Playwright's sync API keeps an asyncio loop running in the main
# thread while it is open, and tests elsewhere call asyncio.run() there.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    path = chromium_path()
    if path is None:
        _unavailable("no chromium binary (apt-get install chromium, or set JOBQ_CHROMIUM)")
    expect.set_options(timeout=30_000)  # a loaded CI machine is slower than 5 s at times
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Running:
    up: Up
    started: Started
    thread: threading.Thread

    @property
    def url(self) -> str:
        return self.started.url

    def token_for(self, user: UUID) -> str:
        return mint_token(SECRET, user_id=user, ttl=3600)


def start_up(database_url: str, **options: Any) -> Running:
    """`jobq up` in a thread (its own asyncio loop), on a free loopback port."""
    opts = UpOptions(
        port=0,
        database_url=database_url,
        seed=options.pop("seed", 0),
        settings=Settings(database_url=database_url, jwt_secret=SECRET, pool_max_size=4),
        shutdown_grace=1.0,
        **options,
    )
    up = Up(opts)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(up.run())
        except BaseException as exc:  # reported by the fixture
            failure.append(exc)
            up.ready.set()

    thread = threading.Thread(target=run, name="jobq-up", daemon=True)
    thread.start()
    if not up.ready.wait(60) or failure or up.started is None:
        raise RuntimeError(f"jobq up did not start: {failure}")
    return Running(up, up.started, thread)


def stop_up(running: Running) -> None:
    running.up.stop()
    running.thread.join(60)
    assert not running.thread.is_alive(), "jobq up did not stop"


@pytest.fixture
def app(database_url: str) -> Iterator[Running]:
    running = start_up(database_url)
    yield running
    stop_up(running)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
