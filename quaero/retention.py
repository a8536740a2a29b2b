"""Retention: prune old jobs and lines in the background, in small transactions.

``QUAERO_RETENTION_DAYS``: finished jobs (with their lines) and service lines older than
that go. ``QUAERO_MAX_LINES_PER_JOB``: a job keeps only its newest lines. Counts in
``log_counts`` and ``log_volume`` go down with every deleted line, so ``meta.total_count``,
``log_counts`` and the histogram stay true; ``has_more`` follows from what is left.
"""
import logging
from collections import Counter
from datetime import timedelta

import gevent
import sqlalchemy as sa

from .histogram import second_of
from .storage import IDEMPOTENCY_TTL
from .models import (FINISHED, SERVICE_KEY, Job, counters_t, counts_t, idempotency_t, log_t,
                     utcnow, volume_t)

log = logging.getLogger("quaero.retention")

CHUNK = 5000
_LOCK = 0x51554146


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


def _delete_lines(conn, key, where):
    """Delete up to CHUNK lines of one job (or the service log) matching ``where``, and
    take them off the counts. Returns how many went."""
    job_cond = log_t.c.job_id.is_(None) if key == SERVICE_KEY else log_t.c.job_id == key
    ids = conn.execute(sa.select(log_t.c.id).where(job_cond, *where)
                       .order_by(log_t.c.id).limit(CHUNK)).scalars().all()
    if not ids:
        return 0
    lo, hi = ids[0], ids[-1]
    span = (job_cond, log_t.c.id >= lo, log_t.c.id <= hi, *where)
    _count_away(conn, key, span)
    return conn.execute(log_t.delete().where(*span)).rowcount


def prune_once(engine, retention_days=None, max_lines_per_job=None):
    """One pass; returns ``(jobs_deleted, lines_deleted)``."""
    jobs_deleted = lines_deleted = 0
    if retention_days:
        cutoff = utcnow() - timedelta(days=retention_days)
        with engine.connect() as conn:
            old = conn.execute(sa.select(Job.id).where(
                Job.status.in_(FINISHED), Job.finished_at < cutoff).limit(100)).scalars().all()
        for job_id in old:
            while True:  # its lines first, in chunks, then the job
                with engine.begin() as conn:
                    n = _delete_lines(conn, job_id, ())
                lines_deleted += n
                if n < CHUNK:
                    break
            with engine.begin() as conn:
                # the counter row first, as the writer locks it (a late write then 404s)
                conn.execute(counters_t.delete().where(counters_t.c.key == job_id))
                conn.execute(counts_t.delete().where(counts_t.c.key == job_id))
                conn.execute(volume_t.delete().where(volume_t.c.key == job_id))
                conn.execute(sa.delete(Job.__table__).where(Job.id == job_id))
                jobs_deleted += 1
        while True:
            with engine.begin() as conn:
                n = _delete_lines(conn, SERVICE_KEY, (log_t.c.timestamp < cutoff,))
            lines_deleted += n
            if n < CHUNK:
                break
    if max_lines_per_job:
        with engine.connect() as conn:
            over = conn.execute(
                sa.select(counts_t.c.key).where(counts_t.c.key != SERVICE_KEY)
                .group_by(counts_t.c.key).having(sa.func.sum(counts_t.c.count) > max_lines_per_job)
            ).scalars().all()
        for job_id in over:
            with engine.connect() as conn:
                threshold = conn.execute(
                    sa.select(log_t.c.id).where(log_t.c.job_id == job_id)
                    .order_by(log_t.c.id.desc()).offset(max_lines_per_job).limit(1)).scalar()
            while threshold is not None:
                with engine.begin() as conn:
                    n = _delete_lines(conn, job_id, (log_t.c.id <= threshold,))
                lines_deleted += n
                if n < CHUNK:
                    break
    return jobs_deleted, lines_deleted


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


class Pruner:
    """A greenlet per process; on PostgreSQL only one process prunes at a time."""

    def __init__(self, engine, retention_days, max_lines_per_job, interval):
        self.engine = engine
        self.retention_days = retention_days
        self.max_lines_per_job = max_lines_per_job
        self.interval = interval
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
        jobs, lines = prune_once(self.engine, self.retention_days, self.max_lines_per_job)
        if jobs or lines:
            log.info("retention pruned %d jobs and %d lines", jobs, lines)
        return jobs, lines
