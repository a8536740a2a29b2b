"""What the tests share besides pytest's fixtures (those are in conftest.py): the app as a
worker runs it, a real gunicorn, free ports, PostgreSQL's admin connection, and
``eventually`` — the one way to wait for something (never sleep, then assert)."""
import io
import os
import re
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_URL = os.environ.get("QUAERO_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("QUAERO_TEST_REDIS_URL")


def eventually(check, timeout=20.0, interval=0.05, what=None):
    """Call ``check`` until it returns something truthy (returned) or stops raising
    AssertionError; after ``timeout`` seconds the last failure is raised. The one way the
    tests wait: polling with a deadline, never a fixed sleep followed by an assert."""
    import gevent
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
            failure = AssertionError(f"{what or 'condition'} not met within {timeout:g} s")
        except AssertionError as exc:
            failure = exc
        if time.monotonic() >= deadline:
            raise failure
        gevent.sleep(interval)


def free_port():
    """A port free now (another process may take it before it is used: Server retries)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def pg_admin():
    import psycopg
    url = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    return psycopg.connect(url, autocommit=True)


def reset_pg(url):
    """Empty every table but alembic_version (the schema stays). DELETE, not TRUNCATE:
    TRUNCATE gives each of the 17 tables a new file and waits for their flush, 0.25 to
    0.3 s a call on this machine where the DELETEs of a test's few rows take 4 to 20 ms;
    neither resets a sequence. The foreign keys' triggers are off for the transaction
    (session_replication_role), so the order of the tables does not matter."""
    import sqlalchemy as sa
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        tables = conn.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'")).scalars().all()
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        for t in tables:
            conn.execute(sa.text(f'DELETE FROM "{t}"'))
    engine.dispose()


def make_app(url, tmp_path, start=True, **extra):
    """The app on ``url``, its background work started as gunicorn's post_worker_init
    starts a worker's (``start=False``: none, for a test that plays a part itself)."""
    from quaero import create_app
    config = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": url,
              "INSTANCE_PATH": str(tmp_path / "instance"), "QUAERO_JOBS_DIR": str(tmp_path / "jobs")}
    config.update(extra)
    app = create_app(config)
    if start:
        app.extensions["quaero"].start()
    return app


def nginx_conf(tmp_path, upstreams, listen_port):
    """docs/nginx-quaero.conf as shipped, in front of ``upstreams`` (ports) on
    ``listen_port``, inside a minimal nginx.conf of Debian's defaults (gzip on: the site
    must turn it off for streams); returns the file's path."""
    site = open(os.path.join(ROOT, "docs", "nginx-quaero.conf")).read()
    assert site.count("server 127.0.0.1:5000;") == 1 and site.count("listen 80;") == 1
    site = site.replace("server 127.0.0.1:5000;",
                        "\n".join(f"server 127.0.0.1:{p};" for p in upstreams))
    site = site.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
daemon off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    gzip on; gzip_types text/event-stream application/json;
    {site}
}}
""")
    return conf


class Server:
    """A real gunicorn (gevent worker) on a free port, as `python app.py` runs it."""

    def __init__(self, tmp_path, env=None, workers=1, port=None):
        self.tmp_path = tmp_path
        self.fixed_port = port is not None
        self.env = dict(os.environ)
        self.env.update({"QUAERO_HOST": "127.0.0.1", "QUAERO_WORKERS": str(workers),
                         "QUAERO_DATABASE_URL": f"sqlite:///{tmp_path}/server.db",
                         "QUAERO_JOBS_DIR": str(tmp_path / "jobs"),
                         "PYTHONUNBUFFERED": "1"})
        self.env.update(env or {})
        self._use_port(port or free_port())
        self.proc = None

    def _use_port(self, port):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env["QUAERO_PORT"] = str(port)
        self.log_path = self.tmp_path / f"gunicorn-{port}.log"

    def start(self, timeout=60):
        """Start and wait for /healthz; a port another process took meanwhile (free_port
        races) is traded for another, unless the test asked for that port. Three workers
        on PostgreSQL took more than 20 s to come up on a loaded 2-core machine."""
        for _ in range(3):
            try:
                return self._start(timeout)
            except _PortTaken:
                if self.fixed_port:
                    raise
                self._use_port(free_port())
        return self._start(timeout)

    def _start(self, timeout):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", os.path.join(ROOT, "gunicorn.conf.py"),
             "wsgi:app"], cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        import urllib.request
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.close()
                text = self.log_path.read_text(errors="replace")
                if _IN_USE.search(text):
                    raise _PortTaken(text)
                raise RuntimeError(f"gunicorn exited: {text[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()  # not left running when nobody will stop it
        raise RuntimeError(f"gunicorn did not come up: {self.log_path.read_text()[-3000:]}")

    def stop(self, wait=True):
        """SIGTERM, then the exit waited for (SIGKILL after 15 s). ``wait=False`` (the
        fixtures' teardowns): a server that shares nothing with later tests (its SQLite
        file in its own folder, no Redis) exits while the next test runs, and the session's
        end waits for it (:func:`reap_stopped`): the exit took 2 to 3 s (gunicorn's gevent
        worker looks at its stop flag once a second, then Python's own shutdown)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            if wait or not self._shares_nothing():
                _wait_or_kill(self.proc)
            else:
                _STOPPED.append(self.proc)
        if self.proc:
            self.log.close()
        reap_stopped(block=False)

    def _shares_nothing(self):
        own_db = f"sqlite:///{self.tmp_path}/"
        return (self.env["QUAERO_DATABASE_URL"].startswith(own_db)
                and not self.env.get("QUAERO_REDIS_URL"))

    def logs(self):
        return self.log_path.read_text(errors="replace")


_STOPPED = []  # servers told to stop whose exit nobody has waited for yet


def _wait_or_kill(proc):
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def reap_stopped(block=True):
    """Wait for the servers stopped with ``wait=False`` (``block=False``: only collect
    those that have exited)."""
    for proc in list(_STOPPED):
        if block:
            _wait_or_kill(proc)
        elif proc.poll() is None:
            continue
        _STOPPED.remove(proc)


class _PortTaken(RuntimeError):
    pass


_IN_USE = re.compile(r"in use|Address already in use|Errno 98")


def node_with(folder, package, why):
    """``node``, with ``folder``'s node_modules installed from its lock file (``npm ci`` on
    a fresh checkout, once: the suite's workers may all get here, so under a lock); the
    test is skipped without node and npm (``why``: what they are needed for)."""
    import fcntl
    import shutil

    import pytest
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"node and npm are needed for {why} (apt-get install nodejs npm)")
    lock = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(folder, "node_modules", package, "package.json")):
            proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=folder,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    finally:
        os.close(lock)
    return node


class CountingBody(io.BytesIO):
    """A request body that says how much of it the server read."""

    def __init__(self, size):
        super().__init__(b"{" * size)
        self.read_bytes = 0

    def read(self, n=-1):
        data = super().read(n)
        self.read_bytes += len(data)
        return data

    def readinto(self, buf):
        n = super().readinto(buf)
        self.read_bytes += n
        return n

    def readline(self, n=-1):
        data = super().readline(n)
        self.read_bytes += len(data)
        return data
