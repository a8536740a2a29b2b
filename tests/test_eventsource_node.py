"""A real WHATWG client: the npm `eventsource` package run by node (tests/js/follow.mjs).

A restart (SIGTERM, then a new server on the same port) and the stream cap must not make
it give up, and it loses no line; a 204 makes it stop."""
import json
import os
import signal
import subprocess

import gevent
import httpx
import pytest

from tests.helpers import ROOT, node_with
from tests.sse_client import SSEClient
from tests.tcp_proxy import TCPProxy

JS = os.path.join(ROOT, "tests", "js")
ENV = {"QUAERO_STREAM_RETRY_SCALE": "0.1", "QUAERO_PING_INTERVAL": "1"}


@pytest.fixture(scope="session")
def node_eventsource():
    """node with tests/js/node_modules installed (``npm ci`` on a fresh checkout)."""
    return node_with(JS, "eventsource", "the WHATWG EventSource tests")


class Follower:
    """tests/js/follow.mjs in a subprocess; its reports gathered by a greenlet."""

    def __init__(self, node, url, *flags):
        self.proc = subprocess.Popen([node, os.path.join(JS, "follow.mjs"), url, *flags],
                                     cwd=JS, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.reports = []
        self.reader = gevent.spawn(self._read)

    def _read(self):
        for line in self.proc.stdout:
            self.reports.append(json.loads(line))

    def ids(self):
        return [i for r in self.reports for i in r.get("logs", ())]

    def wait_for(self, predicate, timeout=20, what="the client"):
        with gevent.Timeout(timeout, AssertionError(f"{what}: {self.reports[-10:]}")):
            while not predicate():
                gevent.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(timeout=5)
        return self.proc.stderr.read()


def post(url, job, n, tag):
    r = httpx.post(url + "/api/logs", timeout=30, json={"logs": [
        {"level": "info", "message": f"{tag}-{i}", "job_id": job} for i in range(n)]})
    assert r.status_code == 201, r.text
    return list(range(r.json()["first_id"], r.json()["last_id"] + 1))


def refused(url):
    return httpx.get(url + "/healthz").json()["streams"]["refused"].get("stream_cap", 0)


def front(server):
    """A TCP proxy the client under test reaches ``server`` (its port) through."""
    return TCPProxy("127.0.0.1", server.port).start()


def restart_with_the_one_stream_taken(server_factory, first, proxy):
    """SIGTERM ``first`` and start a server with room for one stream on its port; a test
    client takes that stream before the client under test, which reaches the port through
    ``proxy``, is let back in: its next try is refused at the cap. Returns the server and the
    test client holding the stream."""
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(10)
    proxy.cut()  # until the one stream is taken (else whoever comes first gets it)
    second = server_factory(port=first.port, env=dict(ENV, QUAERO_MAX_STREAMS="1"))
    hog = SSEClient(f"{second.url}/api/logs/stream?scope=service", timeout=10)
    assert hog.events(until=lambda e: e.event == "logs"), "the test client got the one stream"
    proxy.restore()
    return second, hog


def test_restart_and_stream_cap_do_not_make_it_give_up(node_eventsource, server_factory):
    first = server_factory(env=ENV)
    job = httpx.post(first.url + "/api/jobs", json={"name": "es", "steps": []}).json()["id"]
    acked = post(first.url, job, 5, "before")
    proxy = front(first)
    es = Follower(node_eventsource,
                  f"http://127.0.0.1:{proxy.port}/api/logs/stream?scope=job&job_id={job}&limit=0")
    try:
        es.wait_for(lambda: any("logs" in r for r in es.reports), what="backfill")
        acked += post(first.url, job, 20, "live")
        es.wait_for(lambda: es.ids() == acked[5:], what="live lines")
        # a restart: the old server goes away, a new one takes the port (one stream at most)
        second, hog = restart_with_the_one_stream_taken(server_factory, first, proxy)
        acked += post(second.url, job, 30, "while-away")
        with gevent.Timeout(15, AssertionError("the client was never refused at the cap")):
            while refused(second.url) < 1:
                gevent.sleep(0.1)
        hog.close()
        acked += post(second.url, job, 10, "after")
        es.wait_for(lambda: es.ids() == acked[5:], timeout=30, what="every line, once")
        httpx.patch(f"{second.url}/api/jobs/{job}", json={"status": "running"})
        httpx.patch(f"{second.url}/api/jobs/{job}", json={"status": "completed"})
        es.wait_for(lambda: any(r.get("end") for r in es.reports), what="end")
    finally:
        err = es.stop()
        proxy.cut()
    assert not any(r.get("gaveUp") for r in es.reports), err
    assert sum(1 for r in es.reports if "open" in r) >= 3, "reconnected after restart and cap"
    assert es.ids() == acked[5:]


def test_204_makes_it_stop(node_eventsource, server_factory):
    srv = server_factory(env=ENV)
    job = httpx.post(srv.url + "/api/jobs", json={"name": "done", "steps": []}).json()["id"]
    acked = post(srv.url, job, 3, "l")
    httpx.patch(f"{srv.url}/api/jobs/{job}", json={"status": "running"})
    httpx.patch(f"{srv.url}/api/jobs/{job}", json={"status": "completed"})
    # a client that ignores `end`: it reconnects with its Last-Event-ID, gets 204, stops
    es = Follower(node_eventsource, f"{srv.url}/api/logs/stream?scope=job&job_id={job}",
                  "--ignore-end")
    try:
        es.wait_for(lambda: any(r.get("gaveUp") for r in es.reports), timeout=15,
                    what="a stop on 204")
    finally:
        es.stop()
    assert es.ids() == acked
    assert [r["open"] for r in es.reports if "open" in r] == [1]
