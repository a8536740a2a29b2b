"""Producers: the ``source`` of a line, ``python -m quaero exec``/``pipe`` and
``quaero.client.QuaeroHandler``, end to end against real servers."""
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from .helpers import ROOT, Server, free_port


@pytest.fixture
def c(any_app):
    return any_app.test_client()


@pytest.fixture
def server(module_server):
    """The module's server: each test reads only the jobs it made (by their id, or by a
    name no other test uses)."""
    return module_server


def _post(c, *lines):
    return c.post("/api/logs", json={"logs": list(lines)})


def test_source_is_stored_returned_and_filters(c):
    assert _post(c, {"level": "info", "message": "a", "source": "billing"},
                 {"level": "warn", "message": "b"},
                 {"level": "error", "message": "c", "source": "api"}).status_code == 201
    logs = c.get("/api/logs?scope=service&level=debug").get_json()["logs"]
    assert [(line["message"], line["source"]) for line in logs][-3:] == [
        ("a", "billing"), ("b", None), ("c", "api")]
    got = c.get("/api/logs?scope=service&level=debug&source=billing").get_json()
    assert [line["message"] for line in got["logs"]] == ["a"]
    assert got["meta"]["total_count"] == 1
    got = c.get("/api/logs?scope=service&level=warn&source=billing").get_json()
    assert got["logs"] == [] and got["meta"]["total_count"] == 0


@pytest.mark.parametrize("source", [5, "x" * 201, ["a"], {"a": 1}])
def test_bad_source_is_400_and_nothing_stored(c, source):
    r = _post(c, {"level": "info", "message": "ok"},
              {"level": "info", "message": "bad", "source": source})
    assert r.status_code == 400 and "source" in r.get_json()["error"]
    assert c.get("/api/logs?scope=service&level=debug&q=bad").get_json()["logs"] == []


@pytest.mark.parametrize("query", ["source=", "source=" + "y" * 201])
def test_bad_source_filter_is_400(c, query):
    r = c.get("/api/logs?scope=service&" + query)
    assert r.status_code == 400 and "source" in r.get_json()["error"]


# --- exec, pipe and the handler: real processes against a real server ----------------------

def _env(url, **extra):
    env = dict(os.environ, QUAERO_URL=url, PYTHONPATH=ROOT, QUAERO_FLUSH_TIMEOUT="15")
    env.pop("QUAERO_API_TOKEN", None)
    env.update(extra)
    return env


def _quaero(url, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "quaero", *args], cwd=ROOT, env=_env(url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _jobs(url):
    return {j["name"]: j for j in httpx.get(url + "/api/jobs?limit=100").json()["jobs"]}


def _job_lines(url, job_id):
    lines = []
    while True:
        r = httpx.get(url + "/api/logs", params={"scope": "job", "job_id": job_id, "level": "debug",
                                                 "limit": 5000, "after": lines[-1]["id"] if lines else 0})
        lines += r.json()["logs"]
        if not r.json()["meta"]["has_more"]:
            return lines


CHILD = ("import sys; print('hello'); print('ERROR: broken', file=sys.stderr); "
         "print('careful', file=sys.stderr); print('[debug] detail'); sys.exit({})")


@pytest.mark.parametrize("code, status", [(0, "completed"), (3, "failed")])
def test_exec_sends_lines_with_levels_and_passes_the_exit_status(server, code, status):
    proc = _quaero(server.url, "exec", "--name", f"build{code}", "--step", "compile", "--",
                   sys.executable, "-c", CHILD.format(code))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert b"hello" in out and b"ERROR: broken" in err   # the output still shows
    job = _jobs(server.url)[f"build{code}"]
    assert job["status"] == status and [s["status"] for s in job["steps"]] == [status]
    lines = _job_lines(server.url, job["id"])
    got = [(x["level"], x["message"]) for x in lines]
    said = []
    if code:  # the last line says why the job failed, as the runner's do: the job's last error
        level, said = got.pop()
        command = os.path.basename(sys.executable)
        assert level == "error" and re.fullmatch(
            rf"command '{re.escape(command)}' failed: exit code 3 after \d+\.\d\d s", said), said
        assert job["last_error"]["message"] == said
    else:
        assert job["last_error"]["message"] == "ERROR: broken"
    assert sorted(got) == sorted([("info", "hello"), ("error", "ERROR: broken"),
                                  ("warn", "careful"), ("debug", "[debug] detail")])
    assert {(x["source"], x["step_name"]) for x in lines} == {(f"build{code}", "compile")}


def test_exec_never_waits_for_a_server_that_is_away_and_resends_when_it_is_back(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    marker = tmp_path / "go"
    child = (f"import os, time\nfor i in range(120000): print(f'line {{i}}')\n"
             f"while not os.path.exists({str(marker)!r}): time.sleep(0.05)\n")
    echoed = tmp_path / "echoed"
    with open(echoed, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "quaero", "exec", "--name", "offline",
                                 "--", sys.executable, "-c", child], cwd=ROOT, env=_env(url),
                                stdout=out, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30   # the command runs at full speed, server or not
        while echoed.read_bytes().count(b"\n") < 120000:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.3)
        server = Server(tmp_path, port=port).start()
        try:
            marker.touch()
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            job = _jobs(url)["offline"]
            lines = _job_lines(url, job["id"])
        finally:
            server.stop()
    assert job["status"] == "completed"
    assert [x["message"] for x in lines[:-1]] == [f"line {i}" for i in range(100000)]
    assert lines[-1]["level"] == "warn" and "20000 lines were dropped" in lines[-1]["message"]


def test_sigterm_reaches_the_command_and_the_job_is_cancelled(server):
    child = ("import signal, sys, time\n"
             "def bye(*a):\n    print('child got SIGTERM', flush=True); sys.exit(5)\n"
             "signal.signal(signal.SIGTERM, bye)\nprint('started', flush=True)\ntime.sleep(60)\n")
    proc = _quaero(server.url, "exec", "--name", "stoppable", "--", sys.executable, "-c", child)
    assert proc.stdout.readline() == b"started\n"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 5, err
    job = _jobs(server.url)["stoppable"]
    assert job["status"] == "cancelled"
    assert [x["message"] for x in _job_lines(server.url, job["id"])] == [
        "started", "child got SIGTERM"]


def test_pipe_into_a_new_job_and_into_an_existing_one(server):
    proc = _quaero(server.url, "pipe", "--name", "piped", stdin=subprocess.PIPE)
    out, err = proc.communicate(b"one\nWARNING two\nthree", timeout=60)
    assert proc.returncode == 0 and out == b"one\nWARNING two\nthree", err
    job = _jobs(server.url)["piped"]
    assert job["status"] == "completed"
    assert [(x["level"], x["message"]) for x in _job_lines(server.url, job["id"])] == [
        ("info", "one"), ("warn", "WARNING two"), ("info", "three")]

    other = httpx.post(server.url + "/api/jobs", json={"name": "mine", "steps": ["a"]}).json()
    proc = _quaero(server.url, "pipe", "--job", other["id"], stdin=subprocess.PIPE)
    proc.communicate(b"added\n", timeout=60)
    assert proc.returncode == 0
    assert [x["message"] for x in _job_lines(server.url, other["id"])] == ["added"]
    assert _jobs(server.url)["mine"]["status"] == "pending"   # not ours to end


HANDLER_CHILD = """
import logging, os, sys, time
from quaero.client import QuaeroHandler
assert "flask" not in sys.modules and "gevent" not in sys.modules
url, job_id, marker, n, max_lines, close_timeout = sys.argv[1:7]
handler = QuaeroHandler(url, job_id=job_id or None, source="shop", max_lines=int(max_lines),
                        close_timeout=float(close_timeout))
app = logging.getLogger("shop")
logging.getLogger().addHandler(handler)    # on the root: httpx's own records must not loop back
logging.getLogger().setLevel(logging.DEBUG)
started = time.monotonic()
for i in range(int(n)):
    app.log((logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)[i % 4], "record %d", i)
print("emitted", time.monotonic() - started, flush=True)
while marker and not os.path.exists(marker):
    time.sleep(0.05)
started = time.monotonic()
handler.close()
assert "flask" not in sys.modules
print("closed", time.monotonic() - started, handler.dropped, flush=True)
"""


def _handler_child(url, job_id, marker, n, max_lines, close_timeout):
    return subprocess.Popen([sys.executable, "-c", HANDLER_CHILD, url, job_id, str(marker), str(n),
                             str(max_lines), str(close_timeout)], cwd=ROOT, env=_env(url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_handler_in_a_plain_process_delivers_after_the_server_comes_back(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    marker = tmp_path / "closing"
    proc = _handler_child(url, "", marker, 8, 1000, 20)
    assert proc.stdout.readline().startswith("emitted")
    server = Server(tmp_path, port=port).start()
    try:
        marker.touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.split()[-1] == "0", (out, err)   # nothing dropped
        lines = httpx.get(url + "/api/logs", params={"scope": "service", "level": "debug",
                                                     "source": "shop"}).json()["logs"]
    finally:
        server.stop()
    assert [(x["level"], x["message"]) for x in lines] == [
        (("debug", "info", "warn", "error")[i % 4], f"record {i}") for i in range(8)]


def test_handler_with_the_server_away_is_bounded_and_close_does_not_hang():
    url = f"http://127.0.0.1:{free_port()}"
    proc = _handler_child(url, "", "", 5000, 100, 1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    emitted, closed = out.splitlines()
    assert float(emitted.split()[1]) < 2.0          # the caller never waited
    _, seconds, dropped = closed.split()
    assert float(seconds) < 3.0 and int(dropped) == 5000
    assert "5000 lines not delivered" in err


def test_handler_sends_to_a_job(server):
    job = httpx.post(server.url + "/api/jobs", json={"name": "app", "steps": ["a"]}).json()
    proc = _handler_child(server.url, job["id"], "", 4, 1000, 5)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert [(x["level"], x["message"], x["source"]) for x in _job_lines(server.url, job["id"])] == [
        ("debug", "record 0", "shop"), ("info", "record 1", "shop"),
        ("warn", "record 2", "shop"), ("error", "record 3", "shop")]


# --- structured fields: extra, exception type, exec/pipe --parse ----------------------------

EXTRA_CHILD = """
import logging, sys
from quaero.client import QuaeroHandler
assert "flask" not in sys.modules and "sqlalchemy" not in sys.modules
handler = QuaeroHandler(sys.argv[1], job_id=sys.argv[2], source="shop")
app = logging.getLogger("shop")
app.addHandler(handler)
app.setLevel(logging.INFO)
app.warning("card declined", extra={"user.id": 42, "http.status_code": 500, "retry": False,
                                    "ratio": 0.25, "cart": ["a", "b"], "_private": 1,
                                    "trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736",
                                    "huge": "x" * 5000})
try:
    {}["missing"]
except KeyError:
    app.exception("lookup failed")
app.info("plain")
handler.close()
assert "flask" not in sys.modules and "gevent" not in sys.modules
"""


def test_handler_sends_extra_fields_and_the_exception_type_as_attributes(server):
    job = httpx.post(server.url + "/api/jobs", json={"name": "extra", "steps": ["a"]}).json()
    proc = subprocess.run([sys.executable, "-c", EXTRA_CHILD, server.url, job["id"]], cwd=ROOT,
                          env=_env(server.url), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    declined, failed, plain = _job_lines(server.url, job["id"])
    huge = declined["attributes"].pop("huge")
    assert declined["attributes"] == {"user.id": 42, "http.status_code": 500, "retry": False,
                                      "ratio": 0.25, "cart": "['a', 'b']"}
    assert huge.endswith("…") and len(huge.encode()) <= 4096   # cut, and the line kept
    assert declined["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert failed["attributes"] == {"exception.type": "KeyError"}
    assert failed["message"].startswith("lookup failed\nTraceback") and "KeyError" in failed[
        "message"]
    assert "attributes" not in plain and "trace_id" not in plain
    got = httpx.get(server.url + "/api/logs", params={"scope": "job", "job_id": job["id"],
                                                      "attr.user.id": "42"}).json()["logs"]
    assert [x["message"] for x in got] == ["card declined"]


JSON_CHILD = r"""
import json, sys
print(json.dumps({"msg": "user logged in", "level": "warning", "user": {"id": 42},
                  "tags": ["a", "b"], "ok": True, "n": 3, "none": None,
                  "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}))
print(json.dumps({"message": "pino style", "level": 50, "pid": 7}), file=sys.stderr)
print('{"event": "structlog style", "request_id": "r-1"}')
print("not json at all")
print('{"broken": ')
print("[1, 2]")
"""


def test_exec_parse_json_lines_become_structured_lines(server):
    proc = _quaero(server.url, "exec", "--name", "jsonlog", "--parse", "json", "--",
                   sys.executable, "-c", JSON_CHILD)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b'"msg": "user logged in"' in out    # the output still shows as printed
    lines = _job_lines(server.url, _jobs(server.url)["jsonlog"]["id"])
    got = {x["message"]: (x["level"], x.get("attributes"), x.get("trace_id"), x.get("span_id"))
           for x in lines}
    assert got == {
        "user logged in": ("warn", {"user": '{"id":42}', "tags": '["a","b"]', "ok": True,
                                    "n": 3}, "4bf92f3577b34da6a3ce929d0e0e4736",
                           "00f067aa0ba902b7"),
        "pino style": ("error", {"pid": 7}, None, None),
        "structlog style": ("info", {"request_id": "r-1"}, None, None),
        "not json at all": ("info", None, None, None),
        '{"broken": ': ("info", None, None, None),
        "[1, 2]": ("info", None, None, None)}


def test_pipe_parse_logfmt_lines_become_structured_lines(server):
    proc = _quaero(server.url, "pipe", "--name", "logfmt", "--parse", "logfmt",
                   stdin=subprocess.PIPE)
    text = (b'time=2024-05-01T10:00:00Z level=error msg="disk \\"sda\\" full" free=0 retry\n'
            b'at=info method=GET path="/a b" status=200\n'
            b'Running with DEBUG=1\n'
            b'WARNING plain words\n')
    out, err = proc.communicate(text, timeout=60)
    assert proc.returncode == 0 and out == text, err
    lines = _job_lines(server.url, _jobs(server.url)["logfmt"]["id"])
    assert [(x["level"], x["message"], x.get("attributes")) for x in lines] == [
        ("error", 'disk "sda" full', {"time": "2024-05-01T10:00:00Z", "free": "0", "retry": True}),
        ("info", 'at=info method=GET path="/a b" status=200',
         {"at": "info", "method": "GET", "path": "/a b", "status": "200"}),
        ("info", "Running with DEBUG=1", None),
        ("warn", "WARNING plain words", None)]
