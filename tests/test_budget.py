"""Issue 22: the size budget (QUAERO_MAX_DB_BYTES), the free-space floor
(QUAERO_MIN_FREE_BYTES) and retention on by default. The pruner removes the oldest finished
jobs and service lines first, never a pending or running job, never anything younger than
retention.FLOOR, and says what it removed in the service log."""
import os
from datetime import timedelta

import sqlalchemy as sa

from quaero.models import Job, db, utcnow
from quaero.retention import FLOOR, Budget, prune_for_room
from tests.helpers import eventually, make_app


def _job(c, name, n, status=None, ago=None, app=None):
    job = c.post("/api/jobs", json={"name": name, "steps": ["a", "b"]}).json["id"]
    if n:
        r = c.post("/api/logs", json={"logs": [
            {"level": ("info", "warn")[i % 2], "message": f"{name} {i}", "job_id": job,
             "step": "ab"[i % 2]} for i in range(n)]})
        assert r.status_code == 201, r.json
    if status:
        assert c.patch(f"/api/jobs/{job}", json={"status": status}).status_code == 200
    if ago is not None:
        with app.app_context():
            db.session.execute(sa.update(Job).where(Job.id == job).values(
                finished_at=utcnow() - ago))
            db.session.commit()
    return job


def _service(c, messages, ago=timedelta(0)):
    stamp = (utcnow() - ago).isoformat() + "Z"
    r = c.post("/api/logs", json={"logs": [{"level": "info", "message": m, "timestamp": stamp}
                                            for m in messages]})
    assert r.status_code == 201, r.json


def _service_messages(c, q="svc"):
    return [ln["message"] for ln in
            c.get(f"/api/logs?scope=service&level=debug&limit=5000&q={q}").json["logs"]]


class _Over:
    """A budget over by one byte for the next ``times`` looks (the order of removal is
    what is tested; Budget's own measures are tested below)."""

    def __init__(self, times):
        self.times, self.sqlite = times, True

    def excess(self):
        self.times -= 1
        return (1, "a test budget") if self.times >= 0 else (0, None)

    def pruned(self):
        pass


def _scene(app):
    c = app.test_client()
    jobs = {
        "oldest": _job(c, "oldest", 30, "completed", timedelta(days=3), app),
        "older": _job(c, "older", 20, "failed", timedelta(hours=5), app),
        "young": _job(c, "young", 5, "completed", FLOOR / 2, app),
        "running": _job(c, "running", 5, "running"),
        "pending": _job(c, "pending", 0),
    }
    _service(c, ["svc old 1", "svc old 2"], timedelta(days=1))   # between oldest and older
    _service(c, ["svc fresh"])
    return c, jobs


def test_the_oldest_goes_first_whichever_kind_it_is(any_app):
    c, jobs = _scene(any_app)
    engine = any_app.extensions["quaero"].engine
    assert prune_for_room(engine, _Over(1))[:2] == (1, 30)          # the job of 3 days ago
    assert c.get(f"/api/jobs/{jobs['oldest']}").status_code == 404
    assert c.get(f"/api/jobs/{jobs['older']}").status_code == 200
    assert prune_for_room(engine, _Over(1))[:2] == (0, 2)           # service lines of a day
    assert _service_messages(c) == ["svc fresh"]
    assert prune_for_room(engine, _Over(1))[:2] == (1, 20)          # then the job of 5 hours
    assert c.get(f"/api/jobs/{jobs['older']}").status_code == 404


def test_never_a_running_or_pending_job_nor_anything_younger_than_the_floor(any_app):
    c, jobs = _scene(any_app)
    engine = any_app.extensions["quaero"].engine
    jobs_gone, lines_gone, why, short = prune_for_room(engine, _Over(1000))
    assert (jobs_gone, lines_gone, why, short) == (2, 52, "a test budget", True)
    for name in ("young", "running", "pending"):
        assert c.get(f"/api/jobs/{jobs[name]}").status_code == 200
    assert c.get(f"/api/jobs/{jobs['young']}").json["log_counts"]["info"] == 3
    assert _service_messages(c) == ["svc fresh"]
    # counts and the histogram follow what is left
    assert c.get("/api/logs?scope=service&level=debug&q=svc").json["meta"]["total_count"] == 1
    assert c.get("/api/logs/histogram?scope=service&level=debug&q=svc").json["total"] == 1


def test_the_budget_measures_the_database(any_app):
    c = any_app.test_client()
    engine = any_app.extensions["quaero"].engine
    with engine.connect() as conn:
        used = Budget(engine, 1).used_bytes(conn)
    assert used > 0
    assert Budget(engine, 0).excess() == (0, None)                   # 0: off
    assert Budget(engine, used * 10).excess() == (0, None)
    need, why = Budget(engine, used // 2).excess()
    # (the size moves a little by itself: the service log, the search index, statistics)
    assert 0 <= need - (used - int(used // 2 * 0.9)) < used / 2 and "QUAERO_MAX_DB_BYTES" in why
    _job(c, "big", 2000, "completed", timedelta(days=2), any_app)
    # room for half of what the job added: SQLite's search index keeps the documents of
    # removed lines until their whole generation goes (searchindex.clear_generations), and
    # whether the writer indexed the 2000 lines before the prune is its own timing (a
    # .ci/run under load saw a budget of ``used`` missed by them: "short")
    with engine.connect() as conn:
        grown = Budget(engine, 1).used_bytes(conn) - used
    budget = Budget(engine, used + grown // 2)
    jobs, lines, why, short = prune_for_room(engine, budget)
    assert (jobs, lines, short) == (1, 2000, False) and "over QUAERO_MAX_DB_BYTES" in why
    # under it again (SQLite: the pages in use), or (PostgreSQL, whose files keep their
    # size) not grown since the prune: nothing more goes
    assert budget.excess() == (0, None)
    if engine.dialect.name == "postgresql":  # another budget: the mark does not hold
        assert Budget(engine, used - 1).excess()[0] > 0


def test_sqlite_counts_pages_in_use_and_reuses_freed_ones(app):
    import os
    c = app.test_client()
    engine = app.extensions["quaero"].engine
    budget = Budget(engine, 1)
    path = engine.url.database
    job = _job(c, "big", 0)
    for _ in range(4):
        _job_lines(c, job, 5000)
    c.patch(f"/api/jobs/{job}", json={"status": "completed"})
    _checkpoint(engine)
    with engine.connect() as conn:
        full = budget.used_bytes(conn)
    size = os.path.getsize(path)
    from quaero.retention import remove_job
    remove_job(engine, job)
    with engine.connect() as conn:
        emptied = budget.used_bytes(conn)
    assert emptied < full / 4                     # counted as free...
    assert os.path.getsize(path) == size          # ...though the file keeps its size
    other = _job(c, "again", 0)
    for _ in range(3):
        _job_lines(c, other, 5000)
    _checkpoint(engine)
    # new lines filled the free pages (15,000 lines in new pages would be 3/4 of it more)
    assert os.path.getsize(path) < size + (full - emptied) / 8


def _checkpoint(engine):
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def _job_lines(c, job, n):
    r = c.post("/api/logs", json={"logs": [{"level": "info", "message": f"line {i} " + "x" * 60,
                                            "job_id": job, "step": "a"} for i in range(n)]})
    assert r.status_code == 201


def test_the_pruner_says_what_it_removed_in_the_service_log(tmp_path, database_url):
    app = make_app(database_url, tmp_path, QUAERO_MAX_DB_BYTES=1, QUAERO_PRUNE_INTERVAL=3600)
    app.extensions["quaero"].pruner.stop()  # its first pass ran beside run_once's and took the lines
    try:
        c = app.test_client()
        old = _job(c, "old", 10, "completed", timedelta(days=2), app)
        assert app.extensions["quaero"].pruner.run_once() == (1, 10)
        assert c.get(f"/api/jobs/{old}").status_code == 404
        said = eventually(lambda: _service_messages(c, "retention pruned"),
                          what="the pruner's line in the service log")
        assert "1 jobs and 10 lines" in said[0] and "QUAERO_MAX_DB_BYTES (1)" in said[0]
    finally:
        app.extensions["quaero"].close()


def test_507_below_the_floor_then_the_pruner_makes_room(tmp_path):
    """The free-space floor counts the file's free pages: rows the pruner deletes are room
    for new lines, and ingest resumes by itself."""
    app = make_app(f"sqlite:///{tmp_path}/q.db", tmp_path, QUAERO_PRUNE_INTERVAL=3600)
    state = app.extensions["quaero"]
    state.pruner.stop()  # the test runs the passes (the background one's first would race them)
    try:
        c = app.test_client()
        old = _job(c, "old", 0, "completed")
        for _ in range(3):
            _job_lines(c, old, 5000)
        # a volume with nothing free (tests beside this one write to the real one)
        state.disk._statvfs = lambda path: os.statvfs_result((4096,) * 2 + (1 << 20, 0, 0) + (0,) * 5)
        state.disk.min_free = 500_000
        state.disk.recheck()
        r = c.post("/api/logs", json={"logs": [{"level": "info", "message": "refused"}]})
        assert r.status_code == 507 and "free-space floor" in r.json["error"]
        h = c.get("/healthz")
        assert h.status_code == 503 and "free-space floor" in h.json["checks"]["disk"]
        assert state.pruner.budget.excess()[0] > 0
        with app.app_context():
            db.session.execute(sa.update(Job).where(Job.id == old).values(
                finished_at=utcnow() - timedelta(days=2)))
            db.session.commit()
        state.pruner.run_once()
        assert c.get(f"/api/jobs/{old}").status_code == 404
        assert state.disk.reusable_bytes() > 1_000_000   # the job's pages, free in the file
        assert c.post("/api/logs", json={"logs": [{"level": "info", "message": "back"}]}).status_code == 201
        assert c.get("/healthz").status_code == 200
    finally:
        state.close()


def test_a_full_disk_is_507_with_a_reason_on_both_databases(any_app):
    """PostgreSQL's volume cannot be seen from Quaero: a write that failed for a full
    disk (SQLSTATE 53100) makes ingest answer 507 until a write succeeds."""
    c = any_app.test_client()
    disk = any_app.extensions["quaero"].disk
    disk.note_full()
    r = c.post("/api/logs", json={"logs": [{"level": "info", "message": "x"}]})
    assert r.status_code == 507 and "full" in r.json["error"]
    h = c.get("/healthz")
    assert h.status_code == 503 and h.json["checks"]["disk"].startswith("full")
    disk._full_at -= disk.FULL_FOR
    assert c.post("/api/logs", json={"logs": [{"level": "info", "message": "y"}]}).status_code == 201


def test_retention_is_on_by_default_and_said_at_start(tmp_path, sqlite_url, capsys, monkeypatch):
    from quaero.startup import preflight, retention_line
    for name in ("QUAERO_RETENTION_DAYS", "QUAERO_MAX_DB_BYTES", "QUAERO_MIN_FREE_BYTES",
                 "QUAERO_ARCHIVE_DIR", "QUAERO_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    app = make_app(sqlite_url, tmp_path, start=False)
    try:
        assert app.config["QUAERO_RETENTION_DAYS"] == 30
        assert app.config["QUAERO_MAX_DB_BYTES"] == 10 << 30
        assert app.config["QUAERO_ARCHIVE_DIR"] is None
        pruner = app.extensions["quaero"].pruner
        assert pruner.retention_days == 30 and pruner.budget.max_bytes == 10 << 30
    finally:
        app.extensions["quaero"].close()
    assert preflight([], None) == []
    err = capsys.readouterr().err.splitlines()
    assert err == ["quaero: " + retention_line()]
    assert "older than 30 days" in err[0] and "10 GiB" in err[0] and "64 MiB" in err[0]
    off = retention_line({"QUAERO_RETENTION_DAYS": "0", "QUAERO_MAX_DB_BYTES": "0",
                          "QUAERO_MIN_FREE_BYTES": "0", "QUAERO_ARCHIVE_DIR": "/srv/a"})
    assert off.startswith("retention by age: off; size budget: off; free-space floor: off; "
                          "archived to /srv/a first")
