"""One client's state (:class:`Subscriber`). The hub only appends to it (batches,
statuses) and may write a small event to a parked stream; the stream's own greenlet
(``session.py``) takes and writes everything else. Every change of that state is one of
its methods."""
import socket
from collections import deque

from ..models import ENDED
from .sse import encode_json, logs_event_parts

MIN_PAGE = 10  # lines: a page of the backlog holds at least this many, however big they are


class Subscriber:
    """One client's state. The hub only appends (batches, statuses) and may write to a
    parked stream; the stream's greenlet takes and writes everything else.

    Its queue is bounded in bytes. A queue past its bound means the stream's greenlet did
    not take it in time, because the client reads slowly or because the worker is busy
    (a burst of big lines: ingest holds the worker while the reader waits to be written
    to); either way the queue is forgotten and the stream is *behind*: it reads what it
    missed from the database, a page per ``logs`` event, then takes its queue again. Memory
    stays bounded and the client loses nothing. Only a client whose socket takes nothing
    for the stall bound is dropped (``sink.Stalled``, the hub's ticker)."""

    def __init__(self, f, hub, buffer_bytes, sock=None, sink=None):
        from gevent.event import Event
        self.filter = f
        self.hub = hub
        self.buffer_bytes = buffer_bytes
        self.sock = sock
        self.sink = sink         # set once the headers are out (see session.py)
        self.wake = Event()
        self.batches = deque()
        self.pending_bytes = 0
        # behind: the queue was forgotten; every matching line after last_id up to
        # skipped_upto (at least) is read from the database before the queue is taken again
        self.behind = False
        self.skipped_upto = 0
        self.reading_upto = 0    # skipped_upto when the current read of the backlog began
        self.line_bytes = 0      # encoded bytes per line, as last seen: sizes a page
        # status events in order, each with the newest line id the hub had delivered when
        # it came: it waits for the lines up to there (bounded: collapsed per job if long)
        self.statuses = deque()  # (marker, job id, encoded event)
        self.sent_status = {}    # job id -> the last status event queued or sent
        self.running_jobs = set(f.job_ids)
        self.ended = {}          # job id -> final status, once finished
        self.dropped = False
        self.closing = False
        self.writing = False     # between handing bytes to the socket and it taking them
        self.write_since = 0.0   # monotonic time that write began
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
        self.batches.append(batch)
        self.pending_bytes += len(batch.encoded)
        # One batch, however big, is shared with every stream of its group: holding it
        # costs nothing more. Several past the bound: fall behind (see the class).
        if self.pending_bytes > self.buffer_bytes and len(self.batches) > 1:
            self.fall_behind()

    def fall_behind(self):
        """Forget the queue; its lines (and the ones before, if behind already) will be read
        from the database."""
        lines = sum(len(b.lines) for b in self.batches)
        self.line_bytes = self.pending_bytes // max(lines, 1)
        self.skipped_upto = max(self.skipped_upto, self.batches[-1].last_id)
        self.batches.clear()
        self.pending_bytes = 0
        if not self.behind:
            self.behind = True
            self.hub.counts["fell_behind"] += 1
        self.wake.set()

    def push_status(self, encoded, job_id, status):
        if status in ENDED:
            self.running_jobs.discard(job_id)
            self.ended[job_id] = status
        if encoded and self.sent_status.get(job_id) != encoded:
            self.sent_status[job_id] = encoded
            self.statuses.append((self.hub.delivered or 0, job_id, encoded))
            if len(self.statuses) > 2 * len(self.filter.job_ids) + 8:
                latest = {job: (m, job, ev) for m, job, ev in self.statuses}
                self.statuses = deque(sorted(latest.values(), key=lambda s: s[0]))
        self.wake.set()

    def recount(self, total, held, newest):
        """``total_count`` again from the database's count (read when ``newest`` was the
        newest id; ``held`` of them wait in the group's window). A stream behind keeps its
        own: the lines it has still to read are not in its queue, and it is made true
        again at a recount after it caught up."""
        if not self.behind:
            self.total = total - held - self.queued_lines(newest)

    def shutdown_socket(self):
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop(self):
        """The client's socket took nothing for the stall bound: stop queueing and close it,
        so that a write blocked on it fails and the generator's ``finally`` runs. The
        client resumes with ``Last-Event-ID``."""
        if self.dropped:
            return
        self.dropped = True
        self.batches.clear()
        self.out = []
        self.pending_bytes = 0
        self.hub.counts["slow_dropped"] += 1
        self.hub.unsubscribe(self)
        self.shutdown_socket()
        self.wake.set()

    def detach(self):
        """All jobs ended: nothing more comes from the hub; the database has every line."""
        self.hub.unsubscribe(self)
        self.batches.clear()
        self.pending_bytes = 0

    def close(self):
        """Server shutdown: end the stream at once; the client resumes elsewhere. A write
        blocked on a client that does not read is cut."""
        self.closing = True
        if self.writing or self.out:
            self.shutdown_socket()
        self.wake.set()

    # called by the stream's greenlet (session.py)
    def headers_sent(self, sink):
        self.sink = sink

    def backfill_from(self, total, last_id, has_more):
        """Before the backfill: the matching lines that exist, and the id it starts from."""
        self.total, self.last_id, self.has_more = total, last_id, has_more

    def page_parts(self, lines, resumed_from=None):
        """The ``logs`` event (as parts) for a page read from the database after
        ``last_id`` (the backfill, a resume, the lines before ``end``)."""
        if lines:
            self.last_id = max(self.last_id, lines[-1]["id"])
        self.displayed += len(lines)
        self.total = max(self.total, self.displayed)
        if resumed_from is not None:
            self.has_more = self.total > self.displayed and resumed_from > 0
        return logs_event_parts([encode_json(lines)], self.last_id, self.total,
                                self.displayed, self.has_more)

    def forget_statuses(self):
        self.statuses.clear()

    def status_sent(self, job_id, event):
        self.sent_status[job_id] = event

    def go_live(self, now, interval, ping_every, deadline):
        self.next_logs = now + interval
        self.next_ping = now + ping_every
        self.deadline = deadline

    def logs_sent(self, now, interval):
        self.next_logs = now + interval

    def ping_sent(self, now, every):
        self.next_ping = now + every

    def park(self):
        """Nothing to send: the hub may write a small event itself (with a sink)."""
        self.parked = self.sink is not None

    def unpark(self):
        self.parked = False

    def take_out(self):
        """The rest of a write the hub began, for the greenlet to finish."""
        out, self.out = self.out, []
        return out

    def begin_write(self, now):
        self.writing, self.write_since = True, now

    def end_write(self):
        self.writing = False

    def stalled(self, now, stall):
        """A write the server makes itself (no sink) that has not finished for ``stall``
        seconds: the client does not read (the sink times its own writes)."""
        return self.sink is None and self.writing and now - self.write_since > stall

    def first_held(self):
        """The smallest line id this stream holds unsent (queued, or behind: in the
        database), or None."""
        if self.behind:
            return self.last_id + 1
        return self.batches[0].first_id if self.batches else None

    def next_logs_parts(self):
        """The ``logs`` event (as parts) for everything queued, or None; counts it as
        displayed."""
        arrays, count = self.take()
        if arrays is None:
            return None, 0
        self.displayed += count
        return logs_event_parts(arrays, self.last_id, self.total, self.displayed,
                                self.has_more), count

    def backlog_read(self, most):
        """Begin a read of the backlog: ``(after id, page size in lines)``. A page is about
        the buffer's worth of lines as big as the last ones seen (``most`` at most)."""
        self.reading_upto = self.skipped_upto
        per_line = max(self.line_bytes, 1)
        return self.last_id, max(MIN_PAGE, min(most, self.buffer_bytes // per_line))

    def backlog_parts(self, lines, more):
        """The ``logs`` event (as parts, with its line count) for a page read after
        ``backlog_read``, or ``(None, 0)`` for an empty page. A page that reaches every line
        the queue forgot (or the end of what the database held when the read began: the
        forgotten lines were committed by then) ends the backlog: the queue holds the rest,
        and ``take`` skips what the page already sent."""
        if lines:
            encoded = encode_json(lines)
            self.line_bytes = len(encoded) // len(lines)
            self.last_id = lines[-1]["id"]
            self.total += len(lines)
            self.displayed += len(lines)
        reached = self.last_id if more else max(self.last_id, self.reading_upto)
        if reached >= self.skipped_upto:
            self.behind = False
        if not lines:
            return None, 0
        return logs_event_parts([encoded], self.last_id, self.total, self.displayed,
                                self.has_more), len(lines)

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
