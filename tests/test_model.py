"""A model that proves it (issue 20): a Hypothesis state machine drives the real HTTP API
of a real gunicorn server over a socket and compares every answer with a plain in-memory
model of what must be stored and delivered (../shared/CONTRACT.md, docs/contract.md).

Operations: create jobs with steps; post batches of lines that mix several jobs, steps
and the service log in one request, with and without ``Idempotency-Key`` (fresh keys,
reused keys with the same or another body, invalid keys), some naming an unknown or
deleted job or an unknown step; resend a recorded request; move jobs through their
statuses (PATCH), cancel and delete them; push lines through the Loki push API and as OpenTelemetry (OTLP/JSON) records; archive, prune and import a finished job
(issue 22) as the pruner and ``quaero import`` do; poll ``GET /api/logs`` (scope, several
``job_id``, step, level, q, limit, after, before); ``GET /api/search`` and its
``next_before`` pages; ``GET /api/jobs/<id>`` and ``logs.txt``; SSE streams
(``GET /api/logs/stream``): backfill, status, live lines, ``end``, and a resume with
``Last-Event-ID`` (gap-free, duplicate-free, in id order; ``204`` for an ended job with
nothing left). Lines carry attributes, trace and span ids (issue 23); every read may
filter by ``attr.KEY=VALUE`` or ``trace_id``, and ``GET /api/logs/facets`` counts values.

The model: ids strictly increasing and never reused (a batch's lines take ``first_id`` ..
``last_id`` in request order), ``line_number`` contiguous per job over all its steps
(service lines: strictly increasing, contiguous inside one batch), ``level=X`` means X and
above, ``q`` is a case-insensitive literal substring (Python's ``str.lower``).

One server per configuration (module-scoped): state cannot be reset while it runs, so
every example uses fresh jobs and a token of its own that every message it sends
carries; service-log and everywhere-search reads always ask for ``q`` containing the
token, so the model knows every line such a read can return (the server's own service
lines, and other examples' lines, never match).

Where the contract leaves room, the model accepts either answer: a resume (or ``after``)
above every id the example saw may be beyond the server's newest id, and then the stream
may start afresh with the tail (or a poll answer ``last_id`` = the newest); a deleted job's
own lines that a stream still held for its 150 ms pacing may never be sent (they went with
the job), while every other line committed before a status change must precede its
``status``/``end``; a finished job's cancel or PATCH is a 409 or changes nothing.

Configurations: SQLite with one worker; PostgreSQL + Redis with two workers
(QUAERO_TEST_POSTGRES_URL and QUAERO_TEST_REDIS_URL; skipped when they are not set).

Size: ``QUAERO_MODEL_EXAMPLES`` (default 40) examples per configuration, each of up to
``QUAERO_MODEL_STEPS`` (default 25) operations. By hand, for a longer search::

    QUAERO_MODEL_EXAMPLES=500 QUAERO_MODEL_STEPS=40 python -m pytest tests/test_model.py -q

``QUAERO_MODEL_SKIP=keys,stream_service,...`` leaves out operations by rule name (``keys``:
no ``Idempotency-Key`` at all), to look for other bugs while some failures are known.
"""
import dataclasses
import json
import os
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlencode

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)

from tests.helpers import REDIS_URL, Server, reset_pg
from tests.sse_client import SSEClient

pytestmark = [pytest.mark.slow, pytest.mark.server]

EXAMPLES = int(os.environ.get("QUAERO_MODEL_EXAMPLES", "40"))
STEPS = int(os.environ.get("QUAERO_MODEL_STEPS", "25"))
SETTINGS = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                    database=None, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.data_too_large,
                                                          HealthCheck.filter_too_much])

RANK = {"debug": 0, "info": 1, "warn": 2, "error": 3}
LEVEL_IN = ["debug", "info", "warn", "warning", "error"]          # what producers send
LEVEL_Q = [None, "debug", "info", "warn", "warning", "error"]     # a reader's level=
CANON = {"warning": "warn"}
WORDS = ["alpha", "Beta", "GAMMA ray", "delta_7", "50%_off", "Ünïcode", "it's \"q\"",
         "back\\slash", "tab\there", "MiXeD Case"]
FRAGMENTS = ["a", "BETA", "ray", "%_", "_7", "ünï", "ÜNÏCODE", "'s \"", "\\s", "\th",
             "mixed case", "nothing-matches", "#1"]
# (the last two share PostgreSQL's index key of a job's step: models.STEP_KEY)
STEP_NAMES = ["fetch", "build", "Test Ünï", "deploy now", "step-518", "step-634"]
SOURCES = [None, "api", "cron"]
TRACE_A, TRACE_B = "4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c"
# what a line may carry besides its message (issue 23): (attributes, trace_id, span_id)
FIELDS = [None, None,
          ({"user.id": "42"}, None, None),
          ({"user.id": 42, "ok": True}, TRACE_A, "00f067aa0ba902b7"),
          ({"code": 500, "user.id": "7"}, TRACE_B, None),
          ({"code": "500", "ok": False, "ratio": 0.5}, None, None),
          ({"code": 500.0}, TRACE_A, None),
          ({}, None, None)]
# attr.KEY=VALUE / trace_id filters a reader may ask (None: none)
ATTR_FILTERS = [None, None, (("user.id", "42"),), (("code", "500"),), (("code", "500.0"),),
                (("ok", "true"),), (("ok", "false"), ("code", "500")), (("ratio", "0.5"),),
                (("missing", "1"),), ("trace", TRACE_A), ("trace", TRACE_B)]
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
FINISHED = ("completed", "failed", "cancelled")
STREAM_TIMEOUT = 3  # lines go out within 150 ms; a failing example waits this long
SKIP = set(filter(None, os.environ.get("QUAERO_MODEL_SKIP", "").split(",")))
SEEN = Counter()  # what a run exercised, printed at its end (pytest -s)


def new_token():
    """Ten letters no job id (hex), job name or server message of ours contains. From
    os.urandom: Hypothesis seeds ``random`` alike for every example."""
    return "".join("ghijklmnopqrstuvwxyz"[b % 20] for b in os.urandom(10))


@dataclass
class Line:
    id: int
    job: str | None
    step: str | None
    level: str
    message: str
    source: str | None
    line_number: int | None  # a service line's is learned from the first read that shows it
    batch: int
    pos: int                 # position among the batch's service lines
    attrs: dict | None = None
    trace: str | None = None
    span: str | None = None


@dataclass(eq=False)
class Job:
    id: str
    name: str
    steps: list
    step_ids: dict = field(default_factory=dict)
    status: str = "pending"
    started: bool = False
    deleted: bool = False
    lines: int = 0           # its last line_number
    history: list = field(default_factory=lambda: ["pending"])  # every status it had


@dataclass
class Filter:
    scope: str               # "job", "service" or "all" (search)
    jobs: tuple = ()
    step: str | None = None
    level: str = "info"
    q: str | None = None
    attrs: tuple = ()        # ((key, text), ...), all must match
    trace: str | None = None

    def matches(self, line):
        if self.scope == "service" and line.job is not None:
            return False
        if self.scope == "job" and (line.job not in self.jobs
                                    or self.step is not None and line.step != self.step):
            return False
        if self.scope == "all" and self.jobs and line.job not in self.jobs:
            return False
        if RANK[line.level] < RANK[self.level]:
            return False
        if self.trace is not None and line.trace != self.trace:
            return False
        if not all(attr_matches((line.attrs or {}).get(k), text) for k, text in self.attrs):
            return False
        return self.q is None or self.q.lower() in line.message.lower()


def attr_matches(value, text):
    """The contract: values compared as text, ``500`` matches the number 500 (and, as a
    number, ``500.0`` does too; the string "500" only ``500``)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return text == ("true" if value else "false")
    if isinstance(value, (int, float)):
        try:
            return float(text) == value
        except ValueError:
            return False
    return value == text


def text_of(value):
    """An attribute value as text: true/false, a number without a needless fraction."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def otlp_value(value):
    """An attribute value as OTLP/JSON's AnyValue."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": value}


def with_attr_filter(f, params, spec):
    """``f`` and the query ``params`` with the ATTR_FILTERS entry ``spec``."""
    if spec is None:
        return f, params
    if spec[0] == "trace":
        return dataclasses.replace(f, trace=spec[1]), params + [("trace_id", spec[1])]
    SEEN["attr filter"] += 1
    return (dataclasses.replace(f, attrs=spec),
            params + [(f"attr.{k}", text) for k, text in spec])


def level_of(value, default):
    return CANON.get(value, value) if value else default


def is_json_error(r, status):
    assert r.status_code == status, f"{r.request.method} {r.request.url}: want {status}, " \
                                    f"got {r.status_code} {r.text[:300]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body


class Stream:
    """One SSE connection checked against the model as its events arrive."""

    def __init__(self, machine, f, params, headers, resume):
        self.m, self.f, self.resume = machine, f, resume
        self.client = SSEClient(f"{machine.url}/api/logs/stream?{urlencode(params, doseq=True)}",
                                headers=headers, timeout=STREAM_TIMEOUT)
        self.status = self.client.status
        self.ids = []            # line ids received, in order
        self.last_event_id = None
        self.displayed = 0
        self.statuses = {}       # job id -> last status payload
        self.ended = None
        self.closed = False
        self.first = None        # the first logs event (the backfill)
        self.first_ids = None
        self.change = None       # (job id, status, ids committed before the change)
        self.blocks = 0
        self.events = []

    def read(self, until, what, timeout=STREAM_TIMEOUT):
        deadline = time.monotonic() + timeout
        while not until():
            if self.closed:
                raise AssertionError(f"stream closed while waiting for {what}; events "
                                     f"{self.events[-6:]}")
            try:
                ev = self.client.next_event(timeout=max(deadline - time.monotonic(), 0.05))
            except TimeoutError:
                raise AssertionError(f"stream silent for {timeout}s while waiting for {what}; "
                                     f"got ids {self.ids[-10:]}, events {self.events[-6:]}") \
                    from None
            if ev is None:
                self.closed = True
                continue
            self.take(ev)

    def take(self, ev):
        self.blocks += 1
        if self.blocks == 1:
            assert b"retry:" in ev.raw, f"the stream does not open with a retry: field: {ev.raw!r}"
        if ev.event in ("ping", "retry"):
            return
        self.events.append(ev)
        assert self.ended is None, f"an event after end: {ev}"
        if ev.event == "logs":
            body = ev.json()
            lines = body["logs"]
            assert ev.id is not None and ev.id.isdigit(), f"a logs event without an id: {ev}"
            for got in lines:
                assert not self.ids or got["id"] > self.ids[-1], \
                    f"stream: id {got['id']} after {self.ids[-1]} (order or duplicate)"
                self.m.check_line(got, gone_too=True)  # (sent before its job was deleted)
                line = self.m.lines.get(got["id"]) or self.m.gone[got["id"]]
                assert self.f.matches(line), f"stream sent a line its filter excludes: {got}"
                self.ids.append(got["id"])
            if lines:
                assert int(ev.id) == lines[-1]["id"], f"event id {ev.id} is not its last line's"
            self.displayed += len(lines)
            assert body["meta"]["displayed_count"] == self.displayed, body["meta"]
            if self.first is None:
                self.first = body
                self.first_ids = [ln["id"] for ln in lines]
            self.last_event_id = int(ev.id)
        elif ev.event == "status":
            assert self.first is not None, "a status event before the backfill"
            payload = ev.json()
            job_id = payload["job"]["id"]
            assert job_id in self.f.jobs, payload
            self.m.check_status_payload(payload)
            self.statuses[job_id] = payload
            if self.change and self.change[:2] == (job_id, payload["job"]["status"]):
                missing = self.change[2] - set(self.ids)
                assert not missing, f"status {payload} overtook lines committed before the " \
                                    f"change: {sorted(missing)}"
        elif ev.event == "end":
            assert self.f.scope == "job", f"end on a {self.f.scope} stream"
            payload = ev.json()
            ended = payload.get("jobs") or [payload["job"]]
            assert {j["id"] for j in ended} == set(self.f.jobs), payload
            for j in ended:
                job = self.m.jobs_by_id[j["id"]]
                want = "deleted" if job.deleted else job.status
                assert j["status"] == want, (payload, want)
            self.ended = payload
            if self.change:
                missing = self.change[2] - set(self.ids)
                assert not missing, f"end overtook lines committed before it: {sorted(missing)}"
            SEEN["stream end"] += 1
        else:
            raise AssertionError(f"unknown event {ev}")

    def wait_closed(self):
        deadline = time.monotonic() + STREAM_TIMEOUT
        while not self.closed:
            try:
                ev = self.client.next_event(timeout=max(deadline - time.monotonic(), 0.05))
            except TimeoutError:
                raise AssertionError("the server did not close the stream after end") from None
            if ev is None:
                self.closed = True
            else:
                self.take(ev)

    def close(self):
        self.client.close()


class QuaeroModel(RuleBasedStateMachine):
    url = None      # set by the test: the server under test
    engine = None   # its database, as `quaero import` opens it (archive_prune_import)
    archive_dir = None
    shared = None   # across the examples on one server: {"max_id": n}

    def __init__(self):
        super().__init__()
        self.token = new_token()
        self.http = [httpx.Client(base_url=self.url, timeout=30) for _ in range(2)]
        self.jobs = []                 # every job this example created, deleted ones too
        self.jobs_by_id = {}
        self.lines = {}                # id -> Line: what must be stored now
        self.gone = {}                 # id -> Line: stored, then deleted with its job
        self.batches = 0
        self.keys = {}                 # Idempotency-Key -> (body bytes, status, json)
        self.key_order = []
        self.messages = 0
        self.streams = []

    def teardown(self):
        for s in self.streams:
            s.close()
        for c in self.http:
            c.close()

    # -- helpers ----------------------------------------------------------------------

    def live_jobs(self):
        return [j for j in self.jobs if not j.deleted]

    def pick(self, jobs, i):
        return jobs[i % len(jobs)] if jobs else None

    def cursor_id(self, index, offset):
        ids = sorted(self.lines)
        if not ids:
            return max(0, self.shared["max_id"] + offset)
        return max(0, ids[index % len(ids)] + offset)

    def tok(self, variant):
        return [self.token, self.token.upper(), self.token.title()][variant % 3]

    def message(self, word):
        self.messages += 1
        return f"{self.token}:{word} #{self.messages}"

    def check_line(self, got, gone_too=False):
        exp = self.lines.get(got["id"]) or (self.gone.get(got["id"]) if gone_too else None)
        assert exp is not None, f"a line the model does not hold (deleted, refused or " \
                                f"another's): {got}"
        assert (got["job_id"], got["step_name"], got["level"], got["message"],
                got.get("source")) == (exp.job, exp.step, exp.level, exp.message, exp.source), \
            f"line {got['id']}: got {got}, want {exp}"
        assert (got.get("attributes"), got.get("trace_id"), got.get("span_id")) == \
            (exp.attrs, exp.trace, exp.span), f"line {got['id']}'s fields: got {got}, want {exp}"
        assert ISO_MS.match(got["timestamp"]), got
        if exp.line_number is None:
            exp.line_number = got["line_number"]
            self.check_service_numbers()
        assert got["line_number"] == exp.line_number, f"line_number: got {got}, want {exp}"

    def check_service_numbers(self):
        seen = sorted((ln for ln in self.lines.values()
                       if ln.job is None and ln.line_number is not None), key=lambda ln: ln.id)
        for a, b in zip(seen, seen[1:]):
            assert a.line_number >= 1 and b.line_number > a.line_number, (a, b)
            if a.batch == b.batch and b.pos == a.pos + 1:
                assert b.line_number == a.line_number + 1, f"service lines of one batch: {a}, {b}"

    def check_job_json(self, body, job):
        assert body["id"] == job.id and body["name"] == job.name, body
        assert body["status"] == job.status, (body, job)
        assert [s["name"] for s in body["steps"]] == job.steps, body
        assert ISO_MS.match(body["created_at"]), body
        assert (body["started_at"] is not None) == job.started, (body, job)
        assert (body["finished_at"] is not None) == (job.status in FINISHED), (body, job)
        for s in body["steps"]:
            if job.status == "pending":
                assert s["status"] == "pending", body
            assert job.step_ids.setdefault(s["name"], s["id"]) == s["id"], body

    def check_status_payload(self, payload):
        job = self.jobs_by_id[payload["job"]["id"]]
        if payload["job"]["status"] == "deleted":
            assert job.deleted, payload
            return
        # the latest status the model knows, or one it went through: events may lag
        assert payload["job"]["status"] in job.history, (payload, job)
        assert [s["name"] for s in payload["steps"]] == job.steps, payload

    def matching(self, f, lines=None):
        return sorted((ln for ln in (lines or self.lines.values()) if f.matches(ln)),
                      key=lambda ln: ln.id)

    # -- writes -----------------------------------------------------------------------

    def resolve(self, items, bad=None, bad_pos=0):
        """``items`` -> (JSON lines, targets), with one bad target at ``bad_pos`` if asked."""
        live = self.live_jobs()
        out, targets = [], []
        for target, step_i, level, word, source, extra in items:
            job = self.pick(live, target) if target is not None else None
            step = None
            if job is not None and step_i is not None and job.steps:
                step = job.steps[step_i % len(job.steps)]
            line = {"level": level, "message": self.message(WORDS[word])}
            if job is not None:
                line["job_id"] = job.id
            if step is not None:
                line["step"] = step
            if source is not None:
                line["source"] = source
            if FIELDS[extra] is not None:
                attrs, trace, span = FIELDS[extra]
                line["attributes"] = attrs
                if trace is not None:
                    line["trace_id"] = trace.upper() if extra % 2 else trace
                if span is not None:
                    line["span_id"] = span
            out.append(line)
            targets.append((job, step))
        if bad is not None:
            line = {"level": "info", "message": self.message("refused")}
            deleted = [j for j in self.jobs if j.deleted]
            if bad == "deleted job" and deleted:
                line["job_id"] = self.pick(deleted, bad_pos).id
            elif bad == "unknown step" and live:
                line["job_id"] = self.pick(live, bad_pos).id
                line["step"] = "no such step"
            elif bad == "long job id":
                line["job_id"] = uuid.uuid4().hex + "ff"
            else:
                line["job_id"] = uuid.uuid4().hex[:16]
            out.insert(bad_pos % (len(out) + 1), line)
            targets.insert(bad_pos % (len(targets) + 1), None)
        return out, targets

    def expected_post(self, lines, targets):
        if any(t is None for t in targets):
            return 404
        return 201

    def store(self, lines, targets, first_id, last_id):
        n = len(lines)
        assert last_id - first_id + 1 == n, \
            f"a batch of {n} lines took ids {first_id}..{last_id}: not one id per line"
        assert first_id > self.shared["max_id"], \
            f"ids must only grow: first_id {first_id} after {self.shared['max_id']}"
        self.shared["max_id"] = last_id
        self.batches += 1
        pos = 0
        for i, (line, (job, step)) in enumerate(zip(lines, targets)):
            number = None
            if job is not None:
                job.lines += 1
                number = job.lines
            self.lines[first_id + i] = Line(
                first_id + i, job.id if job else None, step,
                CANON.get(line["level"], line["level"]), line["message"], line.get("source"),
                number, self.batches, pos, line.get("attributes") or None,
                (line.get("trace_id") or "").lower() or None, line.get("span_id"))
            if job is None:
                pos += 1

    def send(self, body, key, via):
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return self.http[via].post("/api/logs", content=body, headers=headers)

    def post(self, lines, targets, key=None, via=0):
        body = json.dumps({"logs": lines}).encode()
        r = self.send(body, key, via)
        key_ok = key is None or (0 < len(key) <= 128 and all(0x21 <= ord(c) <= 0x7E for c in key))
        if not key_ok:
            # an invalid key is refused (a bad body may be refused first)
            SEEN["invalid key"] += 1
            want = (400, 404) if self.expected_post(lines, targets) == 404 else (400,)
            assert r.status_code in want, \
                f"Idempotency-Key {key!r} is not 1-128 visible ASCII characters: want 400, " \
                f"got {r.status_code} {r.text}"
            is_json_error(r, r.status_code)
            return r
        if key is not None and key in self.keys:
            first_body, status, answer = self.keys[key]
            if first_body == body:
                SEEN["idempotent replay"] += 1
                assert (r.status_code, r.json()) == (status, answer), \
                    f"a repeat with Idempotency-Key {key!r} must answer the first request's " \
                    f"status and body {(status, answer)}, got {r.status_code} {r.text}"
                return r
            # the same key with another body; a body that is refused anyway may say so first
            SEEN["key reused, other body"] += 1
            want = (409, 404) if self.expected_post(lines, targets) == 404 else (409,)
            assert r.status_code in want, \
                f"Idempotency-Key {key!r} with a different body: want 409, got " \
                f"{r.status_code} {r.text}"
            is_json_error(r, r.status_code)
            return r
        want = self.expected_post(lines, targets)
        if want != 201:
            SEEN["refused post" + (" with a key" if key else "")] += 1
            is_json_error(r, want)
            return r
        SEEN["post with a key" if key else "post"] += 1
        if len({job.id if job else None for job, _ in targets}) > 1:
            SEEN["post across targets"] += 1
        assert r.status_code == 201, f"want 201, got {r.status_code} {r.text} for {lines}"
        answer = r.json()
        assert answer["accepted"] == len(lines), answer
        self.store(lines, targets, answer["first_id"], answer["last_id"])
        if key is not None:
            self.keys[key] = (body, 201, answer)
            self.key_order.append(key)
        return r

    def set_status(self, job, status, via=0):
        before = job.status
        if status == "cancelled" and via == 1:
            r = self.http[0].post(f"/api/jobs/{job.id}/cancel")
        else:
            r = self.http[via].patch(f"/api/jobs/{job.id}", json={"status": status})
        if job.deleted:
            is_json_error(r, 404)
            return
        if before in FINISHED:
            # the contract leaves a finished job's change open: refused, or nothing changes
            if r.status_code != 409:
                assert r.status_code in (200, 202) and r.json()["status"] == before, r.text
            return
        want = 202 if status == "cancelled" and via == 1 else 200
        assert r.status_code == want, f"{before} -> {status}: {r.status_code} {r.text}"
        job.status = status
        job.history.append(status)
        job.started = job.started or status == "running"
        self.check_job_json(r.json(), job)
        self.announced(job, "started" if status == "running" else status)

    def announced(self, job, what):
        """The contract: Quaero's service log says when a job starts and ends, naming its
        id. The line is written behind the answer: wait for it (bounded)."""
        deadline = time.monotonic() + 10
        while True:
            r = self.http[0].get("/api/search", params={"q": job.id, "limit": 50})
            assert r.status_code == 200, r.text
            if any(ln["job_id"] is None and job.id in ln["message"]
                   for ln in r.json()["results"]):
                return
            assert time.monotonic() < deadline, \
                f"no service line names job {job.id} ({what}) within 10 s"
            time.sleep(0.05)

    # -- rules --------------------------------------------------------------------------

    @initialize(steps=st.integers(0, 6))
    def first_job(self, steps):
        self.create_job(steps, 0)

    @rule(steps=st.integers(0, 6), rotate=st.integers(0, 5))
    def create_job(self, steps, rotate):
        if SKIP & {"create_job"}:
            return
        names = (STEP_NAMES[rotate:] + STEP_NAMES[:rotate])[:steps]
        name = f"model job {len(self.jobs)} {WORDS[len(self.jobs) % len(WORDS)]}"
        r = self.http[0].post("/api/jobs", json={"name": name, "steps": names})
        assert r.status_code == 201, r.text
        body = r.json()
        job = Job(body["id"], name, names)
        self.check_job_json(body, job)
        assert body["log_counts"] == dict.fromkeys(RANK, 0), body
        self.jobs.append(job)
        self.jobs_by_id[job.id] = job

    items = st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 7)),       # job (None: service)
                               st.one_of(st.none(), st.integers(0, 3)),       # step
                               st.sampled_from(LEVEL_IN),
                               st.integers(0, len(WORDS) - 1),
                               st.sampled_from(SOURCES),
                               st.integers(0, len(FIELDS) - 1)),
                     min_size=1, max_size=6)
    keys = st.none() if "keys" in SKIP else st.one_of(
                     st.none(), st.none(),
                     st.tuples(st.just("pool"), st.integers(0, 3)),
                     st.tuples(st.just("odd"), st.text(st.characters(min_codepoint=0x21,
                                                                     max_codepoint=0x7E),
                                                       min_size=1, max_size=8)),
                     st.tuples(st.just("long"), st.integers(0, 1)),
                     st.tuples(st.just("bad"), st.sampled_from(["space", "tab", "129"])))

    def key_for(self, spec):
        if spec is None:
            return None
        kind, value = spec
        if kind == "pool":
            return f"{self.token}-k{value}"
        if kind == "odd":
            return f"{self.token}{value}"
        if kind == "long":
            return (self.token + "L" * 128)[:128 - value]
        return {"space": f"{self.token} k", "tab": f"{self.token}\tk",
                "129": (self.token + "x" * 129)[:129]}[value]

    @rule(items=items, key=keys, via=st.integers(0, 1))
    def post_logs(self, items, key, via):
        if SKIP & {"post_logs"}:
            return
        lines, targets = self.resolve(items)
        self.post(lines, targets, self.key_for(key), via)

    @rule(items=items, gz=st.booleans(), via=st.integers(0, 1))
    def push_loki(self, items, gz, via):
        """The same kind of batch through the Loki push API (issue 23): one stream per run
        of lines with the same labels; labels become attributes, ``service_name`` the
        source, ``level`` the level, ``quaero_job_id`` the job. 204, no ids in the answer:
        the model finds each line's id by its unique message, and they must be one run of
        new ids in push order."""
        if SKIP & {"push_loki"}:
            return
        import gzip
        lines, targets = self.resolve(items)
        streams, expected = [], []
        for line, (job, _) in zip(lines, targets):
            labels = {"level": line["level"]}
            if line.get("source"):
                labels["service_name"] = line["source"]
            for k, v in (line.get("attributes") or {}).items():
                if isinstance(v, str) and k not in ("level", "service_name"):
                    labels[k] = v
            attrs = dict(labels)
            if job is not None:
                labels["quaero_job_id"] = job.id
            entry = [str(time.time_ns()), line["message"]]
            if streams and streams[-1]["stream"] == labels:
                streams[-1]["values"].append(entry)
            else:
                streams.append({"stream": labels, "values": [entry]})
            expected.append({"level": line["level"], "message": line["message"],
                             "source": line.get("source"), "attributes": attrs})
        body = json.dumps({"streams": streams}).encode()
        headers = {"Content-Type": "application/json"}
        if gz:
            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        r = self.http[via].post("/loki/api/v1/push", content=body, headers=headers)
        assert r.status_code == 204, f"Loki push: want 204, got {r.status_code} {r.text}"
        self.store_found(expected, targets)
        SEEN["loki push"] += 1

    def store_found(self, lines, targets):
        """Store a batch whose answer named no ids (Loki, OTLP): each line is found by its
        unique message, and the batch must have taken one run of new ids, in order."""
        ids = []
        for line in lines:
            found = self.http[0].get("/api/search", params={"q": line["message"],
                                                            "level": "debug"}).json()
            assert len(found["results"]) == 1, (line, found)
            ids.append(found["results"][0]["id"])
        assert ids == list(range(ids[0], ids[0] + len(ids))), \
            f"a batch's lines took ids {ids}: not one run in order"
        self.store(lines, [(job, None) for job, _ in targets], ids[0], ids[-1])

    @rule(items=items, via=st.integers(0, 1))
    def export_otlp(self, items, via):
        """The same kind of batch as OTLP/HTTP JSON log records (issue 23): a resource per
        record naming its job (``quaero.job.id``) and source (``service.name``), the
        record's attributes, trace and span ids. Like the Loki push, the answer names no
        ids: each line is found by its unique message, and they must be one new run."""
        if SKIP & {"export_otlp"}:
            return
        lines, targets = self.resolve(items)
        resources, expected = [], []
        for line, (job, _) in zip(lines, targets):
            resource = []
            if line.get("source"):
                resource.append({"key": "service.name", "value": {"stringValue": line["source"]}})
            if job is not None:
                resource.append({"key": "quaero.job.id", "value": {"stringValue": job.id}})
            record = {"timeUnixNano": str(time.time_ns()), "severityText": line["level"].upper(),
                      "body": {"stringValue": line["message"]},
                      "attributes": [{"key": k, "value": otlp_value(v)}
                                     for k, v in (line.get("attributes") or {}).items()]}
            for name, key in (("trace_id", "traceId"), ("span_id", "spanId")):
                if line.get(name):
                    record[key] = line[name].lower()
            resources.append({"resource": {"attributes": resource},
                              "scopeLogs": [{"logRecords": [record]}]})
            expected.append(line)
        r = self.http[via].post("/v1/logs", json={"resourceLogs": resources})
        assert r.status_code == 200 and "rejected" not in r.text.lower(), r.text
        self.store_found(expected, targets)
        SEEN["otlp export"] += 1

    @rule(items=items, bad=st.sampled_from(["unknown job", "deleted job", "unknown step",
                                            "long job id"]),
          bad_pos=st.integers(0, 6), key=keys, via=st.integers(0, 1))
    def post_refused(self, items, bad, bad_pos, key, via):
        """A batch with one line naming a job or step that does not exist: 404, nothing
        of it stored (and, with a key, nothing recorded: a fixed retry may succeed)."""
        if SKIP & {"post_refused"}:
            return
        lines, targets = self.resolve(items, bad, bad_pos)
        self.post(lines, targets, self.key_for(key), via)

    @precondition(lambda self: self.key_order)
    @rule(i=st.integers(0, 20), via=st.integers(0, 1))
    def resend(self, i, via):
        """The same request again with the same key: the first answer, nothing stored."""
        if SKIP & {"resend"}:
            return
        key = self.key_order[i % len(self.key_order)]
        body, status, answer = self.keys[key]
        SEEN["idempotent replay"] += 1
        r = self.send(body, key, via)
        assert (r.status_code, r.json()) == (status, answer), \
            f"a repeat with Idempotency-Key {key!r} must answer {status} {answer}, got " \
            f"{r.status_code} {r.text}"

    @rule(items=items, via=st.integers(0, 1))
    def same_key_at_once(self, items, via):
        """Two connections send one request with one new key at the same time: the lines
        are stored once; each answer is that 201 (or a JSON 409 asking for a retry)."""
        if SKIP & {"same_key_at_once", "keys"}:
            return
        import gevent
        lines, targets = self.resolve(items)
        key = f"{self.token}-at-once-{self.messages}"
        body = json.dumps({"logs": lines}).encode()
        jobs = [gevent.spawn(self.send, body, key, i) for i in (via, 1 - via)]
        gevent.joinall(jobs, raise_error=True)
        answers = [j.value for j in jobs]
        ok = [r for r in answers if r.status_code == 201]
        for r in answers:
            if r.status_code != 201:
                is_json_error(r, 409)
        assert ok, f"neither of two requests with one key succeeded: {[r.text for r in answers]}"
        assert all(r.json() == ok[0].json() for r in ok), [r.text for r in ok]
        SEEN["same key at once"] += 1
        answer = ok[0].json()
        assert answer["accepted"] == len(lines), answer
        self.store(lines, targets, answer["first_id"], answer["last_id"])
        self.keys[key] = (body, 201, answer)
        self.key_order.append(key)

    @rule(case=st.integers(0, 13), via=st.integers(0, 1))
    def bad_params(self, case, via):
        """Refusals: JSON errors with the right status, never a stream."""
        if SKIP & {"bad_params"}:
            return
        live = self.live_jobs()
        job = live[0].id if live else None
        good = str(self.shared["max_id"])
        stream = [  # (query, headers, status)
            ([("scope", "service"), ("after", "-5")], {"Last-Event-ID": good}, 400),
            ([("scope", "service")], {"Last-Event-ID": "-1"}, 400),
            ([("scope", "service")], {"Last-Event-ID": "12abc"}, 400),
            ([("scope", "service"), ("step", "fetch")], {}, 400),
            ([("scope", "job")], {}, 400),
            ([("scope", "everything")], {}, 400),
            ([("scope", "service"), ("level", "verbose")], {}, 400),
            ([("scope", "service"), ("q", "x" * 201)], {}, 400),
            ([("scope", "service"), ("limit", "-1")], {}, 400),
            ([("scope", "job"), ("job_id", uuid.uuid4().hex[:16])], {}, 404),
        ]
        if case < len(stream):
            query, headers, status = stream[case]
            c = SSEClient(f"{self.url}/api/logs/stream?{urlencode(query)}", headers=headers,
                          timeout=STREAM_TIMEOUT)
            try:
                assert c.status == status, f"stream {query} {headers}: want {status}, got " \
                                           f"{c.status} {c.buffer[:200]!r}"
                body = json.loads(c.body())
                assert isinstance(body.get("error"), str), body
            finally:
                c.close()
            return
        query, status = [
            ([("scope", "service"), ("after", "-5")], 400),
            ([("scope", "job"), ("job_id", job or "x"), ("before", "x")], 400 if job else None),
            ([("scope", "job"), ("job_id", uuid.uuid4().hex[:16])], 404),
            ([("scope", "service"), ("q", "")], 400),
        ][case - len(stream)]
        if status is not None:  # (no job: a 400 or a 404 first, the contract does not say)
            is_json_error(self.http[via].get("/api/logs", params=query), status)

    @precondition(lambda self: any(j.status in ("pending", "running") and not j.deleted
                                   for j in self.jobs))
    @rule(i=st.integers(0, 7), status=st.sampled_from(["running", "completed", "failed",
                                                       "cancelled"]), via=st.integers(0, 1))
    def change_status(self, i, status, via):
        """PATCH the job's status (via=1 cancels through POST /cancel)."""
        if SKIP & {"change_status"}:
            return
        job = self.pick([j for j in self.jobs if j.status in ("pending", "running")
                         and not j.deleted], i)
        if status == job.status:
            status = "completed"
        self.set_status(job, status, via)

    @precondition(lambda self: any(j.status in FINISHED or j.deleted for j in self.jobs))
    @rule(i=st.integers(0, 7), how=st.sampled_from(["cancel", "patch", "delete", "get"]))
    def poke_ended(self, i, how):
        """A finished or deleted job: cancel/PATCH change nothing, a deleted one is 404."""
        if SKIP & {"poke_ended"}:
            return
        job = self.pick([j for j in self.jobs if j.status in FINISHED or j.deleted], i)
        if how == "cancel":
            self.set_status(job, "cancelled", 1)
        elif how == "patch":
            self.set_status(job, "running", 0)
        elif how == "delete":
            self.delete_job_obj(job)
        else:
            r = self.http[0].get(f"/api/jobs/{job.id}")
            if job.deleted:
                is_json_error(r, 404)
            else:
                assert r.status_code == 200
                self.check_job_json(r.json(), job)

    @rule(i=st.integers(0, 7))
    def delete_job(self, i):
        if SKIP & {"delete_job"}:
            return
        job = self.pick(self.live_jobs(), i)
        if job is not None:
            self.delete_job_obj(job)

    def delete_job_obj(self, job):
        r = self.http[0].delete(f"/api/jobs/{job.id}")
        if job.deleted:
            is_json_error(r, 404)
        elif job.status == "running":
            SEEN["delete running: 409"] += 1
            is_json_error(r, 409)
        else:
            assert r.status_code == 204, f"DELETE a {job.status} job: {r.status_code} {r.text}"
            SEEN["delete"] += 1
            job.deleted = True
            for line_id in [k for k, ln in self.lines.items() if ln.job == job.id]:
                self.gone[line_id] = self.lines.pop(line_id)

    @precondition(lambda self: self.engine is not None and any(j.status in FINISHED and not j.deleted
                                                   for j in self.jobs))
    @rule(i=st.integers(0, 7))
    def archive_prune_import(self, i):
        """The pruner archives a finished job and removes it (then it is a 404), and
        ``quaero import`` brings it back (issue 22), as other processes on the database:
        the same lines (messages, levels, steps, sources, line numbers), in the same order,
        under new ids after every id handed out before. Its old ids are never used again."""
        if SKIP & {"archive_prune_import"}:
            return
        from quaero.archive import import_archive, write_archive
        from quaero.retention import remove_job
        job = self.pick([j for j in self.jobs if j.status in FINISHED and not j.deleted], i)
        engine = self.engine
        path = write_archive(engine, job.id, self.archive_dir)
        remove_job(engine, job.id)
        is_json_error(self.http[0].get(f"/api/jobs/{job.id}"), 404)
        with engine.connect() as conn:
            before = conn.execute(sa.text(
                "SELECT value FROM line_counters WHERE key = '__id__'")).scalar()
        import_archive(engine, path)
        os.remove(path)
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT l.id, l.line_number FROM log_entries l JOIN jobs j "
                "ON j.seq = l.job_seq WHERE j.id = :j ORDER BY l.id"), {"j": job.id}).all()
        old = sorted((ln for ln in self.lines.values() if ln.job == job.id), key=lambda ln: ln.id)
        assert [n for _, n in rows] == [ln.line_number for ln in old], (rows, old)
        assert all(new > before for new, _ in rows), (before, rows)
        for ln, (new, _) in zip(old, rows):
            self.gone[ln.id] = dataclasses.replace(ln)
            del self.lines[ln.id]
            ln.id = new
            self.lines[new] = ln
        self.shared["max_id"] = max([self.shared["max_id"]] + [new for new, _ in rows])
        r = self.http[0].get(f"/api/jobs/{job.id}")
        assert r.status_code == 200, r.text
        self.check_job_json(r.json(), job)
        SEEN["archive, prune, import"] += 1

    @rule(i=st.integers(0, 7), per_block=st.sampled_from([1, 3, 256]),
          index=st.sampled_from([True, True, False]))
    def seal(self, i, per_block, index):
        """PostgreSQL: a job finishes and its plain lines move into compressed blocks, as the
        pruner's pass moves them (quaero.sealing), in blocks of ``per_block`` (the
        product's 256, or a few so that reads go through windows of blocks); with
        ``index`` the search index catches up first (only indexed lines move). Nothing a
        reader sees changes: the model stays as it is, and every read rule checks it."""
        if SKIP & {"seal"} or self.engine.dialect.name != "postgresql":
            return
        from quaero.sealing import seal_job
        from quaero.searchindex import index_behind
        job = self.pick(self.live_jobs(), i)
        if job is None:
            return
        if index:  # 64 lines more (the search index takes whole blocks of 64 ids)
            steps = [None] + list(job.steps)
            targets = [(job, steps[k % len(steps)]) for k in range(64)]
            filler = [{"level": ("debug", "info")[k % 2], "message": self.message(WORDS[k % 3]),
                       "job_id": job.id, **({"step": step} if step else {})}
                      for k, (_, step) in enumerate(targets)]
            self.post(filler, targets)
        if job.status not in FINISHED:  # (the product seals finished jobs only)
            self.set_status(job, "completed")
        if index:
            mark = None
            while True:  # (a chunk at a time)
                with self.engine.begin() as conn:
                    mark, last = index_behind(conn), mark
                if mark == last:
                    break
        with self.engine.connect() as conn:
            seq = conn.execute(sa.text("SELECT seq FROM jobs WHERE id = :j"), {"j": job.id}).scalar()
        if seq is not None and seal_job(self.engine, seq, per_block):
            SEEN["seal"] += 1

    # -- reads ------------------------------------------------------------------------

    limits = st.sampled_from([None, 0, 1, 2, 3, 5])
    cursors = st.one_of(st.none(), st.tuples(st.sampled_from(["after", "before"]),
                                             st.integers(0, 60), st.integers(-1, 1)))

    def check_page(self, r, f, limit, cursor):
        assert r.status_code == 200, f"{r.request.url}: {r.status_code} {r.text}"
        body = r.json()
        matches = self.matching(f)
        limit = 100 if limit is None else min(limit, 5000 if f.scope == "job" else 500)
        if cursor is None:
            want = matches[max(len(matches) - limit, 0):] if limit else []
            more = len(matches) > limit
        elif cursor[0] == "after":
            rest = [ln for ln in matches if ln.id > cursor[1]]
            want, more = rest[:limit], len(rest) > limit
        else:
            rest = [ln for ln in matches if ln.id < cursor[1]]
            want = rest[max(len(rest) - limit, 0):] if limit else []
            more = len(rest) > limit
        got = [ln["id"] for ln in body["logs"]]
        assert got == [ln.id for ln in want], \
            f"{r.request.url}: got ids {got}, want {[ln.id for ln in want]}"
        for line in body["logs"]:
            self.check_line(line)
        meta = body["meta"]
        assert meta["total_count"] == len(matches), (meta, len(matches))
        assert meta["displayed_count"] == len(want), meta
        assert meta["has_more"] is more, (r.request.url, meta, more)
        if want:
            assert body["last_id"] == want[-1].id, body["last_id"]
        elif cursor is not None and cursor[0] == "after":
            if cursor[1] <= self.shared["max_id"]:
                assert body["last_id"] == cursor[1], (r.request.url, body["last_id"])
            else:  # maybe beyond the newest id: the server may answer its newest instead
                assert self.shared["max_id"] <= body["last_id"] <= cursor[1], \
                    (r.request.url, body["last_id"], self.shared["max_id"])

    @rule(picks=st.lists(st.integers(0, 7), min_size=1, max_size=3), step=st.integers(0, 7),
          level=st.sampled_from(LEVEL_Q), q=st.one_of(st.none(), st.sampled_from(FRAGMENTS)),
          limit=limits, cursor=cursors, via=st.integers(0, 1), attr=st.sampled_from(ATTR_FILTERS))
    def poll_jobs(self, picks, step, level, q, limit, cursor, via, attr):
        if SKIP & {"poll_jobs"}:
            return
        jobs = list(dict.fromkeys(self.jobs[p % len(self.jobs)] for p in picks))
        step_name = STEP_NAMES[step] if step < len(STEP_NAMES) else None
        if cursor is not None:
            cursor = (cursor[0], self.cursor_id(cursor[1], cursor[2]))
        params = [("scope", "job")] + [("job_id", j.id) for j in jobs]
        for name, value in (("step", step_name), ("level", level), ("q", q), ("limit", limit)):
            if value is not None:
                params.append((name, value))
        if cursor is not None:
            params.append(cursor)
        f = Filter("job", tuple(j.id for j in jobs), step_name, level_of(level, "info"), q)
        f, params = with_attr_filter(f, params, attr)
        r = self.http[via].get("/api/logs", params=params)
        if any(j.deleted for j in jobs):
            is_json_error(r, 404)
            return
        self.check_page(r, f, limit, cursor)
        SEEN["poll job"] += 1

    @rule(tok=st.integers(0, 2), word=st.one_of(st.none(), st.integers(0, len(WORDS) - 1)),
          cut=st.integers(1, 4), level=st.sampled_from(LEVEL_Q), limit=limits, cursor=cursors,
          via=st.integers(0, 1), attr=st.sampled_from(ATTR_FILTERS))
    def poll_service(self, tok, word, cut, level, limit, cursor, via, attr):
        if SKIP & {"poll_service"}:
            return
        q = self.tok(tok) if word is None else f"{self.tok(tok)}:{WORDS[word][:cut].swapcase()}"
        if cursor is not None:
            cursor = (cursor[0], self.cursor_id(cursor[1], cursor[2]))
        params = [("scope", "service"), ("q", q)]
        if level is not None:
            params.append(("level", level))
        if limit is not None:
            params.append(("limit", limit))
        if cursor is not None:
            params.append(cursor)
        f, params = with_attr_filter(Filter("service", level=level_of(level, "info"), q=q),
                                     params, attr)
        r = self.http[via].get("/api/logs", params=params)
        self.check_page(r, f, limit, cursor)
        SEEN["poll service"] += 1

    @rule(picks=st.lists(st.integers(0, 7), max_size=2), frag=st.sampled_from(FRAGMENTS),
          tok=st.integers(0, 2), level=st.sampled_from(LEVEL_Q),
          limit=st.sampled_from([None, 1, 2, 3, 7]), before=st.one_of(
              st.none(), st.tuples(st.integers(0, 60), st.integers(-1, 1))),
          attr=st.sampled_from(ATTR_FILTERS))
    def search(self, picks, frag, tok, level, limit, before, attr):
        if SKIP & {"search"}:
            return
        jobs = list(dict.fromkeys(self.jobs[p % len(self.jobs)] for p in picks)) \
            if self.jobs else []
        q = frag if jobs else self.tok(tok)   # everywhere: only this example's lines match
        params = [("q", q)] + [("job_id", j.id) for j in jobs]
        if level is not None:
            params.append(("level", level))
        if limit is not None:
            params.append(("limit", limit))
        if before is not None:
            before = self.cursor_id(*before)
            params.append(("before", before))
        f = Filter("all", tuple(j.id for j in jobs), level=level_of(level, "debug"), q=q)
        f, params = with_attr_filter(f, params, attr)
        r = self.http[0].get("/api/search", params=params)
        if any(j.deleted for j in jobs):
            is_json_error(r, 404)
            return
        matches = [ln for ln in reversed(self.matching(f)) if before is None or ln.id < before]
        page = limit or 50
        seen, pages = [], 0
        while True:
            assert r.status_code == 200, r.text
            body = r.json()
            results = body["results"]
            want = matches[len(seen):len(seen) + page]
            assert [ln["id"] for ln in results] == [ln.id for ln in want], \
                f"{r.request.url}: got {[ln['id'] for ln in results]}, want {[ln.id for ln in want]}"
            for line in results:
                self.check_line(line)
                if line["job_id"]:
                    job = self.jobs_by_id[line["job_id"]]
                    assert body["jobs"][job.id] == {"name": job.name, "status": job.status}, body
            seen += results
            more = len(matches) > len(seen)
            if more:
                assert body["next_before"] == results[-1]["id"], (body["next_before"], more)
            else:
                assert body["next_before"] in (None, results[-1]["id"] if results else None), body
            if body["next_before"] is None:
                break
            pages += 1
            assert pages <= len(matches) // page + 1, "next_before pages do not end"
            params = [p for p in params if p[0] != "before"] + [("before", body["next_before"])]
            r = self.http[0].get("/api/search", params=params)
        assert len(seen) == len(matches)
        SEEN["search results"] += len(seen)
        SEEN["search pages"] += pages + 1

    @rule(picks=st.lists(st.integers(0, 7), max_size=2),
          key=st.sampled_from(["user.id", "code", "ok", "ratio", "level", "source", "step"]),
          level=st.sampled_from(LEVEL_Q), attr=st.sampled_from(ATTR_FILTERS),
          limit=st.sampled_from([None, 1, 2, 100]))
    def facets(self, picks, key, level, attr, limit):
        """GET /api/logs/facets: the most frequent values of an attribute (or of level,
        source, step) among the lines a filter matches, with their counts (issue 23)."""
        if SKIP & {"facets"}:
            return
        jobs = list(dict.fromkeys(self.jobs[p % len(self.jobs)] for p in picks)) \
            if self.jobs else []
        if jobs:
            f = Filter("job", tuple(j.id for j in jobs), level=level_of(level, "info"))
            params = [("scope", "job")] + [("job_id", j.id) for j in jobs]
        else:  # the service log: only this example's lines (q holds its token)
            f = Filter("service", level=level_of(level, "info"), q=self.token)
            params = [("scope", "service"), ("q", self.token)]
        params.append(("key", key))
        for name, value in (("level", level), ("limit", limit)):
            if value is not None:
                params.append((name, value))
        f, params = with_attr_filter(f, params, attr)
        r = self.http[0].get("/api/logs/facets", params=params)
        if any(j.deleted for j in jobs):
            is_json_error(r, 404)
            return
        assert r.status_code == 200, r.text
        counts = Counter()
        for ln in self.matching(f):
            value = {"level": ln.level, "source": ln.source, "step": ln.step}.get(
                key, (ln.attrs or {}).get(key))
            if value is not None:
                counts[text_of(value)] += 1
        want = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit or 10]
        assert r.json() == {"key": key, "values": [{"value": v, "count": n} for v, n in want],
                            "total": sum(counts.values())}, (r.request.url, r.json(), want)
        SEEN["facets"] += 1

    @precondition(lambda self: self.jobs)
    @rule(i=st.integers(0, 7))
    def job_and_download(self, i):
        """GET /api/jobs/<id> (log_counts) and logs.txt: the job's whole log, in order."""
        if SKIP & {"job_and_download"}:
            return
        job = self.jobs[i % len(self.jobs)]
        r = self.http[0].get(f"/api/jobs/{job.id}")
        t = self.http[0].get(f"/api/jobs/{job.id}/logs.txt")
        if job.deleted:
            is_json_error(r, 404)
            is_json_error(t, 404)
            return
        assert r.status_code == 200 and t.status_code == 200, (r.text, t.text)
        body = r.json()
        self.check_job_json(body, job)
        lines = self.matching(Filter("job", (job.id,), level="debug"))
        counts = dict.fromkeys(RANK, 0)
        for ln in lines:
            counts[ln.level] += 1
        assert body["log_counts"] == counts, (body["log_counts"], counts)
        text = t.text.split("\n")
        assert text[-1] == "" and len(text) == len(lines) + 1, (t.text[-500:], len(lines))
        for row, ln in zip(text, lines):
            assert row.endswith(ln.message) and ln.level.upper() in row, (row, ln)

    # -- streams ----------------------------------------------------------------------

    @precondition(lambda self: self.jobs)
    @rule(picks=st.lists(st.integers(0, 7), min_size=1, max_size=3),
          step=st.integers(0, 7), level=st.sampled_from(LEVEL_Q),
          q=st.one_of(st.none(), st.sampled_from(FRAGMENTS)),
          limit=st.sampled_from([None, 0, 1, 3]),
          resume=st.one_of(st.none(), st.tuples(st.integers(0, 60), st.integers(-1, 1)),
                           st.just("beyond")),
          header=st.booleans(), live=st.lists(items, max_size=2),
          finish=st.sampled_from([None, None, "cancelled", "completed", "delete"]),
          more=st.lists(items, max_size=1), reconnect=st.booleans(),
          attr=st.sampled_from(ATTR_FILTERS))
    def stream_jobs(self, picks, step, level, q, limit, resume, header, live, finish, more,
                    reconnect, attr):
        if SKIP & {"stream_jobs"}:
            return
        jobs = list(dict.fromkeys(self.jobs[p % len(self.jobs)] for p in picks))
        step_name = STEP_NAMES[step] if step < len(STEP_NAMES) else None
        f = Filter("job", tuple(j.id for j in jobs), step_name, level_of(level, "info"), q)
        params = [("scope", "job")] + [("job_id", j.id) for j in jobs]
        for name, value in (("step", step_name), ("level", level), ("q", q), ("limit", limit)):
            if value is not None:
                params.append((name, value))
        f, params = with_attr_filter(f, params, attr)
        self.run_stream(f, params, limit, resume, header, live, finish, more, reconnect)

    @rule(tok=st.integers(0, 2), word=st.one_of(st.none(), st.integers(0, len(WORDS) - 1)),
          level=st.sampled_from(LEVEL_Q), limit=st.sampled_from([None, 0, 1, 3]),
          resume=st.one_of(st.none(), st.tuples(st.integers(0, 60), st.integers(-1, 1)),
                           st.just("beyond")),
          header=st.booleans(), live=st.lists(items, max_size=2),
          more=st.lists(items, max_size=1), reconnect=st.booleans(),
          attr=st.sampled_from(ATTR_FILTERS))
    def stream_service(self, tok, word, level, limit, resume, header, live, more, reconnect,
                       attr):
        if SKIP & {"stream_service"}:
            return
        q = self.tok(tok) if word is None else f"{self.tok(tok)}:{WORDS[word][:3]}"
        f = Filter("service", level=level_of(level, "info"), q=q)
        params = [("scope", "service"), ("q", q)]
        for name, value in (("level", level), ("limit", limit)):
            if value is not None:
                params.append((name, value))
        f, params = with_attr_filter(f, params, attr)
        self.run_stream(f, params, limit, resume, header, live, None, more, reconnect)

    def open_stream(self, f, params, resume, header):
        headers = {}
        if resume is not None:
            if header:
                headers["Last-Event-ID"] = str(resume)
            else:
                params = params + [("after", resume)]
        s = Stream(self, f, params, headers, resume)
        # an id above every id this example saw may be above the server's newest: loose
        s.loose = resume is not None and resume > self.shared["max_id"]
        self.streams.append(s)
        return s

    def ended_with_nothing_after(self, f, after):
        return f.scope == "job" and all(
            self.jobs_by_id[j].deleted or self.jobs_by_id[j].status in FINISHED
            for j in f.jobs) and not [ln for ln in self.matching(f) if ln.id > after]

    def tail(self, f, limit, matches):
        cap = 100 if limit is None else min(limit, 5000 if f.scope == "job" else 500)
        if not cap:
            return []
        if f.scope == "job":  # the last `limit` lines of each job
            return sorted((ln for j in f.jobs for ln in [m for m in matches if m.job == j][-cap:]),
                          key=lambda ln: ln.id)
        return matches[-cap:]

    def check_backfill(self, s, f, limit):
        """The first logs event, then (job scope) a status per job (or end)."""
        matches = self.matching(f)
        s.read(lambda: s.first is not None, "the backfill")
        tail = [ln.id for ln in self.tail(f, limit, matches)]
        if s.loose:
            # resumed at an id the server may never have given: what follows it, or the
            # tail afresh (the contract only says the stream must not stay silent)
            assert s.first_ids in ([], tail), \
                f"backfill resumed at {s.resume} (beyond the newest id?): got {s.first_ids}, " \
                f"want [] or the tail {tail}"
        else:
            want = tail if s.resume is None else [ln.id for ln in matches if ln.id > s.resume]
            assert s.first_ids == want, \
                f"backfill ({'resumed at %s' % s.resume if s.resume is not None else 'tail'}" \
                f", limit {limit}): got {s.first_ids}, want {want}"
            meta = s.first["meta"]
            assert meta["total_count"] == len(matches), (meta, len(matches))
            assert meta["has_more"] is (len(matches) > len(want)), (meta, len(matches), len(want))
            floor = max([ln.id for ln in matches] + [s.resume or 0])
            assert s.last_event_id >= floor, \
                f"the backfill's id {s.last_event_id} is below {floor}: a resume would repeat"
        if f.scope == "job":
            s.read(lambda: set(s.statuses) >= set(f.jobs) or s.ended is not None, "the statuses")
            for j in f.jobs:
                if j in s.statuses:
                    job = self.jobs_by_id[j]
                    assert s.statuses[j]["job"]["status"] == job.status, (s.statuses[j], job)

    def post_items(self, batches):
        """Post ``batches`` (each must succeed); the ids they stored."""
        new = []
        for batch in batches:
            lines, targets = self.resolve(batch)
            r = self.post(lines, targets)
            new += range(r.json()["first_id"], r.json()["last_id"] + 1)
        return new

    def run_stream(self, f, params, limit, resume, header, live, finish, more, reconnect):
        if resume == "beyond":
            resume = self.shared["max_id"] + 10 ** 6
        elif resume is not None:
            resume = self.cursor_id(*resume)
        jobs = [self.jobs_by_id[j] for j in f.jobs]
        s = self.open_stream(f, params, resume, header)
        try:
            if any(j.deleted for j in jobs):
                assert s.status == 404, s.status
                assert json.loads(s.client.body()).get("error"), "404 without a JSON error"
                return
            if resume is not None and self.ended_with_nothing_after(f, resume):
                if not (s.loose and s.status == 200):
                    SEEN["stream 204"] += 1
                    assert s.status == 204, f"a resumed stream of ended jobs with nothing " \
                                            f"after {resume}: want 204, got {s.status}"
                    return
            assert s.status == 200, (s.status, s.client.body()[:300])
            assert s.client.headers.get("content-type", "").startswith("text/event-stream")
            self.check_backfill(s, f, limit)
            all_ended = f.scope == "job" and all(j.status in FINISHED for j in jobs)
            if not all_ended:
                new = self.post_items(live)
                want = [i for i in new if f.matches(self.lines[i])]
                job, target = jobs[0] if jobs else None, None
                if finish == "delete" or finish is not None and job.status in ("pending",
                                                                               "running"):
                    target = "deleted" if finish == "delete" else finish
                    s.change = (job.id, target, set(want))
                    if finish == "delete":
                        self.delete_job_obj(job)
                        if not job.deleted:
                            s.change, target = None, None  # running: 409, nothing changed
                        else:  # its own lines went with it: they may never be sent
                            s.change = (job.id, target, {i for i in want if i in self.lines})
                    else:
                        self.set_status(job, finish)
                want = [i for i in want if i in self.lines]  # a deleted job's may never come
                backfill = len(s.ids)
                s.read(lambda: set(want) <= set(s.ids), f"the live lines {want}")
                SEEN["stream live lines"] += len(want)
                extra = set(s.ids[backfill:]) - set(want)
                assert extra <= set(self.gone), f"live lines nobody asked for: {sorted(extra)}"
                if target is not None:
                    s.read(lambda: s.ended is not None or s.statuses.get(job.id, {}).get(
                        "job", {}).get("status") == target, f"a status event saying {target}")
                    SEEN["stream status change"] += 1
                all_ended = f.scope == "job" and all(j.status in FINISHED or j.deleted
                                                     for j in jobs)
            if all_ended:
                s.read(lambda: s.ended is not None, "end")
                s.wait_closed()
        finally:
            s.close()
        if not reconnect or s.last_event_id is None:
            return
        self.post_items(more)
        s2 = self.open_stream(f, params, s.last_event_id, True)
        try:
            if any(self.jobs_by_id[j].deleted for j in f.jobs):
                assert s2.status == 404, s2.status
                return
            if self.ended_with_nothing_after(f, s.last_event_id) and not (
                    s2.loose and s2.status == 200):
                SEEN["stream 204"] += 1
                assert s2.status == 204, \
                    f"resumed at {s.last_event_id} with nothing left: want 204, got {s2.status}"
                return
            assert s2.status == 200, s2.status
            self.check_backfill(s2, f, limit)
            SEEN["stream resumed"] += 1
            union = s.ids + s2.ids
            assert union == sorted(set(union)), f"resume repeated or reordered: {s.ids} + {s2.ids}"
            if f.scope == "job" and all(self.jobs_by_id[j].status in FINISHED for j in f.jobs):
                s2.read(lambda: s2.ended is not None, "end after the resume")
                s2.wait_closed()
        finally:
            s2.close()

    @invariant()
    def model_is_consistent(self):
        """The model's own bookkeeping (no request): every job's lines numbered 1..n in id
        order, no line both stored and gone, every id at most the newest acknowledged."""
        SEEN["steps"] += 1
        numbers = {}
        for line in sorted(self.lines.values(), key=lambda ln: ln.id):
            if line.job is not None:
                numbers[line.job] = numbers.get(line.job, 0) + 1
                assert line.line_number == numbers[line.job], line
        for job in self.jobs:
            assert job.deleted or numbers.get(job.id, 0) == job.lines, job
        assert not set(self.lines) & set(self.gone)
        assert max(self.lines, default=0) <= self.shared["max_id"]


def run_model(server):
    QuaeroModel.url = server.url
    QuaeroModel.archive_dir = str(server.tmp_path / "archive")
    QuaeroModel.shared = {"max_id": 0}
    SEEN.clear()
    started = time.monotonic()
    from quaero import create_app
    app = create_app({"SQLALCHEMY_DATABASE_URI": server.env["QUAERO_DATABASE_URL"],
                      "INSTANCE_PATH": str(server.tmp_path / "instance")})
    QuaeroModel.engine = app.extensions["quaero"].engine
    try:
        run_state_machine_as_test(QuaeroModel, settings=SETTINGS)
    finally:
        QuaeroModel.engine = None
        app.extensions["quaero"].close()
    print(f"\n{EXAMPLES} examples of up to {STEPS} steps in {time.monotonic() - started:.1f} s:",
          ", ".join(f"{k} {v}" for k, v in sorted(SEEN.items())))


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("model-sqlite"), workers=1).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory, pg_database):
    if not REDIS_URL:
        pytest.skip("QUAERO_TEST_REDIS_URL is not set: the PostgreSQL + Redis model runs in CI")
    reset_pg(pg_database)  # the session's database, as other modules' tests left it: emptied
    server = Server(tmp_path_factory.mktemp("model-pg"), workers=2,
                    env={"QUAERO_DATABASE_URL": pg_database,
                         "QUAERO_REDIS_URL": REDIS_URL}).start(timeout=60)
    yield server
    server.stop()


# a failing run shrinks on a real server: Hypothesis may take its five minutes per failure
@pytest.mark.timeout(900)
def test_model_sqlite_one_worker(sqlite_server):
    run_model(sqlite_server)


@pytest.mark.timeout(900)
def test_model_postgresql_redis_two_workers(pg_server):
    run_model(pg_server)
