"""Search speed on 1,000,000 lines in 200 jobs plus the service log.

    python bench/search.py                  # SQLite (the data is built once and kept)
    python bench/search.py --rebuild        # build the data again
    python bench/search.py --postgres       # then the same on PostgreSQL

The data is written by the server's own write path (no HTTP) into a database brought up
by the migrations, so the layout and the text index are the ones the server keeps. Then a gunicorn worker
answers ``GET /api/search`` and ``GET /api/logs?...&q=`` over keep-alive HTTP.

Floor, in the same run: a bare SQLite FTS5 trigram table over the same messages (rowid =
log id), queried directly (no HTTP, no JSON, no filters): the price of the index itself.
"""
import argparse
import http.client
import json
import os
import random
import statistics
import sys
import time
import urllib.parse
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import Server, create_job, loadavg, revision, temp_database, timed  # noqa: E402

import sqlalchemy as sa  # noqa: E402

LINES = int(os.environ.get("QUAERO_BENCH_LINES", 1_000_000))
JOBS = 200
RARE = "Zebra-Quokka"        # in 5 lines, one of them in the measured job
COMMON = "timeout"           # in every 10th line
NOWHERE = "xylophone-nebula"
SHORT = "q7"                 # shorter than a trigram: the bounded scan
WORDS = ("GET", "POST", "cache", "worker", "db", "queue", "render", "auth", "upload", "sync")
DEFAULT_SQLITE = "/tmp/quaero-search-bench.db"


def message(i, rnd):
    w = WORDS[i % len(WORDS)]
    extra = f" {COMMON} after {rnd.randint(100, 9999)}ms" if i % 10 == 0 else ""
    return (f"{w} /api/v1/items/{rnd.randint(0, 10**6)} status={rnd.choice((200, 201, 404))} "
            f"user=u{rnd.randint(0, 5000)} req={rnd.getrandbits(48):012x}{extra}")


def build(url):
    """1M lines: line i belongs to job i % 201 (200 = the service log), so jobs interleave
    as they do when they run at the same time. Jobs through the API (a short-lived
    server), lines through the server's own write path (``storage.write_lines``, in this
    process), so the layout, counters and text index are the ones the server keeps."""
    from quaero.migrate import init_db
    from quaero.searchindex import index_behind
    from quaero.storage import write_lines
    engine = sa.create_engine(url)
    init_db(engine)
    engine.dispose()
    with Server(url) as server:
        jobs = [create_job(server.url, name=f"job-{k}") for k in range(JOBS)]
    engine = sa.create_engine(url)
    rnd = random.Random(12)
    t0 = time.perf_counter()
    # a day ago: inside the default retention (30 days), which prunes older service lines
    now = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=1)
    rare_at = {LINES // 5 * k + 7 * 201 + 3 for k in range(5)}  # job 3 gets the last one
    batch = []
    for i in range(LINES):
        k = i % (JOBS + 1)
        msg = message(i, rnd)
        if i in rare_at:
            msg += f" {RARE} seen"
        if i % 5000 == 17:
            msg += f" {SHORT}!"
        batch.append({"job_id": None if k == JOBS else jobs[k], "step_name": None,
                      "level": (20, 20, 20, 30, 10, 40, 20, 20, 20, 20)[i % 10],
                      "message": msg, "timestamp": now + timedelta(milliseconds=i),
                      "source": None, "attributes": None, "trace_id": None, "span_id": None})
        if len(batch) == 20_000:
            with engine.begin() as conn:
                write_lines(conn, batch)
            batch = []
    if batch:
        with engine.begin() as conn:
            write_lines(conn, batch)
    if engine.dialect.name == "sqlite":
        with engine.begin() as conn:  # what the writer does when idle, all at once
            index_behind(conn, chunk=LINES)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE VIRTUAL TABLE bench_floor USING fts5(message, "
                                 "tokenize='trigram')")
            conn.exec_driver_sql("INSERT INTO bench_floor(rowid, message) "
                                 "SELECT id, message FROM log_entries")
    else:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE log_entries")
    engine.dispose()
    print(f"built {LINES:,} lines in {JOBS} jobs + the service log in "
          f"{time.perf_counter() - t0:.0f} s")
    return jobs


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path, **params):
        qs = urllib.parse.urlencode(params, doseq=True)
        t0 = time.perf_counter()
        self.conn.request("GET", f"{path}?{qs}")
        r = self.conn.getresponse()
        body = r.read()
        elapsed = time.perf_counter() - t0
        if r.status != 200:
            raise RuntimeError(f"{path}?{qs} -> {r.status} {body[:200]!r}")
        return json.loads(body), elapsed

    def post(self, path, data):
        body = json.dumps(data).encode()
        self.conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = self.conn.getresponse()
        out = r.read()
        if r.status != 201:
            raise RuntimeError(f"POST {path} -> {r.status} {out[:200]!r}")
        return json.loads(out)


def floor_figures(path):
    import sqlite3
    db = sqlite3.connect(path)

    def q(text, limit=50):
        phrase = '"' + text.replace('"', '""') + '"'
        return lambda: db.execute("SELECT rowid, message FROM bench_floor WHERE bench_floor "
                                  "MATCH ? ORDER BY rowid DESC LIMIT ?", (phrase, limit)).fetchall()
    out = {name: timed(q(text))[0] for name, text in
           (("rare", RARE), ("common", COMMON), ("nowhere", NOWHERE))}
    out["common_ids"] = [r[0] for r in db.execute(
        "SELECT rowid FROM bench_floor WHERE bench_floor MATCH ? ORDER BY rowid DESC LIMIT 1000",
        (f'"{COMMON}"',))]
    db.close()
    return out


def measure(url, floor=None):
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        jobs = conn.execute(sa.text("SELECT id FROM jobs ORDER BY name")).scalars().all()
        job3 = conn.execute(sa.text("SELECT id FROM jobs WHERE name = 'job-3'")).scalar()
    engine.dispose()
    rows = []
    with Server(url, cpus={0}) as server:
        c = Client(server.port)
        ms, out = timed(lambda: c.get("/api/search", q=RARE)[0])
        rows.append(("rare string, /api/search", ms, len(out["results"]), 100, "rare"))
        ms, out = timed(lambda: c.get("/api/logs", scope="job", job_id=job3, q=RARE)[0])
        rows.append(("rare string, /api/logs one job", ms, len(out["logs"]), 50, "rare"))
        ms, out = timed(lambda: c.get("/api/search", q=COMMON)[0])
        rows.append(("common word, /api/search page 1", ms, len(out["results"]), 100, "common"))
        ms, out = timed(lambda: c.get("/api/logs", scope="job", job_id=job3, q=COMMON)[0])
        rows.append(("common word, /api/logs one job +count", ms, len(out["logs"]), None, "common"))
        ms, out = timed(lambda: c.get("/api/search", q=NOWHERE)[0])
        rows.append(("nowhere, /api/search", ms, len(out["results"]), 100, "nowhere"))
        ms, out = timed(lambda: c.get("/api/logs", scope="job", job_id=job3, q=NOWHERE)[0])
        rows.append(("nowhere, /api/logs one job", ms, len(out["logs"]), 50, "nowhere"))
        ms, out = timed(lambda: c.get("/api/search", q=SHORT)[0], n=5)
        rows.append((f"short '{SHORT}' (scan), /api/search", ms, len(out["results"]), None, None))
        ms, out = timed(lambda: c.get("/api/search", q=RARE, job_id=jobs[:50])[0])
        rows.append(("rare string, /api/search 50 jobs", ms, len(out["results"]), 100, "rare"))

        # paging back through the common word: never a repeat or a gap
        ids, before, page_ms = [], None, []
        while len(ids) < 1000:
            params = {"q": COMMON, "limit": 50}
            if before:
                params["before"] = before
            out, t = c.get("/api/search", **params)
            page_ms.append(t * 1e3)
            ids += [r["id"] for r in out["results"]]
            before = out["next_before"]
        paging_ok = ids == sorted(set(ids), reverse=True)
        if floor is not None:
            paging_ok = paging_ok and ids == floor["common_ids"]

        # findable within 2 s of its commit
        waits = []
        for k in range(5):
            token = f"fresh-{random.getrandbits(40):010x}"
            c.post("/api/logs", {"logs": [{"level": "info", "message": f"just now {token}",
                                           "job_id": job3}]})
            t0 = time.perf_counter()
            while not c.get("/api/search", q=token)[0]["results"]:
                if time.perf_counter() - t0 > 5:
                    break
            waits.append((time.perf_counter() - t0) * 1e3)
    print(f"{'query':38} {'median ms':>10} {'rows':>5} {'goal ms':>8} {'floor ms':>9}")
    ok = True
    for name, ms, n, goal, fkey in rows:
        fl = f"{floor[fkey]:9.2f}" if floor and fkey else f"{'':9}"
        good = goal is None or ms <= goal
        ok &= good
        print(f"{name:38} {ms:10.1f} {n:5} {goal or '':>8} {fl}{'' if good else '  MISSED'}")
    print(f"paging back 20 pages of 50 ({COMMON}): "
          f"{'no repeats, no gaps' if paging_ok else 'REPEATS OR GAPS'}"
          f"{' (same ids as the floor)' if floor else ''}; "
          f"page median {statistics.median(page_ms):.1f} ms, max {max(page_ms):.1f} ms")
    print(f"findable after commit: max {max(waits):.1f} ms (goal 2000)")
    return ok and paging_ok and max(waits) <= 2000


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default=DEFAULT_SQLITE, help="SQLite file to build once and reuse")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--postgres", action="store_true")
    args = p.parse_args()
    print(f"Quaero {revision()}, load average {loadavg()}")
    if args.rebuild and os.path.exists(args.db):
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(args.db + suffix):
                os.remove(args.db + suffix)
    url = f"sqlite:///{args.db}"
    if not os.path.exists(args.db):
        build(url)
    print(f"\n== SQLite ({args.db}) ==")
    floor = floor_figures(args.db)
    ok = measure(url, floor)
    if args.postgres:
        with temp_database("postgresql") as pg_url:
            print("\n== PostgreSQL ==")
            build(pg_url)
            ok &= measure(pg_url)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
