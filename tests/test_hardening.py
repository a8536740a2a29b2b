"""Faults and load: nothing acknowledged is lost, slow clients are dropped, caps hold."""
import logging
import os
import signal
import subprocess
import time

import gevent
import httpx
import pytest

from tests.helpers import eventually, make_app
from tests.sse_client import SSEClient
from tests.tcp_proxy import TCPProxy


def worker_pids(server):
    out = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Producers:
    """Producers that post continuously and remember exactly what was acknowledged."""

    def __init__(self, url, n=4, job_id=None):
        self.url = url
        self.acked = {}
        self.failures = 0
        self.stop = gevent.event.Event()
        self.job_id = job_id
        self.greenlets = [gevent.spawn(self._run, i) for i in range(n)]

    def _run(self, i):
        k = 0
        with httpx.Client(timeout=10) as c:
            while not self.stop.is_set():
                lines = [{"level": "info", "message": f"p{i}-{k}-{j}", "job_id": self.job_id}
                         for j in range(20)]
                k += 1
                try:
                    r = c.post(f"{self.url}/api/logs", json={"logs": lines})
                except httpx.HTTPError:
                    self.failures += 1
                    gevent.sleep(0.05)
                    continue
                if r.status_code == 201:
                    body = r.json()
                    for n, line_id in enumerate(range(body["first_id"], body["last_id"] + 1)):
                        self.acked[line_id] = lines[n]["message"]
                else:
                    assert r.status_code == 503 and "error" in r.json(), r.text
                    self.failures += 1
                gevent.sleep(0.005)

    def finish(self):
        self.stop.set()
        gevent.joinall(self.greenlets, raise_error=True)


def stored_lines(url, job_id):
    """Every line of a job, through the polling API."""
    out, after = {}, 0
    while True:
        r = httpx.get(f"{url}/api/logs", params={"scope": "job", "job_id": job_id,
                                                  "level": "debug", "after": after, "limit": 5000})
        body = r.json()
        for ln in body["logs"]:
            assert ln["id"] not in out
            out[ln["id"]] = ln["message"]
        if not body["meta"]["has_more"]:
            return out
        after = body["last_id"]


def wait_healthy(url, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not come back")


def follow(url, job_id, seen, stop, last=None):
    """A client that follows a stream and resumes with Last-Event-ID whenever it drops."""
    reconnects = 0
    while not stop.is_set():
        try:
            s = SSEClient(f"{url}/api/logs/stream?scope=job&job_id={job_id}&limit=0",
                          headers={"Last-Event-ID": last} if last else {}, timeout=10)
            if s.status != 200:
                s.close()
                gevent.sleep(0.2)
                continue
            while not stop.is_set():
                ev = s.next_event(timeout=10)
                if ev is None:
                    break
                if ev.event == "logs":
                    seen.extend(ln["id"] for ln in ev.json()["logs"])
                    last = ev.id or last
            s.close()
        except (OSError, ConnectionError, TimeoutError):
            pass
        reconnects += 1
        gevent.sleep(0.1)
    return reconnects


def test_kill_9_of_a_worker_loses_no_acknowledged_line(server_factory):
    srv = server_factory()
    job = httpx.post(f"{srv.url}/api/jobs", json={"name": "k", "steps": []}).json()["id"]
    seen, stop = [], gevent.event.Event()
    follower = gevent.spawn(follow, srv.url, job, seen, stop)
    producers = Producers(srv.url, job_id=job)
    gevent.sleep(1.0)
    (pid,) = worker_pids(srv)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not [p for p in worker_pids(srv) if p != pid]:
        assert time.monotonic() < deadline, "the master restarts the worker"
        gevent.sleep(0.1)
    wait_healthy(srv.url)
    gevent.sleep(1.0)
    producers.finish()
    stored = stored_lines(srv.url, job)
    assert producers.acked  # (requests in flight at the kill fail; the rest queue for the new worker)
    for line_id, message in producers.acked.items():
        assert stored.get(line_id) == message
    deadline = time.monotonic() + 30
    while (not seen or seen[-1] < max(producers.acked)) and time.monotonic() < deadline:
        gevent.sleep(0.1)
    stop.set()
    assert follower.get(timeout=30) >= 1, "the stream dropped and resumed"
    assert seen == sorted(set(seen)), "no duplicates across the resume"
    assert set(producers.acked) <= set(seen), "the stream resumed without a gap"


def test_sigterm_drains_ingest_and_closes_streams(server_factory, tmp_path):
    srv = server_factory()
    job = httpx.post(f"{srv.url}/api/jobs", json={"name": "t", "steps": []}).json()["id"]
    s = SSEClient(f"{srv.url}/api/logs/stream?scope=job&job_id={job}&limit=0", timeout=15)
    s.events(until=lambda e: e.event == "status")
    producers = Producers(srv.url, job_id=job)
    gevent.sleep(1.0)
    start = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    while s.next_event(timeout=15) is not None:  # a clean end of stream, not a hang
        pass
    assert time.monotonic() - start < 5, "streams are closed at once, not at graceful_timeout"
    srv.proc.wait(20)
    producers.finish()
    assert producers.acked
    again = server_factory(env={"QUAERO_DATABASE_URL": srv.env["QUAERO_DATABASE_URL"]})
    stored = stored_lines(again.url, job)
    for line_id, message in producers.acked.items():
        assert stored.get(line_id) == message


@pytest.fixture
def pg_behind_proxy(pg_database):
    from tests.helpers import reset_pg
    reset_pg(pg_database)
    proxy = TCPProxy("127.0.0.1", 5432).start()
    host_part = pg_database.split("@", 1)[1].split("/", 1)
    url = pg_database.replace(host_part[0], f"127.0.0.1:{proxy.port}")
    yield url, proxy
    proxy.cut()


def test_database_outage(pg_behind_proxy, tmp_path):
    url, proxy = pg_behind_proxy
    app = make_app(url, tmp_path, QUAERO_LOG_BUFFER_LINES=40)
    state = app.extensions["quaero"]
    c = app.test_client()
    try:
        job = c.post("/api/jobs", json={"name": "o", "steps": ["s"]}).json["id"]
        assert c.post("/api/logs", json={"logs": [{"level": "info", "message": "before"}]}).status_code == 201
        proxy.cut()
        r = c.post("/api/logs", json={"logs": [{"level": "error", "message": "during"}]})
        assert r.status_code == 503 and "error" in r.json
        r = c.post("/api/logs", json={"logs": [{"level": "error", "message": "x", "job_id": job}]})
        assert r.status_code == 503 and "error" in r.json
        assert c.get("/healthz").status_code == 503
        logger = logging.getLogger("quaero.outage")
        for i in range(100):
            logger.error("buffered %d", i)
        dropped = state.metrics.service_lines_dropped._value.get()
        assert dropped >= 60, "a bounded buffer, with counted drops"
        proxy.restore()
        deadline = time.monotonic() + 20
        while True:
            r = c.get("/api/logs?scope=service&level=error&limit=500")
            if r.status_code == 200:
                kept = [ln["message"] for ln in r.json["logs"] if ln["message"].startswith("buffered")]
                if kept:
                    break
            assert time.monotonic() < deadline, "buffered lines are written when the database returns"
            gevent.sleep(0.2)
        gevent.sleep(1.5)
        kept = [ln["message"] for ln in c.get("/api/logs?scope=service&level=error&limit=500").json["logs"]
                if ln["message"].startswith("buffered")]
        assert kept == [f"buffered {i}" for i in range(len(kept))] and 0 < len(kept) <= 40
        assert len(kept) + dropped >= 100
        assert "during" not in [ln["message"] for ln in c.get("/api/logs?scope=service&level=error").json["logs"]]
        assert c.post("/api/logs", json={"logs": [{"level": "info", "message": "after"}]}).status_code == 201
    finally:
        state.close()


def test_five_thousand_streams_on_one_worker(server_factory):
    srv = server_factory()
    (pid,) = worker_pids(srv)
    base_rss = rss_kb(pid)
    clients = []
    try:
        for _ in range(5000):
            clients.append(SSEClient(f"{srv.url}/api/logs/stream?scope=service&level=error&limit=0",
                                     timeout=60))
        for c in clients:
            assert c.status == 200
        gevent.joinall([gevent.spawn(c.events, lambda e: e.event == "logs", 60) for c in clients],
                       raise_error=True)
        per_stream = (rss_kb(pid) - base_rss) * 1024 / 5000
        ack = httpx.post(f"{srv.url}/api/logs", json={"logs": [{"level": "error", "message": "all"}]}).json()
        got = gevent.joinall([gevent.spawn(c.events, lambda e: e.event == "logs", 60) for c in clients],
                             raise_error=True)
        assert all([ln["id"] for ln in g.value[-1].json()["logs"]] == [ack["last_id"]] for g in got)
        print(f"RSS per idle stream: {per_stream / 1024:.1f} KiB")
        assert per_stream < 60 * 1024
    finally:
        for c in clients:
            c.close()


def test_slow_reader_is_dropped_without_memory_growth(server_factory):
    """50 MB flow past a stream whose client reads nothing: it is dropped, and the worker
    grows by no more than its buffer. The floor: the same 50 MB first, with only the
    reading stream open, so that what the worker's allocator and the reading stream's
    backlog take (more on a CPU the suite's other workers share) is counted before."""
    buffer_bytes = 1 << 20
    srv = server_factory(env={"QUAERO_STREAM_BUFFER_BYTES": str(buffer_bytes),
                              "QUAERO_STREAM_STALL_SECONDS": "1"})
    (pid,) = worker_pids(srv)
    job = httpx.post(f"{srv.url}/api/jobs", json={"name": "s", "steps": []}).json()["id"]
    url = f"{srv.url}/api/logs/stream?scope=job&job_id={job}&limit=0"
    fast = SSEClient(url)
    fast.events(until=lambda e: e.event == "status")
    got, posted = [], gevent.event.Event()
    acked = []

    def read_fast():
        while not posted.is_set() or len(got) < len(acked):
            ev = fast.next_event(timeout=30)
            if ev.event == "logs":
                got.extend(ln["id"] for ln in ev.json()["logs"])
    reader = gevent.spawn(read_fast)

    def post_mb(c, mb):
        """``mb`` / 50 x 250 x 100 x 2 KB; returns the worker's peak RSS (KiB) meanwhile."""
        peak = 0
        for _ in range(mb * 5):
            r = c.post(f"{srv.url}/api/logs", json={"logs": [
                {"level": "info", "message": "y" * 2000, "job_id": job}] * 100}).json()
            acked.extend(range(r["first_id"], r["last_id"] + 1))
            peak = max(peak, rss_kb(pid))
        return peak

    with httpx.Client(timeout=30) as c:
        post_mb(c, 50)   # the floor
        eventually(lambda: len(got) == len(acked), timeout=60, what="the reader to catch up")
        slow = SSEClient(url, rcvbuf=4096)
        slow.events(until=lambda e: e.event == "status")
        base = rss_kb(pid)
        peak = post_mb(c, 50)
    posted.set()
    reader.get(timeout=60)
    assert got == acked, "the other stream keeps receiving"
    deadline = time.monotonic() + 10  # its socket took nothing for a second: dropped
    while "quaero_sse_slow_clients_dropped_total 1.0" not in httpx.get(f"{srv.url}/metrics").text:
        assert time.monotonic() < deadline, "the stuck reader was not dropped"
        gevent.sleep(0.1)
    growth = (peak - base) * 1024
    print(f"worker RSS growth while 50 MB flowed past a stuck reader: {growth / 2**20:.1f} MiB")
    assert growth < buffer_bytes + 16 * 2**20
    slow.close()
    fast.close()
