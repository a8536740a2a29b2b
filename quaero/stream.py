"""``GET /api/logs/stream``: one SSE connection per greenlet, fed by a shared hub.

The :class:`StreamHub` is the bus's only receiver in a process. For every committed
batch it selects the lines of each distinct filter once, encodes them once, and hands
the same bytes to every connection with that filter. A :class:`Connection` keeps a
bounded queue of those encoded batches; its greenlet paces them into ``logs`` events
(leading edge, one per 150 ms at most), adds the small per-connection ``meta`` and
writes. A connection that lets its queue grow past its byte budget is dropped; it
resumes with ``Last-Event-ID``.
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
from sqlalchemy.orm import Session
from flask import Blueprint, current_app, request

from . import api
from .errors import APIError
from .models import (FINISHED, ID_KEY, Job, all_lines_between, count_lines, counters_t, db,
                     iso, select_lines, status_payload, tail_lines, utcnow)
from .sse import encode_json, format_event, join_arrays, json_event, logs_event

log = logging.getLogger("quaero.stream")

bp = Blueprint("stream", __name__, url_prefix="/api")
RESUME_PAGE = 1000
RETRY_MS = 2000
TICK = 0.25  # seconds: resolution of pings and stream lifetimes


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


class Connection:
    """One client's state; touched by the hub (push) and its own greenlet (drain)."""

    def __init__(self, f, hub, buffer_bytes, sock=None, chunked=False):
        from gevent.event import Event
        self.filter = f
        self.hub = hub
        self.buffer_bytes = buffer_bytes
        self.sock = sock
        self.wake = Event()
        self.batches = deque()
        self.pending_bytes = 0
        self.statuses = {}       # job id -> latest encoded status event (bounded by jobs)
        self.running_jobs = set(f.job_ids)
        self.ended = {}          # job id -> final status, once finished
        self.dropped = False
        self.closing = False
        self.writing = False     # between handing bytes to the server and it asking for more
        self.backlog = 0         # bytes queued since that write began
        self.last_id = 0         # highest line id sent (or resumed from)
        self.total = 0           # matching lines that exist (snapshot + live)
        self.displayed = 0
        self.has_more = False
        self.chunked = chunked   # gunicorn frames an HTTP/1.1 body in chunks
        # the hub may write live events itself to a gunicorn socket (see write_now)
        self.direct = (sock is not None and hasattr(sock, "_sock")
                       and not isinstance(sock, ssl.SSLSocket))
        self.parked = False      # the greenlet waits with nothing to send
        self.partial = b""       # the unsent rest of a write made by the hub
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
        if self.writing:
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
        if encoded:
            self.statuses.pop(job_id, None)
            self.statuses[job_id] = encoded
        self.wake.set()

    def drop(self):
        """The client fell behind: stop queueing and close its socket, so that a write
        blocked on it fails and the generator's ``finally`` runs."""
        self.dropped = True
        self.batches.clear()
        self.pending_bytes = 0
        self.hub.counts["slow_dropped"] += 1
        self.hub.unsubscribe(self)
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.wake.set()

    def close(self):
        """Server shutdown: end the stream cleanly; the client resumes elsewhere."""
        self.closing = True
        self.wake.set()

    def next_logs_event(self):
        """The ``logs`` event for everything queued, or None; counts it as displayed."""
        data, count, _ = self.take()
        if data is None:
            return None, 0
        self.displayed += count
        return logs_event(data, self.last_id, max(self.total, self.displayed),
                          self.displayed, self.has_more), count

    def write_now(self, now, interval, counts):
        """Called by the hub for a parked stream whose pace allows an event: format it
        and hand it to the socket without a switch to the stream's greenlet. Whatever
        the socket does not take at once is finished by the greenlet (blocking)."""
        event, count = self.next_logs_event()
        if event is None:
            return
        data = b"%X\r\n%s\r\n" % (len(event), event) if self.chunked else event
        self.next_logs = now + interval
        counts["logs"] += 1
        counts["bytes"] += len(event)
        counts["lines"] += count
        try:
            sent = self.sock._sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.broken = True
            self.wake.set()
            return
        if sent < len(data):
            self.partial = data[sent:]
            self.wake.set()

    def take(self):
        """The queued lines this connection has not sent yet, as one encoded array."""
        parts, count, first_published = [], 0, None
        while self.batches:
            b = self.batches.popleft()
            if b.last_id <= self.last_id:
                continue
            if b.first_id <= self.last_id:  # overlaps the backfill: rare, re-encode
                lines = [ln for ln in b.lines if ln["id"] > self.last_id]
                parts.append(encode_json(lines))
                count += len(lines)
            else:
                parts.append(b.encoded)
                count += len(b.lines)
            self.last_id = b.last_id
            if first_published is None:
                first_published = b.published
        self.pending_bytes = 0
        if not parts:
            return None, 0, None
        self.total += count
        return join_arrays(parts), count, first_published


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

    def catch_up(self, until=None):
        """Deliver what committed beyond the last delivered id (the watcher's tick)."""
        with self._lock:
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
        for conn in list(group.conns):
            conn.push(batch)
            if conn.parked and now >= conn.next_logs and not (conn.dropped or conn.partial):
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
                self.catch_up()
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
        return int(conn.execute(sa.select(counters_t.c.value).where(
            counters_t.c.key == ID_KEY)).scalar() or 0)


def _lines_between(engine, after, before, limit=None):
    """Every line with ``after < id < before``, whatever its job or level."""
    with engine.connect() as conn:
        return all_lines_between(conn, after, before, limit)


def init_app(app):
    state = app.extensions["quaero"]
    state.hub = StreamHub(app, state.engine, state.bus, state.metrics,
                          app.config["QUAERO_MAX_STREAMS"], app.config["QUAERO_WATCH_INTERVAL"])


@bp.before_request
def require_token():
    api.require_token()


@bp.get("/logs/stream")
def stream_logs():
    f, limit = api.parse_query(request.args)
    resume = api.parse_int(request.headers.get("Last-Event-ID") or None, "Last-Event-ID")
    if resume is None:
        resume = api.parse_int(request.args.get("after"), "after")
    state = current_app.extensions["quaero"]
    hub = state.hub
    with db.engine.connect() as conn:
        api.check_jobs_exist(conn, f.job_ids)
    if request.method == "HEAD":  # headers only: no subscription, no body
        return current_app.response_class(b"", mimetype="text/event-stream",
                                          headers={"Cache-Control": "no-cache"})
    if hub.shutting_down:
        raise APIError(503, "server is shutting down; retry")
    if hub.count >= hub.max_streams:
        state.metrics.streams_refused.inc()
        raise APIError(503, "too many open streams; retry later")
    cfg = current_app.config
    environ = request.environ
    connection = Connection(f, hub, cfg["QUAERO_STREAM_BUFFER_BYTES"],
                            environ.get("gunicorn.socket"),
                            chunked=environ.get("SERVER_PROTOCOL") == "HTTP/1.1")
    hub.subscribe(connection)  # before the backfill: nothing falls in between
    body = _track_writes(connection, _generate(connection, state, db.engine, limit, resume, cfg))
    response = current_app.response_class(body, mimetype="text/event-stream")
    # the server closes every response, even one whose body it never started
    response.call_on_close(lambda: hub.unsubscribe(connection))
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _job_states(engine, job_ids):
    """``{job_id: (status, status event payload)}`` for the jobs that still exist."""
    with Session(engine) as session:
        jobs = session.execute(sa.select(Job).where(Job.id.in_(job_ids))).scalars().all()
        return {j.id: (j.status, status_payload(j)) for j in jobs}


def _generate(conn, state, engine, limit, resume, cfg):
    """The body of one stream. Runs in the request's greenlet."""
    hub, f = state.hub, conn.filter
    interval = cfg["QUAERO_BATCH_INTERVAL"]
    ping_every = cfg["QUAERO_PING_INTERVAL"]
    lifetime = cfg["QUAERO_STREAM_LIFETIME"] * random.uniform(0.85, 1.0)
    started = time.monotonic()

    def sent(data, event, lines=0):
        counts = hub.counts  # swapped for a fresh one at every metrics flush
        counts[event] += 1
        counts["bytes"] += len(data)
        if lines:
            counts["lines"] += lines
        return data

    def backfill():
        """Events for everything before live: the tail, or every line after ``resume``."""
        with engine.connect() as db_conn:
            conn.total = count_lines(db_conn, f)
            if resume is None:
                lines, more = tail_lines(db_conn, f, max(limit, 1))
                if lines:
                    conn.last_id = lines[-1]["id"]  # live starts after the newest line
                if limit == 0:
                    lines, more = [], bool(lines)
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
            if resume is not None:
                conn.has_more = conn.total > conn.displayed and resume > 0
            yield sent(logs_event(encode_json(lines), lines[-1]["id"] if lines else None,
                                  max(conn.total, conn.displayed), conn.displayed,
                                  conn.has_more), "logs", len(lines))
            first = False

    def flush():
        event, count = conn.next_logs_event()
        return None if event is None else sent(event, "logs", count)

    def ending():
        """All jobs finished: send what committed since, then ``end``."""
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
            yield sent(logs_event(encode_json(lines), conn.last_id, conn.total, conn.displayed,
                                  conn.has_more), "logs", len(lines))
        jobs = [{"id": j, "status": s} for j, s in conn.ended.items()]
        payload = {"job": jobs[-1]} if len(jobs) == 1 else {"job": jobs[-1], "jobs": jobs}
        yield sent(json_event("end", payload), "end")

    try:
        yield sent(format_event(retry=RETRY_MS, comment="quaero"), "retry")
        yield from backfill()
        if f.job_ids:
            conn.statuses.clear()  # superseded by the states read now; later ones follow
            jobs = _job_states(engine, f.job_ids)
            for job_id in f.job_ids:
                status, payload = jobs.get(job_id, ("deleted", None))
                if payload is not None:
                    yield sent(json_event("status", payload), "status")
                if status in FINISHED or status == "deleted":
                    conn.push_status(b"", job_id, status)
        now = time.monotonic()
        conn.next_logs = now + interval  # the backfill counts as a logs event
        conn.next_ping = now + ping_every
        conn.deadline = started + lifetime
        while not (conn.dropped or conn.broken) and (conn.partial or not conn.closing):
            if conn.partial:  # the rest of a write the hub began on this socket
                data, conn.partial = conn.partial, b""
                conn.writing, conn.backlog = True, 0
                try:
                    conn.sock.sendall(data)
                except OSError:
                    return
                finally:
                    conn.writing = False
                continue
            now = time.monotonic()
            out = []
            if conn.statuses:
                out.extend(conn.statuses.values())
                conn.statuses.clear()
            if conn.batches and now >= conn.next_logs:
                data = flush()
                if data is not None:
                    out.append(data)
                    conn.next_logs = now + interval
            if f.job_ids and not conn.running_jobs:
                if out:
                    yield b"".join(out)
                yield from ending()
                return
            if now >= conn.next_ping:
                out.append(sent(hub.ping_event, "ping"))
                conn.next_ping = now + ping_every
            if out:
                yield b"".join(out)
                continue
            if now >= conn.deadline:
                return  # the client reconnects with Last-Event-ID and loses nothing
            conn.wake.clear()
            if conn.batches:  # released early for this stream's own pace: wait it out
                conn.wake.wait(conn.next_logs - now)
            else:  # woken by a release, a status, the ticker (ping, lifetime) or a close
                conn.parked = conn.direct
                conn.wake.wait()
                conn.parked = False
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
