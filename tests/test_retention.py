"""Retention prunes old jobs and lines; counts and has_more follow."""
from datetime import timedelta

import sqlalchemy as sa

from quaero.models import Job, db, utcnow
from quaero.retention import prune_once


def _job_with_lines(c, n, steps=("a", "b")):
    job = c.post("/api/jobs", json={"name": "j", "steps": list(steps)}).json["id"]
    lines = [{"level": ("info", "error")[i % 2], "message": f"m{i}", "job_id": job,
              "step": steps[i % len(steps)]} for i in range(n)]
    for i in range(0, n, 5000):
        assert c.post("/api/logs", json={"logs": lines[i:i + 5000]}).status_code == 201
    return job


def test_max_lines_per_job_keeps_the_newest(any_app):
    c = any_app.test_client()
    job = _job_with_lines(c, 12000)
    other = _job_with_lines(c, 10)
    engine = any_app.extensions["quaero"].engine
    jobs, lines = prune_once(engine, max_lines_per_job=1000)
    assert (jobs, lines) == (0, 11000)
    r = c.get(f"/api/logs?scope=job&job_id={job}&level=debug&limit=5000").json
    assert r["meta"]["total_count"] == 1000 and len(r["logs"]) == 1000
    assert r["meta"]["has_more"] is False
    assert r["logs"][0]["message"] == "m11000" and r["logs"][-1]["message"] == "m11999"
    assert c.get(f"/api/jobs/{job}").json["log_counts"] == {
        "debug": 0, "info": 500, "warn": 0, "error": 500}
    r = c.get(f"/api/logs?scope=job&job_id={job}&step=a&level=error").json
    assert r["meta"]["total_count"] == 0
    assert c.get(f"/api/logs?scope=job&job_id={other}&level=debug").json["meta"]["total_count"] == 10


def test_retention_days_drops_old_finished_jobs_and_service_lines(any_app):
    c = any_app.test_client()
    old = _job_with_lines(c, 30)
    fresh = _job_with_lines(c, 5)
    running = _job_with_lines(c, 5)
    c.patch(f"/api/jobs/{old}", json={"status": "completed"})
    c.patch(f"/api/jobs/{fresh}", json={"status": "completed"})
    c.patch(f"/api/jobs/{running}", json={"status": "running"})
    long_ago = (utcnow() - timedelta(days=40)).isoformat() + "Z"
    c.post("/api/logs", json={"logs": [{"level": "error", "message": "ancient", "timestamp": long_ago}]})
    c.post("/api/logs", json={"logs": [{"level": "error", "message": "recent"}]})
    with any_app.app_context():
        db.session.execute(sa.update(Job).where(Job.id.in_([old, running])).values(
            finished_at=utcnow() - timedelta(days=40), created_at=utcnow() - timedelta(days=41)))
        db.session.commit()
    jobs, lines = prune_once(any_app.extensions["quaero"].engine, retention_days=30)
    assert jobs == 1 and lines == 31
    assert c.get(f"/api/jobs/{old}").status_code == 404
    assert c.get(f"/api/jobs/{fresh}").status_code == 200
    assert c.get(f"/api/jobs/{running}").status_code == 200
    msgs = [ln["message"] for ln in c.get("/api/logs?scope=service&level=error").json["logs"]]
    assert msgs == ["recent"]


def test_pruner_runs_in_the_background(tmp_path, sqlite_url):
    import gevent

    from tests.helpers import make_app
    app = make_app(sqlite_url, tmp_path, QUAERO_MAX_LINES_PER_JOB=100, QUAERO_PRUNE_INTERVAL=0.1)
    try:
        c = app.test_client()
        job = _job_with_lines(c, 300)  # the first request starts the pruner
        for _ in range(50):
            gevent.sleep(0.1)
            if c.get(f"/api/jobs/{job}").json["log_counts"]["info"] == 50:
                break
        r = c.get(f"/api/logs?scope=job&job_id={job}&level=debug&limit=1000").json
        assert r["meta"]["total_count"] == 100 and len(r["logs"]) == 100
        assert r["logs"][0]["message"] == "m200"
    finally:
        app.extensions["quaero"].close()
