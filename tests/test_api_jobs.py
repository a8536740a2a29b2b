"""Jobs for outside producers: create, list, get, PATCH transitions, cancel, delete."""
import pytest


@pytest.fixture
def c(any_app):
    return any_app.test_client()


def create(c, name="build", steps=("fetch", "compile")):
    r = c.post("/api/jobs", json={"name": name, "steps": list(steps)})
    assert r.status_code == 201, r.json
    return r.json


def test_create_and_get(c):
    job = create(c)
    assert job["status"] == "pending" and job["started_at"] is None
    assert [(s["name"], s["status"]) for s in job["steps"]] == [("fetch", "pending"), ("compile", "pending")]
    assert job["log_counts"] == {"debug": 0, "info": 0, "warn": 0, "error": 0}
    got = c.get(f"/api/jobs/{job['id']}").json
    assert got["id"] == job["id"] and got["created_at"].endswith("Z")
    assert c.get("/api/jobs/missing").status_code == 404


@pytest.mark.parametrize("body", [
    {}, {"name": ""}, {"name": 5}, {"name": "x", "steps": "a"}, {"name": "x", "steps": [1]},
    {"name": "x", "steps": ["a", "a"]}, {"name": "x" * 201}, []])
def test_create_errors(c, body):
    r = c.post("/api/jobs", json=body)
    assert r.status_code == 400 and "error" in r.json
    assert c.get("/api/jobs").json["total"] == 0


def test_definition_that_does_not_exist(c):
    r = c.post("/api/jobs", json={"definition": "no-such-thing"})
    assert r.status_code == 404 and "error" in r.json


def test_list_paging_and_status_filter(c):
    ids = [create(c, name=f"j{i}")["id"] for i in range(5)]
    c.patch(f"/api/jobs/{ids[1]}", json={"status": "running"})
    r = c.get("/api/jobs").json
    assert r["total"] == 5 and [j["id"] for j in r["jobs"]] == ids[::-1]
    r = c.get("/api/jobs?limit=2&offset=1").json
    assert [j["id"] for j in r["jobs"]] == [ids[3], ids[2]] and r["total"] == 5
    r = c.get("/api/jobs?status=running").json
    assert r["total"] == 1 and r["jobs"][0]["id"] == ids[1]
    assert c.get("/api/jobs?status=weird").status_code == 400
    assert c.get("/api/jobs?limit=x").status_code == 400


def test_transitions(c):
    job = create(c)
    jid = job["id"]
    r = c.patch(f"/api/jobs/{jid}/steps/fetch", json={"status": "running"})
    assert r.status_code == 200
    assert r.json["status"] == "running" and r.json["started_at"]  # the job started with its step
    r = c.patch(f"/api/jobs/{jid}/steps/fetch", json={"status": "completed"})
    step = r.json["steps"][0]
    assert step["status"] == "completed" and step["finished_at"]
    assert c.patch(f"/api/jobs/{jid}/steps/fetch", json={"status": "running"}).status_code == 409
    assert c.patch(f"/api/jobs/{jid}/steps/nope", json={"status": "running"}).status_code == 404
    assert c.patch(f"/api/jobs/{jid}/steps/fetch", json={"status": "odd"}).status_code == 400
    r = c.patch(f"/api/jobs/{jid}", json={"status": "failed"})
    assert r.json["status"] == "failed" and r.json["finished_at"]
    assert [s["status"] for s in r.json["steps"]] == ["completed", "skipped"]
    assert c.patch(f"/api/jobs/{jid}", json={"status": "running"}).status_code == 409
    assert c.patch(f"/api/jobs/{jid}", json={"status": "nope"}).status_code == 400
    assert c.patch(f"/api/jobs/{jid}", data="x", content_type="application/json").status_code == 400


def test_cancel_and_delete(c, any_app):
    job = create(c)
    jid = job["id"]
    c.post("/api/logs", json={"logs": [{"level": "info", "message": "x", "job_id": jid}]})
    c.patch(f"/api/jobs/{jid}/steps/fetch", json={"status": "running"})
    assert c.delete(f"/api/jobs/{jid}").status_code == 409
    r = c.post(f"/api/jobs/{jid}/cancel")
    assert r.status_code == 202 and r.json["status"] == "cancelled"
    assert [s["status"] for s in r.json["steps"]] == ["cancelled", "skipped"]
    assert c.post(f"/api/jobs/{jid}/cancel").status_code == 409
    assert c.delete(f"/api/jobs/{jid}").status_code == 204
    assert c.get(f"/api/jobs/{jid}").status_code == 404
    assert c.get(f"/api/logs?scope=job&job_id={jid}").status_code == 404
    r = c.post("/api/logs", json={"logs": [{"level": "info", "message": "late", "job_id": jid}]})
    assert r.status_code == 404
    assert c.delete(f"/api/jobs/{jid}").status_code == 404


def test_service_log_names_the_job(c):
    jid = create(c)["id"]
    c.patch(f"/api/jobs/{jid}", json={"status": "running"})
    c.patch(f"/api/jobs/{jid}", json={"status": "completed"})
    import gevent
    gevent.sleep(0.2)
    messages = [ln["message"] for ln in c.get("/api/logs?scope=service").json["logs"]]
    assert any(jid in m and "started" in m for m in messages)
    assert any(jid in m and "completed" in m for m in messages)


def test_token(tmp_path, sqlite_url):
    from tests.helpers import make_app
    app = make_app(sqlite_url, tmp_path, QUAERO_API_TOKEN="s3cret")
    try:
        c = app.test_client()
        r = c.get("/api/jobs")
        assert r.status_code == 401 and r.json == {"error": "authentication required"}
        assert c.get("/api/jobs/does-not-exist").status_code == 401  # no existence leak
        assert c.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/logs/stream?scope=service").status_code == 401
        ok = c.get("/api/jobs", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/healthz").status_code == 200
    finally:
        app.extensions["quaero"].close()


def test_healthz_and_metrics(c):
    r = c.get("/healthz")
    assert r.status_code == 200 and r.json["status"] == "ok"
    text = c.get("/metrics").data.decode()
    for name in ("quaero_sse_streams_open", "quaero_log_lines_ingested_total",
                 "quaero_sse_events_sent_total", "quaero_sse_bytes_sent_total",
                 "quaero_sse_slow_clients_dropped_total", "quaero_ingest_seconds_bucket",
                 "quaero_delivery_seconds_bucket"):
        assert name in text


def _at_once(n, call):
    """``call()`` in ``n`` greenlets released together; their results."""
    import gevent
    from gevent.event import Event
    go = Event()

    def one():
        go.wait()
        return call()
    greenlets = [gevent.spawn(one) for _ in range(n)]
    go.set()
    gevent.joinall(greenlets, raise_error=True)
    return [g.value for g in greenlets]


@pytest.mark.parametrize("start", ["pending", "running"])
def test_concurrent_cancels_end_the_job_once(c, caplog, start):
    """20 cancels at once: one makes the transition (202), the others find the job already
    cancelled (409, as a cancel of a finished job), and it is announced and timed once."""
    caplog.set_level("INFO", logger="quaero.jobs")
    jid = create(c)["id"]
    if start == "running":
        c.patch(f"/api/jobs/{jid}/steps/fetch", json={"status": "running"})
    answers = _at_once(20, lambda: c.post(f"/api/jobs/{jid}/cancel"))
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] + [409] * 19
    assert all(r.json == {"error": "job is cancelled"} for r in answers if r.status_code == 409)
    winner = next(r.json for r in answers if r.status_code == 202)
    assert winner["status"] == "cancelled"
    announced = [r.getMessage() for r in caplog.records
                 if r.name == "quaero.jobs" and "was cancelled" in r.getMessage()]
    assert len(announced) == 1, announced
    job = c.get(f"/api/jobs/{jid}").json
    assert job["finished_at"] == winner["finished_at"]
    assert [s["status"] for s in job["steps"]] == (
        ["cancelled", "skipped"] if start == "running" else ["skipped", "skipped"])


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_concurrent_status_patches_finish_the_job_once(c, caplog, status):
    """The same PATCH 20 times at once: all answer the finished job, one finishes it."""
    caplog.set_level("INFO", logger="quaero.jobs")
    jid = create(c)["id"]
    c.patch(f"/api/jobs/{jid}/steps/fetch", json={"status": "running"})
    answers = _at_once(20, lambda: c.patch(f"/api/jobs/{jid}", json={"status": status}))
    assert [r.status_code for r in answers] == [200] * 20
    finished = {r.json["finished_at"] for r in answers}
    assert len(finished) == 1 and finished == {c.get(f"/api/jobs/{jid}").json["finished_at"]}
    verb = {"completed": "completed", "failed": "failed", "cancelled": "was cancelled"}[status]
    announced = [r for r in caplog.records
                 if r.name == "quaero.jobs" and r.getMessage().endswith(f") {verb}")]
    assert len(announced) == 1, [r.getMessage() for r in announced]


def test_concurrent_step_changes_and_deletes(c):
    """Steps: one of 20 equal step finishes sets finished_at, the others answer it; a job
    finished while step changes queue behind it refuses them; 20 deletes: one 204."""
    jid = create(c)["id"]
    c.patch(f"/api/jobs/{jid}/steps/fetch", json={"status": "running"})
    answers = _at_once(20, lambda: c.patch(f"/api/jobs/{jid}/steps/fetch",
                                           json={"status": "completed"}))
    assert [r.status_code for r in answers] == [200] * 20
    assert len({r.json["steps"][0]["finished_at"] for r in answers}) == 1

    def step_or_finish(calls=iter(range(20))):
        if next(calls) == 0:
            return c.patch(f"/api/jobs/{jid}", json={"status": "failed"})
        return c.patch(f"/api/jobs/{jid}/steps/compile", json={"status": "running"})
    answers = _at_once(20, step_or_finish)
    job = c.get(f"/api/jobs/{jid}").json
    assert job["status"] == "failed"
    started = [r for r in answers if r.status_code == 200 and r.json["status"] == "running"]
    refused = [r for r in answers if r.status_code == 409]
    assert len(started) + len(refused) == 19   # each step change before the end or refused
    assert job["steps"][1]["status"] == ("failed" if started else "skipped")

    codes = sorted(r.status_code for r in _at_once(20, lambda: c.delete(f"/api/jobs/{jid}")))
    assert codes == [204] + [404] * 19


def _elsewhere(app, sql, **params):
    """Another connection (another worker or host) changes the job and commits."""
    import sqlalchemy as sa
    from quaero.models import db
    with db.engine.connect() as conn:
        conn.execute(sa.text(sql), params)
        conn.commit()


def test_transitions_decide_on_the_row_they_lock(c, any_app):
    """A transition decides on the row it locked, not on the copy its session loaded
    before another worker changed the job."""
    from quaero import jobs as jobops
    from quaero.errors import Conflict
    jid = create(c)["id"]
    with any_app.app_context():
        held = jobops.get_job(jid)                 # pending, in this session
        _elsewhere(any_app, "UPDATE jobs SET status = 'running' WHERE id = :j", j=jid)
        with pytest.raises(Conflict, match="running"):
            jobops.delete_job(jid)                 # not a delete of a running job
        assert held.status == "running"
    c.patch(f"/api/jobs/{jid}/steps/fetch", json={"status": "running"})
    with any_app.app_context():
        held = jobops.get_job(jid)                 # running, its step fetch running
        _elsewhere(any_app, "UPDATE steps SET status = 'completed' WHERE job_id = :j "
                            "AND name = 'fetch'", j=jid)
        with pytest.raises(Conflict, match="step is completed"):
            jobops.set_step_status(jid, "fetch", "failed")
        _elsewhere(any_app, "UPDATE jobs SET status = 'completed' WHERE id = :j", j=jid)
        with pytest.raises(Conflict, match="completed job"):
            jobops.set_step_status(jid, "compile", "running")
        with pytest.raises(Conflict, match="job is completed"):
            jobops.set_job_status(jid, "failed")
        assert held.status == "completed"
    assert c.get(f"/api/jobs/{jid}").json["steps"][1]["status"] == "pending"
