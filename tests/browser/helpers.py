"""What the browser tests share besides their fixtures (those are in conftest.py): the
browser's settings and small API calls that set a scene."""
import os
import re

CHROMIUM = os.environ.get("QUAERO_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
TIMEOUT = 20_000  # ms: generous, for a loaded 2-core machine


def watch_errors(page):
    """``page`` keeps its script errors and console errors in ``page.errors`` (tests
    assert it stays empty); returns it."""
    page.errors = []
    page.on("console", lambda m: page.errors.append(f"console.{m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(f"pageerror: {e}"))
    return page


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
