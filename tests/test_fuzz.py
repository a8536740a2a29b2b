"""Hostile input: schemathesis against the live server's OpenAPI document, and extra fuzz
of the stream's query string and Last-Event-ID header. No 5xx, every error JSON."""
import json
import os
import socket
import subprocess
import sys
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import Server


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("fuzz")).start()
    yield server
    server.stop()


def test_schemathesis_against_the_live_server(live):
    """Every operation of /api/openapi.json, generated and stateful cases: no 5xx, the
    documented status codes, content types and response schemas. The two checks left
    out assume there are no cross-field rules (scope=job needs job_id) and that a
    schema's maxItems means 400, where the contract says 413."""
    st = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    result = subprocess.run(
        [st, "run", f"{live.url}/api/openapi.json", "--max-examples", "60",
         "--exclude-path", "/api/logs/stream", "--request-timeout", "20",
         "--exclude-checks", "positive_data_acceptance,negative_data_rejection"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_openapi_document_is_served(live):
    import httpx
    doc = httpx.get(f"{live.url}/api/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/logs/stream" in doc["paths"]


def _raw_get(live, target, headers=b""):
    try:
        return _raw_get_once(live, target, headers)
    except ConnectionResetError:
        # gunicorn's parser refused an oversized request line or header and closed the
        # connection while it was still being sent: a refusal, never a 5xx
        return 400, "", b""


def _raw_get_once(live, target, headers):
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as s:
        s.sendall(b"GET " + target + b" HTTP/1.0\r\nHost: x\r\n" + headers + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        if status != 200:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        return status, head.decode("latin-1").lower(), body


values = st.one_of(st.text(max_size=40), st.integers(min_value=-10**30, max_value=10**30).map(str),
                   st.just("9" * 5000), st.just(""), st.sampled_from(["job", "service", "info", "0"]))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(params=st.dictionaries(st.sampled_from(["scope", "job_id", "step", "level", "limit", "after"]),
                              values, max_size=5),
       last_event_id=st.one_of(st.none(), values))
def test_stream_query_and_last_event_id_fuzz(live, params, last_event_id):
    target = "/api/logs/stream?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in params.items())
    headers = b""
    if last_event_id is not None:
        headers = b"Last-Event-ID: " + last_event_id.encode("utf-8")[:8000] + b"\r\n"
    status, head, body = _raw_get(live, target.encode(), headers)
    assert status < 500, (target, last_event_id, status)
    if status == 200:
        assert "text/event-stream" in head
    elif "application/json" in head:
        assert "error" in json.loads(body)
    else:  # refused by gunicorn's HTTP parser before Quaero (bad header bytes, 414 too long)
        assert 400 <= status < 500
