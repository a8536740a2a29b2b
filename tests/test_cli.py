"""``python -m quaero`` against a real gunicorn (and in-process), run as a subprocess."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest

from tests.helpers import ROOT, free_port


def define(tmp_path, name, text):
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / f"{name}.toml").write_text(textwrap.dedent(text))


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class CLI:
    """``python -m quaero ...`` in the background, its stdout and stderr collected as they
    come (the test process is gevent-patched: the reader "threads" are greenlets)."""

    def __init__(self, *args, env=None):
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.pop("QUAERO_URL", None)
        full_env.update(env or {})
        # Ctrl-C as a terminal sends it: a suite started in the background (nohup, `&` in a
        # script) ignores SIGINT, and a child inherits that, so the CLI would never see it
        self.proc = subprocess.Popen([sys.executable, "-m", "quaero", *args], cwd=ROOT,
                                     env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=_default_sigint)
        self.out, self.err = [], []
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out)),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait(self, timeout=60):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"CLI did not exit; stderr: {self.err[-20:]}")
        for t in self._readers:
            t.join(5)
        return code

    def wait_for_output(self, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        while not predicate(self.out):
            assert self.proc.poll() is None, f"CLI exited: {self.err[-20:]}"
            assert time.monotonic() < deadline, f"no such output; stderr: {self.err[-20:]}"
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.wait(10)

    def json_lines(self):
        return [json.loads(x) for x in self.out if x.startswith("{")]


def post_lines(api, job_id, messages):
    r = api.post("/api/logs", json={"logs": [
        {"level": "info", "message": m, "job_id": job_id, "step": "s"} for m in messages]})
    assert r.status_code == 201, r.text


def new_job(api):
    r = api.post("/api/jobs", json={"name": "outside", "steps": ["s"]})
    assert r.status_code == 201
    return r.json()["id"]


def test_tail_after_the_last_line_of_an_ended_job_says_how_it_ended(server_factory):
    """A resume after a finished job's last line is a 204 (nothing more will come): the
    stream had closed just as the job ended. tail exits as the job ended (it said
    'stream: 204' and exited 1: seen once in test_tail_reconnects... under load)."""
    server = server_factory()
    api = httpx.Client(base_url=server.url, timeout=30)
    try:
        job_id = new_job(api)
        post_lines(api, job_id, ["one", "two"])
        last = api.get("/api/logs", params={"scope": "job", "job_id": job_id}).json()["logs"][-1]["id"]
        api.patch(f"/api/jobs/{job_id}", json={"status": "completed"})
        cli = CLI("tail", job_id, "--url", server.url, "--after", str(last))
        assert cli.wait() == 0, cli.err
        assert any(f"job {job_id} ended: completed" in x for x in cli.err), cli.err
    finally:
        api.close()


def test_tail_reconnects_and_loses_and_repeats_nothing(server_factory):
    """The server ends every stream after about a second: the CLI resumes each time."""
    server = server_factory(env={"QUAERO_STREAM_LIFETIME": "1"})
    api = httpx.Client(base_url=server.url, timeout=30)
    job_id = new_job(api)
    post_lines(api, job_id, [f"before {i}" for i in range(5)])
    cli = CLI("tail", job_id, "--url", server.url, "--json", "--verbose")
    try:
        cli.wait_for_output(lambda out: any("before 4" in x for x in out))
        expected = [f"before {i}" for i in range(5)]
        for batch in range(25):  # about 4 seconds: several stream lifetimes
            msgs = [f"live {batch}.{i}" for i in range(20)]
            post_lines(api, job_id, msgs)
            expected += msgs
            time.sleep(0.15)
        api.patch(f"/api/jobs/{job_id}", json={"status": "completed"})
        assert cli.wait() == 0
    finally:
        cli.stop()
        api.close()
    lines = cli.json_lines()
    assert [ln["message"] for ln in lines] == expected
    ids = [ln["id"] for ln in lines]
    assert ids == sorted(set(ids))
    assert sum("resuming after line" in x for x in cli.err) >= 2, cli.err
    assert any("ended: completed" in x for x in cli.err)


def test_tail_survives_a_server_restart(tmp_path, server_factory):
    port = free_port()
    server = server_factory(port=port)
    api = httpx.Client(base_url=server.url, timeout=30)
    job_id = new_job(api)
    cli = CLI("tail", job_id, "--url", server.url, "--level", "debug", "--verbose")
    try:
        post_lines(api, job_id, [f"first {i}" for i in range(50)])
        cli.wait_for_output(lambda out: any(x.endswith("first 49") for x in out))
        server.stop()  # the stream breaks; the CLI keeps trying
        time.sleep(0.5)
        server = server_factory(port=port)
        post_lines(api, job_id, [f"second {i}" for i in range(50)])
        cli.wait_for_output(lambda out: any(x.endswith("second 49") for x in out), timeout=40)
        api.patch(f"/api/jobs/{job_id}", json={"status": "failed"})
        assert cli.wait() == 1  # the job failed
    finally:
        cli.stop()
        api.close()
    shown = [x.split("[s] ", 1)[1] for x in cli.out if "[s] " in x]
    assert shown == [f"first {i}" for i in range(50)] + [f"second {i}" for i in range(50)]
    assert any("reconnecting" in x for x in cli.err)


def test_tail_service_filters(server):
    cli = CLI("tail", "--service", "--url", server.url, "--level", "warn", "--json",
              "--limit", "0")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api:
            deadline = time.monotonic() + 30
            while 'quaero_sse_streams_open{scope="service"} 1.0' not in api.get("/metrics").text:
                assert time.monotonic() < deadline and cli.proc.poll() is None, cli.err
                time.sleep(0.05)  # until the CLI's stream is open (--limit 0: no backlog)
            api.post("/api/logs", json={"logs": [{"level": "info", "message": "quiet"},
                                                 {"level": "error", "message": "loud"}]})
        cli.wait_for_output(lambda out: any("loud" in x for x in out))
        time.sleep(0.3)
    finally:
        cli.stop()
    messages = [ln["message"] for ln in cli.json_lines()]
    assert messages.count("loud") == 1 and "quiet" not in messages


def test_tail_errors(server):
    cli = CLI("tail", "nosuchjob", "--url", server.url)
    assert cli.wait() == 1
    assert any("404" in x and "job not found" in x for x in cli.err)
    cli = CLI("tail", "--url", server.url)
    assert cli.wait() == 2  # usage: a job id or --service


@pytest.fixture
def jobs_dir(tmp_path):
    define(tmp_path, "hello", """
        description = "says hello"
        [[steps]]
        name = "greet"
        run = "echo hello from $QUAERO_STEP; echo 'WARNING: careful'; echo '[debug] hidden'"
        [[steps]]
        name = "count"
        run = "for i in 1 2 3; do echo count $i; sleep 0.2; done"
    """)
    define(tmp_path, "broken", """
        [[steps]]
        name = "fail"
        run = "echo 'ERROR: it broke' >&2; exit 4"
        [[steps]]
        name = "skipped"
        run = "echo never"
    """)
    return tmp_path / "jobs"


def test_run_on_a_server_and_list_jobs(jobs_dir, server_factory):
    server = server_factory()
    cli = CLI("run", "hello", "--url", server.url)
    assert cli.wait() == 0
    text = "\n".join(cli.out)
    for want in ("[greet] hello from greet", "WARN  [greet] WARNING: careful", "[count] count 3"):
        assert want in text
    assert "hidden" not in text  # --level defaults to info
    assert any("step count: completed" in x for x in cli.err)
    cli = CLI("run", "broken", "--url", server.url)
    assert cli.wait() == 1
    assert any("ERROR [fail] ERROR: it broke" in x for x in cli.out)
    assert not any("never" in x for x in cli.out)
    cli = CLI("jobs", "--url", server.url)
    assert cli.wait() == 0
    assert any("hello" in x and "completed" in x for x in cli.out)
    assert any("broken" in x and "failed" in x and "skipped:skipped" in x for x in cli.out)
    cli = CLI("definitions", "--url", server.url)
    assert cli.wait() == 0
    assert "hello: says hello" in cli.out
    cli = CLI("run", "nope", "--url", server.url)
    assert cli.wait() == 1 and any("no job definition named 'nope'" in x for x in cli.err)


def test_run_without_a_server_runs_nothing_unless_told_local(jobs_dir, tmp_path):
    define(tmp_path, "touch", f"""
        [[steps]]
        name = "mark"
        run = "touch {tmp_path}/ran"
    """)
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there (a mistyped --url)
    env = {"QUAERO_URL": url, "QUAERO_JOBS_DIR": str(jobs_dir),
           "QUAERO_DATABASE_URL": f"sqlite:///{tmp_path}/local.db"}
    cli = CLI("run", "touch", env=env)
    assert cli.wait() == 1
    assert any(f"cannot reach the Quaero server at {url}" in x and "--local" in x
               for x in cli.err), cli.err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "local.db").exists()
    cli = CLI("run", "hello", "--level", "debug", "--local", env=env)
    assert cli.wait() == 0
    assert any("started in this process" in x for x in cli.err)
    text = "\n".join(cli.out)
    assert "[greet] hello from greet" in text and "DEBUG [greet] [debug] hidden" in text
    assert "[count] count 3" in text


def test_ctrl_c_cancels_an_in_process_run(tmp_path):
    define(tmp_path, "slow", """
        [[steps]]
        name = "wait"
        run = "echo waiting; sleep 300"
        [[steps]]
        name = "after"
        run = "echo never"
    """)
    db = tmp_path / "local.db"
    cli = CLI("run", "slow", "--local", env={"QUAERO_JOBS_DIR": str(tmp_path / "jobs"),
                                             "QUAERO_DATABASE_URL": f"sqlite:///{db}"})
    try:
        cli.wait_for_output(lambda out: any("waiting" in x for x in out))
        cli.proc.send_signal(signal.SIGINT)
        assert cli.wait(30) == 130
    finally:
        cli.stop()
    assert any("step wait: cancelled" in x for x in cli.err)
    assert any("job" in x and "cancelled" in x for x in cli.err)
    import sqlite3
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM jobs").fetchall() == [("cancelled",)]


def test_finds_the_server_by_QUAERO_HOST_and_QUAERO_PORT(server):
    """Without QUAERO_URL the CLI goes where `python app.py` listens."""
    cli = CLI("jobs", env={"QUAERO_HOST": "127.0.0.1", "QUAERO_PORT": str(server.port)})
    assert cli.wait() == 0, cli.err
    assert any("0 of 0 jobs" in x for x in cli.err)
    cli = CLI("jobs", env={"QUAERO_HOST": "0.0.0.0", "QUAERO_PORT": str(server.port)})
    assert cli.wait() == 0, cli.err


def test_401_says_how_to_pass_the_token(server_factory):
    server = server_factory(env={"QUAERO_API_TOKEN": "s3cret"})
    for args in (["jobs"], ["tail", "--service"]):
        cli = CLI(*args, "--url", server.url)
        assert cli.wait() == 1
        assert any("401" in x and "--token" in x and "QUAERO_API_TOKEN" in x for x in cli.err), cli.err
    cli = CLI("jobs", "--url", server.url, "--token", "s3cret")
    assert cli.wait() == 0, cli.err


@pytest.mark.parametrize("command", ["tail", "run"])
def test_ctrl_c_ends_tail_and_run_without_a_traceback(command, tmp_path, server_factory):
    define(tmp_path, "slow", """
        [[steps]]
        name = "wait"
        run = "echo waiting; sleep 300"
    """)
    server = server_factory()
    api = httpx.Client(base_url=server.url, timeout=30)
    try:
        if command == "tail":
            job_id = new_job(api)
            post_lines(api, job_id, ["waiting"])
            cli = CLI("tail", job_id, "--url", server.url)
        else:
            cli = CLI("run", "slow", "--url", server.url)
        cli.wait_for_output(lambda out: any("waiting" in x for x in out))
        cli.proc.send_signal(signal.SIGINT)
        assert cli.wait(20) == 130
        if command == "run":
            job_id = api.get("/api/jobs").json()["jobs"][0]["id"]
            assert api.get(f"/api/jobs/{job_id}").json()["status"] == "running"
            api.post(f"/api/jobs/{job_id}/cancel")
    finally:
        api.close()
    err = "\n".join(cli.err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "stopped following" in err
    if command == "run":
        assert f"python -m quaero cancel {job_id}" in err


def test_definitions_print_multi_line_commands_indented(tmp_path, server_factory):
    define(tmp_path, "multi", '''
        description = "two lines"
        [[steps]]
        name = "both"
        run = """
        echo one
        echo two
        """
    ''')
    server = server_factory()
    cli = CLI("definitions", "--url", server.url)
    assert cli.wait() == 0, cli.err
    out = "\n".join(cli.out)
    assert "\\n" not in out
    assert "  - both (run):\n      echo one\n      echo two" in out


def test_definitions_list_a_broken_file_with_its_error(tmp_path, server_factory):
    define(tmp_path, "fine", """
        [[steps]]
        name = "x"
        run = "true"
    """)
    define(tmp_path, "wrong", """
        [[steps]]
        name = "x"
        bogus = 1
    """)
    server = server_factory()
    cli = CLI("definitions", "--url", server.url)
    assert cli.wait() == 0, cli.err
    out = "\n".join(cli.out)
    broken = [x for x in cli.out if x.startswith("wrong:")]
    assert broken and "cannot be started" in broken[0] and "bogus" in broken[0], out
