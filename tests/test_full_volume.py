"""Issue 22: a SQLite database on a small volume (a 16 MiB tmpfs) filled through the API
until ingest answers 507 never leaves an unclean state: no 5xx, every acknowledged line
readable, the database passes its integrity check, and ingest resumes by itself once the
pruner has removed something old enough (the file's freed pages count as room)."""
import subprocess
from datetime import timedelta

import pytest
import sqlalchemy as sa

from quaero.models import Job, db, utcnow
from tests.helpers import eventually, make_app

# the floor must hold what is written before the next look, and the WAL's growth to
# its checkpoint (1000 pages, 4 MiB), which lands in the database's file after it
FLOOR = 5 << 20


@pytest.fixture
def volume(tmp_path):
    path = tmp_path / "vol"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _all_lines(c, job):
    got, after = [], 0
    while True:
        page = c.get(f"/api/logs?scope=job&job_id={job}&level=debug&limit=5000&after={after}").json
        got += [ln["message"] for ln in page["logs"]]
        if not page["meta"]["has_more"]:
            return got
        after = page["last_id"]


def _integrity(app):
    with app.extensions["quaero"].engine.connect() as conn:
        return conn.exec_driver_sql("PRAGMA integrity_check").scalar()


def test_filled_to_507_it_stays_clean_and_resumes_after_pruning(volume, tmp_path):
    app = make_app(f"sqlite:///{volume}/q.db", tmp_path, QUAERO_MIN_FREE_BYTES=FLOOR,
                   QUAERO_PRUNE_INTERVAL=0.2)
    c = app.test_client()
    try:
        job = c.post("/api/jobs", json={"name": "filler", "steps": ["fill"]}).json["id"]
        c.patch(f"/api/jobs/{job}/steps/fill", json={"status": "running"})  # never pruned
        acked, refused, big = [], 0, "x" * 4000
        for i in range(5000):
            r = c.post("/api/logs", json={"logs": [
                {"level": "info", "message": f"{i}.{k} {big}", "job_id": job, "step": "fill"}
                for k in range(5)]})
            assert r.status_code in (201, 507), (r.status_code, r.json)
            if r.status_code == 201:
                assert refused == 0, "a line acknowledged after a 507 before any room was made"
                acked += [f"{i}.{k}" for k in range(5)]
            else:
                assert "free-space floor" in r.json["error"], r.json  # before the disk is full
                refused += 1
                if refused == 5:
                    break
        assert refused == 5 and len(acked) > 100
        h = c.get("/healthz")
        assert h.status_code == 503 and "disk" in h.json["checks"]
        assert [m.split(" ", 1)[0] for m in _all_lines(c, job)] == acked
        assert _integrity(app) == "ok"
        # the job ends and is old enough: the pruner removes it, ingest resumes by itself
        assert c.patch(f"/api/jobs/{job}", json={"status": "completed"}).status_code == 200
        with app.app_context():
            db.session.execute(sa.update(Job).where(Job.id == job).values(
                finished_at=utcnow() - timedelta(hours=2)))
            db.session.commit()
        eventually(lambda: c.get(f"/api/jobs/{job}").status_code == 404, timeout=30,
                   what="the pruner removes the job")
        eventually(lambda: c.post("/api/logs", json={"logs": [
            {"level": "info", "message": "back"}]}).status_code == 201, timeout=30,
            what="ingest resumes once the pruner made room")
        assert c.get("/healthz").status_code == 200
        assert _integrity(app) == "ok"
        said = eventually(lambda: c.get("/api/logs?scope=service&q=retention pruned").json["logs"],
                          what="the pruner's line in the service log")
        assert "pruned 1 jobs and" in said[-1]["message"]
    finally:
        app.extensions["quaero"].close()
