"""The HTTP side of the pages (no browser): login, logout, redirects, CSRF, headers."""
import re

import pytest

from tests.helpers import make_app

TOKEN = "t0ken-for-tests"


@pytest.fixture
def open_app(app):
    return app  # conftest's app: no token


@pytest.fixture
def token_app(sqlite_url, tmp_path, monkeypatch):
    monkeypatch.delenv("QUAERO_SECRET_KEY", raising=False)
    app = make_app(sqlite_url, tmp_path, QUAERO_API_TOKEN=TOKEN)
    yield app
    app.extensions["quaero"].close()


def csrf_of(html):
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, token=TOKEN, next_="/"):
    page = client.get("/login?next=" + next_)
    return client.post("/login", data={"token": token, "csrf_token": csrf_of(page.text), "next": next_})


def test_pages_render_with_security_headers(open_app):
    client = open_app.test_client()
    for path in ("/", "/queue"):
        r = client.get(path)
        assert r.status_code == 200
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert 'name="csrf-token"' in r.text
        assert "/static/vendor/alpinejs-" in r.text
        # every script, style and image comes from this server (the page's random
        # CSRF token once held the letters "cdn", so look at the URLs, not the text)
        urls = re.findall(r'\s(?:src|href)="([^"]*)"', r.text)   # not Alpine's :href
        assert urls and all(u.startswith(("/", "#", "data:")) and not u.startswith("//") for u in urls), urls
    assert client.get("/jobs/doesnotexist").status_code == 404
    job = client.post("/api/jobs", json={"name": "<script>x</script>", "steps": ["a"]}).json
    r = client.get(f"/jobs/{job['id']}")
    assert r.status_code == 200
    assert "<script>x</script>" not in r.text        # the name is escaped, in HTML and JSON
    assert "\\u003cscript\\u003e" in r.text
    assert client.get("/login").status_code == 302  # no token: nothing to log in to


def test_without_a_token_cross_site_writes_are_refused(open_app):
    client = open_app.test_client()
    body = {"logs": [{"level": "info", "message": "x"}]}
    assert client.post("/api/logs", json=body).status_code == 201                 # curl, producers
    assert client.post("/api/logs", json=body, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 201
    assert client.post("/api/logs", json=body, headers={"Origin": "http://localhost"}).status_code == 201
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Origin": "http://evil.example"}, {"Origin": "null"}):
        r = client.post("/api/logs", json=body, headers=headers)
        assert r.status_code == 403, headers
        assert r.json == {"error": "cross-site request refused"}
    assert client.get("/api/logs?scope=service", headers={"Origin": "http://evil.example"}).status_code == 200


def test_token_pages_redirect_to_login_and_login_checks_everything(token_app):
    client = token_app.test_client()
    r = client.get("/queue?status=running")
    assert r.status_code == 302
    assert r.headers["Location"] == "/login?next=/queue?status%3Drunning"
    assert client.get("/api/jobs").status_code == 401
    page = client.get("/login?next=/queue")
    assert page.status_code == 200
    assert client.post("/login", data={"token": TOKEN}).status_code == 400           # no CSRF token
    assert client.post("/login", data={"token": TOKEN, "csrf_token": "forged"}).status_code == 400
    bad = client.post("/login", data={"token": "nope", "csrf_token": csrf_of(page.text)})
    assert bad.status_code == 401 and "not valid" in bad.text
    r = login(client, next_="/queue")
    assert r.status_code == 302 and r.headers["Location"] == "/queue"
    assert client.get("/queue").status_code == 200
    assert client.get("/api/jobs").status_code == 200


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"])
def test_login_never_redirects_off_site(token_app, target):
    client = token_app.test_client()
    r = login(client, next_=target)
    assert r.status_code == 302
    assert r.headers["Location"] == "/"


def test_cookie_writes_need_the_csrf_header_bearer_writes_do_not(token_app):
    client = token_app.test_client()
    login(client)
    html = client.get("/").text
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)
    assert client.post("/api/jobs", json={"name": "a"}).status_code == 403
    assert client.post("/api/jobs", json={"name": "a"}, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert client.post("/api/jobs", json={"name": "a"}, headers={"X-CSRF-Token": csrf}).status_code == 201
    bearer = token_app.test_client()
    r = bearer.post("/api/jobs", json={"name": "b"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201
    # logout is a POST with the token, and ends the session
    assert client.post("/logout").status_code == 400
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 302
    assert client.get("/api/jobs").status_code == 401


def test_the_session_key_is_stable_without_QUAERO_SECRET_KEY(sqlite_url, tmp_path, monkeypatch):
    monkeypatch.delenv("QUAERO_SECRET_KEY", raising=False)
    apps = [make_app(sqlite_url, tmp_path, QUAERO_API_TOKEN=TOKEN) for _ in range(2)]
    other = make_app(sqlite_url, tmp_path, QUAERO_API_TOKEN="another")
    try:
        assert apps[0].secret_key == apps[1].secret_key != other.secret_key
        assert TOKEN not in apps[0].secret_key
        client = apps[0].test_client()
        login(client)
        cookie = client.get_cookie("session")
        second = apps[1].test_client()
        second.set_cookie("session", cookie.value)
        assert second.get("/api/jobs").status_code == 200       # another worker, or a restart
    finally:
        for app in apps + [other]:
            app.extensions["quaero"].close()
