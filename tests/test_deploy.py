"""Issue 21, Deploying: the start-up checks (one line each, within 5 s: a database that cannot
be reached or refuses the role, a busy port), Quaero's own errors on stderr, the warning
under a worker class that cannot stream, docs/deploy.md's unit and nginx site run as
written, and 700 streams on a worker of 600 connections: every request answered.

Tests that start a server (or try to) are marked ``server`` and ``slow``. Waits are bounded
polls with deadlines. ``python -m tests.test_deploy burst URL N SECONDS`` is the stream
client of the 700-stream test, in a process of its own (the tests' process is patched by
gevent, whose selectors would not do for 700 sockets).
"""
import json
import logging
import os
import re
import selectors
import shlex
import shutil
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest

from tests.helpers import eventually, free_port, nginx_conf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_URL = os.environ.get("QUAERO_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("QUAERO_TEST_REDIS_URL")
BANNER = re.compile(r"^\[[^\]]+\] \[\d+\] \[INFO\] Starting gunicorn ")
ENTRIES = {  # the three ways the issue names, as a user types them in the checkout
    "python app.py": [sys.executable, "app.py"],
    "quaero serve": [sys.executable, "-m", "quaero", "serve"],
    "gunicorn wsgi:app": [sys.executable, "-m", "gunicorn", "wsgi:app"],
}
server_test = [pytest.mark.server, pytest.mark.slow]


def base_env(tmp_path, **settings):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("QUAERO_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"QUAERO_PORT": str(free_port()), "QUAERO_HOST": "127.0.0.1",
                "QUAERO_JOBS_DIR": str(tmp_path / "jobs"), "PYTHONUNBUFFERED": "1",
                "QUAERO_DATABASE_URL": f"sqlite:///{tmp_path}/quaero.db"})
    env.update({k: str(v) for k, v in settings.items()})
    return env


def fail_to_start(argv, env, bound=5.0):
    """Run a start that must fail; returns (seconds it took, its output's lines without
    gunicorn's banner). The test fails if it is still running after 3 x ``bound``."""
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3 * bound, start_new_session=True)
    took = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    assert took < bound, f"took {took:.1f} s: {out}"
    return took, [line for line in out.splitlines() if line.strip() and not BANNER.match(line)]


@pytest.fixture
def silent_database():
    """A "database" that accepts connections and never says a word."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield f"postgresql+psycopg://quaero:secret@127.0.0.1:{s.getsockname()[1]}/quaero"
    s.close()


# -- a database that cannot be used ---------------------------------------------------------

@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.server
@pytest.mark.slow
def test_database_refused_is_one_line(entry, tmp_path):
    url = f"postgresql+psycopg://quaero:secret@127.0.0.1:{free_port()}/quaero"  # nothing there
    _, lines = fail_to_start(ENTRIES[entry], base_env(tmp_path, QUAERO_DATABASE_URL=url))
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("quaero: cannot connect to the database "), line
    assert url.replace(":secret@", ":***@") in line and "secret" not in line
    assert "Connection refused" in line


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.server
@pytest.mark.slow
def test_database_that_never_answers_fails_within_5_s(entry, tmp_path, silent_database):
    _, lines = fail_to_start(ENTRIES[entry], base_env(tmp_path, QUAERO_DATABASE_URL=silent_database))
    assert len(lines) == 1, lines
    assert silent_database.replace(":secret@", ":***@") in lines[0]
    assert "no answer within 3 s" in lines[0]


def test_slow_imports_do_not_make_a_healthy_database_silent(monkeypatch):
    """The connection's deadline starts once the check's child has imported what it needs:
    on a loaded machine its imports alone took seconds."""
    if not PG_URL:
        pytest.skip("QUAERO_TEST_POSTGRES_URL is not set: PostgreSQL tests run in CI")
    from quaero import startup
    check_here = startup._check_here

    def slowly(url, report):  # (in the forked child) as imports at load 18 were
        time.sleep(1.0)
        check_here(url, report)
    monkeypatch.setattr(startup, "_check_here", slowly)
    assert startup.check_database(PG_URL, seconds=0.5) is None


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.server
@pytest.mark.slow
def test_missing_role_is_one_line(entry, tmp_path):
    if not PG_URL:
        pytest.skip("QUAERO_TEST_POSTGRES_URL is not set: PostgreSQL tests run in CI")
    parts = urlsplit(PG_URL)
    url = parts._replace(netloc=f"quaero_no_such_role:secret@{parts.hostname}:{parts.port or 5432}",
                         path="/quaero_no_such_db").geturl()
    _, lines = fail_to_start(ENTRIES[entry], base_env(tmp_path, QUAERO_DATABASE_URL=url))
    assert len(lines) == 1, lines
    assert url.replace(":secret@", ":***@") in lines[0] and "secret" not in lines[0]
    assert 'role "quaero_no_such_role" does not exist' in lines[0]


def test_migrations_do_not_retry_what_no_retry_mends(tmp_path):
    """Without gunicorn.conf.py (create_app in a worker) the database fails at once, with
    one line: retrying a refused connection 20 times took 21 s."""
    import sqlalchemy as sa

    from quaero.migrate import DatabaseUnavailable, upgrade
    engine = sa.create_engine(f"postgresql+psycopg://quaero:secret@127.0.0.1:{free_port()}/q")
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as caught:
        upgrade(engine)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "\n" not in message and ":***@127.0.0.1" in message and "secret" not in message
    assert caught.value.__suppress_context__  # no chained driver traceback under it


# -- a busy port ----------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.server
@pytest.mark.slow
def test_busy_port_is_one_line_naming_quaero_port(entry, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        _, lines = fail_to_start(ENTRIES[entry], base_env(tmp_path, QUAERO_PORT=port))
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"quaero: cannot listen on 127.0.0.1:{port}: the port is in use")
    assert "QUAERO_PORT" in lines[0]


def test_port_problem():
    from quaero.startup import port_problem
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert "QUAERO_PORT" in port_problem(("127.0.0.1", taken.getsockname()[1]))
    assert port_problem(("127.0.0.1", free_port())) is None
    assert port_problem("/run/quaero.sock") is None  # gunicorn's own business


# -- Quaero's errors on stderr ----------------------------------------------------------------

def test_quaero_logger_also_writes_stderr_once(capsys):
    from quaero.startup import StderrHandler, log_to_stderr
    logger = logging.getLogger("quaero")
    before = list(logger.handlers)
    try:
        for h in [h for h in logger.handlers if isinstance(h, StderrHandler)]:
            logger.removeHandler(h)
        added = log_to_stderr()
        assert added is not None and log_to_stderr() is None  # once per process
        logging.getLogger("quaero.bus").error("redis at %s does not answer", "redis://x")
        logging.getLogger("quaero.bus").info("connected")  # below WARNING: service log only
        logging.getLogger("gunicorn.error").error("gunicorn's own line")  # not ours to write
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and re.match(
            r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[ERROR\] quaero\.bus: "
            r"redis at redis://x does not answer$", err[0]), err
    finally:
        for h in list(logger.handlers):
            if h not in before:
                logger.removeHandler(h)
        for h in before:
            if h not in logger.handlers:
                logger.addHandler(h)


@pytest.mark.server
@pytest.mark.slow
def test_operational_errors_reach_stderr(tmp_path):
    """A Redis that does not answer: its error line on the server's stderr (where systemd
    and docker look), once, beside gunicorn's own lines, none of them twice."""
    env = base_env(tmp_path, QUAERO_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                   QUAERO_WORKERS=2)
    err = tmp_path / "stderr.log"
    with open(err, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True)
    try:
        bus = eventually(lambda: [ln for ln in err.read_text().splitlines()
                                  if re.search(r"\[ERROR\] quaero\.bus: .*redis", ln, re.I)]
                         if err.read_text().count("[ERROR] quaero.bus") >= 2 else None, 30,
                         what="each worker's Redis error on stderr")
        assert len(bus) == 2 and len({ln.split("] [")[1] for ln in bus}) == 2, bus  # a worker each
        lines = err.read_text().splitlines()
        assert sum("Booting worker" in ln for ln in lines) == 2
        assert len(lines) == len(set(lines)), "a line written twice"
        assert "cannot hold streams" not in err.read_text()  # the gevent worker streams
    finally:
        proc.terminate()
        proc.wait(20)


# -- a worker class that cannot stream ---------------------------------------------------------

def test_cannot_stream_names_gevent():
    from gunicorn.workers.sync import SyncWorker

    from quaero.startup import cannot_stream
    assert cannot_stream(None) is None
    assert "-k gevent" in cannot_stream(SyncWorker)
    from gunicorn.workers.ggevent import GeventWorker
    assert cannot_stream(GeventWorker) is None


@pytest.mark.server
@pytest.mark.slow
def test_sync_worker_says_so_at_start(tmp_path):
    """``gunicorn wsgi:app`` without gunicorn.conf.py runs gunicorn's default sync worker."""
    env = base_env(tmp_path)
    empty = tmp_path / "empty.conf.py"
    empty.write_text("")
    err = tmp_path / "stderr.log"
    url = f"http://127.0.0.1:{env['QUAERO_PORT']}"
    with open(err, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(empty), "-b",
                                 url[7:], "wsgi:app"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True)
    try:
        line = eventually(lambda: next((ln for ln in err.read_text().splitlines()
                                        if "cannot hold streams" in ln), None), 30,
                          what="the worker class warning")
        assert "[WARNING] quaero.startup: gunicorn's SyncWorker" in line and "-k gevent" in line
        import httpx
        r = eventually(lambda: _get(httpx, url + "/api/logs/stream?scope=service"), 10)
        assert r.status_code == 200 and "retry:" in r.text and "gevent" in r.text
    finally:
        proc.terminate()
        proc.wait(20)


def _get(httpx, url):
    try:
        return httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None


# -- docs/deploy.md, as written ---------------------------------------------------------------

def _doc_blocks():
    doc = open(os.path.join(ROOT, "docs", "deploy.md")).read()
    steps = doc.split("## One host, step by step")[1].split("### When it does not start")[0]
    blocks = {}
    for step in steps.split("\n### ")[1:]:
        found = re.search(r"```sh\n(.*?)```", step, re.S)
        if found:
            blocks[step.split(".", 1)[0]] = found.group(1)
    return blocks


def _unit_service(blocks):
    """Step 6's unit: its [Service] settings, each a list of values."""
    unit = re.search(r"<<'EOF'\n(.*?)\nEOF", blocks["6"], re.S).group(1)
    service = {}
    for line in unit.split("[Service]")[1].split("[Install]")[0].splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            service.setdefault(key, []).append(value)
    return service


def _env_file(blocks):
    """Step 5's environment file, its $(openssl rand -hex 32) run as the shell would."""
    text = re.search(r"<<EOF\n(.*?)\nEOF", blocks["5"], re.S).group(1)
    text = text.replace("$(openssl rand -hex 32)", os.urandom(32).hex())
    return dict(line.split("=", 1) for line in text.splitlines() if line.strip())


@pytest.mark.server
@pytest.mark.slow
def test_deploy_doc_unit_and_nginx_site(tmp_path, request):
    """Step 6's ExecStart with step 5's settings (this machine's database, Redis and a free
    port instead), as systemd would start it (NOTIFY_SOCKET: READY=1 when it listens);
    docs/nginx-quaero.conf in front on a spare port; then step 8 through nginx: /healthz,
    a stream, a POST with the token that the stream delivers live."""
    import httpx

    from tests.sse_client import SSEClient
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if nginx is None:
        pytest.skip("nginx is not installed (CI installs Debian's nginx-light)")
    blocks = _doc_blocks()
    service = _unit_service(blocks)
    settings = _env_file(blocks)
    assert service["ExecStart"] == ["/opt/quaero/bin/quaero serve"]
    assert service["EnvironmentFile"] == ["/etc/quaero/quaero.env"]
    assert "postgresql+psycopg://quaero@/quaero" == settings["QUAERO_DATABASE_URL"]
    assert "pip install \".[server]\"" in blocks["4"] and "createdb --owner quaero" in blocks["2"]
    assert "sudo cp docs/nginx-quaero.conf" in blocks["7"]
    port = free_port()
    settings["QUAERO_PORT"] = str(port)
    if PG_URL:
        settings["QUAERO_DATABASE_URL"] = request.getfixturevalue("pg_database")
    else:
        settings["QUAERO_DATABASE_URL"] = f"sqlite:///{tmp_path}/quaero.db"
    if REDIS_URL:
        settings["QUAERO_REDIS_URL"] = REDIS_URL
    else:
        del settings["QUAERO_REDIS_URL"]
    env = base_env(tmp_path, **settings)
    env["PYTHONPATH"] = ROOT  # the venv's quaero: here, the checkout's
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    env["NOTIFY_SOCKET"] = str(tmp_path / "notify.sock")
    workdir = tmp_path / "state"  # StateDirectory=, WorkingDirectory=
    workdir.mkdir()
    argv = shlex.split(service["ExecStart"][0])
    argv = [sys.executable, "-m", "quaero"] + argv[1:]
    err = tmp_path / "journal.log"
    with open(err, "wb") as journal:
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=journal,
                                stderr=subprocess.STDOUT, start_new_session=True)
    front = free_port()
    nginx_conf(tmp_path, [port], front)
    web = subprocess.Popen([nginx, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
                           stderr=subprocess.DEVNULL)
    stream = None
    try:
        notify.settimeout(30)
        assert b"READY=1" in notify.recv(4096), err.read_text()
        url = f"http://127.0.0.1:{front}"
        # READY=1 says the workers listen; Redis may answer a moment later (healthz says
        # "not connected yet" with a 503 until then, as a load balancer should see it)
        def healthy():
            health = _get(httpx, url + "/healthz")
            assert health is not None, "nginx does not answer"
            assert health.status_code == 200 and health.json()["status"] == "ok", health.text
            return health
        eventually(healthy, 20, what="healthy behind nginx")
        token = {"Authorization": f"Bearer {settings['QUAERO_API_TOKEN']}"}
        stream = SSEClient(f"{url}/api/logs/stream?scope=service&level=warning&limit=0",
                           headers={**token, "Accept-Encoding": "gzip"})
        assert stream.status == 200 and "content-encoding" not in stream.headers
        stream.events(until=lambda e: e.event == "logs")
        body = {"logs": [{"level": "warning", "message": "hello through nginx"}]}
        assert httpx.post(url + "/api/logs", json=body).status_code == 401
        posted = httpx.post(url + "/api/logs", json=body, headers=token)
        assert posted.status_code == 201, posted.text
        sent = time.monotonic()
        event = stream.events(until=lambda e: e.event == "logs", timeout=10)[-1]
        assert [ln["message"] for ln in event.json()["logs"]] == ["hello through nginx"]
        assert event.json()["logs"][0]["id"] == posted.json()["last_id"]
        assert event.received - sent < 2, "held in a proxy buffer"
    finally:
        if stream is not None:
            stream.close()
        web.terminate()
        web.wait(10)
        proc.terminate()
        proc.wait(30)
        notify.close()
    assert "Traceback" not in err.read_text()


# -- 700 streams on a worker of 600 connections -------------------------------------------------

def burst(url, count, seconds, hold):
    """``count`` stream requests at once, each on its own connection; each is answered when
    its first event came (a stream) or its refusal ended (the server closed it). Returns
    the counts; with ``hold``, prints them and keeps the streams open until stdin closes."""
    parts = urlsplit(url)
    request = (f"GET /api/logs/stream?scope=service&limit=0 HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()
    selector = selectors.DefaultSelector()
    conns = {}
    for i in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((parts.hostname, parts.port))
        conns[s] = {"i": i, "data": b"", "eof": False, "sent": False}
        selector.register(s, selectors.EVENT_WRITE)

    def kind(c):
        head, _, body = c["data"].partition(b"\r\n\r\n")
        if b"too many open streams" in body and c["eof"]:
            return "refused"
        if b": quaero\nretry: 2000\n\n" in body:
            return "stream"
        return "unanswered" if not c["data"] else ("other" if c["eof"] else "unanswered")

    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline and any(kind(c) == "unanswered" for c in conns.values()):
        for key, events in selector.select(0.1):
            s, c = key.fileobj, conns[key.fileobj]
            if events & selectors.EVENT_WRITE and not c["sent"]:
                try:
                    s.send(request)
                except OSError:
                    c["eof"] = True
                    selector.unregister(s)
                    continue
                c["sent"] = True
                selector.modify(s, selectors.EVENT_READ)
            elif events & selectors.EVENT_READ:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    chunk = b""
                if chunk:
                    c["data"] += chunk
                else:
                    c["eof"] = True
                    selector.unregister(s)
    out = {"stream": 0, "refused": 0, "unanswered": 0, "other": 0,
           "seconds": round(time.monotonic() - started, 2), "refused_kept_alive": 0,
           "unanswered_of_last_50": 0}
    for c in conns.values():
        k = kind(c)
        out[k] += 1
        if k == "refused" and b"connection: close" not in c["data"].lower().split(b"\r\n\r\n")[0]:
            out["refused_kept_alive"] += 1
        if k == "unanswered" and c["i"] >= count - 50:
            out["unanswered_of_last_50"] += 1
    if hold:
        print(json.dumps(out), flush=True)
        sys.stdin.read()  # the test closes it when done with the held streams
    for s in conns:
        s.close()
    return out


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_700_streams_on_600_connections_all_answered(db, server_factory, request, tmp_path):
    """540 streams (600 connections less the reserve of 60), 160 refused with 200 + retry:
    and the connection closed, none left hanging; /healthz and ingest still answered. Was,
    on PostgreSQL: 600 streams (the route checked the cap before its database reads and
    counted the stream after them) and the other 100 never answered; on SQLite: every
    refusal's connection kept for gunicorn's keepalive, answers 5 s apart, in batches."""
    env = {"QUAERO_WORKER_CONNECTIONS": "600"}
    if db == "postgresql":
        if not PG_URL:
            pytest.skip("QUAERO_TEST_POSTGRES_URL is not set: PostgreSQL tests run in CI")
        from tests.helpers import reset_pg
        env["QUAERO_DATABASE_URL"] = request.getfixturevalue("pg_database")
        reset_pg(env["QUAERO_DATABASE_URL"])
    server = server_factory(env=env)
    import httpx
    assert httpx.get(server.url + "/healthz").json()["streams"]["max"] == 540
    client = subprocess.Popen([sys.executable, "-m", "tests.test_deploy", "burst", server.url,
                               "700", "30"], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        counts = json.loads(client.stdout.readline())
        assert counts["unanswered"] == 0 and counts["other"] == 0, counts
        assert counts["stream"] == 540 and counts["refused"] == 160, counts
        assert counts["refused_kept_alive"] == 0, counts
        health = httpx.get(server.url + "/healthz", timeout=5)  # the reserve is free
        assert health.status_code == 200, health.text
        assert health.json()["streams"]["open"] == 540
        posted = httpx.post(server.url + "/api/logs", timeout=5,
                            json={"logs": [{"level": "info", "message": "while full"}]})
        assert posted.status_code == 201, posted.text
    finally:
        client.stdin.close()
        client.wait(30)


if __name__ == "__main__":
    if sys.argv[1:2] == ["burst"]:
        burst(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), hold=True)
