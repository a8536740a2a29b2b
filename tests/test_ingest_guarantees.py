"""Issue 20: every acknowledged line stored once, on the paths producers and operators
really take — batches across targets, retries with Idempotency-Key, a stalled or frozen
database, a full disk, bodies that are refused, OTLP floods, shared Redis servers."""
import json
import socket
import subprocess
import time
from datetime import datetime

import gevent
import httpx
import pytest
import sqlalchemy as sa

from quaero.web.otlp import count_records
from tests.helpers import REDIS_URL, make_app


def _job(c, name="j", steps=("test",)):
    r = c.post("/api/jobs", json={"name": name, "steps": list(steps)})
    assert r.status_code == 201, r.json
    return r.json["id"]


def _lines(app, job_id=None):
    with app.extensions["quaero"].engine.connect() as conn:
        q = "SELECT message FROM log_entries WHERE " + (
            "job_seq = (SELECT seq FROM jobs WHERE id = :j)" if job_id else "job_seq IS NULL"
        ) + " ORDER BY id"
        return conn.execute(sa.text(q), {"j": job_id}).scalars().all()


# --- 1. a batch across targets ----------------------------------------------------------

def test_a_batch_across_a_seen_and_an_unseen_job_is_stored(any_app):
    c = any_app.test_client()
    a, b = _job(c, "a"), _job(c, "b")
    assert c.post("/api/logs", json={"logs": [
        {"level": "info", "message": "a1", "job_id": a, "step": "test"}]}).status_code == 201
    r = c.post("/api/logs", json={"logs": [
        {"level": "info", "message": "a2", "job_id": a, "step": "test"},
        {"level": "info", "message": "b1", "job_id": b, "step": "test"}]})
    assert r.status_code == 201, r.json
    assert _lines(any_app, a) == ["a1", "a2"] and _lines(any_app, b) == ["b1"]


def test_an_unknown_step_beside_a_seen_target_is_still_a_404(any_app):
    c = any_app.test_client()
    a = _job(c, "a")
    assert c.post("/api/logs", json={"logs": [
        {"level": "info", "message": "a1", "job_id": a, "step": "test"}]}).status_code == 201
    r = c.post("/api/logs", json={"logs": [
        {"level": "info", "message": "a2", "job_id": a, "step": "test"},
        {"level": "info", "message": "x", "job_id": a, "step": "nope"}]})
    assert r.status_code == 404 and "nope" in r.json["error"]
    assert _lines(any_app, a) == ["a1"]


# --- 2. idempotent ingest -----------------------------------------------------------------

BODY = {"logs": [{"level": "info", "message": "once"}, {"level": "warn", "message": "twice?"}]}


def test_a_retry_with_the_same_key_is_answered_from_the_record(any_app):
    c = any_app.test_client()
    first = c.post("/api/logs", json=BODY, headers={"Idempotency-Key": "batch-1"})
    assert first.status_code == 201
    again = c.post("/api/logs", json=BODY, headers={"Idempotency-Key": "batch-1"})
    assert again.status_code == 201 and again.data == first.data
    assert _lines(any_app) == ["once", "twice?"]
    other = c.post("/api/logs", json={"logs": [{"level": "info", "message": "else"}]},
                   headers={"Idempotency-Key": "batch-1"})
    assert other.status_code == 409 and "Idempotency-Key" in other.json["error"]
    assert _lines(any_app) == ["once", "twice?"]
    # another key, the same body: a new request
    assert c.post("/api/logs", json=BODY, headers={"Idempotency-Key": "batch-2"}).status_code == 201
    assert len(_lines(any_app)) == 4


def test_the_record_holds_for_another_app_on_the_same_database(database_url, tmp_path):
    one = make_app(database_url, tmp_path)
    try:
        first = one.test_client().post("/api/logs", json=BODY, headers={"Idempotency-Key": "k"})
    finally:
        one.extensions["quaero"].close()
    two = make_app(database_url, tmp_path)
    try:
        again = two.test_client().post("/api/logs", json=BODY, headers={"Idempotency-Key": "k"})
        assert again.status_code == 201 and again.data == first.data
        assert _lines(two) == ["once", "twice?"]
    finally:
        two.extensions["quaero"].close()


@pytest.mark.parametrize("key", ["", "x" * 129, "with space", "é", "tab\there"])
def test_a_malformed_key_is_a_400_and_stores_nothing(client, app, key):
    r = client.post("/api/logs", json=BODY, headers={"Idempotency-Key": key})
    assert r.status_code == 400 and "Idempotency-Key" in r.json["error"]
    assert _lines(app) == []


def test_a_refused_first_request_records_nothing(client, app):
    bad = {"logs": [{"level": "loud", "message": "x"}]}
    assert client.post("/api/logs", json=bad, headers={"Idempotency-Key": "k"}).status_code == 400
    assert client.post("/api/logs", json=BODY, headers={"Idempotency-Key": "k"}).status_code == 201
    assert _lines(app) == ["once", "twice?"]


def test_the_same_key_sent_at_once_stores_once(any_app):
    c = any_app.test_client()
    answers = gevent.joinall([gevent.spawn(c.post, "/api/logs", json=BODY,
                                           headers={"Idempotency-Key": "same"})
                              for _ in range(8)])
    bodies = {(g.value.status_code, g.value.data) for g in answers}
    assert len(bodies) == 1 and next(iter(bodies))[0] == 201
    assert _lines(any_app) == ["once", "twice?"]


def test_records_older_than_a_day_are_forgotten(any_app):
    from quaero.retention import forget_keys
    client, engine = any_app.test_client(), any_app.extensions["quaero"].engine
    for key in ("old", "older", "new"):
        assert client.post("/api/logs", json=BODY, headers={"Idempotency-Key": key}).status_code == 201
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE idempotency_keys SET created_at = :t WHERE key <> 'new'"),
                     {"t": datetime(2000, 1, 1)})
    assert client.post("/api/logs", json=BODY, headers={"Idempotency-Key": "old"}).status_code == 201
    assert len(_lines(any_app)) == 8
    assert forget_keys(engine) == 1  # "older" ("old" was recorded again)
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT key FROM idempotency_keys")).scalars()) == ["new", "old"]


# --- a stalled database: answered within the bound, never committed later -----------------

def test_a_write_stalled_past_its_deadline_is_refused_and_never_committed(pg_database, tmp_path):
    from tests.helpers import reset_pg
    reset_pg(pg_database)
    app = make_app(pg_database, tmp_path, QUAERO_INGEST_TIMEOUT=1.0)
    c = app.test_client()
    try:
        assert c.post("/api/logs", json={"logs": [{"level": "info", "message": "warm"}]}).status_code == 201
        blocker = sa.create_engine(pg_database)
        with blocker.connect() as other:  # another connection holds the id counter's row
            other.execute(sa.text("SELECT value FROM line_counters WHERE key = '__id__' FOR UPDATE"))
            started = time.monotonic()
            r = c.post("/api/logs", json={"logs": [{"level": "info", "message": "stalled"}]})
            assert r.status_code == 503 and time.monotonic() - started < 3
            other.rollback()
        blocker.dispose()
        assert c.post("/api/logs", json={"logs": [{"level": "info", "message": "after"}]}).status_code == 201
        assert _lines(app) == ["warm", "after"]
    finally:
        app.extensions["quaero"].close()


def test_a_frozen_database_gives_prompt_503s_not_hangs(pg_database, tmp_path):
    from tests.helpers import reset_pg
    from tests.tcp_proxy import TCPProxy
    reset_pg(pg_database)
    proxy = TCPProxy("127.0.0.1", 5432).start()
    host = pg_database.split("@", 1)[1].split("/", 1)[0]
    url = pg_database.replace(host, f"127.0.0.1:{proxy.port}")
    app = make_app(url, tmp_path, QUAERO_INGEST_TIMEOUT=1.0, QUAERO_DB_TIMEOUT=1.0)
    c = app.test_client()
    try:
        assert c.post("/api/logs", json={"logs": [{"level": "info", "message": "warm"}]}).status_code == 201
        proxy.freeze()
        for call in (lambda: c.get("/healthz"),
                     lambda: c.post("/api/logs", json={"logs": [{"level": "info", "message": "x"}]}),
                     lambda: c.get("/api/logs?scope=service"),
                     lambda: c.get("/api/search?q=warm")):
            started = time.monotonic()
            r = call()
            assert r.status_code == 503, r.data
            assert time.monotonic() - started < 2.5
        proxy.thaw()
        deadline = time.monotonic() + 10
        while c.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline
            gevent.sleep(0.1)
        assert "x" not in _lines(app)
    finally:
        proxy.thaw()
        app.extensions["quaero"].close()
        proxy.cut()


# --- a full disk -------------------------------------------------------------------------

def test_below_the_free_space_floor_ingest_is_507_and_healthz_says_why(tmp_path):
    app = make_app(f"sqlite:///{tmp_path}/q.db", tmp_path, QUAERO_MIN_FREE_BYTES=1 << 62)
    c = app.test_client()
    try:
        r = c.post("/api/logs", json=BODY)
        assert r.status_code == 507 and "free-space floor" in r.json["error"]
        h = c.get("/healthz")
        assert h.status_code == 503 and "free-space floor" in h.json["checks"]["disk"]
        app.extensions["quaero"].disk.min_free = 0
        app.extensions["quaero"].disk._checked_at = None
        assert c.post("/api/logs", json=BODY).status_code == 201
        assert c.get("/healthz").status_code == 200
    finally:
        app.extensions["quaero"].close()


@pytest.fixture
def small_volume(tmp_path):
    path = tmp_path / "vol"
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_volume_gives_507_then_resumes_and_loses_nothing_acknowledged(small_volume, tmp_path):
    ballast = small_volume / "ballast"
    ballast.write_bytes(b"\0" * (1 << 20))  # what the operator will free
    app = make_app(f"sqlite:///{small_volume}/q.db", tmp_path, QUAERO_MIN_FREE_BYTES=0)
    c = app.test_client()
    acked, statuses = [], set()
    try:
        big = "x" * 4000
        for i in range(2000):
            r = c.post("/api/logs", json={"logs": [{"level": "info", "message": f"{i} {big}"}
                                                   for _ in range(5)]})
            statuses.add(r.status_code)
            if r.status_code == 201:
                acked.append(i)
            else:
                assert r.status_code == 507, r.json
                assert "disk is full" in r.json["error"]
                break
        assert 507 in statuses
        h = c.get("/healthz")
        assert h.status_code == 503 and h.json["checks"]["disk"].startswith("full")
        # everything acknowledged is there, each once
        stored = [m.split(" ", 1)[0] for m in _lines(app)]
        assert stored == [str(i) for i in acked for _ in range(5)]
        # space comes back (the operator frees some): ingest resumes by itself
        ballast.unlink()
        deadline = time.monotonic() + 10
        while c.post("/api/logs", json={"logs": [{"level": "info", "message": "back"}]}).status_code != 201:
            assert time.monotonic() < deadline, "ingest resumes once space is free"
            gevent.sleep(0.2)
        with app.extensions["quaero"].engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    finally:
        app.extensions["quaero"].close()


# --- bounded work per request -------------------------------------------------------------

def _record(n):
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    export = ExportLogsServiceRequest()
    scope = export.resource_logs.add().scope_logs.add()
    for i in range(n):
        scope.log_records.add().body.string_value = f"r{i}"
    return export.SerializeToString()


def test_count_records_reads_the_wire_format():
    assert count_records(_record(0), 10) == 0
    assert count_records(_record(7), 10) == 7
    assert count_records(_record(50), 10) == 11  # gives up past the limit
    assert count_records(b"\xff\xff\xff", 10) == 0  # malformed: the parser will say so


def test_otlp_refuses_more_records_than_a_batch_of_lines(client, app):
    r = client.post("/v1/logs", data=_record(10001), content_type="application/x-protobuf")
    assert r.status_code == 413 and "10000" in r.json["error"]
    empty = b"\x0a\x04\x12\x02\x12\x00" * 10001  # many resource_logs of one empty record each
    r = client.post("/v1/logs", data=empty, content_type="application/x-protobuf")
    assert r.status_code == 413
    assert client.post("/v1/logs", data=_record(3), content_type="application/x-protobuf").status_code == 200
    assert _lines(app) == ["r0", "r1", "r2"]


@pytest.mark.parametrize("doc", [{"resourceLogs": [{"scopeLogs": [5]}]},
                                 {"resourceLogs": [5]}, {"resourceLogs": {"a": 1}},
                                 {"resourceLogs": [{"scopeLogs": [{"logRecords": [7]}]}]}])
def test_otlp_json_of_the_wrong_shape_is_a_400(client, doc):
    r = client.post("/v1/logs", data=json.dumps(doc), content_type="application/json")
    assert r.status_code == 400 and "error" in r.json


def test_a_far_future_timestamp_is_a_400_and_old_ones_do_not_break_the_histogram(client, app):
    r = client.post("/api/logs", json={"logs": [{"level": "info", "message": "x",
                                                 "timestamp": "9999-12-31T00:00:00Z"}]})
    assert r.status_code == 400 and "timestamp" in r.json["error"]
    from datetime import datetime
    from quaero.storage import write_lines
    with app.extensions["quaero"].engine.begin() as conn:  # stored before the limit existed
        write_lines(conn, [{"job_id": None, "step_name": None, "level": 20, "message": m,
                            "timestamp": t, "source": None}
                           for m, t in (("old", datetime(2026, 1, 1)),
                                        ("far", datetime(9999, 12, 31, 23, 59)))])
    for q in ("", "&q=far"):
        r = client.get("/api/logs/histogram?scope=service" + q)
        assert r.status_code == 200 and r.json["total"] >= 1


@pytest.mark.server
def test_an_anonymous_flood_of_body_never_freezes_the_worker(server_factory):
    srv = server_factory(env={"QUAERO_API_TOKEN": "s3cret"})
    host, port = "127.0.0.1", srv.port
    with httpx.stream("GET", srv.url + "/api/logs/stream?scope=service",
                      headers={"Authorization": "Bearer s3cret"}, timeout=10) as stream:
        lines = stream.iter_lines()
        next(lines)  # the stream is open
        sock = socket.create_connection((host, port))
        sock.sendall(b"POST /api/logs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 2000000000\r\n\r\n")
        flood = gevent.spawn(_flood, sock)
        try:
            worst = 0.0
            for _ in range(20):
                started = time.monotonic()
                assert httpx.get(srv.url + "/healthz", timeout=5).status_code == 200
                worst = max(worst, time.monotonic() - started)
                gevent.sleep(0.1)
            assert worst < 1.0, f"/healthz took {worst:.2f} s while a body was flooding in"
            flood.join(10)
            assert flood.ready(), "the server closes the refused connection"
            assert b"401" in flood.value.split(b"\r\n", 1)[0]
        finally:
            flood.kill()
            sock.close()
    assert srv.proc.poll() is None


def _flood(sock):
    """Send as fast as loopback allows until the server closes; what it answered."""
    chunk = b"x" * 65536
    sent = 0
    try:
        while sent < 2_000_000_000:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    try:
        sock.settimeout(2)
        return sock.recv(4096)
    except OSError:
        return b""


def test_a_refused_small_body_leaves_a_readable_answer(client):
    app = client.application
    app.config["QUAERO_API_TOKEN"] = "t"
    r = client.post("/api/logs", json=BODY)
    assert r.status_code == 401 and r.json["error"]


# --- one deployment per bus ------------------------------------------------------------

def test_each_database_has_its_own_channel(tmp_path):
    from quaero.bus import deployment_channel
    a = make_app(f"sqlite:///{tmp_path}/a.db", tmp_path)
    b = make_app(f"sqlite:///{tmp_path}/b.db", tmp_path)
    a2 = make_app(f"sqlite:///{tmp_path}/a.db", tmp_path)
    try:
        ea, eb, ea2 = (x.extensions["quaero"].engine for x in (a, b, a2))
        assert deployment_channel(ea) != deployment_channel(eb)
        assert deployment_channel(ea) == deployment_channel(ea2)
    finally:
        for x in (a, b, a2):
            x.extensions["quaero"].close()


@pytest.mark.skipif(not REDIS_URL, reason="QUAERO_TEST_REDIS_URL is not set: Redis tests run in CI")
def test_two_deployments_on_one_redis_never_see_each_others_lines(tmp_path):
    base = REDIS_URL.rsplit("/", 1)[0]
    one = make_app(f"sqlite:///{tmp_path}/one.db", tmp_path, QUAERO_REDIS_URL=base + "/3")
    two = make_app(f"sqlite:///{tmp_path}/two.db", tmp_path, QUAERO_REDIS_URL=base + "/4")
    seen_by_two = []
    try:
        for x in (one, two):
            x.extensions["quaero"].start()
        two.extensions["quaero"].bus.connect(seen_by_two.extend, lambda p: None)
        one_again = make_app(f"sqlite:///{tmp_path}/one.db", tmp_path, QUAERO_REDIS_URL=base + "/3")
        seen_by_one = []
        one_again.extensions["quaero"].start()
        one_again.extensions["quaero"].bus.connect(seen_by_one.extend, lambda p: None)
        deadline = time.monotonic() + 10
        while not (one.extensions["quaero"].bus.health() == "ok"
                   and one_again.extensions["quaero"].bus.health() == "ok"
                   and two.extensions["quaero"].bus.health() == "ok"):
            assert time.monotonic() < deadline
            gevent.sleep(0.05)
        assert one.test_client().post("/api/logs", json=BODY).status_code == 201
        ours = {"once", "twice?"}
        while len([x for x in seen_by_one if x["message"] in ours]) < 2:
            assert time.monotonic() < deadline  # the same deployment's other process gets them
            gevent.sleep(0.05)
        assert [x for x in seen_by_two if x["message"] in ours] == []
        one_again.extensions["quaero"].close()
    finally:
        for x in (one, two):
            x.extensions["quaero"].close()


# --- long reads on SQLite leave the worker free -----------------------------------------

def test_a_long_sqlite_read_lets_other_greenlets_run(app, client):
    from datetime import datetime
    from quaero.storage import write_lines
    job = _job(client, "big", ["s"])
    now = datetime(2026, 12, 1)
    with app.extensions["quaero"].engine.begin() as conn:
        for k in range(6):
            write_lines(conn, [{"job_id": job, "step_name": "s", "level": 20,
                                "message": f"line {k} {i} of a long log", "timestamp": now,
                                "source": None} for i in range(50000)])
    ticks, stop = [0], []

    def ticker():
        while not stop:
            gevent.sleep(0.005)
            ticks[0] += 1

    def ticks_during(call):
        """How often the ticker ran while ``call`` ran in this greenlet: never, when the
        read holds the worker; counted, not timed (a loaded machine only adds ticks)."""
        before = ticks[0]
        result = call()
        return ticks[0] - before, result

    t = gevent.spawn(ticker)
    gevent.sleep(0.02)
    try:
        n, text = ticks_during(lambda: client.get(f"/api/jobs/{job}/logs.txt").data)
        assert text.count(b"\n") == 300000
        assert n >= 3, f"the ticker ran {n} times during a 300,000-line download"
        n, r = ticks_during(lambda: client.get(f"/api/logs?scope=job&job_id={job}&q=zzz-none"))
        assert r.status_code == 200 and r.json["logs"] == []
        assert n >= 3, f"the ticker ran {n} times during a search scanning 300,000 lines"
    finally:
        stop.append(1)
        t.join()


def test_a_sqlite_commit_never_lets_other_greenlets_write(app, monkeypatch):
    """SQLite holds the write lock through COMMIT, and a commit that flushes the search
    index's pending terms runs statements of its own, with the connection already out
    of its transaction: the progress handler must not yield there. It did, and a
    greenlet that wrote meanwhile (the runner's heartbeat) waited SQLite's busy timeout
    in C, holding the worker: 10 s in which every batch was answered 503 (three runs of
    about twenty of bench/ingest.py)."""
    import quaero
    from quaero.searchindex import make_generation
    monkeypatch.setattr(quaero, "SQLITE_SLICE", 0.0)   # yield whenever the handler may,
    monkeypatch.setattr(quaero, "SQLITE_PROGRESS_OPS", 50)  # which is often
    engine = app.extensions["quaero"].engine
    engine.dispose()  # (connections made from here on)
    ticks, stop = [0], []

    def ticker():
        while not stop:
            gevent.sleep(0)
            ticks[0] += 1

    committing = []
    real = engine.dialect.do_commit

    def do_commit(dbapi_conn):
        before = ticks[0]
        real(dbapi_conn)
        committing.append(ticks[0] - before)
    monkeypatch.setattr(engine.dialect, "do_commit", do_commit)
    t = gevent.spawn(ticker)
    gevent.sleep(0)
    try:
        with engine.begin() as conn:
            cur = conn.connection.driver_connection.cursor()
            conn.exec_driver_sql("UPDATE line_counters SET value = value WHERE key = '__id__'")
            make_generation(cur, 7)
            cur.executemany("INSERT INTO log_fts_7(rowid, message) VALUES (?, ?)",
                            [(b, " ".join(f"word{b}x{i} token{i * b}" for i in range(40)))
                             for b in range(3000)])
    finally:
        stop.append(1)
        t.join()
    assert committing and committing[-1] == 0, f"other greenlets ran {committing} times in COMMIT"


# --- producers resend with the batch's key --------------------------------------------------

def test_the_sender_resends_a_batch_with_its_one_key():
    from quaero.client import LineSender
    seen = []

    def handler(request):
        seen.append((request.headers.get("Idempotency-Key"), request.content))
        if len(seen) == 1:  # stored, but the answer is lost
            raise httpx.ReadTimeout("lost", request=request)
        return httpx.Response(201, json={"accepted": 2, "first_id": 1, "last_id": 2})

    sender = LineSender("http://quaero.test", transport=httpx.MockTransport(handler),
                        interval=0.01)
    sender.add({"level": "info", "message": "a"})
    sender.add({"level": "info", "message": "b"})
    assert sender.close(timeout=5)
    assert len(seen) == 2 and seen[0] == seen[1] and seen[0][0]
    sender = LineSender("http://quaero.test", transport=httpx.MockTransport(handler))
    sender.add({"level": "info", "message": "c"})
    assert sender.close(timeout=5)
    assert seen[2][0] != seen[0][0], "a new batch has a new key"


def test_a_sender_under_gevent_leaves_the_process_signals_alone():
    """Under gevent a LineSender's thread is a greenlet of the main thread: blocking SIGTERM
    there blocked it for the process and every child it started afterwards."""
    import signal
    from quaero.client import LineSender
    sender = LineSender("http://quaero.test", transport=httpx.MockTransport(
        lambda request: httpx.Response(201, json={"accepted": 1, "first_id": 1, "last_id": 1})))
    sender.add({"level": "info", "message": "a"})
    assert sender.close(timeout=5)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.SIGTERM not in blocked and signal.SIGINT not in blocked
