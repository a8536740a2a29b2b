"""Safety rails and bad input (issue 10): the loopback/Host rule without a token, /metrics
protection, the Bearer scheme in any case, deep JSON, unsafe ?next=, step names with '/',
and the request body limit."""
import json
import os
import socket
import subprocess
import sys
import time
from urllib.parse import quote

import httpx
import pytest

from tests.helpers import ROOT, free_port, make_app

TOKEN = "rails-" + "t0k3n" * 6
DEEP = "[" * 100000 + "]" * 100000


@pytest.fixture
def token_app(sqlite_url, tmp_path):
    app = make_app(sqlite_url, tmp_path, QUAERO_API_TOKEN=TOKEN)
    yield app
    app.extensions["quaero"].close()


def _refused(r, why):
    assert r.status_code == 403, r.get_data(as_text=True)
    assert why in r.get_json()["error"] and "QUAERO_API_TOKEN" in r.get_json()["error"]


# --- 1. without a token: loopback clients and loopback Host names only -----------------

PATHS = ["/api/jobs", "/", "/queue", "/login", "/healthz", "/metrics",
         "/api/logs?scope=service", "/static/css/log-stream.css"]


@pytest.mark.parametrize("path", PATHS)
def test_without_a_token_a_remote_client_is_refused_everywhere(client, path):
    _refused(client.get(path, environ_base={"REMOTE_ADDR": "192.0.2.9"}), "from 192.0.2.9")
    _refused(client.get(path, headers={"Host": "evil.example"}), "evil.example")
    _refused(client.get(path, headers={"X-Forwarded-For": "127.0.0.1, 203.0.113.5"}),
             "203.0.113.5")
    assert client.get(path).status_code in (200, 302)


def test_without_a_token_writes_and_login_from_afar_are_refused(client):
    remote = {"REMOTE_ADDR": "10.1.2.3"}
    r = client.post("/api/jobs", json={"name": "x"}, environ_base=remote)
    _refused(r, "from 10.1.2.3")
    r = client.post("/api/logs", json={"logs": [{"level": "info", "message": "m"}]},
                    headers={"Host": "rebound.example:5000"})
    _refused(r, "rebound.example")
    assert client.get("/api/jobs").get_json()["total"] == 0


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:5000", "127.0.0.1", "127.0.0.1:80",
                                  "127.5.6.7:8000", "[::1]", "[::1]:8080",
                                  "[::ffff:127.0.0.1]:1"])
def test_loopback_host_names_are_served(client, host):
    assert client.get("/api/jobs", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "localhost.evil.example", "127.0.0.1.nip.io",
                                  "evil.example:5000", "localhost:x", "[::1]x", "[::1",
                                  "192.0.2.2:5000", "[fd00::2]:5000", "0.0.0.0:5000", ""])
def test_other_host_names_are_refused(client, host):
    r = client.get("/api/jobs", headers={"Host": host})
    assert r.status_code == 403 and "Host" in r.get_json()["error"]


@pytest.mark.parametrize("peer", ["::1", "127.0.0.2", "::ffff:127.0.0.1"])
def test_loopback_peers_are_served(client, peer):
    assert client.get("/api/jobs", environ_base={"REMOTE_ADDR": peer}).status_code == 200


def test_with_a_token_the_token_decides_not_the_address(token_app):
    c = token_app.test_client()
    remote = {"environ_base": {"REMOTE_ADDR": "192.0.2.9"}, "headers": {"Host": "quaero.example"}}
    assert c.get("/api/jobs", **remote).status_code == 401
    ok = c.get("/api/jobs", environ_base=remote["environ_base"],
               headers={"Host": "quaero.example", "Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert c.get("/", **remote).status_code == 302           # to the login page
    assert c.get("/login", **remote).status_code == 200
    assert c.get("/healthz", **remote).status_code == 200    # open on purpose


# --- 2. /metrics ------------------------------------------------------------------------

def test_metrics_is_open_without_tokens(client):
    r = client.get("/metrics")
    assert r.status_code == 200 and "quaero_log_lines_ingested_total" in r.get_data(as_text=True)


def test_metrics_token_protects_metrics_only(sqlite_url, tmp_path):
    app = make_app(sqlite_url, tmp_path, QUAERO_METRICS_TOKEN="m-secret")
    try:
        c = app.test_client()
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics").get_json() == {"error": "authentication required"}
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/metrics", headers={"Authorization": "bearer m-secret"}).status_code == 200
        assert c.get("/healthz").status_code == 200
        assert c.get("/api/jobs").status_code == 200             # no API token: API open
    finally:
        app.extensions["quaero"].close()


def test_the_api_token_protects_metrics_when_set(token_app):
    c = token_app.test_client()
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert c.get("/healthz").status_code == 200


# --- 3. the Bearer scheme in any case ---------------------------------------------------

@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_in_any_case(token_app, scheme):
    c = token_app.test_client()
    auth = {"Authorization": f"{scheme} {TOKEN}"}
    r = c.post("/api/jobs", json={"name": "j", "steps": ["a"]}, headers=auth)
    assert r.status_code == 201, r.get_json()
    assert c.get("/api/logs?scope=service", headers=auth).status_code == 200
    assert c.get("/api/jobs", headers={"Authorization": f"{scheme}{TOKEN}"}).status_code == 401
    assert c.get("/api/jobs", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401


# --- 4. deeply nested JSON --------------------------------------------------------------

@pytest.fixture
def job(client):
    return client.post("/api/jobs", json={"name": "j", "steps": ["a"]}).get_json()["id"]


@pytest.mark.parametrize("body", [DEEP, '{"logs": ' + DEEP + "}", '{"status": ' + DEEP + "}",
                                  '{"a": ' * 50000 + "1" + "}" * 50000])
def test_deeply_nested_json_is_a_400_on_every_json_endpoint(client, job, body):
    for method, path in [("POST", "/api/logs"), ("POST", "/api/jobs"),
                         ("PATCH", f"/api/jobs/{job}"), ("PATCH", f"/api/jobs/{job}/steps/a")]:
        r = client.open(path, method=method, data=body, content_type="application/json")
        assert r.status_code == 400, (method, path, r.status_code)
        assert r.get_json() == {"error": "body must be a JSON object"}
    assert client.get(f"/api/jobs/{job}").get_json()["status"] == "pending"


def test_a_body_that_is_not_utf8_json_is_a_400(client):
    r = client.post("/api/logs", data=b"\xff\xfe{", content_type="application/json")
    assert r.status_code == 400 and "error" in r.get_json()


# --- 5. /login?next= --------------------------------------------------------------------

UNSAFE_NEXT = ["/\r\nSet-Cookie: a=b", "/x\nLocation: https://evil.example", "/\t/evil.example",
               "https://evil.example/", "//evil.example", "/\\evil.example", "javascript:alert(1)",
               "/a b", "/\x00", "/\u00fc", "", "evil"]


@pytest.mark.parametrize("target", UNSAFE_NEXT)
def test_unsafe_next_falls_back_to_home(client, token_app, target):
    r = client.get("/login", query_string={"next": target})      # no token: straight on
    assert r.status_code == 302 and r.headers["Location"] == "/"
    c = token_app.test_client()
    page = c.get("/login", query_string={"next": target})
    assert page.status_code == 200
    csrf = page.get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    r = c.post("/login", data={"token": TOKEN, "csrf_token": csrf, "next": target})
    assert r.status_code == 302 and r.headers["Location"] == "/"


def test_a_safe_next_is_kept(client):
    r = client.get("/login", query_string={"next": "/queue?status=running"})
    assert r.headers["Location"] == "/queue?status=running"


# --- 6. step names ----------------------------------------------------------------------

@pytest.mark.parametrize("name,why", [("a/b", "'/'"), ("/", "'/'"), ("..", "not allowed"),
                                      (".", "not allowed")])
def test_step_names_that_a_url_cannot_address_are_refused(client, name, why):
    r = client.post("/api/jobs", json={"name": "j", "steps": ["ok", name]})
    assert r.status_code == 400 and why in r.get_json()["error"], r.get_json()
    assert client.get("/api/jobs").get_json()["total"] == 0


def test_every_accepted_step_name_can_be_patched(client):
    names = ["a.b", "...", "a b", "\u00fc", "a%2Fb", "?", "#x", "a\\b"]
    job = client.post("/api/jobs", json={"name": "j", "steps": names}).get_json()["id"]
    for name in names:
        r = client.patch(f"/api/jobs/{job}/steps/{quote(name, safe='')}", json={"status": "running"})
        assert r.status_code == 200, (name, r.get_data(as_text=True))
    steps = client.get(f"/api/jobs/{job}").get_json()["steps"]
    assert [s["status"] for s in steps] == ["running"] * len(names)


# --- 7. the request body limit ----------------------------------------------------------

def _body_of(size, job):
    lines = [{"level": "info", "message": "x" * 3200, "job_id": job} for _ in range(10000)]
    body = json.dumps({"logs": lines})
    assert len(body) <= size
    return body + " " * (size - len(body))                # JSON allows trailing whitespace


def test_the_body_limit_is_32_mib_and_10000_lines_fit_under_it(app, client, job):
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert limit == 32 << 20
    r = client.post("/api/logs", data=_body_of(limit + 1, job), content_type="application/json")
    assert r.status_code == 413
    assert r.get_json() == {"error": f"request body too large: at most {limit} bytes per request"}
    assert sum(client.get(f"/api/jobs/{job}").get_json()["log_counts"].values()) == 0
    r = client.post("/api/logs", data=_body_of(limit, job), content_type="application/json")
    assert r.status_code == 201 and r.get_json()["accepted"] == 10000
    assert client.get(f"/api/jobs/{job}").get_json()["log_counts"]["info"] == 10000


def test_a_chunked_body_over_the_limit_is_a_413_on_gunicorn(server):
    """No Content-Length: the limit holds while the body is read."""
    job = httpx.post(server.url + "/api/jobs", json={"name": "j"}).json()["id"]
    body = _body_of((32 << 20) + 1, job).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"POST /api/logs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for i in range(0, len(body), 1 << 20):
                chunk = body[i:i + (1 << 20)]
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass                                   # the server answered before the end
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"application/json" in head and b"too large" in payload
    counts = httpx.get(f"{server.url}/api/jobs/{job}").json()["log_counts"]
    assert sum(counts.values()) == 0


def test_openapi_states_the_body_limit(client):
    doc = client.get("/api/openapi.json").get_json()
    post = doc["paths"]["/api/logs"]["post"]
    assert "33554432" in post["description"]
    assert "33554432" in post["responses"]["413"]["description"]


# --- a real gunicorn, started without gunicorn.conf.py ---------------------------------

def _other_address():
    """A non-loopback address of this machine, or None."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    for addr in out:
        if ":" not in addr and not addr.startswith("127."):
            return addr
    return None


@pytest.fixture
def bare_gunicorn(tmp_path):
    """``gunicorn -k gevent wsgi:app -b 0.0.0.0:PORT`` from a folder without gunicorn.conf.py."""
    procs = []

    def start(env=None):
        port = free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("QUAERO_")}
        full_env.update({"PYTHONPATH": ROOT, "QUAERO_DATABASE_URL": f"sqlite:///{tmp_path}/b.db",
                         "QUAERO_JOBS_DIR": str(tmp_path / "jobs")}, **(env or {}))
        log = open(tmp_path / f"bare-{port}.log", "wb")
        assert not os.path.exists(tmp_path / "gunicorn.conf.py")
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-k", "gevent", "wsgi:app",
                                 "-b", f"0.0.0.0:{port}"], cwd=tmp_path, env=full_env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append((proc, log))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / f"bare-{port}.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("gunicorn did not come up")

    yield start
    for proc, log in procs:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_bare_gunicorn_on_all_interfaces_serves_loopback_only(bare_gunicorn):
    other = _other_address()
    port = bare_gunicorn()
    with httpx.Client(timeout=10) as c:
        local = f"http://127.0.0.1:{port}"
        r = c.get(local + "/api/jobs")
        assert r.status_code == 200
        r = c.get(local + "/api/jobs", headers={"Host": "evil.example"})
        assert r.status_code == 403 and "evil.example" in r.json()["error"]
        r = c.post(local + "/api/logs", content=DEEP, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json() == {"error": "body must be a JSON object"}
        if other is None:
            pytest.skip("this machine has no non-loopback IPv4 address (hostname -I)")
        for path in ("/api/jobs", "/", "/login", "/metrics"):
            r = c.get(f"http://{other}:{port}{path}")
            assert r.status_code == 403, (path, r.status_code)
            assert f"from {other}" in r.json()["error"]
        r = c.post(f"http://{other}:{port}/api/jobs", json={"name": "remote"})
        assert r.status_code == 403
        assert c.get(local + "/api/jobs").json()["total"] == 0


def test_bare_gunicorn_with_a_token_serves_remote_clients_that_have_it(bare_gunicorn):
    other = _other_address()
    if other is None:
        pytest.skip("this machine has no non-loopback IPv4 address (hostname -I)")
    port = bare_gunicorn({"QUAERO_API_TOKEN": TOKEN})
    with httpx.Client(base_url=f"http://{other}:{port}", timeout=10) as c:
        assert c.get("/api/jobs").status_code == 401
        assert c.get("/api/jobs", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
        assert c.get("/healthz").status_code == 200
