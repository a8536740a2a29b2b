"""Pure pacing: which filter groups a committed batch feeds, the batch encoded once per
group, and each group's window (the leading edge goes at once after a quiet window; what
arrives within the window is released together when it closes). Time is passed in."""
from collections import defaultdict

from .sse import encode_json, join_arrays

LATE = 1.07  # a window closes a little late: streams that took the last release a few ms
             # late are then ready for this one without a timer of their own


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
    """The streams that share one filter, and the window they share."""
    __slots__ = ("conns", "pending", "last_release", "timer")

    def __init__(self):
        self.conns = set()
        self.pending = []
        self.last_release = float("-inf")
        self.timer = None

    def offer(self, batch, now, interval):
        """Hold ``batch``. Returns 0.0 to release now (leading edge), the delay until the
        window closes when a timer must be set, or None when one is already set."""
        self.pending.append(batch)
        if self.timer is not None:
            return None
        if now - self.last_release >= interval:
            return 0.0
        return self.last_release + interval * LATE - now

    def release(self, now):
        """The held lines as one batch (or None); the window restarts at ``now``."""
        self.timer = None
        if not self.pending:
            return None
        batch = Batch.combine(self.pending)
        self.pending = []
        self.last_release = now
        return batch

    def held(self):
        return sum(len(b.lines) for b in self.pending)


def match_groups(lines, filters_by_key):
    """``[(filter, matching lines)]`` for a batch of lines in id order: single-job and
    service filters look only at their key's lines, multi-job filters once per batch."""
    by_key = defaultdict(list)
    for line in lines:
        by_key[line["job_id"]].append(line)
    out = []
    for key, key_lines in by_key.items():
        for f in list(filters_by_key.get(key, ())):
            if len(f.job_ids) > 1:
                continue
            matched = [ln for ln in key_lines if f.matches(ln)]
            if matched:
                out.append((f, matched))
    multi = {f for key in by_key for f in filters_by_key.get(key, ()) if len(f.job_ids) > 1}
    for f in multi:
        matched = [ln for ln in lines if f.matches(ln)]
        if matched:
            out.append((f, matched))
    return out


def stream_cap(worker_connections, configured=None):
    """Streams one worker takes: its connections less a reserve for ``/healthz``, ingest
    and pages (a tenth, at least 8), or ``configured`` when that is smaller (0: none, every
    client polls)."""
    room = max(1, worker_connections - max(8, worker_connections // 10))
    return room if configured is None else max(0, min(configured, room))
