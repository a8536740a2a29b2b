"""The database's disk, as ingest and ``/healthz`` see it.

On SQLite the free space of the database file's volume is read (at most once a second);
below ``QUAERO_MIN_FREE_BYTES`` ingest is refused with 507 before the disk is actually
full, so the database always has room to finish a transaction, checkpoint its WAL and
prune. On either database a write that failed for a full disk counts as full until a
later write succeeds (PostgreSQL's volume cannot be seen from here).

SQLite never gives a file's pages back to the volume when rows are deleted: it keeps them
on its freelist and fills them before it grows the file. Below the floor, those pages count
as free space too, so that ingest resumes once the pruner has deleted rows (it cannot make
the volume's free space grow; see quaero/retention.py).
"""
import os
import time


class DiskGuard:
    CHECK_EVERY = 1.0   # seconds between two reads of the free space...
    NEAR = 4            # ...unless it was under 4 floors: then at every look (a second of
                        # ingest could cross the floor; statvfs costs a microsecond)
    FULL_FOR = 5.0      # a write that failed for a full disk: refuse, then try again

    def __init__(self, engine, min_free_bytes, clock=time.monotonic, statvfs=os.statvfs):
        self.path = None
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            self.path = os.path.dirname(os.path.abspath(engine.url.database))
        self.min_free = max(int(min_free_bytes), 0)
        self._engine = engine
        self._clock = clock
        self._statvfs = statvfs
        self._checked_at = None
        self._free = None
        self._full_at = None   # when the last write failed for a full disk

    def free_bytes(self):
        """Bytes the database can still fill (None when its volume cannot be seen): the
        volume's free space, and when that is below the floor, the free pages inside the
        database's file as well."""
        if self.path is None:
            return None
        now = self._clock()
        near = self._free is not None and self._free < self.NEAR * self.min_free
        if self._checked_at is None or near or now - self._checked_at >= self.CHECK_EVERY:
            self._free = self.volume_free()
            if self._free is not None and self._free < self.min_free:
                self._free += self.reusable_bytes()
            self._checked_at = now
        return self._free

    def room(self):
        """The volume's free space and the file's free pages, read now (the pruner's
        measure), or None when the volume cannot be seen."""
        free = self.volume_free()
        return None if free is None else free + self.reusable_bytes()

    def volume_free(self):
        if self.path is None:
            return None
        try:
            st = self._statvfs(self.path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def reusable_bytes(self):
        """SQLite: the bytes of the file's free pages (its freelist), which new rows fill
        before the file grows; 0 when they cannot be read."""
        try:
            with self._engine.connect() as conn:
                pages = conn.exec_driver_sql("PRAGMA freelist_count").scalar()
                size = conn.exec_driver_sql("PRAGMA page_size").scalar()
        except Exception:  # noqa: BLE001 - a database that does not answer frees nothing
            return 0
        return int(pages) * int(size)

    def recheck(self):
        """Read the free space again at the next look (the pruner freed some)."""
        self._checked_at = None

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
