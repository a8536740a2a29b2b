"""The database's disk, as ingest and ``/healthz`` see it.

On SQLite the free space of the database file's volume is read (at most once a second);
below ``QUAERO_MIN_FREE_BYTES`` ingest is refused with 507 before the disk is actually
full, so the database always has room to finish a transaction, checkpoint its WAL and
prune. On either database a write that failed for a full disk counts as full until a
later write succeeds (PostgreSQL's volume cannot be seen from here).
"""
import os
import time


class DiskGuard:
    CHECK_EVERY = 1.0   # seconds between two reads of the free space
    FULL_FOR = 5.0      # a write that failed for a full disk: refuse, then try again

    def __init__(self, engine, min_free_bytes, clock=time.monotonic, statvfs=os.statvfs):
        self.path = None
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            self.path = os.path.dirname(os.path.abspath(engine.url.database))
        self.min_free = max(int(min_free_bytes), 0)
        self._clock = clock
        self._statvfs = statvfs
        self._checked_at = None
        self._free = None
        self._full_at = None   # when the last write failed for a full disk

    def free_bytes(self):
        """Free bytes on the database's volume (None when it cannot be seen)."""
        if self.path is None:
            return None
        now = self._clock()
        if self._checked_at is None or now - self._checked_at >= self.CHECK_EVERY:
            try:
                st = self._statvfs(self.path)
                self._free = st.f_bavail * st.f_frsize
            except OSError:
                self._free = None
            self._checked_at = now
        return self._free

    def note_full(self):
        self._full_at = self._clock()
        self._checked_at = None  # look again at once

    def note_written(self):
        self._full_at = None

    def problem(self):
        """Why the database cannot take lines now (``"full: 0 bytes free"``), or None."""
        free = self.free_bytes()
        if self._full_at is not None and self._clock() - self._full_at < self.FULL_FOR:
            return "full" if free is None else f"full: {free} bytes free"
        if free is not None and free < self.min_free:
            return (f"below its free-space floor: {free} bytes free, "
                    f"QUAERO_MIN_FREE_BYTES is {self.min_free}")
        return None
