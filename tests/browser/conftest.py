"""Real headless Chromium (Debian's /usr/bin/chromium) driven by Python Playwright.

Never downloads a browser. The browser is launched once per module; each test gets a
fresh context (cookies, storage) and a page that records console errors.
"""
import os
import re

import httpx
import pytest

CHROMIUM = os.environ.get("QUAERO_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
TIMEOUT = 20_000  # ms: generous, for a loaded 2-core machine


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser):
    from playwright.sync_api import expect
    expect.set_options(timeout=TIMEOUT)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(TIMEOUT)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    pg = context.new_page()
    pg.errors = []
    pg.on("console", lambda m: pg.errors.append(f"console.{m.type}: {m.text}")
          if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(f"pageerror: {e}"))
    return pg


@pytest.fixture
def live(server_factory):
    """A real gunicorn server (pings every second, so closed streams are noticed fast)
    and an HTTP client for it."""
    srv = server_factory(env={"QUAERO_PING_INTERVAL": "1"})
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        client.server = srv
        yield client


def new_job(api, name="job", steps=("build", "test")):
    r = api.post("/api/jobs", json={"name": name, "steps": list(steps)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def post(api, lines):
    r = api.post("/api/logs", json={"logs": lines})
    assert r.status_code == 201, r.text
    return r.json()


def set_status(api, job_id, status, step=None):
    url = f"/api/jobs/{job_id}" + (f"/steps/{step}" if step else "")
    r = api.patch(url, json={"status": status})
    assert r.status_code == 200, r.text


def streams_open(api, scope):
    text = api.get("/metrics").text
    m = re.search(r'^quaero_sse_streams_open\{scope="%s"\} ([0-9.e+]+)$' % scope, text, re.M)
    return float(m.group(1)) if m else 0.0
