"""Soak: minutes of mixed load on one Quaero server, then a full accounting.

    python bench/soak.py [--minutes 10] [--postgres URL] [--streams 200]

Load, all at once for the whole run: producers posting service and job lines, streams that
connect, read a while and leave (half of them resuming with Last-Event-ID), jobs started
from a definition and some of them cancelled. Then it checks that every acknowledged line
is stored exactly once and that every resuming stream saw its lines once and in order, and
compares the worker's memory with its baseline once the load is gone.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import httpx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
from _common import children, free_port, rss_bytes  # noqa: E402
from tests.sse_client import SSEClient  # noqa: E402


def rss_kb(pid):
    return rss_bytes(pid) // 1024

SOAK_JOB = """
description = "soak: a command step printing for a few seconds"
[[steps]]
name = "print"
run = "for i in $(seq 1 300); do echo soak line $i; sleep 0.01; done"
"""


class Soak:
    def __init__(self, url, minutes, n_streams):
        self.url = url
        self.until = time.monotonic() + minutes * 60
        self.n_streams = n_streams
        self.acked = {}            # id -> message
        self.post_errors = 0
        self.jobs = []
        self.cancelled = 0
        self.stream_sessions = 0
        self.stream_problems = []
        self.http = httpx.Client(base_url=url, timeout=30)

    def running(self):
        return time.monotonic() < self.until

    def producer(self, i):
        k = 0
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while self.running():
                job = random.choice(self.jobs[-5:]) if self.jobs and random.random() < 0.5 else None
                lines = [{"level": random.choice(("debug", "info", "warn", "error")),
                          "message": f"soak p{i} b{k} l{j} " + "x" * random.randint(0, 300),
                          "job_id": job} for j in range(random.randint(1, 50))]
                k += 1
                try:
                    r = c.post("/api/logs", json={"logs": lines})
                except httpx.HTTPError:
                    self.post_errors += 1
                    continue
                if r.status_code == 201:
                    b = r.json()
                    for n, line_id in enumerate(range(b["first_id"], b["last_id"] + 1)):
                        self.acked[line_id] = lines[n]["message"]
                elif r.status_code != 404:  # the job may have been deleted meanwhile
                    self.post_errors += 1
                gevent.sleep(random.uniform(0.01, 0.1))

    def jobs_loop(self):
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while self.running():
                r = c.post("/api/jobs", json={"definition": "soak"})
                if r.status_code == 201:
                    self.jobs.append(r.json()["id"])
                    if random.random() < 0.3:
                        gevent.sleep(random.uniform(0.2, 2))
                        if c.post(f"/api/jobs/{self.jobs[-1]}/cancel").status_code == 202:
                            self.cancelled += 1
                else:
                    self.jobs.append(c.post("/api/jobs", json={"name": "soak", "steps": []}).json()["id"])
                gevent.sleep(random.uniform(1, 3))

    def streamer(self, i):
        """Connect, read a while, leave; resume (when it has an id) and check the resumed
        part repeats and skips nothing that the server has stored."""
        last = None
        while self.running():
            scope = random.choice(["service", "job"])
            if scope == "job" and self.jobs:
                query = f"scope=job&job_id={random.choice(self.jobs[-10:])}&level=debug"
                last = None
            else:
                query = "scope=service&level=debug"
            headers = {"Last-Event-ID": last} if (last and scope == "service") else {}
            try:
                s = SSEClient(f"{self.url}/api/logs/stream?{query}&limit=50", headers=headers, timeout=15)
            except OSError:
                gevent.sleep(1)
                continue
            self.stream_sessions += 1
            ids = []
            try:
                if s.status != 200:
                    continue
                stay = time.monotonic() + random.uniform(1, 10)
                while time.monotonic() < stay:
                    ev = s.next_event(timeout=15)
                    if ev is None or ev.event == "end":
                        break
                    if ev.event == "logs":
                        ids += [ln["id"] for ln in ev.json()["logs"]]
                        if scope == "service":
                            last = ev.id or last
            except (OSError, TimeoutError) as exc:
                self.stream_problems.append(f"{type(exc).__name__}")
            finally:
                s.close()
            if ids != sorted(set(ids)):
                self.stream_problems.append("duplicate or out of order")
            gevent.sleep(random.uniform(0, 0.5))

    def stored(self):
        found = {}
        targets = [{"scope": "service"}] + [{"scope": "job", "job_id": j} for j in set(self.jobs)]
        for t in targets:
            after = 0
            while True:
                r = self.http.get("/api/logs", params={**t, "level": "debug", "after": after, "limit": 5000})
                if r.status_code == 404:
                    break
                body = r.json()
                for ln in body["logs"]:
                    if ln["id"] in found:
                        raise AssertionError(f"line {ln['id']} stored twice")
                    found[ln["id"]] = ln["message"]
                if not body["meta"]["has_more"]:
                    break
                after = body["last_id"]
        return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--producers", type=int, default=4)
    ap.add_argument("--postgres", help="a PostgreSQL URL (postgresql+psycopg://...) instead of SQLite")
    args = ap.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))

    tmp = tempfile.mkdtemp(prefix="quaero-soak-")
    os.makedirs(f"{tmp}/jobs")
    with open(f"{tmp}/jobs/soak.toml", "w") as f:
        f.write(SOAK_JOB)
    port = free_port()
    env = dict(os.environ, QUAERO_PORT=str(port), QUAERO_JOBS_DIR=f"{tmp}/jobs",
               QUAERO_DATABASE_URL=args.postgres or f"sqlite:///{tmp}/soak.db")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                            cwd=ROOT, env=env, stdout=open(f"{tmp}/server.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        pid = children(proc.pid)[0]
        soak = Soak(url, 0.1, 20)  # warm-up, then the baseline
        gevent.joinall([gevent.spawn(soak.producer, 0), gevent.spawn(soak.streamer, 0)])
        gevent.sleep(2)
        baseline = rss_kb(pid)
        soak = Soak(url, args.minutes, args.streams)
        print(f"soak: {args.minutes} min, {args.streams} streams, {args.producers} producers, "
              f"{'PostgreSQL' if args.postgres else 'SQLite'}; worker RSS baseline {baseline / 1024:.1f} MiB",
              flush=True)
        peak = baseline
        gl = [gevent.spawn(soak.producer, i) for i in range(args.producers)]
        gl += [gevent.spawn(soak.jobs_loop)]
        gl += [gevent.spawn(soak.streamer, i) for i in range(args.streams)]
        while soak.running():
            gevent.sleep(5)
            peak = max(peak, rss_kb(pid))
            print(f"  {len(soak.acked):>8} lines acked, {len(soak.jobs)} jobs, "
                  f"{soak.stream_sessions} stream sessions, RSS {rss_kb(pid) / 1024:.1f} MiB", flush=True)
        gevent.joinall(gl, timeout=60)
        gevent.sleep(8)  # streams closed (a ping notices within 5 s), jobs finishing
        after = rss_kb(pid)
        stored = soak.stored()
        missing = [i for i in soak.acked if stored.get(i) != soak.acked[i]]
        print(f"acknowledged lines: {len(soak.acked)}, stored: {len(stored)}, "
              f"missing or changed: {len(missing)}, post errors: {soak.post_errors}")
        print(f"jobs: {len(soak.jobs)} ({soak.cancelled} cancelled); stream sessions: "
              f"{soak.stream_sessions}; stream problems: {len(soak.stream_problems)} "
              f"{sorted(set(soak.stream_problems))[:5]}")
        print(f"worker RSS: baseline {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
              f"after {after / 1024:.1f} MiB (+{(after - baseline) / 1024:.1f} MiB)")
        metrics = httpx.get(url + "/metrics").text
        for line in metrics.splitlines():
            if line.startswith(("quaero_sse_streams_open", "quaero_sse_slow_clients_dropped_total",
                                "quaero_log_lines_ingested_total")):
                print("  " + line)
        ok = not missing and "duplicate or out of order" not in soak.stream_problems
        print("RESULT:", "OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
