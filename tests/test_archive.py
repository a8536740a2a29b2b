"""Issue 22: archive before delete (QUAERO_ARCHIVE_DIR) and ``quaero import``: a finished
job pruned for age or size is first written as gzip'd NDJSON, and comes back whole."""
import gzip
import json
from datetime import timedelta

import sqlalchemy as sa
from click.testing import CliRunner

from quaero.archive import ArchiveRefused, Archiver, archive_path, import_archive, write_archive
from quaero.models import Job, db, utcnow
from quaero.retention import prune_for_room, prune_once
from tests.helpers import make_app

STAMP = "2026-11-20T08:00:00.000Z"


def _finished_job(app, n=12, name="nightly", ago=timedelta(days=40)):
    c = app.test_client()
    job = c.post("/api/jobs", json={"name": name, "steps": ["fetch", "build"]}).json["id"]
    c.patch(f"/api/jobs/{job}/steps/fetch", json={"status": "running"})
    levels = ("debug", "info", "warn", "error")
    r = c.post("/api/logs", json={"logs": [
        {"level": levels[i % 4], "message": f"{name} line {i} \u00e9\t\"q\"", "job_id": job,
         "step": ("fetch", "build")[i % 2], "source": ("make", None)[i % 2],
         "timestamp": f"2026-11-20T08:00:{i % 60:02d}.{i % 1000:03d}Z"} for i in range(n)]})
    assert r.status_code == 201, r.json
    c.patch(f"/api/jobs/{job}/steps/fetch", json={"status": "completed"})
    c.patch(f"/api/jobs/{job}", json={"status": "failed"})
    with app.app_context():
        db.session.execute(sa.update(Job).where(Job.id == job).values(
            finished_at=utcnow() - ago))
        db.session.commit()
    return job


def _everything(c, job):
    """The job and its lines as the API gives them, line ids left out."""
    got = c.get(f"/api/jobs/{job}").json
    lines = c.get(f"/api/logs?scope=job&job_id={job}&level=debug&limit=5000").json
    return got, [{k: v for k, v in ln.items() if k != "id"} for ln in lines["logs"]], \
        lines["meta"]["total_count"]


def test_archive_delete_import_gives_the_same_job_and_lines(any_app, tmp_path):
    c = any_app.test_client()
    engine = any_app.extensions["quaero"].engine
    job = _finished_job(any_app, n=12)
    before = _everything(c, job)
    histogram = c.get(f"/api/logs/histogram?scope=job&job_id={job}&level=debug").json
    folder = tmp_path / "archive"
    assert prune_once(engine, retention_days=30, archive=Archiver(str(folder))) == (1, 12)
    assert c.get(f"/api/jobs/{job}").status_code == 404
    # the file: the job, then one line per log line
    with gzip.open(archive_path(str(folder), job), "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert records[0]["quaero_archive"] == 1 and records[0]["lines"] == 12
    assert records[0]["job"]["id"] == job and records[0]["job"]["status"] == "failed"
    assert [s["name"] for s in records[0]["job"]["steps"]] == ["fetch", "build"]
    assert set(records[1]) == {"id", "timestamp", "level", "message", "step", "line_number",
                               "source"}
    assert [r["line_number"] for r in records[1:]] == list(range(1, 13))
    assert list(folder.iterdir()) == [folder / f"{job}.ndjson.gz"]  # no temporary left
    # back, whole
    imported, n = import_archive(engine, archive_path(str(folder), job))
    assert (imported["id"], n) == (job, 12)
    assert _everything(c, job) == before
    assert c.get(f"/api/logs/histogram?scope=job&job_id={job}&level=debug").json == histogram
    found = c.get("/api/search?q=line 7 \u00e9").json["results"]
    assert [(r["job_id"], r["line_number"]) for r in found] == [(job, 8)]
    # new lines of the imported job come after its own, numbered on
    r = c.post("/api/logs", json={"logs": [{"level": "info", "message": "more", "job_id": job}]})
    assert r.status_code == 201
    assert c.get(f"/api/logs?scope=job&job_id={job}&limit=1").json["logs"][0]["line_number"] == 13


def test_a_job_that_exists_is_not_imported_again(any_app, tmp_path):
    c = any_app.test_client()
    engine = any_app.extensions["quaero"].engine
    job = _finished_job(any_app, n=3)
    path = write_archive(engine, job, str(tmp_path))
    before = _everything(c, job)
    try:
        import_archive(engine, path)
        raise AssertionError("imported twice")
    except ArchiveRefused as exc:
        assert f"job {job} (nightly) exists already" in str(exc)
    assert _everything(c, job) == before


def test_a_size_prune_archives_too_and_keeps_gaps_in_line_numbers(any_app, tmp_path):
    c = any_app.test_client()
    engine = any_app.extensions["quaero"].engine
    job = _finished_job(any_app, n=30, ago=timedelta(hours=3))
    prune_once(engine, max_lines_per_job=10)   # lines 1-20 go: the job starts at 21
    before = _everything(c, job)

    class Over:
        sqlite, times = True, 1

        def excess(self):
            self.times -= 1
            return (1, "test") if self.times >= 0 else (0, None)

        def pruned(self):
            pass
    assert prune_for_room(engine, Over(), Archiver(str(tmp_path)))[:2] == (1, 10)
    import_archive(engine, archive_path(str(tmp_path), job))
    after = _everything(c, job)
    assert after == before and after[1][0]["line_number"] == 21


def test_a_job_that_cannot_be_archived_is_kept(any_app, tmp_path, caplog):
    engine = any_app.extensions["quaero"].engine
    c = any_app.test_client()
    job = _finished_job(any_app, n=5)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the folder should be")
    assert prune_once(engine, retention_days=30, archive=Archiver(str(blocked))) == (0, 0)
    assert c.get(f"/api/jobs/{job}").json["log_counts"]["debug"] == 2
    assert any(f"could not archive job {job}, so it is kept" in r.getMessage()
               for r in caplog.records)


def test_quaero_import_on_the_command_line(tmp_path, monkeypatch):
    from quaero.cli import cli
    url = f"sqlite:///{tmp_path}/q.db"
    app = make_app(url, tmp_path)
    try:
        engine = app.extensions["quaero"].engine
        job = _finished_job(app, n=4, ago=timedelta(days=400))
        before = _everything(app.test_client(), job)
        path = write_archive(engine, job, str(tmp_path / "a"))
        monkeypatch.setenv("QUAERO_DATABASE_URL", url)
        refused = CliRunner().invoke(cli, ["import", path])
        assert refused.exit_code == 1 and "exists already" in refused.output
        prune_once(engine, retention_days=30)
        done = CliRunner().invoke(cli, ["import", path])
        assert done.exit_code == 0, done.output
        assert f"job {job} (nightly, failed) imported with 4 lines" in done.output
        assert "will prune it again" in done.output  # 400 days ago, retention 30
        assert _everything(app.test_client(), job) == before
        bad = tmp_path / "bad.ndjson.gz"
        bad.write_bytes(gzip.compress(b'{"not": "an archive"}\n'))
        out = CliRunner().invoke(cli, ["import", str(bad)])
        assert out.exit_code == 1 and "not a Quaero archive" in out.output
    finally:
        app.extensions["quaero"].close()
