"""``last_error`` in ``GET /api/jobs``: each job's newest error line, on SQLite and PostgreSQL."""
import pytest

from quaero.web.api_jobs import LAST_ERROR_CHARS


@pytest.fixture
def c(any_app):
    return any_app.test_client()


def test_each_listed_job_has_its_newest_error_line(c):
    ids = [c.post("/api/jobs", json={"name": f"j{n}", "steps": ["s"]}).json["id"] for n in range(3)]
    r = c.post("/api/logs", json={"logs": [
        {"level": "error", "message": "first failure", "job_id": ids[0], "step": "s"},
        {"level": "error", "message": "second failure", "job_id": ids[0]},
        {"level": "warn", "message": "a warning after", "job_id": ids[0]},
        {"level": "error", "message": "é" * 1000, "job_id": ids[1], "step": "s"},
        {"level": "info", "message": "fine", "job_id": ids[2]},
        {"level": "error", "message": "a service error"}]})
    assert r.status_code == 201
    jobs = {j["id"]: j for j in c.get("/api/jobs").json["jobs"]}
    last = jobs[ids[0]]["last_error"]
    assert (last["message"], last["line_number"], last["step_name"]) == ("second failure", 2, None)
    assert last["timestamp"].endswith("Z") and isinstance(last["id"], int)
    assert jobs[ids[1]]["last_error"]["message"] == "é" * LAST_ERROR_CHARS
    assert jobs[ids[1]]["last_error"]["step_name"] == "s"
    assert jobs[ids[2]]["last_error"] is None
    assert jobs[ids[0]]["log_counts"]["error"] == 2
