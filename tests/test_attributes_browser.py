"""Attributes on the pages (issue 23), in real headless Chromium against one real gunicorn
server started with QUAERO_TRACE_URL: a line with attributes has a marker that unfolds its
fields; a value filters the view (the stream follows the filter, the address keeps it, a
reload applies it); attribute text is text, never markup; a trace id links to the trace.
On the job page, the service panel and /search."""
import re
import uuid

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.helpers import new_job, post, set_status
from tests.helpers import Server

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_URL = "https://jaeger.example/trace/{trace_id}"
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("attrs"),
                 env={"QUAERO_PING_INTERVAL": "1", "QUAERO_TRACE_URL": TRACE_URL}).start()
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        client.server = srv
        yield client
    srv.stop()


@pytest.fixture
def guarded(page):
    """The page, failing on any dialog (an injected alert(1) would open one)."""
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    return page


def fields_button(scope):
    return scope.get_by_role("button", name=re.compile(r"^Fields of this line"))


def test_job_page_unfolds_fields_filters_by_a_value_and_keeps_it_in_the_address(api, guarded):
    page = guarded
    job = new_job(api, "attrs", steps=["s"])
    set_status(api, job, "running")
    post(api, [
        {"level": "info", "job_id": job, "step": "s", "message": "checkout failed",
         "attributes": {"user.id": "42", "http.status_code": 500}, "trace_id": TRACE,
         "span_id": "00f067aa0ba902b7"},
        {"level": "info", "job_id": job, "step": "s", "message": "other user",
         "attributes": {"user.id": "7"}},
        {"level": "info", "job_id": job, "step": "s", "message": "plain line"},
        {"level": "warn", "job_id": job, "step": "s", "message": "hostile note",
         "attributes": {"user.id": "42", "note": XSS, XSS: "key too"}},
    ])
    page.goto(f"{api.server.url}/jobs/{job}")
    log = page.get_by_role("log", name="Job log")
    lines = log.locator(".ql-line")
    expect(lines).to_have_count(4)
    expect(fields_button(log)).to_have_count(3)                  # not on the plain line
    expect(lines.nth(2).get_by_role("button")).to_have_count(0)
    expect(log.locator(".ql-fields")).to_have_count(0)           # nothing unfolded up front

    # the marker unfolds the line's fields: attributes, trace id (a link), span id
    marker = fields_button(lines.nth(0))
    expect(marker).to_have_attribute("aria-expanded", "false")
    marker.click()
    expect(marker).to_have_attribute("aria-expanded", "true")
    fields = log.get_by_role("group", name="Fields of line 1")
    expect(fields).to_be_visible()
    expect(fields.locator(".ql-field")).to_have_count(4)
    expect(fields.locator(".ql-field").nth(0)).to_have_text(re.compile(r"user\.id\s*=?\s*42"))
    expect(fields.locator(".ql-field").nth(1)).to_contain_text("500")
    expect(fields.locator(".ql-field").nth(3)).to_contain_text("00f067aa0ba902b7")
    link = fields.get_by_role("link", name="open trace")
    expect(link).to_have_attribute("href", f"https://jaeger.example/trace/{TRACE}")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    # one line unfolded at a time: opening another folds the first
    fields_button(lines.nth(1)).click()
    expect(log.locator(".ql-fields")).to_have_count(1)
    expect(log.get_by_role("group", name="Fields of line 2")).to_be_visible()
    expect(marker).to_have_attribute("aria-expanded", "false")
    fields_button(lines.nth(1)).click()                          # and the marker folds it
    expect(log.locator(".ql-fields")).to_have_count(0)

    # attribute text is text: the hostile value and key show as written, nothing is made
    fields_button(lines.nth(3)).click()
    hostile = log.get_by_role("group", name="Fields of line 4")
    expect(hostile.get_by_role("button", name=XSS, exact=True)).to_be_visible()
    expect(hostile.locator(".ql-field-key", has_text=XSS)).to_have_count(1)
    assert page.locator("img").count() == 0

    # a value filters the view: only lines with user.id=42, the address says so
    fields_button(lines.nth(3)).click()
    marker.click()
    fields.get_by_role("button", name="42", exact=True).click()
    expect(lines).to_have_count(2)
    expect(lines.nth(0)).to_contain_text("checkout failed")
    expect(lines.nth(1)).to_contain_text("hostile note")
    expect(page).to_have_url(re.compile(r"\?attr\.user\.id=42$"))
    filters = page.get_by_role("group", name="Attribute filters of the job log")
    expect(filters.locator(".chip")).to_have_text([re.compile(r"^user\.id=42")])
    # the stream follows the filter: new lines with it arrive, others do not
    expect(page.locator(".jobbar .conn-text")).to_have_text("connected")
    post(api, [{"level": "info", "job_id": job, "step": "s", "message": "not for 42",
                "attributes": {"user.id": "8"}},
               {"level": "info", "job_id": job, "step": "s", "message": "live for 42",
                "attributes": {"user.id": 42}}])              # a number matches its text
    expect(lines).to_have_count(3)
    expect(lines.nth(2)).to_contain_text("live for 42")
    expect(log).not_to_contain_text("not for 42")

    # the address is the view: a reload (or a shared link) applies the filter
    page.reload()
    expect(lines).to_have_count(3)
    expect(log).not_to_contain_text("other user")
    expect(filters.locator(".chip")).to_have_count(1)
    # a second filter narrows further; removing chips widens again
    fields_button(lines.nth(0)).click()
    log.get_by_role("group", name="Fields of line 1").get_by_role("button", name=TRACE).click()
    expect(lines).to_have_count(1)
    expect(page).to_have_url(re.compile(rf"\?attr\.user\.id=42&trace_id={TRACE}$"))
    filters.get_by_role("button", name="Remove the filter user.id=42").click()
    filters.get_by_role("button", name=f"Remove the filter trace_id={TRACE}").click()
    expect(lines).to_have_count(6)
    expect(filters).to_be_hidden()
    expect(page).to_have_url(re.compile(rf"/jobs/{job}$"))
    assert page.dialogs == []
    assert page.errors == []


def test_service_panel_filters_by_a_value_kept_apart_in_the_address(api, guarded):
    page = guarded
    tag = uuid.uuid4().hex[:8]
    post(api, [{"level": "info", "message": f"svc acme {tag}", "source": "billing",
                "attributes": {"tenant": f"acme-{tag}", "note": XSS}},
               {"level": "info", "message": f"svc globex {tag}", "attributes": {"tenant": f"globex-{tag}"}},
               {"level": "info", "message": f"svc plain {tag}"}])
    page.goto(api.server.url + "/")
    panel = page.get_by_role("region", name="Service logs")
    lines = panel.locator(".ql-line")
    acme = lines.filter(has_text=f"svc acme {tag}")
    expect(acme).to_have_count(1)
    expect(fields_button(lines.filter(has_text=f"svc plain {tag}"))).to_have_count(0)
    fields_button(acme).click()
    fields = panel.locator(".ql-fields")
    expect(fields.get_by_role("button", name=XSS, exact=True)).to_be_visible()
    assert page.locator("img").count() == 0
    fields.get_by_role("button", name=f"acme-{tag}", exact=True).click()
    expect(lines).to_have_count(1)
    expect(lines.first).to_contain_text(f"svc acme {tag}")
    expect(page).to_have_url(re.compile(rf"/\?svc\.attr\.tenant=acme-{tag}$"))
    chips = page.get_by_role("group", name="Attribute filters of the service log").locator(".chip")
    expect(chips).to_have_text([re.compile(rf"^tenant=acme-{tag}")])
    expect(panel.get_by_role("status").first).to_have_text("connected")
    post(api, [{"level": "info", "message": f"later globex {tag}", "attributes": {"tenant": f"globex-{tag}"}},
               {"level": "info", "message": f"later acme {tag}", "attributes": {"tenant": f"acme-{tag}"}}])
    expect(lines).to_have_count(2)
    expect(lines.last).to_contain_text(f"later acme {tag}")
    expect(panel).not_to_contain_text(f"later globex {tag}")

    page.reload()
    expect(lines).to_have_count(2)
    expect(chips).to_have_count(1)
    # the job page's own filters and the panel's are kept apart in one address
    job = new_job(api, "apart", steps=["s"])
    post(api, [{"level": "info", "job_id": job, "step": "s", "message": "job line",
                "attributes": {"tenant": f"acme-{tag}"}}])
    page.goto(f"{api.server.url}/jobs/{job}?svc.attr.tenant=globex-{tag}")
    expect(page.get_by_role("log", name="Job log").locator(".ql-line")).to_have_count(1)
    panel.get_by_role("button", name="Show").click()
    expect(lines).to_have_count(2)
    expect(lines.first).to_contain_text(f"svc globex {tag}")
    assert page.dialogs == []
    assert page.errors == []


def test_search_page_filters_by_attributes_without_text(api, guarded):
    page = guarded
    tag = uuid.uuid4().hex[:8]
    job = new_job(api, "search-attrs", steps=["s"])
    post(api, [{"level": "error", "job_id": job, "step": "s", "message": f"payment declined {tag}",
                "attributes": {"order": f"o-{tag}", "user.id": f"u-{tag}"}, "trace_id": TRACE},
               {"level": "info", "job_id": job, "step": "s", "message": f"order shipped {tag}",
                "attributes": {"order": f"o2-{tag}", "user.id": f"u-{tag}", "note": XSS}},
               {"level": "info", "message": f"unrelated {tag}"}])
    page.goto(f"{api.server.url}/search?attr.user.id=u-{tag}")
    results = page.get_by_role("list", name="Search results").locator("li")
    expect(results).to_have_count(2)                  # no text needed with a filter
    expect(page.get_by_role("group", name="Attribute filters of the search").locator(".chip")).to_have_text(
        [re.compile(rf"^user\.id=u-{tag}")])
    expect(results.nth(0)).to_contain_text(f"order shipped {tag}")   # newest first
    fields_button(results.nth(0)).click()
    first = results.nth(0).get_by_role("group")
    expect(first.get_by_role("button", name=XSS, exact=True)).to_be_visible()
    assert page.locator("img").count() == 0
    fields_button(results.nth(1)).click()             # one open at a time
    expect(page.locator(".results .ql-fields")).to_have_count(1)
    second = results.nth(1).get_by_role("group")
    expect(second.get_by_role("link", name="open trace")).to_have_attribute(
        "href", f"https://jaeger.example/trace/{TRACE}")
    second.get_by_role("button", name=f"o-{tag}", exact=True).click()
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text(f"payment declined {tag}")
    expect(page).to_have_url(re.compile(rf"\?attr\.user\.id=u-{tag}&attr\.order=o-{tag}$"))

    # typed filters too, with text; the address keeps both
    page.goto(api.server.url + "/search")
    page.get_by_role("textbox", name="Attribute filter (key=value)").fill(f"order=o2-{tag}")
    page.get_by_role("button", name="Add filter").click()
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text(f"order shipped {tag}")
    page.get_by_role("searchbox", name="Search every log line").fill("declined")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.get_by_text("No line contains “declined” with order=o2-")).to_be_visible()
    expect(page).to_have_url(re.compile(rf"\?q=declined&attr\.order=o2-{tag}$"))
    assert page.dialogs == []
    assert page.errors == []


def test_trace_url_setting_is_an_http_template_and_reaches_the_pages(app, monkeypatch, tmp_path):
    from quaero.config import Config, ConfigError
    for bad in ("javascript:alert(1)//{trace_id}", "https://jaeger.example/trace/",
                "//jaeger.example/{trace_id}"):
        monkeypatch.setenv("QUAERO_TRACE_URL", bad)
        with pytest.raises(ConfigError, match="QUAERO_TRACE_URL"):
            Config(str(tmp_path))
    monkeypatch.setenv("QUAERO_TRACE_URL", TRACE_URL)
    assert Config(str(tmp_path)).QUAERO_TRACE_URL == TRACE_URL

    client = app.test_client()
    assert b'name="quaero-trace-url"' not in client.get("/search").data
    app.config["QUAERO_TRACE_URL"] = TRACE_URL
    body = client.get("/search").get_data(as_text=True)
    assert f'<meta name="quaero-trace-url" content="{TRACE_URL}">' in body
