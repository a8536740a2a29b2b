"""Tail query on a big job: the last 5000 of 1,000,000 lines.

    python bench/tail.py                    # SQLite
    python bench/tail.py --postgres         # SQLite, then PostgreSQL
    python bench/tail.py --lines 200000     # a smaller job

Loads one job of ``--lines`` lines (5 sequential steps of equal length; levels: 1 % error,
4 % warn, 25 % debug, the rest info) straight through ``quaero.ingest.write_lines`` in
20,000-line transactions, then times, median of ``--runs`` runs after a warm-up:

- ``http``: ``GET /api/logs?scope=job&job_id=..&limit=5000[&level=..][&step=..]`` against a
  gunicorn server on the same database (whole response read, keep-alive connection);
- ``select_lines``: the query function the API, the stream backfill and resume all use,
  called in this process;
- floor: the cheapest possible read of 5000 such rows: the raw DB-API driver fetching the
  newest 5000 rows by primary key (no filter, no row-to-dict, no JSON).

It prints the SQL ``select_lines`` ran and its plan (SQLite ``EXPLAIN QUERY PLAN``,
PostgreSQL ``EXPLAIN (ANALYZE, BUFFERS)``) so that index range scans (or their absence)
can be seen.
"""
import argparse
import http.client
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import Server, loadavg, median, raise_nofile, revision, temp_database  # noqa: E402

STEPS = ["checkout", "build", "test", "package", "deploy"]
TXN = 20000
LIMIT = 5000

QUERIES = [  # (label, query string beyond scope/job_id/limit)
    ("default (level=info)", ""),
    ("level=debug", "&level=debug"),
    ("level=error", "&level=error"),
    ("step=build", "&step=build"),
    ("step=build&level=error", "&step=build&level=error"),
]


def level_of(i):
    if i % 100 == 7:
        return 40
    if i % 25 == 3:
        return 30
    if i % 4 == 1:
        return 10
    return 20


def load(app, n_lines, name="tail-bench"):
    from quaero.storage import write_lines
    from quaero.jobs import create_job
    from quaero.models import db, utcnow
    with app.app_context():
        job_id = create_job(name, STEPS).id
        engine = db.engine
    per_step = n_lines // len(STEPS)
    t0 = time.perf_counter()
    i = 0
    while i < n_lines:
        now = utcnow()
        chunk = []
        for j in range(i, min(i + TXN, n_lines)):
            chunk.append({"job_id": job_id, "step_name": STEPS[min(j // per_step, len(STEPS) - 1)],
                          "level": level_of(j),
                          "message": f"line {j}: compiling module_{j % 977}.py ... ok ({j % 13} ms)",
                          "timestamp": now})
        with engine.begin() as conn:
            write_lines(conn, chunk)
        i += len(chunk)
    return job_id, time.perf_counter() - t0


def time_runs(fn, runs):
    fn()  # warm-up
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return median(out), min(out)


def capture_sql(engine, fn):
    """Run fn; return the (statement, parameters) of the last SELECT it executed."""
    import sqlalchemy as sa
    seen = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        fn()
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
    return seen[-1]


def explain(engine, statement, parameters):
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        cur = raw.cursor()
        if engine.dialect.name == "sqlite":
            cur.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            return ["  " + "  " * 0 + str(r[-1]) for r in cur.fetchall()]
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, parameters)
        return ["  " + r[0] for r in cur.fetchall()]


def raw_floor(engine):
    """The newest LIMIT rows by primary key through the bare DB-API cursor."""
    sql = ("SELECT id, job_seq, step_name, level, message, timestamp, line_number "
           f"FROM log_entries ORDER BY id DESC LIMIT {LIMIT + 1}")

    def run():
        with engine.connect() as conn:
            cur = conn.connection.dbapi_connection.cursor()
            cur.execute(sql)
            rows = cur.fetchall()
            assert len(rows) == LIMIT + 1
    return run


def http_get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def run():
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path} -> {r.status} {body[:200]!r}")
        return body
    return run


def bench_db(kind, n_lines, runs, other_lines=0):
    from quaero import create_app
    from quaero.web.params import parse_query
    from quaero.models import db
    from quaero.queries import select_lines
    from werkzeug.datastructures import MultiDict
    from urllib.parse import parse_qsl

    print(f"\n== {kind}: one job of {n_lines:,} lines, tail of {LIMIT}, median of {runs} runs "
          f"(load average {loadavg()}) ==")
    with temp_database(kind) as url:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url,
                          "INSTANCE_PATH": tempfile.mkdtemp(prefix="quaero-bench-app-")})
        try:
            job_id, secs = load(app, n_lines)
            print(f"loaded {n_lines:,} lines in {secs:.1f} s ({n_lines / secs:,.0f} lines/s, "
                  f"write_lines, {TXN:,}-line transactions)")
            if other_lines:
                _, secs = load(app, other_lines, "newer-job")
                print(f"then {other_lines:,} lines of a newer job in {secs:.1f} s: the job under "
                      f"test is no longer the newest")
            with app.app_context():
                engine = db.engine
            if kind == "postgresql":
                with engine.begin() as conn:
                    conn.exec_driver_sql("ANALYZE log_entries")
                print("(PostgreSQL: ANALYZE log_entries run after the load, as autovacuum would)")
            floor, _ = time_runs(raw_floor(engine), runs)
            print(f"floor  raw driver, newest {LIMIT} rows by primary key: {floor * 1e3:7.1f} ms")
            with Server(url) as server:
                print(f"{'query':<26}{'http ms':>9}{'select_lines ms':>17}{'rows':>6}"
                      f"{'http/floor':>12}{'select/floor':>14}")
                plans = []
                for label, extra in QUERIES:
                    qs = f"scope=job&job_id={job_id}&limit={LIMIT}{extra}"
                    get = http_get(server.port, "/api/logs?" + qs)
                    rows = len(json.loads(get())["logs"])
                    t_http, _ = time_runs(get, runs)
                    f, limit = parse_query(MultiDict(parse_qsl(qs)))

                    def direct():
                        with engine.connect() as conn:
                            return select_lines(conn, f, limit=limit)
                    t_sel, _ = time_runs(direct, runs)
                    print(f"{label:<26}{t_http * 1e3:9.1f}{t_sel * 1e3:17.1f}{rows:6d}"
                          f"{t_http / floor:12.1f}{t_sel / floor:14.1f}")
                    plans.append((label, capture_sql(engine, direct)))
            for label, (statement, params) in plans:
                print(f"\n-- plan: {label}")
                print("  " + " ".join(statement.split()))
                print(f"  params: {params}")
                for line in explain(engine, statement, params):
                    print(line)
        finally:
            app.extensions["quaero"].close()
            with app.app_context():
                db.engine.dispose()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--postgres", action="store_true", help="also run on PostgreSQL")
    ap.add_argument("--only-postgres", action="store_true")
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--other-lines", type=int, default=0,
                    help="lines of a second job written after the first (an older job's tail)")
    args = ap.parse_args()
    raise_nofile()
    print(f"tail benchmark, Quaero at {revision()}")
    kinds = ["postgresql"] if args.only_postgres else (
        ["sqlite", "postgresql"] if args.postgres else ["sqlite"])
    for kind in kinds:
        bench_db(kind, args.lines, args.runs, args.other_lines)


if __name__ == "__main__":
    main()
