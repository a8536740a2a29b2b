"""Retention: prune old jobs and lines in the background, in small transactions.

``QUAERO_RETENTION_DAYS`` (default 30): finished jobs (with their lines) and service lines
older than that go. ``QUAERO_MAX_LINES_PER_JOB``: a job keeps only its newest lines.
``QUAERO_MAX_DB_BYTES`` (default 10 GiB) and ``QUAERO_MIN_FREE_BYTES`` (SQLite): while the
database is over its budget, or its volume's free space under twice the floor, the oldest
finished jobs and the oldest service lines go first, whichever is older, never a pending
or running job and never anything younger than :data:`FLOOR` (see :class:`Budget` for how
the size is counted). With ``QUAERO_ARCHIVE_DIR`` a job is archived before it goes
(quaero/archive.py); a job that cannot be archived stays.

Counts in ``log_counts`` and ``log_volume`` go down with every deleted line, so
``meta.total_count``, ``log_counts`` and the histogram stay true; ``has_more`` follows
from what is left. Lines go in transactions of about 10 ms, with a rest half as long after
each (:class:`Chunks`): ingest waits for at most one of them (bench/prune.py).
"""
import logging
import os
import time
from collections import Counter
from datetime import timedelta

import gevent
import sqlalchemy as sa

from .histogram import second_of
from .queries import LineFilter
from .sealing import SEAL_AFTER, lines_of, seal_jobs, sealed_lines, unseal
from .searchindex import clear_generations
from .storage import IDEMPOTENCY_TTL
from .models import (FINISHED, LEVELS, SERVICE_KEY, Job, counters_t, counts_t, idempotency_t,
                     log_t, of_jobs, utcnow, volume_t)

log = logging.getLogger("quaero.retention")

CHUNK = 5000
_LOCK = 0x51554146
# Nothing younger than this is removed for size or free space: not a job that finished,
# nor a service line stamped, less than an hour ago (what someone may be reading now).
FLOOR = timedelta(hours=1)
LOW_WATER = 0.9      # over the budget: prune down to 90 % of it
FREE_FACTOR = 2      # free space under twice QUAERO_MIN_FREE_BYTES: prune until above it
BUDGET_KEY = "__budget__"  # PostgreSQL: the database's size after the last prune for size


_TAKE_OFF_COUNT = (counts_t.update().where(counts_t.c.key == sa.bindparam("k"),
                                           counts_t.c.step_name == sa.bindparam("s"),
                                           counts_t.c.level == sa.bindparam("lv"))
                   .values(count=counts_t.c.count - sa.bindparam("n")))
_TAKE_OFF_VOLUME = (volume_t.update().where(volume_t.c.key == sa.bindparam("k"),
                                            volume_t.c.step_name == sa.bindparam("s"),
                                            volume_t.c.level == sa.bindparam("lv"),
                                            volume_t.c.second == sa.bindparam("sec"))
                    .values(count=volume_t.c.count - sa.bindparam("n")))


def _count_away(conn, key, span):
    """Take the lines in ``span`` off ``log_counts`` and ``log_volume`` (whose rows left
    at zero go): rows in the order the writer locks them (counts, then volume; each
    sorted), so a write to the same job cannot deadlock with this."""
    second = second_of(conn.dialect.name).label("second")
    groups = conn.execute(sa.select(log_t.c.step_name, log_t.c.level, second, sa.func.count())
                          .where(*span).group_by(log_t.c.step_name, log_t.c.level, second)).all()
    volume = sorted((step or "", level, int(sec), n) for step, level, sec, n in groups)
    if not volume:
        return
    counts = Counter()
    for step, level, _, n in volume:
        counts[(step, level)] += n
    conn.execute(_TAKE_OFF_COUNT, [{"k": key, "s": s, "lv": lv, "n": n}
                                   for (s, lv), n in sorted(counts.items())])
    conn.execute(_TAKE_OFF_VOLUME, [{"k": key, "s": s, "lv": lv, "sec": sec, "n": n}
                                    for s, lv, sec, n in volume])
    conn.execute(volume_t.delete().where(
        volume_t.c.key == key, volume_t.c.count <= 0,
        volume_t.c.second.between(min(v[2] for v in volume), max(v[2] for v in volume))))


def _delete_lines(conn, key, where, limit=CHUNK):
    """Delete up to ``limit`` lines of one job (or the service log) matching ``where``,
    and take them off the counts. Returns ``(how many went, the last id deleted)``."""
    job_cond = of_jobs(() if key == SERVICE_KEY else (key,))
    ids = conn.execute(sa.select(log_t.c.id).where(job_cond, *where)
                       .order_by(log_t.c.id).limit(limit)).scalars().all()
    if not ids:
        return 0, None
    lo, hi = ids[0], ids[-1]
    span = (job_cond, log_t.c.id >= lo, log_t.c.id <= hi, *where)
    _count_away(conn, key, span)
    return conn.execute(log_t.delete().where(*span)).rowcount, hi


class Chunks:
    """Deletes in short transactions: the lines per transaction follow how long the last
    one took (aiming at TXN_SECONDS, between MIN_CHUNK and CHUNK), and with ``rest`` the
    deleter then waits that long times ``rest`` (the pruner: 0.5) so that the worker's
    writer and requests run in between. A transaction holds SQLite's write lock
    and, in a gevent worker, the worker itself (SQLite runs in its thread): ingest waits
    for one. Measured (bench/prune.py): with 5000-line transactions back to back (120 ms
    each on SQLite, more when FTS5 merges its segments) a one-line POST's p99 was 250 ms."""
    TXN_SECONDS = 0.01
    MIN_CHUNK = 100

    def __init__(self, rest=None, adapt=True):
        self.rest = rest
        self.adapt = adapt   # PostgreSQL: no (see Pruner._prune): CHUNK lines each time
        self.size = 500 if adapt else CHUNK

    def delete(self, engine, key, where=(), after=None):
        """One transaction, of lines with ids above ``after`` (the last id a previous one
        deleted: PostgreSQL's index still holds the deleted rows until vacuum, and a scan
        from the start read them all again, 0.5 s a transaction after a million).
        Returns ``(lines deleted, whether more may match, the last id deleted)``."""
        size = self.size
        started = time.perf_counter()
        if after is not None:
            where = (*where, log_t.c.id > after)
        with engine.begin() as conn:
            n, last = _delete_lines(conn, key, where, size)
        took = time.perf_counter() - started
        if self.adapt and n == size and took > 0:
            self.size = int(min(CHUNK, max(self.MIN_CHUNK, size * min(self.TXN_SECONDS / took, 2))))
        if self.rest is not None:
            gevent.sleep(max(took * self.rest, 0.0001))  # a timer: the loop polls sockets too
        return n, n == size, last if last is not None else after

    def delete_all(self, engine, key, where=()):
        """Every matching line, a transaction at a time; returns how many went."""
        total, more, after = 0, True, None
        while more:
            n, more, after = self.delete(engine, key, where, after)
            total += n
        return total


def remove_job(engine, job_id, chunks=None):
    """Delete a job: its lines a chunk per transaction (``chunks``: a :class:`Chunks`),
    then the job. Returns the lines deleted."""
    lines = (chunks or Chunks()).delete_all(engine, job_id)
    with engine.begin() as conn:
        # the counter row first, as the writer locks it (a late write then 404s)
        conn.execute(counters_t.delete().where(counters_t.c.key == job_id))
        lines += sealed_lines(conn, job_id)  # (they go with the job's row)
        conn.execute(counts_t.delete().where(counts_t.c.key == job_id))
        conn.execute(volume_t.delete().where(volume_t.c.key == job_id))
        conn.execute(sa.delete(Job.__table__).where(Job.id == job_id))
    return lines


def _archived(archive, engine, job_id):
    """Archive the job before it goes: True when it may go (archived, or no archive)."""
    if archive is None:
        return True
    try:
        archive(engine, job_id)
        return True
    except Exception as exc:  # noqa: BLE001 - a full disk, a folder that went away...
        log.error("could not archive job %s, so it is kept: %s", job_id, exc)
        return False


def prune_once(engine, retention_days=None, max_lines_per_job=None, archive=None, chunks=None):
    """One pass by age and by lines per job; returns ``(jobs_deleted, lines_deleted)``.
    ``archive(engine, job_id)``: writes a job that is about to go (quaero.archive)."""
    chunks = chunks or Chunks()
    jobs_deleted = lines_deleted = 0
    if retention_days:
        cutoff = utcnow() - timedelta(days=retention_days)
        with engine.connect() as conn:
            old = conn.execute(sa.select(Job.id).where(
                Job.status.in_(FINISHED), Job.finished_at < cutoff)
                .order_by(Job.finished_at).limit(100)).scalars().all()
        for job_id in old:
            if _archived(archive, engine, job_id):
                lines_deleted += remove_job(engine, job_id, chunks)
                jobs_deleted += 1
        lines_deleted += chunks.delete_all(engine, SERVICE_KEY, (log_t.c.timestamp < cutoff,))
    if max_lines_per_job:
        with engine.connect() as conn:
            over = conn.execute(
                sa.select(counts_t.c.key).where(counts_t.c.key != SERVICE_KEY)
                .group_by(counts_t.c.key).having(sa.func.sum(counts_t.c.count) > max_lines_per_job)
            ).scalars().all()
        for job_id in over:
            whole = LineFilter(job_ids=(job_id,), min_level=min(LEVELS.values()))
            with engine.connect() as conn:
                t = lines_of(conn, whole)
                threshold = conn.execute(
                    sa.select(t.c.id).where(of_jobs((job_id,), t))
                    .order_by(t.c.id.desc()).offset(max_lines_per_job).limit(1)).scalar()
            if threshold is None:
                continue
            if engine.dialect.name == "postgresql":  # sealed lines to go: rows again first
                with engine.begin() as conn:
                    unseal(conn, job_id, threshold)
            lines_deleted += chunks.delete_all(engine, job_id, (log_t.c.id <= threshold,))
    return jobs_deleted, lines_deleted


class Budget:
    """How far the database is over ``QUAERO_MAX_DB_BYTES`` or under twice
    ``QUAERO_MIN_FREE_BYTES`` of free space: :meth:`excess`, the bytes to free now.

    SQLite counts the pages in use, ``(page_count - freelist_count) * page_size``: deleted
    rows leave free pages inside the file, which new rows fill before the file grows, so a
    file kept under the budget this way stops growing near it (it never shrinks: that
    would take a VACUUM, a copy of the whole database). The WAL beside it is bounded apart
    (``journal_size_limit``). It is measured again after each job or chunk removed.

    PostgreSQL counts ``pg_database_size(current_database())``. Its files do not shrink
    either: autovacuum marks deleted rows' space free, and new rows reuse it. So the size
    after a prune for size is remembered (``line_counters['__budget__']``, shared by every
    process) and nothing more goes until the database grows past it: the space freed is
    being reused meanwhile. What to remove is estimated from the bytes per stored line."""

    def __init__(self, engine, max_bytes, disk=None):
        self.engine = engine
        self.max_bytes = max(int(max_bytes or 0), 0)
        self.disk = disk     # DiskGuard: the volume's free space and floor (SQLite)
        self.sqlite = engine.dialect.name == "sqlite"

    def used_bytes(self, conn):
        if self.sqlite:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
            free = conn.exec_driver_sql("PRAGMA freelist_count").scalar()
            return (pages - free) * conn.exec_driver_sql("PRAGMA page_size").scalar()
        return conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar()

    def excess(self):
        """``(bytes to free, why)``, ``(0, None)`` when the database is within bounds."""
        need, why = 0, None
        with self.engine.connect() as conn:
            if self.max_bytes:
                used = self.used_bytes(conn)
                if used > self.max_bytes and not self._reusing(conn, used):
                    need = used - int(self.max_bytes * LOW_WATER)
                    why = (f"the database takes {used} bytes, over QUAERO_MAX_DB_BYTES "
                           f"({self.max_bytes})")
        floor = self.disk.min_free if self.disk is not None else 0
        if floor:
            free = self.disk.room()
            self.disk.recheck()  # ingest looks again at once
            if free is not None and free < FREE_FACTOR * floor and FREE_FACTOR * floor - free > need:
                need = FREE_FACTOR * floor - free
                why = (f"{free} bytes free on the database's volume, under twice "
                       f"QUAERO_MIN_FREE_BYTES ({floor})")
        return need, why

    def _reusing(self, conn, used):
        """PostgreSQL: the database has not grown past its size after the last prune for
        size (with this budget): the space freed then is still being reused."""
        if self.sqlite:
            return False
        row = conn.execute(sa.select(counters_t.c.value, counters_t.c.last_id)
                           .where(counters_t.c.key == BUDGET_KEY)).first()
        return row is not None and row[1] == self.max_bytes and used <= row[0]

    def pruned(self):
        """After a prune for size: PostgreSQL remembers the size it left (see above)."""
        if self.sqlite or not self.max_bytes:
            return
        with self.engine.begin() as conn:
            used = self.used_bytes(conn)
            values = {"value": used, "last_id": self.max_bytes}
            if not conn.execute(counters_t.update().where(counters_t.c.key == BUDGET_KEY)
                                .values(**values)).rowcount:
                conn.execute(counters_t.insert().values(key=BUDGET_KEY, **values))

    def bytes_per_line(self):
        """PostgreSQL: the database's size over the lines it holds (the estimate of what
        removing a line frees)."""
        with self.engine.connect() as conn:
            lines = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(counts_t.c.count), 0))).scalar()
            return self.used_bytes(conn) / max(int(lines), 1)


def _oldest(engine, cutoff, skip, after=None):
    """The oldest finished job and the oldest service line older than ``cutoff`` (and
    after line id ``after``, as in Chunks.delete): ``(job id or None, its finished_at,
    service line's timestamp or None)``."""
    with engine.connect() as conn:
        job = conn.execute(sa.select(Job.id, Job.finished_at).where(
            Job.status.in_(FINISHED), Job.finished_at < cutoff, Job.id.not_in(skip))
            .order_by(Job.finished_at).limit(1)).first()
        since = () if after is None else (log_t.c.id > after,)
        line = conn.execute(sa.select(log_t.c.timestamp).where(
            of_jobs(()), log_t.c.timestamp < cutoff, *since)
            .order_by(log_t.c.id).limit(1)).scalar()
    return (job[0], job[1], line) if job is not None else (None, None, line)


def prune_for_room(engine, budget, archive=None, chunks=None):
    """Remove the oldest finished jobs and service lines (whichever is older first,
    nothing younger than FLOOR) until ``budget`` has nothing in excess. Returns
    ``(jobs, lines, why, short)``: ``why`` is None when nothing had to go, ``short`` says
    that not enough could go."""
    need, why = budget.excess()
    if not need:
        return 0, 0, None, False
    chunks = chunks or Chunks()
    estimate = None if budget.sqlite else budget.bytes_per_line()
    cutoff, skip = utcnow() - FLOOR, set()
    old_lines, after = (log_t.c.timestamp < cutoff,), None
    jobs = lines = 0
    while need > 0:
        job_id, finished_at, line_at = _oldest(engine, cutoff, skip, after)
        if job_id is not None and (line_at is None or finished_at <= line_at):
            if not _archived(archive, engine, job_id):
                skip.add(job_id)
                continue
            n = remove_job(engine, job_id, chunks)
            jobs += 1
        elif line_at is not None:
            n, _, after = chunks.delete(engine, SERVICE_KEY, old_lines, after)
        else:
            break
        lines += n
        need = need - n * estimate if estimate is not None else budget.excess()[0]
    if jobs or lines:
        budget.pruned()
    return jobs, lines, why, need > 0


class Pruner:
    """A greenlet per process; on PostgreSQL only one process prunes at a time."""

    def __init__(self, engine, retention_days, max_lines_per_job, interval, max_db_bytes=0,
                 disk=None, archive=None, seal_after=SEAL_AFTER):
        self.engine = engine
        self.seal_after = seal_after  # PostgreSQL: seconds after a job finished (0: never)
        self.retention_days = retention_days
        self.max_lines_per_job = max_lines_per_job
        self.interval = interval
        self.budget = Budget(engine, max_db_bytes, disk)
        self.archive = archive   # archive(engine, job_id) before a job goes, or None
        self.short = False       # over the budget with nothing left to prune (said once)
        self.stopped = False

    def start(self, group):
        """This process's pruning greenlet, in the app's ``group``; it runs even with
        retention off, for the idempotency records."""
        self.stopped = False
        group.spawn(self._run)

    def stop(self):
        self.stopped = True

    def _run(self):
        while not self.stopped:
            try:
                self.run_once()
            except Exception as exc:
                log.warning("retention pass failed: %s", exc.__class__.__name__)
            gevent.sleep(self.interval)

    def run_once(self):
        if self.engine.dialect.name != "postgresql":
            return self._prune()
        with self.engine.connect() as lock_conn:  # held for the pass: one pruner at a time
            got = lock_conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK}).scalar()
            lock_conn.commit()
            if not got:
                return None
            try:
                return self._prune()
            finally:
                lock_conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK})
                lock_conn.commit()

    def _prune(self):
        forget_keys(self.engine)
        # SQLite runs in the worker's thread and holds it for a whole transaction: short
        # ones, with rests. PostgreSQL's statements wait on the socket, and the worker's
        # other greenlets run meanwhile: 5000 lines a transaction (100-line ones, all fixed
        # costs, made a 2,000,000-line prune take half an hour)
        sqlite = self.engine.dialect.name == "sqlite"
        chunks = Chunks(rest=0.5) if sqlite else Chunks(adapt=False)
        jobs, lines = prune_once(self.engine, self.retention_days, self.max_lines_per_job,
                                 self.archive, chunks)
        if jobs or lines:
            log.info("retention pruned %d jobs and %d lines (older than %g days, or over "
                     "QUAERO_MAX_LINES_PER_JOB)%s", jobs, lines, self.retention_days or 0,
                     self._archived_note(jobs))
        self._clear_search_index()
        more_jobs, more_lines, why, short = prune_for_room(self.engine, self.budget,
                                                          self.archive, chunks)
        if more_jobs or more_lines:
            self._clear_search_index()
        if more_jobs or more_lines:
            log.warning("retention pruned %d jobs and %d lines, oldest first: %s%s",
                        more_jobs, more_lines, why, self._archived_note(more_jobs))
        if short and not self.short:  # said once, until there is room again
            log.warning("%s, and nothing else finished or was stamped more than %s ago: "
                        "nothing more can be pruned", why, FLOOR)
        self.short = short
        sealed, moved = seal_jobs(self.engine, self.seal_after)
        if sealed:
            log.info("sealed %d finished jobs: %d lines moved into compressed blocks",
                     sealed, moved)
        return jobs + more_jobs, lines + more_lines

    def _clear_search_index(self):
        """Empty the search index of the lines that are all gone (the index only ever
        adds, see searchindex.clear_generations)."""
        with self.engine.begin() as conn:
            cleared = clear_generations(conn)
        if cleared:
            log.info("search index: emptied generation(s) %s of the lines that are gone",
                     ", ".join(map(str, cleared)))

    def _archived_note(self, jobs):
        folder = getattr(self.archive, "directory", None)
        return f"; jobs archived to {os.path.abspath(folder)}" if jobs and folder else ""


def let_others_run():
    gevent.sleep(0.0001)  # a timer, so that the loop polls sockets too (web.params)


def forget_keys(engine):
    """Remove idempotency records past their day (``POST /api/logs``), a chunk per
    transaction; returns how many went."""
    cutoff, gone = utcnow() - IDEMPOTENCY_TTL, 0
    while True:
        with engine.begin() as conn:
            keys = sa.select(idempotency_t.c.key).where(
                idempotency_t.c.created_at < cutoff).limit(CHUNK).scalar_subquery()
            n = conn.execute(idempotency_t.delete().where(idempotency_t.c.key.in_(keys))).rowcount
        gone += n
        if n < CHUNK:
            return gone
