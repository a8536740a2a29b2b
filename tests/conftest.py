import os

from gevent import monkey

monkey.patch_all()  # as the entry points do, before socket/threading are imported

import uuid  # noqa: E402

import pytest  # noqa: E402

# The fixtures live here; what tests share besides them (make_app, Server, eventually, ...)
# is in tests/helpers.py, which tests import directly.
from tests.helpers import PG_URL, Server, make_app, pg_admin, reap_stopped, reset_pg  # noqa: E402


class _ThreadSafeEvent:
    """An Event that a real thread sets and a gevent-patched thread waits on, by polling
    with the real ``sleep`` (neither side needs the other's hub)."""

    _sleep = staticmethod(monkey.get_original("time", "sleep"))
    _clock = staticmethod(monkey.get_original("time", "monotonic"))

    def __init__(self):
        self._flag = False

    def is_set(self):
        return self._flag

    def set(self):
        self._flag = True

    def clear(self):
        self._flag = False

    def wait(self, timeout=None):
        deadline = None if timeout is None else self._clock() + timeout
        while not self._flag:
            if deadline is not None and self._clock() >= deadline:
                return False
            self._sleep(0.002)
        return True


def _xdist_worker_waits_on_real_threads():
    """pytest-xdist (``-n``, pytest.ini): a worker's channel to the controller is read by a
    real thread, started before this module patched threading, which fills the queue the
    worker takes its next test from. Made after the patch, that queue's lock and event would
    be gevent's, which a real thread cannot wake (the worker dies with LoopExit): give execnet
    a real lock and an event both sides can use. The controller is left alone: everything of
    its own is made after the patch, so it is all gevent's and consistent."""
    from execnet import gateway_base
    real_rlock = monkey.get_original("_thread", "RLock")
    model = gateway_base.MainThreadOnlyExecModel
    model.Lock = model.RLock = lambda self: real_rlock()
    model.Event = lambda self: _ThreadSafeEvent()


if os.environ.get("PYTEST_XDIST_WORKER"):
    _xdist_worker_waits_on_real_threads()


# Tests that start a server, a browser or other processes are marked ``slow`` here, in one
# place: ``python -m pytest -m "not slow"`` runs the in-process rest in a minute or two.
SERVER_FIXTURES = {"server", "server_factory", "module_server"}
SLOW_FIXTURES = SERVER_FIXTURES | {"browser", "context", "page"}
SLOW_MODULES = {"test_cli", "test_cli_grep", "test_producers", "test_js_unit", "test_fuzz",
                "test_eventsource_node", "test_eventsource_browser", "test_nginx",
                "test_model", "test_stream_burst", "test_deploy", "test_cli_package",
                "test_scale_out", "test_metrics_workers"}


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & SERVER_FIXTURES:
            item.add_marker(pytest.mark.server)
        if names & SLOW_FIXTURES or item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES \
                or "browser" in item.module.__name__.split("."):
            item.add_marker(pytest.mark.slow)
        if shares_a_module_fixture(item):
            # pytest-xdist (--dist loadgroup, pytest.ini): the module's tests on one worker,
            # so its server or browser starts once, not once per worker
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # the long ones first, the in-process ones last to fill the workers' gaps (every
        # worker sorts alike: xdist needs the same order everywhere)
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_sessionfinish(session):
    reap_stopped()  # the servers whose teardown did not wait for their exit


def shares_a_module_fixture(item):
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(
        d.scope == "module" for defs in info.name2fixturedefs.values() for d in defs)


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
        s.stop(wait=False)


@pytest.fixture
def server(server_factory):
    return server_factory()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """One real gunicorn for a module's tests that only read, or touch only what they made
    (their own jobs): a server start costs a second or two of CPU."""
    s = Server(tmp_path_factory.mktemp("server")).start()
    yield s
    s.stop(wait=False)


@pytest.fixture(scope="session")
def browser():
    """One Chromium for the whole run of this process: a launch costs about 1.1 s of CPU
    (Playwright's driver and Chromium's processes), and a worker runs tests of most browser
    modules (xdist hands out single tests), so once per module meant 31 launches in a full
    run. Tests share nothing through it: every test has a context of its own. Real headless
    Chromium (Debian's /usr/bin/chromium) driven by Python Playwright; never downloads a
    browser. A process can run one Playwright at a time: every test that wants Chromium
    takes this one."""
    from tests.browser.helpers import ARGS, CHROMIUM
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser):
    from playwright.sync_api import expect

    from tests.browser.helpers import TIMEOUT
    expect.set_options(timeout=TIMEOUT)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(TIMEOUT)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    from tests.browser.helpers import watch_errors
    return watch_errors(context.new_page())
