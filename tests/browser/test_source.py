"""A line's ``source`` is shown beside its level, in real Chromium."""
from playwright.sync_api import expect

from .helpers import new_job, post


def test_source_is_shown_beside_the_level(live, page):
    job = new_job(live, "otel-job")
    post(live, [{"level": "warn", "message": "from billing", "source": "billing"},
                {"level": "info", "message": "no source here"}])
    page.goto(live.server.url + "/")
    panel = page.get_by_role("region", name="Service logs")
    line = panel.locator(".ql-line", has_text="from billing")
    expect(line.locator(".ql-lvl + .ql-src")).to_have_text("billing")
    expect(panel.locator(".ql-line", has_text="no source here").locator(".ql-src")).to_have_count(0)
    post(live, [{"level": "error", "message": "live one", "source": "api", "job_id": job}])
    page.goto(live.server.url + f"/jobs/{job}")
    expect(page.locator(".joblog .ql-line", has_text="live one").locator(".ql-src")).to_have_text("api")
    assert page.errors == []
