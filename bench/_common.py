"""Shared helpers for the benchmarks: real gunicorn servers on free ports, temporary
databases (SQLite file or a fresh PostgreSQL database), /proc readings.

Nothing here imports Quaero; the benchmarks talk to it over HTTP like any client.
"""
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_ADMIN_URL = os.environ.get("QUAERO_BENCH_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_nofile(want=65536):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- databases ---------------------------------------------------------------------------

@contextlib.contextmanager
def temp_database(kind):
    """Yields an SQLAlchemy URL for a fresh, empty database; removes it afterwards."""
    if kind == "sqlite":
        d = tempfile.mkdtemp(prefix="quaero-bench-")
        try:
            yield f"sqlite:///{d}/bench.db"
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return
    import psycopg
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"quaero_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- gunicorn ------------------------------------------------------------------------------

class Server:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` as production runs it, on a free port,
    optionally pinned to CPUs (the worker inherits the master's affinity)."""

    def __init__(self, db_url, cpus=None, env=None, workers=1, app="wsgi:app", root=ROOT):
        self.app = app
        self.root = root  # the checkout to serve (bench/storage.py --before: an older one)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = tempfile.mkdtemp(prefix="quaero-bench-srv-")
        self.env = dict(os.environ)
        self.env.update({"QUAERO_PORT": str(self.port), "QUAERO_HOST": "127.0.0.1",
                         "QUAERO_WORKERS": str(workers), "QUAERO_DATABASE_URL": db_url,
                         "QUAERO_JOBS_DIR": os.path.join(self.tmp, "jobs"),
                         "QUAERO_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"})
        self.env.update(env or {})
        self.cpus = cpus
        self.proc = None
        self.log_path = os.path.join(self.tmp, "gunicorn.log")

    def start(self, timeout=30):
        cmd = [sys.executable, "-m", "gunicorn", "-c",
               os.path.join(self.root, "gunicorn.conf.py"), self.app]
        self._log = open(self.log_path, "ab")

        def pin():
            raise_nofile(65536)
            if self.cpus is not None:
                os.sched_setaffinity(0, self.cpus)

        self.proc = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=pin)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("gunicorn exited:\n" + self.logs()[-3000:])
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("gunicorn did not come up:\n" + self.logs()[-3000:])

    def worker_pids(self):
        return children(self.proc.pid)

    def worker_pid(self):
        pids = self.worker_pids()
        if len(pids) != 1:
            raise RuntimeError(f"expected one worker, found {pids}")
        return pids[0]

    def logs(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        out = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    with open(f"/proc/{p}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            out.append(int(p))
                except OSError:
                    pass
        return out


# --- /proc readings --------------------------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def rss_anon_bytes(pid):
    """RssAnon: the process's own heap, not shared libraries' pages."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return rss_bytes(pid)


# --- small HTTP client (blocking; for setup, not for measuring streams) ------------------

def http_json(method, url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read() or b"null")


def post_logs(conn, body):
    """``POST /api/logs`` of ``body`` on the keep-alive ``conn``, sent again after a 503
    (it stored nothing), as a producer does; ``(status, response body)``."""
    for _ in range(10):
        conn.request("POST", "/api/logs", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 503:
            break
        time.sleep(1)
    return r.status, data


def create_job(base_url, name="bench", steps=()):
    status, job = http_json("POST", base_url + "/api/jobs", {"name": name, "steps": list(steps)})
    assert status == 201, status
    return job["id"]


def pct(values, q):
    """The q-th percentile (0..100) of values, nearest rank."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def timed(fn, n=15):
    """``(median milliseconds, last result)`` of ``n`` calls of ``fn``, after one to warm."""
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def median(values):
    return statistics.median(values) if values else float("nan")


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def revision():
    """The commit under test (and whether quaero/ differs from it)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "quaero", "wsgi.py",
                                "gunicorn.conf.py"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return head + (" (quaero/ modified)" if dirty else "")
    except OSError:
        return "unknown"
