"""The dashboard in a real browser against a real `jobq up`: sign in, enqueue, watch
the progress bar move to 100 % over /events, search logs, cancel, retry, and the
service_role view across users. Every wait is on a page condition, never a sleep."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from playwright.sync_api import expect

from jobq.examples import DEMO_USER_ID

from .conftest import OTHER_USER, Running


def sign_in(page: Any, app: Running, token: str) -> None:
    page.goto(f"{app.url}/#token={token}")
    # the token handed over in the fragment is prefilled, and the fragment is gone
    expect(page.locator("#token")).to_have_value(token)
    assert "token=" not in page.url
    page.click("#signin-button")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#live")).to_have_text("live")


def enqueue(
    page: Any, job_type: str, params: dict[str, Any], *, user: str = "", retries: int = 3
) -> str:
    before = page.locator("#detail-id").inner_text() if page.locator("#detail").is_visible() else ""
    if page.locator("#enqueue").is_hidden():
        page.click("#new-job")
    page.fill("#enqueue-type", job_type)
    page.fill("#enqueue-params", json.dumps(params))
    page.fill("#enqueue-retries", str(retries))
    if user:
        page.fill("#enqueue-user", user)
    page.click("#enqueue-submit")
    # the new job opens in the detail panel
    if before:
        expect(page.locator("#detail-id")).not_to_have_text(before)
    expect(page.locator("#detail-type")).to_have_text(job_type)
    job_id: str = page.locator("#detail-id").inner_text()
    expect(page.locator(f'#jobs-body tr[data-id="{job_id}"]')).to_be_visible()
    return job_id


def test_enqueue_watch_progress_to_completed_and_search_logs(page: Any, app: Running) -> None:
    sign_in(page, app, app.started.user_token)
    expect(page.locator("#role")).to_have_text("user")
    expect(page.locator("#ident")).to_have_text(str(DEMO_USER_ID))

    job_id = enqueue(page, "checksum", {"megabytes": 24, "throttle_ms": 120})
    bar = page.locator("#detail-progress")
    # live progress from /events: the bar is seen part-way, then full
    page.wait_for_function(
        "() => { const v = +document.querySelector('#detail-progress')"
        ".getAttribute('aria-valuenow'); return v > 0 && v < 100; }"
    )
    expect(page.locator("#detail-status")).to_have_text("processing")
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#detail-status")).to_have_text("completed")
    row = page.locator(f'#jobs-body tr[data-id="{job_id}"]')
    expect(row.locator(".pill")).to_have_text("completed")
    expect(row.locator(".pct")).to_have_text("100%")
    expect(page.locator("#detail-result")).to_contain_text('"algorithm": "sha256"')
    expect(page.locator("#detail-cancel")).to_be_disabled()

    # logs, then a full-text search of them (GET /jobs/{id}/logs?q=)
    logs = page.locator("#logs li")
    expect(logs.filter(has_text="digest ready")).to_have_count(1)
    assert logs.count() > 2
    page.fill("#log-search", "digest")
    expect(logs).to_have_count(1)
    expect(logs.first).to_contain_text("sha256 digest ready")
    expect(page.locator("#logs-count")).to_have_text("1 matching")
    page.fill("#log-search", "nosuchwordanywhere")
    expect(logs.first).to_have_text("no log line matches “nosuchwordanywhere”")
    page.fill("#log-search", "")
    expect(logs.filter(has_text="hashing 24 MB")).to_have_count(1)

    # the stats charts count it
    expect(page.locator('#chart-status li[data-status="completed"] .n')).not_to_have_text("0")
    expect(page.locator("#chart-throughput svg rect").first).to_be_attached()


def test_cancel_a_long_job(page: Any, app: Running) -> None:
    sign_in(page, app, app.started.user_token)
    job_id = enqueue(page, "long_report", {"seconds": 120})
    expect(page.locator("#detail-status")).to_have_text("processing")
    page.wait_for_function(
        "() => +document.querySelector('#detail-progress').getAttribute('aria-valuenow') > 0"
    )
    page.click("#detail-cancel")
    expect(page.locator("#detail-status")).to_have_text("cancelled")
    expect(page.locator("#detail-error")).to_contain_text("cancelled by user")
    expect(page.locator(f'#jobs-body tr[data-id="{job_id}"] .pill')).to_have_text("cancelled")
    # the handler noticed ctx.cancelled and stopped early (its last words are logged)
    expect(page.locator("#logs li").filter(has_text="cancelled after")).to_have_count(1)
    expect(page.locator("#detail-cancel")).to_be_disabled()


def test_retry_a_failed_job(page: Any, app: Running) -> None:
    sign_in(page, app, app.started.user_token)
    enqueue(page, "flaky", {"fail_rate": 1.0, "throttle_ms": 0}, retries=0)
    expect(page.locator("#detail-status")).to_have_text("failed")
    expect(page.locator("#detail-error")).to_contain_text("ConnectionError")
    expect(page.locator("#detail-facts")).to_contain_text("1 of 1")
    page.click("#detail-retry")
    # one more attempt is granted; it runs (and fails again: fail_rate 1.0)
    expect(page.locator("#detail-facts")).to_contain_text("2 of 2")
    expect(page.locator("#detail-status")).to_have_text("failed")


def test_filters_and_cursor_paging(page: Any, app: Running) -> None:
    with httpx.Client(
        base_url=app.url, headers={"Authorization": f"Bearer {app.started.service_token}"}
    ) as http:
        jobs = [{"job_type": "report_export", "user_id": str(DEMO_USER_ID)} for _ in range(30)]
        jobs += [
            {
                "job_type": "weird_type",
                "user_id": str(DEMO_USER_ID),
                "run_after": "2100-01-01T00:00:00Z",
            }
        ]
        for body in jobs:
            assert http.post("/jobs", json=body).status_code == 201
    sign_in(page, app, app.started.user_token)
    rows = page.locator("#jobs-body tr")
    expect(rows).to_have_count(25)
    first_page = rows.first.get_attribute("data-id")
    page.click("#older")
    expect(page.locator("#page-label")).to_have_text("page 2")
    expect(rows).not_to_have_count(0)
    assert rows.first.get_attribute("data-id") != first_page
    page.click("#newer")
    expect(page.locator("#page-label")).to_have_text("page 1")
    expect(rows.first).to_have_attribute("data-id", first_page or "")
    page.fill("#filter-type", "weird_type")
    page.press("#filter-type", "Enter")
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".type")).to_have_text("weird_type")
    page.fill("#filter-type", "")
    page.press("#filter-type", "Enter")
    page.select_option("#filter-status", "failed")
    # UNKNOWN_JOB_TYPE: nothing handles report_export, so those jobs fail at once
    expect(rows.first.locator(".pill")).to_have_text("failed")
    for status in [r.get_attribute("data-status") for r in rows.all()]:
        assert status == "failed"


def test_service_view_sees_every_user(page: Any, app: Running) -> None:
    sign_in(page, app, app.started.service_token)
    expect(page.locator("#role")).to_have_text("service_role")
    expect(page.locator("#jobs-scope")).to_have_text("all users")
    mine = enqueue(page, "compress", {"megabytes": 1}, user=str(DEMO_USER_ID))
    theirs = enqueue(page, "compress", {"megabytes": 1}, user=str(OTHER_USER))
    expect(page.locator(f'#jobs-body tr[data-id="{theirs}"] td.id.service-only')).to_have_text(
        str(OTHER_USER)[:8]
    )
    expect(page.locator(f'#jobs-body tr[data-id="{mine}"]')).to_be_visible()
    expect(page.locator("#detail-facts")).to_contain_text(str(OTHER_USER))
    # queue depth + the last hour across users
    expect(page.locator("#status-scope")).to_contain_text("queue")
    # one user's jobs only
    page.fill("#filter-user", str(OTHER_USER))
    page.press("#filter-user", "Enter")
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    expect(page.locator("#jobs-body tr").first).to_have_attribute("data-id", theirs)

    # the user sees their own job only, and no user column
    page.click("#signout")
    expect(page.locator("#signin")).to_be_visible()
    sign_in(page, app, app.token_for(OTHER_USER))
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    expect(page.locator("#jobs-body tr").first).to_have_attribute("data-id", theirs)
    expect(page.locator("th.service-only")).to_be_hidden()


def test_a_bad_token_is_refused(page: Any, app: Running) -> None:
    page.goto(app.url + "/")
    page.fill("#token", "not.a.token")
    page.click("#signin-button")
    expect(page.locator("#signin-error")).to_contain_text("malformed token")
    expect(page.locator("#app")).to_be_hidden()


def test_the_page_is_served_safely(app: Running) -> None:
    r = httpx.get(app.url + "/")
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert re.search(r"<script type=\"module\" src=\"dashboard/app.js\">", r.text)
    for asset in ("app.js", "app.css", "favicon.svg"):
        assert httpx.get(f"{app.url}/dashboard/{asset}").status_code == 200
    assert httpx.get(f"{app.url}/dashboard/nope.js").status_code == 404
    # no CDN: nothing is loaded from elsewhere
    assert "http" not in r.text
