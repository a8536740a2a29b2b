"""Pruning that never stalls: one-line ``POST /api/logs`` latency while the pruner removes
millions of lines, beside the same POSTs without pruning (the floor), in the same run.

    python bench/prune.py                       # SQLite, 2,000,000 lines
    python bench/prune.py --postgres            # SQLite, then PostgreSQL
    python bench/prune.py --lines 500000 --seconds 5

For each database: ``gunicorn wsgi:app`` (one gevent worker) on a fresh database, retention
off, is filled with ``--lines`` service lines stamped two days ago (5000-line batches, 74
bytes of message each, as in issue 22's corpus) and left until SQLite's search index has
caught up (deleting an indexed line costs more). Then, **floor**: one client posts one-line
batches one after another for ``--seconds`` (keep-alive, waiting for each 201). The server
is restarted on the same database with ``QUAERO_RETENTION_DAYS=1``: its pruner's first
pass removes every filled line in short transactions (retention.Chunks), while the same client
posts the same one-line batches until the lines are gone (**pruning**). Printed: POST
latency p50/p99/max for both, the prune's lines/s, and on SQLite the WAL file's largest size
during the prune and the database file's size before and after (it keeps its size: the
pages are reused), on PostgreSQL ``pg_database_size``.
"""
import argparse
import http.client
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Server, create_job, loadavg, pct, post_logs, revision, temp_database  # noqa: E402

FILL_BATCH = 5000
MESSAGE = "GET /api/items?page={i} 200 12.3ms user=bench request_id=0123456789abcdef"


def fill(server, lines, stamp, producers=2):
    """``lines`` service lines stamped ``stamp``, in 5000-line batches from ``producers``
    keep-alive connections."""
    per = lines // producers

    def produce(p):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
        for start in range(0, per, FILL_BATCH):
            n = min(FILL_BATCH, per - start)
            body = json.dumps({"logs": [
                {"level": ("info", "warn", "debug", "error")[i % 4],
                 "message": MESSAGE.format(i=f"{p}-{start + i}"), "timestamp": stamp}
                for i in range(n)]}).encode()
            status, data = post_logs(conn, body)
            if status != 201:
                raise RuntimeError(f"fill: POST /api/logs -> {status} {data[:200]!r}")
            with lock:
                stored[0] += json.loads(data)["accepted"]
        conn.close()
    lock, stored = threading.Lock(), [0]
    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if stored[0] != per * producers:
        raise SystemExit(f"fill: {stored[0]:,} of {per * producers:,} lines stored")
    return stored[0]


def post_one_lines(server, until):
    """One-line POSTs (to a job of their own: the service log is being pruned) one after
    another until ``until()`` is true; their latencies (s)."""
    job = create_job(server.url, "one-liners")
    one = json.dumps({"logs": [{"level": "info", "message": "one line", "job_id": job}]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    headers = {"Content-Type": "application/json", "Content-Length": str(len(one))}
    lat = []
    while not until():
        t0 = time.perf_counter()
        conn.request("POST", "/api/logs", body=one, headers=headers)
        r = conn.getresponse()
        data = r.read()
        lat.append(time.perf_counter() - t0)
        if r.status != 201:
            raise RuntimeError(f"POST /api/logs -> {r.status} {data[:200]!r}")
    conn.close()
    return lat


def service_lines(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", "/api/logs?scope=service&level=debug&limit=1")
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body["meta"]["total_count"]


def sqlite_path(db_url):
    return db_url.split("sqlite:///", 1)[1] if db_url.startswith("sqlite") else None


def wait_for_index(db_url, filled):
    """SQLite: until the search index has the filled lines (its mark, a counter, has
    reached ``filled``) or has not moved for 10 s; returns the lines not indexed."""
    import sqlite3
    last, still = None, time.monotonic()
    while True:
        with sqlite3.connect(sqlite_path(db_url)) as c:
            rows = dict(c.execute("SELECT key, value FROM line_counters "
                                  "WHERE key IN ('__id__', '__search__')"))
        mark = rows.get("__search__", 0)
        if mark >= filled:
            return max(rows.get("__id__", 0) - mark, 0)
        if mark != last:
            last, still = mark, time.monotonic()
        elif time.monotonic() - still > 10:
            return rows.get("__id__", 0) - mark
        time.sleep(0.5)


def database_bytes(db_url):
    path = sqlite_path(db_url)
    if path:
        wal = path + "-wal"
        return os.path.getsize(path), os.path.getsize(wal) if os.path.exists(wal) else 0
    import sqlalchemy as sa
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        size = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar()
    engine.dispose()
    return size, 0


def summary(lat):
    ms = [x * 1000 for x in lat]
    return (f"{len(ms):6d} POSTs  p50 {pct(ms, 50):6.2f} ms  p99 {pct(ms, 99):7.2f} ms  "
            f"max {max(ms):7.1f} ms")


def bench_db(kind, lines, seconds):
    with temp_database(kind) as db_url:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 2 * 86400))
        env = {"QUAERO_RETENTION_DAYS": "0", "QUAERO_MAX_DB_BYTES": "0",
               "QUAERO_PRUNE_INTERVAL": "1"}
        with Server(db_url, env=env) as server:
            t0 = time.monotonic()
            filled = fill(server, lines, stamp)
            took = time.monotonic() - t0
            print(f"  filled {filled:,} service lines in {took:.1f} s", flush=True)
            if kind == "sqlite":
                print(f"  search index caught up ({wait_for_index(db_url, filled):,} lines "
                      "not in it)", flush=True)
            start = time.monotonic()
            floor = post_one_lines(server, lambda: time.monotonic() - start > seconds)
        size_before, wal_before = database_bytes(db_url)
        env["QUAERO_RETENTION_DAYS"] = "1"
        wal_max, done = [wal_before], threading.Event()
        with Server(db_url, env=env) as server:
            t0 = time.monotonic()

            def watch():
                path = sqlite_path(db_url)
                while not done.is_set():
                    if path and os.path.exists(path + "-wal"):
                        wal_max.append(os.path.getsize(path + "-wal"))
                    time.sleep(0.05)
            watcher = threading.Thread(target=watch)
            watcher.start()
            left = [filled]

            def gone():
                if time.monotonic() - gone.last >= 0.5:
                    gone.last = time.monotonic()
                    left[0] = service_lines(server)
                return left[0] < filled / 1000 or time.monotonic() - t0 > 900
            gone.last = 0.0
            pruning = post_one_lines(server, gone)
            took = time.monotonic() - t0
            done.set()
            watcher.join()
        size_after, wal_after = database_bytes(db_url)
    print(f"  floor (no pruning)  {summary(floor)}")
    print(f"  while pruning       {summary(pruning)}")
    print(f"  p99 ratio {pct(pruning, 99) / pct(floor, 99):.2f}x;  pruned {filled:,} lines in "
          f"{took:.1f} s ({filled / took:,.0f} lines/s)")
    if kind == "sqlite":
        print(f"  WAL largest during the prune {max(wal_max) / 2**20:.1f} MiB "
              f"(after {wal_after / 2**20:.1f} MiB); database file {size_before / 2**20:.1f} MiB "
              f"before, {size_after / 2**20:.1f} MiB after")
    else:
        print(f"  pg_database_size {size_before / 2**20:.1f} MiB before, "
              f"{size_after / 2**20:.1f} MiB after")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--seconds", type=float, default=10, help="length of the floor's run")
    ap.add_argument("--postgres", action="store_true", help="SQLite, then PostgreSQL")
    ap.add_argument("--only-postgres", action="store_true")
    args = ap.parse_args()
    kinds = (["postgresql"] if args.only_postgres else
             ["sqlite", "postgresql"] if args.postgres else ["sqlite"])
    print(f"bench/prune.py: {args.lines:,} lines; load {loadavg()}, {os.cpu_count()} CPUs, "
          f"Quaero at {revision()}")
    for kind in kinds:
        print(kind, flush=True)
        bench_db(kind, args.lines, args.seconds)


if __name__ == "__main__":
    main()
