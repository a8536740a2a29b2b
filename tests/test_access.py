"""With QUAERO_API_TOKEN set: every /api call and the stream need it; it never leaks."""
import httpx

from tests.sse_client import SSEClient

TOKEN = "tok-" + "s3cr3t" * 6


def test_token_guards_every_api_call_and_never_appears_in_logs(server_factory):
    srv = server_factory(env={"QUAERO_API_TOKEN": TOKEN, "QUAERO_ACCESS_LOG": "-",
                              "QUAERO_CAPTURE_ROOT_LOGGER": "1"})
    good = {"Authorization": f"Bearer {TOKEN}"}
    bad = {"Authorization": f"Bearer {TOKEN[:-1]}x"}
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        job = c.post("/api/jobs", json={"name": "a", "steps": []}, headers=good).json()["id"]
        calls = [("GET", "/api/logs?scope=service"), ("POST", "/api/logs"), ("GET", "/api/jobs"),
                 ("POST", "/api/jobs"), ("GET", f"/api/jobs/{job}"), ("GET", "/api/jobs/missing"),
                 ("PATCH", f"/api/jobs/{job}"), ("DELETE", f"/api/jobs/{job}"),
                 ("POST", f"/api/jobs/{job}/cancel"), ("GET", f"/api/jobs/{job}/logs.txt"),
                 ("GET", "/api/job-definitions"), ("GET", "/api/openapi.json")]
        for method, path in calls:
            for headers in ({}, bad, {"Authorization": TOKEN}):
                r = c.request(method, path, headers=headers, json={})
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.json() == {"error": "authentication required"}  # same for a missing job
        s = SSEClient(f"{srv.url}/api/logs/stream?scope=job&job_id={job}", headers=bad)
        assert s.status == 401
        s.close()
        s = SSEClient(f"{srv.url}/api/logs/stream?scope=job&job_id={job}", headers=good)
        assert s.status == 200
        s.close()
        r = c.post("/api/logs", json={"logs": [{"level": "info", "message": "hello"}]}, headers=good)
        assert r.status_code == 201
        service = c.get("/api/logs?scope=service&level=debug&limit=500", headers=good).json()["logs"]
    assert all(TOKEN not in ln["message"] for ln in service)
    assert TOKEN not in srv.logs()
    assert TOKEN[:-1] not in srv.logs()


# --- scopes: every registered route, each scope allowed or refused (issue 24) -------------

import pytest  # noqa: E402

from quaero import access  # noqa: E402
from tests.helpers import make_app  # noqa: E402

ADMIN_TOKEN = "admin-" + "t0k3n" * 6
I, R, O = "ingest", "read", "operate"
OPEN = "public"  # a route with its own rule (health, metrics, login, assets)
# What each route (its URL rule's shape) and method allows, written here apart from
# access.ROUTE_NEEDS: a route added to the app without a line here fails the test below.
EXPECTED = {
    ("POST", "/api/logs"): {I}, ("POST", "/v1/logs"): {I}, ("POST", "/loki/api/v1/push"): {I},
    ("POST", "/api/jobs"): {I, O},        # a producer's job (ingest) or a run (operate)
    ("PATCH", "/api/jobs/<>"): {I, O}, ("PATCH", "/api/jobs/<>/steps/<>"): {I, O},
    ("GET", "/api/logs"): {R}, ("GET", "/api/logs/facets"): {R},
    ("GET", "/api/logs/histogram"): {R}, ("GET", "/api/logs/stream"): {R},
    ("GET", "/api/search"): {R}, ("GET", "/api/openapi.json"): {R},
    ("GET", "/api/jobs"): {R}, ("GET", "/api/jobs/<>"): {R}, ("GET", "/api/jobs/<>/logs.txt"): {R},
    ("GET", "/api/job-definitions"): {R}, ("GET", "/api/alerts"): {R},
    ("POST", "/api/jobs/<>/cancel"): {O}, ("POST", "/api/jobs/<>/rerun"): {O},
    ("DELETE", "/api/jobs/<>"): {O}, ("POST", "/api/alerts/<>/test"): {O},
    ("GET", "/api/keys"): set(), ("POST", "/api/keys"): set(), ("DELETE", "/api/keys/<>"): set(),
    ("GET", "/api/sessions"): set(), ("DELETE", "/api/sessions"): set(),
    ("GET", "/"): {R}, ("GET", "/queue"): {R}, ("GET", "/search"): {R}, ("GET", "/jobs/<>"): {R},
    ("GET", "/alerts"): {R}, ("GET", "/settings"): set(),
    ("GET", "/login"): OPEN, ("POST", "/login"): OPEN, ("POST", "/logout"): OPEN,
    ("GET", "/auth/oidc/login"): OPEN, ("GET", "/auth/oidc/callback"): OPEN,
    ("GET", "/healthz"): OPEN, ("GET", "/metrics"): OPEN, ("GET", "/static/<>"): OPEN,
}


def _routes(app):
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, rule


@pytest.fixture(scope="module")
def scoped(tmp_path_factory):
    """An app with the admin token and one key per scope."""
    tmp = tmp_path_factory.mktemp("scoped")
    app = make_app(f"sqlite:///{tmp}/q.db", tmp, QUAERO_API_TOKEN=ADMIN_TOKEN)
    c = app.test_client()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    keys = {}
    for scope in access.SCOPES:
        r = c.post("/api/keys", json={"name": f"only-{scope}", "scopes": [scope]}, headers=admin)
        assert r.status_code == 201, r.json
        keys[scope] = {"Authorization": f"Bearer {r.json['key']}"}
    yield app, keys
    app.extensions["quaero"].close()


def test_every_route_has_a_scope_rule(scoped):
    app, _ = scoped
    for method, rule in _routes(app):
        shape = access.rule_key(rule.rule)
        assert (method, shape) in EXPECTED, f"{method} {rule.rule}: no line in EXPECTED"
        assert access.route_need(method, rule.rule) is not None, \
            f"{method} {rule.rule}: access.ROUTE_NEEDS has no rule for it"


def _url(rule):
    values = {"job_id": "missing", "step_name": "a", "key_id": "0" * 16,
              "filename": "css/log-stream.css"}
    path = rule.rule
    for arg in rule.arguments:
        path = path.replace(f"<{arg}>", values.get(arg, "x")).replace(
            f"<path:{arg}>", values.get(arg, "x"))
    return path


def test_each_scope_is_allowed_or_refused_on_every_route(scoped):
    """Each key (one scope) on each route: 403 naming the scope where it is not allowed,
    answered on the headers (the body is not even valid); anything but 401/403 where it is.
    admin is allowed everywhere."""
    app, keys = scoped
    c = app.test_client()
    for method, rule in _routes(app):
        allowed = EXPECTED[(method, access.rule_key(rule.rule))]
        url = _url(rule)
        for scope, headers in keys.items():
            r = c.open(url, method=method, headers=headers, data=b"{not json",
                       content_type="application/json")
            if allowed == OPEN:
                assert r.status_code != 403, (method, url, scope)
            elif scope == "admin" or scope in allowed:
                assert r.status_code not in (401, 403), (method, url, scope, r.status_code)
            else:
                assert r.status_code == 403, (method, url, scope, r.status_code)
                if url.startswith(("/api/", "/v1/", "/loki/")):
                    error = r.get_json()["error"]
                    assert "scope" in error and scope in error, (method, url, error)
                    assert any(repr(s) in error for s in (allowed or {"admin"})), error


def test_a_route_the_table_does_not_name_needs_admin():
    assert access.route_need("GET", "/api/something-new") is None  # the hook then asks admin
    assert access.route_need("HEAD", "/api/jobs") == "read"
    assert access.route_need("OPTIONS", "/v1/logs") == access.SIGNED_IN
    assert access.route_need("GET", "/api/jobs/<id>/logs.txt") == "read"   # any param name
