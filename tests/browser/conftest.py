"""The browser tests' servers. Their Chromium (``browser``, ``context``, ``page``) is
tests/conftest.py's: one per test process, shared with the browser tests outside this
folder."""
import httpx
import pytest

from tests.helpers import Server


@pytest.fixture
def live(server_factory):
    """A real gunicorn server (pings every second, so closed streams are noticed fast)
    and an HTTP client for it."""
    srv = server_factory(env={"QUAERO_PING_INTERVAL": "1"})
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        client.server = srv
        yield client


@pytest.fixture(scope="module")
def module_live(tmp_path_factory):
    """``live``, one for a module whose tests touch only what they made (their own jobs,
    their own page's settings): a server's start and stop cost 3 to 5 s on a loaded
    2-core machine."""
    srv = Server(tmp_path_factory.mktemp("live"), env={"QUAERO_PING_INTERVAL": "1"}).start()
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        client.server = srv
        yield client
    srv.stop(wait=False)
