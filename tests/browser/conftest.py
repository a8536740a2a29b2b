"""Real headless Chromium (Debian's /usr/bin/chromium) driven by Python Playwright.

Never downloads a browser. The browser is launched once per module; each test gets a
fresh context (cookies, storage) and a page that records console errors.
"""
import os

import httpx
import pytest

from tests.browser.helpers import ARGS, CHROMIUM, TIMEOUT
from tests.helpers import Server


@pytest.fixture(scope="module")
def browser():
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
    expect.set_options(timeout=TIMEOUT)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(TIMEOUT)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    pg = context.new_page()
    pg.errors = []
    pg.on("console", lambda m: pg.errors.append(f"console.{m.type}: {m.text}")
          if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(f"pageerror: {e}"))
    return pg


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
