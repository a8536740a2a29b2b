from gevent import monkey

monkey.patch_all()  # as the entry points do, before socket/threading are imported

import uuid  # noqa: E402

import pytest  # noqa: E402

# The fixtures live here; what tests share besides them (make_app, Server, eventually, ...)
# is in tests/helpers.py, which tests import directly.
from tests.helpers import PG_URL, Server, make_app, pg_admin, reset_pg  # noqa: E402


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


@pytest.fixture(scope="session")
def pg_database():
    """A fresh PostgreSQL database for this test session (CI sets QUAERO_TEST_POSTGRES_URL)."""
    if not PG_URL:
        pytest.skip("QUAERO_TEST_POSTGRES_URL is not set: PostgreSQL tests run in CI")
    name = f"quaero_test_{uuid.uuid4().hex[:8]}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Each test using it runs on SQLite and, where configured, on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/quaero.db"
    url = request.getfixturevalue("pg_database")
    reset_pg(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path}/quaero.db"


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
