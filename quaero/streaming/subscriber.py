"""One client's state (:class:`Subscriber`). The hub only appends to it (batches,
statuses) and may write a small event to a parked stream; the stream's own greenlet
(``session.py``) takes and writes everything else."""
import socket
from collections import deque

from ..models import ENDED
from .sse import encode_json, logs_event_parts


class Subscriber:
    """One client's state. The hub only appends (batches, statuses) and may write to a
    parked stream; the stream's greenlet takes and writes everything else."""

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
