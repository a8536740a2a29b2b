from gevent import monkey

monkey.patch_all()  # as the entry points do, before socket/threading are imported

import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_URL = os.environ.get("QUAERO_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("QUAERO_TEST_REDIS_URL")


# Tests that start a server, a browser or other processes are marked ``slow`` here, in one
# place: ``python -m pytest -m "not slow"`` runs the in-process rest in a minute or two.
SERVER_FIXTURES = {"server", "server_factory"}
SLOW_FIXTURES = SERVER_FIXTURES | {"browser", "context", "page"}
SLOW_MODULES = {"test_cli", "test_cli_grep", "test_producers", "test_js_unit", "test_fuzz",
                "test_eventsource_node", "test_eventsource_browser", "test_nginx",
                "test_model", "test_stream_burst", "test_deploy", "test_cli_package",
                "test_scale_out", "test_metrics_workers"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & SERVER_FIXTURES:
            item.add_marker(pytest.mark.server)
        if names & SLOW_FIXTURES or item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES \
                or "browser" in item.module.__name__.split("."):
            item.add_marker(pytest.mark.slow)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_admin():
    import psycopg
    url = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    return psycopg.connect(url, autocommit=True)


@pytest.fixture(scope="session")
def pg_database():
    """A fresh PostgreSQL database for this test session (CI sets QUAERO_TEST_POSTGRES_URL)."""
    if not PG_URL:
        pytest.skip("QUAERO_TEST_POSTGRES_URL is not set: PostgreSQL tests run in CI")
    name = f"quaero_test_{uuid.uuid4().hex[:8]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _reset_pg(url):
    import sqlalchemy as sa
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        tables = conn.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'")).scalars().all()
        if tables:
            conn.execute(sa.text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Each test using it runs on SQLite and, where configured, on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/quaero.db"
    url = request.getfixturevalue("pg_database")
    _reset_pg(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path}/quaero.db"


def make_app(url, tmp_path, **extra):
    from quaero import create_app
    config = {"TESTING": True, "SQLALCHEMY_DATABASE_URI": url,
              "INSTANCE_PATH": str(tmp_path / "instance"), "QUAERO_JOBS_DIR": str(tmp_path / "jobs")}
    config.update(extra)
    app = create_app(config)
    app.extensions["quaero"].start()  # as gunicorn's post_worker_init does in a worker
    return app


@pytest.fixture
def app(sqlite_url, tmp_path):
    app = make_app(sqlite_url, tmp_path)
    yield app
    app.extensions["quaero"].close()


@pytest.fixture
def any_app(database_url, tmp_path):
    """The app on SQLite and on PostgreSQL."""
    app = make_app(database_url, tmp_path)
    yield app
    app.extensions["quaero"].close()


@pytest.fixture
def client(app):
    return app.test_client()


class Server:
    """A real gunicorn (gevent worker) on a free port, as `python app.py` runs it."""

    def __init__(self, tmp_path, env=None, workers=1, port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ)
        self.env.update({"QUAERO_PORT": str(self.port), "QUAERO_HOST": "127.0.0.1",
                         "QUAERO_WORKERS": str(workers),
                         "QUAERO_DATABASE_URL": f"sqlite:///{tmp_path}/server.db",
                         "QUAERO_JOBS_DIR": str(tmp_path / "jobs"),
                         "PYTHONUNBUFFERED": "1"})
        self.env.update(env or {})
        self.log_path = tmp_path / f"gunicorn-{self.port}.log"
        self.proc = None

    def start(self, timeout=20):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", os.path.join(ROOT, "gunicorn.conf.py"),
             "wsgi:app"], cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        import urllib.request
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not come up: {self.log_path.read_text()[-3000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()

    def logs(self):
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def server_factory(tmp_path):
    servers = []

    def factory(**kwargs):
        s = Server(tmp_path, **kwargs)
        servers.append(s)
        return s.start()

    yield factory
    for s in servers:
        s.stop()


@pytest.fixture
def server(server_factory):
    return server_factory()
