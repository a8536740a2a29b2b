"""Several processes and hosts on one database (and Redis): same guarantees as one.

These run for real in CI (QUAERO_TEST_POSTGRES_URL, QUAERO_TEST_REDIS_URL); locally they
skip, saying why, when a service is not configured.
"""
import random
import shutil
import subprocess
import time

import gevent
import httpx
import pytest
import sqlalchemy as sa

from tests.helpers import REDIS_URL, free_port
from tests.sse_client import SSEClient


@pytest.fixture
def pg_url(pg_database):
    from tests.helpers import reset_pg
    reset_pg(pg_database)
    return pg_database


@pytest.fixture
def redis_url():
    if not REDIS_URL:
        pytest.skip("QUAERO_TEST_REDIS_URL is not set: Redis tests run in CI")
    import redis
    redis.Redis.from_url(REDIS_URL).ping()
    return REDIS_URL


def _init_schema(url):
    """Create the schema once, before several servers start on it."""
    from quaero.migrate import init_db
    engine = sa.create_engine(url)
    init_db(engine)
    engine.dispose()


def post(base, lines, client=None):
    r = (client or httpx).post(f"{base}/api/logs", json={"logs": lines}, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()


def collect(stream, want_last, timeout=20, out=None):
    """Line ids from a stream until ``want_last`` arrived."""
    out = [] if out is None else out
    deadline = time.monotonic() + timeout
    while not out or out[-1] < want_last:
        ev = stream.next_event(timeout=max(deadline - time.monotonic(), 0.1))
        assert ev is not None, "stream closed"
        if ev.event == "logs":
            out.extend(ln["id"] for ln in ev.json()["logs"])
    return out


def test_ids_become_visible_in_commit_order(pg_url):
    """A reader that resumes from "id > last" never skips a line that committed late."""
    from quaero.storage import write_lines
    from quaero.migrate import init_db
    from quaero.models import utcnow
    engine = sa.create_engine(pg_url, pool_size=12)
    init_db(engine)
    seen, written = [], []
    stop = gevent.event.Event()

    def writer(n):
        for _ in range(15):
            with engine.begin() as conn:
                rows = write_lines(conn, [{"job_id": None, "step_name": None, "level": 20,
                                           "message": f"w{n}", "timestamp": utcnow()}] * 5)
                gevent.sleep(random.uniform(0, 0.02))  # commit late, holding ids
            written.extend(r["id"] for r in rows)

    def reader():
        last = 0
        while not stop.is_set() or last < max(written, default=0):
            with engine.connect() as conn:
                ids = conn.execute(sa.text("SELECT id FROM log_entries WHERE id > :l ORDER BY id"),
                                   {"l": last}).scalars().all()
            if ids:
                seen.extend(ids)
                last = ids[-1]
            gevent.sleep(0.001)

    r = gevent.spawn(reader)
    gevent.joinall([gevent.spawn(writer, i) for i in range(8)], raise_error=True)
    stop.set()
    r.get(timeout=30)
    engine.dispose()
    assert sorted(written) == list(range(1, 8 * 15 * 5 + 1))
    assert seen == sorted(written), "the resuming reader saw every line, in order"


@pytest.fixture
def pg_redis_servers(pg_url, redis_url, server_factory):
    _init_schema(pg_url)
    env = {"QUAERO_DATABASE_URL": pg_url, "QUAERO_REDIS_URL": redis_url}
    return [server_factory(env=env), server_factory(env=env, workers=3)]


def test_line_crosses_servers_within_a_second(pg_redis_servers):
    a, b = pg_redis_servers
    s = SSEClient(f"{b.url}/api/logs/stream?scope=service&limit=0")
    try:
        s.events(until=lambda e: e.event == "logs")
        latencies = []
        for i in range(10):
            sent = time.monotonic()
            ack = post(a.url, [{"level": "info", "message": f"cross{i}"}])
            got = collect(s, ack["last_id"], timeout=5)
            assert ack["last_id"] in got
            latencies.append(time.monotonic() - sent)
            gevent.sleep(0.2)
        assert max(latencies) < 1.0, latencies
    finally:
        s.close()


def _concurrent_producers(servers, n_producers=20, batches=10):
    acked = []

    def produce(i):
        base = servers[i % len(servers)].url
        with httpx.Client(timeout=30) as c:
            for k in range(batches):
                ack = post(base, [{"level": "info", "message": f"p{i}-{k}-{j}"}
                                  for j in range(random.randint(1, 20))], client=c)
                acked.extend(range(ack["first_id"], ack["last_id"] + 1))
                gevent.sleep(random.uniform(0, 0.05))

    gevent.joinall([gevent.spawn(produce, i) for i in range(n_producers)], raise_error=True)
    return sorted(acked)


def _every_stream_gets_every_line(servers, streams_per_server=3):
    streams = [SSEClient(f"{s.url}/api/logs/stream?scope=service&level=info&limit=0", timeout=30)
               for s in servers for _ in range(streams_per_server)]
    try:
        firsts = [s.events(until=lambda e: e.event == "logs") for s in streams]
        assert all(firsts)
        acked = _concurrent_producers(servers)
        results = gevent.joinall([gevent.spawn(collect, s, acked[-1], 30) for s in streams],
                                 raise_error=True)
        for g in results:
            got = [i for i in g.value if i >= acked[0]]
            service_lines = sorted(set(got))
            assert got == service_lines, "exactly once, strictly increasing"
            assert set(acked) <= set(got), "every acknowledged line"
    finally:
        for s in streams:
            s.close()


def test_twenty_producers_every_stream_every_line_once_in_order(pg_redis_servers):
    _every_stream_gets_every_line(pg_redis_servers)


def test_resume_on_the_other_server(pg_redis_servers):
    a, b = pg_redis_servers
    # level=error: Quaero's own service lines (info) stay out of the way
    first = post(a.url, [{"level": "error", "message": f"r{i}"} for i in range(50)])
    s = SSEClient(f"{a.url}/api/logs/stream?scope=service&level=error&limit=10")
    got = collect(s, first["last_id"])
    last = s.raw.rsplit(b"\nid: ", 1)[1].split(b"\n", 1)[0].decode()
    s.close()
    more = post(b.url, [{"level": "error", "message": f"r2-{i}"} for i in range(50)])
    s = SSEClient(f"{b.url}/api/logs/stream?scope=service&level=error",
                  headers={"Last-Event-ID": last})
    try:
        got = collect(s, more["last_id"], out=got)
    finally:
        s.close()
    # every acknowledged error line once, in order (a service line of another level may
    # take an id between the two batches: the servers log their Redis link when they start)
    assert got == (list(range(first["last_id"] - 9, first["last_id"] + 1))
                   + list(range(more["first_id"], more["last_id"] + 1)))


def test_job_status_crosses_servers(pg_redis_servers):
    a, b = pg_redis_servers
    job = httpx.post(f"{a.url}/api/jobs", json={"name": "x", "steps": ["s"]}).json()["id"]
    s = SSEClient(f"{b.url}/api/logs/stream?scope=job&job_id={job}")
    try:
        s.events(until=lambda e: e.event == "status")
        start = time.monotonic()
        httpx.patch(f"{a.url}/api/jobs/{job}/steps/s", json={"status": "running"})
        ev = s.events(until=lambda e: e.event == "status", timeout=5)[-1]
        assert ev.json()["steps"][0]["status"] == "running"
        assert time.monotonic() - start < 1.0
        httpx.patch(f"{a.url}/api/jobs/{job}", json={"status": "completed"})
        assert s.events(until=lambda e: e.event == "end", timeout=5)[-1].event == "end"
    finally:
        s.close()


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_without_redis_several_workers_deliver_everything(db, request, tmp_path, server_factory):
    url = (request.getfixturevalue("pg_url") if db == "postgresql"
           else f"sqlite:///{tmp_path}/multi.db")
    _init_schema(url)
    servers = [server_factory(env={"QUAERO_DATABASE_URL": url}, workers=3),
               server_factory(env={"QUAERO_DATABASE_URL": url})]
    _every_stream_gets_every_line(servers, streams_per_server=4)


def test_redis_outage_loses_no_line(pg_url, server_factory, tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        _init_schema(pg_url)
        env = {"QUAERO_DATABASE_URL": pg_url, "QUAERO_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        a, b = server_factory(env=env), server_factory(env=env)
        s = SSEClient(f"{b.url}/api/logs/stream?scope=service&limit=0", timeout=30)
        s.events(until=lambda e: e.event == "logs")
        acked, got = [], []
        for phase in range(3):
            if phase == 1:
                redis_proc.terminate()
                redis_proc.wait()
                deadline = time.monotonic() + 10
                while httpx.get(f"{a.url}/healthz").status_code == 200:
                    assert time.monotonic() < deadline, "healthz reports the outage"
                    time.sleep(0.2)
            if phase == 2:
                redis_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
                deadline = time.monotonic() + 15
                while httpx.get(f"{a.url}/healthz").status_code != 200:
                    assert time.monotonic() < deadline, "the bridge reconnects by itself"
                    time.sleep(0.2)
            for i in range(20):
                ack = post(a.url, [{"level": "info", "message": f"o{phase}-{i}"}])
                acked.extend(range(ack["first_id"], ack["last_id"] + 1))
                gevent.sleep(0.02)
            collect(s, acked[-1], timeout=10, out=got)
        s.close()
        got = [i for i in got if i >= acked[0]]
        assert got == sorted(set(got)) and set(acked) <= set(got)
    finally:
        redis_proc.terminate()
        redis_proc.wait()
