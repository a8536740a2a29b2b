"""Log volume on a big job: ``GET /api/logs/histogram`` over 1,000,000 lines.

    python bench/histogram.py                 # SQLite, then PostgreSQL
    python bench/histogram.py --only sqlite   # one database
    python bench/histogram.py --lines 200000

Loads one job of ``--lines`` lines (5 steps; 1 % error, 4 % warn, 25 % debug, the rest info;
timestamps one millisecond apart) through ``quaero.ingest.write_lines``, then times, median
of ``--runs`` runs after a warm-up, ``log_histogram`` (the endpoint's query function, both
statements) in this process (the first request, cold, is shown apart; ``log_volume`` is
kept by the write path, so it does no more work than the next) and the whole HTTP answer
from the Flask test client, for the default (level=info), level=debug, level=error and
step=build, 60 and 500 buckets. Prints the plan of the counting statement.
"""
import argparse
import os
import sys
import tempfile
import time
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import loadavg, median, temp_database  # noqa: E402
from tail import STEPS, TXN, level_of  # noqa: E402

CASES = [("level=info", ""), ("level=debug", "&level=debug"), ("level=error", "&level=error"),
         ("step=build", "&step=build"), ("500 buckets", "&buckets=500")]


def load(app, n_lines):
    from quaero.storage import write_lines
    from quaero.jobs import create_job
    from quaero.models import db, utcnow
    with app.app_context():
        job_id = create_job("histogram-bench", STEPS).id
        engine = db.engine
    t0 = utcnow() - timedelta(milliseconds=n_lines)
    per_step = n_lines // len(STEPS)
    for i in range(0, n_lines, TXN):
        chunk = [{"job_id": job_id, "step_name": STEPS[min(j // per_step, len(STEPS) - 1)],
                  "level": level_of(j), "message": f"line {j}: module_{j % 977}.py ok",
                  "timestamp": t0 + timedelta(milliseconds=j)}
                 for j in range(i, min(i + TXN, n_lines))]
        with engine.begin() as conn:
            write_lines(conn, chunk)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE log_entries")
    return job_id


def bench(kind, n_lines, runs):
    from werkzeug.datastructures import MultiDict
    from urllib.parse import parse_qsl
    from quaero import create_app
    from quaero.histogram import log_histogram
    from quaero.models import db
    from quaero.web.api_histogram import parse_buckets
    from quaero.web.params import parse_query
    print(f"\n== {kind}: one job of {n_lines:,} lines, median of {runs} runs "
          f"(load average {loadavg()}) ==")
    with temp_database(kind) as url:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True,
                          "INSTANCE_PATH": tempfile.mkdtemp(prefix="quaero-bench-app-")})
        try:
            t = time.perf_counter()
            job_id = load(app, n_lines)
            print(f"loaded in {time.perf_counter() - t:.1f} s")
            client = app.test_client()
            print(f"{'case':<14}{'query ms':>10}{'http ms':>10}  total")
            for label, extra in CASES:
                qs = f"scope=job&job_id={job_id}{extra}"
                args = MultiDict(parse_qsl(qs))
                f, _ = parse_query(args)
                buckets = parse_buckets(args.get("buckets"))

                def query():
                    return log_histogram(db.engine, f, buckets)

                def http():
                    r = client.get("/api/logs/histogram?" + qs)
                    assert r.status_code == 200, r.data
                    return r.get_json()
                with app.app_context():
                    t = time.perf_counter()
                    query()
                    if label == CASES[0][0]:
                        print(f"{'first request':<14}{(time.perf_counter() - t) * 1000:>10.1f}"
                              "            (cold)")
                    q_ms, body = timed(query, runs)
                    h_ms, _ = timed(http, runs)
                print(f"{label:<14}{q_ms:>10.1f}{h_ms:>10.1f}  {body['total']:,} in "
                      f"{len(body['buckets'])} buckets")
            with app.app_context():
                show_plan(db.engine, job_id)
        finally:
            app.extensions["quaero"].close()


def timed(fn, runs):
    out = fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return median(times), out


def show_plan(engine, job_id):
    import sqlalchemy as sa
    from quaero.histogram import log_histogram
    from quaero.queries import LineFilter
    seen = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda c, cur, stmt, params, ctx, many: seen.append((stmt, params)))
    log_histogram(engine, LineFilter(job_ids=(job_id,)), 60)
    stmt, params = seen[-1]
    print("counting statement:\n  " + " ".join(stmt.split()))
    with engine.connect() as conn:
        cur = conn.connection.dbapi_connection.cursor()
        if engine.dialect.name == "sqlite":
            cur.execute("EXPLAIN QUERY PLAN " + stmt, params)
            rows = [str(r[-1]) for r in cur.fetchall()]
        else:
            cur.execute("EXPLAIN (ANALYZE, COSTS OFF) " + stmt, params)
            rows = [r[0] for r in cur.fetchall()]
    print("plan:\n  " + "\n  ".join(rows))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--only", choices=["sqlite", "postgresql"])
    a = p.parse_args()
    for kind in ([a.only] if a.only else ["sqlite", "postgresql"]):
        bench(kind, a.lines, a.runs)


if __name__ == "__main__":
    main()
