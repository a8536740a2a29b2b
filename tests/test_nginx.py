"""docs/nginx-quaero.conf in front of two Quaero servers: streams flow unbuffered."""
import os
import shutil
import subprocess
import time

import httpx
import pytest

from tests.helpers import free_port, nginx_conf
from tests.sse_client import SSEClient


@pytest.fixture
def nginx(tmp_path, server_factory):
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        pytest.skip("nginx is not installed (CI installs Debian's nginx-light)")
    db = f"sqlite:///{tmp_path}/shared.db"
    from tests.test_scale_out import _init_schema
    _init_schema(db)
    servers = [server_factory(env={"QUAERO_DATABASE_URL": db}) for _ in range(2)]
    port = free_port()
    conf = nginx_conf(tmp_path, [s.port for s in servers], port)
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp_path)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, (tmp_path / "nginx-error.log").read_text()
        time.sleep(0.1)
    yield url, servers
    proc.terminate()
    proc.wait()


def test_stream_through_nginx(nginx):
    url, servers = nginx
    s = SSEClient(f"{url}/api/logs/stream?scope=service&level=error&limit=0",
                  headers={"Accept-Encoding": "gzip"})
    try:
        assert s.status == 200 and "content-encoding" not in s.headers
        s.events(until=lambda e: e.event == "logs")
        for i, server in enumerate(servers * 2):  # posted to each server directly
            sent = time.monotonic()
            ack = httpx.post(f"{server.url}/api/logs",
                             json={"logs": [{"level": "error", "message": f"n{i}"}]}).json()
            ev = s.events(until=lambda e: e.event == "logs", timeout=5)[-1]
            assert [ln["id"] for ln in ev.json()["logs"]] == [ack["last_id"]]
            assert time.monotonic() - sent < 1.5, "not held in a proxy buffer"
    finally:
        s.close()
