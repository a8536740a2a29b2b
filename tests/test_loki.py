"""``POST /loki/api/v1/push``: Loki's JSON (gzip or not) and snappy protobuf through the
Flask test client on SQLite and PostgreSQL, the label grammar, the limits and the
all-or-nothing answer, the token rule; and real clients nobody here wrote against a live
server: ``python-logging-loki`` (JSON) and node's ``winston-loki`` (snappy protobuf)."""
import gzip
import json
import logging
import os
import queue
import subprocess

import cramjam
import httpx
import pytest
import sqlalchemy as sa

from quaero.models import LogEntry, db
from quaero.web.loki import parse_labels, stream_fields
from quaero.web.protowire import count_nested
from tests.helpers import CountingBody, ROOT, make_app, node_with

PUSH = "/loki/api/v1/push"
NS = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z


@pytest.fixture
def any_app(database_url, tmp_path):
    """Retention off: shippers send their own times (2023 here, 1970 once), and the app's
    pruner took a 2023 service line between a push and the count once on PostgreSQL."""
    app = make_app(database_url, tmp_path, QUAERO_RETENTION_DAYS=0)
    yield app
    app.extensions["quaero"].close()


@pytest.fixture
def c(any_app):
    return any_app.test_client()


def new_job(c):
    r = c.post("/api/jobs", json={"name": "loki", "steps": ["a"]})
    assert r.status_code == 201
    return r.json["id"]


def lines(c, **query):
    r = c.get("/api/logs", query_string={"level": "debug", "limit": 500, **query})
    assert r.status_code == 200, r.json
    return [x for x in r.json["logs"] if x["source"] != "quaero"]


def stored(app):
    with app.app_context():
        return db.session.execute(sa.select(sa.func.count()).select_from(LogEntry).where(
            sa.or_(LogEntry.source.is_(None), LogEntry.source != "quaero"))).scalar()


def push_json(c, streams, **headers):
    return c.post(PUSH, data=json.dumps({"streams": streams}), headers=headers,
                  content_type="application/json")


# --- protobuf, written here by hand from Loki's push.proto (not with the server's classes)

def _varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number, payload):
    """A length-delimited field (wire type 2); ``payload`` bytes or str."""
    if isinstance(payload, str):
        payload = payload.encode()
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _entry(line, seconds=None, nanos=0, metadata=()):
    body = b""
    if seconds is not None:  # google.protobuf.Timestamp: seconds = 1, nanos = 2 (varints)
        body += _field(1, b"\x08" + _varint(seconds) + (b"\x10" + _varint(nanos) if nanos else b""))
    body += _field(2, line)
    for name, value in metadata:
        body += _field(3, _field(1, name) + _field(2, value))
    return body


def push_request(*streams):
    """PushRequest{streams = 1: StreamAdapter{labels = 1, entries = 2, hash = 3}}."""
    return b"".join(_field(1, _field(1, labels) + b"".join(_field(2, e) for e in entries)
                           + b"\x18" + _varint(12345))
                    for labels, entries in streams)


def push_proto(c, data, **headers):
    return c.post(PUSH, data=bytes(cramjam.snappy.compress_raw(data)), headers=headers,
                  content_type="application/x-protobuf")


# --- what a push becomes ---------------------------------------------------------------

def test_json_labels_become_attributes_source_level_and_job(c, any_app):
    job = new_job(c)
    r = push_json(c, [
        {"stream": {"service_name": "billing", "job": "ignored-for-source", "level": "WARNING",
                    "quaero_job_id": job, "region": "eu"},
         "values": [[str(NS), "card declined"],
                    [str(NS + 1000), "retrying", {"request_id": "r-7", "region": "us"}]]},
        {"stream": {"app": "web", "detected_level": "fatal"}, "values": [["0", "epoch"]]},
        {"stream": {"job": "cron"}, "values": [[str(NS), "tick"]]},
        {"stream": {}, "values": [[str(NS), "bare"]]}])
    assert r.status_code == 204 and r.data == b""
    got = lines(c, scope="job", job_id=job)
    assert [(x["level"], x["message"], x["source"], x["attributes"]) for x in got] == [
        ("warn", "card declined", "billing",
         {"service_name": "billing", "job": "ignored-for-source", "level": "WARNING",
          "region": "eu"}),
        ("warn", "retrying", "billing",
         {"service_name": "billing", "job": "ignored-for-source", "level": "WARNING",
          "region": "us", "request_id": "r-7"})]
    assert got[0]["timestamp"] == "2023-11-14T22:13:20.123Z"
    service = {x["message"]: x for x in lines(c, scope="service")}
    assert (service["epoch"]["level"], service["epoch"]["source"],
            service["epoch"]["timestamp"]) == ("error", "web", "1970-01-01T00:00:00.000Z")
    assert (service["tick"]["level"], service["tick"]["source"],
            service["tick"]["attributes"]) == ("info", "cron", {"job": "cron"})
    assert service["bare"]["source"] is None and not service["bare"].get("attributes")
    # the filters find them
    r = c.get("/api/logs", query_string={"scope": "job", "job_id": job,
                                         "attr.request_id": "r-7"})
    assert [x["message"] for x in r.json["logs"]] == ["retrying"]


def test_gzip_json(c):
    body = gzip.compress(json.dumps({"streams": [
        {"stream": {"service_name": "gz", "severity": "debug"},
         "values": [[str(NS), "zipped"]]}]}).encode())
    r = c.post(PUSH, data=body, content_type="application/json",
               headers={"Content-Encoding": "gzip"})
    assert r.status_code == 204, r.json
    got = lines(c, scope="service", source="gz")
    assert [(x["level"], x["message"]) for x in got] == [("debug", "zipped")], got


def test_snappy_protobuf(c):
    job = new_job(c)
    data = push_request(
        (f'{{service_name="api", level="error", quaero_job_id="{job}", '
         r'path="/a \"b\" \\c"}',
         [_entry("boom", seconds=1_700_000_000, nanos=123_456_789,
                 metadata=[("trace_id", "4bf9"), ("user", "42")]),
          _entry(b"caf\xc3\xa9 \xff bytes", seconds=1_700_000_001)]),
        ('{job="batch"}', [_entry("no time")]))
    for encoding in ({}, {"Content-Encoding": "snappy"}):  # Loki takes both
        r = push_proto(c, data, **encoding)
        assert r.status_code == 204, r.json
    got = lines(c, scope="job", job_id=job)
    assert [(x["level"], x["message"], x["source"]) for x in got] == [
        ("error", "boom", "api"), ("error", "café \ufffd bytes", "api")] * 2
    assert got[0]["attributes"] == {"service_name": "api", "level": "error",
                                    "path": '/a "b" \\c', "trace_id": "4bf9", "user": "42"}
    assert got[0]["timestamp"] == "2023-11-14T22:13:20.123Z"
    batch = lines(c, scope="service", source="batch")
    assert [(x["level"], x["message"]) for x in batch] == [("info", "no time")] * 2
    # a body without a Content-Type is protobuf, as Loki reads it
    r = c.post(PUSH, data=bytes(cramjam.snappy.compress_raw(data)))
    assert r.status_code == 204


def test_an_empty_push_is_a_204(c, any_app):
    assert push_json(c, []).status_code == 204
    assert push_json(c, [{"stream": {"job": "x"}, "values": []}]).status_code == 204
    assert push_proto(c, b"").status_code == 204
    assert stored(any_app) == 0


# --- all or nothing, limits, bad bodies ------------------------------------------------

def test_a_bad_line_stores_nothing(c, any_app):
    job = new_job(c)
    good = {"stream": {"job": "ok"}, "values": [[str(NS), "fine"]]}
    for bad, status, words in [
            ({"stream": {"job": "x"}, "values": [[str(NS), "fine"], ["soon", "x"]]},
             400, "streams[1].values[1][0]"),
            ({"stream": {"job": "x"}, "values": [["9" * 20, "x"]]}, 400, "2200"),
            ({"stream": {"job": "x"}, "values": [[str(NS), "x" * 65537]]}, 413,
             "streams[1].values[0].message"),
            ({"stream": {"job": "x"}, "values": [[str(NS), "x", {"k": {"nested": 1}}]]}, 400,
             "attributes"),
            ({"stream": {f"l{i}": "v" for i in range(65)}, "values": [[str(NS), "x"]]}, 400,
             "64 keys"),
            ({"stream": {"job": "x", "big": "v" * 5000}, "values": [[str(NS), "x"]]}, 400,
             "4096"),
            ({"stream": {"quaero_job_id": "nosuchjob"}, "values": [[str(NS), "x"]]}, 404,
             "nosuchjob"),
            ({"stream": {"quaero_job_id": job, "job": "x"}, "values": [[str(NS), "x"]]}, 204,
             None)]:
        r = push_json(c, [good, bad])
        assert r.status_code == status, (bad, r.json)
        if status != 204:
            assert r.content_type == "application/json" and words in r.json["error"], r.json
            assert stored(any_app) == 0
    assert stored(any_app) == 2


def test_an_unknown_job_in_protobuf_stores_nothing(c, any_app):
    data = push_request(('{job="a"}', [_entry("kept?")]),
                        ('{quaero_job_id="0123456789abcdef"}', [_entry("lost")]))
    r = push_proto(c, data)
    assert r.status_code == 404 and "0123456789abcdef" in r.json["error"]
    assert stored(any_app) == 0


def test_more_than_10000_lines_is_a_413(c, any_app):
    values = [[str(NS), "x"]] * 10001
    r = push_json(c, [{"stream": {"job": "a"}, "values": values[:5000]},
                      {"stream": {"job": "b"}, "values": values[5000:]}])
    assert r.status_code == 413 and "10000" in r.json["error"]
    # protobuf: counted on the wire before anything is built, empty entries included
    many = push_request(('{job="a"}', [b""] * 6000), ('{job="b"}', [b""] * 4001))
    assert count_nested(many, (1, 2), 10000) == 10001
    r = push_proto(c, many)
    assert r.status_code == 413 and "10000" in r.json["error"]
    assert stored(any_app) == 0
    r = push_proto(c, push_request(('{job="a"}', [_entry("x")] * 10000)))
    assert r.status_code == 204
    assert stored(any_app) == 10000


def test_count_nested_reads_the_wire_format():
    data = push_request(('{a="b"}', [_entry("x")] * 3), ('{a="c"}', [_entry("y")] * 4))
    assert count_nested(data, (1, 2), 100) == 7
    assert count_nested(data, (1, 2), 5) == 6  # gives up past the limit
    assert count_nested(data, (1,), 100) == 2
    assert count_nested(b"\xff\xff\xff", (1, 2), 10) == 0  # malformed: the parser says so
    assert count_nested(data[:-3], (1, 2), 100) == 0


@pytest.fixture
def small_app(tmp_path):
    app = make_app(f"sqlite:///{tmp_path}/q.db", tmp_path, MAX_CONTENT_LENGTH=4096)
    yield app
    app.extensions["quaero"].close()


def test_bodies_over_the_limit_are_413_compressed_or_not(small_app):
    c = small_app.test_client()
    r = push_json(c, [{"stream": {"job": "a"}, "values": [[str(NS), "x" * 5000]]}])
    assert r.status_code == 413 and r.content_type == "application/json"
    bomb = gzip.compress(json.dumps({"streams": [{"stream": {}, "values": [
        [str(NS), "x" * 100000]]}]}).encode())
    assert len(bomb) < 4096
    r = c.post(PUSH, data=bomb, content_type="application/json",
               headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in r.json["error"]
    r = push_proto(c, push_request(('{job="a"}', [_entry("x" * 50000)])))
    assert r.status_code == 413 and "decompressed" in r.json["error"]
    # a snappy header that claims 2 GB, and nothing behind it
    r = c.post(PUSH, data=_varint(2 << 30) + b"\x00", content_type="application/x-protobuf")
    assert r.status_code == 413
    assert stored(small_app) == 0


@pytest.mark.parametrize("body, kind, headers, status", [
    (b"{not json", "application/json", {}, 400),
    (b"[1]", "application/json", {}, 400),
    (b'{"streams": 5}', "application/json", {}, 400),
    (b'{"streams": [5]}', "application/json", {}, 400),
    (b'{"streams": [{"stream": {"a": 1}, "values": []}]}', "application/json", {}, 400),
    (b'{"streams": [{"stream": [], "values": []}]}', "application/json", {}, 400),
    (b'{"streams": [{"values": [["1"]]}]}', "application/json", {}, 400),
    (b'{"streams": [{"values": [[1, "x"]]}]}', "application/json", {}, 400),
    (b'{"streams": [{"values": [["-1", "x"]]}]}', "application/json", {}, 400),
    (b'{"streams": [{"values": [["1", 5]]}]}', "application/json", {}, 400),
    (b'{"streams": [{"values": [["1", "x", "meta"]]}]}', "application/json", {}, 400),
    (b'{"streams": [{"values": [["1", "x", {}, 4]]}]}', "application/json", {}, 400),
    (b"not gzip", "application/json", {"Content-Encoding": "gzip"}, 400),
    (b"not snappy \xff\xff\xff\xff\xff\xff", "application/x-protobuf", {}, 400),
    (bytes(cramjam.snappy.compress_raw(b"\xff\x00garbage")), "application/x-protobuf", {}, 400),
    (bytes(cramjam.snappy.compress_raw(push_request(('job="x"', [])))),
     "application/x-protobuf", {}, 400),
    (bytes(cramjam.snappy.compress_raw(push_request(('{job="x" level="y"}', [])))),
     "application/x-protobuf", {}, 400),
    (b"{}", "application/json", {"Content-Encoding": "br"}, 415),
    (b"{}", "application/json", {"Content-Encoding": "snappy"}, 415),
    (b"hello", "text/plain", {}, 415),
    (b"{}", "application/json", {"Idempotency-Key": "bad key with spaces"}, 400),
])
def test_bad_bodies_are_4xx_json(c, any_app, body, kind, headers, status):
    r = c.post(PUSH, data=body, content_type=kind, headers=headers)
    assert r.status_code == status, r.json
    assert r.content_type == "application/json" and r.json["error"]
    assert stored(any_app) == 0


def test_the_openapi_document_describes_the_push(c):
    op = c.get("/api/openapi.json").json["paths"]["/loki/api/v1/push"]["post"]
    assert set(op["requestBody"]["content"]) == {"application/json", "application/x-protobuf"}
    assert {"204", "400", "401", "404", "413", "415"} <= set(op["responses"])


def test_wrong_method_and_paths_answer_json(c):
    r = c.get(PUSH)
    assert r.status_code == 405 and r.json["error"] and "POST" in r.headers["Allow"]
    assert c.post("/loki/api/v1/tail").json["error"]


# --- the label grammar and the level words ---------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("{}", {}),
    (" { } ", {}),
    ('{job="api"}', {"job": "api"}),
    ('{job="api", level="warn",}', {"job": "api", "level": "warn"}),
    ('{a = "1" ,b="2"}', {"a": "1", "b": "2"}),
    (r'{m="say \"hi\" \\ there\n\ttab"}', {"m": 'say "hi" \\ there\n\ttab'}),
    (r'{m="\u00e9\U0001F600\x41\101\xff\377"}', {"m": "é\U0001F600AA\ufffd\ufffd"}),
    ('{m="multi\nline"}', {"m": "multi\nline"}),
    ('{_x9="", Y="é"}', {"_x9": "", "Y": "é"}),
])
def test_labels_parse(text, expected):
    assert parse_labels(text) == expected


@pytest.mark.parametrize("text", [
    "", "job", 'job="a"', "{", '{job="a"', '{job="a"}}', '{job="a" x="b"}', '{job=a}',
    '{9job="a"}', '{job-x="a"}', "{job='a'}", '{job="a\\q"}', '{job="unterminated}',
    '{job="a",,b="c"}', '{job="a", job="b"}', '{,}', '{job="a"} trailing', '{job:"a"}'])
def test_malformed_labels_are_a_400(text):
    from quaero.errors import Invalid
    with pytest.raises(Invalid):
        parse_labels(text)


@pytest.mark.parametrize("labels, level", [
    ({}, "info"), ({"level": "warning"}, "warn"), ({"level": "WARN"}, "warn"),
    ({"level": "err"}, "error"), ({"level": "critical"}, "error"), ({"level": "trace"}, "debug"),
    ({"level": "notice"}, "info"), ({"level": "shrug"}, "info"), ({"level": ""}, "info"),
    ({"detected_level": "debug"}, "debug"), ({"severity": "fatal"}, "error"),
    ({"severity": "error", "level": "debug"}, "debug"),   # level comes first
    ({"level": "", "detected_level": "warn"}, "warn"),
])
def test_level_labels(labels, level):
    assert stream_fields(labels)["level"] == level


def test_source_is_the_first_of_service_name_job_app():
    assert stream_fields({"app": "a", "job": "j"})["source"] == "j"
    assert stream_fields({"app": "a", "job": "", "service_name": "s"})["source"] == "s"
    assert stream_fields({"app": "a" * 300})["source"] == "a" * 200
    assert stream_fields({"env": "prod"})["source"] is None


# --- idempotency and the token rule ----------------------------------------------------

def test_idempotency_key_replays_without_storing_again(c, any_app):
    body = json.dumps({"streams": [{"stream": {"job": "a"}, "values": [[str(NS), "once"]]}]})
    for _ in range(2):
        r = c.post(PUSH, data=body, content_type="application/json",
                   headers={"Idempotency-Key": "batch-1"})
        assert r.status_code == 204 and r.data == b""
    assert stored(any_app) == 1
    r = c.post(PUSH, data=body.replace("once", "other"), content_type="application/json",
               headers={"Idempotency-Key": "batch-1"})
    assert r.status_code == 409 and r.json["error"]
    # the same key with the same bytes on POST /api/logs is another request
    r = c.post("/api/logs", data=body, content_type="application/json",
               headers={"Idempotency-Key": "batch-1"})
    assert r.status_code == 409
    assert stored(any_app) == 1


@pytest.fixture
def token_app(tmp_path):
    app = make_app(f"sqlite:///{tmp_path}/q.db", tmp_path, QUAERO_API_TOKEN="loki-secret",
                   MAX_CONTENT_LENGTH=16 << 20)
    yield app
    app.extensions["quaero"].close()


def test_the_token_rule_refuses_on_the_headers(token_app):
    c = token_app.test_client()
    ok = json.dumps({"streams": [{"stream": {"job": "a"}, "values": [[str(NS), "in"]]}]})
    r = c.post(PUSH, data=ok, content_type="application/json")
    assert r.status_code == 401 and r.json["error"]
    r = c.post(PUSH, data=ok, content_type="application/json",
               headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert stored(token_app) == 0
    r = c.post(PUSH, data=ok, content_type="application/json",
               headers={"Authorization": "Bearer loki-secret"})
    assert r.status_code == 204
    assert stored(token_app) == 1
    # 8 MB without the token: answered on the headers; at most the 1 MiB drain is read
    # (params.close_unread_body), never the body
    body = CountingBody(8 << 20)
    r = c.post(PUSH, input_stream=body, content_type="application/json")
    assert r.status_code == 401 and body.read_bytes <= (1 << 20) + 65536
    # over the size limit with the token: the same
    body = CountingBody(32 << 20)
    r = c.post(PUSH, input_stream=body, content_type="application/json",
               headers={"Authorization": "Bearer loki-secret"})
    assert r.status_code == 413 and r.json["error"]
    assert body.read_bytes <= (1 << 20) + 65536


# --- real clients against a live server ------------------------------------------------

def test_python_logging_loki_handlers(server):
    """python-logging-loki's LokiHandler and LokiQueueHandler (Loki's v1 JSON: ``tags``
    become labels, the record's level the ``severity`` label, its logger the ``logger``
    label, ``extra={"tags": ...}`` more labels)."""
    import logging_loki

    url = server.url + PUSH
    handler = logging_loki.LokiHandler(url=url, tags={"service_name": "shop", "env": "test"},
                                       version="1")
    handler.handleError = _raise  # the handler swallows a failed push; make it fail the test
    log = logging.getLogger("loki-real-client")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(handler)
    try:
        log.debug("cart opened")
        log.warning("card declined", extra={"tags": {"order-id": "A7"}})
        log.critical("checkout down")
    finally:
        log.removeHandler(handler)
        handler.close()
    queued = logging_loki.LokiQueueHandler(queue.Queue(-1), url=url, version="1",
                                           tags={"app": "worker"})
    log.addHandler(queued)
    try:
        log.error("queued failure")
    finally:
        log.removeHandler(queued)
        queued.listener.stop()  # flushes the queue
        queued.handler.close()

    def fetch(source):
        r = httpx.get(server.url + "/api/logs",
                      params={"scope": "service", "level": "debug", "source": source})
        assert r.status_code == 200
        return r.json()["logs"]

    got = fetch("shop")
    assert [(x["level"], x["message"]) for x in got] == [
        ("debug", "cart opened"), ("warn", "card declined"), ("error", "checkout down")]
    assert got[1]["attributes"] == {"service_name": "shop", "env": "test",
                                    "severity": "warning", "logger": "loki-real-client",
                                    "order_id": "A7"}
    assert [(x["level"], x["message"], x["attributes"]["app"]) for x in fetch("worker")] == [
        ("error", "queued failure", "worker")]


def _raise(record):
    raise


WINSTON = os.path.join(ROOT, "tests", "js", "loki")


@pytest.fixture(scope="session")
def node_winston_loki():
    """node with tests/js/loki/node_modules installed (``npm ci`` on a fresh checkout)."""
    return node_with(WINSTON, "winston-loki", "the winston-loki test")


def test_winston_loki_sends_snappy_protobuf(server_factory, node_winston_loki):
    """winston-loki (tests/js/loki/send.js): its own logproto encoding and label text, snappy
    by the ``snappy`` package, a Bearer token in its headers."""
    srv = server_factory(env={"QUAERO_API_TOKEN": "winston-token"})
    proc = subprocess.run([node_winston_loki, "send.js", srv.url, "winston-token"],
                          cwd=WINSTON, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"contentType": "application/x-protobuf", "errors": []}
    r = httpx.get(srv.url + "/api/logs", headers={"Authorization": "Bearer winston-token"},
                  params={"scope": "service", "level": "debug", "source": "node-shop"})
    got = r.json()["logs"]
    assert [(x["level"], x["message"]) for x in got] == [
        ("debug", "cart opened"), ("warn", "card declined"), ("error", "checkout down")]
    assert got[1]["attributes"] == {"level": "warn", "service_name": "node-shop",
                                    "env": "test", "order_id": "A7"}
