"""Attribute filters, trace lookups, facets and ingest with attributes (issue 23).

    python bench/attributes.py                 # SQLite
    python bench/attributes.py --postgres      # PostgreSQL (QUAERO_BENCH_POSTGRES_URL)
    python bench/attributes.py --lines 200000  # a smaller corpus

The corpus: LINES lines in 200 jobs and the service log, every line with 5 attributes
(``request_id`` with 10,000 distinct values, ``http.status_code`` with 100, ``user.id``,
``region``, ``ok``) and one line in 20 with a trace id. It is written by the server's own
write path (``storage.write_lines``, in this process: no HTTP) into a database brought up
by the migrations, and (SQLite) indexed as the idle writer would; then a gunicorn worker
answers over keep-alive HTTP:

- a rare ``attr.request_id=`` lookup across everything (``/api/search``), and in one job;
- a ``trace_id=`` lookup across everything;
- facets of ``http.status_code`` (100 values) over every line of the service log and
  over one job;
- floor, in the same run and server: the same reads by a rare word of the message (the
  text index), and a job's tail without a filter.

Ingest: INGEST lines posted over HTTP in batches of 1,000, with the 5 attributes and
without them, each into a fresh database: lines per second, and their ratio (goal 70 %).
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

JOBS = 200
RARE_WORD = "Zebra-Quokka"
REGIONS = ("eu-west", "us-east", "ap-south", "sa-east")


def attributes(i, rnd):
    return {"request_id": f"req-{rnd.randrange(10_000):05d}",
            "http.status_code": 200 + rnd.randrange(100), "user.id": str(rnd.randrange(5000)),
            "region": REGIONS[i % 4], "ok": i % 7 != 0}


def trace_of(i):
    return f"{i:032x}" if i % 20 == 0 else None


def message(i, rnd):
    return (f"GET /api/v1/items/{rnd.randint(0, 10**6)} took {rnd.randint(1, 900)}ms "
            f"worker={i % 8}" + (f" {RARE_WORD}" if i % 200_003 == 7 else ""))


def build(url, lines):
    """Jobs through the API (a short-lived server), lines through the write path."""
    import sqlalchemy as sa
    from quaero.searchindex import index_behind
    from quaero.storage import write_lines
    with Server(url) as server:
        jobs = [create_job(server.url, name=f"job-{k}") for k in range(JOBS)]
    engine = sa.create_engine(url)
    rnd = random.Random(23)
    t0 = time.perf_counter()
    # a day ago: inside the default retention (30 days), which prunes older service lines
    start = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=1)
    batch = []
    for i in range(lines):
        k = i % (JOBS + 1)
        batch.append({"job_id": None if k == JOBS else jobs[k], "step_name": None,
                      "level": 20, "message": message(i, rnd),
                      "timestamp": start + timedelta(milliseconds=i), "source": "bench",
                      "attributes": attributes(i, rnd), "trace_id": trace_of(i), "span_id": None})
        if len(batch) == 20_000:
            with engine.begin() as conn:
                write_lines(conn, batch)
            batch = []
    if batch:
        with engine.begin() as conn:
            write_lines(conn, batch)
    if engine.dialect.name == "sqlite":
        while True:  # what the idle writer does, all at once
            with engine.begin() as conn:
                before = conn.exec_driver_sql(
                    "SELECT value FROM line_counters WHERE key = '__search__'").scalar()
                if index_behind(conn, chunk=200_000) == before:
                    break
    else:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE log_entries")
    engine.dispose()
    print(f"built {lines:,} lines in {time.perf_counter() - t0:.0f} s")
    return jobs


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def get(self, path, **params):
        self.conn.request("GET", path + "?" + urllib.parse.urlencode(params, doseq=True))
        r = self.conn.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body[:300])
        return json.loads(body)

    def post(self, path, data):
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = self.conn.getresponse()
        out = r.read()
        assert r.status == 201, (r.status, out[:300])


def measure(url, jobs, lines):
    rnd = random.Random(5)
    rows = []
    with Server(url, cpus={0}) as server:
        c = Client(server.port)
        job = jobs[3]
        wanted = f"req-{rnd.randrange(10_000):05d}"
        trace = trace_of(20 * (lines // 40))
        ms, out = timed(lambda: c.get("/api/search", **{"attr.request_id": wanted}))
        rows.append(("attr.request_id=, /api/search", ms, len(out["results"]), 50))
        ms, out = timed(lambda: c.get("/api/logs", scope="job", job_id=job,
                                      **{"attr.request_id": wanted}))
        rows.append(("attr.request_id=, /api/logs one job", ms, len(out["logs"]), 50))
        ms, out = timed(lambda: c.get("/api/search", trace_id=trace))
        rows.append(("trace_id=, /api/search", ms, len(out["results"]), 50))
        ms, out = timed(lambda: c.get("/api/logs/facets", scope="all", key="http.status_code",
                                      level="debug", limit=100), n=5)
        rows.append((f"facets http.status_code, all {out['total']:,}", ms, len(out["values"]), 200))
        ms, out = timed(lambda: c.get("/api/logs/facets", scope="job", job_id=job,
                                      key="http.status_code", limit=100))
        rows.append(("facets http.status_code, one job", ms, len(out["values"]), 200))
        # the floor: the text index and a plain tail, same server, same run
        ms, out = timed(lambda: c.get("/api/search", q=RARE_WORD))
        rows.append(("floor: rare word, /api/search", ms, len(out["results"]), None))
        ms, out = timed(lambda: c.get("/api/logs", scope="job", job_id=job))
        rows.append(("floor: job tail, 100 lines", ms, len(out["logs"]), None))
    print(f"{'read':40} {'median ms':>10} {'rows':>5} {'goal ms':>8}")
    ok = True
    for name, ms, n, goal in rows:
        good = goal is None or ms <= goal
        ok &= good
        print(f"{name:40} {ms:10.1f} {n:5} {goal or '':>8}{'' if good else '  MISSED'}")
    return ok


def ingest_rate(kind, n, with_attributes):
    rnd = random.Random(9)
    with temp_database(kind) as url, Server(url, cpus={0}) as server:
        c = Client(server.port)
        batches = []
        for b in range(n // 1000):
            batch = []
            for i in range(b * 1000, b * 1000 + 1000):
                line = {"level": "info", "message": message(i, rnd)}
                if with_attributes:
                    line["attributes"] = attributes(i, rnd)
                    if trace_of(i):
                        line["trace_id"] = trace_of(i)
                batch.append(line)
            # encoded before the clock starts: the client's json.dumps (2.0 us a line with
            # attributes, 0.8 without) is not the server's ingest
            batches.append(json.dumps({"logs": batch}).encode())
        c.post("/api/logs", batches[0])  # warm
        t0 = time.perf_counter()
        for batch in batches[1:]:
            c.post("/api/logs", batch)
        return (len(batches) - 1) * 1000 / (time.perf_counter() - t0)


def lookups(kind, lines):
    with temp_database(kind) as url:
        from quaero.migrate import init_db
        import sqlalchemy as sa
        engine = sa.create_engine(url)
        init_db(engine)
        engine.dispose()
        jobs = build(url, lines)
        return measure(url, jobs, lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--postgres", action="store_true")
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--ingest", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ingest-only", action="store_true", help="only the ingest ratio")
    args = p.parse_args()
    kind = "postgresql" if args.postgres else "sqlite"
    print(f"Quaero {revision()}, {kind}, load average {loadavg()}")
    ok = args.ingest_only or lookups(kind, args.lines)
    plains, riches = [], []
    for _ in range(args.rounds):   # alternated, on fresh servers: the medians
        plains.append(ingest_rate(kind, args.ingest, False))
        riches.append(ingest_rate(kind, args.ingest, True))
    plain, rich = statistics.median(plains), statistics.median(riches)
    ratio = rich / plain
    print(f"ingest over HTTP, batches of 1,000: {plain:,.0f} lines/s plain, {rich:,.0f} lines/s "
          f"with 5 attributes: {ratio:.0%} (goal 70 %); rounds: plain "
          f"{', '.join(f'{r:,.0f}' for r in plains)}, with attributes "
          f"{', '.join(f'{r:,.0f}' for r in riches)}")
    return 0 if ok and ratio >= 0.7 else 1


if __name__ == "__main__":
    sys.exit(main())
