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
