"""``GET /api/logs/stream``: one SSE connection per greenlet, fed by a shared hub.

The :class:`StreamHub` is the bus's only receiver in a process. For every committed
batch it selects the lines of each distinct filter once, encodes them once, and hands
the same bytes to every connection with that filter. A :class:`Connection` queues
references to those batches; an event is written as a list of parts (a small per-stream
head and ``meta`` around the shared arrays) with one ``sendmsg`` through a
:class:`SocketSink`, so nothing is copied per stream in Python, and what waits for a slow
client is views of shared bytes, counted against that client's budget. A connection
that lets its queue grow past its byte budget is dropped; it resumes with
``Last-Event-ID``.

A stream the server cannot take now (stream cap, shutting down, database away, not
under gevent) is answered ``200 text/event-stream`` with only a jittered ``retry:`` and a
comment, then closed: an ``EventSource`` reconnects by itself and loses nothing.
"""
import logging
import os
import random
import socket
import ssl
import time
from collections import defaultdict, deque

import gevent
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from flask import Blueprint, current_app, request

from . import api
from .models import (FINISHED, ID_KEY, SERVICE_KEY, Job, all_lines_between, count_lines,
                     counters_t, counts_t, db, iso, select_lines, status_payload, tail_lines,
                     utcnow)
from .sse import encode_json, format_event, join_arrays, json_event, logs_event_parts

log = logging.getLogger("quaero.stream")

bp = Blueprint("stream", __name__, url_prefix="/api")
RESUME_PAGE = 1000
RETRY_MS = 2000
REFUSED_RETRY_MS = (2000, 5000)   # a jittered retry for a stream refused now...
OVERLOAD_RETRY_MS = (5000, 15000)  # ...spread wider when the cause is load
TICK = 0.25  # seconds: resolution of pings and stream lifetimes
RECOUNT = 5.0  # seconds: how often open streams' total_count is read again (pruning)
MAX_PARTS = 512  # parts per sendmsg (IOV_MAX is 1024)
DIRECT_MAX = 64 << 10  # bigger events are written by the stream's own greenlet
# A stream socket's kernel send buffer (the kernel doubles it): what a client that does not
# read can hold in the kernel, instead of megabytes each by autotuning on loopback
SEND_BUFFER = 128 << 10
DB_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def stream_cap(worker_connections, configured=0):
    """Streams one worker takes: its connections less a reserve for ``/healthz``, ingest
    and pages (a tenth, at least 8), or ``configured`` when that is smaller."""
    room = max(1, worker_connections - max(8, worker_connections // 10))
    return min(configured, room) if configured else room


def under_gevent(environ):
    """Streams need a gevent worker: a sync worker would hang on its only request."""
    from gevent import monkey
    if not monkey.is_module_patched("socket"):
        return False
    return not ("gunicorn.socket" in environ and not environ.get("wsgi.multithread"))


class Batch:
    """Lines of one committed batch that match one filter, encoded once."""
    __slots__ = ("lines", "encoded", "first_id", "last_id", "published")

    def __init__(self, lines, published, encoded=None):
        self.lines = lines
        self.encoded = encode_json(lines) if encoded is None else encoded
        self.first_id = lines[0]["id"]
        self.last_id = lines[-1]["id"]
        self.published = published

    @classmethod
    def combine(cls, batches):
        if len(batches) == 1:
            return batches[0]
        return cls([ln for b in batches for ln in b.lines], batches[0].published,
                   join_arrays([b.encoded for b in batches]))


class Group:
    """The streams that share one filter, and the pacing they share: a window opens with
    the first batch on a quiet group (sent at once, the leading edge); whatever arrives
    within the window is released together when it closes."""
    __slots__ = ("conns", "pending", "last_release", "timer")

    def __init__(self):
        self.conns = set()
        self.pending = []
        self.last_release = 0.0
        self.timer = None


def _advance(parts, sent):
    """The parts left after ``sent`` bytes of them went out (views, not copies)."""
    i = 0
    while i < len(parts) and sent >= len(parts[i]):
        sent -= len(parts[i])
        i += 1
    rest = parts[i:]
    if sent:
        rest[0] = memoryview(rest[0])[sent:]
    return rest


class SocketSink:
    """Writes straight to gunicorn's client socket, once gunicorn has sent the headers,
    framing HTTP/1.1 chunks as gunicorn does. A list of parts goes out with one
    ``sendmsg``: no copy in Python; what the socket does not take stays views of the
    same bytes. Without a gunicorn socket (or on TLS) there is no sink and the stream's
    generator yields bytes to the server instead."""

    def __init__(self, sock, chunked):
        self.sock = sock
        self.raw = sock._sock
        self.chunked = chunked
        try:
            self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:
            pass

    @classmethod
    def for_environ(cls, environ):
        sock = environ.get("gunicorn.socket")
        if sock is None or not hasattr(sock, "_sock") or isinstance(sock, ssl.SSLSocket):
            return None
        return cls(sock, environ.get("SERVER_PROTOCOL") == "HTTP/1.1")

    def frame(self, parts):
        if not self.chunked:
            return parts
        return [b"%X\r\n" % sum(map(len, parts)), *parts, b"\r\n"]

    def try_send_bytes(self, data):
        """``try_send`` for one small byte string: one ``send``, no list to walk."""
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        try:
            sent = self.raw.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        return [] if sent == len(data) else [memoryview(data)[sent:]]

    def try_send(self, parts):
        """Never blocks: returns the parts the socket did not take (empty: all went)."""
        try:
            sent = self.raw.sendmsg(parts[:MAX_PARTS] if len(parts) > MAX_PARTS else parts,
                                    (), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return parts
        return _advance(parts, sent)

    def send(self, parts):
        """Blocks this greenlet until all went; OSError when the client is gone."""
        from gevent.socket import wait_write
        while parts:
            parts = self.try_send(parts)
            if parts:
                wait_write(self.raw.fileno())


class Connection:
    """One client's state. The hub only appends (batches, statuses) and may write to a
    parked stream; the stream's greenlet takes and writes everything else."""

    def __init__(self, f, hub, buffer_bytes, sock=None, sink=None):
        from gevent.event import Event
        self.filter = f
        self.hub = hub
        self.buffer_bytes = buffer_bytes
        self.sock = sock
        self.sink = sink         # set once the headers are out (see _generate)
        self.wake = Event()
        self.batches = deque()
        self.pending_bytes = 0
        # status events in order, each with the newest line id the hub had delivered when
        # it came: it waits for the lines up to there (bounded: collapsed per job if long)
        self.statuses = deque()  # (marker, job id, encoded event)
        self.sent_status = {}    # job id -> the last status event queued or sent
        self.running_jobs = set(f.job_ids)
        self.ended = {}          # job id -> final status, once finished
        self.dropped = False
        self.closing = False
        self.writing = False     # between handing bytes to the socket and it taking them
        self.backlog = 0         # bytes queued since that write began
        self.last_id = 0         # highest line id sent (or resumed from)
        self.total = 0           # matching lines that exist (snapshot + live)
        self.displayed = 0
        self.has_more = False
        self.parked = False      # the greenlet waits with nothing to send
        self.out = []            # the unsent rest of a write made by the hub (views)
        self.broken = False      # a write failed: the client is gone
        self.next_logs = 0.0     # no logs event before this (monotonic time)
        self.next_ping = float("inf")
        self.deadline = float("inf")

    # called by the hub, in the publisher's greenlet: never blocks
    def push(self, batch):
        if self.dropped:
            return
        size = len(batch.encoded)
        self.batches.append(batch)
        self.pending_bytes += size
        if self.writing or self.out:
            self.backlog += size
        # Slow means: more than the budget arrived while the client had not yet taken our
        # last write. What gathers during the 150 ms pacing wait is capped more loosely
        # (the batches are shared with every stream; this only holds references).
        if (self.backlog > self.buffer_bytes and len(self.batches) > 1) or (
                self.pending_bytes > 4 * self.buffer_bytes and len(self.batches) > 1):
            self.drop()

    def push_status(self, encoded, job_id, status):
        if status in FINISHED or status == "deleted":
            self.running_jobs.discard(job_id)
            self.ended[job_id] = status
        if encoded and self.sent_status.get(job_id) != encoded:
            self.sent_status[job_id] = encoded
            self.statuses.append((self.hub.delivered or 0, job_id, encoded))
            if len(self.statuses) > 2 * len(self.filter.job_ids) + 8:
                latest = {job: (m, job, ev) for m, job, ev in self.statuses}
                self.statuses = deque(sorted(latest.values(), key=lambda s: s[0]))
        self.wake.set()

    def shutdown_socket(self):
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop(self):
        """The client fell behind: stop queueing and close its socket, so that a write
        blocked on it fails and the generator's ``finally`` runs."""
        self.dropped = True
        self.batches.clear()
        self.out = []
        self.pending_bytes = 0
        self.hub.counts["slow_dropped"] += 1
        self.hub.unsubscribe(self)
        self.shutdown_socket()
        self.wake.set()

    def close(self):
        """Server shutdown: end the stream at once; the client resumes elsewhere. A write
        blocked on a client that does not read is cut."""
        self.closing = True
        if self.writing or self.out:
            self.shutdown_socket()
        self.wake.set()

    def next_logs_parts(self):
        """The ``logs`` event (as parts) for everything queued, or None; counts it as
        displayed."""
        arrays, count = self.take()
        if arrays is None:
            return None, 0
        self.displayed += count
        return logs_event_parts(arrays, self.last_id, self.total, self.displayed,
                                self.has_more), count

    def write_now(self, now, interval, counts):
        """Called by the hub for a parked stream whose pace allows a small event (at most
        DIRECT_MAX): hand it to the socket without a switch to the stream's greenlet.
        Whatever the socket does not take is finished by the greenlet."""
        parts, count = self.next_logs_parts()
        if parts is None:
            return
        self.next_logs = now + interval
        data = b"".join(parts)  # small: one copy is cheaper than a scatter list
        counts["logs"] += 1
        counts["bytes"] += len(data)
        counts["lines"] += count
        try:
            self.out = self.sink.try_send_bytes(data)
        except OSError:
            self.broken = True
            self.wake.set()
            return
        if self.out:
            self.backlog = 0
            self.wake.set()

    def take_statuses(self, held_from=None):
        """The status events that no held line precedes (all, when ``held_from`` is None):
        a status never overtakes lines committed before the change it reports."""
        out = []
        while self.statuses and (held_from is None or self.statuses[0][0] < held_from):
            out.append(self.statuses.popleft()[2])
        return out

    def queued_lines(self, upto):
        return sum(len(b.lines) if b.last_id <= upto else
                   sum(1 for ln in b.lines if ln["id"] <= upto) for b in self.batches)

    def take(self):
        """The queued lines this connection has not sent yet, as encoded arrays."""
        arrays, count = [], 0
        while self.batches:
            b = self.batches.popleft()
            if b.last_id <= self.last_id:
                continue
            if b.first_id <= self.last_id:  # overlaps the backfill: rare, re-encode
                lines = [ln for ln in b.lines if ln["id"] > self.last_id]
                arrays.append(encode_json(lines))
                count += len(lines)
            else:
                arrays.append(b.encoded)
                count += len(b.lines)
            self.last_id = b.last_id
        self.pending_bytes = 0
        if not arrays:
            return None, 0
        self.total += count
        return arrays, count


class StreamHub:
    """All open streams of this process, grouped by filter and by job.

    Lines reach the hub from this process's writer, from other processes (Redis) and
    from the database watcher. The hub delivers them in id order, each once: ids are
    dense and become visible in commit order, so a batch that does not start right
    after the last delivered id means lines are missing, and they are read from the
    database (one query for the whole process, not one per stream).
    """

    def __init__(self, app, engine, bus, metrics, max_streams, watch_interval):
        from gevent.lock import Semaphore
        self.app = app
        self.engine = engine
        self.metrics = metrics
        self.max_streams = max_streams
        self.watch_interval = watch_interval
        self.interval = app.config["QUAERO_BATCH_INTERVAL"]
        self.groups = {}                  # LineFilter -> Group
        self.by_key = defaultdict(set)    # job id or None (service) -> filters
        self.by_job = defaultdict(set)    # job id -> connections (status events)
        self.last_status = {}             # job id -> last status payload sent
        self.count = 0
        self.shutting_down = False
        self.delivered = None             # highest line id handed to streams
        self._lock = Semaphore()
        self._watcher_pid = None
        self.counts = defaultdict(int)    # metrics, added to Prometheus in bulk
        self.refused = defaultdict(int)   # streams answered "retry later", by reason
        self.retry_scale = 1.0
        self.recount_at = 0.0             # monotonic time of the next total_count refresh
        self.ping_event = b""
        self.bus = bus
        bus.connect(self.on_lines, self.on_status, self.on_range)

    def close(self):
        self.bus.disconnect(self.on_lines, self.on_status, self.on_range)
        self.shutting_down = True

    def shutdown(self):
        """Close every stream (gunicorn is stopping this worker) and refuse new ones."""
        self.shutting_down = True
        for group in list(self.groups.values()):
            for conn in list(group.conns):
                conn.close()

    def health(self):
        """What ``/healthz`` shows of the streams, and why new ones would be refused."""
        return {"open": self.count, "max": self.max_streams,
                "accepting": not self.shutting_down and self.count < self.max_streams,
                "refused": dict(self.refused)}

    def refuse_reason(self, environ):
        """Why a new stream cannot be taken now, or None."""
        if not under_gevent(environ):
            return "no_gevent"
        if self.shutting_down:
            return "shutting_down"
        if self.count >= self.max_streams:
            return "stream_cap"
        return None

    def held_from(self, conn):
        """The smallest line id held for this stream (its queue, or its group's pacing
        window), or None."""
        ids = [conn.batches[0].first_id] if conn.batches else []
        group = self.groups.get(conn.filter)
        if group is not None and group.pending:
            ids.append(group.pending[0].first_id)
        return min(ids) if ids else None

    def subscribe(self, conn):
        self._ensure_watcher()
        if self.delivered is None:
            self.delivered = _max_id(self.engine)
        f = conn.filter
        group = self.groups.get(f)
        if group is None:
            group = self.groups[f] = Group()
        group.conns.add(conn)
        for key in f.job_ids or (None,):
            self.by_key[key].add(f)
        for job_id in f.job_ids:
            self.by_job[job_id].add(conn)
        self.count += 1
        self.metrics.streams_open.labels(f.scope).inc()

    def unsubscribe(self, conn):
        f = conn.filter
        group = self.groups.get(f)
        if group is None or conn not in group.conns:
            return
        group.conns.discard(conn)
        if not group.conns:
            del self.groups[f]
            if group.timer is not None:
                group.timer.kill(block=False)
            for key in f.job_ids or (None,):
                self.by_key[key].discard(f)
                if not self.by_key[key]:
                    del self.by_key[key]
        for job_id in f.job_ids:
            self.by_job[job_id].discard(conn)
            if not self.by_job[job_id]:
                del self.by_job[job_id]
                self.last_status.pop(job_id, None)
        self.count -= 1
        self.metrics.streams_open.labels(f.scope).dec()

    # -- lines, in id order ---------------------------------------------------------------

    def on_lines(self, lines):
        with self._lock:
            if self.delivered is None:  # no stream has opened yet
                self.delivered = lines[-1]["id"]
                return
            fresh = [ln for ln in lines if ln["id"] > self.delivered]
            if not fresh:
                return
            if self.count and fresh[0]["id"] != self.delivered + 1:
                fresh = _lines_between(self.engine, self.delivered, fresh[0]["id"]) + fresh
            self.delivered = fresh[-1]["id"]
            if self.count:
                self._dispatch(fresh)

    def on_range(self, id_range):
        self.catch_up(until=id_range[1])

    def catch_up(self, until=None, refresh_totals=False):
        """Deliver what committed beyond the last delivered id (the watcher's tick); then,
        if asked, make every stream's ``total_count`` true again (lines pruned, jobs
        deleted): counts read before the newest id, so every counted line was delivered."""
        with self._lock:
            totals = _totals(self.engine, list(self.groups)) if refresh_totals else None
            newest = _max_id(self.engine)
            if self.delivered is None or not self.count:
                self.delivered = newest
                return
            while self.delivered < newest:
                lines = _lines_between(self.engine, self.delivered, newest + 1, RESUME_PAGE * 5)
                if not lines:
                    self.delivered = newest
                    break
                self.delivered = lines[-1]["id"]
                self._dispatch(lines)
            if totals and self.delivered == newest:
                for f, total in totals.items():
                    group = self.groups.get(f)
                    if group is None:
                        continue
                    held = sum(len(b.lines) for b in group.pending)
                    for conn in group.conns:
                        conn.total = total - held - conn.queued_lines(newest)

    def _dispatch(self, lines):
        now = time.monotonic()
        by_key = defaultdict(list)
        for line in lines:
            by_key[line["job_id"]].append(line)
        for key, key_lines in by_key.items():
            for f in list(self.by_key.get(key, ())):
                if len(f.job_ids) > 1:
                    continue  # multi-job filters below, once per batch
                matched = [ln for ln in key_lines if f.matches(ln)]
                if matched:
                    self._fan_out(f, matched, now)
        multi = {f for key in by_key for f in self.by_key.get(key, ()) if len(f.job_ids) > 1}
        for f in multi:
            matched = [ln for ln in lines if f.matches(ln)]
            if matched:
                self._fan_out(f, matched, now)

    def _fan_out(self, f, matched, now):
        group = self.groups.get(f)
        if group is None:
            return
        group.pending.append(Batch(matched, now))
        if group.timer is None:
            if now - group.last_release >= self.interval:
                self._release(group)  # quiet for a window: the leading edge goes at once
            else:
                # The window's end, a little late: streams that took the last release a
                # few ms late are then ready for this one without a timer of their own.
                delay = group.last_release + self.interval * 1.07 - now
                group.timer = gevent.spawn_later(delay, self._release, group)

    def _release(self, group):
        group.timer = None
        if not group.pending:
            return
        batch = Batch.combine(group.pending)
        group.pending = []
        now = group.last_release = time.monotonic()
        self.metrics.delivery_seconds.observe(now - batch.published)
        interval, counts = self.interval, self.counts
        small = len(batch.encoded) <= DIRECT_MAX  # big ones: each stream's greenlet
        for conn in list(group.conns):
            conn.push(batch)
            if conn.parked and now >= conn.next_logs and small and not (
                    conn.dropped or conn.out or conn.statuses):
                conn.write_now(now, interval, counts)
            else:
                conn.wake.set()

    # -- pings, lifetimes and metrics: one ticker for all streams ---------------------------

    def _tick(self):
        while not self.shutting_down:
            now = time.monotonic()
            self.ping_event = json_event("ping", {"timestamp": iso(utcnow())})
            for group in list(self.groups.values()):
                for conn in group.conns:
                    if now >= conn.next_ping or now >= conn.deadline:
                        conn.wake.set()
            self.flush_metrics()
            gevent.sleep(TICK)

    def flush_metrics(self):
        counts, self.counts = self.counts, defaultdict(int)
        m = self.metrics
        for key, n in counts.items():
            if key == "bytes":
                m.bytes_sent.inc(n)
            elif key == "lines":
                m.lines_delivered.inc(n)
            elif key == "slow_dropped":
                m.slow_dropped.inc(n)
            else:
                m.events_sent.labels(key).inc(n)

    # -- status ---------------------------------------------------------------------------

    def on_status(self, payload):
        job = payload["job"]
        if job["status"] == "deleted":
            self.recount_at = 0.0  # its lines went: recount at the watcher's next tick
        conns = self.by_job.get(job["id"])
        if not conns or self.last_status.get(job["id"]) == payload:
            return
        self.last_status[job["id"]] = payload
        encoded = json_event("status", payload)
        for conn in list(conns):
            conn.push_status(encoded, job["id"], job["status"])

    # -- the database watcher -------------------------------------------------------------

    def _ensure_watcher(self):
        if self._watcher_pid != os.getpid():
            self._watcher_pid = os.getpid()
            self.ping_event = json_event("ping", {"timestamp": iso(utcnow())})
            gevent.spawn(self._watch)
            gevent.spawn(self._tick)

    def _watch(self):
        """One light query per tick for the whole process: lines committed by other
        processes reach this one's streams even without Redis, and job changes made
        elsewhere become ``status`` events."""
        while not self.shutting_down:
            gevent.sleep(self.watch_interval)
            try:
                recount = time.monotonic() >= self.recount_at
                if recount:
                    self.recount_at = time.monotonic() + RECOUNT
                self.catch_up(refresh_totals=recount)
                if self.by_job:
                    job_ids = list(self.by_job)
                    states = _job_states(self.engine, job_ids)
                    for job_id in job_ids:  # not jobs subscribed while the query ran
                        if job_id not in self.by_job:
                            continue
                        status, payload = states.get(job_id, ("deleted", None))
                        self.on_status(payload or {"job": {"id": job_id, "status": "deleted"},
                                                   "steps": []})
            except Exception as exc:  # the database may be away; try again next tick
                log.warning("stream watcher: %s", exc.__class__.__name__)


def _max_id(engine):
    with engine.connect() as conn:
        return _max_id_on(conn)


def _max_id_on(conn):
    """The newest committed line id (ids become visible in commit order)."""
    return int(conn.execute(sa.select(counters_t.c.value).where(
        counters_t.c.key == ID_KEY)).scalar() or 0)


def _totals(engine, filters):
    """``{filter: lines matching it now}`` from the kept counts, one query for all."""
    keys = sorted({k for f in filters for k in (f.job_ids or (SERVICE_KEY,))})
    if not keys:
        return {}
    rows = []
    with engine.connect() as conn:
        for i in range(0, len(keys), 500):
            rows += conn.execute(
                sa.select(counts_t.c.key, counts_t.c.step_name, counts_t.c.level,
                          counts_t.c.count).where(counts_t.c.key.in_(keys[i:i + 500]))).all()
    out = {}
    for f in filters:
        keys_f = set(f.job_ids or (SERVICE_KEY,))
        out[f] = sum(n for key, step, level, n in rows if key in keys_f and level >= f.min_level
                     and (f.step is None or step == f.step))
    return out


def _lines_between(engine, after, before, limit=None):
    """Every line with ``after < id < before``, whatever its job or level."""
    with engine.connect() as conn:
        return all_lines_between(conn, after, before, limit)


def init_app(app):
    state = app.extensions["quaero"]
    cfg = app.config
    connections = int(cfg.get("QUAERO_WORKER_CONNECTIONS")
                      or os.environ.get("QUAERO_WORKER_CONNECTIONS") or 1000)  # gunicorn's default
    state.hub = StreamHub(app, state.engine, state.bus, state.metrics,
                          stream_cap(connections, cfg["QUAERO_MAX_STREAMS"]),
                          cfg["QUAERO_WATCH_INTERVAL"])
    # tests shorten the "retry later" delays (QUAERO_STREAM_RETRY_SCALE=0.1: 0.5-1.5 s at the cap)
    state.hub.retry_scale = float(cfg.get("QUAERO_STREAM_RETRY_SCALE")
                                  or os.environ.get("QUAERO_STREAM_RETRY_SCALE") or 1)


@bp.before_request
def require_token():
    api.require_token()


REFUSALS = {
    "stream_cap": ("too many open streams on this server; retry later", OVERLOAD_RETRY_MS),
    "shutting_down": ("server is shutting down; reconnect", REFUSED_RETRY_MS),
    "database": ("database unavailable; retry later", REFUSED_RETRY_MS),
    "no_gevent": ("streaming needs gunicorn's gevent worker (gunicorn -k gevent, as "
                  "gunicorn.conf.py sets); this worker cannot hold a stream", (30000, 60000)),
}


def refusal(hub, metrics, reason):
    """The body for a stream taken later: a jittered ``retry:`` and why (counted)."""
    comment, (low, high) = REFUSALS[reason]
    low, high = int(low * hub.retry_scale), int(high * hub.retry_scale)
    hub.refused[reason] += 1
    metrics.streams_refused.labels(reason).inc()
    return format_event(retry=random.randint(low, high), comment=f"quaero: {comment}")


def _refuse(hub, metrics, reason):
    if reason == "no_gevent" and not hub.refused[reason]:
        log.error("a stream was refused: %s", REFUSALS[reason][0])
    response = current_app.response_class(refusal(hub, metrics, reason),
                                          mimetype="text/event-stream", headers=STREAM_HEADERS)
    response.headers["Connection"] = "close"
    return response


def _ended_with_nothing_after(db_conn, f, resume):
    """A resumed stream of jobs that all ended, with no matching line after ``resume``."""
    statuses = db_conn.execute(sa.select(Job.status).where(Job.id.in_(f.job_ids))).scalars()
    if not all(s in FINISHED for s in statuses):
        return False
    lines, _ = select_lines(db_conn, f, after=resume, limit=1)
    return not lines


@bp.get("/logs/stream")
def stream_logs():
    f, limit = api.parse_query(request.args)
    resume = api.parse_int(request.headers.get("Last-Event-ID") or None, "Last-Event-ID")
    if resume is None:
        resume = api.parse_int(request.args.get("after"), "after")
    state = current_app.extensions["quaero"]
    hub = state.hub
    environ = request.environ
    reason = hub.refuse_reason(environ)
    if reason is not None:
        return _refuse(hub, state.metrics, reason)
    try:
        with db.engine.connect() as conn:
            api.check_jobs_exist(conn, f.job_ids)
            if resume is not None and f.job_ids and _ended_with_nothing_after(conn, f, resume):
                return current_app.response_class(status=204)  # tells an EventSource to stop
    except DB_ERRORS:
        return _refuse(hub, state.metrics, "database")
    if request.method == "HEAD":  # headers only: no subscription, no body
        return current_app.response_class(b"", mimetype="text/event-stream",
                                          headers=STREAM_HEADERS)
    cfg = current_app.config
    connection = Connection(f, hub, cfg["QUAERO_STREAM_BUFFER_BYTES"],
                            environ.get("gunicorn.socket"))
    hub.subscribe(connection)  # before the backfill: nothing falls in between
    body = _track_writes(connection, _generate(connection, SocketSink.for_environ(environ),
                                               state, db.engine, limit, resume, cfg))
    response = current_app.response_class(body, mimetype="text/event-stream",
                                          headers=STREAM_HEADERS)
    # the server closes every response, even one whose body it never started
    response.call_on_close(lambda: hub.unsubscribe(connection))
    return response


def _job_states(engine, job_ids):
    """``{job_id: (status, status event payload)}`` for the jobs that still exist."""
    with Session(engine) as session:
        jobs = session.execute(sa.select(Job).where(Job.id.in_(job_ids))).scalars().all()
        return {j.id: (j.status, status_payload(j)) for j in jobs}


def _generate(conn, sink, state, engine, limit, resume, cfg):
    """The body of one stream. Runs in the request's greenlet. After the first chunk
    (gunicorn sends the headers with it) everything goes through ``sink`` when there is
    one, else it is yielded to the server."""
    hub, f = state.hub, conn.filter
    interval = cfg["QUAERO_BATCH_INTERVAL"]
    ping_every = cfg["QUAERO_PING_INTERVAL"]
    lifetime = cfg["QUAERO_STREAM_LIFETIME"] * random.uniform(0.85, 1.0)
    started = time.monotonic()

    def emit(events):
        """Write ``(parts, event name, lines)`` events as one write; counts them."""
        if not events:
            return
        counts, parts = hub.counts, []  # swapped for a fresh one at every metrics flush
        for ev_parts, name, lines in events:
            counts[name] += 1
            counts["bytes"] += sum(len(p) for p in ev_parts)
            if lines:
                counts["lines"] += lines
            parts += ev_parts
        if conn.sink is None:
            yield b"".join(parts)
            return
        conn.writing, conn.backlog = True, 0
        try:
            conn.sink.send(conn.sink.frame(parts))
        finally:
            conn.writing = False

    def logs(lines):
        return (logs_event_parts([encode_json(lines)], conn.last_id, conn.total,
                                 conn.displayed, conn.has_more), "logs", len(lines))

    def backfill():
        """Events for everything before live: the tail, or every line after ``resume``.
        Every one has an id: an empty tail the newest id visible before it was read."""
        with engine.connect() as db_conn:
            conn.total = count_lines(db_conn, f)
            if resume is None:
                newest = _max_id_on(db_conn)
                lines, more = tail_lines(db_conn, f, max(limit, 1))
                if limit == 0:
                    lines, more = [], bool(lines)
                conn.last_id = lines[-1]["id"] if lines else newest
                pages = [lines]
                conn.has_more = more
        if resume is not None:
            conn.last_id = resume
            pages = _pages_after(engine, f, resume)
        first = True
        for lines in pages:
            if not lines and not first:
                break
            if lines:
                conn.last_id = max(conn.last_id, lines[-1]["id"])
            conn.displayed += len(lines)
            conn.total = max(conn.total, conn.displayed)
            if resume is not None:
                conn.has_more = conn.total > conn.displayed and resume > 0
            yield from emit([logs(lines)])
            first = False

    def initial_statuses():
        conn.statuses.clear()  # superseded by the states read now; later ones follow
        jobs, events = _job_states(engine, f.job_ids), []
        for job_id in f.job_ids:
            status, payload = jobs.get(job_id, ("deleted", None))
            if payload is not None:
                event = conn.sent_status[job_id] = json_event("status", payload)
                events.append(([event], "status", 0))
            if status in FINISHED or status == "deleted":
                conn.push_status(b"", job_id, status)
        return events

    def ending():
        """All jobs finished: send what committed since, their statuses, then ``end``."""
        hub.unsubscribe(conn)  # the database has every line from here on
        conn.batches.clear()
        conn.pending_bytes = 0
        for lines in _pages_after(engine, f, conn.last_id):
            if not lines:
                break
            gevent.sleep(max(0.0, conn.next_logs - time.monotonic()))  # keep the pace
            conn.next_logs = time.monotonic() + interval
            conn.last_id = lines[-1]["id"]
            conn.displayed += len(lines)
            conn.total = max(conn.total, conn.displayed)
            yield from emit([logs(lines)])
        events = [([ev], "status", 0) for ev in conn.take_statuses()]
        jobs = [{"id": j, "status": s} for j, s in conn.ended.items()]
        payload = {"job": jobs[-1]} if len(jobs) == 1 else {"job": jobs[-1], "jobs": jobs}
        yield from emit(events + [([json_event("end", payload)], "end", 0)])

    def live():
        while not (conn.dropped or conn.broken) and (conn.out or not conn.closing):
            if conn.out:  # the rest of a write the hub began (and counted) on this socket
                conn.writing, conn.backlog = True, 0
                try:
                    conn.sink.send(conn.out)
                finally:
                    conn.writing = False
                conn.out = []
                continue
            now = time.monotonic()
            events = []
            if conn.batches and now >= conn.next_logs:
                parts, count = conn.next_logs_parts()
                if parts is not None:
                    events.append((parts, "logs", count))
                    conn.next_logs = now + interval
            if f.job_ids and not conn.running_jobs:
                yield from emit(events)
                yield from ending()
                return
            # a status never overtakes lines committed before it: those still held
            # for the pace (here or in the hub's window) go first
            if conn.statuses:
                events += [([ev], "status", 0) for ev in conn.take_statuses(hub.held_from(conn))]
            if now >= conn.next_ping:
                events.append(([hub.ping_event], "ping", 0))
                conn.next_ping = now + ping_every
            if events:
                yield from emit(events)
                continue
            if now >= conn.deadline:
                return  # the client reconnects with Last-Event-ID and loses nothing
            conn.wake.clear()
            if conn.batches:  # released early for this stream's own pace: wait it out
                conn.wake.wait(conn.next_logs - now)
            else:  # woken by a release, a status, the ticker (ping, lifetime) or a close
                conn.parked = conn.sink is not None
                conn.wake.wait()
                conn.parked = False

    try:
        yield from emit([([format_event(retry=RETRY_MS, comment="quaero")], "retry", 0)])
        conn.sink = sink  # the headers are out: from here the sink may write
        yield from backfill()
        if f.job_ids:
            yield from emit(initial_statuses())
        now = time.monotonic()
        conn.next_logs = now + interval  # the backfill counts as a logs event
        conn.next_ping = now + ping_every
        conn.deadline = started + lifetime
        yield from live()
    except OSError:
        return  # the client is gone (a write to its socket failed)
    except DB_ERRORS:
        yield from emit([([refusal(hub, state.metrics, "database")], "retry", 0)])
    finally:
        hub.unsubscribe(conn)


def _track_writes(conn, body):
    """Mark the time the server spends writing each chunk (the generator is suspended
    until the socket took it): what queues up meanwhile is what a slow client costs."""
    try:
        for chunk in body:
            conn.writing, conn.backlog = True, 0
            yield chunk
            conn.writing = False
    finally:
        body.close()


def _pages_after(engine, f, after):
    """Every matching line after ``after``, a page at a time, a connection per page."""
    while True:
        with engine.connect() as db_conn:
            lines, more = select_lines(db_conn, f, after=after, limit=RESUME_PAGE)
        yield lines
        if not more or not lines:
            return
        after = lines[-1]["id"]
