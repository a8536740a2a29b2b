"""One stream's body (:class:`StreamSession`): backfill -> live -> end, in the request's
greenlet; and the answer for a stream taken later (:func:`refusal`). The stream's state is
its :class:`~.subscriber.Subscriber`'s, changed only through that class's methods."""
import random
import time

import gevent
from sqlalchemy import exc as sa_exc

from ..deadline import DatabaseLate, reading
from ..models import ENDED
from ..queries import count_lines, newest_id, select_lines, tail_lines
from . import watcher
from .sink import Stalled
from .sse import format_event, json_event

RESUME_PAGE = 1000
RETRY_MS = 2000
# the database is away, or did not answer a read within QUAERO_DB_TIMEOUT: retry later
DB_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, DatabaseLate)
REFUSED_RETRY_MS = (2000, 5000)    # a jittered retry for a stream refused now...
OVERLOAD_RETRY_MS = (5000, 15000)  # ...spread wider when the cause is load
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


def pages_after(engine, f, after, seconds):
    """Every matching line after ``after``, a page at a time, a connection per page."""
    while True:
        with reading(engine, seconds) as db_conn:
            lines, more = select_lines(db_conn, f, after=after, limit=RESUME_PAGE)
        yield lines
        if not more or not lines:
            return
        after = lines[-1]["id"]


class StreamSession:
    """The body of one stream. After the first chunk (gunicorn sends the headers with it)
    everything goes through the sink when there is one, else it is yielded to the server."""

    def __init__(self, conn, sink, state, engine, limit, resume, cfg):
        self.conn, self.sink, self.state, self.engine = conn, sink, state, engine
        self.hub, self.f = state.hub, conn.filter
        self.limit, self.resume = limit, resume
        self.interval = cfg["QUAERO_BATCH_INTERVAL"]
        self.ping_every = cfg["QUAERO_PING_INTERVAL"]
        self.stall = cfg["QUAERO_STREAM_STALL_SECONDS"]
        self.db_seconds = cfg["QUAERO_DB_TIMEOUT"]
        self.lifetime = cfg["QUAERO_STREAM_LIFETIME"] * random.uniform(0.85, 1.0)
        self.started = time.monotonic()

    def __iter__(self):
        conn, hub = self.conn, self.hub
        try:
            yield from self.emit([([format_event(retry=RETRY_MS, comment="quaero")], "retry", 0)])
            conn.headers_sent(self.sink)  # from here the sink may write
            yield from self.backfill()
            if self.f.job_ids:
                yield from self.emit(self.initial_statuses())
            # the backfill counts as a logs event
            conn.go_live(time.monotonic(), self.interval, self.ping_every,
                         self.started + self.lifetime)
            yield from self.live()
        except Stalled:
            conn.drop()  # its socket took nothing for the stall bound; it resumes later
        except OSError:
            return  # the client is gone (a write to its socket failed)
        except DB_ERRORS:
            yield from self.emit([([refusal(hub, self.state.metrics, "database")], "retry", 0)])
        finally:
            hub.unsubscribe(conn)

    def emit(self, events):
        """Write ``(parts, event name, lines)`` events as one write; counts them."""
        if not events:
            return
        conn = self.conn
        counts, parts = self.hub.counts, []  # swapped for a fresh one at every metrics flush
        for ev_parts, name, lines in events:
            counts[name] += 1
            counts["bytes"] += sum(len(p) for p in ev_parts)
            if lines:
                counts["lines"] += lines
            parts += ev_parts
        if conn.sink is None:
            yield b"".join(parts)
            return
        self.send(conn.sink.frame(parts))

    def send(self, parts):
        conn = self.conn
        conn.begin_write(time.monotonic())
        try:
            conn.sink.send(parts, self.stall)
        finally:
            conn.end_write()

    def backfill(self):
        """Events for everything before live: the tail, or every line after ``resume``.
        Every one has an id: an empty tail the newest id visible before it was read."""
        conn, f, resume = self.conn, self.f, self.resume
        with reading(self.engine, self.db_seconds) as db_conn:
            total = count_lines(db_conn, f)
            if resume is None:
                newest = newest_id(db_conn)
                lines, more = tail_lines(db_conn, f, max(self.limit, 1))
                if self.limit == 0:
                    lines, more = [], bool(lines)
                conn.backfill_from(total, lines[-1]["id"] if lines else newest, more)
                pages = [lines]
        if resume is not None:
            conn.backfill_from(total, resume, False)
            pages = pages_after(self.engine, f, resume, self.db_seconds)
        first = True
        for lines in pages:
            if not lines and not first:
                break
            parts = conn.page_parts(lines, resume)
            yield from self.emit([(parts, "logs", len(lines))])
            first = False

    def initial_statuses(self):
        conn = self.conn
        with reading(self.engine, self.db_seconds) as db_conn:
            jobs = watcher.job_states(db_conn, self.f.job_ids)
        events = []
        conn.forget_statuses()  # superseded by the states read now; later ones follow
        for job_id in self.f.job_ids:
            status, payload = jobs.get(job_id, ("deleted", None))
            if payload is not None:
                event = json_event("status", payload)
                conn.status_sent(job_id, event)
                events.append(([event], "status", 0))
            if status in ENDED:
                conn.push_status(b"", job_id, status)
        return events

    def ending(self):
        """All jobs finished: send what committed since, their statuses, then ``end``."""
        conn = self.conn
        conn.detach()  # the database has every line from here on
        for lines in pages_after(self.engine, self.f, conn.last_id, self.db_seconds):
            if not lines:
                break
            gevent.sleep(max(0.0, conn.next_logs - time.monotonic()))  # keep the pace
            conn.logs_sent(time.monotonic(), self.interval)
            yield from self.emit([(conn.page_parts(lines), "logs", len(lines))])
        events = [([ev], "status", 0) for ev in conn.take_statuses()]
        jobs = [{"id": j, "status": s} for j, s in conn.ended.items()]
        payload = {"job": jobs[-1]} if len(jobs) == 1 else {"job": jobs[-1], "jobs": jobs}
        yield from self.emit(events + [([json_event("end", payload)], "end", 0)])

    def backlog_page(self):
        """The next page of what the stream missed while behind (``Subscriber``), read
        through the resume's query, as ``(parts, lines)`` (``(None, 0)``: nothing)."""
        after, limit = self.conn.backlog_read(RESUME_PAGE)
        with reading(self.engine, self.db_seconds) as db_conn:
            lines, more = select_lines(db_conn, self.f, after=after, limit=limit)
        return self.conn.backlog_parts(lines, more)

    def live(self):
        conn, hub, f = self.conn, self.hub, self.f
        while not (conn.dropped or conn.broken) and (conn.out or not conn.closing):
            if conn.out:  # the rest of a write the hub began (and counted) on this socket
                self.send(conn.take_out())
                continue
            now = time.monotonic()
            events = []
            if now >= conn.next_logs and (conn.behind or conn.batches):
                # behind: the backlog from the database first; the queue waits for it
                parts, count = self.backlog_page() if conn.behind else conn.next_logs_parts()
                if parts is not None:
                    now = time.monotonic()
                    events.append((parts, "logs", count))
                    conn.logs_sent(now, self.interval)
            if f.job_ids and not conn.running_jobs:
                yield from self.emit(events)
                yield from self.ending()
                return
            # a status never overtakes lines committed before it: those still held
            # for the pace (here, in the backlog or in the hub's window) go first
            if conn.statuses:
                events += [([ev], "status", 0) for ev in conn.take_statuses(hub.held_from(conn))]
            if now >= conn.next_ping:
                events.append(([hub.ping_event], "ping", 0))
                conn.ping_sent(now, self.ping_every)
            if events:
                yield from self.emit(events)
                continue
            if now >= conn.deadline:
                return  # the client reconnects with Last-Event-ID and loses nothing
            conn.wake.clear()
            if conn.batches or conn.behind:  # held for this stream's own pace: wait it out
                conn.wake.wait(conn.next_logs - now)
            else:  # woken by a release, a status, the ticker (ping, lifetime) or a close
                conn.park()
                conn.wake.wait()
                conn.unpark()


def track_writes(conn, body):
    """Mark the time the server spends writing each chunk (the generator is suspended
    until the socket took it): a write that does not end is a client that does not read
    (the hub's ticker drops it)."""
    try:
        for chunk in body:
            conn.begin_write(time.monotonic())
            yield chunk
            conn.end_write()
    finally:
        body.close()
