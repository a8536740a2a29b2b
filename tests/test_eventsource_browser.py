"""Chromium's own EventSource: a plain ``new EventSource(...)`` on a page served by Quaero
survives a restart (SIGTERM, a new server on the same port) and the stream cap, and gets
every line once."""
import gevent
import httpx
import pytest

from tests.helpers import eventually
from tests.test_eventsource_node import (ENV, front, post, refused,
                                        restart_with_the_one_stream_taken)

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
def page(browser):
    """A page of a fresh context of the process's Chromium (tests/conftest.py: a process
    can run one Playwright at a time)."""
    ctx = browser.new_context()
    try:
        pg = ctx.new_page()
        pg.set_default_timeout(20_000)
        yield pg
    finally:
        ctx.close()


def wait_seen(page, acked, timeout=30):
    # a deadline checked between Playwright's calls: a gevent.Timeout thrown into one of them
    # breaks Playwright's own greenlets (InvalidSwitchError) instead of failing the test
    def seen_all():
        state = page.evaluate("({seen: window.seen.length, opens: window.opens, "
                              "errors: window.errors, readyState: window.es.readyState})")
        assert state["seen"] >= len(acked), f"Chromium's EventSource, {len(acked)} lines sent: {state}"
        return True
    eventually(seen_all, timeout=timeout, interval=0.1)


def test_chromium_eventsource_survives_restart_and_cap(page, server_factory):
    first = server_factory(env=ENV)
    job = httpx.post(first.url + "/api/jobs", json={"name": "br", "steps": []}).json()["id"]
    proxy = front(first)
    # a document of Quaero's origin without streams of its own (/login, without a token,
    # goes on to the home page, whose own streams would take the one stream the cap leaves)
    page.goto(f"http://127.0.0.1:{proxy.port}/healthz")
    page.evaluate(FOLLOW, f"/api/logs/stream?scope=job&job_id={job}&limit=0")
    page.wait_for_function("window.opens >= 1")
    acked = post(first.url, job, 20, "live")
    wait_seen(page, acked)
    second, hog = restart_with_the_one_stream_taken(server_factory, first, proxy)
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
