"""How fast a command step's output reaches a stream.

Starts a real Quaero (gunicorn, gevent worker, as ``python app.py`` does) on a temporary
database and jobs folder, runs a definition whose one step prints ``--lines`` lines as fast
as Python can, and reads the job's SSE stream (httpx-sse) from this process until ``end``.
Prints the lines per second the runner sustains from the step's pipe through the database
commit to the stream, and, for comparison, how fast the command prints on its own.

    python bench/runner_throughput.py [--lines 200000] [--database-url URL]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import httpx
from httpx_sse import connect_sse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from _common import free_port  # noqa: E402
PRINTER = ("import sys\nw = sys.stdout.write\n"
           "for i in range({n}):\n    w('line %d of the burst, some text to make it look real\\n' % i)\n")


def producer_alone(n, script):
    started = time.perf_counter()
    subprocess.run([sys.executable, script], stdout=subprocess.DEVNULL, check=True)
    return n / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--database-url", default=None,
                        help="default: a fresh SQLite file; e.g. postgresql+psycopg://...")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="quaero-bench-")
    jobs = os.path.join(tmp, "jobs")
    os.makedirs(jobs)
    script = os.path.join(jobs, "printer.py")
    with open(script, "w") as f:
        f.write(PRINTER.format(n=args.lines))
    with open(os.path.join(jobs, "burst.toml"), "w") as f:
        f.write('[[steps]]\nname = "burst"\nrun = \'"$QUAERO_PYTHON" printer.py\'\n')
    port = free_port()
    env = dict(os.environ, QUAERO_PORT=str(port), QUAERO_HOST="127.0.0.1", QUAERO_WORKERS="1",
               QUAERO_JOBS_DIR=jobs,
               QUAERO_DATABASE_URL=args.database_url or f"sqlite:///{tmp}/bench.db")
    log = open(os.path.join(tmp, "server.log"), "wb")
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c",
                               os.path.join(ROOT, "gunicorn.conf.py"), "wsgi:app"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("the server did not start; see " + log.name)
            time.sleep(0.1)

        with httpx.Client(base_url=base, timeout=httpx.Timeout(10, read=60)) as client:
            posted = time.perf_counter()
            job = client.post("/api/jobs", json={"definition": "burst"}).json()
            received, first, last, events, resumed = 0, None, None, 0, 0
            last_id, ended = 0, False
            while not ended:  # a client that falls behind is dropped: it resumes, as any must
                try:
                    with connect_sse(client, "GET", "/api/logs/stream",
                                     params={"scope": "job", "job_id": job["id"], "level": "info"},
                                     headers={"Last-Event-ID": str(last_id)}) as source:
                        for sse in source.iter_sse():
                            if sse.event == "logs":
                                lines = json.loads(sse.data)["logs"]
                                if lines:
                                    now = time.perf_counter()
                                    first = first or now
                                    last = now
                                    received += len(lines)
                                    events += 1
                                    last_id = lines[-1]["id"]
                            elif sse.event == "end":
                                ended = True
                                break
                except httpx.TransportError:
                    pass
                if not ended:
                    resumed += 1
            job = client.get(f"/api/jobs/{job['id']}").json()
            dropped = sum(float(x.split()[-1]) for x in client.get("/metrics").text.splitlines()
                          if x.startswith("quaero_sse_slow_clients_dropped_total"))
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    assert job["status"] == "completed", job
    assert received == args.lines, (received, args.lines)
    step = job["steps"][0]

    def t(s):
        from datetime import datetime
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    step_secs = t(step["finished_at"]) - t(step["started_at"])
    stream_secs = max(last - posted, 1e-9)
    database = (args.database_url or "sqlite").split(":", 1)[0]
    print(f"lines: {args.lines}, database: {database}")
    print(f"the command alone prints {producer_alone(args.lines, script):,.0f} lines/s (to /dev/null)")
    print(f"step duration (runner: pipe -> batches -> commit): {step_secs:.2f} s "
          f"= {args.lines / step_secs:,.0f} lines/s")
    print(f"stream: all {received} lines at the SSE client {stream_secs:.2f} s after the "
          f"job was posted ({events} logs events, resumed {resumed} times; first line after "
          f"{(first - posted) * 1000:.0f} ms; dropped as slow {dropped:.0f} times) "
          f"= {received / stream_secs:,.0f} lines/s end to end")
    print(f"RESULT runner_throughput_lines_per_s={received / stream_secs:,.0f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
