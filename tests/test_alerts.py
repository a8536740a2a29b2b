"""Alerts (the contract's "Alerts and schedules"): rule files, the rules' state machines
with a fake clock, what each destination is sent, and the evaluator for real — real HTTP
receivers, a real SMTP server, SQLite and PostgreSQL, two gunicorn workers, and the
evaluating worker killed with -9 mid-window and mid-request."""
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
import sqlalchemy as sa

from quaero.alerts import engine
from quaero.alerts.config import AlertLibrary, parse_file
from quaero.alerts.notify import delivery_key, render, smtp_settings
from quaero.alerts.store import backoff_ms
from tests.helpers import REDIS_URL, ROOT, eventually, make_app
from tests.receivers import SMTPReceiver, WebhookReceiver


@pytest.fixture
def hook():
    r = WebhookReceiver()
    yield r
    r.close()


def write_rules(folder, text, name="rules.toml"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def hook_dest(url, name="hook"):
    return f'[[destination]]\nname = "{name}"\ntype = "webhook"\nurl = "{url}"\n'


# --- rule files -------------------------------------------------------------------------

def test_a_file_of_rules_and_destinations_loads(tmp_path):
    path = write_rules(tmp_path, hook_dest("http://x.example/h") + """
[[rule]]
name = "timeouts"
kind = "match"
level = "warning"
q = "timeout"
source = "api"
job = "nightly-*"
"attr.http.status" = 500
threshold = 5
window = 60
notify = ["hook"]

[[rule]]
name = "nightly failed"
kind = "job_failed"
definition = "nightly-*"
cancelled = true
notify = "hook"
""")
    rules, dests = parse_file(str(path))
    assert [r.name for r in rules] == ["timeouts", "nightly failed"]
    t = rules[0]
    assert (t.level, t.q, t.source, t.job, t.attrs, t.threshold, t.window) == (
        "warn", "timeout", "api", "nightly-*", (("http.status", "500"),), 5, 60.0)
    line = {"level": "error", "message": "a TIMEOUT here", "job_id": "j", "step_name": None,
            "source": "api", "attributes": {"http.status": 500}}
    assert t.line_filter.matches(line)
    assert not t.line_filter.matches(dict(line, level="info"))
    assert not t.line_filter.matches(dict(line, attributes={"http.status": 404}))
    assert rules[1].notify == ("hook",) and rules[1].cancelled
    assert rules[1].matches_job("x", "nightly-db") and not rules[1].matches_job("x", "weekly")
    assert dests[0].json() == {"name": "hook", "type": "webhook", "file": "rules.toml",
                               "url": "http://x.example/…"}


@pytest.mark.parametrize("text, problem", [
    ("[[rule]]\nname = 'a'\nkind = 'nope'\n", "kind must be one of"),
    ("[[rule]]\nname = 'a'\nkind = 'match'\nwindow = 0\n", "window must be a number from 1"),
    ("[[rule]]\nname = 'a'\nkind = 'match'\nwindow = 5\nthreshold = 1.5\n", "threshold must be a whole"),
    ("[[rule]]\nname = 'a'\nkind = 'absence'\nwindow = 5\nlevel = 'loud'\n", "level must be one of"),
    ("[[rule]]\nname = 'a'\nkind = 'job_failed'\nwindow = 5\n", "unknown key window"),
    ("[[destination]]\nname = 'd'\ntype = 'webhook'\nurl = 'ftp://x'\n", "url must be an http(s)"),
    ("[[destination]]\nname = 'd'\ntype = 'email'\n", "to must be a list of e-mail"),
    ("[[destination]]\nname = 'd'\ntype = 'webhook'\nurl = 'http://x'\ntemplate = '{{ x'\n",
     "template: line 1"),
    ("rule = 1\n", "arrays of tables"),
    ("not toml [", "not valid TOML"),
])
def test_a_file_that_does_not_load_is_listed_with_its_error(tmp_path, text, problem):
    write_rules(tmp_path, text, "bad.toml")
    write_rules(tmp_path, hook_dest("http://x.example/h")
                + "[[rule]]\nname = 'ok'\nkind = 'job_failed'\nnotify = ['hook', 'gone']\n", "good.toml")
    lib = AlertLibrary(str(tmp_path))
    rules, dests, files = lib.json()
    assert [f["file"] for f in files] == ["bad.toml"] and problem in files[0]["error"], files
    assert [r["name"] for r in rules] == ["ok"]
    assert rules[0]["error"] == "unknown destination 'gone'"
    assert lib.usable_rules() == {}


# --- the state machines, with a fake clock ----------------------------------------------

def _rule(tmp_path, text):
    return parse_file(str(write_rules(tmp_path, text)))[0][0]


def _line(i, level="error", job_id=None):
    return {"id": i, "timestamp": "2026-01-01T00:00:00.000Z", "level": level,
            "message": f"boom {i}", "job_id": job_id, "step_name": None, "line_number": i,
            "source": None}


def test_match_fires_once_per_window_with_the_count_and_first_lines_then_resolves(tmp_path):
    rule = _rule(tmp_path, "[[rule]]\nname = 'r'\nkind = 'match'\nthreshold = 3\nwindow = 10\n")
    st = engine.fresh_state(rule, 0)
    assert engine.on_lines(rule, st, [_line(1), _line(2)], 1000) == []
    assert engine.on_tick(rule, st, 5000) == []
    # the first two fall out of the window: two more are not three within 10 s
    assert engine.on_lines(rule, st, [_line(3), _line(4)], 11500) == []
    [fired] = engine.on_lines(rule, st, [_line(i) for i in range(5, 205)], 12000)
    assert (fired.state, fired.count, fired.key) == ("firing", 202, "r/firing/204")
    assert [ln["id"] for ln in fired.lines] == [3, 4, 5, 6, 7]
    # firing: however many more lines, nothing more is sent...
    assert engine.on_lines(rule, st, [_line(i) for i in range(205, 300)], 15000) == []
    assert engine.on_tick(rule, st, 21999) == []
    # ... a window with three or more keeps it firing silently ...
    assert engine.on_tick(rule, st, 22000) == []
    assert engine.on_lines(rule, st, [_line(300), _line(301)], 25000) == []
    # ... and one with fewer resolves it, once
    [resolved] = engine.on_tick(rule, st, 32000)
    assert (resolved.state, resolved.key, resolved.count) == ("resolved", "r/resolved/204", 299)
    assert engine.on_tick(rule, st, 50000) == []
    assert json.loads(json.dumps(st)) == st  # saved as JSON


def test_absence_fires_after_the_window_and_resolves_at_the_next_line(tmp_path):
    rule = _rule(tmp_path, "[[rule]]\nname = 'hb'\nkind = 'absence'\nsource = 'backup'\nwindow = 60\n")
    st = engine.fresh_state(rule, 0)
    assert engine.on_tick(rule, st, 59999) == []
    [fired] = engine.on_tick(rule, st, 60000)
    assert (fired.state, fired.key, fired.count) == ("firing", "hb/firing/0", 0)
    assert engine.on_tick(rule, st, 120000) == []   # once per silence
    [resolved] = engine.on_lines(rule, st, [_line(7)], 130000)
    assert (resolved.state, resolved.key, [ln["id"] for ln in resolved.lines]) == (
        "resolved", "hb/resolved/0", [7])
    assert engine.on_tick(rule, st, 189999) == []
    assert engine.on_tick(rule, st, 190000)[0].key == "hb/firing/130000"


def test_a_changed_rule_starts_over(tmp_path):
    rule = _rule(tmp_path, "[[rule]]\nname = 'r'\nkind = 'match'\nthreshold = 3\nwindow = 10\n")
    st = engine.fresh_state(rule, 0)
    other = _rule(tmp_path, "[[rule]]\nname = 'r'\nkind = 'match'\nthreshold = 4\nwindow = 10\n")
    assert engine.usable(rule, st) is st and engine.usable(other, st) is None


def test_the_matcher_finds_what_asking_every_rule_finds(tmp_path):
    """The indexed matcher (sources, one automaton for every word, attributes) against
    ``LineFilter.matches`` of each rule, on generated lines: words that overlap, repeat,
    change length when lowered (İ), sources, attributes, levels."""
    import random
    from quaero.alerts.matcher import LineMatcher
    from quaero.alerts import matcher as matcher_module
    words = ["time", "timeout", "out", "İx", "ß", "a b", "error", "x"]
    text = ""
    for i in range(60):
        kind = i % 5
        level = ("debug", "info", "warn", "error")[i % 4]
        body = f'name = "r{i}"\nkind = "match"\nwindow = 5\nlevel = "{level}"\n'
        if kind in (0, 3):
            body += f'q = "{words[i % len(words)]}"\n'
        if kind in (1, 3):
            body += f'source = "s{i % 3}"\n'
        if kind == 2:
            body += f'"attr.k" = "{i % 2}"\n'
        text += "[[rule]]\n" + body
    rules = parse_file(str(write_rules(tmp_path, text)))[0]
    rng = random.Random(5)
    pieces = words + ["TIMEOUT", "İX", "SS", " ", "zz", "time out", "\n"]
    for automaton in (True, False):
        m = LineMatcher(rules)
        if not automaton:
            m.automaton = None
        for _ in range(30):
            lines = []
            for i in range(rng.randint(1, 40)):
                line = {"id": i, "level": rng.choice(["debug", "info", "warn", "error"]),
                        "message": "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))),
                        "job_id": None, "step_name": None,
                        "source": rng.choice([None, "s0", "s1", "s2", "s9"])}
                if rng.random() < 0.3:
                    line["attributes"] = {"k": rng.choice([0, 1, "1", True])}
                lines.append(line)
            want = [(ln["id"], sorted(r.name for r in rules if r.line_filter.matches(ln)))
                    for ln in lines]
            want = [w for w in want if w[1]]
            by_line = {}
            for rule, found in m.match(lines).items():
                assert [ln["id"] for ln in found] == sorted({ln["id"] for ln in found})
                for ln in found:
                    by_line.setdefault(ln["id"], []).append(rule.name)
            assert sorted((i, sorted(names)) for i, names in by_line.items()) == want
    assert matcher_module.SEP not in "".join(words)


# --- what destinations are sent ---------------------------------------------------------

PAYLOAD = {"rule": "r", "kind": "match", "state": "firing", "count": 3, "summary": "r: 3 lines",
           "url": "http://q.example/jobs/abc#L7", "job": None, "at": "2026-01-01T00:00:00.000Z",
           "lines": [{"id": 9, "timestamp": "2026-01-01T00:00:00.000Z", "level": "error",
                      "message": "boom", "job_id": "abc", "step_name": None, "line_number": 7,
                      "source": None}]}


def test_each_destination_type_gets_its_own_format(tmp_path):
    _, dests = parse_file(str(write_rules(tmp_path, """
[[destination]]
name = "w"
type = "webhook"
url = "http://h.example/w"
template = '{"text": {{ summary|tojson }}, "n": {{ count }}}'
headers = { "X-Team" = "ops" }
[[destination]]
name = "s"
type = "slack"
url = "https://hooks.slack.example/T/B/x"
[[destination]]
name = "n"
type = "ntfy"
url = "https://ntfy.example/quaero"
token = "tk"
""")))
    w, s, n = dests
    key = delivery_key("r/firing/9", "w")
    assert key == delivery_key("r/firing/9", "w") != delivery_key("r/firing/9", "s")
    method, url, headers, body = render(w, PAYLOAD, key)
    assert (method, url, json.loads(body)) == ("POST", "http://h.example/w", {"text": "r: 3 lines", "n": 3})
    assert headers["Idempotency-Key"] == key and headers["X-Team"] == "ops"
    _, _, headers, body = render(s, PAYLOAD, key)
    assert json.loads(body) == {"text": "*[FIRING] r: 3 lines*\n```http://q.example/jobs/abc#L7\n"
                                        "2026-01-01T00:00:00.000Z error [job abc#L7] boom```"}
    _, _, headers, body = render(n, PAYLOAD, key)
    assert (headers["Title"], headers["Priority"], headers["Click"], headers["Authorization"]) == (
        "Quaero firing: r", "high", "http://q.example/jobs/abc#L7", "Bearer tk")
    assert body.decode().startswith("[FIRING] r: 3 lines\nhttp://q.example/jobs/abc#L7\n")


def test_smtp_urls_and_backoff():
    assert smtp_settings("smtp+starttls://me%40x:p%3Aw@mail.example") == (
        "starttls", "mail.example", 587, "me@x", "p:w")
    assert smtp_settings("smtps://mail.example:2465") == ("tls", "mail.example", 2465, None, None)
    with pytest.raises(ValueError):
        smtp_settings("http://mail.example")
    assert [backoff_ms(a) // 1000 for a in (1, 2, 3, 11, 12)] == [2, 4, 8, 2048, 3600]


# --- the evaluator in one process, SQLite and PostgreSQL --------------------------------

@pytest.fixture
def alert_app(database_url, tmp_path):
    apps = []

    def start(rules_text, **extra):
        write_rules(tmp_path / "alerts", rules_text)
        app = make_app(database_url, tmp_path, QUAERO_ALERTS_DIR=str(tmp_path / "alerts"),
                       QUAERO_ALERTS_TICK=0.1, QUAERO_PUBLIC_URL="https://q.example", **extra)
        apps.append(app)
        if "[[rule]]" in rules_text:
            eventually(lambda: app.extensions["quaero"].alerts.holding, what="the evaluator")
        return app
    yield start
    for app in apps:
        app.extensions["quaero"].close()


def _post(client, lines):
    r = client.post("/api/logs", json={"logs": lines})
    assert r.status_code == 201, r.text
    return r.json


def test_200_errors_make_one_notification_with_the_count_and_first_lines(alert_app, hook):
    app = alert_app(hook_dest(hook.url) + """
[[rule]]
name = "errors"
kind = "match"
level = "error"
q = "exception"
threshold = 5
window = 2
notify = ["hook"]
""")
    c = app.test_client()
    job = c.post("/api/jobs", json={"name": "svc", "steps": ["run"]}).json
    _post(c, [{"level": "info", "message": "an exception, but info"}] * 10)
    posted = _post(c, [{"level": "error", "message": f"Exception {i}", "job_id": job["id"],
                        "step": "run"} for i in range(200)])
    eventually(lambda: hook.bodies("firing"), what="the notification")
    eventually(lambda: hook.bodies("resolved"), timeout=10, what="the resolve")
    [fired] = hook.bodies("firing")
    assert fired["count"] == 200 and fired["rule"] == "errors" and fired["kind"] == "match"
    assert [ln["id"] for ln in fired["lines"]] == list(range(posted["first_id"], posted["first_id"] + 5))
    assert fired["url"] == f"https://q.example/jobs/{job['id']}#L1"
    [resolved] = hook.bodies("resolved")
    assert resolved["count"] == 200
    keys = [h["idempotency-key"] for _, h, _, _ in hook.requests]
    assert len(hook.requests) == 2 and len(set(keys)) == 2
    def delivered():   # (the outcome is written once the receiver has answered)
        [rule] = c.get("/api/alerts").json["rules"]
        assert rule["state"] == "ok" and rule["last_fired_at"]
        return rule["last_delivery"]["ok"] is True and rule["last_delivery"]["status"] == "delivered"
    eventually(delivered)
    status = c.get("/api/alerts").json
    assert status["evaluator"]["pid"] == os.getpid()


def test_no_rule_no_evaluator_and_a_rule_added_later_sees_lines_from_then_on(
        alert_app, hook, tmp_path):
    app = alert_app(hook_dest(hook.url))     # no rule: no evaluator, no lease, no reads
    c = app.test_client()
    _post(c, [{"level": "error", "message": "old boom"}] * 3)
    service = app.extensions["quaero"].alerts
    time.sleep(0.5)
    assert not service.holding and c.get("/api/alerts").json["evaluator"] is None
    write_rules(tmp_path / "alerts", hook_dest(hook.url) + """
[[rule]]
name = "booms"
kind = "match"
q = "boom"
window = 30
notify = ["hook"]
""")
    eventually(lambda: service.holding and "booms" in service.rules, what="the evaluator")
    _post(c, [{"level": "error", "message": "new boom"}])
    [fired] = eventually(lambda: hook.bodies("firing"))
    assert fired["count"] == 1 and fired["lines"][0]["message"] == "new boom"
    (tmp_path / "alerts" / "rules.toml").write_text(hook_dest(hook.url))
    eventually(lambda: not service.holding, what="the lease let go with the last rule")
    assert c.get("/api/alerts").json["evaluator"] is None


def test_absence_fires_within_the_window_plus_two_seconds(alert_app, hook):
    app = alert_app(hook_dest(hook.url) + """
[[rule]]
name = "heartbeat"
kind = "absence"
source = "backup"
window = 2
notify = ["hook"]
""")
    c = app.test_client()
    _post(c, [{"level": "info", "message": "alive", "source": "backup"}])
    last = time.time()
    _post(c, [{"level": "info", "message": "another program"}])
    eventually(lambda: hook.bodies("firing"), timeout=10)
    delay = hook.requests[-1][0] - last
    assert 2.0 <= delay <= 4.0, delay
    _post(c, [{"level": "info", "message": "back", "source": "backup"}])
    [resolved] = eventually(lambda: hook.bodies("resolved"))
    assert resolved["lines"][0]["message"] == "back"


def test_job_failed_and_long_running(alert_app, hook):
    app = alert_app(hook_dest(hook.url) + """
[[rule]]
name = "nightly failed"
kind = "job_failed"
definition = "nightly-*"
notify = ["hook"]

[[rule]]
name = "slow"
kind = "long_running"
definition = "slow-*"
longer_than = 1
notify = ["hook"]
""")
    c = app.test_client()
    jobs = {n: c.post("/api/jobs", json={"name": n, "steps": ["a"]}).json["id"]
            for n in ("nightly-db", "nightly-web", "weekly", "slow-one")}
    _post(c, [{"level": "error", "message": "disk full", "job_id": jobs["nightly-db"], "step": "a"}])
    for n in ("nightly-db", "weekly"):
        assert c.patch(f"/api/jobs/{jobs[n]}", json={"status": "failed"}).status_code == 200
    assert c.patch(f"/api/jobs/{jobs['nightly-web']}", json={"status": "cancelled"}).status_code == 200
    assert c.patch(f"/api/jobs/{jobs['slow-one']}", json={"status": "running"}).status_code == 200
    eventually(lambda: len(hook.requests) >= 2, timeout=10)
    time.sleep(2.5)   # nothing more comes: not the cancelled job, not the weekly one, once each
    by_rule = {b["rule"]: b for b in hook.bodies()}
    assert len(hook.requests) == 2, hook.bodies()
    failed = by_rule["nightly failed"]
    assert failed["job"]["id"] == jobs["nightly-db"] and failed["job"]["status"] == "failed"
    assert failed["lines"][0]["message"] == "disk full"
    assert failed["url"] == f"https://q.example/jobs/{jobs['nightly-db']}#L1"
    assert by_rule["slow"]["job"]["id"] == jobs["slow-one"]


def test_a_failing_destination_is_retried_with_backoff_and_recorded(alert_app, hook):
    hook.fail_next = 1
    app = alert_app(hook_dest(hook.url) + """
[[rule]]
name = "any error"
kind = "match"
level = "error"
window = 60
notify = ["hook"]
""")
    c = app.test_client()
    _post(c, [{"level": "error", "message": "x"}])
    eventually(lambda: len(hook.requests) == 1)

    def retrying():
        last = c.get("/api/alerts").json["rules"][0]["last_delivery"]
        assert last["status"] == "retrying" and last["ok"] is False and "HTTP 500" in last["error"]
        return True
    eventually(retrying)
    eventually(lambda: len(hook.requests) == 2, timeout=10)
    (t1, h1, b1, _), (t2, h2, b2, _) = hook.requests
    assert 1.5 <= t2 - t1 <= 5 and h1["idempotency-key"] == h2["idempotency-key"] and b1 == b2
    eventually(lambda: c.get("/api/alerts").json["rules"][0]["last_delivery"]["status"] == "delivered")
    assert c.get("/api/alerts").json["rules"][0]["last_delivery"]["attempts"] == 2


def test_email_over_a_real_smtp_server_and_the_test_button(alert_app, hook):
    smtp = SMTPReceiver()
    try:
        app = alert_app(hook_dest(hook.url) + """
[[destination]]
name = "mail"
type = "email"
to = ["ops@example.com", "dev@example.com"]

[[rule]]
name = "boom"
kind = "match"
q = "boom"
window = 30
notify = ["mail", "hook"]
""", QUAERO_SMTP_URL=smtp.url, QUAERO_SMTP_FROM="quaero@example.com")
        c = app.test_client()
        r = c.post("/api/alerts/boom/test")
        assert r.status_code == 202 and r.json["destinations"] == ["mail", "hook"]
        assert c.post("/api/alerts/nope/test").status_code == 404
        eventually(lambda: smtp.messages and hook.bodies("test"))
        sender, rcpts, msg = smtp.messages[0]
        assert sender == "quaero@example.com" and rcpts == ["ops@example.com", "dev@example.com"]
        assert msg["Subject"] == "[Quaero TEST] boom" and msg["Message-ID"].startswith("<quaero-")
        assert "a test notification" in msg.get_payload()
        _post(c, [{"level": "info", "message": "boom!"}])
        eventually(lambda: any("[FIRING] boom: 1 line" in m[2].get_payload()
                               for m in smtp.messages), what="the firing e-mail")
        # a send whose outcome was not known in time (a loaded machine) is sent again with
        # its Message-ID: one notification, whatever the number of copies
        ids = {m[2]["Subject"]: set() for m in smtp.messages}
        for _, _, m in smtp.messages:
            ids[m["Subject"]].add(m["Message-ID"])
        assert all(len(v) == 1 for v in ids.values()) and len(ids) == 2, ids
        page = c.get("/alerts")
        assert page.status_code == 200
        text = page.get_data(as_text=True)
        assert "Send a test notification" in text and "ops@example.com" in text and ">boom<" in text
    finally:
        smtp.close()


# --- two workers, SQLite and PostgreSQL, and kill -9 ------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def two_workers(request, server_factory, tmp_path):
    """A gunicorn with two workers: on SQLite (no Redis: lines of the other worker come
    from the database) and on PostgreSQL with Redis."""
    env = {"QUAERO_ALERTS_DIR": str(tmp_path / "alerts"), "QUAERO_PUBLIC_URL": "https://q.example"}
    if request.param == "postgresql":
        if not REDIS_URL:
            pytest.skip("QUAERO_TEST_REDIS_URL is not set")
        from tests.helpers import reset_pg
        url = request.getfixturevalue("pg_database")
        reset_pg(url)
        env.update(QUAERO_DATABASE_URL=url, QUAERO_REDIS_URL=REDIS_URL)

    def start(rules_text):
        write_rules(tmp_path / "alerts", rules_text)
        return server_factory(env=env, workers=2)
    return start


def _evaluator(base):
    def who():
        ev = httpx.get(f"{base}/api/alerts", timeout=10).json()["evaluator"]
        return ev and ev["pid"]
    return eventually(who, what="an evaluator")


def _post_http(base, lines):
    r = httpx.post(f"{base}/api/logs", json={"logs": lines}, timeout=30)
    assert r.status_code == 201, r.text


MATCH_RULE = """
[[rule]]
name = "timeouts"
kind = "match"
q = "timeout"
threshold = 4
window = 60
notify = ["hook"]
"""


def test_two_workers_one_evaluator_one_notification(two_workers, hook):
    server = two_workers(hook_dest(hook.url) + MATCH_RULE)
    pid = _evaluator(server.url)
    # many posts, over both workers' connections
    for i in range(8):
        _post_http(server.url, [{"level": "warn", "message": f"timeout {i}"}])
    eventually(lambda: hook.bodies("firing"), timeout=15)
    time.sleep(2)
    assert len(hook.requests) == 1 and hook.bodies()[0]["count"] >= 4
    assert _evaluator(server.url) == pid
    # the CLI, against the same server
    out = subprocess.run([sys.executable, "-m", "quaero", "--url", server.url, "alerts", "list"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "timeouts [match] firing" in out.stdout, out
    out = subprocess.run([sys.executable, "-m", "quaero", "--url", server.url, "alerts", "test",
                          "timeouts"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "queued for hook" in out.stdout, out
    eventually(lambda: hook.bodies("test"), timeout=15)


def _kill(pid):
    os.kill(pid, signal.SIGKILL)


def test_kill_9_of_the_evaluator_mid_window_loses_and_doubles_nothing(two_workers, hook):
    """Two matching lines, then the evaluating worker dies (-9) once its checkpoint holds
    them, then two more: the other worker takes over from the checkpoint and the one
    notification counts all four."""
    server = two_workers(hook_dest(hook.url) + MATCH_RULE)
    pid = _evaluator(server.url)
    _post_http(server.url, [{"level": "info", "message": f"timeout {i}"} for i in range(2)])
    engine = sa.create_engine(server.env["QUAERO_DATABASE_URL"])

    def saved():
        with engine.connect() as conn:
            st = conn.execute(sa.text("SELECT state FROM alert_state WHERE key = 'timeouts'")).scalar()
        return st and len(json.loads(st)["times"]) == 2
    eventually(saved, timeout=15, what="the checkpoint")
    _kill(pid)
    _post_http(server.url, [{"level": "info", "message": f"timeout {i}"} for i in range(2, 4)])
    eventually(lambda: hook.bodies("firing"), timeout=20)
    time.sleep(3)
    assert len(hook.requests) == 1, hook.bodies()
    [fired] = hook.bodies()
    assert fired["count"] == 4 and [ln["message"] for ln in fired["lines"]] == [
        f"timeout {i}" for i in range(4)]
    assert _evaluator(server.url) != pid
    engine.dispose()


def test_kill_9_during_a_request_resends_it_with_the_same_key(two_workers, hook):
    """The receiver holds the first request; the evaluator is killed while it waits (the
    outcome is unknown to Quaero): the next evaluator sends it again, with the same
    Idempotency-Key, and then it is delivered. One notification, at most two requests."""
    hook.hold = True
    server = two_workers(hook_dest(hook.url) + MATCH_RULE.replace("threshold = 4", "threshold = 1"))
    pid = _evaluator(server.url)
    _post_http(server.url, [{"level": "info", "message": "timeout"}])
    eventually(lambda: hook.requests, timeout=15)
    _kill(pid)
    hook.release()
    eventually(lambda: len(hook.requests) == 2, timeout=20)

    def delivered():
        last = httpx.get(f"{server.url}/api/alerts", timeout=10).json()["rules"][0]["last_delivery"]
        return last["status"] == "delivered" and last["attempts"] == 2
    eventually(delivered, timeout=15)
    time.sleep(2)
    keys = {h["idempotency-key"] for _, h, _, _ in hook.requests}
    assert len(hook.requests) == 2 and len(keys) == 1
    assert len({json.dumps(b, sort_keys=True) for b in hook.bodies()}) == 1
