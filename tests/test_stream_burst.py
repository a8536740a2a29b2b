"""Issue 20, the stream under a burst of big lines, against a real gunicorn: a reader that
reads is never dropped because the worker is busy; one whose socket takes nothing is."""
import json
import os
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import gevent
import httpx
import pytest

from tests.helpers import ROOT, reset_pg
from tests.test_stream import metric

PRODUCERS, POSTS, LINES, LINE_BYTES = 4, 25, 32, 16 << 10  # 3,200 lines, about 50 MB


def burst(url, job, producers=PRODUCERS, posts=POSTS, lines=LINES, line_bytes=LINE_BYTES):
    """``producers`` clients posting ``posts`` x ``lines`` lines of ``line_bytes`` as fast as
    they can; returns every acknowledged id, sorted."""
    acked = []

    def produce(p):
        with httpx.Client(timeout=60) as c:
            for k in range(posts):
                body = json.dumps({"logs": [{"level": "info", "job_id": job,
                                             "message": f"p{p}-{k}-{i}-".ljust(line_bytes, "x")}
                                            for i in range(lines)]})
                r = c.post(f"{url}/api/logs", content=body,
                           headers={"Content-Type": "application/json"})
                assert r.status_code == 201, r.text
                acked.extend(range(r.json()["first_id"], r.json()["last_id"] + 1))
    gevent.joinall([gevent.spawn(produce, p) for p in range(producers)], raise_error=True)
    return sorted(acked)


def read_fast(url, timeout, pause=0.0):
    """A reader as fast as it can be, in a process of its own (so that the producers do not
    slow it), until the stream closes or ``timeout`` passes; with ``pause``, one that stops
    reading for that long after the first lines (with a small receive buffer). Prints ``{"ids": [...],
    "events": [...], "closed": bool}`` as JSON: every line id of the ``logs`` events, and
    each event as ``["logs", last id]``, ``["status", job status]`` or ``["end"]``. Says
    ``ready`` on stderr once the first ``status`` came."""
    parts = urlsplit(url)
    sock = socket.socket()
    if pause:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.connect((parts.hostname, parts.port))
    sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    buf, start, ids, events, closed = bytearray(), 0, [], [], False
    deadline = time.monotonic() + timeout
    chunk = bytearray(1 << 20)
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            n = sock.recv_into(chunk)
        except TimeoutError:
            break
        if not n:
            closed = True
            break
        buf += memoryview(chunk)[:n]
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                start = max(0, len(buf) - 1)
                break
            event = bytes(buf[:end])
            del buf[:end + 2]
            start = 0
            name = event.split(b"\n", 1)[0]
            data = event.split(b"\ndata: ", 1)[1] if b"\ndata: " in event else b""
            if name == b"event: logs":
                ids += [ln["id"] for ln in json.loads(data)["logs"]]
                events.append(["logs", ids[-1] if ids else None])
                if pause and ids:
                    time.sleep(pause)
                    pause = 0.0
            elif name == b"event: status":
                if not any(e[0] == "status" for e in events):
                    print("ready", file=sys.stderr, flush=True)
                events.append(["status", json.loads(data)["job"]["status"]])
            elif name == b"event: end":
                events.append(["end"])
    sock.close()
    print(json.dumps({"ids": ids, "events": events, "closed": closed}))


def start_reader(url, timeout=60, pause=0.0):
    code = ("import sys; from tests.test_stream_burst import read_fast; "
            "read_fast(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))")
    proc = subprocess.Popen([sys.executable, "-c", code, url, str(timeout), str(pause)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.stderr.readline().strip() == b"ready", proc.stderr.read()
    return proc


@pytest.mark.parametrize("buffer_bytes, database, pause", [
    (None, "sqlite", 0.0), (1 << 20, "sqlite", 0.0),
    (1 << 20, "sqlite", 2.0), (1 << 20, "postgresql", 2.0)],
    ids=["prompt", "prompt-1MiB-buffer", "pausing-1MiB-buffer", "pausing-1MiB-buffer-postgresql"])
def test_a_reader_that_reads_gets_every_line_of_a_burst_of_big_lines(
        server_factory, request, buffer_bytes, database, pause):
    """The issue's case: 4 producers x 25 POSTs x 32 lines of 16 KiB (50 MB in about a
    second on SQLite) and one reader; then the job ends. The reader gets every line once,
    in order, then the job's status, then ``end``, and is never dropped. Before: a prompt
    reader was dropped after 32 of 3,200 lines (always with a 1 MiB buffer, often with the
    default), because the worker, busy with the burst, had not written its queue out in
    time. A reader that pauses for two seconds falls behind for certain: its stream reads
    the backlog from the database."""
    env = {"QUAERO_STREAM_BUFFER_BYTES": str(buffer_bytes)} if buffer_bytes else {}
    if database == "postgresql":
        env["QUAERO_DATABASE_URL"] = request.getfixturevalue("pg_database")
        reset_pg(env["QUAERO_DATABASE_URL"])
    srv = server_factory(env=env)
    api = httpx.Client(base_url=srv.url, timeout=30)
    job = api.post("/api/jobs", json={"name": "burst", "steps": []}).json()["id"]
    reader = start_reader(f"{srv.url}/api/logs/stream?scope=job&job_id={job}&limit=0",
                          pause=pause)
    try:
        start = time.monotonic()
        acked = burst(srv.url, job)
        posted = time.monotonic() - start
        for status in ("running", "completed"):
            assert api.patch(f"/api/jobs/{job}", json={"status": status}).status_code == 200
        out, err = reader.communicate(timeout=90)
        done = time.monotonic() - start
        got = json.loads(out)
        print(f"burst ({database}, pause {pause} s): {len(acked)} lines in {posted:.2f} s; the reader got {len(got['ids'])} "
              f"by {done:.2f} s; its stream fell behind "
              f"{metric(api, 'quaero_sse_streams_fell_behind_total')} times")
        assert got["ids"] == acked, f"the reader got {len(got['ids'])} of {len(acked)} lines"
        assert got["events"][-1] == ["end"] and got["closed"], got["events"][-3:]
        statuses = [i for i, e in enumerate(got["events"]) if e[0] == "status"]
        last_logs = max(i for i, e in enumerate(got["events"]) if e[0] == "logs")
        assert got["events"][statuses[-1]] == ["status", "completed"]
        assert statuses[-1] > last_logs, "the status came before lines committed before it"
        assert metric(api, "quaero_sse_slow_clients_dropped_total") == 0
        if pause:
            assert metric(api, "quaero_sse_streams_fell_behind_total") >= 1
    finally:
        api.close()
        if reader.poll() is None:
            reader.kill()
            reader.wait()
