"""POST /api/logs and GET /api/logs through the Flask test client."""
import sqlalchemy as sa
import pytest

from quaero.models import LogEntry, db


@pytest.fixture
def c(any_app):
    return any_app.test_client()


def new_job(c, steps=("build", "test")):
    r = c.post("/api/jobs", json={"name": "demo", "steps": list(steps)})
    assert r.status_code == 201
    return r.json["id"]


def post(c, *lines):
    return c.post("/api/logs", json={"logs": list(lines)})


def stored(app):
    with app.app_context():
        return db.session.execute(sa.select(sa.func.count()).select_from(LogEntry).where(
            LogEntry.job_seq.is_not(None))).scalar()


def test_ingest_acknowledges_committed_ids(c, any_app):
    job = new_job(c)
    r = post(c, {"level": "info", "message": "one", "job_id": job, "step": "build"},
             {"level": "warning", "message": "two", "job_id": job, "step": "test"},
             {"level": "error", "message": "three", "job_id": job})
    assert r.status_code == 201
    assert r.json["accepted"] == 3 and r.json["last_id"] == r.json["first_id"] + 2
    # acknowledged means committed: a fresh connection sees the lines
    engine = any_app.extensions["quaero"].engine
    with engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT l.id FROM log_entries l JOIN jobs j ON j.seq = l.job_seq "
                                   "WHERE j.id = :j ORDER BY l.id"),
                           {"j": job}).scalars().all()
    assert ids == list(range(r.json["first_id"], r.json["last_id"] + 1))
    lines = c.get(f"/api/logs?scope=job&job_id={job}&level=debug").json["logs"]
    assert [(ln["message"], ln["level"], ln["step_name"], ln["line_number"]) for ln in lines] == [
        ("one", "info", "build", 1), ("two", "warn", "test", 2), ("three", "error", None, 3)]
    assert lines[0]["timestamp"].endswith("Z") and len(lines[0]["timestamp"]) == 24


def test_line_numbers_are_contiguous_per_job_and_service(c):
    a, b = new_job(c), new_job(c)
    for i in range(3):
        assert post(c, {"level": "info", "message": f"a{i}", "job_id": a},
                    {"level": "info", "message": f"b{i}", "job_id": b},
                    {"level": "info", "message": f"s{i}"}).status_code == 201
    for job in (a, b):
        lines = c.get(f"/api/logs?scope=job&job_id={job}").json["logs"]
        assert [ln["line_number"] for ln in lines] == [1, 2, 3]
    service = [ln for ln in c.get("/api/logs?scope=service&limit=500").json["logs"]
               if ln["message"].startswith("s")]
    numbers = [ln["line_number"] for ln in service]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3


def test_timestamp_is_kept_and_normalised_to_utc(c):
    job = new_job(c)
    post(c, {"level": "info", "message": "x", "job_id": job,
             "timestamp": "2026-01-02T03:04:05.678+02:00"})
    assert c.get(f"/api/logs?scope=job&job_id={job}").json["logs"][0]["timestamp"] == \
        "2026-01-02T01:04:05.678Z"


@pytest.mark.parametrize("body, status", [
    (b"not json", 400),
    (b"[]", 400),
    (b'{"logs": "x"}', 400),
    (b'{"logs": []}', 400),
    (b'{"logs": [1]}', 400),
    (b'{"logs": [{"message": "no level"}]}', 400),
    (b'{"logs": [{"level": "info"}]}', 400),
    (b'{"logs": [{"level": "loud", "message": "x"}]}', 400),
    (b'{"logs": [{"level": 3, "message": "x"}]}', 400),
    (b'{"logs": [{"level": "info", "message": 5}]}', 400),
    (b'{"logs": [{"level": "info", "message": "x", "job_id": 5}]}', 400),
    (b'{"logs": [{"level": "info", "message": "x", "step": "build"}]}', 400),
    (b'{"logs": [{"level": "info", "message": "x", "timestamp": "yesterday"}]}', 400),
    (b'{"logs": [{"level": "info", "message": "x", "job_id": "nope"}]}', 404),
])
def test_bad_ingest_is_refused_and_stores_nothing(c, any_app, body, status):
    job = new_job(c)
    good = b'{"level": "info", "message": "good", "job_id": "%s"}' % job.encode()
    # the bad item comes after a good one: all or nothing
    body = body.replace(b'"logs": [', b'"logs": [' + good + b", ", 1) if b'"logs": [{' in body else body
    r = c.post("/api/logs", data=body, content_type="application/json")
    assert r.status_code == status, r.json
    assert "error" in r.json
    assert stored(any_app) == 0


def test_unknown_step_is_404_and_atomic(c, any_app):
    job = new_job(c)
    r = post(c, {"level": "info", "message": "ok", "job_id": job, "step": "build"},
             {"level": "info", "message": "bad", "job_id": job, "step": "deploy"})
    assert r.status_code == 404 and "deploy" in r.json["error"]
    assert stored(any_app) == 0


def test_size_limits(c, any_app):
    job = new_job(c)
    limit = 65536
    ok = post(c, {"level": "info", "message": "é" * (limit // 2), "job_id": job})
    assert ok.status_code == 201
    r = post(c, {"level": "info", "message": "x", "job_id": job},
             {"level": "info", "message": "é" * (limit // 2 + 1), "job_id": job})
    assert r.status_code == 413
    r = c.post("/api/logs", json={"logs": [{"level": "info", "message": "x"}] * 10001})
    assert r.status_code == 413
    assert stored(any_app) == 1


def test_body_over_the_limit_is_refused_before_parsing(tmp_path, sqlite_url):
    from tests.helpers import make_app
    app = make_app(sqlite_url, tmp_path, MAX_CONTENT_LENGTH=1000)
    try:
        r = app.test_client().post("/api/logs", data=b"{" + b" " * 2000 + b"}",
                                   content_type="application/json")
        assert r.status_code == 413 and r.json["error"]
    finally:
        app.extensions["quaero"].close()


def test_nul_and_surrogates_are_stored_safely(c):
    job = new_job(c)
    r = c.post("/api/logs", data=b'{"logs": [{"level": "info", "message": "a\\u0000b\\ud800c", '
                                 b'"job_id": "%s"}]}' % job.encode(),
               content_type="application/json")
    assert r.status_code == 201
    msg = c.get(f"/api/logs?scope=job&job_id={job}").json["logs"][0]["message"]
    assert msg.startswith("a\ufffdb") and "\x00" not in msg


@pytest.mark.parametrize("message", [
    "tab\there", "new\nline", "carriage\rreturn", "back\\slash", "\\N", "\\.", "\\t literal",
    "ends with a backslash \\", "\u00e9t\u00e9 \u2603 \U0001f600", "\x0b\x0c\x08 other controls"])
def test_messages_come_back_exactly(c, message):
    # PostgreSQL writes lines with COPY's text format: its special characters must be
    # escaped, and a message that looks like COPY's NULL (\N) is text, not NULL
    job = new_job(c)
    assert post(c, {"level": "info", "message": message, "job_id": job, "step": "build",
                    "source": "s\tr\\c"},
                {"level": "warn", "message": message}).status_code == 201
    lines = c.get(f"/api/logs?scope=job&job_id={job}").json["logs"]
    assert [(ln["message"], ln["source"], ln["step_name"]) for ln in lines] == [
        (message, "s\tr\\c", "build")]
    svc = c.get("/api/logs?scope=service&level=warn").json["logs"]
    assert svc[-1]["message"] == message and svc[-1]["job_id"] is None


def _fill(c, job, n, **extra):
    lines = [{"level": ("debug", "info", "warn", "error")[i % 4], "message": f"m{i}",
              "job_id": job, "step": ("build", "test")[i % 2], **extra} for i in range(n)]
    r = c.post("/api/logs", json={"logs": lines})
    assert r.status_code == 201
    return r.json


def test_polling_tail_after_before_and_meta(c):
    job = new_job(c)
    ack = _fill(c, job, 40)
    first = ack["first_id"]
    r = c.get(f"/api/logs?scope=job&job_id={job}&level=debug&limit=10").json
    assert [ln["message"] for ln in r["logs"]] == [f"m{i}" for i in range(30, 40)]
    assert r["meta"] == {"total_count": 40, "displayed_count": 10, "has_more": True}
    assert r["last_id"] == ack["last_id"]
    r = c.get(f"/api/logs?scope=job&job_id={job}&level=debug&after={first + 4}&limit=5").json
    assert [ln["message"] for ln in r["logs"]] == [f"m{i}" for i in range(5, 10)]
    assert r["meta"]["has_more"] is True
    r = c.get(f"/api/logs?scope=job&job_id={job}&level=debug&after={ack['last_id']}").json
    assert r["logs"] == [] and r["last_id"] == ack["last_id"] and r["meta"]["has_more"] is False
    r = c.get(f"/api/logs?scope=job&job_id={job}&level=debug&before={first + 10}&limit=3").json
    assert [ln["message"] for ln in r["logs"]] == ["m7", "m8", "m9"]
    assert r["meta"]["has_more"] is True
    r = c.get(f"/api/logs?scope=job&job_id={job}&level=debug&before={first + 2}").json
    assert [ln["message"] for ln in r["logs"]] == ["m0", "m1"] and r["meta"]["has_more"] is False


def test_after_beyond_the_newest_id_resumes_from_the_newest(c):
    """Every polling tab open across a restore from a backup holds an id this database
    never gave: its ``last_id`` is the newest id, so that it resumes and sees new lines."""
    job = new_job(c)
    ack = _fill(c, job, 3)
    for query in (f"scope=job&job_id={job}&level=debug", "scope=service"):
        r = c.get(f"/api/logs?{query}&after={ack['last_id'] + 1000}").json
        assert r["logs"] == [] and r["meta"]["has_more"] is False
        assert r["last_id"] == ack["last_id"]
    r = c.get(f"/api/logs?scope=job&job_id={job}&level=debug&after={ack['last_id']}").json
    assert r["last_id"] == ack["last_id"]  # at the newest: as before
    new = _fill(c, job, 1)
    r = c.get(f"/api/logs?scope=job&job_id={job}&level=debug&after={ack['last_id']}").json
    assert [ln["id"] for ln in r["logs"]] == [new["last_id"]]


def test_filters_level_and_step(c):
    job = new_job(c)
    _fill(c, job, 40)
    r = c.get(f"/api/logs?scope=job&job_id={job}&level=warn&limit=1000").json
    assert {ln["level"] for ln in r["logs"]} == {"warn", "error"}
    assert r["meta"]["total_count"] == 20
    r = c.get(f"/api/logs?scope=job&job_id={job}&level=debug&step=build").json
    assert {ln["step_name"] for ln in r["logs"]} == {"build"} and r["meta"]["total_count"] == 20
    r = c.get(f"/api/logs?scope=job&job_id={job}&step=test&level=error").json
    assert r["meta"]["total_count"] == 10 and {ln["level"] for ln in r["logs"]} == {"error"}
    r = c.get(f"/api/logs?scope=job&job_id={job}").json  # default level info
    assert r["meta"]["total_count"] == 30


def test_steps_that_share_an_index_key_are_told_apart(c):
    """PostgreSQL reads a step's lines by a key of its job and 20 bits of its name's hash
    (models.step_key): "step-518" and "step-634" have the same key. Each step's lines,
    newest first, in pages, after an id, and of two jobs at once, are that step's alone."""
    steps = ("step-518", "step-634")
    a, b = new_job(c, steps), new_job(c, steps)
    for job in (a, b):
        assert post(c, *({"level": "info", "message": f"{job} {i}", "job_id": job,
                          "step": steps[i % 2]} for i in range(30))).status_code == 201
    for step in steps:
        want = [ln for ln in c.get(f"/api/logs?scope=job&job_id={a}&limit=100").json["logs"]
                if ln["step_name"] == step]
        assert len(want) == 15
        r = c.get(f"/api/logs?scope=job&job_id={a}&step={step}&limit=10").json
        assert r["logs"] == want[-10:] and r["meta"]["total_count"] == 15
        older = c.get(f"/api/logs?scope=job&job_id={a}&step={step}"
                      f"&before={want[-10]['id']}").json["logs"]
        assert older == want[:5]
        after = c.get(f"/api/logs?scope=job&job_id={a}&step={step}"
                      f"&after={want[4]['id']}").json["logs"]
        assert after == want[5:]
        both = c.get(f"/api/logs?scope=job&job_id={a}&job_id={b}&step={step}&limit=100").json
        assert len(both["logs"]) == 30 and {ln["step_name"] for ln in both["logs"]} == {step}
        assert {ln["job_id"] for ln in both["logs"]} == {a, b}


def test_a_nul_in_the_url_or_in_a_job_id_is_refused_and_changes_nothing(c):
    """PostgreSQL refuses a NUL in a query's text: a step or job id with one was a 500."""
    job = new_job(c)
    for url in (f"/api/logs?scope=job&job_id={job}&step=a%00", "/api/logs?scope=job&job_id=a%00",
                f"/api/logs/histogram?scope=job&job_id={job}&step=%00",
                f"/api/logs/facets?scope=job&job_id={job}&step=%00&key=level",
                "/api/search?q=x&job_id=%00", "/api/jobs/a%00b",
                f"/api/logs/stream?scope=job&job_id={job}&step=%00"):
        r = c.get(url)
        assert r.status_code == 400 and "NUL" in r.json["error"], (url, r.status_code)
    r = post(c, {"level": "info", "message": "m", "job_id": "a\u0000"})
    assert r.status_code == 404 and r.json["error"] == "job not found"
    assert c.get("/api/logs?scope=service&level=debug").json["logs"] == []


def test_limit_clamps(c):
    job = new_job(c)
    _fill(c, job, 6000)
    assert len(c.get(f"/api/logs?scope=job&job_id={job}&level=debug&limit=99999").json["logs"]) == 5000
    c.post("/api/logs", json={"logs": [{"level": "info", "message": str(i)} for i in range(600)]})
    assert len(c.get("/api/logs?scope=service&limit=100000").json["logs"]) == 500
    assert len(c.get("/api/logs?scope=service").json["logs"]) == 100
    assert c.get("/api/logs?scope=service&limit=0").json["logs"] == []


def test_several_jobs_in_one_query(c):
    a, b = new_job(c), new_job(c)
    _fill(c, a, 4)
    _fill(c, b, 4)
    r = c.get(f"/api/logs?scope=job&job_id={a}&job_id={b}&level=debug").json
    assert {ln["job_id"] for ln in r["logs"]} == {a, b} and r["meta"]["total_count"] == 8
    ids = [ln["id"] for ln in r["logs"]]
    assert ids == sorted(ids)


@pytest.mark.parametrize("query, status", [
    ("", 400), ("scope=", 400), ("scope=all", 400), ("scope=job", 400),
    ("scope=service&step=build", 400), ("scope=service&level=loud", 400),
    ("scope=service&limit=-1", 400), ("scope=service&limit=ten", 400),
    ("scope=service&limit=1.5", 400), ("scope=service&after=-3", 400),
    ("scope=service&before=x", 400), ("scope=service&limit=%C2%B2", 400),
    ("scope=job&job_id=nope", 404), ("scope=service&after=99999999999999999999999999", 200),
])
def test_read_errors(c, query, status):
    r = c.get(f"/api/logs?{query}")
    assert r.status_code == status
    if status != 200:
        assert set(r.json) == {"error"}


def test_text_download(c):
    job = new_job(c)
    c.post("/api/logs", json={"logs": [
        {"level": "info", "message": "hello", "job_id": job, "step": "build"},
        {"level": "error", "message": "multi\nline", "job_id": job}]})
    r = c.get(f"/api/jobs/{job}/logs.txt")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.data.decode()
    assert "INFO  [build] hello\n" in text and "ERROR multi\n    line\n" in text
    assert c.get("/api/jobs/nope/logs.txt").status_code == 404


def test_unknown_api_routes_are_json(c):
    r = c.get("/api/nothing-here")
    assert r.status_code == 404 and r.json == {"error": "not found"}
    r = c.put("/api/logs")
    assert r.status_code == 405 and "error" in r.json
