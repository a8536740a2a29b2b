"""Quaero as an installable package, and a command line without surprises (issue 21).

The client side (``quaero.client``, the HTTP commands) loads no server code; ``quaero
--version``, ``/healthz`` and the pages say the version; ``serve`` says what to install and
checks its config file; options go before or after a command's name and ``--`` ends them;
``pipe`` ends its job as told; ``tail`` gives up on a dead server and says so; ``--json`` is
one object per line; a missing and a wrong token are told apart. Commands run as
subprocesses from a folder that is not the repository."""
import json
import os
import subprocess
import sys
import time
import tomllib

import httpx
import pytest

from quaero import __version__
from quaero.config import Config, ConfigError
from tests.helpers import ROOT, Server, free_port

SERVER_ONLY = ("flask", "gevent", "sqlalchemy")


def quaero(*args, url=None, env=None, cwd=None, timeout=60, python=(), **kwargs):
    """``python [PYTHON] -m quaero ARGS`` to its end, with only ``url`` (no token) from
    outside, run from the repository's parent folder."""
    full = dict(os.environ, PYTHONPATH=ROOT, QUAERO_FLUSH_TIMEOUT="15")
    for name in ("QUAERO_URL", "QUAERO_API_TOKEN", "QUAERO_CONFIG"):
        full.pop(name, None)
    if url:
        full["QUAERO_URL"] = url
    full.update(env or {})
    return subprocess.run([sys.executable, *python, "-m", "quaero", *args], env=full,
                          cwd=cwd or os.path.dirname(ROOT), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def dead_url():
    return f"http://127.0.0.1:{free_port()}"  # nobody listens there


# --- the package ---------------------------------------------------------------------------

def test_the_client_side_imports_no_server_code():
    probe = ("import sys, json; import quaero.client, quaero.cli, quaero.producer; "
             "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], env=dict(
        os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, check=True).stdout)
    assert "httpx" in loaded and not set(SERVER_ONLY) & set(loaded)
    # the whole command, as `python -X importtime` sees it: exec (to no server) and tail
    for args in (["exec", "--", "true"], ["tail", "--service"]):
        r = quaero(*args, python=("-X", "importtime"), url=dead_url(),
                   env={"QUAERO_FLUSH_TIMEOUT": "0.2"})
        imported = {ln.rsplit("|", 1)[-1].strip().split(".")[0]
                    for ln in r.stderr.splitlines() if ln.startswith("import time:")}
        assert "httpx" in imported and not set(SERVER_ONLY) & imported, (args, r.stderr[-500:])


def test_version_on_the_command_line_healthz_and_the_pages(client):
    r = quaero("--version")
    assert (r.returncode, r.stdout) == (0, f"quaero {__version__}\n")
    assert client.get("/healthz").get_json()["version"] == __version__
    assert f'<footer class="sitefoot">Quaero {__version__}</footer>' in client.get("/").text


def test_pyproject_pins_are_the_requirements():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pinned = {ln.split("#")[0].strip() for ln in f} - {""}
    base, server = project["dependencies"], project["optional-dependencies"]["server"]
    assert set(base) | set(server) == pinned and not set(base) & set(server)
    assert {d.split("==")[0] for d in base} == {"click", "httpx", "httpx-sse"}
    assert project["requires-python"] == ">=3.11"
    assert project["scripts"] == {"quaero": "quaero.__main__:main"}


def test_one_level_vocabulary_for_the_client_the_runner_and_the_tables():
    """``exec``/``pipe`` (no gevent), the runner and the tables read levels from one light
    module, quaero.levels: there is no second copy to drift."""
    from quaero import levels, models
    from quaero.runner import line_level as runner_line_level
    assert runner_line_level is levels.line_level
    assert models.LEVELS is levels.LEVELS and models.LEVEL_NAMES is levels.LEVEL_NAMES


def test_the_servers_files_are_the_repositorys_through_the_package():
    """The package's templates/, static/, migrations/ and gunicorn.conf.py (what a wheel
    ships) are the repository's own, not copies that could drift."""
    for name in ("templates", "static", "migrations", "gunicorn.conf.py"):
        inside = os.path.join(ROOT, "quaero", name)
        assert os.path.islink(inside) and os.path.samefile(inside, os.path.join(ROOT, name))


# --- serve and its config file -------------------------------------------------------------

def test_serve_without_the_server_extra_says_what_to_install():
    hide = "import sys; [sys.modules.__setitem__(m, None) for m in ('flask', 'gevent', 'gunicorn')]"
    r = subprocess.run([sys.executable, "-c", hide + "; sys.argv = ['quaero', 'serve']; "
                        "from quaero.__main__ import main; main()"],
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and 'pip install "quaero[server]"' in r.stderr, r.stderr


@pytest.mark.parametrize("text, named", [
    ("QUAERO_PORT = 'http'\nQUAERO_BOGUS = 1\n", ["QUAERO_PORT = 'http' is not an integer",
                                                  "QUAERO_BOGUS is not a setting"]),
    ("QUAERO_WORKERS = 0\nQUAERO_CAPTURE_ROOT_LOGGER = 'maybe'\n",
     ["QUAERO_WORKERS = 0 is not a positive integer", "QUAERO_CAPTURE_ROOT_LOGGER"]),
    ("QUAERO_PORT = [1, 2]\n", ["QUAERO_PORT = [1, 2] is not a single value"]),
    ("QUAERO_PORT = \n", ["not TOML"]),
])
def test_a_bad_config_file_stops_serve_with_one_line_naming_it(tmp_path, text, named):
    path = tmp_path / "quaero.toml"
    path.write_text(text)
    r = quaero("serve", "--config", str(path), "--port", str(free_port()), timeout=30)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert str(path) in r.stderr and all(n in r.stderr for n in named), r.stderr


def test_a_missing_config_file_and_a_bad_environment_value_stop_serve(tmp_path):
    r = quaero("serve", "--config", str(tmp_path / "nope.toml"), timeout=30)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "nope.toml" in r.stderr
    r = quaero("serve", env={"QUAERO_MAX_RUNNING": "four"}, timeout=30)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "QUAERO_MAX_RUNNING='four' is not an integer" in r.stderr


def test_the_environment_wins_over_the_config_file(tmp_path, monkeypatch):
    path = tmp_path / "quaero.toml"
    path.write_text('QUAERO_MAX_RUNNING = 7\nQUAERO_JOBS_DIR = "/srv/jobs"\n'
                    "QUAERO_CAPTURE_ROOT_LOGGER = true\nQUAERO_BATCH_INTERVAL = 0.25\n")
    monkeypatch.setenv("QUAERO_CONFIG", str(path))
    monkeypatch.delenv("QUAERO_MAX_RUNNING", raising=False)
    monkeypatch.delenv("QUAERO_CAPTURE_ROOT_LOGGER", raising=False)
    monkeypatch.delenv("QUAERO_BATCH_INTERVAL", raising=False)
    monkeypatch.setenv("QUAERO_JOBS_DIR", "/from/env")
    cfg = Config(str(tmp_path))
    assert (cfg.QUAERO_MAX_RUNNING, cfg.QUAERO_JOBS_DIR) == (7, "/from/env")
    assert cfg.QUAERO_CAPTURE_ROOT_LOGGER is True and cfg.QUAERO_BATCH_INTERVAL == 0.25
    monkeypatch.setenv("QUAERO_MAX_RUNNING", "3")
    assert Config(str(tmp_path)).QUAERO_MAX_RUNNING == 3
    path.write_text("QUAERO_MAX_RUNING = 3\n")
    with pytest.raises(ConfigError, match="QUAERO_MAX_RUNING is not a setting"):
        Config(str(tmp_path))


def test_every_setting_read_is_one_the_config_file_may_hold():
    """A setting added to Config or gunicorn.conf.py is a setting the file accepts too."""
    import re
    from quaero.config import SETTINGS
    read = set()
    for name in ("quaero/config.py", "gunicorn.conf.py", "quaero/producer.py",
                 "quaero/cli/common.py"):
        with open(os.path.join(ROOT, name)) as f:
            read |= set(re.findall(r"\bQUAERO_[A-Z_]+[A-Z]\b", f.read()))
    assert read - {"QUAERO_CONFIG"} <= set(SETTINGS), read - set(SETTINGS)


@pytest.mark.server
def test_serve_runs_the_server_from_any_folder_with_its_config_file(tmp_path):
    port = free_port()
    config = tmp_path / "quaero.toml"
    config.write_text(f'QUAERO_DATABASE_URL = "sqlite:///{tmp_path}/from-file.db"\n'
                      f'QUAERO_PORT = 1\n'     # --port wins over the environment and the file
                      f'QUAERO_WORKER_CONNECTIONS = 100\n')
    env = dict(os.environ, PYTHONPATH=ROOT, QUAERO_WORKER_CONNECTIONS="200")
    for name in ("QUAERO_DATABASE_URL", "QUAERO_PORT", "QUAERO_HOST", "QUAERO_CONFIG"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "quaero", "serve", "--port", str(port),
                             "--config", str(config)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        health = _healthy(f"http://127.0.0.1:{port}", proc)
        assert health["version"] == __version__
        assert (tmp_path / "from-file.db").exists()
        # the environment's 200 connections, not the file's 100: a tenth stays in reserve
        assert health["streams"]["max"] == 180, health
    finally:
        proc.terminate()
        proc.wait(20)


def _healthy(url, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
        try:
            r = httpx.get(url + "/healthz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "quaero serve did not come up"
        time.sleep(0.1)


# --- the HTTP commands, against a real server ----------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("live")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("locked"), env={"QUAERO_API_TOKEN": "s3cret"}).start()
    yield server
    server.stop()


def job_named(url, name):
    jobs = [j for j in httpx.get(url + "/api/jobs?limit=100").json()["jobs"] if j["name"] == name]
    assert len(jobs) <= 1
    return jobs[0] if jobs else None


def job_messages(url, job):
    r = httpx.get(url + "/api/logs", params={"scope": "job", "job_id": job["id"],
                                            "level": "debug", "limit": 100})
    return [ln["message"] for ln in r.json()["logs"]]


@pytest.mark.server
def test_exec_options_come_before_the_command_and_the_commands_own_after_it(live):
    # --url after the command's name is an option, not the command (it was: exit 127)
    r = quaero("exec", "--url", live.url, "--name", "opts", "--", "sh", "-c", "echo hi",
               env={"QUAERO_PORT": str(free_port())})
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    job = job_named(live.url, "opts")
    assert job["status"] == "completed" and job_messages(live.url, job) == ["hi"]
    # from the command on, every word is the command's, options or not, `--` or not
    r = quaero("exec", "--url", live.url, "--name", "theirs", "sh", "-c", 'echo "$@"', "x",
               "--url", "nowhere", "--", "-v")
    assert (r.returncode, r.stdout) == (0, "--url nowhere -- -v\n"), r.stderr
    assert job_messages(live.url, job_named(live.url, "theirs")) == ["--url nowhere -- -v"]
    # the group's options before the command's name work as before
    r = quaero("--url", live.url, "exec", "--name", "grouped", "--", "sh", "-c", "exit 3")
    assert r.returncode == 3 and job_named(live.url, "grouped")["status"] == "failed"
    # a mistyped option is an error, not a command to run
    r = quaero("exec", "--url", live.url, "--nmae", "typo", "--", "true")
    assert r.returncode == 2 and "No such option '--nmae'" in r.stderr
    assert job_named(live.url, "typo") is None


@pytest.mark.server
@pytest.mark.parametrize("args, code, status", [
    ([], 0, "completed"),
    (["--status", "completed"], 0, "completed"),
    (["--status", "failed"], 1, "failed"),
    (["--", "sh", "-c", "echo checked; exit 4"], 4, "failed"),
    (["--", "true"], 0, "completed"),
])
def test_pipe_ends_its_job_as_told(live, args, code, status):
    name = "pipe " + " ".join(args)
    r = quaero("pipe", "--name", name, *args, url=live.url, input="one\ntwo\n")
    assert r.returncode == code, r.stderr
    job = job_named(live.url, name)
    assert job["status"] == status
    expected = ["one", "two"] + (["checked"] if "echo checked; exit 4" in args else [])
    said = job_messages(live.url, job)
    if args[:1] == ["--"] and code:  # the command's failure, said as the job's last line
        assert said.pop().startswith(f"command 'sh' failed: exit code {code} after ")
    assert said == expected


@pytest.mark.server
def test_pipe_into_an_existing_job_leaves_it_open_unless_told(live):
    for told, expected in ((None, "running"), ("failed", "failed")):
        job = httpx.post(live.url + "/api/jobs", json={"name": f"existing-{told}",
                                                       "steps": ["s"]}).json()
        httpx.patch(f"{live.url}/api/jobs/{job['id']}", json={"status": "running"})
        extra = ["--status", told] if told else []
        r = quaero("pipe", "--job", job["id"], *extra, url=live.url, input="x\n")
        assert r.returncode == (1 if told else 0), r.stderr
        assert httpx.get(f"{live.url}/api/jobs/{job['id']}").json()["status"] == expected


@pytest.mark.server
def test_jobs_and_definitions_json_is_one_object_per_line(live):
    for name in ("json-a", "json-b"):
        httpx.post(live.url + "/api/jobs", json={"name": name, "steps": ["s"]})
    r = quaero("jobs", "--json", "--limit", "500", url=live.url)
    assert r.returncode == 0, r.stderr
    jobs = [json.loads(line) for line in r.stdout.splitlines()]
    assert {"json-a", "json-b"} <= {j["name"] for j in jobs}
    assert all(isinstance(j, dict) and j["id"] for j in jobs)
    r = quaero("definitions", "--json", url=live.url)
    assert r.returncode == 0 and all(isinstance(json.loads(x), dict)
                                     for x in r.stdout.splitlines())


@pytest.mark.server
def test_a_missing_and_a_wrong_token_are_told_apart(locked):
    for args in (["jobs"], ["tail", "--service"], ["grep", "x"]):
        missing = quaero(*args, url=locked.url, timeout=30)
        wrong = quaero(*args, "--token", "guess", url=locked.url, timeout=30)
        assert missing.returncode == wrong.returncode == 1
        assert "needs an API token" in missing.stderr and "--token" in missing.stderr
        assert "refused the API token given" in wrong.stderr, wrong.stderr
        assert "needs an API token" not in wrong.stderr
    r = quaero("jobs", "--token", "s3cret", url=locked.url)
    assert r.returncode == 0, r.stderr
    # exec runs its command anyway, then says why nothing was delivered, at once
    r = quaero("exec", "--token", "guess", "--", "echo", "hi", url=locked.url, timeout=30)
    assert r.returncode == 0 and r.stdout == "hi\n"
    assert "lines not delivered" in r.stderr and "refused the API token given" in r.stderr


# --- a server that is not there ------------------------------------------------------------

def test_tail_against_a_dead_server_says_so_and_gives_up():
    url = dead_url()
    started = time.monotonic()
    r = quaero("tail", "--service", url=url, timeout=30)
    assert r.returncode == 1 and time.monotonic() - started < 15
    lines = r.stderr.splitlines()
    assert f"cannot reach the Quaero server at {url}" in lines[0]
    assert lines[-1].startswith("Error: cannot reach the Quaero server")


@pytest.mark.server
def test_tail_gives_up_on_a_server_gone_for_retry_for_seconds(tmp_path):
    server = Server(tmp_path).start()
    job = httpx.post(server.url + "/api/jobs", json={"name": "orphan", "steps": ["s"]}).json()
    proc = subprocess.Popen([sys.executable, "-m", "quaero", "tail", job["id"], "--url",
                             server.url, "--retry-for", "2"], env=dict(os.environ, PYTHONPATH=ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_streams(server.url, 1, proc)
    finally:
        server.stop()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "reconnecting for at most 2 s" in err and "gave up" in err.splitlines()[-1], err


def _wait_for_streams(url, n, proc, timeout=30):
    deadline = time.monotonic() + timeout
    want = f'quaero_sse_streams_open{{scope="job"}} {float(n)}'
    while want not in httpx.get(url + "/metrics").text:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)


def test_run_and_rerun_say_what_they_do():
    r = quaero("rerun", "--help")
    assert r.returncode == 0 and "--no-follow" in r.stdout and "follow its log" in r.stdout
    r = quaero("run", "--help")
    assert "Without it nothing runs here" in " ".join(r.stdout.split())
