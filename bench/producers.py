"""Lines/s from each producer to a stream client: the OTLP exporter (real OTel SDK), ``exec``,
``pipe`` and ``QuaeroHandler``, each in its own plain process, against one real gunicorn.

For each producer: start it, and a stream client (``GET /api/logs/stream`` from ``after=0``,
so that it receives every line) counts the lines until all N arrived. Rate = N / (time from
the producer's start to the last line at the client). Drops (bounded buffers) are reported.

    python bench/producers.py [--lines 20000] [--db sqlite|postgresql]
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

import httpx
from httpx_sse import connect_sse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, Server, temp_database  # noqa: E402

HANDLER = """
import logging, sys
from quaero.client import QuaeroHandler
h = QuaeroHandler(sys.argv[1], source="bench-handler", max_lines=1_000_000, close_timeout=120)
log = logging.getLogger("bench"); log.addHandler(h); log.setLevel(logging.INFO); log.propagate = False
for i in range(int(sys.argv[2])):
    log.info("handler line %d", i)
h.close()
print("dropped", h.dropped, file=sys.stderr)
"""

OTLP = """
import sys
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
provider = LoggerProvider(resource=Resource.create({"service.name": "bench-otlp"}))
provider.add_log_record_processor(BatchLogRecordProcessor(
    OTLPLogExporter(endpoint=sys.argv[1] + "/v1/logs"), max_queue_size=1_000_000))
logger = provider.get_logger("bench")
for i in range(int(sys.argv[2])):
    logger.emit(LogRecord(body=f"otlp line {i}", severity_number=SeverityNumber.INFO))
provider.shutdown()
"""


def count_stream(url, params, n, done):
    got = 0
    with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=60)) as client:
        with connect_sse(client, "GET", "/api/logs/stream",
                         params={**params, "after": 0, "level": "debug"}) as events:
            for event in events.iter_sse():
                if event.event == "logs":
                    got += len(json.loads(event.data)["logs"])
                    if got >= n:
                        break
    done.append((time.monotonic(), got))


def job_id_of(url, name, deadline):
    while time.monotonic() < deadline:
        jobs = httpx.get(url + "/api/jobs").json()["jobs"]
        found = [j["id"] for j in jobs if j["name"] == name]
        if found:
            return found[0]
        time.sleep(0.02)
    raise RuntimeError(f"no job {name}")


def measure(url, name, argv, n, stdin=None):
    env = dict(os.environ, PYTHONPATH=ROOT, QUAERO_URL=url, QUAERO_FLUSH_TIMEOUT="120")
    done = []
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.PIPE if stdin else None,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if stdin:
        threading.Thread(target=lambda: (proc.stdin.write(stdin), proc.stdin.close()),
                         daemon=True).start()
    if name in ("exec", "pipe"):
        params = {"scope": "job", "job_id": job_id_of(url, f"bench-{name}", started + 60)}
    else:
        params = {"scope": "service", "source": f"bench-{name}"}
    reader = threading.Thread(target=count_stream, args=(url, params, n, done), daemon=True)
    reader.start()
    reader.join(300)
    err = proc.stderr.read()
    proc.wait(300)
    if not done:
        raise RuntimeError(f"{name}: the stream client did not get {n} lines: {err[-500:]!r}")
    at, got = done[0]
    return {"producer": name, "lines": got, "seconds": round(at - started, 2),
            "lines_per_s": round(got / (at - started)), "exit": proc.returncode,
            "note": err.decode(errors="replace").strip()[-200:]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    args = ap.parse_args()
    n = args.lines
    emit = f"import sys\nfor i in range({n}): sys.stdout.write(f'exec line {{i}}\\n')\n"
    with temp_database(args.db) as db_url, Server(db_url) as server:
        url = server.url
        runs = [
            ("otlp", [sys.executable, "-c", OTLP, url, str(n)], None),
            ("exec", [sys.executable, "-m", "quaero", "exec", "--name", "bench-exec", "--",
                      sys.executable, "-c", emit], None),
            ("pipe", [sys.executable, "-m", "quaero", "pipe", "--name", "bench-pipe"],
             "".join(f"pipe line {i}\n" for i in range(n)).encode()),
            ("handler", [sys.executable, "-c", HANDLER, url, str(n)], None)]
        for name, argv, stdin in runs:
            print(json.dumps(measure(url, name, argv, n, stdin)), flush=True)


if __name__ == "__main__":
    main()
