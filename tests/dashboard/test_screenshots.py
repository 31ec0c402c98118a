"""The README's screenshots, taken of a real `jobq up` in headless Chromium.

The queue gets an hour of history (finished jobs inserted as the admin, so that
the throughput and run-time charts have something to show) and the demo jobs
of `jobq up --seed`, which run for real. The pictures are always taken (and
checked); with ``JOBQ_UPDATE_SCREENSHOTS=1`` they are also written to
``docs/screenshots/``, where the README shows them.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import expect

from jobq.examples import DEMO_USER_ID, demo_jobs

from .conftest import OTHER_USER, Running, start_up, stop_up
from .test_dashboard import sign_in

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SIZE = (1280, 800)

# An hour of finished work: ~12 jobs a minute, mostly completed, run times by type.
HISTORY = """
INSERT INTO public.job_queue (user_id, job_type, status, params, result, progress_percent,
    error_message, error_code, attempts, started_at, completed_at, created_at, updated_at)
SELECT CASE WHEN i %% 4 = 0 THEN %(other)s::uuid ELSE %(demo)s::uuid END,
       t.job_type, s.status, '{}'::jsonb,
       CASE WHEN s.status = 'completed' THEN '{"ok": true}'::jsonb END,
       CASE WHEN s.status = 'completed' THEN 100 ELSE 40 END,
       CASE s.status WHEN 'failed' THEN 'simulated upstream hiccup'
                     WHEN 'cancelled' THEN 'cancelled by user' END,
       CASE s.status WHEN 'failed' THEN 'ConnectionError' WHEN 'cancelled' THEN 'CANCELLED' END,
       1,
       f.at - t.run * (0.6 + 0.8 * ((i * 7919) %% 100) / 100.0),
       f.at,
       f.at - t.run - interval '2 seconds', f.at
  FROM generate_series(1, 700) AS i,
  LATERAL (SELECT now() - (i * 5 + (i * 31) %% 5) * interval '1 second' AS at) f,
  LATERAL (SELECT CASE WHEN i %% 100 < 88 THEN 'completed' WHEN i %% 100 < 95 THEN 'failed'
                       WHEN i %% 100 < 98 THEN 'cancelled' ELSE 'expired' END AS status) s,
  LATERAL (SELECT (ARRAY['checksum', 'thumbnail', 'compress', 'flaky',
                          'system_snapshot'])[1 + i %% 5] AS job_type,
                  (ARRAY[interval '3.2 seconds', interval '1.4 seconds', interval '0.9 seconds',
                         interval '0.8 seconds', interval '0.08 seconds'])[1 + i %% 5]
                      * (1 + (i / 60) %% 3 * 0.15) AS run) t
"""


def _png_size(path: Path) -> tuple[int, int]:
    with path.open("rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.fixture
def demo(database_url: str) -> Iterator[Running]:
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute("set local session_replication_role = replica")  # history, not news
        conn.execute(HISTORY, {"demo": DEMO_USER_ID, "other": OTHER_USER})
    running = start_up(database_url, seed=8, concurrency=4)
    yield running
    stop_up(running)


SETTLED = """() => {
  const bar = document.querySelector('#detail-progress');
  const fill = bar.querySelector('.fill');
  const want = +bar.getAttribute('aria-valuenow') / 100;
  const got = fill.getBoundingClientRect().width / bar.getBoundingClientRect().width;
  return Math.abs(got - want) < 0.02;
}"""


def _shot(page: Any, out: Path, name: str) -> Path:
    page.wait_for_function(SETTLED)  # the detail's progress bar has finished moving
    path = out / name
    page.screenshot(path=str(path))
    assert _png_size(path) == SIZE
    assert path.stat().st_size < 400_000
    return path


def test_screenshots(page: Any, demo: Running, tmp_path: Path) -> None:
    taken: list[Path] = []
    sign_in(page, demo, demo.started.user_token)
    # the demo jobs run for real: wait for a thumbnail, and for the long report to be mid-way
    seeded = dict(zip(demo.started.seeded, demo_jobs(len(demo.started.seeded)), strict=True))
    thumb_id = next(i for i, (t, _) in seeded.items() if t == "thumbnail")
    thumb = page.locator(f'#jobs-body tr[data-id="{thumb_id}"]')
    expect(thumb.locator(".pill")).to_have_text("completed", timeout=90_000)
    expect(page.locator("#chart-throughput svg rect").first).to_be_attached()
    page.locator("#jobs-body tr", has_text="long_report").first.click()
    expect(page.locator("#detail-status")).to_have_text("processing", timeout=90_000)
    page.wait_for_function(
        "() => +document.querySelector('#detail-progress').getAttribute('aria-valuenow') >= 15",
        timeout=60_000,
    )
    expect(page.locator("#logs li").first).to_be_visible()
    taken.append(_shot(page, tmp_path, "dashboard.png"))

    thumb.click()
    expect(page.locator("#detail-thumb")).to_be_visible()
    page.wait_for_function("() => document.querySelector('#detail-thumb').naturalWidth === 80")
    taken.append(_shot(page, tmp_path, "job-detail.png"))

    page.click("#signout")
    sign_in(page, demo, demo.started.service_token)
    expect(page.locator("#jobs-body tr td.service-only").first).to_be_visible()
    expect(page.locator("#chart-status .legend").first).to_be_visible()
    page.locator("#jobs-body tr", has_text="processing").first.click()
    expect(page.locator("#detail-facts")).to_contain_text("user")
    taken.append(_shot(page, tmp_path, "service-view.png"))

    if os.environ.get("JOBQ_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        for path in taken:
            shutil.copyfile(path, DOCS / path.name)
