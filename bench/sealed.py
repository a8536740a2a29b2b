"""What compressed blocks of lines give PostgreSQL (issue 22): the measurement that chose
the form ``quaero.sealing`` keeps finished jobs' lines in (migration 0020: blocks of 256,
pglz), kept to compare other forms. It builds its own blocks in SQL beside the app.

    python bench/sealed.py                        # 1,000,000 lines, blocks of 1024, pglz
    python bench/sealed.py --block 256 --compression lz4

bench/storage.py's corpus (this machine's /var/log, 200 jobs of 3 steps, 2 % service
lines) is posted through ``POST /api/logs`` into a fresh PostgreSQL database. Then, in
SQL beside the app, every job's lines below warn are copied into blocks of ``--block``
lines of one job (a row of arrays: ids, levels, steps, messages, timestamps, line
numbers, sources; PostgreSQL compresses an array over 2 kB itself, ``--compression``),
the way a finished job's lines could be kept. Printed: bytes a line of the blocks beside
those of the same lines as rows with their four B-tree indexes, and the median time
(``EXPLAIN ANALYZE``'s execution time, 15 runs) of the reads a page makes, from the blocks
and from the rows: a job's newest 200 and 5,000 lines, one step's newest 200, its lines
around a line id (a search result's context), and its counts by level (what a filtered
histogram reads). The text index over 64-line blocks (``log_text_blocks``) is the same
for both and is not counted.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Server, create_job, loadavg, revision, temp_database  # noqa: E402
import storage  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from quaero.models import STEP_KEY  # noqa: E402

SEAL = """
CREATE TABLE sealed (job_seq bigint NOT NULL, first_id bigint NOT NULL, last_id bigint NOT NULL,
    n int NOT NULL, steps text[] NOT NULL, ids int8[] NOT NULL, levels int2[] NOT NULL,
    step_names text[] NOT NULL, messages text[] NOT NULL, ts timestamp[] NOT NULL,
    line_numbers int4[] NOT NULL, sources text[] NOT NULL, PRIMARY KEY (job_seq, last_id));
ALTER TABLE sealed {compression};
INSERT INTO sealed
SELECT job_seq, min(id), max(id), count(*), array_agg(DISTINCT coalesce(step_name, '')),
       array_agg(id ORDER BY id), array_agg(level ORDER BY id), array_agg(step_name ORDER BY id),
       array_agg(message ORDER BY id), array_agg(timestamp ORDER BY id),
       array_agg(line_number ORDER BY id), array_agg(source ORDER BY id)
FROM (SELECT *, (row_number() OVER (PARTITION BY job_seq ORDER BY id) - 1) / {block} AS b
      FROM log_entries WHERE job_seq IS NOT NULL AND level < 30) s
GROUP BY job_seq, b;
VACUUM ANALYZE sealed;
VACUUM ANALYZE log_entries;
"""

_STEP = (STEP_KEY.format(seq="job_seq", step="step_name") + " = "
         + STEP_KEY.format(seq=":job", step="'test'"))
_UNNEST = ("LATERAL unnest(b.ids, b.levels, b.step_names, b.messages, b.ts, b.line_numbers, "
           "b.sources) AS u(id, level, step_name, message, timestamp, line_number, source)")
_COLS = "id, level, step_name, message, timestamp, line_number, source"

# (name, from the blocks, from the rows); :job is a job's seq, :mid a line id in it
READS = [
    ("job tail 200",
     f"SELECT u.* FROM (SELECT * FROM sealed WHERE job_seq = :job ORDER BY last_id DESC "
     f"LIMIT 1) b, {_UNNEST} WHERE u.level >= 20 ORDER BY u.id DESC LIMIT 201",
     f"SELECT {_COLS} FROM log_entries WHERE job_seq = :job AND level + 0 >= 20 "
     "ORDER BY id DESC LIMIT 201"),
    ("job tail 5000",
     f"SELECT u.* FROM (SELECT * FROM sealed WHERE job_seq = :job ORDER BY last_id DESC "
     f"LIMIT :blocks5000) b, {_UNNEST} WHERE u.level >= 20 ORDER BY u.id DESC LIMIT 5001",
     f"SELECT {_COLS} FROM log_entries WHERE job_seq = :job AND level + 0 >= 20 "
     "ORDER BY id DESC LIMIT 5001"),
    ("step tail 200",
     f"SELECT u.* FROM (SELECT * FROM sealed WHERE job_seq = :job AND 'test' = ANY(steps) "
     f"ORDER BY last_id DESC LIMIT 1) b, {_UNNEST} WHERE u.step_name = 'test' "
     "ORDER BY u.id DESC LIMIT 201",
     f"SELECT {_COLS} FROM log_entries WHERE ({_STEP}) AND step_name = 'test' "
     "ORDER BY id DESC LIMIT 201"),
    ("100 lines around an id",
     f"SELECT u.* FROM (SELECT * FROM sealed WHERE job_seq = :job AND last_id >= :mid "
     f"ORDER BY last_id LIMIT 1) b, {_UNNEST} WHERE u.id >= :mid ORDER BY u.id LIMIT 100",
     f"SELECT {_COLS} FROM log_entries WHERE job_seq = :job AND id >= :mid "
     "ORDER BY id LIMIT 100"),
    ("a job's counts by level",
     "SELECT u.level, count(*) FROM sealed b, LATERAL unnest(b.levels) AS u(level) "
     "WHERE b.job_seq = :job GROUP BY 1",
     "SELECT level, count(*) FROM log_entries WHERE job_seq = :job AND level < 30 GROUP BY 1"),
]


def median_ms(cur, sql, params):
    import re
    text = re.sub(r":(\w+)", lambda m: str(params[m.group(1)]), sql)
    times = []
    for _ in range(16):
        plan = cur.execute("EXPLAIN (ANALYZE, TIMING OFF) " + text).fetchall()
        times.append(float(plan[-1][0].split(":")[1].split()[0]))
    return statistics.median(times[1:])


def size(cur, *relations):
    return sum(cur.execute("SELECT pg_total_relation_size(%s)", (r,)).fetchone()[0]
               if r == "sealed" else
               cur.execute("SELECT pg_relation_size(%s)", (r,)).fetchone()[0]
               for r in relations)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--compression", choices=("pglz", "lz4"), default="pglz")
    args = ap.parse_args()
    import psycopg
    lines = storage.corpus()
    print(f"# bench/sealed.py at {revision()}, load {loadavg()}: {args.lines:,} lines, "
          f"blocks of {args.block}, {args.compression}")
    with temp_database("postgresql") as url:
        with Server(url) as server:
            job_ids = [create_job(server.url, f"build-{j}", storage.STEPS)
                       for j in range(storage.JOBS)]
            bodies, n = storage.batches(lines, args.lines, job_ids)
            stored, _ = storage.post_all(server.port, bodies)
            if stored != n:
                raise SystemExit(f"{n - stored} of {n} lines were not stored")
        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as c:
            cur = c.cursor()
            columns = ", ".join(f"ALTER COLUMN {col} SET COMPRESSION {args.compression}" for col in (
                "ids", "levels", "step_names", "messages", "ts", "line_numbers", "sources"))
            for statement in SEAL.format(compression=columns, block=args.block).split(";"):
                if statement.strip():
                    cur.execute(statement)
            sealed_lines = cur.execute("SELECT sum(n) FROM sealed").fetchone()[0]
            job_lines = cur.execute("SELECT count(*) FROM log_entries "
                                    "WHERE job_seq IS NOT NULL").fetchone()[0]
            rows = size(cur, "log_entries", "log_entries_pkey", "ix_log_job_id",
                        "ix_log_step_key", "ix_log_job_level_id") / job_lines
            print(f"\n{sealed_lines:,} job lines below warn in "
                  f"{cur.execute('SELECT count(*) FROM sealed').fetchone()[0]:,} blocks")
            print(f"bytes a line: blocks {size(cur, 'sealed') / sealed_lines:.1f}, "
                  f"rows and their B-tree indexes {rows:.1f}")
            job = cur.execute("SELECT job_seq FROM sealed GROUP BY job_seq "
                              "ORDER BY job_seq LIMIT 1 OFFSET 100").fetchone()[0]
            mid = cur.execute("SELECT ids[n / 2] FROM sealed WHERE job_seq = %s "
                              "ORDER BY last_id LIMIT 1", (job,)).fetchone()[0]
            params = {"job": job, "mid": mid, "blocks5000": -(-5000 // args.block) + 1}
            print(f"\nreads of one job ({job_lines // storage.JOBS:,} lines), median ms")
            print(f"{'':<26}{'blocks':>8}{'rows':>8}")
            for name, from_blocks, from_rows in READS:
                print(f"{name:<26}{median_ms(cur, from_blocks, params):>8.2f}"
                      f"{median_ms(cur, from_rows, params):>8.2f}")


if __name__ == "__main__":
    main()
