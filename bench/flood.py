"""Streams that never read, and big POSTs meanwhile: does the worker stay small and answer?

    python bench/flood.py                          # the issue's case: 1000 sockets, 2 x 10,000 lines
    python bench/flood.py --streams 2000 --posts 2 --lines 10000 --message-bytes 100

Server: ``gunicorn -c gunicorn.conf.py wsgi:app`` (one gevent worker, SQLite in a temporary
directory). Load: ``--streams`` sockets open ``/api/logs/stream?scope=service&limit=0``
(HTTP/1.1, a 4 KB receive buffer) and never read a byte after the request; then
``--posts`` concurrent ``POST /api/logs`` of ``--lines`` service lines of
``--message-bytes`` bytes each, while ``/healthz`` is asked every 100 ms.

Printed: the worker's RSS growth (peak during the load and until ``--settle`` s after the
last POST, minus the RSS with the streams open before any POST), each POST's time to its
201, and the worst ``/healthz`` latency. Bound (issue 10): +300 MB, POST <= 5 s,
/healthz <= 2 s.
"""
import argparse
import http.client
import json
import os
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import Server, raise_nofile, revision, rss_bytes, temp_database  # noqa: E402


def open_never_reading(host, port, n, path="/api/logs/stream?scope=service&limit=0"):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  "Accept: text/event-stream\r\n\r\n".encode())
        socks.append(s)
    return socks


def _timed_request(host, port, method, path, body=None, timeout=60):
    start = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        return r.status, time.monotonic() - start
    finally:
        conn.close()


def flood(url, worker_pid, streams=1000, posts=2, lines=10000, message_bytes=100,
          settle=3.0, open_wait=None):
    """Run the load against a running server; returns the figures as a dict."""
    host, port = url.split("//", 1)[1].split(":")
    port = int(port)
    socks = open_never_reading(host, port, streams)
    try:
        # every stream subscribed: wait until the worker counts them (or a fixed time)
        deadline = time.monotonic() + (open_wait or max(3.0, streams / 200))
        while time.monotonic() < deadline:
            text = http.client.HTTPConnection(host, port, timeout=10)
            text.request("GET", "/metrics")
            body = text.getresponse().read().decode()
            text.close()
            open_ = sum(float(ln.split()[-1]) for ln in body.splitlines()
                        if ln.startswith("quaero_sse_streams_open{"))
            if open_ >= streams:
                break
            time.sleep(0.2)
        time.sleep(0.5)
        base = rss_bytes(worker_pid)
        peak = [base]
        health = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_bytes(worker_pid))
                time.sleep(0.02)

        def poll_health():
            while not stop.is_set():
                try:
                    health.append(_timed_request(host, port, "GET", "/healthz", timeout=30)[1])
                except OSError:
                    health.append(float("inf"))
                time.sleep(0.1)

        message = "x" * message_bytes
        body = json.dumps({"logs": [{"level": "info", "message": message}] * lines})
        results = [None] * posts

        def post(i):
            try:
                results[i] = _timed_request(host, port, "POST", "/api/logs", body)
            except OSError as exc:
                results[i] = (repr(exc), float("inf"))

        helpers = [threading.Thread(target=sample), threading.Thread(target=poll_health)]
        for t in helpers:
            t.start()
        time.sleep(0.3)
        posters = [threading.Thread(target=post, args=(i,)) for i in range(posts)]
        for t in posters:
            t.start()
        for t in posters:
            t.join()
        time.sleep(settle)
        stop.set()
        for t in helpers:
            t.join()
        return {"streams": streams, "rss_base_mb": base / 2**20,
                "rss_growth_mb": (peak[0] - base) / 2**20,
                "post_status": [r[0] for r in results],
                "post_seconds": [r[1] for r in results],
                "healthz_worst_seconds": max(health) if health else float("inf"),
                "healthz_count": len(health)}
    finally:
        for s in socks:
            s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--posts", type=int, default=2)
    ap.add_argument("--lines", type=int, default=10000)
    ap.add_argument("--message-bytes", type=int, default=100)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    args = ap.parse_args()
    raise_nofile(65536)
    print(f"revision {revision()}; {args.streams} never-reading streams, {args.posts} POSTs "
          f"of {args.lines} lines x {args.message_bytes} B ({args.database})")
    with temp_database(args.database) as db_url, Server(
            db_url, env={"QUAERO_WORKER_CONNECTIONS": str(args.streams * 2 + 200)}) as srv:
        r = flood(srv.url, srv.worker_pid(), args.streams, args.posts, args.lines,
                  args.message_bytes, args.settle)
    print(f"worker RSS with streams open: {r['rss_base_mb']:.0f} MB; "
          f"growth (peak): +{r['rss_growth_mb']:.0f} MB (bound +300 MB)")
    print("POST: " + ", ".join(f"{s} in {t:.2f} s" for s, t in
                               zip(r["post_status"], r["post_seconds"])) + " (bound 5 s)")
    print(f"/healthz worst: {r['healthz_worst_seconds']:.2f} s over {r['healthz_count']} "
          "requests (bound 2 s)")
    ok = (r["rss_growth_mb"] <= 300 and max(r["post_seconds"]) <= 5
          and r["healthz_worst_seconds"] <= 2 and all(s == 201 for s in r["post_status"]))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
