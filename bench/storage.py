"""Bytes per stored line, per table and index, beside the same lines as NDJSON and zstd.

    python bench/storage.py                          # SQLite, 1,000,000 lines
    python bench/storage.py --postgres               # SQLite, then PostgreSQL
    python bench/storage.py --before fece076         # the same, also for an older commit
    python bench/storage.py --lines 200000 --only-postgres

The corpus is this machine's own system logs (dpkg, apt, alternatives, PostgreSQL, nginx:
whatever of ``/var/log`` is readable text), each line a message as a shipper would send
it, cycled until ``--lines``; ``source`` is the log's name, the level is ``error`` or
``warn`` when the line says so. They are posted through ``POST /api/logs`` (500-line
batches, 4 producers) into 200 jobs of 3 steps, one job after another as a CI machine
would, with 2 % of the lines in the service log. When the search index has caught up
(the writer indexes behind itself) the server stops and the database is measured: SQLite's
``dbstat`` (pages in use, per table and index; the FTS5 shadow tables as one), PostgreSQL's
``pg_relation_size`` after ``VACUUM`` (tables with their TOAST, each index).
PostgreSQL's reads are timed after an ``ANALYZE``, as autovacuum would have run one.

With the store still up it also times the reads a page makes (median of 15, ms): a job's
tail (200 lines), its errors, one step's tail, the service log's tail, a search for a rare
and for a common word across everything, the histogram of a job, of the service log and of a search.
``--before REV`` runs the same on a ``git worktree`` of REV (its own code, its own
migrations) first, so both tables come from the same run and machine.

PostgreSQL with ``quaero/sealing.py``: the reads are timed, then every job finishes, the
server's pruner seals them (``QUAERO_SEAL_AFTER=1``), the reads are timed again, and the
sizes are those of the sealed store (after ``VACUUM FULL``: see ``pg_sizes``).
"""
import argparse
import glob
import gzip
import http.client
import json
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import ROOT, Server, create_job, loadavg, post_logs, revision, temp_database  # noqa: E402

BATCH = 500
JOBS = 200
STEPS = ("fetch", "build", "test")
PRODUCERS = 4


def corpus():
    """(source, message) of every readable text line of this machine's logs."""
    lines = []
    paths = sorted(set(glob.glob("/var/log/*.log") + glob.glob("/var/log/*/*.log")
                       + glob.glob("/var/log/*/*.log.1")))
    for path in paths:
        source = os.path.basename(path).split(".")[0]
        try:
            with open(path, errors="replace") as f:
                for raw in f:
                    text = raw.rstrip("\n").replace("\x00", "")
                    if text.strip() and len(text) <= 4000:
                        lines.append((source, text))
        except OSError:
            continue
    if not lines:
        raise SystemExit("no readable log under /var/log to build the corpus from")
    return lines


def level_of(message):
    low = message.lower()
    if "error" in low or "fatal" in low or "failed" in low:
        return "error"
    if "warn" in low:
        return "warn"
    return "info"


def batches(corpus_lines, total, job_ids):
    """The posted bodies, in order: job after job, each job's lines step after step."""
    per_job = total * 98 // 100 // len(job_ids)
    service_every = 50   # one batch line in 50 goes to the service log
    i = 0
    out = []
    for job_id in job_ids:
        for start in range(0, per_job, BATCH):
            logs = []
            for k in range(start, min(per_job, start + BATCH)):
                source, message = corpus_lines[i % len(corpus_lines)]
                i += 1
                line = {"message": message, "level": level_of(message), "source": source}
                if i % service_every:
                    line.update(job_id=job_id, step=STEPS[k * len(STEPS) // per_job])
                logs.append(line)
            out.append(json.dumps({"logs": logs}).encode())
    return out, i


def post_all(port, bodies):
    """PRODUCERS threads take the bodies in order; returns lines/s."""
    lock = threading.Lock()
    todo = list(reversed(bodies))
    sent = [0]

    def producer():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if not todo:
                    break
                body = todo.pop()
            status, data = post_logs(conn, body)
            if status != 201:
                raise RuntimeError(f"POST /api/logs -> {status} {data[:300]!r}")
            with lock:
                sent[0] += json.loads(data)["accepted"]
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=producer) for _ in range(PRODUCERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent[0], sent[0] / (time.perf_counter() - t0)


def get(port, path, **params):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", path + ("?" + urllib.parse.urlencode(params) if params else ""))
    r = conn.getresponse()
    body = r.read()
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"GET {path} {params} -> {r.status} {body[:300]!r}")
    return json.loads(body)


def read_figures(port, job_id):
    """Median ms of the reads the pages make, on the full store."""
    reads = {
        "job tail 200": ("/api/logs", {"scope": "job", "job_id": job_id, "limit": 200}),
        "job errors": ("/api/logs", {"scope": "job", "job_id": job_id, "level": "error",
                                     "limit": 200}),
        "step tail": ("/api/logs", {"scope": "job", "job_id": job_id, "step": "test",
                                    "limit": 200}),
        "service tail": ("/api/logs", {"scope": "service", "limit": 200}),
        "search rare": ("/api/search", {"q": "libgcc-s1", "limit": 50}),
        "search common": ("/api/search", {"q": "status", "limit": 50}),
        "histogram job": ("/api/logs/histogram", {"scope": "job", "job_id": job_id}),
        "histogram service": ("/api/logs/histogram", {"scope": "service"}),
        "histogram search": ("/api/logs/histogram", {"scope": "all", "q": "status"}),
    }
    out = {}
    for name, (path, params) in reads.items():
        get(port, path, **params)
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            get(port, path, **params)
            times.append((time.perf_counter() - t0) * 1e3)
        out[name] = statistics.median(times)
    return out


def _counters(url):
    """``{key: value}`` of the id allocator and the search index's mark."""
    query = "SELECT key, value FROM line_counters WHERE key IN ('__id__', '__search__')"
    if url.startswith("sqlite"):
        import sqlite3
        con = sqlite3.connect(url.split("sqlite:///", 1)[1], timeout=30)
        try:
            return dict(con.execute(query).fetchall())
        finally:
            con.close()
    import psycopg
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as c:
        return dict(c.execute(query).fetchall())


def wait_indexed(url):
    """Until the writer's search index has reached the newest line (since 0012 on SQLite
    and 0018 on PostgreSQL it takes whole blocks of 64 ids; before 0018 PostgreSQL's index
    was per line, and there is no mark)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        rows = _counters(url)
        if "__search__" not in rows:
            return
        newest = rows.get("__id__", 0)
        if rows["__search__"] >= min(newest, (newest + 1) // 64 * 64 - 1):
            return
        time.sleep(0.5)
    raise RuntimeError("the search index did not catch up in 10 minutes")


def sqlite_sizes(url):
    import sqlite3
    path = url.split("sqlite:///", 1)[1]
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = con.execute("SELECT name, sum(pgsize) - sum(unused) FROM dbstat "
                           "GROUP BY name").fetchall()
        file_bytes = os.path.getsize(path)
    finally:
        con.close()
    sizes = {}
    for name, used in rows:
        key = "log_fts (search index)" if name.startswith("log_fts") else name
        sizes[key] = sizes.get(key, 0) + used
    return sizes, file_bytes


def analyze(url):
    import psycopg
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as c:
        c.execute("ANALYZE")


def pg_sizes(url, sealed=False):
    """Sizes after ``VACUUM``; ``sealed``: the rows sealed were deleted from a table that
    keeps their space for new rows (autovacuum marks it reusable, the file keeps its size),
    so ``VACUUM FULL`` first: what the lines kept take, as a store in use reaches once
    newer rows have filled that space."""
    import psycopg
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as c:
        if sealed:
            c.execute("VACUUM FULL")
        c.execute("VACUUM ANALYZE")
        rows = c.execute(
            "SELECT c.relname, c.relkind, pg_relation_size(c.oid) "
            "+ coalesce((SELECT pg_total_relation_size(t.oid) FROM pg_class t "
            "            WHERE t.oid = c.reltoastrelid), 0) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')").fetchall()
        total = c.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        empty = c.execute("SELECT pg_database_size('template1')").fetchone()[0]
    return {name: size for name, _, size in rows}, total - empty


def compressed(corpus_lines, n):
    """NDJSON of the same lines as a shipper would keep them, raw, gzip -6 and zstd -3."""
    parts = []
    for i in range(n):
        source, message = corpus_lines[i % len(corpus_lines)]
        parts.append(json.dumps({"ts": "2026-12-06T05:43:31.123Z", "level": level_of(message),
                                 "source": source, "message": message}))
    raw = ("\n".join(parts) + "\n").encode()
    out = {"ndjson": len(raw), "gzip": len(gzip.compress(raw, 6))}
    if shutil.which("zstd"):
        out["zstd"] = len(subprocess.run(["zstd", "-3", "-c", "-q"], input=raw,
                                         capture_output=True, check=True).stdout)
    else:
        out["xz"] = len(lzma.compress(raw))
    return out


def finish(port, job_ids):
    for job_id in job_ids:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("PATCH", f"/api/jobs/{job_id}", body=json.dumps({"status": "completed"}),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        conn.close()
        if r.status != 200:
            raise RuntimeError(f"PATCH {job_id} -> {r.status}")


def wait_sealed(url, jobs):
    """Until the server's pruner has sealed every job (its cursor names the last one)."""
    import psycopg
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        with psycopg.connect(dsn) as c:
            done = c.execute("SELECT count(*) FROM jobs WHERE (finished_at, seq) <= (SELECT "
                             "to_timestamp(value / 1e6) AT TIME ZONE 'UTC', job_seq FROM "
                             "line_counters WHERE key = '__sealed__')").fetchone()[0]
        if done >= jobs:
            return
        time.sleep(1)
    raise RuntimeError("the pruner did not seal every job in 20 minutes")


def run(kind, total, corpus_lines, root, label):
    # PostgreSQL, a checkout with quaero/sealing.py: the jobs finish, the server's pruner
    # seals them (a second after), and the reads are timed again on the sealed store
    seals = kind == "postgresql" and os.path.exists(os.path.join(root, "quaero", "sealing.py"))
    env = {"QUAERO_SEAL_AFTER": "1", "QUAERO_PRUNE_INTERVAL": "2"} if seals else {}
    sealed_reads = None
    with temp_database(kind) as url:
        with Server(url, root=root, env=env) as server:
            job_ids = [create_job(server.url, f"build-{j}", STEPS) for j in range(JOBS)]
            bodies, n = batches(corpus_lines, total, job_ids)
            stored, rate = post_all(server.port, bodies)
            if stored != n:
                raise RuntimeError(f"{n - stored} of {n} lines were not stored")
            wait_indexed(url)
            if kind == "postgresql":  # the statistics autovacuum keeps (off on some servers)
                analyze(url)
            reads = read_figures(server.port, job_ids[len(job_ids) // 2])
            if seals:
                finish(server.port, job_ids)
                wait_sealed(url, len(job_ids))
                analyze(url)
                sealed_reads = read_figures(server.port, job_ids[len(job_ids) // 2])
        sizes, total_bytes = sqlite_sizes(url) if kind == "sqlite" else pg_sizes(url, seals)
    return {"label": label, "kind": kind, "lines": n, "lines_s": rate, "sizes": sizes,
            "total": total_bytes, "reads": reads, "sealed_reads": sealed_reads}


def show(result, floor):
    n = result["lines"]
    print(f"\n## {result['kind']} — {result['label']}: {n:,} lines, "
          f"posted at {result['lines_s']:,.0f} lines/s")
    print(f"{'part':<34} {'bytes/line':>10}")
    for name, size in sorted(result["sizes"].items(), key=lambda kv: -kv[1]):
        if size / n >= 0.05:
            print(f"{name:<34} {size / n:>10.1f}")
    print(f"{'TOTAL (database)':<34} {result['total'] / n:>10.1f}")
    print("floor, same lines: " + ", ".join(f"{k} {v / n:.1f}" for k, v in floor.items()))
    print("reads, median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in result["reads"].items()))
    if result["sealed_reads"]:
        print("sealed (sizes above), reads, median ms: " + ", ".join(
            f"{k} {v:.1f}" for k, v in result["sealed_reads"].items()))


def worktree(rev):
    path = tempfile.mkdtemp(prefix="quaero-before-")
    subprocess.run(["git", "worktree", "add", "--detach", path, rev], cwd=ROOT, check=True,
                   capture_output=True)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--postgres", action="store_true", help="SQLite, then PostgreSQL")
    ap.add_argument("--only-postgres", action="store_true")
    ap.add_argument("--before", metavar="REV", help="also measure this older commit")
    args = ap.parse_args()
    kinds = ["postgresql"] if args.only_postgres else \
        ["sqlite", "postgresql"] if args.postgres else ["sqlite"]
    corpus_lines = corpus()
    avg = sum(len(m.encode()) for _, m in corpus_lines) / len(corpus_lines)
    print(f"# bench/storage.py at {revision()}, load {loadavg()}: corpus of "
          f"{len(corpus_lines):,} distinct lines from /var/log, {avg:.0f} bytes of message on "
          f"average, cycled to {args.lines:,}")
    floor = compressed(corpus_lines, args.lines)
    trees = [(ROOT, "now")]
    before = None
    if args.before:
        before = worktree(args.before)
        trees.insert(0, (before, f"before ({args.before})"))
    try:
        for kind in kinds:
            for root, label in trees:
                show(run(kind, args.lines, corpus_lines, root, label), floor)
    finally:
        if before:
            subprocess.run(["git", "worktree", "remove", "--force", before], cwd=ROOT)


if __name__ == "__main__":
    main()
