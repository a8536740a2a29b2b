"""CPU per request: Quaero beside a Flask floor, side by side in one run.

    python bench/request_cost.py [--requests 2000] [--rounds 3] [--idle 1000] [--profile]

Servers, each ``gunicorn -c gunicorn.conf.py`` with one gevent worker pinned to CPU 0 on a
fresh SQLite file: Quaero (``wsgi:app``) and the floor (``bench/floor_app.py``: parse the
JSON, validate, one SQLite transaction into a table with the same three indexes; read
the last 100 lines of a job as JSON). Each gets the same job (Quaero: a job with a step
``build``) and 5,000 lines first.

Requests, from one keep-alive connection on CPU 1, one at a time:
- ``post``: one-line ``POST /api/logs`` with ``job_id`` and ``step``;
- ``get``:  ``GET /api/logs?scope=job&job_id=X&limit=100``.

CPU per request is the worker's utime+stime (``/proc/<pid>/stat``) over ``--requests``
requests, / requests. Rounds alternate floor and Quaero; the median round is printed with
the ratio. Then ``--idle`` idle streams are opened on each server (Quaero: the service
stream; the floor: a stream that sends one event and waits) and the rounds run again:
idle streams must cost nothing per request. Target (issue 14): Quaero ≤ 2× the floor.
``--profile`` runs py-spy on the Quaero worker during one extra round of each request
(collapsed stacks in ``bench/results/requests-*.txt``).
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import (Server, cpu_seconds, create_job, loadavg, median, raise_nofile,  # noqa: E402
                     revision, temp_database)

SERVER_CPU, CLIENT_CPU = {0}, {1}
MESSAGE = "GET /api/items?page={i} 200 12.3ms user=bench request_id=0123456789abcdef"


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method, path, body=None, expect=200):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            r = self.conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self.conn.close()  # the server closed an idle keep-alive connection
            self.conn.request(method, path, body=body, headers=headers)
            r = self.conn.getresponse()
        data = r.read()
        if r.status != expect:
            raise RuntimeError(f"{method} {path} -> {r.status} {data[:300]!r}")
        return data


def requests_for(job_id):
    one = json.dumps({"logs": [{"level": "info", "message": MESSAGE.format(i=1),
                                "job_id": job_id, "step": "build"}]}).encode()
    return {"post": ("POST", "/api/logs", one, 201),
            "get": ("GET", f"/api/logs?scope=job&job_id={job_id}&limit=100", None, 200)}


def fill(client, job_id, lines=5000, batch=500):
    for b in range(lines // batch):
        body = json.dumps({"logs": [{"level": ("info", "warn", "debug", "error")[i % 4],
                                     "message": MESSAGE.format(i=f"{b}-{i}"),
                                     "job_id": job_id, "step": "build"}
                                    for i in range(batch)]}).encode()
        client.call("POST", "/api/logs", body, 201)


def measure(client, pid, request, n):
    method, path, body, expect = request
    for _ in range(20):  # warm: statement caches, the connection
        client.call(method, path, body, expect)
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    for _ in range(n):
        client.call(method, path, body, expect)
    return {"cpu_ms": (cpu_seconds(pid) - c0) / n * 1e3,
            "wall_ms": (time.perf_counter() - t0) / n * 1e3}


def profile(client, pid, request, n, out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record",
                            "-p", str(pid), "-r", "500", "-f", "raw", "-o", out,
                            "-d", "600", "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    measure(client, pid, request, n)
    spy.send_signal(2)
    spy.wait(60)
    print(f"  profile: {out}")


def rounds(servers, args, label):
    results = {name: {kind: [] for kind in ("post", "get")} for name in servers}
    for _ in range(args.rounds):
        for kind in ("post", "get"):
            for name, s in servers.items():
                results[name][kind].append(measure(s["client"], s["pid"], s["requests"][kind],
                                                   args.requests))
    print(f"\n{label} (median of {args.rounds} rounds of {args.requests} requests; "
          f"load average {loadavg()})")
    print(f"  {'request':<6} {'floor CPU':>11} {'Quaero CPU':>11} {'ratio':>7}   "
          f"{'floor wall':>11} {'Quaero wall':>11}")
    verdicts = []
    for kind in ("post", "get"):
        f = median([r["cpu_ms"] for r in results["floor"][kind]])
        q = median([r["cpu_ms"] for r in results["quaero"][kind]])
        fw = median([r["wall_ms"] for r in results["floor"][kind]])
        qw = median([r["wall_ms"] for r in results["quaero"][kind]])
        rounds_text = ", ".join(f"{r['cpu_ms']:.3f}" for r in results["quaero"][kind])
        print(f"  {kind:<6} {f:8.3f} ms {q:8.3f} ms {q / f:6.2f}×   {fw:8.3f} ms {qw:8.3f} ms"
              f"   (Quaero rounds: {rounds_text})")
        verdicts.append((f"{label}: {kind} ≤ 2× floor", q / f <= 2.0, f"{q / f:.2f}×"))
    return verdicts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=int, default=1000, help="idle streams (0: skip that part)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    raise_nofile()
    os.sched_setaffinity(0, CLIENT_CPU)
    print(f"CPU per request, Quaero at {revision()} beside the Flask floor (bench/floor_app.py); "
          f"servers on CPU {sorted(SERVER_CPU)}, client on CPU {sorted(CLIENT_CPU)}")
    with temp_database("sqlite") as q_url, temp_database("sqlite") as f_url:
        floor_db = f_url.replace("sqlite:///", "")
        with Server(q_url, cpus=SERVER_CPU) as quaero, \
                Server(f_url, cpus=SERVER_CPU, app="bench.floor_app:app",
                       env={"FLOOR_DB": floor_db}) as floor:
            servers = {}
            for name, server in (("floor", floor), ("quaero", quaero)):
                job_id = (create_job(server.url, "requests", ["build"]) if name == "quaero"
                          else uuid.uuid4().hex[:16])
                client = Client(server.port)
                fill(client, job_id)
                servers[name] = {"server": server, "client": client, "pid": server.worker_pid(),
                                 "requests": requests_for(job_id)}
            if args.profile:
                q = servers["quaero"]
                for kind in ("post", "get"):
                    profile(q["client"], q["pid"], q["requests"][kind], args.requests,
                            os.path.join(HERE, "results", f"requests-{kind}.txt"))
            verdicts = rounds(servers, args, "no streams")
            if args.idle:
                from fanout import Swarm
                swarms = [Swarm(servers["floor"]["server"].port, args.idle, "idle",
                                "/api/logs/stream"),
                          Swarm(servers["quaero"]["server"].port, args.idle, "idle",
                                "/api/logs/stream?scope=service")]
                print(f"\nidle streams open: floor {swarms[0].ready}, Quaero {swarms[1].ready}")
                time.sleep(1.0)
                verdicts += rounds(servers, args, f"{args.idle} idle streams open")
                for s in swarms:
                    s.finish()
    print("\ntargets:")
    for label, ok, value in verdicts:
        print(f"  {'MET   ' if ok else 'MISSED'} {label:<40} {value}")


if __name__ == "__main__":
    main()
