"""The evaluator's lines (:class:`LineFeed`): every line committed after the last one read,
once, in id order.

Lines reach it as they reach the streams: the bus hands them over by an append to an
inbox (nothing else happens in the publisher's greenlet); ids are dense and become visible
in commit order, so a batch that does not start right after the last id read means lines
are missing, and they are read from the database; and the newest id is looked at every
``look_every`` seconds, so that lines the bus did not bring within a look (other processes
without Redis, a dropped Redis message) are read from the database too."""
import time
from collections import deque

from ..queries import all_lines_between, newest_id

INBOX_MAX_LINES = 50000     # beyond this the inbox is dropped and read from the database
CATCH_UP_PAGE = 5000


class LineFeed:
    def __init__(self, engine, look_every):
        self.engine = engine
        self.look_every = look_every
        self.last_id = 0
        self._inbox = deque()
        self._queued = 0
        self._overflow = False
        self._mark = 0          # the newest id at the last look
        self._look_at = 0.0

    def offer(self, lines):
        """The bus's lines (its receiver): queued, or, past the bound, dropped for the
        database to give them. Whether they were queued."""
        if self._queued + len(lines) > INBOX_MAX_LINES:
            self._overflow = True
            self._inbox.clear()
            self._queued = 0
            return False
        self._inbox.append(lines)
        self._queued += len(lines)
        return True

    def reset(self, last_id, newest):
        """Read from after ``last_id`` on (``newest``: the newest id now)."""
        self._inbox, self._queued, self._overflow = deque(), 0, False
        self.last_id, self._mark, self._look_at = last_id, newest, 0.0

    def take(self):
        """The new lines, in id order, each once."""
        out = []
        batches, self._inbox, self._queued = self._inbox, deque(), 0
        if self._overflow:
            self._overflow = False
            batches = deque()
            with self.engine.connect() as conn:
                self._mark = newest_id(conn)
        for batch in batches:
            fresh = [ln for ln in batch if ln["id"] > self.last_id]
            if not fresh:
                continue
            if fresh[0]["id"] != self.last_id + 1:
                out += self._read(self.last_id, fresh[0]["id"] - 1)
            out += fresh
            self.last_id = fresh[-1]["id"]
        if time.monotonic() >= self._look_at:
            self._look_at = time.monotonic() + self.look_every
            if self.last_id < self._mark:   # not brought by the bus within a look
                out += self._read(self.last_id, self._mark)
            with self.engine.connect() as conn:
                self._mark = newest_id(conn)
        return out

    def skip(self):
        """No rule looks at lines: follow the newest line, unread (a rule added later
        starts from there, not from history). Whether the position moved."""
        self._inbox, self._queued, self._overflow = deque(), 0, False
        with self.engine.connect() as conn:
            newest = newest_id(conn)
        moved = newest != self.last_id
        self.last_id = self._mark = newest
        return moved

    def _read(self, after, upto):
        out = []
        with self.engine.connect() as conn:
            while after < upto:
                page = all_lines_between(conn, after, upto + 1, CATCH_UP_PAGE)
                if not page:
                    break
                out += page
                after = page[-1]["id"]
        self.last_id = max(self.last_id, upto)
        return out
