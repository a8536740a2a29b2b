"""HTTP ingest throughput: ``POST /api/logs`` in batches of 500 lines.

    python bench/ingest.py                 # SQLite
    python bench/ingest.py --postgres      # SQLite, then PostgreSQL
    python bench/ingest.py --only-postgres --producers 4 --seconds 10

For each database it starts ``gunicorn wsgi:app`` (one gevent worker, pinned to CPU 0)
on a fresh database and runs 1 and 4 concurrent producers (threads pinned to CPU 1,
each with one keep-alive connection, posting a pre-encoded body and waiting for the 201,
as a real producer does). It prints lines/s, requests/s, request latency p50/p99 and
the worker's CPU µs per line.

Floor, measured in the same run on the same kind of database: the same lines written by
``quaero.ingest.write_lines`` directly (one transaction per 500-line batch, no HTTP, no
JSON, one writer), pinned to CPU 0 like the server. ``http/floor`` is the share of the
storage path's speed that survives HTTP, JSON parsing, validation and the group-commit
writer.
"""
import argparse
import http.client
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import (Server, cpu_seconds, create_job, loadavg, pct, raise_nofile,  # noqa: E402
                     revision, temp_database)

BATCH = 500
MESSAGE = "GET /api/items?page={i} 200 12.3ms user=bench request_id=0123456789abcdef"


def batch_body(job_id, producer, n=BATCH):
    return json.dumps({"logs": [
        {"level": ("info", "warn", "debug", "error")[i % 4],
         "message": MESSAGE.format(i=f"{producer}-{i}"), "job_id": job_id}
        for i in range(n)]}).encode()


def producer(port, body, stop_at, out):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    lines, lat = 0, []
    while time.monotonic() < stop_at:
        t0 = time.perf_counter()
        conn.request("POST", "/api/logs", body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        lat.append(time.perf_counter() - t0)
        if r.status != 201:
            raise RuntimeError(f"POST /api/logs -> {r.status} {data[:200]!r} after "
                               f"{time.perf_counter() - t0:.1f} s, at {time.strftime('%X')}")
        lines += json.loads(data)["accepted"]
    conn.close()
    out.append((lines, lat))


def run_http(server, job_id, n_producers, seconds, profile=None):
    bodies = [batch_body(job_id, p) for p in range(n_producers)]
    # warm up: connection pool, statement caches
    for _ in range(3):
        producer(server.port, bodies[0], time.monotonic() + 0.01, [])
    pid = server.worker_pid()
    out = []
    spy = None
    if profile:
        import subprocess
        os.makedirs(os.path.dirname(profile), exist_ok=True)
        spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record",
                                "-p", str(pid), "-r", "200", "-f", "raw", "-o", profile,
                                "-d", str(int(seconds))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    stop_at = time.monotonic() + seconds
    threads = [threading.Thread(target=producer, args=(server.port, b, stop_at, out))
               for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - c0
    if spy is not None:
        spy.wait(60)
    if len(out) < len(threads):  # a producer stopped on an answer other than 201
        raise RuntimeError(f"{len(threads) - len(out)} of {len(threads)} producers failed "
                           "(their error is printed above)")
    lines = sum(n for n, _ in out)
    lat = [x for _, ls in out for x in ls]
    return {"lines_s": lines / elapsed, "req_s": len(lat) / elapsed,
            "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
            "cpu_us_line": cpu / lines * 1e6, "lines": lines}


def run_floor(db_url, seconds):
    """write_lines straight into the database, one 500-line transaction at a time."""
    import tempfile
    from quaero import create_app
    from quaero.storage import write_lines
    from quaero.models import LEVELS, utcnow
    from quaero.jobs import create_job as make_job
    app = create_app({"SQLALCHEMY_DATABASE_URI": db_url,
                      "INSTANCE_PATH": tempfile.mkdtemp(prefix="quaero-bench-app-")})
    try:
        with app.app_context():
            job_id = make_job("floor", []).id
            from quaero.models import db
            engine = db.engine
        levels = [LEVELS[lv] for lv in ("info", "warn", "debug", "error")]
        lines = [{"job_id": job_id, "step_name": None, "level": levels[i % 4],
                  "message": MESSAGE.format(i=f"0-{i}"), "timestamp": utcnow()}
                 for i in range(BATCH)]
        for _ in range(3):
            with engine.begin() as conn:
                write_lines(conn, lines)
        n, t0 = 0, time.perf_counter()
        c0 = time.process_time()
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at:
            with engine.begin() as conn:
                write_lines(conn, lines)
            n += BATCH
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        return {"lines_s": n / elapsed, "cpu_us_line": cpu / n * 1e6, "lines": n}
    finally:
        app.extensions["quaero"].close()
        from quaero.models import db
        with app.app_context():
            db.engine.dispose()


def bench_db(kind, producers, seconds, profile=False):
    print(f"\n== {kind}: batches of {BATCH} lines, {seconds:.0f} s per run "
          f"(load average {loadavg()}) ==")
    cpus = os.sched_getaffinity(0)
    with temp_database(kind) as url:
        os.sched_setaffinity(0, {0})
        floor = run_floor(url, seconds)
        os.sched_setaffinity(0, cpus)
    print(f"floor  write_lines direct, 1 writer : {floor['lines_s']:>9,.0f} lines/s   "
          f"{floor['cpu_us_line']:6.1f} µs CPU/line (bench process)")
    results = {}
    with temp_database(kind) as url:
        with Server(url, cpus={0}) as server:
            job_id = create_job(server.url, "ingest-bench")
            os.sched_setaffinity(0, {1})
            try:
                for n in producers:
                    out = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                        f"ingest-{kind}-{n}.collapsed.txt") if profile else None)
                    try:
                        r = run_http(server, job_id, n, seconds, out)
                    except RuntimeError:  # what the server said about it
                        print(server.logs()[-3000:], file=sys.stderr)
                        raise
                    results[n] = r
                    print(f"HTTP   {n} producer{'s' if n > 1 else ' '}               : "
                          f"{r['lines_s']:>9,.0f} lines/s   {r['cpu_us_line']:6.1f} µs CPU/line "
                          f"(worker)   {r['req_s']:6.1f} req/s   p50 {r['p50_ms']:6.1f} ms   "
                          f"p99 {r['p99_ms']:6.1f} ms   http/floor {r['lines_s'] / floor['lines_s']:.2f}")
            finally:
                os.sched_setaffinity(0, cpus)
    return floor, results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--postgres", action="store_true", help="also run on PostgreSQL")
    ap.add_argument("--only-postgres", action="store_true", help="run on PostgreSQL only")
    ap.add_argument("--producers", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--profile", action="store_true",
                    help="py-spy record the worker during each HTTP run "
                         "(bench/results/ingest-<db>-<producers>.collapsed.txt)")
    args = ap.parse_args()
    raise_nofile()
    kinds = ["postgresql"] if args.only_postgres else (
        ["sqlite", "postgresql"] if args.postgres else ["sqlite"])
    print(f"ingest benchmark: server (1 gevent worker) on CPU 0, producers on CPU 1, "
          f"{os.cpu_count()} CPUs, Quaero at {revision()}")
    for kind in kinds:
        bench_db(kind, args.producers, args.seconds, args.profile)


if __name__ == "__main__":
    main()
