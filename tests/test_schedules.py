"""Job definitions on a schedule: the cron arithmetic and the plan (pure, a fake clock),
claiming a tick once across processes (two apps on one database, SQLite and PostgreSQL),
overlap skip and queue, catching up after a restart, and one real tick end to end with two
gunicorn workers."""
import logging
import time
from datetime import datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from quaero.models import ticks_t
from quaero.runner.cron import (Plan, count_ticks, latest_tick, next_tick, plan,
                                schedule_problem)
from quaero.runner.definitions import DefinitionError, parse_definition
from tests.helpers import eventually, make_app

T = datetime(2026, 3, 28, 23, 59, 30)   # the night before Paris moves its clocks forward


@pytest.mark.parametrize("expr, tz, now, latest, nxt", [
    ("*/15 * * * *", "UTC", T, datetime(2026, 3, 28, 23, 45), datetime(2026, 3, 29, 0, 0)),
    ("*/15 * * * *", "UTC", datetime(2026, 3, 29, 0, 0), datetime(2026, 3, 29, 0, 0),
     datetime(2026, 3, 29, 0, 15)),   # a tick exactly now is the latest, not the next
    ("0 3 * * *", "Europe/Paris", T, datetime(2026, 3, 28, 2, 0), datetime(2026, 3, 29, 1, 0)),
    ("@hourly", "UTC", T, datetime(2026, 3, 28, 23, 0), datetime(2026, 3, 29, 0, 0)),
    ("30 9 * * 1-5", "America/New_York", T, datetime(2026, 3, 27, 13, 30),
     datetime(2026, 3, 30, 13, 30)),
])
def test_ticks_in_their_time_zone(expr, tz, now, latest, nxt):
    assert latest_tick(expr, tz, now) == latest
    assert next_tick(expr, tz, now) == nxt


def test_counting_missed_ticks():
    assert count_ticks("*/15 * * * *", "UTC", datetime(2026, 1, 1), datetime(2026, 1, 1, 2)) == 7
    assert count_ticks("* * * * *", "UTC", datetime(2026, 1, 1), datetime(2026, 1, 2), cap=100) == 100


def test_the_plan_with_a_fake_clock():
    sig = "*/15 * * * * UTC"
    t0 = datetime(2026, 1, 1, 10, 7)
    # first seen: its latest tick is recorded, not run
    assert plan("*/15 * * * *", "UTC", t0, None, None) == Plan("baseline", datetime(2026, 1, 1, 10, 0))
    assert plan("*/15 * * * *", "UTC", t0, datetime(2026, 1, 1, 10, 0), sig) is None
    assert plan("*/15 * * * *", "UTC", datetime(2026, 1, 1, 10, 15), datetime(2026, 1, 1, 10, 0),
                sig) == Plan("run", datetime(2026, 1, 1, 10, 15), 0)
    # a server up again at 12:20 after the 10:15 tick: the 12:15 tick runs, 7 were missed
    assert plan("*/15 * * * *", "UTC", datetime(2026, 1, 1, 12, 20), datetime(2026, 1, 1, 10, 15),
                sig) == Plan("run", datetime(2026, 1, 1, 12, 15), 7)
    # a changed schedule starts over from its own next tick
    assert plan("0 * * * *", "UTC", datetime(2026, 1, 1, 12, 20), datetime(2026, 1, 1, 10, 15),
                sig) == Plan("baseline", datetime(2026, 1, 1, 12, 0))


@pytest.mark.parametrize("extra, problem", [
    ('schedule = "* * * *"', "must have 5 fields"),
    ('schedule = "* * * * * *"', "must have 5 fields"),
    ('schedule = "61 * * * *"', "not a valid cron expression"),
    ('schedule = "@reboot"', "not one of @yearly"),
    ('schedule = "* * * * *"\ntimezone = "Mars/Olympus"', "not a known time zone"),
    ('schedule = "* * * * *"\noverlap = "both"', 'overlap must be "skip" or "queue"'),
    ('overlap = "queue"', "timezone and overlap go with a schedule"),
    ("schedule = 5", "schedule must be a cron expression"),
])
def test_a_bad_schedule_is_the_definition_s_error(tmp_path, extra, problem):
    path = tmp_path / "d.toml"
    path.write_text(f'{extra}\n[[steps]]\nname = "a"\nrun = "true"\n')
    with pytest.raises(DefinitionError, match=problem):
        parse_definition(str(path))
    assert schedule_problem("*/5 * * * *") is None


def _definition(jobs_dir, name, schedule, overlap="skip", tz="UTC"):
    jobs_dir.mkdir(parents=True, exist_ok=True)
    (jobs_dir / f"{name}.toml").write_text(
        f'schedule = "{schedule}"\ntimezone = "{tz}"\noverlap = "{overlap}"\n'
        '[[steps]]\nname = "a"\nrun = "echo tick"\n')


@pytest.fixture
def two_apps(database_url, tmp_path):
    """Two apps on one database, as two processes are: their background work not started
    (the test drives their schedulers with its own clock)."""
    apps = [make_app(database_url, tmp_path, start=False) for _ in range(2)]
    yield apps
    for app in apps:
        app.extensions["quaero"].close()


def _jobs(app, name):
    with app.extensions["quaero"].engine.connect() as conn:
        return conn.execute(sa.text("SELECT id, status FROM jobs WHERE definition = :n ORDER BY seq"),
                            {"n": name}).all()


def _ticks(app, name):
    with app.extensions["quaero"].engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(ticks_t.c.tick_at, ticks_t.c.outcome).where(ticks_t.c.definition == name)
            .order_by(ticks_t.c.tick_at))]


def test_a_tick_runs_once_across_processes(two_apps, tmp_path):
    _definition(tmp_path / "jobs", "quarter", "*/15 * * * *")
    a, b = (app.extensions["quaero"].schedules for app in two_apps)
    t0 = datetime(2026, 1, 1, 10, 7)
    assert a.run_due(t0) == [] and b.run_due(t0) == []     # first seen: the baseline
    assert _jobs(two_apps[0], "quarter") == []
    t1 = datetime(2026, 1, 1, 10, 15, 0, 300000)
    started = a.run_due(t1) + b.run_due(t1) + a.run_due(t1 + timedelta(seconds=20))
    assert len(started) == 1 and len(_jobs(two_apps[0], "quarter")) == 1
    assert [o for _, o in _ticks(two_apps[0], "quarter")] == ["baseline", "started"]


def test_overlap_skip_says_so_and_queue_runs_after(two_apps, tmp_path, caplog):
    _definition(tmp_path / "jobs", "skipper", "*/5 * * * *", "skip")
    _definition(tmp_path / "jobs", "queuer", "*/5 * * * *", "queue")
    app = two_apps[0]
    s = app.extensions["quaero"].schedules
    t = datetime(2026, 1, 1, 10, 1)
    s.run_due(t)
    started = s.run_due(datetime(2026, 1, 1, 10, 5))
    assert sorted(j.definition for j in started) == ["queuer", "skipper"]
    # the runner is not started here: both jobs stay pending, so the next ticks overlap
    with caplog.at_level(logging.INFO, logger="quaero.runner"):
        assert s.run_due(datetime(2026, 1, 1, 10, 10)) == []
        assert s.run_due(datetime(2026, 1, 1, 10, 15)) == []
    assert [o for _, o in _ticks(app, "skipper")][-2:] == ["skipped", "skipped"]
    assert [o for _, o in _ticks(app, "queuer")][-2:] == ["queued", "skipped"]  # one queued at most
    text = caplog.text
    assert "skipper's run of 2026-01-01 10:10 UTC was skipped: job" in text
    assert "queuer's run of 2026-01-01 10:10 UTC is queued" in text
    # the queued run starts once the running one ends
    first = _jobs(app, "queuer")[0].id
    with app.app_context():
        from quaero import jobs as jobops
        jobops.set_job_status(first, "completed")
    [queued] = s.run_due(datetime(2026, 1, 1, 10, 16))
    assert queued.definition == "queuer" and len(_jobs(app, "queuer")) == 2
    assert [o for _, o in _ticks(app, "queuer")][-2:] == ["started", "skipped"]


def test_after_a_restart_the_latest_missed_tick_runs_and_the_rest_are_said(two_apps, tmp_path, caplog):
    _definition(tmp_path / "jobs", "hourly", "0 * * * *")
    a, b = (app.extensions["quaero"].schedules for app in two_apps)
    a.run_due(datetime(2026, 1, 1, 9, 30))
    a.run_due(datetime(2026, 1, 1, 10, 0, 1))
    assert len(_jobs(two_apps[0], "hourly")) == 1
    with two_apps[0].app_context():   # the job ends before the servers stop
        from quaero import jobs as jobops
        jobops.set_job_status(_jobs(two_apps[0], "hourly")[0].id, "completed")
    with caplog.at_level(logging.WARNING, logger="quaero.runner"):
        [job] = b.run_due(datetime(2026, 1, 1, 14, 20))   # no server from 10:00 to 14:20
    assert "hourly missed 3 ticks between 2026-01-01 10:00 UTC and 2026-01-01 14:00 UTC" in caplog.text
    assert job.job_id in caplog.text
    assert _ticks(two_apps[0], "hourly")[-1] == (datetime(2026, 1, 1, 14, 0), "started")


def test_job_definitions_show_schedule_and_next_run(tmp_path, sqlite_url):
    _definition(tmp_path / "jobs", "nightly", "30 2 * * *", tz="Europe/Paris")
    (tmp_path / "jobs" / "plain.toml").write_text('[[steps]]\nname = "a"\nrun = "true"\n')
    app = make_app(sqlite_url, tmp_path, start=False)
    try:
        defs = {d["name"]: d for d in app.test_client().get("/api/job-definitions").json["definitions"]}
        nightly = defs["nightly"]
        assert (nightly["schedule"], nightly["timezone"], nightly["overlap"]) == (
            "30 2 * * *", "Europe/Paris", "skip")
        at = datetime.strptime(nightly["next_run_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
        assert at == next_tick("30 2 * * *", "Europe/Paris", datetime.utcnow())
        assert (defs["plain"]["schedule"], defs["plain"]["next_run_at"]) == (None, None)
    finally:
        app.extensions["quaero"].close()


def test_a_real_tick_runs_once_with_two_workers(server_factory, tmp_path):
    """``* * * * *`` with two gunicorn workers: at the next minute one job starts, not two
    (takes up to a minute)."""
    _definition(tmp_path / "jobs", "every-minute", "* * * * *")
    server = server_factory(workers=2)
    defs = httpx.get(f"{server.url}/api/job-definitions", timeout=10).json()["definitions"]
    [d] = [d for d in defs if d["name"] == "every-minute"]
    assert d["schedule"] == "* * * * *" and d["next_run_at"]

    def jobs():
        return [j for j in httpx.get(f"{server.url}/api/jobs", timeout=10).json()["jobs"]
                if j["definition"] == "every-minute"]
    [job] = eventually(jobs, timeout=75, interval=0.5, what="the scheduled run")
    started = time.time()
    eventually(lambda: jobs()[0]["status"] == "completed", timeout=20)
    time.sleep(max(0.0, 5 - (time.time() - started)))   # both workers looked again meanwhile
    runs = jobs()
    assert len(runs) == 1 or (len(runs) == 2 and runs[0]["created_at"][:16] != runs[1]["created_at"][:16]), runs
    lines = httpx.get(f"{server.url}/api/logs", params={"scope": "job", "job_id": job["id"]},
                      timeout=10).json()["logs"]
    assert [ln["message"] for ln in lines] == ["tick"]
