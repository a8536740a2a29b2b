"""OpenID Connect sign-in (issue 24): the pure role mapping and settings with exact values;
the flow's refusals, the login page, the cookie's flags and the sessions API through the
Flask test client; ``quaero sessions`` against a real server. The real login with a real
provider is tests/browser/test_oidc_login.py."""
import re
import subprocess
import sys

import httpx
import pytest

from quaero import oidc
from quaero.config import ConfigError, _problem, oidc_settings
from quaero.oidc import RoleRules, parse_allow, role_for, subject_of
from tests.helpers import ROOT, eventually, free_port, make_app

RULES = RoleRules.from_settings("groups", "ops-admins", "ops, deployers", "staff",
                                "boss@example.com=admin, @example.org, eve@example.net=operate")


def claims(groups=None, email=None, verified=True, **more):
    out = {"sub": "u-1", **more}
    if groups is not None:
        out["groups"] = groups
    if email is not None:
        out["email"], out["email_verified"] = email, verified
    return out


@pytest.mark.parametrize("given, role", [
    (claims(["ops-admins"]), "admin"),
    (claims(["staff", "ops"]), "operate"),                 # the highest wins
    (claims(["staff", "ops", "ops-admins"]), "admin"),
    (claims(["staff"]), "read"),
    (claims("deployers"), "operate"),                      # one group as a string
    (claims(["Staff"]), None),                             # names are exact
    (claims([]), None),
    (claims(), None),
    (claims(email="alice@example.org"), "read"),           # @domain
    (claims(email="Alice@Example.ORG"), "read"),           # addresses ignore case
    (claims(email="alice@sub.example.org"), None),         # not a subdomain
    (claims(email="boss@example.com"), "admin"),           # an address with its role
    (claims(["staff"], email="boss@example.com"), "admin"),
    (claims(["ops-admins"], email="eve@example.net"), "admin"),
    (claims(email="eve@example.net"), "operate"),
    (claims(email="boss@example.com", verified=False), None),   # unverified: no
    (claims(email="boss@example.com", verified=None), None),    # not said: no
    (claims(email="boss@example.com", verified="true"), "admin"),
    (claims(email="mallory@evil.example"), None),
    (claims(groups=[1, None, {"x": 1}]), None),
])
def test_role_for(given, role):
    assert role_for(given, RULES)[0] == role


def test_role_for_says_why():
    assert role_for(claims(["ops", "staff"]), RULES) == ("operate", "group 'ops'")
    assert role_for(claims(email="a@example.org"), RULES) == ("read",
                                                              "allow-list entry '@example.org'")
    assert role_for(claims(["x"]), RULES) == (None, "no group or allow-list entry gives a role")
    assert role_for(claims(email="boss@example.com", verified=False), RULES) == (
        None, "the provider did not say the e-mail address is verified")


def test_a_nested_claim():
    rules = RoleRules.from_settings("realm_access.roles", "quaero-admin", "", "", "")
    assert role_for({"realm_access": {"roles": ["quaero-admin"]}}, rules)[0] == "admin"
    assert role_for({"realm_access": ["quaero-admin"]}, rules)[0] is None
    assert role_for({"groups": ["quaero-admin"]}, rules)[0] is None


@pytest.mark.parametrize("given, subject", [
    (claims(email="Alice@Example.com"), "alice@example.com"),
    (claims(email="alice@example.com", verified=False), "u-1"),
    (claims(), "u-1"),
])
def test_subject_of(given, subject):
    assert subject_of(given) == subject


def test_parse_allow():
    assert parse_allow(" a@b.io , @c.io=admin,d@e.io=Operate ,") == [
        ("a@b.io", "read"), ("@c.io", "admin"), ("d@e.io", "operate")]
    for bad in ("alice", "@", "a@b", "a@b.io=root", "a b@c.io"):
        with pytest.raises(ValueError):
            parse_allow(bad)


@pytest.mark.parametrize("url, ok", [
    ("https://id.example.com/realms/main", True),
    ("https://id.example.com/application/o/quaero/", True),
    ("http://127.0.0.1:8080", True), ("http://localhost:9000/", True), ("http://[::1]:80", True),
    ("http://id.example.com", False), ("http://10.0.0.1", False), ("ftp://x", False),
    ("id.example.com", False), ("https://", False),
])
def test_issuer_must_be_https_or_loopback(url, ok):
    assert (oidc.issuer_problem(url) is None) is ok
    assert (_problem("QUAERO_OIDC_ISSUER", url) is None) is ok


BASE = {"QUAERO_OIDC_ISSUER": "https://id.example.com/", "QUAERO_OIDC_CLIENT_ID": "q",
        "QUAERO_OIDC_CLIENT_SECRET": "s", "QUAERO_OIDC_READ_GROUPS": "staff"}


def test_settings():
    assert oidc_settings({}) is None
    got = oidc_settings(BASE)
    assert got["issuer"] == "https://id.example.com/" and got["name"] == "id.example.com"
    assert got["scopes"] == "openid email profile" and got["provider_logout"] is True
    assert got["rules"] == RoleRules("groups", (("read", frozenset({"staff"})),), ())
    assert oidc_settings({**BASE, "QUAERO_OIDC_PROVIDER_LOGOUT": "0",
                          "QUAERO_OIDC_NAME": "Keycloak"})["name"] == "Keycloak"
    with pytest.raises(ConfigError, match="without QUAERO_OIDC_CLIENT_SECRET"):
        oidc_settings({**BASE, "QUAERO_OIDC_CLIENT_SECRET": ""})
    with pytest.raises(ConfigError, match="no one would get a role"):
        oidc_settings({**BASE, "QUAERO_OIDC_READ_GROUPS": " , "})
    assert _problem("QUAERO_OIDC_ALLOW", "x@y.io=root").startswith("has a bad entry")


# --- the flow's edges, without a provider ---------------------------------------------------

def _app(tmp_path, port=None, **extra):
    """An app signing people in with a provider that is not there (a closed port)."""
    env = {**BASE, "QUAERO_OIDC_ISSUER": f"http://127.0.0.1:{port or free_port()}",
           "QUAERO_OIDC_NAME": "Corp SSO"}
    return make_app(f"sqlite:///{tmp_path}/q.db", tmp_path, start=False,
                    OIDC=oidc_settings(env), **extra)


@pytest.fixture
def oidc_app(tmp_path):
    app = _app(tmp_path)
    yield app
    app.extensions["quaero"].close()


def test_with_oidc_alone_everything_needs_a_sign_in(oidc_app):
    c = oidc_app.test_client()
    assert c.get("/api/jobs").status_code == 401              # even from loopback
    r = c.get("/queue")
    assert r.status_code == 302 and r.location == "/login?next=/queue"
    page = c.get("/login?next=/queue").get_data(as_text=True)
    assert "Sign in with Corp SSO" in page and 'href="/auth/oidc/login?next=/queue"' in page
    assert "API token" not in page                            # no token: no token form
    assert c.post("/login", data={"token": "x"}).status_code == 400


def test_the_login_page_keeps_the_token_form_with_a_token(tmp_path):
    app = _app(tmp_path, QUAERO_API_TOKEN="t" * 40)
    page = app.test_client().get("/login").get_data(as_text=True)
    assert "Sign in with Corp SSO" in page and "API token" in page
    app.extensions["quaero"].close()


def test_without_oidc_its_routes_are_404(app):
    c = app.test_client()
    assert c.get("/auth/oidc/login").status_code == 404
    assert c.get("/auth/oidc/callback?code=x&state=y").status_code == 404
    assert "Sign in with" not in c.get("/login", follow_redirects=True).get_data(as_text=True)


def test_callback_refusals_are_4xx_pages_and_sign_in_no_one(oidc_app):
    c = oidc_app.test_client()
    r = c.get("/auth/oidc/callback?code=abc&state=forged")
    assert r.status_code == 400 and "did not start in this browser" in r.get_data(as_text=True)
    r = c.get("/auth/oidc/callback?error=access_denied&error_description=<b>no</b>&state=x")
    assert r.status_code == 403
    text = r.get_data(as_text=True)
    assert "access_denied: &lt;b&gt;no&lt;/b&gt;" in text and "Content-Security-Policy" in r.headers
    assert c.get("/auth/oidc/callback?error=server_error").status_code == 400
    with c.session_transaction() as s:      # a sign-in begun here (Authlib's record of it)
        s["_state_oidc_x"] = {"data": {"nonce": "n"}, "exp": 2e9}
    r = c.get("/auth/oidc/callback?code=abc&state=x&iss=https://evil.example")
    assert r.status_code == 400 and "another issuer" in r.get_data(as_text=True)
    assert c.get("/api/jobs").status_code == 401


def test_an_unreachable_provider_is_a_502_page(oidc_app):
    r = oidc_app.test_client().get("/auth/oidc/login?next=/queue")
    assert r.status_code == 502 and "cannot be reached" in r.get_data(as_text=True)


def test_the_session_cookie_is_httponly_lax_and_secure_over_https(tmp_path):
    app = _app(tmp_path, QUAERO_API_TOKEN="t" * 40)
    for base, secure in (("http://localhost", False), ("https://localhost", True)):
        c = app.test_client()
        c.get("/login", base_url=base)
        r = c.post("/login", base_url=base, data={
            "token": "t" * 40, "csrf_token": _csrf(c, base)})
        assert r.status_code == 302
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert ("Secure" in cookie) is secure, cookie
    app.extensions["quaero"].close()


def _csrf(c, base):
    page = c.get("/login", base_url=base).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


# --- revoking a person ------------------------------------------------------------------------

def test_sessions_api_lists_and_ends_a_persons_sessions(tmp_path):
    token = "t" * 40
    app = make_app(f"sqlite:///{tmp_path}/q.db", tmp_path, QUAERO_API_TOKEN=token)
    admin = {"Authorization": f"Bearer {token}"}
    c = app.test_client()
    browsers = []
    for subject, role in (("alice@example.com", "read"), ("alice@example.com", "operate"),
                          ("bob@example.com", "admin")):
        b = app.test_client()
        with app.test_request_context():
            from flask import session
            from quaero.web.auth import SESSION_KEY, sign_in
            sign_in(subject, role)
            secret = session[SESSION_KEY]
        with b.session_transaction() as s:
            s[SESSION_KEY] = secret
        assert b.get("/api/jobs").status_code == 200
        browsers.append(b)
    listed = c.get("/api/sessions", headers=admin).json["sessions"]
    assert sorted((s["subject"], s["role"]) for s in listed) == [
        ("alice@example.com", "operate"), ("alice@example.com", "read"),
        ("bob@example.com", "admin")]
    assert set(listed[0]) == {"subject", "role", "created_at", "expires_at"}
    assert browsers[0].get("/api/sessions").status_code == 403          # a reader may not
    r = c.delete("/api/sessions?subject=alice@example.com", headers=admin)
    assert r.status_code == 200 and r.json == {"subject": "alice@example.com", "ended": 2}
    assert [b.get("/api/jobs").status_code for b in browsers] == [401, 401, 200]
    assert c.delete("/api/sessions?subject=alice@example.com", headers=admin).json["ended"] == 0
    assert c.delete("/api/sessions", headers=admin).status_code == 400

    def revoked():
        lines = c.get("/api/logs?scope=service&source=audit&limit=100",
                      headers=admin).json["logs"]
        return [ln["message"] for ln in lines if ln["attributes"]["action"] == "session-revoke"]
    eventually(lambda: len(revoked()) == 2)
    assert revoked() == ["token ended 2 session(s) of alice@example.com",
                         "token ended 0 session(s) of alice@example.com"]
    app.extensions["quaero"].close()


def test_quaero_sessions_revoke(server_factory):
    token = "cli-" + "t0k3n" * 8
    srv = server_factory(env={"QUAERO_API_TOKEN": token})
    with httpx.Client(base_url=srv.url, timeout=10) as browser:
        page = browser.get("/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        assert browser.post("/login", data={"token": token, "csrf_token": csrf}).status_code == 302
        assert browser.get("/api/jobs").status_code == 200

        def quaero(*args):
            return subprocess.run([sys.executable, "-m", "quaero", "--url", srv.url,
                                   "--token", token, "sessions", *args], cwd=ROOT,
                                  capture_output=True, text=True, timeout=60)
        listed = quaero("list")
        assert listed.returncode == 0, listed.stderr
        assert re.search(r"^token +admin +\d{4}-", listed.stdout, re.M), listed.stdout
        revoked = quaero("revoke", "token")
        assert revoked.returncode == 0 and revoked.stdout == "ended 1 session(s) of token\n"
        assert browser.get("/api/jobs").status_code == 401


def test_with_oidc_alone_the_server_listens_beyond_loopback(server_factory):
    """gunicorn refuses a non-loopback address only while Quaero is open; people signing in
    with a provider is not open: every call needs a sign-in or a key, from anywhere."""
    srv = server_factory(env={**BASE, "QUAERO_API_TOKEN": "", "QUAERO_HOST": "0.0.0.0"})
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/api/jobs").status_code == 401
        r = c.get("/login")
        assert r.status_code == 200 and "Sign in with id.example.com" in r.text
    assert "OpenID Connect sign-in; /api/* and the pages require" in srv.logs()
