"""Alerts: how fast a notification leaves, how late an absence fires, and what 100 rules
cost ingest.

    python bench/alerts.py                  # SQLite
    python bench/alerts.py --postgres       # PostgreSQL (and Redis if QUAERO_BENCH_REDIS_URL)
    python bench/alerts.py --seconds 10 --probes 200

One gunicorn worker on a fresh database, a webhook receiver in this process (a threaded
``http.server``), and background ingest of ``--rate`` lines/s (100-line POSTs) throughout.

1. commit -> webhook: 100 rules (``match``, threshold 1, each its own word) while the
   background ingest runs; a probe line for one of them is posted every 50 ms and the time
   from sending its POST to the webhook's arrival is taken (an upper bound of "from its
   commit": the POST's own time is in it). Floor, same run: the POST's own round trip (the
   commit's acknowledgement) plus a POST straight to the receiver.
2. absence: a rule with a ``--window`` s window; the time from the last matching line's
   acknowledgement to the webhook, minus the window (goal: at most 2 s). Floor: the
   commit -> webhook p50 above (the least any notification takes).
3. ingest CPU per line at ``--rate`` lines/s: the worker's utime+stime over the window
   divided by the lines, with 100 rules of every kind (60 match, 20 absence, 10 job_failed,
   10 long_running; realistic filters: levels, words, sources) and with none (the floor),
   alternated ``--rounds`` times on fresh servers; the median of each.
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Server, cpu_seconds, pct, revision, temp_database  # noqa: E402

WORDS = ["timeout", "refused", "deadlock", "oom", "panic", "retry", "slow", "quota",
         "disk", "auth", "tls", "dns", "gc", "lock", "queue", "shard", "cache", "pool",
         "socket", "parse"]


class Receiver:
    def __init__(self):
        self.arrivals = {}   # rule -> [(time, body)]
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.time()
                with receiver.lock:
                    receiver.arrivals.setdefault(body["rule"], []).append((now, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def first(self, rule, state="firing", after=0.0):
        with self.lock:
            for t, body in self.arrivals.get(rule, []):
                if body["state"] == state and t >= after:
                    return t
        return None


def rules_file(folder, url, probes, mix):
    dest = f'[[destination]]\nname = "hook"\ntype = "webhook"\nurl = "{url}"\n'
    out = [dest]
    for i in range(probes):
        out.append(f'[[rule]]\nname = "probe-{i}"\nkind = "match"\nq = "probe-{i}-"\n'
                   'threshold = 1\nwindow = 1\nnotify = ["hook"]\n')
    if mix:
        for i in range(60):
            level = ("error", "warn", "info")[i % 3]
            out.append(f'[[rule]]\nname = "m{i}"\nkind = "match"\nlevel = "{level}"\n'
                       f'q = "{WORDS[i % 20]}-{i}"\nthreshold = 5\nwindow = 60\nnotify = ["hook"]\n')
        for i in range(20):
            out.append(f'[[rule]]\nname = "a{i}"\nkind = "absence"\nsource = "svc-{i}"\n'
                       f'window = 3600\nnotify = ["hook"]\n')
        for i in range(10):
            out.append(f'[[rule]]\nname = "f{i}"\nkind = "job_failed"\ndefinition = "job-{i}-*"\n'
                       'notify = ["hook"]\n')
            out.append(f'[[rule]]\nname = "l{i}"\nkind = "long_running"\ndefinition = "job-{i}-*"\n'
                       'longer_than = 3600\nnotify = ["hook"]\n')
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "rules.toml"), "w") as f:
        f.write("\n".join(out))


def background_body(n, k):
    lines = []
    for i in range(n):
        word = WORDS[(k + i) % 20]
        lines.append({"level": ("info", "info", "debug", "warn", "info", "error")[i % 6],
                      "message": f"request {k}-{i} {word} took {i % 97} ms user=u{i % 13}",
                      "source": f"svc-{i % 25}"})
    return json.dumps({"logs": lines}).encode()


class Load:
    """``rate`` lines/s in 100-line POSTs on one keep-alive connection, until stopped."""

    def __init__(self, port, rate):
        self.port, self.rate = port, rate
        self.lines = 0
        self.stop = threading.Event()
        self.bodies = [background_body(100, k) for k in range(20)]
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        every = 100 / self.rate
        nxt = time.monotonic()
        k = 0
        while not self.stop.is_set():
            body = self.bodies[k % len(self.bodies)]
            conn.request("POST", "/api/logs", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            assert r.status == 201, r.status
            self.lines += 100
            k += 1
            nxt += every
            time.sleep(max(0.0, nxt - time.monotonic()))
        conn.close()


def post(port, lines):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t0 = time.time()
    conn.request("POST", "/api/logs", body=json.dumps({"logs": lines}),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    t1 = time.time()
    conn.close()
    assert r.status == 201, r.status
    return t0, t1


def direct(url):
    host, port = url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps({"rule": "floor", "state": "x"})
    t0 = time.time()
    conn.request("POST", "/hook", body=body, headers={"Content-Type": "application/json"})
    conn.getresponse().read()
    conn.close()
    return time.time() - t0


def wait_evaluator(server, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/api/alerts")
        data = json.loads(conn.getresponse().read())
        conn.close()
        if data.get("evaluator"):
            return data
        time.sleep(0.2)
    raise RuntimeError("no evaluator")


def latency_and_absence(db_url, env, args):
    receiver = Receiver()
    folder = tempfile.mkdtemp(prefix="quaero-bench-alerts-")
    rules_file(folder, receiver.url, 100, mix=False)
    with open(os.path.join(folder, "rules.toml"), "a") as f:
        f.write(f'\n[[rule]]\nname = "heartbeat"\nkind = "absence"\nsource = "heartbeat"\n'
                f'window = {args.window}\nnotify = ["hook"]\n')
    with Server(db_url, env=dict(env, QUAERO_ALERTS_DIR=folder)) as server:
        wait_evaluator(server)
        load = Load(server.port, args.rate)
        load.thread.start()
        time.sleep(1)
        lat, floor = [], []
        for i in range(args.probes):
            rule = f"probe-{i % 100}"
            after = time.time()
            t0, t1 = post(server.port, [{"level": "info", "message": f"probe-{i % 100}- {i}"}])
            floor.append((t1 - t0) + direct(receiver.url))
            deadline = time.time() + 10
            while (arrived := receiver.first(rule, after=after)) is None and time.time() < deadline:
                time.sleep(0.005)
            lat.append(arrived - t0 if arrived else float("inf"))
            # the next probe of this rule comes after its window resolved it
            time.sleep(max(0.0, 0.05 - (time.time() - t1)))
            if i % 100 == 99:
                time.sleep(2.5)
        delays = []
        for _ in range(args.absence_runs):
            _, acked = post(server.port, [{"level": "info", "message": "alive", "source": "heartbeat"}])
            deadline = time.time() + args.window + 15
            while (fired := receiver.first("heartbeat", after=acked)) is None and time.time() < deadline:
                time.sleep(0.01)
            delays.append((fired - acked) - args.window if fired else float("inf"))
        load.stop.set()
        load.thread.join()
    return lat, floor, delays


def cpu_per_line(db_url, env, args, with_rules):
    receiver = Receiver()
    folder = tempfile.mkdtemp(prefix="quaero-bench-alerts-")
    if with_rules:
        rules_file(folder, receiver.url, 0, mix=True)
    with Server(db_url, env=dict(env, QUAERO_ALERTS_DIR=folder)) as server:
        if with_rules:
            data = wait_evaluator(server)
            assert len(data["rules"]) == 100, len(data["rules"])
        pid = server.worker_pid()
        load = Load(server.port, args.rate)
        load.thread.start()
        time.sleep(2)   # warm: the evaluator has read the rules, the writer is steady
        c0, n0 = cpu_seconds(pid), load.lines
        time.sleep(args.seconds)
        c1, n1 = cpu_seconds(pid), load.lines
        load.stop.set()
        load.thread.join()
    return (c1 - c0) / max(n1 - n0, 1) * 1e6, (n1 - n0) / args.seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--window", type=float, default=3)
    ap.add_argument("--absence-runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpu-only", action="store_true", help="only part 3 (ingest CPU)")
    args = ap.parse_args()
    kind = "postgresql" if args.postgres else "sqlite"
    env = {}
    if args.postgres and os.environ.get("QUAERO_BENCH_REDIS_URL"):
        env["QUAERO_REDIS_URL"] = os.environ["QUAERO_BENCH_REDIS_URL"]
    print(f"bench/alerts.py at {revision()} on {kind}, {args.rate} lines/s of background ingest")
    if not args.cpu_only:
        latency_and_absence_figures(kind, env, args)
    cpu_figures(kind, env, args)


def latency_and_absence_figures(kind, env, args):
    with temp_database(kind) as url:
        lat, floor, delays = latency_and_absence(url, env, args)
    print(f"commit -> webhook ({len(lat)} probes, 100 rules): p50 {pct(lat, 50) * 1000:.0f} ms, "
          f"p99 {pct(lat, 99) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms (goal p99 <= 2000 ms)"
          f" | floor (POST ack + a direct webhook POST): p50 {pct(floor, 50) * 1000:.0f} ms, "
          f"p99 {pct(floor, 99) * 1000:.0f} ms")
    print(f"absence, window {args.window:g} s: fired {', '.join(f'{d:+.2f}' for d in delays)} s "
          f"after the window (goal <= +2 s) | floor (commit -> webhook p50): "
          f"{pct(lat, 50):.2f} s")


def cpu_figures(kind, env, args):
    none, some = [], []
    for _ in range(args.rounds):
        with temp_database(kind) as url:
            none.append(cpu_per_line(url, env, args, False))
        with temp_database(kind) as url:
            some.append(cpu_per_line(url, env, args, True))
    base = statistics.median(c for c, _ in none)
    ruled = statistics.median(c for c, _ in some)
    print(f"ingest CPU per line at {statistics.median(r for _, r in some):.0f} lines/s: "
          f"{ruled:.1f} us with 100 rules vs {base:.1f} us with none (floor): "
          f"{(ruled / base - 1) * 100:+.1f} % (goal <= +10 %); rounds: none "
          f"{', '.join(f'{c:.1f}' for c, _ in none)}, rules {', '.join(f'{c:.1f}' for c, _ in some)}")


if __name__ == "__main__":
    main()
