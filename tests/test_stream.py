"""GET /api/logs/stream against a real gunicorn (gevent worker) with a socket-level client."""
import time

import gevent
import httpx
import pytest

from tests.sse_client import SSEClient


@pytest.fixture
def api(module_server):
    """The module's server, for tests that touch only jobs of their own (or nothing)."""
    with httpx.Client(base_url=module_server.url, timeout=30) as client:
        client.server = module_server
        yield client


@pytest.fixture
def own_api(server):
    """A server of the test's own, for tests that read the service log or its counters."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.server = server
        yield client


def new_job(api, steps=("build", "test")):
    r = api.post("/api/jobs", json={"name": "job", "steps": list(steps)})
    assert r.status_code == 201
    return r.json()["id"]


def post(api, lines):
    r = api.post("/api/logs", json={"logs": lines})
    assert r.status_code == 201, r.text
    return r.json()


def stream(api, query, **kw):
    return SSEClient(f"{api.server.url}/api/logs/stream?{query}", **kw)


def ids_of(events):
    return [ln["id"] for ev in events if ev.event == "logs" for ln in ev.json()["logs"]]


def test_headers_retry_backfill_and_status(api):
    job = new_job(api)
    post(api, [{"level": "info", "message": f"l{i}", "job_id": job, "step": "build"}
               for i in range(30)])
    s = stream(api, f"scope=job&job_id={job}&limit=10")
    try:
        assert s.status == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        assert s.headers["cache-control"] == "no-cache"
        assert s.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in s.headers
        first = s.next_event()
        assert b"retry: " in first.raw
        backfill = s.next_event()
        assert backfill.event == "logs"
        data = backfill.json()
        assert [ln["message"] for ln in data["logs"]] == [f"l{i}" for i in range(20, 30)]
        assert data["meta"] == {"total_count": 30, "displayed_count": 10, "has_more": True}
        assert backfill.id == str(data["logs"][-1]["id"])
        status = s.next_event()
        assert status.event == "status"
        assert status.json()["job"] == {"id": job, "status": "pending"}
        assert [st["name"] for st in status.json()["steps"]] == ["build", "test"]
    finally:
        s.close()


def test_empty_backfill_is_still_sent_with_an_id(own_api):
    newest = post(own_api, [{"level": "info", "message": "not an error"}])["last_id"]
    s = stream(own_api, "scope=service&level=error")
    try:
        events = s.events(until=lambda e: e.event == "logs")
        assert events[-1].json() == {"logs": [], "meta": {
            "total_count": 0, "displayed_count": 0, "has_more": False}}
        assert events[-1].id == str(newest), "the newest id the stream has considered"
    finally:
        s.close()
    # limit=0 too; a client reconnecting with that id before its first line loses nothing
    s = stream(own_api, "scope=service&limit=0")
    try:
        event = s.events(until=lambda e: e.event == "logs")[-1]
        assert event.json()["logs"] == [] and event.id == str(newest)
    finally:
        s.close()
    missed = post(own_api, [{"level": "error", "message": "while away"}])["last_id"]
    s = stream(own_api, "scope=service&level=error", headers={"Last-Event-ID": event.id})
    try:
        event = s.events(until=lambda e: e.event == "logs")[-1]
        assert [ln["id"] for ln in event.json()["logs"]] == [missed]
    finally:
        s.close()


@pytest.mark.parametrize("query, headers, status", [
    ("", {}, 400), ("scope=nope", {}, 400), ("scope=job", {}, 400),
    ("scope=service&step=x", {}, 400), ("scope=service&level=verbose", {}, 400),
    ("scope=service&limit=-5", {}, 400), ("scope=service&after=abc", {}, 400),
    ("scope=service", {"Last-Event-ID": "12x"}, 400),
    ("scope=service", {"Last-Event-ID": "-1"}, 400),
    # each one given is checked, even beside a valid one (which would win)
    ("scope=service&after=-5", {"Last-Event-ID": "3"}, 400),
    ("scope=service&after=abc", {"Last-Event-ID": "3"}, 400),
    ("scope=service&after=3", {"Last-Event-ID": "-5"}, 400),
    ("scope=job&job_id=doesnotexist", {}, 404),
])
def test_errors_are_json_not_streams(api, query, headers, status):
    s = stream(api, query, headers=headers)
    try:
        assert s.status == status
        assert s.headers["content-type"] == "application/json"
        import json
        assert set(json.loads(s.body())) == {"error"}
    finally:
        s.close()


def test_live_lines_with_filters(api):
    job = new_job(api)
    all_ = stream(api, f"scope=job&job_id={job}&level=debug")
    warn = stream(api, f"scope=job&job_id={job}&level=warn")
    step = stream(api, f"scope=job&job_id={job}&step=test&level=debug")
    service = stream(api, "scope=service&level=debug")
    try:
        for s in (all_, warn, step, service):
            s.events(until=lambda e: e.event == "logs")
        lines = [{"level": lv, "message": f"{lv}-{st}", "job_id": job, "step": st}
                 for lv in ("debug", "info", "warn", "error") for st in ("build", "test")]
        post(api, lines)
        post(api, [{"level": "info", "message": "svc"}])

        def got(s, n):
            msgs = []
            while len(msgs) < n:
                ev = s.events(until=lambda e: e.event == "logs", timeout=5)[-1]
                msgs += [ln["message"] for ln in ev.json()["logs"]]
            return msgs
        assert got(all_, 8) == [ln["message"] for ln in lines]
        assert got(warn, 4) == ["warn-build", "warn-test", "error-build", "error-test"]
        assert got(step, 4) == ["debug-test", "info-test", "warn-test", "error-test"]
        assert "svc" in got(service, 1) or "svc" in got(service, 1)
    finally:
        for s in (all_, warn, step, service):
            s.close()


def test_leading_edge_then_coalescing(own_api):
    s = stream(own_api, "scope=service")
    try:
        s.events(until=lambda e: e.event == "logs")
        gevent.sleep(0.3)  # quiet
        sent = time.monotonic()
        post(own_api, [{"level": "info", "message": "first"}])
        ev = s.events(until=lambda e: e.event == "logs")[-1]
        assert [ln["message"] for ln in ev.json()["logs"]] == ["first"]
        assert ev.received - sent < 0.1, "a line on a quiet stream goes out at once"
        # a burst inside one window: coalesced, never more than one event per 150 ms
        burst = time.monotonic()
        for i in range(10):
            post(own_api, [{"level": "info", "message": f"burst{i}"}])
        burst_took = time.monotonic() - burst
        events = []
        while sum(len(e.json()["logs"]) for e in events) < 10:
            events += s.events(until=lambda e: e.event == "logs", timeout=5)[-1:]
        assert [ln["message"] for e in events for ln in e.json()["logs"]] == [
            f"burst{i}" for i in range(10)]
        # The server spaces events 150 ms apart. From here only their span shows: a loaded
        # machine reads two events in one go (0.00003 s apart), but none can have left
        # before "first" was posted, nor arrive before it left: n more need n x 150 ms.
        span = events[-1].received - sent
        assert span >= 0.15 * len(events), (span, len(events))
        # coalesced: lines posted within one window share its event
        assert len(events) <= 2 + burst_took / 0.15, (len(events), burst_took)
    finally:
        s.close()


def test_ping_every_five_seconds(api):
    s = stream(api, "scope=service")
    try:
        start = time.monotonic()
        pings = s.events(until=lambda e: e.event == "ping", timeout=8, skip=("retry",))
        assert pings[-1].event == "ping"
        assert 4.5 <= time.monotonic() - start <= 6.5
        assert pings[-1].json()["timestamp"].endswith("Z")
    finally:
        s.close()


def test_resume_across_reconnects_loses_and_repeats_nothing(api):
    job = new_job(api)
    acked = []
    done = gevent.event.Event()

    def producer():
        i = 0
        while not done.is_set():
            r = post(api, [{"level": "info", "message": f"p{i}-{k}", "job_id": job}
                           for k in range(7)])
            acked.extend(range(r["first_id"], r["last_id"] + 1))
            i += 1
            gevent.sleep(0.02)

    p = gevent.spawn(producer)
    seen, last = [], None
    try:
        for round_ in range(6):
            headers = {"Last-Event-ID": last} if last else {}
            s = stream(api, f"scope=job&job_id={job}&limit=0", headers=headers)
            deadline = time.monotonic() + 0.4 + 0.1 * round_
            while time.monotonic() < deadline:
                ev = s.next_event(timeout=5)
                if ev.event == "logs":
                    seen.extend(ln["id"] for ln in ev.json()["logs"])
                    last = ev.id or last
            s.close()  # mid-stream, maybe mid-batch
    finally:
        done.set()
        p.join()
    # catch up: everything acknowledged arrives once, in order
    s = stream(api, f"scope=job&job_id={job}&after={last}")
    try:
        while not seen or seen[-1] < acked[-1]:
            ev = s.next_event(timeout=5)
            if ev.event == "logs":
                seen.extend(ln["id"] for ln in ev.json()["logs"])
    finally:
        s.close()
    first = seen[0]
    assert seen == sorted(set(seen)), "no duplicates, in order"
    assert seen == [i for i in sorted(acked) if i >= first]


def test_resume_beyond_the_newest_id_starts_afresh(api):
    """Every tab open across a restore from a backup resumes with an id this database never
    gave: its stream starts as a fresh one (the last ``limit`` lines), never silent."""
    job = new_job(api)
    ack = post(api, [{"level": "info", "message": f"l{i}", "job_id": job} for i in range(5)])
    beyond = str(ack["last_id"] + 1000)
    messages = [f"l{i}" for i in range(5)]
    for query, headers in [("", {"Last-Event-ID": beyond}), (f"&after={beyond}", {})]:
        s = stream(api, f"scope=job&job_id={job}&limit=3{query}", headers=headers)
        try:
            events = s.events(until=lambda e: e.event == "status")
            assert [e.event for e in events] == ["logs", "status"]
            assert [ln["message"] for ln in events[0].json()["logs"]] == messages[-3:]
            assert events[0].json()["meta"] == {
                "total_count": len(messages), "displayed_count": 3, "has_more": True}
            messages.append(f"live{len(messages)}")
            live = post(api, [{"level": "info", "message": messages[-1], "job_id": job}])
            ev = s.events(until=lambda e: e.event == "logs", timeout=5)[-1]
            assert [ln["id"] for ln in ev.json()["logs"]] == [live["last_id"]]
            assert ev.id == str(live["last_id"])
        finally:
            s.close()
    # a job that ended: not 204 (the id is not one of this database's) but its tail, then end
    api.patch(f"/api/jobs/{job}", json={"status": "running"})
    api.patch(f"/api/jobs/{job}", json={"status": "completed"})
    s = stream(api, f"scope=job&job_id={job}&limit=2", headers={"Last-Event-ID": beyond})
    try:
        assert s.status == 200
        events = s.events(timeout=5)
        assert [e.event for e in events] == ["logs", "status", "end"]
        assert [ln["message"] for ln in events[0].json()["logs"]] == messages[-2:]
    finally:
        s.close()


def test_resume_pages_are_at_most_1000_lines(api):
    job = new_job(api)
    ack = post(api, [{"level": "info", "message": str(i), "job_id": job} for i in range(2500)])
    s = stream(api, f"scope=job&job_id={job}", headers={"Last-Event-ID": str(ack["first_id"] - 1)})
    try:
        events = s.events(until=lambda e: e.event == "status")
        logs = [e for e in events if e.event == "logs"]
        assert [len(e.json()["logs"]) for e in logs] == [1000, 1000, 500]
        assert ids_of(logs) == list(range(ack["first_id"], ack["last_id"] + 1))
        assert logs[-1].json()["meta"]["displayed_count"] == 2500
    finally:
        s.close()


def test_end_after_all_lines_then_close(api):
    job = new_job(api)
    s = stream(api, f"scope=job&job_id={job}&level=debug")
    try:
        s.events(until=lambda e: e.event == "status")
        api.patch(f"/api/jobs/{job}/steps/build", json={"status": "running"})
        ack = post(api, [{"level": "info", "message": str(i), "job_id": job, "step": "build"}
                         for i in range(50)])
        api.patch(f"/api/jobs/{job}", json={"status": "completed"})
        events = s.events(until=lambda e: e.event == "end", timeout=10)
        assert events[-1].event == "end"
        assert events[-1].json()["job"] == {"id": job, "status": "completed"}
        assert ids_of(events) == list(range(ack["first_id"], ack["last_id"] + 1))
        statuses = [e.json()["job"]["status"] for e in events if e.event == "status"]
        assert statuses[0] == "running" and statuses[-1] == "completed"
        assert s.next_event(timeout=5) is None  # the server closed the stream
    finally:
        s.close()
    # a finished job: backfill, status, end, close
    s = stream(api, f"scope=job&job_id={job}&limit=5")
    try:
        events = s.events(timeout=5)
        assert [e.event for e in events] == ["logs", "status", "end"]
    finally:
        s.close()


def test_cancel_and_delete_end_streams(api):
    a, b = new_job(api), new_job(api)
    s = stream(api, f"scope=job&job_id={a}&job_id={b}")
    try:
        events = s.events(until=lambda e: e.event == "status" and e.json()["job"]["id"] == b)
        api.post(f"/api/jobs/{a}/cancel")
        ev = s.events(until=lambda e: e.event == "status")[-1]
        assert ev.json()["job"] == {"id": a, "status": "cancelled"}
        assert api.delete(f"/api/jobs/{b}").status_code == 204
        events = s.events(until=lambda e: e.event == "end", timeout=5)
        assert events[-1].event == "end"
        assert {j["id"]: j["status"] for j in events[-1].json()["jobs"]} == {
            a: "cancelled", b: "deleted"}
    finally:
        s.close()


def test_several_jobs_on_one_connection(api):
    jobs = [new_job(api) for _ in range(3)]
    for j in jobs:
        post(api, [{"level": "info", "message": f"{j}-{i}", "job_id": j} for i in range(5)])
    s = stream(api, "scope=job&limit=2&" + "&".join(f"job_id={j}" for j in jobs))
    try:
        events = s.events(until=lambda e: e.event == "status" and e.json()["job"]["id"] == jobs[-1])
        backfill = events[0].json()
        assert sorted(ln["message"] for ln in backfill["logs"]) == sorted(
            f"{j}-{i}" for j in jobs for i in (3, 4))
        assert backfill["meta"]["total_count"] == 15 and backfill["meta"]["has_more"] is True
        assert [e.json()["job"]["id"] for e in events if e.event == "status"] == jobs
        post(api, [{"level": "info", "message": "live", "job_id": jobs[1]}])
        ev = s.events(until=lambda e: e.event == "logs")[-1]
        assert [(ln["job_id"], ln["message"]) for ln in ev.json()["logs"]] == [(jobs[1], "live")]
    finally:
        s.close()


def test_two_hundred_streams_receive_every_line(own_api):
    clients = [stream(own_api, "scope=service&limit=0", timeout=30) for _ in range(200)]
    try:
        for c in clients:
            c.events(until=lambda e: e.event == "logs")
        ack = [post(own_api, [{"level": "info", "message": f"fan{i}-{k}"} for k in range(5)])
               for i in range(10)]
        want = [i for a in ack for i in range(a["first_id"], a["last_id"] + 1)]

        def read(c):
            got = []
            while len([i for i in got if i in want]) < len(want):
                ev = c.next_event(timeout=10)
                if ev.event == "logs":
                    got += [ln["id"] for ln in ev.json()["logs"]]
            return [i for i in got if i >= want[0]]
        results = gevent.joinall([gevent.spawn(read, c) for c in clients], timeout=30,
                                 raise_error=True)
        assert all(g.value == want for g in results)
    finally:
        for c in clients:
            c.close()


def test_metrics_count_streams_and_events(own_api):
    s = stream(own_api, "scope=service")
    try:
        s.events(until=lambda e: e.event == "logs")
        text = own_api.get("/metrics").text
        assert 'quaero_sse_streams_open{scope="service"} 1.0' in text
        assert 'quaero_sse_events_sent_total{event="logs"}' in text
    finally:
        s.close()


def metric(api, name):
    """A counter's value from ``/metrics`` (0 when absent)."""
    for line in api.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def assert_refused(c, why, low, high):
    """A stream taken later: 200 text/event-stream, only a jittered retry: and a comment
    saying why, then the server closes it (an EventSource reconnects by itself)."""
    try:
        assert c.status == 200
        assert c.headers["content-type"].startswith("text/event-stream")
        assert c.headers["cache-control"] == "no-cache"
        body = c.body()
        assert c.closed
        fields = [ln for ln in body.decode().split("\n") if ln]
        assert [f.split(":")[0] for f in fields] == ["", "retry"], body
        assert why in body
        assert low <= int(fields[1].split(": ")[1]) <= high
    finally:
        c.close()


def test_stream_cap_and_lifetime(server_factory):
    srv = server_factory(env={"QUAERO_MAX_STREAMS": "2", "QUAERO_STREAM_LIFETIME": "2"})
    url = f"{srv.url}/api/logs/stream?scope=service"
    a, b = SSEClient(url), SSEClient(url)
    try:
        opened = a.events(until=lambda e: e.event == "logs")[-1].received
        b.events(until=lambda e: e.event == "logs")
        c = SSEClient(url)
        assert_refused(c, b"too many open streams", 5000, 15000)
        health = httpx.get(f"{srv.url}/healthz").json()["streams"]
        assert health["open"] == 2 and health["max"] == 2 and not health["accepting"]
        assert health["refused"] == {"stream_cap": 1}
        assert 'quaero_sse_streams_refused_total{reason="stream_cap"} 1.0' in httpx.get(
            f"{srv.url}/metrics").text
        assert a.events(timeout=5) == [] or True
        assert a.closed and 1.5 <= time.monotonic() - opened <= 3  # 2 s less its jitter (15 %)
    finally:
        a.close()
        b.close()


def test_slow_client_is_dropped_and_resumes(server_factory):
    srv = server_factory(env={"QUAERO_STREAM_BUFFER_BYTES": str(2 << 20),
                              "QUAERO_STREAM_STALL_SECONDS": "1"})
    with httpx.Client(base_url=srv.url, timeout=30) as api:
        job = api.post("/api/jobs", json={"name": "big", "steps": []}).json()["id"]
        slow = SSEClient(f"{srv.url}/api/logs/stream?scope=job&job_id={job}", rcvbuf=4096)
        fast = SSEClient(f"{srv.url}/api/logs/stream?scope=job&job_id={job}&limit=0")
        fast.events(until=lambda e: e.event == "status")
        slow_first = slow.events(until=lambda e: e.event == "status")
        assert slow_first  # then never read again
        line = "x" * 1000
        acked, got = [], []
        posted = gevent.event.Event()

        def read_fast():
            while not posted.is_set() or len(got) < len(acked):
                ev = fast.next_event(timeout=20)
                if ev.event == "logs":
                    got.extend(ln["id"] for ln in ev.json()["logs"])
        reader = gevent.spawn(read_fast)
        for _ in range(200):  # 200 x 100 x 1 KB = 20 MB
            r = api.post("/api/logs", json={"logs": [{"level": "info", "message": line,
                                                      "job_id": job}] * 100}).json()
            acked += range(r["first_id"], r["last_id"] + 1)
            gevent.sleep(0.01)
        posted.set()
        reader.get(timeout=30)
        assert got == acked, "the others keep receiving"
        # its socket took nothing for a second: dropped
        deadline = time.monotonic() + 10
        while metric(api, "quaero_sse_slow_clients_dropped_total") < 1:
            assert time.monotonic() < deadline, "the stuck client was not dropped"
            gevent.sleep(0.1)
        # the slow reader finds its stream closed, resumes from its last id, loses nothing
        seen = []
        last = None
        while True:
            ev = slow.next_event(timeout=10)
            if ev is None:
                break
            if ev.event == "logs":
                seen += [ln["id"] for ln in ev.json()["logs"]]
                last = ev.id or last
        slow.close()
        again = SSEClient(f"{srv.url}/api/logs/stream?scope=job&job_id={job}",
                          headers={"Last-Event-ID": last})
        while not seen or seen[-1] < acked[-1]:
            ev = again.next_event(timeout=10)
            if ev.event == "logs":
                seen += [ln["id"] for ln in ev.json()["logs"]]
        again.close()
        assert seen == acked
        fast.close()
