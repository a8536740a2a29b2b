"""End-to-end latency across servers: POST a line to server A, receive it on a stream
served by server B (both on one PostgreSQL and, unless --no-redis, one Redis).

    python bench/cross_server.py [--postgres URL] [--redis URL] [--lines 300] [--no-redis]

Prints p50/p99/max from the POST being sent to the line arriving at the SSE client.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import gevent  # noqa: E402
import httpx  # noqa: E402
import psycopg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.conftest import free_port  # noqa: E402
from tests.sse_client import SSEClient  # noqa: E402


def start(env, tmp, name):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
        env=dict(os.environ, **env, QUAERO_PORT=str(port)), start_new_session=True,
        stdout=open(f"{tmp}/{name}.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(open(f"{tmp}/{name}.log").read())


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--lines", type=int, default=300)
    ap.add_argument("--every", type=float, default=0.05)
    args = ap.parse_args()
    db = f"quaero_bench_{uuid.uuid4().hex[:8]}"
    admin = args.postgres.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    url = args.postgres.rsplit("/", 1)[0] + "/" + db
    tmp = tempfile.mkdtemp()
    env = {"QUAERO_DATABASE_URL": url}
    if not args.no_redis:
        env["QUAERO_REDIS_URL"] = args.redis
    procs = []
    try:
        from quaero.migrate import init_db
        import sqlalchemy as sa
        engine = sa.create_engine(url)
        init_db(engine)
        engine.dispose()
        a, a_url = start(env, tmp, "a")
        b, b_url = start(env, tmp, "b")
        procs = [a, b]
        s = SSEClient(f"{b_url}/api/logs/stream?scope=service&level=error&limit=0", timeout=30)
        s.events(until=lambda e: e.event == "logs")
        sent_at, got_at = {}, {}

        def read():
            while len(got_at) < args.lines:
                ev = s.next_event(timeout=30)
                if ev.event == "logs":
                    for ln in ev.json()["logs"]:
                        got_at[ln["message"]] = ev.received

        reader = gevent.spawn(read)
        with httpx.Client(base_url=a_url, timeout=30) as c:
            for i in range(args.lines):
                msg = f"x{i}"
                sent_at[msg] = time.monotonic()
                assert c.post("/api/logs", json={"logs": [{"level": "error", "message": msg}]}).status_code == 201
                gevent.sleep(args.every)
        reader.get(timeout=60)
        lat = [(got_at[m] - sent_at[m]) * 1000 for m in sent_at]
        mode = "without Redis (database watcher)" if args.no_redis else "through Redis"
        print(f"POST to server A -> SSE on server B, {mode}, {args.lines} lines, one every "
              f"{args.every * 1000:.0f} ms: p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, "
              f"max {max(lat):.1f} ms")
        s.close()
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(20)
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
