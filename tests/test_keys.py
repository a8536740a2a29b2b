"""API keys, their scopes and job patterns, server-side sessions, the sign-in rate limit and
the audit trail (issue 24; docs/contract.md "Access")."""
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import gevent
import httpx
import pytest
import sqlalchemy as sa

from quaero import access, keystore
from quaero.models import keys_t, sessions_t, utcnow
from tests.helpers import CountingBody, REDIS_URL, ROOT, eventually, make_app

TOKEN = "keys-" + "t0k3n" * 6
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def kapp(any_app):
    """The app on SQLite and PostgreSQL, with the admin token."""
    any_app.config["QUAERO_API_TOKEN"] = TOKEN
    return any_app


@pytest.fixture
def tapp(sqlite_url, tmp_path):
    app = make_app(sqlite_url, tmp_path, QUAERO_API_TOKEN=TOKEN)
    yield app
    app.extensions["quaero"].close()


def new_key(client, **body):
    body.setdefault("name", "k")
    r = client.post("/api/keys", json=body, headers=ADMIN)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def audit_lines(app, client):
    gevent.sleep(0.3)  # the writer's turn (audit lines are queued, not awaited)
    lines = client.get("/api/logs?scope=service&level=debug&limit=500", headers=ADMIN).get_json()
    return [ln for ln in lines["logs"] if ln["source"] == "audit"]


# --- pure rules ------------------------------------------------------------------------

@pytest.mark.parametrize("pattern,name,match", [
    ("nightly-*", "nightly-build", True), ("nightly-*", "Nightly-build", False),
    ("nightly-*", "x-nightly-build", False), ("a?c", "abc", True), ("a?c", "abbc", False),
    ("[ab]", "[ab]", True), ("[ab]", "a", False), ("a.b", "axb", False), ("*", "", True),
    ("100%_x", "100%_x", True), ("100%_x", "100abx", False)])
def test_job_patterns(pattern, name, match):
    assert access.job_pattern_matches(pattern, name) is match


def test_key_text_and_hash():
    key_id, text = access.new_key()
    assert text.startswith(f"qk_{key_id}_") and len(key_id) == 16
    assert access.key_id_of(text) == key_id
    assert access.key_id_of(text[:-30]) is None and access.key_id_of("qk_x_y") is None
    stored = access.secret_hash(text)
    assert text not in stored and access.same_hash(text, stored)
    assert not access.same_hash(text[:-1] + ("A" if text[-1] != "A" else "B"), stored)


def test_admin_implies_every_scope_and_roles():
    p = access.Principal("key", "k", frozenset({"admin"}))
    assert all(p.has(s) for s in access.SCOPES)
    reader = access.Principal("session", "ann", access.role_scopes("read"), role="read")
    assert reader.has("read") and not reader.has("operate") and not reader.has("ingest")
    assert access.role_scopes("operate") == {"read", "operate"}


def test_rate_limit_windows():
    now = datetime(2026, 1, 1, 12, 0, 0)
    start = now - timedelta(minutes=1)
    assert access.rate_limited([(start, 9, 10)], now) is None
    assert access.rate_limited([(start, 10, 10)], now) == 240
    assert access.rate_limited([(now - timedelta(minutes=6), 99, 10)], now) is None
    assert access.rate_limited([(start, 1, 10), (now, 50, 50)], now) == 300


def test_expiry_parsing():
    now = datetime(2026, 1, 1, 12, 0, 0)
    assert access.parse_expiry("2026-01-02T00:00:00Z", now) == datetime(2026, 1, 2)
    assert access.parse_expiry("2026-01-02T02:00:00+02:00", now) == datetime(2026, 1, 2)
    assert access.parse_expiry(None, now) is None
    for bad in ("yesterday", "2025-01-01T00:00:00Z", 5):
        with pytest.raises(ValueError):
            access.parse_expiry(bad, now)


# --- keys: made, listed, used, revoked, expired (SQLite and PostgreSQL) -------------------

def test_key_lifecycle(kapp):
    c = kapp.test_client()
    key = new_key(c, name="ci", scopes=["ingest", "read"])
    assert key["scopes"] == ["ingest", "read"] and key["jobs"] is None
    assert key["created_by"] == "token" and key["last_used_at"] is None
    secret = key["key"]
    listed = c.get("/api/keys", headers=ADMIN)
    assert secret not in listed.get_data(as_text=True) and "key" not in listed.get_json()["keys"][0]
    with kapp.extensions["quaero"].engine.connect() as conn:   # only a hash is kept
        rows = conn.execute(sa.select(keys_t)).all()
    assert all(secret not in str(tuple(r)) for r in rows)
    assert rows[0].secret_hash == access.secret_hash(secret)

    r = c.post("/api/logs", json={"logs": [{"level": "info", "message": "by key"}]},
               headers=bearer(secret))
    assert r.status_code == 201
    assert c.get("/api/jobs", headers=bearer(secret)).status_code == 200
    r = c.post("/api/jobs/x/cancel", headers=bearer(secret))
    assert r.status_code == 403 and "'operate'" in r.get_json()["error"]
    assert c.get("/api/keys", headers=bearer(secret)).status_code == 403

    assert c.delete(f"/api/keys/{key['id']}", headers=ADMIN).status_code == 204
    r = c.get("/api/jobs", headers=bearer(secret))
    assert r.status_code == 401 and "revoked" in r.get_json()["error"]
    assert c.delete(f"/api/keys/{key['id']}", headers=ADMIN).status_code == 404
    assert c.get("/api/keys", headers=ADMIN).get_json()["keys"] == []
    # a key of the right shape that does not exist, or with a wrong secret: 401
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert c.get("/api/jobs", headers=bearer(forged)).status_code == 401
    assert c.get("/api/jobs", headers=bearer("qk_" + "0" * 16 + "_" + "x" * 43)).status_code == 401


def test_bad_key_requests_are_400(tapp):
    c = tapp.test_client()
    for body in ({"name": "x", "scopes": []}, {"name": "x", "scopes": ["write"]},
                 {"scopes": ["read"]}, {"name": "x", "scopes": ["read"], "expires_at": "2000-01-01"},
                 {"name": "x", "scopes": ["admin"], "jobs": "a*"},
                 {"name": "x", "scopes": ["read"], "jobs": "a" * 201},
                 {"name": "x", "scopes": ["read"], "extra": 1}):
        r = c.post("/api/keys", json=body, headers=ADMIN)
        assert r.status_code == 400, (body, r.get_json())
    assert c.get("/api/keys", headers=ADMIN).get_json()["keys"] == []


def test_an_expired_key_is_refused(kapp):
    c = kapp.test_client()
    soon = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    key = new_key(c, scopes=["read"], expires_at=soon)
    assert key["expires_at"].startswith(soon[:16])
    assert c.get("/api/jobs", headers=bearer(key["key"])).status_code == 200
    with kapp.extensions["quaero"].engine.begin() as conn:   # an hour later
        conn.execute(keys_t.update().values(expires_at=utcnow() - timedelta(seconds=1)))
    r = c.get("/api/jobs", headers=bearer(key["key"]))
    assert r.status_code == 401 and "expired" in r.get_json()["error"]


def test_last_used_is_written_at_most_once_a_minute(tapp):
    c = tapp.test_client()
    key = new_key(c, scopes=["read"])
    engine = tapp.extensions["quaero"].engine

    def last_used():
        with engine.connect() as conn:
            return conn.execute(sa.select(keys_t.c.last_used_at)).scalar_one()
    c.get("/api/jobs", headers=bearer(key["key"]))
    first = last_used()
    assert first is not None
    writes = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda *a: writes.append(a[2]) if a[2].lstrip().upper().startswith("UPDATE api_keys".upper()) else None)
    for _ in range(20):
        assert c.get("/api/jobs", headers=bearer(key["key"])).status_code == 200
    assert last_used() == first and writes == []
    with engine.begin() as conn:
        conn.execute(keys_t.update().values(last_used_at=first - timedelta(minutes=2)))
    writes.clear()
    c.get("/api/jobs", headers=bearer(key["key"]))
    assert last_used() > first and len(writes) == 1


# --- job patterns ------------------------------------------------------------------------

def test_a_key_limited_to_jobs(kapp):
    c = kapp.test_client()
    ingest = bearer(new_key(c, name="nightly", scopes=["ingest"], jobs="nightly-*")["key"])
    reader = bearer(new_key(c, name="reader", scopes=["read"], jobs="nightly-*")["key"])
    operator = bearer(new_key(c, name="op", scopes=["operate"], jobs="nightly-*")["key"])
    other = c.post("/api/jobs", json={"name": "other", "steps": ["a"]}, headers=ADMIN).get_json()["id"]
    upper = c.post("/api/jobs", json={"name": "Nightly-X", "steps": []}, headers=ADMIN).get_json()["id"]
    # ingest: creates, sends to, and ends its jobs; nothing else
    r = c.post("/api/jobs", json={"name": "nightly-1", "steps": ["a"]}, headers=ingest)
    assert r.status_code == 201
    mine = r.get_json()["id"]
    r = c.post("/api/jobs", json={"name": "other-2"}, headers=ingest)
    assert r.status_code == 403 and "nightly-*" in r.get_json()["error"]
    ok = {"logs": [{"level": "info", "message": "mine", "job_id": mine, "step": "a"}]}
    assert c.post("/api/logs", json=ok, headers=ingest).status_code == 201
    for body in ({"logs": [{"level": "info", "message": "x", "job_id": other}]},
                 {"logs": [{"level": "info", "message": "x", "job_id": mine},
                           {"level": "info", "message": "x"}]}):
        r = c.post("/api/logs", json=body, headers=ingest)
        assert r.status_code == 403, r.get_json()
    assert c.patch(f"/api/jobs/{mine}/steps/a", json={"status": "completed"}, headers=ingest).status_code == 200
    assert c.patch(f"/api/jobs/{other}", json={"status": "failed"}, headers=ingest).status_code == 403
    assert c.patch(f"/api/jobs/{mine}", json={"status": "completed"}, headers=ingest).status_code == 200
    # read: only those jobs, listed and read; the service log and searches everywhere not
    listed = c.get("/api/jobs", headers=reader).get_json()
    assert [j["id"] for j in listed["jobs"]] == [mine] and listed["total"] == 1
    assert c.get(f"/api/logs?scope=job&job_id={mine}", headers=reader).get_json()["logs"][0]["message"] == "mine"
    for url in (f"/api/logs?scope=job&job_id={other}", f"/api/jobs/{other}", f"/jobs/{other}",
                f"/api/jobs/{other}/logs.txt", f"/api/logs?scope=job&job_id={mine}&job_id={other}",
                f"/api/logs/stream?scope=job&job_id={other}", f"/api/jobs/{upper}",
                "/api/logs?scope=service", "/api/search?q=mine",
                f"/api/logs/histogram?scope=job&job_id={other}"):
        assert c.get(url, headers=reader).status_code == 403, url
    assert c.get(f"/api/search?q=mine&job_id={mine}", headers=reader).status_code == 200
    # operate: on those jobs only
    assert c.post(f"/api/jobs/{other}/cancel", headers=operator).status_code == 403
    assert c.delete(f"/api/jobs/{other}", headers=operator).status_code == 403
    assert c.delete(f"/api/jobs/{mine}", headers=operator).status_code == 204
    assert c.get(f"/api/jobs/{other}", headers=ADMIN).status_code == 200
    lines = c.get(f"/api/logs?scope=job&job_id={other}", headers=ADMIN).get_json()["logs"]
    assert lines == []                                  # nothing of the refused posts


def test_otlp_lines_of_a_limited_key(tapp):
    c = tapp.test_client()
    key = bearer(new_key(c, scopes=["ingest"], jobs="ci-*")["key"])
    other = c.post("/api/jobs", json={"name": "other"}, headers=ADMIN).get_json()["id"]

    def export(job):
        attrs = [{"key": "quaero.job.id", "value": {"stringValue": job}}] if job else []
        return {"resourceLogs": [{"resource": {"attributes": attrs}, "scopeLogs": [
            {"logRecords": [{"body": {"stringValue": "otlp"}, "severityText": "INFO"}]}]}]}
    assert c.post("/v1/logs", json=export(other), headers=key).status_code == 403
    assert c.post("/v1/logs", json=export(None), headers=key).status_code == 403
    mine = c.post("/api/jobs", json={"name": "ci-1"}, headers=key).get_json()["id"]
    assert c.post("/v1/logs", json=export(mine), headers=key).status_code == 200


def test_a_key_limited_to_sources(kapp):
    """A key with ``sources`` sends lines naming one of them only, by every way in."""
    c = kapp.test_client()
    made = new_key(c, name="ci", scopes=["ingest", "read"], sources=["ci", "ci-arm"])
    assert made["sources"] == ["ci", "ci-arm"]
    assert [k["sources"] for k in c.get("/api/keys", headers=ADMIN).get_json()["keys"]] == \
        [["ci", "ci-arm"]]
    key = bearer(made["key"])
    ok = {"logs": [{"level": "info", "message": "built", "source": "ci"},
                   {"level": "info", "message": "built", "source": "ci-arm"}]}
    assert c.post("/api/logs", json=ok, headers=key).status_code == 201
    for line in ({"level": "info", "message": "x"}, {"level": "info", "message": "x",
                                                     "source": "prod"}):
        r = c.post("/api/logs", json={"logs": [ok["logs"][0], line]}, headers=key)
        assert r.status_code == 403 and "source" in r.get_json()["error"], r.get_json()
    loki = {"streams": [{"stream": {"service_name": "prod"}, "values": [["1", "x"]]}]}
    assert c.post("/loki/api/v1/push", json=loki, headers=key).status_code == 403
    loki["streams"][0]["stream"]["service_name"] = "ci"
    assert c.post("/loki/api/v1/push", json=loki, headers=key).status_code == 204
    otlp = {"resourceLogs": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "prod"}}]}, "scopeLogs": [
        {"logRecords": [{"body": {"stringValue": "otlp"}, "severityText": "INFO"}]}]}]}
    assert c.post("/v1/logs", json=otlp, headers=key).status_code == 403
    stored = c.get("/api/logs?scope=service&level=debug&limit=500", headers=ADMIN).get_json()
    assert sorted(ln["source"] for ln in stored["logs"] if ln["source"] != "audit") == \
        ["ci", "ci", "ci-arm"]                        # nothing of the refused requests
    for bad in ([], ["x" * 201], "ci", [1], ["ok"] * 21 + ["y"]):
        r = c.post("/api/keys", json={"name": "b", "scopes": ["ingest"], "sources": bad},
                   headers=ADMIN)
        assert r.status_code == 400, bad
    r = c.post("/api/keys", json={"name": "b", "scopes": ["admin"], "sources": ["ci"]},
               headers=ADMIN)
    assert r.status_code == 400


# --- refusals change nothing and read no body ------------------------------------------

def test_a_refused_scope_reads_no_body_and_stores_nothing(tapp):
    c = tapp.test_client()
    reader = bearer(new_key(c, scopes=["read"])["key"])
    body = CountingBody(8 << 20)
    r = c.post("/api/logs", input_stream=body, content_type="application/json", headers=reader)
    assert r.status_code == 403 and "'ingest'" in r.get_json()["error"]
    assert body.read_bytes <= (1 << 20) + 65536       # the drain at most, never parsed
    r = c.post("/api/jobs", json={"definition": "demo"}, headers=reader)
    assert r.status_code == 403
    assert c.get("/api/jobs", headers=ADMIN).get_json()["total"] == 0


# --- sessions ----------------------------------------------------------------------------

def _login(client, token=TOKEN, addr="10.0.0.1"):
    page = client.get("/login", environ_base={"REMOTE_ADDR": addr})
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    return client.post("/login", data={"token": token, "csrf_token": csrf, "next": "/"},
                       environ_base={"REMOTE_ADDR": addr})


def test_signing_out_ends_the_session_for_a_copied_cookie(kapp):
    c = kapp.test_client()
    assert _login(c).status_code == 302
    html = c.get("/").get_data(as_text=True)
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)
    thief = kapp.test_client()
    thief.set_cookie("session", c.get_cookie("session").value)
    assert thief.get("/api/jobs").status_code == 200
    with kapp.extensions["quaero"].engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sessions_t)).scalar() == 1
    assert c.post("/logout", data={"csrf_token": csrf}).status_code == 302
    assert thief.get("/api/jobs").status_code == 401                  # the copy is dead too
    assert thief.get("/queue").status_code == 302                     # to the login page
    with kapp.extensions["quaero"].engine.connect() as conn:
        assert conn.execute(sa.select(sessions_t.c.revoked_at)).scalar() is not None


def test_a_session_past_its_expiry_is_refused(tapp):
    c = tapp.test_client()
    _login(c)
    assert c.get("/api/jobs").status_code == 200
    with tapp.extensions["quaero"].engine.begin() as conn:
        conn.execute(sessions_t.update().values(expires_at=utcnow() - timedelta(seconds=1)))
    assert c.get("/api/jobs").status_code == 401


def _person(app, client, role, subject="ann@example.com"):
    """A signed-in person with ``role``, as the OpenID Connect sign-in makes one."""
    secret = keystore.start_session(app.extensions["quaero"].engine, subject, role,
                                    timedelta(hours=1), utcnow())
    with client.session_transaction() as s:
        s["sid"] = secret
    html = client.get("/").get_data(as_text=True)
    return html, re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


def test_a_readers_pages_hide_what_it_may_not_do(tapp):
    (tapp.config["QUAERO_JOBS_DIR"] and os.makedirs(tapp.config["QUAERO_JOBS_DIR"], exist_ok=True))
    c = tapp.test_client()
    job = c.post("/api/jobs", json={"name": "j", "steps": ["a"]}, headers=ADMIN).get_json()["id"]
    html, csrf = _person(tapp, c, "read")
    assert "ann@example.com" in html and ">Settings<" not in html
    page = c.get(f"/jobs/{job}").get_data(as_text=True)
    assert ">Cancel</button>" not in page and ">Rerun</button>" not in page
    r = c.post(f"/api/jobs/{job}/cancel", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403 and "'operate'" in r.get_json()["error"]
    assert c.get("/settings").status_code == 403
    operator = tapp.test_client()
    _, csrf = _person(tapp, operator, "operate", "olga@example.com")
    assert ">Cancel</button>" in operator.get(f"/jobs/{job}").get_data(as_text=True)
    assert operator.post(f"/api/jobs/{job}/cancel", headers={"X-CSRF-Token": csrf}).status_code == 202
    admin = tapp.test_client()
    _login(admin)
    assert ">Settings<" in admin.get("/").get_data(as_text=True)
    assert admin.get("/settings").status_code == 200


# --- sign-in attempts are rate-limited --------------------------------------------------

def test_sign_in_failures_are_limited_per_address_and_account(sqlite_url, tmp_path, monkeypatch):
    from quaero.web import views
    monkeypatch.setattr(views.time, "sleep", lambda s: None)
    apps = [make_app(sqlite_url, tmp_path, QUAERO_API_TOKEN=TOKEN) for _ in range(2)]
    try:
        one, two = (app.test_client() for app in apps)   # two workers, one database
        for i in range(access.LOGIN_FAILURES_PER_ADDRESS):
            assert _login((one, two)[i % 2], "wrong", "192.0.2.1").status_code == 401
        r = _login(one, "wrong", "192.0.2.1")
        assert r.status_code == 429 and 200 <= int(r.headers["Retry-After"]) <= 300
        r = _login(two, TOKEN, "192.0.2.1")               # the right token too, from there
        assert r.status_code == 429 and "Too many" in r.get_data(as_text=True)
        assert _login(two, TOKEN, "192.0.2.2").status_code == 302   # another address
        # the account: failures from many addresses
        for i in range(access.LOGIN_FAILURES_PER_ACCOUNT - access.LOGIN_FAILURES_PER_ADDRESS):
            assert _login(one, "wrong", f"198.51.100.{i}").status_code == 401
        assert _login(one, TOKEN, "203.0.113.9").status_code == 429
        # an hour later: the windows have passed
        from quaero.models import login_failures_t
        with apps[0].extensions["quaero"].engine.begin() as conn:
            conn.execute(login_failures_t.update().values(
                window_start=utcnow() - timedelta(minutes=6)))
        assert _login(one, TOKEN, "192.0.2.1").status_code == 302
        assert _login(two, "wrong", "192.0.2.3").status_code == 401
        with apps[0].extensions["quaero"].engine.connect() as conn:   # old windows went
            assert conn.execute(sa.select(sa.func.count()).select_from(login_failures_t)).scalar() <= 2
    finally:
        for app in apps:
            app.extensions["quaero"].close()


def test_behind_a_local_proxy_the_forwarded_address_counts(tapp, monkeypatch):
    from quaero.web import views
    monkeypatch.setattr(views.time, "sleep", lambda s: None)
    c = tapp.test_client()
    for i in range(access.LOGIN_FAILURES_PER_ADDRESS):
        page = c.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
        r = c.post("/login", data={"token": "no", "csrf_token": csrf},
                   headers={"X-Forwarded-For": "203.0.113.7"})
        assert r.status_code == 401
    assert _login(c, TOKEN, "127.0.0.1").status_code == 302   # the proxy itself is not blocked


# --- the audit trail ---------------------------------------------------------------------

def test_the_audit_trail_names_who_and_never_a_secret(tmp_path, sqlite_url):
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / "hello.toml").write_text('[[steps]]\nname = "s"\nrun = "sleep 30"\n')
    app = make_app(sqlite_url, tmp_path, QUAERO_API_TOKEN=TOKEN)
    try:
        c = app.test_client()
        key = new_key(c, name="deployer", scopes=["operate", "read"])
        k = bearer(key["key"])
        job = c.post("/api/jobs", json={"definition": "hello"}, headers=k).get_json()["id"]
        assert c.post(f"/api/jobs/{job}/cancel", headers=k).status_code == 202
        eventually(lambda: c.get(f"/api/jobs/{job}", headers=k).get_json()["status"] == "cancelled")
        rerun = c.post(f"/api/jobs/{job}/rerun", headers=k).get_json()["id"]
        assert c.post(f"/api/jobs/{rerun}/cancel", headers=ADMIN).status_code == 202
        eventually(lambda: c.get(f"/api/jobs/{rerun}", headers=k).get_json()["status"] == "cancelled")
        assert c.delete(f"/api/jobs/{job}", headers=k).status_code == 204
        assert c.delete(f"/api/keys/{key['id']}", headers=ADMIN).status_code == 204
        _login(c)
        html = c.get("/").get_data(as_text=True)
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)
        c.post("/logout", data={"csrf_token": csrf})
        lines = audit_lines(app, c)
        by = [(ln["attributes"]["action"], ln["attributes"]["actor"]) for ln in lines]
        who = f"key deployer ({key['id']})"
        for expected in (("key-create", "token"), ("run", who), ("cancel", who), ("rerun", who),
                         ("cancel", "token"), ("delete", who), ("key-revoke", "token"),
                         ("sign-in", "token"), ("sign-out", "token")):
            assert expected in by, (expected, by)
        service = c.get("/api/logs?scope=service&level=debug&limit=500", headers=ADMIN)
        text = service.get_data(as_text=True)
        assert key["key"] not in text and key["key"][20:] not in text and TOKEN not in text
        assert any(job in ln["message"] for ln in lines if ln["attributes"]["action"] == "delete")
    finally:
        app.extensions["quaero"].close()


# --- across workers: a key revoked on one is refused on the other ------------------------

def test_a_key_revoked_on_one_worker_is_refused_by_the_other_at_once(pg_database, server_factory):
    """Two workers on PostgreSQL and Redis; the access log names the worker (pid) of each
    answer: after the revocation (answered by one), every request on either is a 401."""
    if not REDIS_URL:
        pytest.skip("QUAERO_TEST_REDIS_URL is not set: Redis tests run in CI")
    from tests.helpers import reset_pg
    reset_pg(pg_database)
    srv = server_factory(workers=2, env={
        "QUAERO_API_TOKEN": TOKEN, "QUAERO_DATABASE_URL": pg_database,
        "QUAERO_REDIS_URL": REDIS_URL, "QUAERO_ACCESS_LOG": "-",
        "GUNICORN_CMD_ARGS": "--access-logformat='ACCESS %(p)s %(s)s %(U)s'"})
    key = httpx.post(f"{srv.url}/api/keys", json={"name": "w", "scopes": ["read"]},
                     headers=ADMIN, timeout=10).json()

    def ask():   # a new connection each time: the two workers take turns accepting
        with httpx.Client(timeout=10, headers={"Connection": "close"}) as c:
            return c.get(f"{srv.url}/api/jobs", headers=bearer(key["key"])).status_code
    assert {ask() for _ in range(40)} == {200}
    assert httpx.delete(f"{srv.url}/api/keys/{key['id']}", headers=ADMIN).status_code == 204
    revoked_at = time.monotonic()
    def workers(status):
        return set(re.findall(r"ACCESS <(\d+)> %d /api/jobs" % status, srv.logs())) or \
            set(re.findall(r"ACCESS (\d+) %d /api/jobs" % status, srv.logs()))
    statuses = []
    # at least 10 requests and a second, until both workers have answered one (the
    # kernel hands connections to them unevenly: on a loaded machine one may take many)
    while (len(statuses) < 10 or time.monotonic() - revoked_at < 1.0
           or len(workers(401)) < 2 and time.monotonic() - revoked_at < 20):
        statuses.append(ask())
    assert set(statuses) == {401}, statuses   # from the first on
    assert len(workers(401)) == 2, "both workers refused the key"
    assert len(workers(200)) == 2


# --- the CLI -----------------------------------------------------------------------------

def _quaero(url, token, *args, input=None):
    env = {**os.environ, "QUAERO_URL": url}
    env.pop("QUAERO_API_TOKEN", None)
    if token:
        env["QUAERO_API_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "quaero", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60, input=input)


def test_cli_keys_end_to_end(server_factory):
    srv = server_factory(env={"QUAERO_API_TOKEN": TOKEN})
    made = _quaero(srv.url, TOKEN, "keys", "create", "--name", "ci", "--scope", "ingest",
                   "--jobs", "ci-*", "--expires", "2999-01-01T00:00:00Z")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert access.key_id_of(secret) and "not shown again" in made.stderr
    listed = _quaero(srv.url, TOKEN, "keys", "list")
    assert listed.returncode == 0 and "ci-*" in listed.stdout and "2999-01-01" in listed.stdout
    assert secret not in listed.stdout and secret[20:] not in listed.stdout
    key_id = access.key_id_of(secret)
    assert key_id in listed.stdout
    # the key sends a job's output (exec: create the job, its lines, its end)
    run = _quaero(srv.url, secret, "exec", "--name", "ci-build", "--", "echo", "built by key")
    assert run.returncode == 0, run.stderr
    jobs = httpx.get(f"{srv.url}/api/jobs", headers=ADMIN).json()["jobs"]
    assert [(j["name"], j["status"]) for j in jobs] == [("ci-build", "completed")]
    # but may not read, nor touch other jobs
    refused = _quaero(srv.url, secret, "jobs")
    assert refused.returncode != 0 and "403" in refused.stderr and "read" in refused.stderr
    # a non-admin may not manage keys
    assert _quaero(srv.url, secret, "keys", "list").returncode != 0
    revoked = _quaero(srv.url, TOKEN, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and key_id in revoked.stdout
    assert key_id not in _quaero(srv.url, TOKEN, "keys", "list").stdout
    r = httpx.post(f"{srv.url}/api/logs", json={"logs": [{"level": "info", "message": "x"}]},
                   headers=bearer(secret))
    assert r.status_code == 401
    assert _quaero(srv.url, TOKEN, "keys", "revoke", key_id).returncode != 0   # not twice
