"""The job runner, for real: definitions from files, subprocesses, greenlets, the database.

Most tests run on SQLite and (in CI) PostgreSQL; the stream and restart tests run a real
gunicorn. Nothing is mocked: commands are run by /bin/sh, python steps are imported from
the jobs folder.
"""
import os
import signal
import subprocess
import textwrap
import time
import uuid
from datetime import datetime

import gevent
import httpx
import pytest
import sqlalchemy as sa

from tests.helpers import eventually, make_app
from tests.sse_client import SSEClient

FINISHED = ("completed", "failed", "cancelled")


# --- helpers -----------------------------------------------------------------------------

def define(tmp_path, name, text):
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    path = jobs / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


def module(tmp_path, text):
    """A python module in the jobs folder, with a name no other test uses."""
    name = f"steps_{uuid.uuid4().hex[:10]}"
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / f"{name}.py").write_text(textwrap.dedent(text))
    return name


def start(c, definition, status=201):
    r = c.post("/api/jobs", json={"definition": definition})
    assert r.status_code == status, r.json
    return r.json


def wait_job(c, job_id, until=FINISHED, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"/api/jobs/{job_id}").json
        if job["status"] in until:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}: {job}"
        gevent.sleep(0.05)


def job_lines(c, job_id, level="debug"):
    r = c.get(f"/api/logs?scope=job&job_id={job_id}&level={level}&limit=5000")
    assert r.status_code == 200
    return r.json["logs"]


def own_lines(lines, step):
    """A step's output, without the runner's own debug lines ($ command, exit code)."""
    return [(ln["level"], ln["message"]) for ln in lines if ln["step_name"] == step
            and not (ln["level"] == "debug" and (ln["message"].startswith(("$ ", "calling "))
                     or ln["message"].startswith(("exit code 0 after", "returned after"))))]


def service_messages(c):
    gevent.sleep(0.2)  # service lines are queued without waiting
    return [ln["message"] for ln in
            c.get("/api/logs?scope=service&level=debug&limit=500").json["logs"]]


def steps_of(job):
    return [(s["name"], s["status"]) for s in job["steps"]]


def pid_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead
    except (FileNotFoundError, ProcessLookupError):  # (reaped between the open and the read)
        return True


def parse_time(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def max_overlap(jobs):
    spans = [(parse_time(j["started_at"]), parse_time(j["finished_at"])) for j in jobs]
    return max(sum(1 for s, f in spans if s <= t < f) for t, _ in spans)


@pytest.fixture
def c(any_app):
    return any_app.test_client()


# --- command and python steps ------------------------------------------------------------

def test_command_steps_lines_levels_and_env(c, tmp_path):
    define(tmp_path, "cmds", """
        description = "three command steps"
        [[steps]]
        name = "out"
        run = "echo one; echo two; echo 'ERROR: boom'; echo '[debug] dbg'; echo 'Warning: careful'; echo 'info: fine'; echo 'CRITICAL disk'; echo 'errors are fine'; printf '\\\\033[31mERROR: red\\\\033[0m\\\\n'"
        [[steps]]
        name = "err"
        run = "echo e1 >&2; echo 'ERROR: e2' >&2; printf 'no newline'"
        [[steps]]
        name = "env"
        run = 'echo "$GREETING $QUAERO_JOB_ID $QUAERO_STEP"; test -z "$QUAERO_API_TOKEN"'
        env = { GREETING = "hello" }
        timeout = 30
    """)
    defs = c.get("/api/job-definitions").json["definitions"]
    assert [d["name"] for d in defs] == ["cmds"]
    assert defs[0]["description"] == "three command steps"
    assert [(s["name"], s["kind"]) for s in defs[0]["steps"]] == [
        ("out", "run"), ("err", "run"), ("env", "run")]
    assert "hello" not in str(defs)  # env values are not exposed

    job = start(c, "cmds")
    assert job["status"] in ("pending", "running") and job["definition"] == "cmds"
    job = wait_job(c, job["id"])
    assert job["status"] == "completed", job
    assert steps_of(job) == [("out", "completed"), ("err", "completed"), ("env", "completed")]
    assert all(s["started_at"] and s["finished_at"] for s in job["steps"])
    lines = job_lines(c, job["id"])
    assert own_lines(lines, "out") == [
        ("info", "one"), ("info", "two"), ("error", "ERROR: boom"), ("debug", "[debug] dbg"),
        ("warn", "Warning: careful"), ("info", "info: fine"), ("error", "CRITICAL disk"),
        ("info", "errors are fine"), ("error", "\x1b[31mERROR: red\x1b[0m")]
    # stdout and stderr are two pipes: their relative order is not kept
    assert sorted(own_lines(lines, "err")) == [
        ("error", "ERROR: e2"), ("info", "no newline"), ("warn", "e1")]
    assert own_lines(lines, "env") == [("info", f"hello {job['id']} env")]
    assert [ln["line_number"] for ln in lines] == list(range(1, len(lines) + 1))
    assert ("debug", "$ echo e1 >&2; echo 'ERROR: e2' >&2; printf 'no newline'") in [
        (ln["level"], ln["message"]) for ln in lines]
    assert job["log_counts"]["error"] == 4
    messages = service_messages(c)
    assert any(job["id"] in m and "started" in m for m in messages)
    assert any(job["id"] in m and "completed" in m for m in messages)


def test_burst_of_lines_all_arrive_in_order(c, tmp_path):
    define(tmp_path, "burst", """
        [[steps]]
        name = "burst"
        run = '"$QUAERO_PYTHON" -c "import sys; [sys.stdout.write(f\\"line {i}\\\\n\\") for i in range(30000)]"'
    """)
    job = wait_job(c, start(c, "burst")["id"], timeout=60)
    assert job["status"] == "completed"
    assert job["log_counts"]["info"] == 30000
    seen, after = [], 0
    while True:
        page = c.get(f"/api/logs?scope=job&job_id={job['id']}&after={after}&limit=5000").json
        seen += [ln["message"] for ln in page["logs"]]
        if not page["meta"]["has_more"]:
            break
        after = page["last_id"]
    assert seen == [f"line {i}" for i in range(30000)]


def test_python_steps_route_logging_to_their_step(c, tmp_path):
    mod = module(tmp_path, """
        import logging
        import gevent
        log = logging.getLogger("mysteps")

        def levels(ctx):
            log.debug("d in %s", ctx.step)
            log.info("i in %s of %s", ctx.step, ctx.job_id)
            gevent.sleep(0.05)
            log.warning("w")
            log.error("e")
            logging.getLogger().info("the root logger too")
            try:
                1 / 0
            except ZeroDivisionError:
                log.exception("caught")

        def no_context():
            logging.getLogger("other.module").info("no ctx argument: %s", 42)
    """)
    define(tmp_path, "py", f"""
        [[steps]]
        name = "levels"
        python = "{mod}:levels"
        [[steps]]
        name = "plain"
        python = "{mod}:no_context"
    """)
    outside = []

    def noise():  # logging elsewhere in the process, while the steps run
        while True:
            import logging
            logging.getLogger("elsewhere").warning("outside any step")
            outside.append(1)
            gevent.sleep(0.01)
    g = gevent.spawn(noise)
    try:
        job = wait_job(c, start(c, "py")["id"])
    finally:
        g.kill()
    assert job["status"] == "completed", job
    assert outside
    lines = job_lines(c, job["id"])
    got = own_lines(lines, "levels")
    assert got[:5] == [("debug", "d in levels"), ("info", f"i in levels of {job['id']}"),
                       ("warn", "w"), ("error", "e"), ("info", "the root logger too")]
    assert got[5][0] == "error" and got[5][1].startswith("caught\nTraceback")
    assert "ZeroDivisionError" in got[5][1] and len(got) == 6
    assert own_lines(lines, "plain") == [("info", "no ctx argument: 42")]
    assert not any("outside any step" in ln["message"] for ln in lines)
    assert not any("i in levels" in m for m in service_messages(c))


def test_python_step_logging_fast_loses_nothing(c, tmp_path):
    mod = module(tmp_path, """
        import logging
        log = logging.getLogger("chatty")

        def chatty():
            for i in range(30000):  # never yields by itself
                log.info("chat %d", i)
    """)
    define(tmp_path, "chatty", f"""
        [[steps]]
        name = "chatty"
        python = "{mod}:chatty"
    """)
    job = wait_job(c, start(c, "chatty")["id"], timeout=120)
    assert job["status"] == "completed"
    assert job["log_counts"]["info"] == 30000


# --- failure, skipping, timeouts ---------------------------------------------------------

def test_failed_step_fails_the_job_and_skips_the_rest(c, tmp_path):
    define(tmp_path, "fails", """
        [[steps]]
        name = "ok"
        run = "echo fine"
        [[steps]]
        name = "flaky"
        run = "echo trying; exit 3"
        continue_on_error = true
        [[steps]]
        name = "broken"
        run = "echo about to fail; exit 2"
        [[steps]]
        name = "never"
        run = "echo never"
    """)
    job = wait_job(c, start(c, "fails")["id"])
    assert job["status"] == "failed"
    assert steps_of(job) == [("ok", "completed"), ("flaky", "failed"), ("broken", "failed"),
                             ("never", "skipped")]
    lines = job_lines(c, job["id"])
    messages = [ln["message"] for ln in lines]
    assert "never" not in messages
    assert any(ln["level"] == "error" and ln["step_name"] == "broken"
               and "failed: exit code 2" in ln["message"] for ln in lines)
    assert any(ln["level"] == "warn" and ln["step_name"] == "flaky"
               and "continue_on_error" in ln["message"] for ln in lines)
    assert any(job["id"] in m and "failed: step broken failed: exit code 2" in m
               for m in service_messages(c))


def test_python_step_exception_and_import_error(c, tmp_path):
    mod = module(tmp_path, """
        def boom():
            raise ValueError("nope")
    """)
    define(tmp_path, "pyfail", f"""
        [[steps]]
        name = "boom"
        python = "{mod}:boom"
        [[steps]]
        name = "later"
        run = "echo later"
    """)
    define(tmp_path, "pymissing", """
        [[steps]]
        name = "missing"
        python = "no_such_module_here:run"
    """)
    job = wait_job(c, start(c, "pyfail")["id"])
    assert job["status"] == "failed"
    assert steps_of(job) == [("boom", "failed"), ("later", "skipped")]
    err = [ln for ln in job_lines(c, job["id"]) if ln["level"] == "error"]
    assert len(err) == 1 and "ValueError: nope" in err[0]["message"]
    assert "Traceback" in err[0]["message"]
    job = wait_job(c, start(c, "pymissing")["id"])
    assert job["status"] == "failed"
    assert any("cannot load no_such_module_here:run" in ln["message"]
               for ln in job_lines(c, job["id"]))


def test_step_timeout(tmp_path, database_url):
    app = make_app(database_url, tmp_path, QUAERO_KILL_GRACE=1)
    try:
        c = app.test_client()
        mod = module(tmp_path, """
            import gevent
            def slow():
                gevent.sleep(60)
        """)
        define(tmp_path, "slow", f"""
            [[steps]]
            name = "sleepy"
            run = "echo start; sleep 60"
            timeout = 0.5
            continue_on_error = true
            [[steps]]
            name = "pyslow"
            python = "{mod}:slow"
            timeout = 0.5
        """)
        started = time.monotonic()
        job = wait_job(c, start(c, "slow")["id"])
        assert time.monotonic() - started < 15
        assert job["status"] == "failed"
        assert steps_of(job) == [("sleepy", "failed"), ("pyslow", "failed")]
        messages = [ln["message"] for ln in job_lines(c, job["id"], "error")]
        assert any("'sleepy' timed out after 0.5 s" in m for m in messages)
        assert any("'pyslow' timed out after 0.5 s" in m for m in messages)
    finally:
        app.extensions["quaero"].close()


# --- cancel, rerun, the bound ------------------------------------------------------------

def test_cancel_kills_the_whole_process_group(tmp_path, database_url):
    app = make_app(database_url, tmp_path, QUAERO_KILL_GRACE=1)
    try:
        c = app.test_client()
        define(tmp_path, "long", """
            [[steps]]
            name = "long"
            run = '''
            sh -c 'trap "" TERM; echo "stubborn $$"; while true; do sleep 0.2; done' &
            sleep 300 &
            echo "sleeper $!"
            echo "leader $$"
            wait
            '''
            [[steps]]
            name = "after"
            run = "echo never"
        """)
        job_id = start(c, "long")["id"]

        def pids():
            found = {}
            for ln in job_lines(c, job_id):
                word, _, pid = ln["message"].partition(" ")
                if word in ("stubborn", "sleeper", "leader") and pid.isdigit():
                    found[word] = int(pid)
            return found
        eventually(lambda: len(pids()) == 3, what="the step's processes")
        procs = pids()
        assert not any(pid_gone(p) for p in procs.values())
        asked = time.monotonic()
        r = c.post(f"/api/jobs/{job_id}/cancel")
        assert r.status_code == 202
        job = wait_job(c, job_id, until=("cancelled",), timeout=15)
        assert time.monotonic() - asked < 10
        assert steps_of(job) == [("long", "cancelled"), ("after", "skipped")]
        eventually(lambda: all(pid_gone(p) for p in procs.values()), timeout=10,
                 what="every process of the group to be killed (SIGTERM, then SIGKILL)")
        lines = job_lines(c, job_id)
        assert "never" not in [ln["message"] for ln in lines]
        assert any(ln["level"] == "warn" and "cancelled by request" in ln["message"]
                   for ln in lines)
        assert any(job_id in m and "was cancelled" in m for m in service_messages(c))
        assert c.post(f"/api/jobs/{job_id}/cancel").status_code == 409
    finally:
        app.extensions["quaero"].close()


def test_concurrent_cancels_of_a_running_job_stop_it_once(tmp_path, database_url, caplog):
    """20 cancels at once of a job this process runs: the first stops it (202), the others
    find it cancelled (409, as a cancel of an ended job); it ends and is announced once."""
    caplog.set_level("INFO", logger="quaero.jobs")
    app = make_app(database_url, tmp_path, QUAERO_KILL_GRACE=1)
    try:
        c = app.test_client()
        define(tmp_path, "long", """
            [[steps]]
            name = "long"
            run = "echo up; sleep 300"
        """)
        job_id = start(c, "long")["id"]
        eventually(lambda: "up" in [ln["message"] for ln in job_lines(c, job_id)],
                 what="the step to run")
        from gevent.event import Event
        go = Event()

        def cancel():
            go.wait()
            return c.post(f"/api/jobs/{job_id}/cancel")
        calls = [gevent.spawn(cancel) for _ in range(20)]
        go.set()
        gevent.joinall(calls, raise_error=True)
        answers = [g.value for g in calls]
        assert sorted(r.status_code for r in answers) == [202] + [409] * 19
        assert {r.json["error"] for r in answers if r.status_code == 409} == {"job is cancelled"}
        assert wait_job(c, job_id)["status"] == "cancelled"
        announced = [r for r in caplog.records
                     if r.name == "quaero.jobs" and "was cancelled" in r.getMessage()]
        assert len(announced) == 1
    finally:
        app.extensions["quaero"].close()


def test_cancel_pending_and_python_steps(tmp_path, sqlite_url):
    app = make_app(sqlite_url, tmp_path, QUAERO_MAX_RUNNING=1)
    try:
        c = app.test_client()
        mod = module(tmp_path, """
            import logging, gevent
            def forever(ctx):
                while True:
                    logging.getLogger("loop").info("tick")
                    gevent.sleep(0.05)
        """)
        define(tmp_path, "forever", f"""
            [[steps]]
            name = "loop"
            python = "{mod}:forever"
        """)
        first = start(c, "forever")["id"]
        second = start(c, "forever")["id"]
        wait_job(c, first, until=("running",))
        eventually(lambda: len(job_lines(c, first)) > 3, what="ticks")
        assert c.get(f"/api/jobs/{second}").json["status"] == "pending"
        r = c.post(f"/api/jobs/{second}/cancel")
        assert r.status_code == 202 and r.json["status"] == "cancelled"
        r = c.post(f"/api/jobs/{first}/cancel")
        assert r.status_code == 202
        job = wait_job(c, first, until=("cancelled",), timeout=10)
        assert steps_of(job) == [("loop", "cancelled")]
        n = len(job_lines(c, first))
        gevent.sleep(0.3)
        assert len(job_lines(c, first)) == n  # the greenlet was stopped
        assert c.get(f"/api/jobs/{second}").json["started_at"] is None
    finally:
        app.extensions["quaero"].close()


def test_rerun(c, tmp_path):
    define(tmp_path, "again", """
        [[steps]]
        name = "hi"
        run = "echo hi $QUAERO_JOB_ID"
    """)
    first = wait_job(c, start(c, "again")["id"])
    r = c.post(f"/api/jobs/{first['id']}/rerun")
    assert r.status_code == 201
    second = r.json
    assert second["id"] != first["id"] and second["definition"] == "again"
    second = wait_job(c, second["id"])
    assert second["status"] == "completed"
    assert own_lines(job_lines(c, second["id"]), "hi") == [("info", f"hi {second['id']}")]
    producer = c.post("/api/jobs", json={"name": "outside", "steps": ["a"]}).json
    assert c.post(f"/api/jobs/{producer['id']}/rerun").status_code == 409


def test_concurrency_bound_and_order(tmp_path, database_url):
    app = make_app(database_url, tmp_path, QUAERO_MAX_RUNNING=2)
    try:
        c = app.test_client()
        define(tmp_path, "nap", """
            [[steps]]
            name = "nap"
            run = "sleep 0.6"
        """)
        ids = [start(c, "nap")["id"] for _ in range(5)]
        peak_pending = 0
        deadline = time.monotonic() + 60
        while True:
            jobs = c.get("/api/jobs").json["jobs"]
            running = sum(j["status"] == "running" for j in jobs)
            assert running <= 2
            peak_pending = max(peak_pending, sum(j["status"] == "pending" for j in jobs))
            if all(j["status"] == "completed" for j in jobs):
                break
            assert time.monotonic() < deadline
            gevent.sleep(0.05)
        assert peak_pending >= 2
        jobs = [c.get(f"/api/jobs/{i}").json for i in ids]
        assert max_overlap(jobs) == 2
        starts = [parse_time(j["started_at"]) for j in jobs]
        assert starts == sorted(starts)  # the rest waited pending, in order
    finally:
        app.extensions["quaero"].close()


def test_two_runners_on_one_database_never_run_a_job_twice(tmp_path, database_url):
    """Two processes' runners (here: two apps) share the database and the bound."""
    a = make_app(database_url, tmp_path, QUAERO_MAX_RUNNING=2, QUAERO_RUNNER_POLL=0.2)
    b = make_app(database_url, tmp_path, QUAERO_MAX_RUNNING=2, QUAERO_RUNNER_POLL=0.2)
    try:
        ca, cb = a.test_client(), b.test_client()
        record = tmp_path / "ran.txt"
        define(tmp_path, "once", f"""
            [[steps]]
            name = "once"
            run = 'echo "$QUAERO_JOB_ID" >> {record}; sleep 0.3'
        """)
        ids = [start(ca if i % 2 else cb, "once")["id"] for i in range(8)]
        jobs = [wait_job(ca, i, timeout=60) for i in ids]
        assert all(j["status"] == "completed" for j in jobs)
        ran = record.read_text().split()
        assert sorted(ran) == sorted(ids)  # each once
        assert max_overlap(jobs) <= 2
        ran_by = {i: (i in a.extensions["quaero"].runner._running) for i in ids}
        assert ran_by  # (both runners take part; which one ran what is not fixed)
    finally:
        a.extensions["quaero"].close()
        b.extensions["quaero"].close()


_YIELD_IN_FORKED_CHILD = False


def _yield_in_forked_child():
    if _YIELD_IN_FORKED_CHILD:
        gevent.sleep(0)


os.register_at_fork(after_in_child=_yield_in_forked_child)


def test_a_library_that_yields_at_fork_never_makes_a_command_run_twice(tmp_path, sqlite_url):
    """A library with an at-fork handler that yields (the OpenTelemetry SDK's providers do)
    must not make a forked child resume the server's greenlets (gevent #2202): commands are
    spawned without running Python in the child, so each runs once, from its own job."""
    global _YIELD_IN_FORKED_CHILD
    app = make_app(sqlite_url, tmp_path, QUAERO_MAX_RUNNING=4, QUAERO_RUNNER_POLL=0.2)
    record = tmp_path / "ran.txt"
    define(tmp_path, "once", f"""
        [[steps]]
        name = "once"
        run = 'echo "$QUAERO_JOB_ID $$" >> {record}; sleep 0.2'
    """)
    copies = tmp_path / "copies.txt"
    server = os.getpid()

    def probe():  # a busy server greenlet that notes any copy of itself running elsewhere
        while True:
            gevent.sleep(0)  # always ready: a child that runs the hub runs it
            if os.getpid() != server:
                with open(copies, "a") as f:
                    f.write(f"{os.getpid()}\n")

    _YIELD_IN_FORKED_CHILD = True
    probing = gevent.spawn(probe)
    try:
        c = app.test_client()
        ids = [start(c, "once")["id"] for _ in range(8)]
        jobs = [wait_job(c, i, timeout=60) for i in ids]
    finally:
        _YIELD_IN_FORKED_CHILD = False
        probing.kill()
        app.extensions["quaero"].close()
    assert not copies.exists(), f"server greenlets ran in {len(copies.read_text().split())} children"
    assert [j["status"] for j in jobs] == ["completed"] * 8
    ran = [line.split()[0] for line in record.read_text().splitlines()]
    assert sorted(ran) == sorted(ids)  # each once


def test_a_claim_starts_the_job_after_the_end_that_made_room(tmp_path, pg_database):
    """A claim waits for its turn (the claim lock on PostgreSQL); a job that ends meanwhile
    makes room for it. The claimed job's started_at is not older than that end: taken
    before the wait, it said three jobs ran at once under a bound of two (the two-runner
    test failed 2 runs in 30 so)."""
    from tests.helpers import reset_pg
    from quaero import jobs as jobops
    from quaero.runner.leases import CLAIM_LOCK, Leases
    reset_pg(pg_database)
    app = make_app(pg_database, tmp_path, start=False)  # this test's Leases is the only runner
    engine = app.extensions["quaero"].engine
    try:
        with app.app_context():
            first = jobops.create_job("first", ["a"], definition="d").id
            second = jobops.create_job("second", ["a"], definition="d").id
        leases = Leases(engine, "host", 30.0)
        leases.begin(os.getpid())
        assert leases.claim(first, 1)
        with engine.connect() as holder:       # another claim holds the claim lock
            holder.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": CLAIM_LOCK})
            claim = gevent.spawn(leases.claim, second, 1)
            waiting = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                              "AND NOT granted")
            eventually(lambda: holder.execute(waiting).scalar() == 1, what="the claim to wait")
            with app.app_context():
                jobops.set_job_status(first, "completed")
            holder.commit()
        assert claim.get(timeout=20) is True
        with engine.connect() as conn:
            times = dict(conn.execute(sa.text(
                "SELECT id, started_at FROM jobs WHERE id = :s UNION ALL "
                "SELECT id, finished_at FROM jobs WHERE id = :f"), {"s": second, "f": first}).all())
        assert times[second] >= times[first]
    finally:
        app.extensions["quaero"].close()


@pytest.mark.parametrize("text, level", [
    ("ERROR: boom", "error"),
    ("\x1b[31mERROR: boom\x1b[0m", "error"),
    ("\x1b[1;33mWARNING disk almost full", "warn"),
    ("\x1b[0m\x1b[36m[debug]\x1b[0m cache hit", "debug"),
    ("\x1b[31mERROR\x1b[0m: split by a reset", "error"),
    ("  \x1b[2mfatal: no repository", "error"),
    ("\x1b[31merrors are fine", "info"),        # not a level word
    ("\x1b[31m", "info"),
    ("\x1b]0;title\x07ERROR: x", "info"),     # not a colour code: left alone
    ("plain text", "info"),
])
def test_line_level_reads_the_word_after_colour_codes(text, level):
    from quaero.models import LEVELS
    from quaero.runner import line_level
    assert line_level(text, LEVELS["info"]) == LEVELS[level]


# --- definition files --------------------------------------------------------------------

BAD = {
    "syntax": ('name = "x\n[[steps]]\n', "not valid TOML"),
    "both": ('[[steps]]\nname = "a"\nrun = "x"\npython = "m:f"\n', "either run"),
    "nosteps": ('description = "nothing to do"\n', "no steps"),
    "typo": ('[[steps]]\nname = "a"\ncmd = "echo"\n', "unknown key cmd"),
    "twice": ('[[steps]]\nname = "a"\nrun = "x"\n[[steps]]\nname = "a"\nrun = "y"\n',
              "'a' is used twice"),
    "badtimeout": ('[[steps]]\nname = "a"\nrun = "x"\ntimeout = -1\n',
                   "timeout must be a positive number"),
    "badpython": ('[[steps]]\nname = "a"\npython = "just_a_module"\n',
                  'python must be "module:function"'),
    "clash": ('name = "good"\n[[steps]]\nname = "a"\nrun = "x"\n', "good.toml already defines"),
    "slash": ('[[steps]]\nname = "build/test"\nrun = "x"\n',
              "step 1 ('build/test'): step names cannot contain '/'"),
}


def test_definition_files_with_errors(c, any_app, tmp_path):
    define(tmp_path, "good", """
        description = "fine"
        [[steps]]
        name = "a"
        run = "echo ok"
    """)
    for name, (text, _) in BAD.items():
        (tmp_path / "jobs" / f"{name}.toml").write_text(text)
    (tmp_path / "jobs" / "notes.txt").write_text("not a definition")
    defs = c.get("/api/job-definitions").json["definitions"]
    assert [d["name"] for d in defs] == sorted(["good", *BAD])
    assert [d["name"] for d in defs if "error" not in d] == ["good"]
    broken = {d["name"]: d for d in defs if "error" in d}
    for name, (_, problem) in BAD.items():  # listed with what is wrong, nothing to start
        assert problem in broken[name]["error"], (name, broken[name])
        assert broken[name]["file"] == f"{name}.toml" and broken[name]["steps"] == []
    runner = any_app.extensions["quaero"].runner
    messages = service_messages(c)
    for name, (_, problem) in BAD.items():
        path = str(tmp_path / "jobs" / f"{name}.toml")
        assert problem in runner.library.errors[path], (name, runner.library.errors[path])
        assert any(path in m and problem in m for m in messages), (name, messages)
    r = c.post("/api/jobs", json={"definition": "syntax"})
    assert r.status_code == 404  # no usable definition by that name, and why
    assert "syntax.toml" in r.json["error"] and "not valid TOML" in r.json["error"]
    r = c.post("/api/jobs", json={"definition": "slash"})
    assert r.status_code == 404 and "step names cannot contain '/'" in r.json["error"]
    assert c.post("/api/jobs", json={"definition": "nope"}).status_code == 404
    assert wait_job(c, start(c, "good")["id"])["status"] == "completed"
    # fixed on disk: picked up without a restart; reported once, not on every read
    (tmp_path / "jobs" / "syntax.toml").write_text('[[steps]]\nname = "s"\nrun = "echo fixed"\n')
    fixed = [d for d in c.get("/api/job-definitions").json["definitions"] if d["name"] == "syntax"]
    assert [("error" in d, [s["name"] for s in d["steps"]]) for d in fixed] == [(False, ["s"])]
    c.get("/api/job-definitions")
    assert sum("typo.toml" in m for m in service_messages(c)) == 1


# --- recovery after a crash --------------------------------------------------------------

def test_jobs_of_dead_runners_are_failed_at_start(database_url, tmp_path):
    # the runner starts (and recovers) only once the jobs below are in place, as in a
    # worker that starts after others died
    any_app = make_app(database_url, tmp_path, start=False)
    try:
        _dead_runners_are_failed_at_start(any_app, any_app.test_client())
    finally:
        any_app.extensions["quaero"].close()


def _dead_runners_are_failed_at_start(any_app, c):
    from quaero import jobs as jobops
    from quaero.models import Job, heartbeats_t, leases_t
    from quaero.runner.leases import epoch_ms as _epoch_ms, runner_number as _runner_number
    import socket
    engine = any_app.extensions["quaero"].engine
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    owners = {
        "dead_pid": _runner_number(host, dead.pid),
        "live_elsewhere": _runner_number("another-host.example", 4242),
        "stale_elsewhere": _runner_number("third-host.example", 4343),
        "no_lease": None,
    }
    beats = {"dead_pid": _epoch_ms(), "live_elsewhere": _epoch_ms(),
             "stale_elsewhere": _epoch_ms() - 600_000}
    ids = {}
    with any_app.app_context():
        for label, owner in owners.items():
            job = jobops.create_job(label, ["s"], definition="gone")
            ids[label] = job.id
        producer = jobops.create_job("producer", ["s"]).id
    with engine.begin() as conn:
        conn.execute(sa.update(Job.__table__).where(Job.__table__.c.id.in_(
            list(ids.values()) + [producer])).values(status="running"))
        for label, owner in owners.items():
            if owner is None:
                continue
            conn.execute(leases_t.insert().values(job_id=ids[label], runner_id=owner))
            conn.execute(heartbeats_t.insert().values(runner_id=owner, beat_ms=beats[label]))
    any_app.extensions["quaero"].start()
    for label in ("dead_pid", "stale_elsewhere", "no_lease"):
        assert wait_job(c, ids[label], timeout=15)["status"] == "failed", label
    gevent.sleep(0.5)
    assert c.get(f"/api/jobs/{ids['live_elsewhere']}").json["status"] == "running"
    assert c.get(f"/api/jobs/{producer}").json["status"] == "running"  # not a runner's job
    messages = service_messages(c)

    def said(label, why):
        return any(ids[label] in m and "failed" in m and why in m for m in messages)
    assert said("dead_pid", f"pid {dead.pid} on {host}) no longer exists")
    assert said("stale_elsewhere", "has sent no heartbeat")
    assert said("no_lease", "no Quaero process owns it")


# --- against a real server ---------------------------------------------------------------

@pytest.fixture
def served(tmp_path, server_factory):
    define(tmp_path, "steps3", """
        [[steps]]
        name = "ready"
        run = "while [ ! -e go ]; do sleep 0.02; done"
        [[steps]]
        name = "one"
        run = "echo first; echo 'WARNING: second'"
        [[steps]]
        name = "two"
        run = "for i in 1 2 3 4 5; do echo tick $i; sleep 0.1; done"
        [[steps]]
        name = "three"
        run = "echo '[debug] last'"
    """)
    define(tmp_path, "long", """
        [[steps]]
        name = "wait"
        run = "echo pid $$; sleep 300"
        [[steps]]
        name = "never"
        run = "echo never"
    """)
    return server_factory(env={"QUAERO_KILL_GRACE": "2"})


def read_until_end(stream, timeout=30):
    return stream.events(until=lambda e: e.event == "end", timeout=timeout)


def test_status_and_end_events_on_a_real_stream(served):
    api = httpx.Client(base_url=served.url, timeout=30)
    job = api.post("/api/jobs", json={"definition": "steps3"}).json()
    s = SSEClient(f"{served.url}/api/logs/stream?scope=job&job_id={job['id']}&level=debug")
    # the steps start once the stream is open (a loaded machine connected after step one
    # had ended, and its 'running' was never on this stream)
    (served.tmp_path / "jobs" / "go").touch()
    try:
        events = read_until_end(s)
    finally:
        s.close()
        api.close()
    assert events[-1].event == "end"
    assert events[-1].json()["job"] == {"id": job["id"], "status": "completed"}
    statuses = [e.json() for e in events if e.event == "status"]
    seen = []
    for st in statuses:
        for step in st["steps"]:
            if (step["name"], step["status"]) not in seen:
                seen.append((step["name"], step["status"]))
    for name in ("one", "two", "three"):
        assert seen.index((name, "running")) < seen.index((name, "completed"))
    assert seen.index(("one", "completed")) < seen.index(("two", "running"))
    assert statuses[-1]["job"]["status"] == "completed"
    assert any(st["job"]["status"] == "running" for st in statuses)
    messages = [ln["message"] for e in events if e.event == "logs" for ln in e.json()["logs"]]
    assert [m for m in messages if not m.startswith(("$ ", "exit code"))] == [
        "first", "WARNING: second", "tick 1", "tick 2", "tick 3", "tick 4", "tick 5",
        "[debug] last"]


def test_cancel_on_a_real_stream_ends_it(served):
    api = httpx.Client(base_url=served.url, timeout=30)
    job = api.post("/api/jobs", json={"definition": "long"}).json()
    s = SSEClient(f"{served.url}/api/logs/stream?scope=job&job_id={job['id']}")
    try:
        def started(e):
            return e.event == "logs" and any(
                ln["message"].startswith("pid ") for ln in e.json()["logs"])
        events = s.events(until=started, timeout=20)
        pid = next(int(ln["message"].split()[1]) for e in events if e.event == "logs"
                   for ln in e.json()["logs"] if ln["message"].startswith("pid "))
        asked = time.monotonic()
        assert api.post(f"/api/jobs/{job['id']}/cancel").status_code == 202
        events += read_until_end(s, timeout=20)
        assert time.monotonic() - asked < 10
    finally:
        s.close()
        api.close()
    assert events[-1].json()["job"] == {"id": job["id"], "status": "cancelled"}
    last = [e.json() for e in events if e.event == "status"][-1]
    assert last["job"]["status"] == "cancelled"
    assert [(st["name"], st["status"]) for st in last["steps"]] == [
        ("wait", "cancelled"), ("never", "skipped")]
    eventually(lambda: pid_gone(pid), timeout=10, what="the step's process to die")


def test_a_killed_server_leaves_its_job_failed_after_restart(tmp_path, served, server_factory):
    api = httpx.Client(base_url=served.url, timeout=30)
    job_id = api.post("/api/jobs", json={"definition": "long"}).json()["id"]
    pid = None
    try:
        def step_pid():
            for ln in api.get(f"/api/logs?scope=job&job_id={job_id}").json()["logs"]:
                if ln["message"].startswith("pid "):
                    return int(ln["message"].split()[1])
        eventually(lambda: step_pid() is not None, what="the step to start")
        pid = step_pid()
        os.killpg(served.proc.pid, signal.SIGKILL)  # gunicorn and its worker die at once
        served.proc.wait()
        api.close()
        again = server_factory(env={"QUAERO_KILL_GRACE": "2"})
        api = httpx.Client(base_url=again.url, timeout=30)

        def status():
            return api.get(f"/api/jobs/{job_id}").json()["status"]
        eventually(lambda: status() == "failed", timeout=20, what="recovery")
        messages = [ln["message"] for ln in
                    api.get("/api/logs?scope=service&limit=500").json()["logs"]]
        assert any(job_id in m and "failed" in m and "no longer exists" in m for m in messages)
        # a graceful stop ends the running job and kills its processes
        job2 = api.post("/api/jobs", json={"definition": "long"}).json()["id"]
        eventually(lambda: any(ln["message"].startswith("pid ") for ln in api.get(
            f"/api/logs?scope=job&job_id={job2}").json()["logs"]), what="second job")
        pid2 = next(int(ln["message"].split()[1]) for ln in api.get(
            f"/api/logs?scope=job&job_id={job2}").json()["logs"] if ln["message"].startswith("pid "))
        again.stop()
        eventually(lambda: pid_gone(pid2), timeout=10, what="the stopped server's step to die")
        engine = sa.create_engine(again.env["QUAERO_DATABASE_URL"])
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT status FROM jobs WHERE id = :i"),
                                {"i": job2}).scalar() == "failed"
        engine.dispose()
    finally:
        api.close()
        if pid and not pid_gone(pid):  # the orphan of the SIGKILLed server
            os.killpg(pid, signal.SIGKILL)


def test_two_gunicorn_workers_share_the_jobs(tmp_path, server_factory):
    """Each worker process has a runner: every job runs once, the bound holds across them,
    and a cancel reaches the job whichever worker answers it."""
    record = tmp_path / "ran.txt"
    define(tmp_path, "once", f"""
        [[steps]]
        name = "once"
        run = 'echo "$QUAERO_JOB_ID $PPID" >> {record}; sleep 0.5'
    """)
    define(tmp_path, "long", """
        [[steps]]
        name = "wait"
        run = "echo pid $$; sleep 300"
    """)
    srv = server_factory(workers=2, env={"QUAERO_MAX_RUNNING": "2", "QUAERO_KILL_GRACE": "2"})
    with httpx.Client(base_url=srv.url, timeout=30) as api:
        ids = [api.post("/api/jobs", json={"definition": "once"}).json()["id"] for _ in range(8)]
        deadline = time.monotonic() + 90
        while True:  # one query: a consistent snapshot of the jobs
            assert api.get("/api/jobs?status=running").json()["total"] <= 2
            jobs = api.get("/api/jobs").json()["jobs"]
            if all(j["status"] in FINISHED for j in jobs):
                break
            assert time.monotonic() < deadline, jobs
            time.sleep(0.05)
        assert all(j["status"] == "completed" for j in jobs)
        assert max_overlap(jobs) <= 2
        ran = [line.split()[0] for line in record.read_text().splitlines()]
        assert sorted(ran) == sorted(ids)  # each job ran exactly once
        service = [ln["message"] for ln in
                   api.get("/api/logs?scope=service&level=warn&limit=500").json()["logs"]]
        assert not [m for m in service if "runner" in m], service
        for _ in range(3):  # cancel answered by either worker
            job_id = api.post("/api/jobs", json={"definition": "long"}).json()["id"]

            def step_pid():
                for ln in api.get(f"/api/logs?scope=job&job_id={job_id}").json()["logs"]:
                    if ln["message"].startswith("pid "):
                        return int(ln["message"].split()[1])
            eventually(step_pid, what="the long step")
            pid = step_pid()
            asked = time.monotonic()
            assert api.post(f"/api/jobs/{job_id}/cancel").status_code == 202
            eventually(lambda: api.get(f"/api/jobs/{job_id}").json()["status"] == "cancelled",
                     timeout=15, what="cancelled")
            eventually(lambda: pid_gone(pid), timeout=15, what="the step's process to die")
            assert time.monotonic() - asked < 12
