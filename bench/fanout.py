"""Live fan-out: Quaero against a raw gevent floor, under the same load, in one run.

    python bench/fanout.py                       # the issue's figures
    python bench/fanout.py --profile             # also py-spy the Quaero worker under load
    python bench/fanout.py --clients 1000 --seconds 10 --idle 5000

Servers: Quaero (``gunicorn -c gunicorn.conf.py wsgi:app``, one gevent worker, SQLite in a
temporary directory) and the floor, a tiny gevent server in this file (``--floor-server``)
that takes the same ``POST /api/logs`` body, gives lines the same fields and ids, and
for every 150 ms batch encodes ``event: logs / id: / data: {"logs":[...]}`` once and
writes the same bytes to every socket (leading edge, like Quaero: a batch after a quiet
150 ms goes out at once). Each server is pinned to CPU 0; the client swarm and the
producer to CPU 1.

Load: ``--clients`` clients on ``/api/logs/stream?scope=service`` (one gevent process,
raw sockets, HTTP/1.0 request, parsing ``data:`` lines), while the producer posts 10
lines every 100 ms (100 lines/s) for ``--seconds`` s, each line carrying its send time
(``time.time()`` just before the POST; same host clock). Then 1 s to drain.

Printed for each server:
- server CPU µs per delivered line-to-client: utime+stime of the server process (the
  gunicorn worker) over the load window from /proc/<pid>/stat, / lines delivered;
- delivered %: distinct lines received by all clients / (lines acknowledged × clients)
  (and a warning when the server acknowledged less than the offered 100 lines/s);
- latency p50/p99: client receive time − embedded send time;
- RSS per stream: (worker RSS with the clients connected at the end of the load − RSS
  with 0 streams) / clients;
- quiet latency: one client, one line every 300 ms (the stream is quiet in between, so
  every line takes the leading edge), 40 lines;
- RSS per idle stream: a fresh server, (RSS with ``--idle`` open streams − RSS with 0) /
  ``--idle``.
Targets (from the issue): 100 % delivered, p99 ≤ 250 ms, Quaero CPU per delivery ≤ 3×
the floor's, quiet p50 ≤ 20 ms, idle RSS per stream ≤ 30 KB.
"""
import argparse
import http.client
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import (Server, cpu_seconds, free_port, loadavg, raise_nofile,  # noqa: E402
                     revision, rss_bytes, temp_database)

STREAM_PATH = "/api/logs/stream?scope=service"
SERVER_CPU, CLIENT_CPU = {0}, {1}


# --- the floor server ------------------------------------------------------------------------

def floor_server(port, interval=0.15):
    import gevent
    from gevent.event import Event
    from gevent.server import StreamServer
    from datetime import datetime, timezone

    raise_nofile()
    clients = set()
    pending = []
    state = {"id": 0, "line": 0, "last_flush": 0.0}
    wake = Event()

    def iso(dt):
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"

    def flusher():
        while True:
            wake.wait()
            wake.clear()
            while pending:
                due = state["last_flush"] + interval
                now = time.monotonic()
                if now < due:  # inside the window: coalesce until its end
                    gevent.sleep(due - now)
                    continue
                lines = pending[:]
                pending.clear()
                data = (b"event: logs\nid: %d\ndata: " % lines[-1]["id"]
                        + json.dumps({"logs": lines}, ensure_ascii=False,
                                     separators=(",", ":")).encode() + b"\n\n")
                state["last_flush"] = time.monotonic()
                for s in list(clients):
                    try:
                        s.sendall(data)
                    except OSError:
                        clients.discard(s)

    def handle(sock, addr):
        rfile = sock.makefile("rb")
        while True:
            request_line = rfile.readline()
            if not request_line:
                return
            headers = {}
            while True:
                h = rfile.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.partition(b":")
                headers[k.strip().lower()] = v.strip()
            method, path, _ = request_line.split(b" ", 2)
            if method == b"GET" and path.startswith(b"/api/logs/stream"):
                rfile.close()
                sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n\r\n"
                             b"retry: 2000\n\nevent: logs\ndata: {\"logs\":[]}\n\n")
                clients.add(sock)
                try:
                    while sock.recv(1024):
                        pass
                except OSError:
                    pass
                finally:
                    clients.discard(sock)
                return
            if method == b"POST":
                body = rfile.read(int(headers.get(b"content-length", b"0")))
                now = iso(datetime.now(timezone.utc))
                first = state["id"] + 1
                for item in json.loads(body)["logs"]:
                    state["id"] += 1
                    state["line"] += 1
                    pending.append({"id": state["id"], "timestamp": now, "level": item["level"],
                                    "message": item["message"], "job_id": None,
                                    "step_name": None, "line_number": state["line"]})
                wake.set()
                out = json.dumps({"accepted": state["id"] - first + 1, "first_id": first,
                                  "last_id": state["id"]}).encode()
                status = b"201 CREATED"
            else:
                out, status = b'{"status":"ok"}', b"200 OK"
            sock.sendall(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (status, len(out), out))

    gevent.spawn(flusher)
    StreamServer(("127.0.0.1", port), handle, backlog=4096).serve_forever()


class FloorServer:
    def __init__(self, cpus=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cpus = cpus
        self.proc = None

    def __enter__(self):
        cpus = self.cpus
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--floor-server", str(self.port)],
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/healthz")
                c.getresponse().read()
                c.close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("floor server did not come up")

    def worker_pid(self):
        return self.proc.pid

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)


# --- the client swarm ----------------------------------------------------------------------

def swarm(port, path, n, tag, connect_concurrency=100):
    """n raw-socket SSE clients in one gevent process. Prints ``ready <n>`` once every
    client has its first ``logs`` event, then on SIGUSR1 prints one JSON summary."""
    import gevent
    import gevent.socket
    from gevent.event import Event
    from gevent.lock import BoundedSemaphore

    raise_nofile()
    stop, all_ready = Event(), Event()
    gevent.signal_handler(signal.SIGUSR1, stop.set)
    pattern = re.compile(rb'"message":"fan ' + tag.encode() + rb' (\d+) ([0-9.]+)"')
    lat, counts, dups = [], [0] * n, [0]
    state = {"ready": 0, "eof": 0, "errors": 0, "bad_status": 0}
    sem = BoundedSemaphore(connect_concurrency)
    socks = []
    request = (f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
               f"Accept: text/event-stream\r\n\r\n").encode()

    def client(i):
        last_seq = -1
        try:
            with sem:
                s = gevent.socket.create_connection(("127.0.0.1", port))
                socks.append(s)
                s.sendall(request)
                buf = b""
                while b"event: logs" not in buf or not buf.endswith(b"\n\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise EOFError
                    buf += chunk
                if not buf.startswith(b"HTTP/1.") or buf[9:12] != b"200":
                    state["bad_status"] += 1
                    return
            buf = b""
            state["ready"] += 1
            if state["ready"] == n:
                all_ready.set()
            while True:
                chunk = s.recv(262144)
                now = time.time()
                if not chunk:
                    state["eof"] += 1
                    return
                buf += chunk
                end = buf.rfind(b"\n\n")
                if end < 0:
                    continue
                done, buf = buf[:end], buf[end + 2:]
                for m in pattern.finditer(done):
                    seq = int(m.group(1))
                    if seq <= last_seq:
                        dups[0] += 1
                        continue
                    last_seq = seq
                    counts[i] += 1
                    lat.append(now - float(m.group(2)))
        except (OSError, EOFError):
            if not stop.is_set():
                state["errors"] += 1
            if state["ready"] + state["errors"] + state["bad_status"] >= n:
                all_ready.set()

    greenlets = [gevent.spawn(client, i) for i in range(n)]
    all_ready.wait(timeout=300)
    print("ready", state["ready"], flush=True)
    cpu0, t0 = time.process_time(), time.monotonic()
    stop.wait()
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - t0
    for s in socks:
        s.close()
    gevent.killall(greenlets, timeout=5)
    lat.sort()

    def p(q):
        return lat[min(len(lat) - 1, int(q / 100 * len(lat)))] * 1e3 if lat else None

    print(json.dumps({"ready": state["ready"], "eof": state["eof"], "errors": state["errors"],
                      "bad_status": state["bad_status"], "received": sum(counts),
                      "min_per_client": min(counts) if counts else 0,
                      "max_per_client": max(counts) if counts else 0,
                      "dups": dups[0], "p50_ms": p(50), "p90_ms": p(90), "p99_ms": p(99),
                      "max_ms": p(100), "swarm_cpu_frac": cpu / wall if wall else 0}),
          flush=True)


def stream_path(args):
    return STREAM_PATH + ("&" + args.filter if args.filter else "")


class Swarm:
    def __init__(self, port, n, tag, path=STREAM_PATH):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--swarm", str(port), path, str(n), tag],
            stdout=subprocess.PIPE, preexec_fn=lambda: os.sched_setaffinity(0, CLIENT_CPU))
        line = self._readline(300)
        if not line.startswith("ready"):
            raise RuntimeError(f"swarm: {line!r}")
        self.ready = int(line.split()[1])

    def _readline(self, timeout):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise RuntimeError("swarm did not answer")
        return self.proc.stdout.readline().decode()

    def finish(self):
        self.proc.send_signal(signal.SIGUSR1)
        result = json.loads(self._readline(120))
        self.proc.wait(30)
        return result


# --- the producer --------------------------------------------------------------------------

class Producer:
    """Posts lines to ``POST /api/logs`` on one keep-alive connection and waits for the
    201 each time, as a real producer does."""

    def __init__(self, port, tag):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.tag = tag
        self.seq = 0
        self.acked = 0
        self.post_seconds = []

    def post(self, n):
        t = time.time()
        body = json.dumps({"logs": [{"level": "info", "message": f"fan {self.tag} {self.seq + i} {t:.6f}"}
                                    for i in range(n)]}).encode()
        self.seq += n
        t0 = time.perf_counter()
        self.conn.request("POST", "/api/logs", body=body,
                          headers={"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        self.post_seconds.append(time.perf_counter() - t0)
        if r.status != 201:
            raise RuntimeError(f"POST -> {r.status} {data[:200]!r}")
        self.acked += json.loads(data)["accepted"]

    def run(self, per_post, every, seconds):
        t0 = time.monotonic()
        for k in range(int(round(seconds / every))):
            delay = t0 + k * every - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.post(per_post)
        return time.monotonic() - t0 + every  # the last post's interval included


# --- the runs --------------------------------------------------------------------------------

def load_run(make_server, name, args, profile=False):
    with make_server() as server:
        pid = server.worker_pid()
        time.sleep(0.5)
        rss0 = rss_bytes(pid)
        tag = uuid.uuid4().hex[:6]
        swarm_ = Swarm(server.port, args.clients, tag, path=stream_path(args))
        time.sleep(1.0)
        rss_connected = rss_bytes(pid)
        producer = Producer(server.port, tag)
        spy = None
        if profile:
            out = os.path.join(HERE, "results", f"fanout-{name}.collapsed.txt")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"),
                                    "record", "-p", str(pid), "-r", "200", "-f", "raw",
                                    "-o", out, "-d", str(int(args.seconds) + 1)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   preexec_fn=lambda: os.sched_setaffinity(0, CLIENT_CPU))
        c0, t0 = cpu_seconds(pid), time.monotonic()
        took = producer.run(args.per_post, args.every, args.seconds)
        time.sleep(1.0)  # drain
        cpu = cpu_seconds(pid) - c0
        window = time.monotonic() - t0
        rss_load = rss_bytes(pid)
        res = swarm_.finish()
        if spy is not None:
            spy.wait(60)
        dropped = None
        if name == "quaero":
            c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            c.request("GET", "/metrics")
            m = c.getresponse().read().decode()
            dropped = sum(float(line.split()[-1]) for line in m.splitlines()
                          if line.startswith("quaero_sse_slow_clients_dropped_total"))
    expected = producer.acked * args.clients
    return {"cpu_s": cpu, "window_s": window, "cpu_frac": cpu / window,
            "cpu_us_per_delivery": cpu / res["received"] * 1e6 if res["received"] else float("inf"),
            "delivered_pct": 100.0 * res["received"] / expected if expected else 0.0,
            "rate": producer.acked / took, "acked": producer.acked,
            "post_p50_ms": sorted(producer.post_seconds)[len(producer.post_seconds) // 2] * 1e3,
            "rss0": rss0, "rss_per_stream_connected": (rss_connected - rss0) / args.clients,
            "rss_per_stream": (rss_load - rss0) / args.clients, "swarm": res, "dropped": dropped}


def quiet_and_idle_run(make_server, args):
    with make_server() as server:
        pid = server.worker_pid()
        tag = uuid.uuid4().hex[:6]
        swarm_ = Swarm(server.port, 1, tag)
        time.sleep(0.3)
        producer = Producer(server.port, tag)
        for _ in range(args.quiet_lines):
            producer.post(1)
            time.sleep(0.3)
        quiet = swarm_.finish()
        time.sleep(1.0)
        rss0 = rss_bytes(pid)
        swarm_ = Swarm(server.port, args.idle, uuid.uuid4().hex[:6])
        time.sleep(3.0)
        rss_idle = rss_bytes(pid)
        idle_res = swarm_.finish()
    return {"quiet": quiet, "idle_ready": swarm_.ready, "rss0_idle": rss0,
            "rss_per_idle_stream": (rss_idle - rss0) / max(args.idle, 1), "idle": idle_res}


def report(name, r, offered):
    s = r["swarm"]
    print(f"{name:<7} CPU {r['cpu_us_per_delivery']:6.2f} µs/delivery  "
          f"(server {r['cpu_frac'] * 100:4.0f} % of a core over {r['window_s']:.1f} s)  "
          f"delivered {r['delivered_pct']:6.2f} %  p50 {s['p50_ms']:6.1f} ms  "
          f"p99 {s['p99_ms']:6.1f} ms  max {s['max_ms']:6.1f} ms  "
          f"RSS/stream {r['rss_per_stream'] / 1024:5.1f} KB  "
          f"quiet p50 {r['quiet']['p50_ms']:5.1f} ms (p99 {r['quiet']['p99_ms']:5.1f})  "
          f"idle RSS/stream {r['rss_per_idle_stream'] / 1024:5.1f} KB ({r['idle_ready']} open)")
    print(f"        clients ready {s['ready']}, eof {s['eof']}, errors {s['errors']}, "
          f"dup/out-of-order {s['dups']}, per-client lines min {s['min_per_client']} / max "
          f"{s['max_per_client']} of {r['acked']}, producer {r['rate']:.1f} lines/s "
          f"(POST p50 {r['post_p50_ms']:.1f} ms), swarm CPU {s['swarm_cpu_frac'] * 100:.0f} %"
          + (f", slow clients dropped {r['dropped']:.0f}" if r["dropped"] is not None else ""))
    if r["rate"] < 0.95 * offered:
        print(f"        WARNING: the server did not take the offered load: {r['rate']:.1f} of "
              f"{offered:.0f} lines/s acknowledged (each POST waits for its 201)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--per-post", type=int, default=10, help="lines per POST")
    ap.add_argument("--every", type=float, default=0.1, help="seconds between POSTs")
    ap.add_argument("--idle", type=int, default=5000)
    ap.add_argument("--quiet-lines", type=int, default=40)
    ap.add_argument("--only", choices=["quaero", "floor"])
    ap.add_argument("--filter", default="", metavar="QUERY",
                    help="added to every loaded stream's query, e.g. q=fan (a live grep that "
                         "matches every line) or level=info; the floor ignores it")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy record the Quaero worker during the load window "
                         "(bench/results/fanout-quaero.collapsed.txt, collapsed stacks)")
    ap.add_argument("--floor-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--swarm", nargs=4, metavar=("PORT", "PATH", "N", "TAG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_server:
        return floor_server(args.floor_server)
    if args.swarm:
        port, path, n, tag = args.swarm
        return swarm(int(port), path, int(n), tag)

    raise_nofile()
    os.sched_setaffinity(0, CLIENT_CPU)
    rate = args.per_post / args.every
    print(f"fan-out benchmark: {args.clients} clients on {stream_path(args)}, {rate:.0f} lines/s "
          f"({args.per_post} lines every {args.every * 1000:.0f} ms) for {args.seconds:.0f} s; "
          f"server on CPU {sorted(SERVER_CPU)}, swarm + producer on CPU {sorted(CLIENT_CPU)} "
          f"(load average {loadavg()}), Quaero at {revision()}")
    results = {}
    with temp_database("sqlite") as url1, temp_database("sqlite") as url2:
        servers = {"floor": [lambda: FloorServer(SERVER_CPU)] * 2,
                   "quaero": [lambda: Server(url1, cpus=SERVER_CPU),
                              lambda: Server(url2, cpus=SERVER_CPU)]}
        for name in ("floor", "quaero"):
            if args.only and name != args.only:
                continue
            r = load_run(servers[name][0], name, args, profile=args.profile and name == "quaero")
            r.update(quiet_and_idle_run(servers[name][1], args))
            results[name] = r
    print()
    for name, r in results.items():
        report(name, r, rate)
    if "quaero" in results:
        q = results["quaero"]
        print("\ntargets (Quaero):")
        checks = [("offered load taken", q["rate"] >= 0.95 * rate, f"{q['rate']:.1f} lines/s"),
                  ("delivered 100 %", q["delivered_pct"] >= 100.0, f"{q['delivered_pct']:.2f} %"),
                  ("p99 <= 250 ms", q["swarm"]["p99_ms"] <= 250, f"{q['swarm']['p99_ms']:.1f} ms"),
                  ("quiet p50 <= 20 ms", q["quiet"]["p50_ms"] <= 20, f"{q['quiet']['p50_ms']:.1f} ms"),
                  ("idle RSS/stream <= 30 KB", q["rss_per_idle_stream"] <= 30 * 1024,
                   f"{q['rss_per_idle_stream'] / 1024:.1f} KB")]
        if "floor" in results:
            ratio = q["cpu_us_per_delivery"] / results["floor"]["cpu_us_per_delivery"]
            checks.insert(2, ("CPU/delivery <= 3x floor", ratio <= 3.0, f"{ratio:.2f}x"))
        for label, ok, value in checks:
            print(f"  {'MET   ' if ok else 'MISSED'} {label:<26} {value}")


if __name__ == "__main__":
    main()
