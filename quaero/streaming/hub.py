"""All open streams of a process (:class:`StreamHub`): lines in id order, each once, fanned
out per filter group; statuses per job; one ticker for pings, lifetimes and metrics."""
import time
from collections import defaultdict

import gevent

from ..deadline import within
from ..models import iso, utcnow
from . import watcher
from .pacing import Batch, Group, match_groups
from .sse import json_event

TICK = 0.25  # seconds: resolution of pings and stream lifetimes
DIRECT_MAX = 64 << 10  # bigger events are written by each stream's own greenlet
CATCH_UP_PAGE = 5000


def _under_gevent(environ):
    """Streams need a gevent worker: a sync worker would hang on its only request."""
    from gevent import monkey
    if not monkey.is_module_patched("socket"):
        return False
    return not ("gunicorn.socket" in environ and not environ.get("wsgi.multithread"))


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
        self.stall = app.config["QUAERO_STREAM_STALL_SECONDS"]
        self.db_seconds = app.config["QUAERO_DB_TIMEOUT"]
        self.groups = {}                  # LineFilter -> Group
        self.by_key = defaultdict(set)    # job id or None (service) -> filters
        self.by_job = defaultdict(set)    # job id -> connections (status events)
        self.last_status = {}             # job id -> last status payload sent
        self.count = 0
        self.shutting_down = False
        self.delivered = None             # highest line id handed to streams
        self._lock = Semaphore()
        self._group = None                # the app's group: the watcher, the ticker, timers
        self.counts = defaultdict(int)    # metrics, added to Prometheus in bulk
        self.refused = defaultdict(int)   # streams answered "retry later", by reason
        self.retry_scale = 1.0
        self.recount_at = 0.0             # monotonic time of the next total_count refresh
        self.ping_event = b""
        self.bus = bus
        bus.connect(self.on_lines, self.on_status, self.on_range)

    def close(self):
        """Stop taking the bus's messages (once) and any new stream."""
        if self.bus is not None:
            self.bus.disconnect(self.on_lines, self.on_status, self.on_range)
            self.bus = None
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

    def read(self, query, *args):
        """``query(engine, *args)``, one of ``watcher``'s reads, cut off at
        QUAERO_DB_TIMEOUT (``DatabaseLate``): a database that does not answer must not hold
        the hub's lock, and with it every line published meanwhile, for good."""
        with within(self.db_seconds):
            return query(self.engine, *args)

    def refuse_reason(self, environ):
        """Why a new stream cannot be taken now, or None."""
        if not _under_gevent(environ):
            return "no_gevent"
        if self.shutting_down:
            return "shutting_down"
        if self.count >= self.max_streams:
            return "stream_cap"
        return None

    def held_from(self, conn):
        """The smallest line id held for this stream (its queue or its backlog, or its
        group's pacing window), or None."""
        first = conn.first_held()
        ids = [] if first is None else [first]
        group = self.groups.get(conn.filter)
        if group is not None and group.pending:
            ids.append(group.pending[0].first_id)
        return min(ids) if ids else None

    def subscribe(self, conn):
        if self.delivered is None:
            self.delivered = self.read(watcher.max_id)
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
                fresh = self.read(watcher.lines_between, self.delivered, fresh[0]["id"]) + fresh
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
            totals = self.read(watcher.totals, list(self.groups)) if refresh_totals else None
            newest = self.read(watcher.max_id)
            if self.delivered is None or not self.count:
                self.delivered = newest
                return
            while self.delivered < newest:
                lines = self.read(watcher.lines_between, self.delivered, newest + 1, CATCH_UP_PAGE)
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
                    held = group.held()
                    for conn in group.conns:
                        conn.recount(total, held, newest)

    def _dispatch(self, lines):
        now = time.monotonic()
        for f, matched in match_groups(lines, self.by_key):
            group = self.groups.get(f)
            if group is None:
                continue
            delay = group.offer(Batch(matched, now), now, self.interval)
            if delay == 0.0:
                self._release(group)  # quiet for a window: the leading edge goes at once
            elif delay is not None:
                group.timer = self._later(delay, self._release, group)

    def _release(self, group):
        now = time.monotonic()
        batch = group.release(now)
        if batch is None:
            return
        self.metrics.delivery_seconds.observe(now - batch.published)
        interval, counts = self.interval, self.counts
        small = len(batch.encoded) <= DIRECT_MAX  # big ones: each stream's greenlet
        for conn in list(group.conns):
            conn.push(batch)
            if conn.parked and now >= conn.next_logs and small and not (
                    conn.dropped or conn.behind or conn.out or conn.statuses):
                conn.write_now(now, interval, counts)
            else:
                conn.wake.set()

    # -- pings, lifetimes and metrics: one ticker for all streams ---------------------------

    def _tick(self):
        while not self.shutting_down:
            now = time.monotonic()
            self.ping_event = json_event("ping", {"timestamp": iso(utcnow())})
            for group in list(self.groups.values()):
                for conn in list(group.conns):
                    if conn.stalled(now, self.stall):
                        conn.drop()
                    elif now >= conn.next_ping or now >= conn.deadline:
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
            elif key == "fell_behind":
                m.fell_behind.inc(n)
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

    def start(self, group):
        """The database watcher and the ticker of this process, in the app's ``group``."""
        self._group = group
        self.ping_event = json_event("ping", {"timestamp": iso(utcnow())})
        group.spawn(watcher.watch, self)
        group.spawn(self._tick)

    def stop(self):
        """Close every stream and stop the watcher and the ticker."""
        self.shutdown()
        self.close()

    def _later(self, delay, fn, *args):
        """``fn(*args)`` in ``delay`` seconds, in the app's group (a pacing window's end)."""
        g = gevent.Greenlet(fn, *args)
        if self._group is not None:
            self._group.add(g)
        g.start_later(delay)
        return g
