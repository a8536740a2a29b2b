"""The Settings page (API keys) and sign-out in real Chromium against a real gunicorn with a
token (issue 24): an admin signs in, makes a key (its secret shown once), sees it listed,
revokes it; signing out ends the session on the server, so a copy of the cookie is refused."""
import httpx
from playwright.sync_api import expect

TOKEN = "browser-" + "t0k3n" * 6


def sign_in(page, url):
    page.goto(url + "/settings")
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(url + "/settings")


def test_settings_makes_shows_once_and_revokes_a_key(server_factory, page):
    srv = server_factory(env={"QUAERO_API_TOKEN": TOKEN})
    url = srv.url
    sign_in(page, url)
    expect(page.get_by_role("link", name="Settings")).to_be_visible()
    expect(page.get_by_text("No keys yet.")).to_be_visible()
    name = '<img src=x onerror="window.pwned=1">ci'
    page.get_by_label("Key name").fill(name)
    page.get_by_label("Scope read").check()
    page.get_by_label("Job pattern").fill("nightly-*")
    page.get_by_role("button", name="Create key").click()
    secret_box = page.get_by_label("The new key")
    expect(secret_box).to_have_value(__import__("re").compile(r"^qk_[0-9a-f]{16}_"))
    secret = secret_box.input_value()
    table = page.get_by_role("table", name="API keys")
    row = table.locator("tbody tr", has_text="nightly-*")
    expect(row).to_contain_text(name)                    # as text, never as markup
    expect(row).to_contain_text("ingest, read")
    assert page.evaluate("window.pwned") is None
    # the key works, with its scopes
    with httpx.Client(base_url=url, timeout=10) as api:
        key = {"Authorization": f"Bearer {secret}"}
        assert api.get("/api/jobs", headers=key).status_code == 200
        assert api.get("/api/keys", headers=key).status_code == 403
        # shown once: a reload lists it without the secret
        page.reload()
        expect(table.locator("tbody tr", has_text="nightly-*")).to_be_visible()
        expect(page.get_by_label("The new key")).to_be_hidden()
        assert secret not in page.content()
        row = table.locator("tbody tr", has_text="nightly-*")
        row.get_by_role("button", name=__import__("re").compile("^Revoke")).click()
        expect(row.get_by_role("button", name=__import__("re").compile("^Revoke"))).to_have_text("Really revoke?")
        row.get_by_role("button", name=__import__("re").compile("^Revoke")).click()
        expect(page.get_by_text("No keys yet.")).to_be_visible()
        assert api.get("/api/jobs", headers=key).status_code == 401
    assert page.errors == []


def test_signing_out_kills_a_copied_cookie(server_factory, page, context):
    srv = server_factory(env={"QUAERO_API_TOKEN": TOKEN})
    sign_in(page, srv.url)
    cookie = next(c for c in context.cookies() if c["name"] == "session")
    with httpx.Client(base_url=srv.url, timeout=10, cookies={"session": cookie["value"]}) as copy:
        assert copy.get("/api/jobs").status_code == 200
        page.get_by_role("button", name="Log out").click()
        expect(page.get_by_label("API token")).to_be_visible()
        assert copy.get("/api/jobs").status_code == 401
        assert copy.get("/queue", follow_redirects=False).status_code == 302


def test_a_reader_sees_no_settings_and_no_run_button(server_factory, page, context):
    """A key with read only, used by a browser (the pages take a Bearer key as well): no
    Settings link, no Run button, /settings refused."""
    srv = server_factory(env={"QUAERO_API_TOKEN": TOKEN})
    with httpx.Client(base_url=srv.url, timeout=10) as api:
        reader = api.post("/api/keys", json={"name": "r", "scopes": ["read"]},
                          headers={"Authorization": f"Bearer {TOKEN}"}).json()["key"]
    context.set_extra_http_headers({"Authorization": f"Bearer {reader}"})
    page.goto(srv.url + "/")
    expect(page.get_by_role("link", name="Queue", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Settings")).to_have_count(0)
    expect(page.get_by_role("button", name=__import__("re").compile("^Run"))).to_have_count(0)
    assert page.goto(srv.url + "/settings").status == 403
