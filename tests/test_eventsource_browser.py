"""Chromium's own EventSource: a plain ``new EventSource(...)`` on a page served by Quaero
survives a restart (SIGTERM, a new server on the same port) and the stream cap, and gets
every line once."""
import os
import signal

import gevent
import httpx
import pytest

from tests.sse_client import SSEClient
from tests.test_eventsource_node import ENV, post, refused

CHROMIUM = os.environ.get("QUAERO_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

FOLLOW = """url => {
  window.seen = []; window.opens = 0; window.errors = 0;
  window.es = new EventSource(url);
  es.onopen = () => { window.opens += 1; };
  es.onerror = () => { window.errors += 1; };
  es.addEventListener("logs", e => {
    for (const line of JSON.parse(e.data).logs) window.seen.push(line.id);
  });
}"""


@pytest.fixture
def page():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            pg = browser.new_page()
            pg.set_default_timeout(20_000)
            yield pg
        finally:
            browser.close()


def wait_seen(page, acked, timeout=30):
    with gevent.Timeout(timeout, AssertionError("Chromium's EventSource did not get every line")):
        while page.evaluate("window.seen.length") < len(acked):
            gevent.sleep(0.1)


def test_chromium_eventsource_survives_restart_and_cap(page, server_factory):
    first = server_factory(env=ENV)
    job = httpx.post(first.url + "/api/jobs", json={"name": "br", "steps": []}).json()["id"]
    page.goto(first.url + "/login")  # a Quaero page without streams of its own
    page.evaluate(FOLLOW, f"/api/logs/stream?scope=job&job_id={job}&limit=0")
    page.wait_for_function("window.opens >= 1")
    acked = post(first.url, job, 20, "live")
    wait_seen(page, acked)
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(10)
    second = server_factory(port=first.port, env=dict(ENV, QUAERO_MAX_STREAMS="1"))
    hog = SSEClient(f"{second.url}/api/logs/stream?scope=service", timeout=10)
    acked += post(second.url, job, 30, "while-away")
    with gevent.Timeout(20, AssertionError("Chromium was never refused at the cap")):
        while refused(second.url) < 1:
            gevent.sleep(0.1)
    hog.close()
    acked += post(second.url, job, 10, "after")
    wait_seen(page, acked)
    gevent.sleep(0.5)
    assert page.evaluate("window.seen") == acked, "every line once, in order"
    assert page.evaluate("window.es.readyState") != 2, "it never gave up"
    assert page.evaluate("window.opens") >= 3
