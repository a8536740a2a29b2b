"""Issue 10 for the stream, each through its real path: real gunicorn processes, raw
sockets (some that never read), SIGTERM."""
import os
import signal
import subprocess
import sys
import time

import gevent
import httpx
import pytest

from tests.helpers import ROOT, Server, eventually, reset_pg
from tests.sse_client import SSEClient
from tests.test_stream import assert_refused, ids_of, new_job, post, stream

sys.path.insert(0, os.path.join(ROOT, "bench"))
from _common import children, rss_bytes  # noqa: E402
from flood import flood  # noqa: E402


@pytest.fixture
def api(module_server):
    """The module's server: these tests touch only jobs of their own."""
    with httpx.Client(base_url=module_server.url, timeout=30) as client:
        client.server = module_server
        yield client


def test_head_has_the_headers_of_get(api):
    head = api.head("/api/logs/stream?scope=service")
    s = stream(api, "scope=service")
    try:
        for name in ("content-type", "cache-control", "x-accel-buffering"):
            assert head.headers[name] == s.headers[name], name
        assert head.content == b""
    finally:
        s.close()


def test_first_stream_on_a_job_gets_one_status(api):
    job = new_job(api)
    s = stream(api, f"scope=job&job_id={job}")
    try:
        events = []
        with pytest.raises(TimeoutError):  # three watcher ticks: a second status would show
            while True:
                events += s.events(until=lambda e: True, timeout=1.5)
        assert [e.event for e in events] == ["logs", "status"]
    finally:
        s.close()


def test_resumed_stream_of_an_ended_job_with_nothing_left_is_204(api):
    job = new_job(api)
    ack = post(api, [{"level": "info", "message": str(i), "job_id": job} for i in range(3)])
    api.patch(f"/api/jobs/{job}", json={"status": "running"})
    api.patch(f"/api/jobs/{job}", json={"status": "completed"})
    url = f"/api/logs/stream?scope=job&job_id={job}"
    r = api.get(url, headers={"Last-Event-ID": str(ack["last_id"])})
    assert r.status_code == 204 and r.content == b""
    assert api.get(url + f"&after={ack['last_id']}").status_code == 204
    # something left after the id: the lines, then end
    s = stream(api, f"scope=job&job_id={job}", headers={"Last-Event-ID": str(ack["first_id"])})
    try:
        events = s.events(timeout=5)
        assert ids_of(events) == [ack["first_id"] + 1, ack["last_id"]]
        assert events[-1].event == "end"
    finally:
        s.close()
    # a running job is never 204
    other = new_job(api)
    s = stream(api, f"scope=job&job_id={other}", headers={"Last-Event-ID": str(ack["last_id"])})
    try:
        assert s.status == 200
    finally:
        s.close()


def test_status_never_overtakes_lines_committed_before_it(api):
    job = new_job(api)
    s = stream(api, f"scope=job&job_id={job}&limit=0")
    try:
        s.events(until=lambda e: e.event == "status")
        gevent.sleep(0.3)
        ids = []
        for step, step_status in [("build", "running"), ("build", "completed"),
                                  ("test", "running"), ("test", "completed")]:
            # the first batch takes the leading edge, the next waits for the window...
            ids += ids_of_ack(post(api, [{"level": "info", "message": "a", "job_id": job}]))
            ids += ids_of_ack(post(api, [{"level": "info", "message": "b", "job_id": job}]))
            # ...and the status that follows them must wait too
            assert api.patch(f"/api/jobs/{job}/steps/{step}",
                             json={"status": step_status}).status_code == 200
            events = s.events(until=lambda e: e.event == "status", timeout=5)
            assert ids_of(events) and ids_of(events)[-1] == ids[-1], (
                "the status came before lines committed before it")
            gevent.sleep(0.2)
    finally:
        s.close()


def ids_of_ack(ack):
    return list(range(ack["first_id"], ack["last_id"] + 1))


def test_total_count_stays_true_when_a_job_of_the_stream_is_deleted(api):
    a, b = new_job(api), new_job(api)
    post(api, [{"level": "info", "message": str(i), "job_id": j} for j in (a, b) for i in range(5)])
    api.patch(f"/api/jobs/{b}", json={"status": "running"})
    api.patch(f"/api/jobs/{b}", json={"status": "completed"})
    s = stream(api, f"scope=job&job_id={a}&job_id={b}")
    try:
        events = s.events(until=lambda e: e.event == "logs")
        assert events[-1].json()["meta"]["total_count"] == 10
        assert api.delete(f"/api/jobs/{b}").status_code == 204
        live = []

        def recounted():  # by the watcher's ticks (0.5 s): each live line shows the count
            live.append(post(api, [{"level": "info", "message": "live", "job_id": a}]))
            ev = s.events(until=lambda e: e.event == "logs", timeout=5)[-1]
            assert ev.json()["meta"]["total_count"] == 5 + len(live)
            return True
        eventually(recounted, interval=0.3, what="the count without the deleted job's lines")
    finally:
        s.close()


def test_total_count_stays_true_when_lines_are_pruned(server_factory):
    srv = server_factory(env={"QUAERO_MAX_LINES_PER_JOB": "3", "QUAERO_PRUNE_INTERVAL": "0.3"})
    with httpx.Client(base_url=srv.url, timeout=30) as api:
        api.server = srv
        job = new_job(api)
        s = stream(api, f"scope=job&job_id={job}&limit=0")
        try:
            s.events(until=lambda e: e.event == "status")
            post(api, [{"level": "info", "message": str(i), "job_id": job} for i in range(10)])
            first = s.events(until=lambda e: e.event == "logs", timeout=5)[-1]
            assert len(first.json()["logs"]) == 10
            # pruned to 3, recounted by the watcher (every 5 s): each live line shows it
            def pruned():
                post(api, [{"level": "info", "message": "live", "job_id": job}])
                ev = s.events(until=lambda e: e.event == "logs", timeout=5)[-1]
                total = ev.json()["meta"]["total_count"]
                assert total <= 4, total
                return total
            total = eventually(pruned, timeout=30, interval=0.5, what="the count after a prune")
            assert total in (3, 4), total  # 3 kept (+ the live one until the next prune)
        finally:
            s.close()


def test_sync_worker_says_it_needs_gevent_and_never_hangs(tmp_path):
    srv = Server(tmp_path)
    srv.start_cmd = None
    env = srv.env
    log = open(srv.log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", os.path.join(ROOT, "gunicorn.conf.py"),
         "-k", "sync", "wsgi:app"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(srv.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, srv.logs()[-2000:]
            time.sleep(0.1)
        start = time.monotonic()
        c = SSEClient(srv.url + "/api/logs/stream?scope=service", timeout=5)
        assert_refused(c, b"gevent", 30000, 60000)
        assert time.monotonic() - start < 2
        assert httpx.get(srv.url + "/healthz", timeout=2).json()["streams"]["refused"] == {
            "no_gevent": 1}
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def test_sigterm_closes_streams_and_the_worker_is_gone_within_two_seconds(server_factory):
    srv = server_factory()
    worker = children(srv.proc.pid)[0]
    job = httpx.post(f"{srv.url}/api/jobs", json={"name": "t", "steps": []}).json()["id"]
    readers = [SSEClient(f"{srv.url}/api/logs/stream?scope=job&job_id={job}", timeout=10)
               for _ in range(5)]
    for r in readers:
        r.events(until=lambda e: e.event == "status")
    # and streams that never read, with more queued than their sockets take
    deaf = [SSEClient(f"{srv.url}/api/logs/stream?scope=service&limit=0", rcvbuf=4096)
            for _ in range(5)]
    httpx.post(f"{srv.url}/api/logs", timeout=30, json={"logs": [
        {"level": "info", "message": "x" * 1000}] * 2000})
    gevent.sleep(0.5)
    start = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    for r in readers:
        while r.next_event(timeout=5) is not None:
            pass
    closed = time.monotonic() - start
    while os.path.exists(f"/proc/{worker}") and time.monotonic() - start < 10:
        try:
            with open(f"/proc/{worker}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except OSError:
            break
        time.sleep(0.02)
    gone = time.monotonic() - start
    for c in readers + deaf:
        c.close()
    assert closed < 1.0, f"streams closed {closed:.2f} s after SIGTERM"
    assert gone < 2.0, f"worker gone {gone:.2f} s after SIGTERM"


def test_more_streams_than_worker_connections_leave_room_for_the_rest(server_factory):
    srv = server_factory(env={"QUAERO_WORKER_CONNECTIONS": "30"})
    assert httpx.get(srv.url + "/healthz").json()["streams"]["max"] == 22
    url = f"{srv.url}/api/logs/stream?scope=service&limit=0"
    clients = gevent.joinall([gevent.spawn(SSEClient, url, timeout=10) for _ in range(40)],
                             timeout=15, raise_error=True)
    clients = [g.value for g in clients]
    try:
        open_, refused = [], []
        for c in clients:
            first = c.next_event(timeout=5)
            assert c.status == 200 and first is not None
            (refused if b"too many open streams" in first.raw else open_).append(c)
        assert len(open_) == 22 and len(refused) == 18
        for c in refused:
            assert c.next_event(timeout=2) is None, "a refused stream is closed, not left hanging"
        for _ in range(3):
            start = time.monotonic()
            assert httpx.get(srv.url + "/healthz", timeout=2).status_code == 200
            r = httpx.post(srv.url + "/api/logs", timeout=2,
                           json={"logs": [{"level": "info", "message": "still taken"}]})
            assert r.status_code == 201
            assert httpx.get(srv.url + "/", timeout=2).status_code == 200
            assert time.monotonic() - start < 2
        ev = open_[0].events(until=lambda e: e.event == "logs" and e.json()["logs"], timeout=5)
        assert ev[-1].json()["logs"][-1]["message"] == "still taken"
    finally:
        for c in clients:
            c.close()


def test_never_reading_streams_do_not_grow_the_worker(server_factory):
    """A smaller bench/flood.py: 200 sockets that never read, two 10,000-line POSTs."""
    srv = server_factory(env={"QUAERO_WORKER_CONNECTIONS": "1000"})
    worker = children(srv.proc.pid)[0]
    # the floor: the same POSTs with no stream open, on this machine as loaded now (the
    # suite's other workers share its CPUs)
    floor = flood(srv.url, worker, streams=0, posts=2, lines=10000, message_bytes=100,
                  settle=0.5)
    r = flood(srv.url, worker, streams=200, posts=2, lines=10000, message_bytes=100, settle=1.5)
    assert r["post_status"] == [201, 201]
    assert max(r["post_seconds"]) < max(floor["post_seconds"]) + 5, (r, floor)
    assert r["healthz_worst_seconds"] < floor["healthz_worst_seconds"] + 2, (r, floor)
    # copying each 2.3 MB event per stream would be ~900 MB here
    assert r["rss_growth_mb"] < 100, r
    assert rss_bytes(worker) < 400 << 20


def test_a_database_that_does_not_answer_refuses_the_stream_in_bounded_time(
        server_factory, pg_database):
    """The backfill's read waits for a lock held elsewhere (as for a frozen or unreachable
    database): past QUAERO_DB_TIMEOUT the stream is told to retry, as when the database is
    away, instead of hanging."""
    import psycopg
    reset_pg(pg_database)
    srv = server_factory(env={"QUAERO_DATABASE_URL": pg_database, "QUAERO_DB_TIMEOUT": "1"})
    assert httpx.post(f"{srv.url}/api/logs", json={"logs": [
        {"level": "info", "message": "before"}]}).status_code == 201
    locker = psycopg.connect(pg_database.replace("postgresql+psycopg://", "postgresql://"))
    try:
        locker.execute("LOCK TABLE log_entries IN ACCESS EXCLUSIVE MODE")  # until rollback
        start = time.monotonic()
        c = SSEClient(f"{srv.url}/api/logs/stream?scope=service", timeout=10)
        try:
            assert c.status == 200
            assert c.headers["content-type"].startswith("text/event-stream")
            body = c.body()  # until the server closes the stream
        finally:
            c.close()
        took = time.monotonic() - start
        assert b"database unavailable" in body and b"\nretry: " in body, body
        assert b"event:" not in body and b"data:" not in body, body
        assert took < 4, f"refused after {took:.1f} s"
        assert httpx.get(f"{srv.url}/healthz", timeout=5).json()["streams"]["refused"] == {
            "database": 1}
    finally:
        locker.rollback()
        locker.close()
    # the database answers again: so does the stream
    c = SSEClient(f"{srv.url}/api/logs/stream?scope=service", timeout=10)
    try:
        ev = c.events(until=lambda e: e.event == "logs")[-1]
        assert [ln["message"] for ln in ev.json()["logs"]][-1] == "before"
    finally:
        c.close()
