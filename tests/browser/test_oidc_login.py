"""People sign in with OpenID Connect (issue 24), for real: panva's ``oidc-provider`` run by
node (tests/js/oidc/provider.js, installed with ``npm ci`` on first use) is the provider;
Chromium goes through its login form; a real gunicorn runs Quaero with the OIDC settings.
An admin-group user sees Settings; a read-group user sees no Run or Cancel and a POST with
their session is 403; someone in no group is refused (403 page, no session); signing out
kills a copied cookie and goes through the provider's sign-out; a tampered state and the
provider's access_denied are 4xx pages with nothing signed in."""
import json
import os
import re
import subprocess
import time

import httpx
import pytest
from playwright.sync_api import expect

from tests.helpers import ROOT, Server, free_port, node_with

TOKEN = "oidc-admin-" + "t0k3n" * 6
CLIENT_ID, CLIENT_SECRET = "quaero-tests", "client-" + "s3cr3t" * 6
PROVIDER = os.path.join(ROOT, "tests", "js", "oidc")
ACCOUNTS = {
    "admin": {"email": "admin@example.com", "email_verified": True,
              "groups": ["quaero-admins", "staff"]},
    "reader": {"email": "reader@example.com", "email_verified": True,
               "groups": ["quaero-readers"]},
    "nobody": {"email": "nobody@example.com", "email_verified": True, "groups": ["staff"]},
    "ops": {"email": "ops@example.org", "email_verified": True},     # the allow-list's
}


@pytest.fixture(scope="module")
def node_oidc_provider():
    """node with tests/js/oidc/node_modules installed (``npm ci`` on a fresh checkout)."""
    return node_with(PROVIDER, "oidc-provider", "the OpenID provider")


@pytest.fixture(scope="module")
def idp(node_oidc_provider, tmp_path_factory):
    """Quaero (a real gunicorn, with a token for the tests' own API calls) signing people in
    with a real provider on another port: the server first (it reads the provider's
    discovery document only on the first sign-in), then the provider, told the server's
    callback."""
    tmp = tmp_path_factory.mktemp("oidc")
    (tmp / "jobs").mkdir()
    (tmp / "jobs" / "hello.toml").write_text('[[steps]]\nname = "say"\nrun = "echo hi"\n')
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    srv = Server(tmp, env={
        "QUAERO_API_TOKEN": TOKEN, "QUAERO_OIDC_ISSUER": issuer,
        "QUAERO_OIDC_CLIENT_ID": CLIENT_ID, "QUAERO_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "QUAERO_OIDC_NAME": "Test IdP", "QUAERO_OIDC_ADMIN_GROUPS": "quaero-admins",
        "QUAERO_OIDC_READ_GROUPS": "quaero-readers, auditors",
        "QUAERO_OIDC_ALLOW": "ops@example.org=operate"}).start()
    config = {"port": port, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
              "redirect_uris": [srv.url + "/auth/oidc/callback"],
              "post_logout_redirect_uris": [srv.url + "/login"], "accounts": ACCOUNTS}
    log = open(tmp / "provider.log", "w")
    proc = subprocess.Popen([node_oidc_provider, "provider.js", json.dumps(config)], cwd=PROVIDER,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout.readline().strip() == f"ready {issuer}", (tmp / "provider.log").read_text()
        with httpx.Client(base_url=srv.url, timeout=10,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            api.server = srv
            yield api
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        srv.stop()


@pytest.fixture
def browser_page(page, context):
    # the provider's pages @import a web font: nothing leaves this machine
    context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/]).*"), lambda route: route.abort())
    return page


def sign_in(page, url, login, next_path="/"):
    """Through Quaero's login page and the provider's own form (any password), consenting
    when asked."""
    page.goto(url + next_path)
    expect(page).to_have_url(re.compile(re.escape(url) + "/login"))
    page.get_by_role("link", name="Sign in with Test IdP").click()
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("whatever")
    page.get_by_role("button", name="Sign-in").click()
    page.get_by_role("button", name="Continue").click()


def session_cookie(context, url):
    return next(c for c in context.cookies(url) if c["name"] == "session")


def audit_lines(api, action):
    lines = api.get("/api/logs", params={"scope": "service", "source": "audit",
                                         "level": "debug", "limit": 500}).json()["logs"]
    return [ln for ln in lines if ln["attributes"].get("action") == action]


def script_errors(page):
    """The page's own errors (not resources refused: the aborted font, a 403 asked for)."""
    return [e for e in page.errors if "Failed to load resource" not in e]


def eventually(check, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_an_admin_signs_in_sees_settings_and_signs_out_everywhere(idp, browser_page, context):
    page, url = browser_page, idp.server.url
    page.goto(url + "/login")
    expect(page.get_by_label("API token")).to_be_visible()   # the token stays, for bootstrap
    sign_in(page, url, "admin", "/settings")
    expect(page).to_have_url(url + "/settings")
    expect(page.get_by_title("Signed in as")).to_have_text("admin@example.com (role admin)")
    expect(page.get_by_role("link", name="Settings")).to_be_visible()
    page.get_by_role("link", name="Home").click()
    expect(page.get_by_role("button", name="Run hello")).to_be_visible()
    cookie = session_cookie(context, url)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert not cookie["secure"]                                  # served over plain http
    assert page.evaluate("document.cookie") == ""
    with httpx.Client(base_url=url, timeout=10, cookies={"session": cookie["value"]}) as copy:
        assert copy.get("/api/keys").status_code == 200
        page.get_by_role("button", name="Log out").click()
        # ended here first, then the provider's own sign-out
        expect(page.get_by_role("button", name="Yes, sign me out")).to_be_visible()
        assert copy.get("/api/jobs").status_code == 401
        assert copy.get("/settings", follow_redirects=False).status_code == 302
    page.get_by_role("button", name="Yes, sign me out").click()
    expect(page).to_have_url(re.compile(re.escape(url) + r"/login"))
    expect(page.get_by_role("link", name="Sign in with Test IdP")).to_be_visible()

    def said():
        signed_in = [ln for ln in audit_lines(idp, "sign-in")
                     if ln["attributes"]["actor"] == "admin@example.com"]
        assert signed_in and signed_in[-1]["attributes"]["role"] == "admin"
        assert signed_in[-1]["attributes"]["via"] == "oidc"
        assert any(ln["attributes"]["actor"] == "admin@example.com"
                   for ln in audit_lines(idp, "sign-out"))
    eventually(said)
    assert script_errors(page) == []


def test_a_reader_sees_no_run_or_cancel_and_may_not_post(idp, browser_page, context):
    page, url = browser_page, idp.server.url
    job = idp.post("/api/jobs", json={"name": "running", "steps": ["one"]}).json()["id"]
    assert idp.patch(f"/api/jobs/{job}", json={"status": "running"}).status_code == 200
    sign_in(page, url, "reader")
    expect(page).to_have_url(url + "/")
    expect(page.get_by_title("Signed in as")).to_have_text("reader@example.com (role read)")
    expect(page.get_by_text("hello", exact=True)).to_be_visible()     # definitions listed
    expect(page.get_by_role("button", name=re.compile("^Run"))).to_have_count(0)
    expect(page.get_by_role("link", name="Settings")).to_have_count(0)
    page.goto(f"{url}/jobs/{job}")
    expect(page.get_by_text("running", exact=True).first).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("^Cancel"))).to_have_count(0)
    assert page.goto(url + "/settings").status == 403
    # the page's own fetch, with the session and its CSRF token: refused, nothing started
    page.goto(url + "/")
    answer = page.evaluate("""async () => {
        const csrf = document.querySelector('meta[name=csrf-token]').content;
        const r = await fetch('/api/jobs', {method: 'POST', headers: {
            'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
            body: JSON.stringify({definition: 'hello'})});
        return [r.status, await r.json()];
    }""")
    assert answer[0] == 403, answer
    assert "'operate'" in answer[1]["error"] and "reader@example.com" in answer[1]["error"]
    cancel = page.evaluate(f"""async () => {{
        const csrf = document.querySelector('meta[name=csrf-token]').content;
        const r = await fetch('/api/jobs/{job}/cancel', {{method: 'POST',
            headers: {{'X-CSRF-Token': csrf}}}});
        return r.status;
    }}""")
    assert cancel == 403
    assert idp.get(f"/api/jobs/{job}").json()["status"] == "running"
    assert idp.get("/api/jobs", params={"limit": 100}).json()["total"] == 1
    assert script_errors(page) == []


def test_the_allow_list_gives_its_role(idp, browser_page):
    page, url = browser_page, idp.server.url
    sign_in(page, url, "ops")
    expect(page.get_by_title("Signed in as")).to_have_text("ops@example.org (role operate)")
    expect(page.get_by_role("button", name="Run hello")).to_be_visible()
    expect(page.get_by_role("link", name="Settings")).to_have_count(0)


def test_someone_in_no_group_is_refused(idp, browser_page, context):
    page, url = browser_page, idp.server.url
    refused = []
    page.on("response", lambda r: refused.append(r.status) if "/auth/oidc/callback" in r.url
            else None)
    sign_in(page, url, "nobody")
    expect(page.get_by_role("heading", name="No access to Quaero")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("no group or allow-list entry gives a role")
    assert refused == [403]
    cookies = {c["name"]: c["value"] for c in context.cookies(url)}
    with httpx.Client(base_url=url, timeout=10, cookies=cookies) as copy:
        assert copy.get("/api/jobs").status_code == 401
        assert copy.get("/", follow_redirects=False).status_code == 302
    eventually(lambda: assert_true(any(
        ln["attributes"]["actor"] == "nobody@example.com"
        for ln in audit_lines(idp, "sign-in-refused"))))


def assert_true(value):
    assert value


@pytest.mark.parametrize("param, why", [
    ("state", "did not start in this browser"),     # the callback's state is not ours
    ("nonce", "did not verify (InvalidClaimError)"),  # the ID token's nonce is not ours
    ("code_challenge", "did not verify (OAuthError)"),  # PKCE: our verifier does not fit
])
def test_a_tampered_sign_in_is_refused(idp, browser_page, context, param, why):
    """Our redirect to the provider is altered on the way (its state, nonce or PKCE
    challenge replaced): the provider signs the person in, Quaero does not."""
    page, url = browser_page, idp.server.url
    sent = []
    forged = {"state": "forged", "nonce": "forged",
              "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"}[param]

    def swap(route):
        response = route.fetch(max_redirects=0)
        location = response.headers["location"]
        sent.append(location)
        route.fulfill(response=response, headers={
            **response.headers,
            "location": re.sub(rf"([?&]){param}=[^&]+", rf"\g<1>{param}={forged}", location)})
    page.route(re.compile(r"/auth/oidc/login"), swap)
    refused = []
    page.on("response", lambda r: refused.append((r.status, r.url))
            if "/auth/oidc/callback" in r.url else None)
    sign_in(page, url, "admin")
    expect(page.get_by_role("heading", name="Sign-in failed")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text(why)
    assert len(sent) == 1 and "state=" in sent[0] and "code_challenge_method=S256" in sent[0] \
        and "nonce=" in sent[0]
    assert [status for status, _ in refused] == [400]
    assert "code=" in refused[0][1]
    cookies = {c["name"]: c["value"] for c in context.cookies(url)}
    with httpx.Client(base_url=url, timeout=10, cookies=cookies) as copy:
        assert copy.get("/api/jobs").status_code == 401


def test_the_provider_saying_no_is_a_clear_403(idp, browser_page, context):
    page, url = browser_page, idp.server.url
    page.goto(url + "/login")
    page.get_by_role("link", name="Sign in with Test IdP").click()
    page.get_by_role("link", name="[ Cancel ]").click()
    expect(page.get_by_role("heading", name="Sign-in was not completed")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("access_denied")
    cookies = {c["name"]: c["value"] for c in context.cookies(url)}
    with httpx.Client(base_url=url, timeout=10, cookies=cookies) as copy:
        assert copy.get("/api/jobs").status_code == 401
