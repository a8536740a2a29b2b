"""One lifecycle (issue 21): every background part starts in the app's one group, started
explicitly, and ``close()`` leaves no greenlet of Quaero's running."""
import gc

import gevent
import pytest

from tests.helpers import REDIS_URL, make_app


def _running_quaero_greenlets():
    found = []
    for obj in gc.get_objects():
        if isinstance(obj, gevent.Greenlet) and not obj.dead:
            fn = getattr(obj, "_run", None)
            module = getattr(getattr(fn, "__func__", fn), "__module__", "") or ""
            if module.startswith("quaero"):
                found.append(f"{module}.{getattr(fn, '__qualname__', fn)}")
    return found


@pytest.mark.parametrize("redis", [False, True])
def test_close_leaves_no_greenlet_running(tmp_path, redis):
    if redis and not REDIS_URL:
        pytest.skip("QUAERO_TEST_REDIS_URL is not set: Redis tests run in CI")
    extra = {"QUAERO_REDIS_URL": REDIS_URL} if redis else {}
    before = set(_running_quaero_greenlets())
    app = make_app(f"sqlite:///{tmp_path}/q.db", tmp_path, QUAERO_RETENTION_DAYS=1, **extra)
    state = app.extensions["quaero"]
    c = app.test_client()
    job = c.post("/api/jobs", json={"name": "j", "steps": ["s"]}).json["id"]
    assert c.post("/api/logs", json={"logs": [{"level": "info", "message": "x",
                                               "job_id": job}]}).status_code == 201
    with c.get(f"/api/logs/stream?scope=job&job_id={job}", buffered=False) as r:
        assert r.status_code == 200
    running = set(_running_quaero_greenlets()) - before
    assert {"quaero.ingest.Ingestor._run", "quaero.streaming.hub.StreamHub._tick",
            "quaero.runner.scheduler.Runner._loop"} <= running, running
    assert all(not g.dead for g in state.group) and len(state.group) >= 5
    state.close()
    gevent.sleep(0)
    assert set(_running_quaero_greenlets()) - before == set()
    assert len(state.group) == 0


def test_nothing_starts_from_a_request(tmp_path):
    from quaero import create_app
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/q.db",
                      "INSTANCE_PATH": str(tmp_path / "instance"),
                      "QUAERO_JOBS_DIR": str(tmp_path / "jobs")})
    state = app.extensions["quaero"]
    try:
        assert app.test_client().get("/healthz").status_code == 200
        assert state.group is None and not state.started_here()
        with pytest.raises(RuntimeError, match="start"):
            state.ingestor.submit([{"job_id": None, "step_name": None, "level": 20,
                                    "message": "x", "timestamp": None, "source": None}])
    finally:
        state.close()


@pytest.mark.slow
@pytest.mark.server
def test_a_gunicorn_without_our_config_starts_the_work(tmp_path):
    """``gunicorn -k gevent wsgi:app`` without gunicorn.conf.py (no post_worker_init): the
    worker's import of the app starts its work, so a write is stored, not a 500."""
    import os
    import subprocess
    import sys

    import httpx

    from tests.helpers import ROOT, free_port
    port = free_port()
    env = dict(os.environ, QUAERO_DATABASE_URL=f"sqlite:///{tmp_path}/q.db",
               QUAERO_JOBS_DIR=str(tmp_path / "jobs"))
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-k", "gevent", "-b",
                             f"127.0.0.1:{port}", "--chdir", ROOT, "wsgi:app"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                gevent.sleep(0.1)
        r = httpx.post(url + "/api/logs", json={"logs": [{"level": "info", "message": "hi"}]},
                       timeout=10)
        assert r.status_code == 201, r.text
    finally:
        proc.terminate()
        proc.wait(15)


def test_a_line_queued_just_before_stop_is_written_and_the_writer_ends(tmp_path):
    """stop() while the writer has units queued: it commits them and ends, without
    waiting out the drain's timeout for a wake-up it consumed already."""
    from quaero.models import utcnow
    app = make_app(f"sqlite:///{tmp_path}/q.db", tmp_path)
    state = app.extensions["quaero"]
    try:
        state.ingestor.submit_nowait([{"job_id": None, "step_name": None, "level": 20,
                                       "message": "the last words", "timestamp": utcnow()}])
        with gevent.Timeout(3, AssertionError("the writer did not end when stopped")):
            state.stop(timeout=60)
        assert state.ingestor._greenlet.dead
        with state.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM log_entries "
                                        "WHERE message = 'the last words'").scalar() == 1
    finally:
        state.close()


@pytest.mark.parametrize("interrupt", ["kill", "timeout"])
def test_an_interrupt_during_the_pools_ping_stays_itself(pg_database, tmp_path, interrupt):
    """A greenlet killed (``close()``) or timed out (``deadline.within``) while the pool's
    pre-ping waits on PostgreSQL: SQLAlchemy's ping turned the kill into a
    ``ProgrammingError`` ("can't change 'autocommit' now"), which the job runner's loop
    took for a database error and retried after its app was closed."""
    import sqlalchemy as sa
    app = make_app(pg_database, tmp_path)
    engine = app.extensions["quaero"].engine
    with engine.connect() as conn:  # one idle connection in the pool: the next checkout pings it
        conn.execute(sa.text("SELECT 1"))

    def check_out():
        if interrupt == "timeout":
            with gevent.Timeout(0.000001):  # fires at the first wait: the ping's
                with engine.connect():
                    pass
        else:
            with engine.connect():
                pass

    g = gevent.spawn(check_out)
    gevent.sleep(0)
    if interrupt == "kill":
        g.kill()
    g.join()
    if interrupt == "kill":
        assert isinstance(g.value, gevent.GreenletExit) and g.exception is None
    else:
        assert isinstance(g.exception, gevent.Timeout), repr(g.exception)
    with engine.connect() as conn:  # the pool dropped the connection it cut off
        assert conn.execute(sa.text("SELECT 2")).scalar() == 2
    app.extensions["quaero"].close()
