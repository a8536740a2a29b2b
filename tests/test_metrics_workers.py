"""/metrics is one view of the whole server, whichever worker answers (issue 14): a real
gunicorn of 3 gevent workers, prometheus-client's multiprocess mode (gunicorn.conf.py)."""
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.multiprocess import MultiProcessCollector

from .sse_client import SSEClient

REQUESTS = 60
LINES_PER_REQUEST = 7


def sample(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def scrape(url, times=9):
    """/metrics on a new connection each time (so, by turns, different workers)."""
    return [httpx.get(f"{url}/metrics", headers={"Connection": "close"}).text
            for _ in range(times)]


def per_worker(prom_dir, name):
    """{file: value} of one sample in each worker's own file."""
    out = {}
    for path in prom_dir.glob("counter_*.db"):
        for metric in MultiProcessCollector._read_metrics([str(path)]).values():
            for s in metric.samples:
                if s.name == name:
                    out[path.name] = out.get(path.name, 0) + s.value
    return out


def test_metrics_add_up_across_three_workers(server_factory, tmp_path):
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    # the directory named here, so that the test can see which workers did the work;
    # unset, gunicorn.conf.py makes one of its own (every other server test)
    srv = server_factory(workers=3, env={"PROMETHEUS_MULTIPROC_DIR": str(prom_dir)})
    job = httpx.post(f"{srv.url}/api/jobs", json={"name": "m", "steps": ["s"]}).json()["id"]

    def send(i):
        lines = [{"job_id": job, "step_name": "s", "level": "info", "message": f"r{i} l{j}"}
                 for j in range(LINES_PER_REQUEST)]
        r = httpx.post(f"{srv.url}/api/logs", json={"logs": lines},
                       headers={"Connection": "close"})
        assert r.status_code in (200, 201, 202), r.text

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(send, range(REQUESTS)))

    name = "quaero_log_lines_ingested_total"
    ingested = per_worker(prom_dir, name)
    assert len([v for v in ingested.values() if v > 0]) >= 2, ingested  # several workers ingested
    deadline = time.monotonic() + 10
    while True:  # the service log (the server's own lines) is ingested too, in the background
        service = httpx.get(f"{srv.url}/api/logs", params={"scope": "service", "level": "debug",
                                                           "limit": 1}).json()["meta"]["total_count"]
        expected = REQUESTS * LINES_PER_REQUEST + service
        totals = [sample(t, name) for t in scrape(srv.url)]
        if totals == [expected] * len(totals) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert totals == [expected] * len(totals), (totals, expected, ingested)
    assert sum(per_worker(prom_dir, name).values()) == expected

    # a live gauge: streams open on different workers, counted once each, by every worker
    url = f"{srv.url}/api/logs/stream?scope=job&job_id={job}"
    streams = [SSEClient(url) for _ in range(6)]
    try:
        for s in streams:
            s.events(until=lambda e: e.event == "logs")
        gauge = 'quaero_sse_streams_open{scope="job"}'
        assert [sample(t, gauge) for t in scrape(srv.url)] == [6.0] * 9
    finally:
        for s in streams:
            s.close()
    deadline = time.monotonic() + 10
    while any(sample(t, gauge) for t in scrape(srv.url, 3)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [sample(t, gauge) for t in scrape(srv.url)] == [0.0] * 9

