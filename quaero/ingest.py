"""The one write path for every log line: batch, commit, then publish.

HTTP producers, Quaero's own logging and job steps all hand lines to :class:`Ingestor`.
A single writer greenlet per process takes whatever has queued up while the previous
transaction ran (group commit), writes it in one transaction and only after the commit
publishes the lines on the bus and acknowledges the producers.
"""
import logging
import time
from collections import deque

import gevent
import sqlalchemy as sa
from gevent.event import AsyncResult, Event

from .errors import DiskFull, Failed, JobNotFound, Unavailable
from .models import utcnow
from .searchindex import INDEX_AFTER_QUIET, MAX_UNINDEXED, index_behind
from .storage import JobGone, driver_errors, line_key, record_keys, write_lines

log = logging.getLogger("quaero.ingest")

MAX_LINES_PER_TXN = 20000


class KeyTaken(Exception):
    """Another request with the same ``Idempotency-Key`` committed first: answer from its
    record (``idempotency_t``)."""


class _KeyConflict(Exception):
    def __init__(self, unit):
        self.unit = unit


class _Stalled(Exception):
    """The database did not answer within the batch's deadline (raised by a timer)."""


class _Unit:
    """One producer's lines: committed together or not at all. ``deadline`` (monotonic):
    past it the producer has been answered 503 and the unit is never committed."""
    __slots__ = ("lines", "result", "key", "deadline")

    def __init__(self, lines, result=None, key=None, deadline=None):
        self.lines = lines
        self.result = result  # AsyncResult for acknowledged writes, None for fire-and-forget
        self.key = key        # (Idempotency-Key, body digest) or None
        self.deadline = deadline


def accepted_body(n, first_id, last_id):
    """The JSON body of an acknowledged ``POST /api/logs`` (also what its idempotency
    record replays, byte for byte)."""
    return f'{{"accepted":{n},"first_id":{first_id},"last_id":{last_id}}}'


def disk_full(exc):
    """Whether a database error says its disk is full (SQLite's SQLITE_FULL, PostgreSQL's
    ``disk_full``, SQLSTATE 53100)."""
    orig = getattr(exc, "orig", None) or exc
    return (getattr(orig, "sqlite_errorcode", None) == 13
            or getattr(orig, "sqlstate", None) == "53100")


class Ingestor:
    """Group-commit writer. ``submit`` blocks its caller until its lines are committed."""

    def __init__(self, engine, bus, metrics, max_pending_records=10000, timeout=10.0,
                 disk=None):
        self.engine = engine
        self.bus = bus
        self.metrics = metrics
        self.max_pending_records = max_pending_records
        # An acknowledged write is answered within this (seconds): committed, or 503 and
        # never committed later (its unit is withdrawn, or its transaction cut off)
        self.timeout = timeout
        self.disk = disk            # DiskGuard: the database's free space, as last seen
        self._units = deque()
        self._pending_records = 0
        self._wake = Event()
        self._group = None
        self._greenlet = None
        self._stopping = False
        # (job id, step name or None) that POST /api/logs saw exist, so that it asks the
        # database once per target, not per request. Never stale in a harmful way: steps
        # go only with their job, and write_lines refuses a removed job's lines (its
        # counter row goes first), whichever process removed it.
        self.known_targets = set()
        self._written = self._indexed = 0  # last line id written / indexed, as last seen
        self._index_beside = engine.dialect.name == "postgresql"
        self._indexer = None  # PostgreSQL: the greenlet indexing beside the writer
        self._down = (sa.exc.OperationalError, sa.exc.InterfaceError) + driver_errors(engine)

    # -- producers --------------------------------------------------------------------

    def submit(self, lines, timeout=None, key=None):
        """Commit ``lines`` (validated dicts) all together; return ``(first_id, last_id)``.
        ``key``: ``(Idempotency-Key, body digest)``, recorded with the lines.

        Raises :class:`~quaero.errors.QuaeroError` (Unavailable, DiskFull, JobNotFound,
        Failed) if nothing was stored, :class:`KeyTaken` if another
        request with ``key`` was stored first."""
        problem = self.disk.problem() if self.disk is not None else None
        if problem is not None:
            raise DiskFull(f"the database's disk is {problem}; nothing was stored")
        if self._group is None:
            raise RuntimeError("Quaero.start() was not called in this process: nothing writes")
        timeout = self.timeout if timeout is None else timeout
        result = AsyncResult()
        unit = _Unit(lines, result, key, time.monotonic() + timeout)
        self._units.append(unit)
        self._kick()
        try:
            return result.get(timeout=timeout)
        except gevent.Timeout:
            try:
                self._units.remove(unit)  # still waiting: withdrawn, nothing stored
            except ValueError:  # being written now, its transaction bounded by the deadline
                return result.get()
            raise Unavailable("the database is too slow to answer; retry") from None

    def submit_nowait(self, lines):
        """Queue lines without waiting (logging). Bounded: returns False and counts a
        drop when too many are already waiting."""
        if self._pending_records + len(lines) > self.max_pending_records:
            self.metrics.service_lines_dropped.inc(len(lines))
            return False
        self._pending_records += len(lines)
        self._units.append(_Unit(lines))
        self._kick()
        return True

    def wait_for_room(self, timeout=10.0):
        """Hold a fast fire-and-forget producer (a job step's logging) back while the
        queue is nearly full, until it has drained to half, instead of dropping its lines.
        Never waits in the hub (callbacks must not block)."""
        if self._pending_records <= self.max_pending_records * 0.8:
            return
        deadline = time.monotonic() + timeout
        while (self._pending_records > self.max_pending_records // 2
               and time.monotonic() < deadline and gevent.getcurrent() is not gevent.get_hub()):
            gevent.sleep(0.005)

    def start(self, group):
        """The writer greenlet of this process, in the app's ``group`` (``Quaero.start``)."""
        self._group, self._stopping = group, False
        self._greenlet = group.spawn(self._run)

    def stop(self):
        """The writer commits what is queued, then ends (``drain`` waits for it)."""
        self._stopping = True
        self._wake.set()

    def drain(self, timeout):
        if self._greenlet is not None:
            self._greenlet.join(timeout)

    def _kick(self):
        if self._greenlet is None and self._group is None:
            # lines before start() (service logging while the app is built) wait for it;
            # an acknowledged write cannot
            return
        if self._greenlet.dead and not self._stopping:  # the writer never returns by itself
            self._greenlet = self._group.spawn(self._run)
        self._wake.set()

    # -- the writer -------------------------------------------------------------------

    def _run(self):
        while True:
            if not self._stopping:  # (stopping: stop() set the wake-up already, maybe
                self._wake.wait()   # consumed by the pass that committed the last units)
            self._wake.clear()
            if self._stopping and not self._units:
                return
            while self._units:
                if self._written - self._indexed > MAX_UNINDEXED:
                    self._index_under_load()
                batch = self._next_batch()
                try:
                    if batch:
                        self._commit(batch)
                except Exception:  # never let the writer die; the units were answered
                    log.exception("ingest writer failed")
            # quiet for INDEX_AFTER_QUIET: index what was written, a chunk at a time,
            # until the next write comes (searches scan what is not indexed yet)
            while (not self._stopping and self._written > self._indexed
                   and not self._wake.wait(INDEX_AFTER_QUIET) and self._index_chunk()):
                pass

    def _next_batch(self):
        """The queued units for one transaction: at most MAX_LINES_PER_TXN lines (or one
        unit), none past its deadline (answered 503 already), and no two with one
        idempotency key (the second waits for the next transaction, then replays)."""
        batch, n, keys = [], 0, set()
        now = time.monotonic()
        while self._units and (not batch or n + len(self._units[0].lines) <= MAX_LINES_PER_TXN):
            unit = self._units[0]
            if unit.deadline is not None and unit.deadline <= now:
                self._units.popleft()
                self._fail(unit, Unavailable("the database is too slow to answer; retry"))
                continue
            if unit.key is not None:
                if unit.key[0] in keys:
                    break
                keys.add(unit.key[0])
            batch.append(self._units.popleft())
            n += len(unit.lines)
        return batch

    def _index_under_load(self):
        """Keep what searches scan bounded (MAX_UNINDEXED). SQLite (one writer at a time):
        a chunk in the writer's turn. PostgreSQL: a greenlet indexes beside the writer (9 us
        of the database's time a line the writer waited out), which takes a chunk itself
        only while four times as far behind."""
        if self._index_beside and (self._indexer is None or self._indexer.dead):
            self._indexer = self._group.spawn(self._catch_up)
        if not self._index_beside or self._written - self._indexed > 4 * MAX_UNINDEXED:
            self._index_chunk()

    def _catch_up(self):
        while self._written - self._indexed > MAX_UNINDEXED // 4 and self._index_chunk():
            pass

    def _index_chunk(self):
        """Index one chunk; True if there may be more."""
        try:
            with self.engine.begin() as conn:
                indexed = index_behind(conn)
        except Exception as exc:  # searches scan the unindexed lines meanwhile
            log.warning("search indexing failed: %r", exc)
            return False
        before, self._indexed = self._indexed, max(self._indexed, indexed)
        return self._indexed != before and self._indexed < self._written

    def _transaction(self, units, lines):
        """Write ``lines`` (and the units' idempotency records) in one transaction. The
        statements before COMMIT are cut off at the units' earliest deadline (the
        connection is dropped, so the database rolls them back): a producer that was
        answered 503 never finds its lines committed later. COMMIT itself is awaited."""
        deadlines = [u.deadline for u in units if u.deadline is not None]
        budget = (min(deadlines) - time.monotonic()) if deadlines else self.timeout
        timer = gevent.Timeout(max(budget, 0.001), _Stalled())
        timer.start()
        conn = None
        try:
            try:
                conn = self.engine.connect()
                trans = conn.begin()
                rows = write_lines(conn, lines)
                keyed, owners, i = [], [], 0
                for u in units:
                    n = len(u.lines)
                    if u.key is not None:
                        keyed.append((u.key[0], u.key[1],
                                      accepted_body(n, rows[i]["id"], rows[i + n - 1]["id"])))
                        owners.append(u)
                    i += n
                if keyed:
                    taken = record_keys(conn, keyed, utcnow())
                    if taken is not None:
                        raise _KeyConflict(owners[taken])
            except Exception as exc:
                if not timer.pending:  # the deadline passed (the driver may say it otherwise)
                    if conn is not None and not conn.invalidated:
                        conn.invalidate()
                    raise _Stalled() from exc
                raise
            finally:
                timer.close()
            trans.commit()
            return rows
        finally:
            if conn is not None:
                conn.close()

    def _commit(self, units):
        while units:
            lines = [line for u in units for line in u.lines]
            started = time.perf_counter()
            try:
                rows = self._transaction(units, lines)
            except JobGone as gone:
                keep = []
                for u in units:
                    if any(line_key(line) == gone.key for line in u.lines):
                        self._fail(u, JobNotFound(f"job {gone.key} not found"))
                    else:
                        keep.append(u)
                units = keep
                continue
            except _KeyConflict as conflict:
                self._fail(conflict.unit, KeyTaken())
                units = [u for u in units if u is not conflict.unit]
                continue
            except _Stalled:
                log.warning("the database did not answer in time; %d lines not stored",
                            len(lines))
                self._database_down(units, None, "the database did not answer in time; retry")
                return
            except self._down as exc:
                if disk_full(exc):
                    self._disk_full(units)
                else:
                    log.warning("database unavailable, ingest paused: %s",
                                exc.__class__.__name__)
                    self._database_down(units, exc, "database unavailable")
                return
            except Exception as exc:
                if len(units) > 1:  # isolate the unit that broke the batch
                    for u in units:
                        self._commit([u])
                    return
                log.error("ingest failed: %r", exc)
                self._fail(units[0], Failed("could not store the lines"))
                return
            if self.disk is not None:
                self.disk.note_written()
            self.metrics.ingest_seconds.observe(time.perf_counter() - started)
            self.metrics.lines_ingested.inc(len(rows))
            self._written = max(self._written, rows[-1]["id"])
            self._published(units, rows)
            return

    def _published(self, units, rows):
        try:
            self.bus.publish_lines(rows)  # (write_lines's rows: the lines as published)
        except Exception:  # committed all the same: streams catch up from the database
            log.exception("publishing committed lines failed")
        i = 0
        for u in units:
            n = len(u.lines)
            if u.result is not None:
                u.result.set((rows[i]["id"], rows[i + n - 1]["id"]))
            else:
                self._pending_records -= n
            i += n

    def _fail(self, unit, error):
        if unit.result is not None:
            unit.result.set_exception(error)
        else:
            self._pending_records -= len(unit.lines)

    def _disk_full(self, units):
        log.error("the database's disk is full: ingest refused (507) until space is freed")
        if self.disk is not None:
            self.disk.note_full()
        self._database_down(units, None, "the database's disk is full; nothing was stored",
                            kind=DiskFull)

    def _database_down(self, units, exc, message, kind=Unavailable):
        """Refuse acknowledged writes; keep fire-and-forget lines (bounded) and retry them
        after a pause."""
        retry = []
        for u in units:
            if u.result is not None:
                u.result.set_exception(kind(message))
            else:
                retry.append(u)
        self._units.extendleft(reversed(retry))
        if retry:
            gevent.sleep(1.0)
