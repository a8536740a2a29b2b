"""The hub's reads of the database, and its watcher: one light query per tick for the whole
process, so that lines committed by other processes reach this one's streams even without
Redis, job changes made elsewhere become ``status`` events, and ``total_count`` stays true
when lines are pruned or jobs deleted."""
import logging
import time

import gevent
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..models import SERVICE_KEY, Job, counts_t, deleted_payload, status_payload
from ..queries import all_lines_between, newest_id

log = logging.getLogger("quaero.stream")
RECOUNT = 5.0  # seconds: how often open streams' total_count is read again (pruning)


def max_id(engine):
    """The newest committed line id (ids become visible in commit order)."""
    with engine.connect() as conn:
        return newest_id(conn)


def totals(engine, filters):
    """``{filter: lines matching it now}`` from the kept counts, one query for all (text
    and source filters are not in the counts: they keep their own count)."""
    filters = [f for f in filters if f.counted and not f.everywhere]
    keys = sorted({k for f in filters for k in (f.job_ids or (SERVICE_KEY,))})
    if not keys:
        return {}
    rows = []
    with engine.connect() as conn:
        for i in range(0, len(keys), 500):
            rows += conn.execute(
                sa.select(counts_t.c.key, counts_t.c.step_name, counts_t.c.level,
                          counts_t.c.count).where(counts_t.c.key.in_(keys[i:i + 500]))).all()
    out = {}
    for f in filters:
        keys_f = set(f.job_ids or (SERVICE_KEY,))
        out[f] = sum(n for key, step, level, n in rows if key in keys_f and level >= f.min_level
                     and (f.step is None or step == f.step))
    return out


def lines_between(engine, after, before, limit=None):
    """Every line with ``after < id < before``, whatever its job or level."""
    with engine.connect() as conn:
        return all_lines_between(conn, after, before, limit)


def job_states(bind, job_ids):
    """``{job_id: (status, status event payload)}`` for the jobs that still exist (``bind``:
    an engine or a connection)."""
    with Session(bind) as session:
        jobs = session.execute(sa.select(Job).where(Job.id.in_(job_ids))).scalars().all()
        return {j.id: (j.status, status_payload(j)) for j in jobs}


def watch(hub):
    """The watcher greenlet's loop, until the hub shuts down."""
    while not hub.shutting_down:
        gevent.sleep(hub.watch_interval)
        if hub.shutting_down:  # closed while asleep: its engine may be disposed already
            return
        try:
            recount = time.monotonic() >= hub.recount_at
            if recount:
                hub.recount_at = time.monotonic() + RECOUNT
            hub.catch_up(refresh_totals=recount)
            if hub.by_job:
                job_ids = list(hub.by_job)
                states = hub.read(job_states, job_ids)
                for job_id in job_ids:  # not jobs subscribed while the query ran
                    if job_id not in hub.by_job:
                        continue
                    status, payload = states.get(job_id, ("deleted", None))
                    hub.on_status(payload or deleted_payload(job_id))
        except Exception as exc:  # the database may be away; try again next tick
            log.warning("stream watcher: %s", exc.__class__.__name__)
