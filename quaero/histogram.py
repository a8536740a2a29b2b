"""Log volume: matching lines counted over time, per level, by the database.

Counting a million lines per request is too slow (a GROUP BY over the lines takes
~200 ms on PostgreSQL, ~400 ms on SQLite), so the write path counts lines into
``log_volume`` (lines per job, step, level and second) in the transaction that stores
them (``storage.write_lines``), retention takes them off in the transaction that deletes
them, and a job's rows go with it. The answer is then one ``GROUP BY`` over a computed
bucket expression on those few rows. A filter the per-second counts cannot answer (``q``,
``source``), or a small log whose buckets would be under a second wide, is counted from
the lines themselves, with the same kind of ``GROUP BY`` over a bucket of whole
milliseconds. No line is ever loaded.
"""
from datetime import datetime, timedelta

import sqlalchemy as sa

from .models import (LEVELS, LEVEL_NAMES, SERVICE_KEY, from_millis, iso, log_t, to_millis,
                     volume_t as vol_t)
from .queries import _where as line_conditions
from .sealing import lines_of
from .textsearch import search_index

DEFAULT_BUCKETS = 60
MAX_BUCKETS = 500
SMALL = 50_000  # at most this many lines: counted from the lines, to the millisecond
_MS = timedelta(milliseconds=1)
_EPOCH = datetime(1970, 1, 1)


def bucket_plan(first, last, buckets):
    """``(start, width, n)`` in whole units (integers): ``buckets`` buckets (fewer only
    when there are fewer units) of equal ``width`` from ``first``, the last holding ``last``.
    Pure."""
    units = max(0, last - first) + 1
    n = min(buckets, units)
    return first, -(-units // n), n


# --- the second of a line -------------------------------------------------------------

def second_of(dialect):
    """The Unix second of a line's timestamp, as ``storage.write_lines`` counts it into
    ``log_volume`` (retention takes deleted lines off with it)."""
    ts = log_t.c.timestamp
    if dialect == "postgresql":
        return sa.cast(sa.func.floor(sa.extract("epoch", ts)), sa.BigInteger)
    return sa.type_coerce(ts, sa.BigInteger) // 1000   # milliseconds (models.EpochMillis)


# --- the answer -------------------------------------------------------------------------

def _volume_conditions(f):
    conds = [vol_t.c.key.in_(list(f.job_ids) or [SERVICE_KEY]), vol_t.c.level >= f.min_level]
    if f.step is not None:
        conds.append(vol_t.c.step_name == f.step)
    return conds


def _from_volume(conn, f, buckets, until):
    """Buckets of whole seconds from ``log_volume``, or None for a small log."""
    conds = _volume_conditions(f)
    first, last, total = conn.execute(sa.select(
        sa.func.min(vol_t.c.second), sa.func.max(vol_t.c.second),
        sa.func.sum(vol_t.c.count)).where(*conds)).one()
    if first is None:
        return None
    if until is not None:
        last = max(last, int((until - _EPOCH).total_seconds()))
    if total <= SMALL and last - first < buckets:  # buckets under a second: from the lines
        return None
    start, width, n = bucket_plan(first, last, buckets)
    b = ((vol_t.c.second - start) // width).label("b")
    rows = conn.execute(sa.select(b, vol_t.c.level, sa.func.sum(vol_t.c.count))
                        .where(*conds).group_by(b, vol_t.c.level)).all()
    t0 = _EPOCH + timedelta(seconds=start)
    return _shape(rows, t0, timedelta(seconds=width), n)


def _from_lines(conn, f, buckets, until):
    """Buckets of whole milliseconds counted from the lines, in one pass over them: the
    matching lines' times and levels (a CTE, which both databases keep when it is read
    twice), their first and last time, and from those the plan ``bucket_plan`` makes
    (``t0``: the first time to the millisecond; ``width`` in milliseconds) and each
    line's bucket. (A statement for the first and last time, then one for the buckets,
    tested every line twice: a search over a million lines, one of them unpacking every
    sealed block twice.)"""
    index = search_index(conn, f, every=True)
    t = lines_of(conn, f, index, reads=frozenset(("timestamp", "level")))
    pg = conn.dialect.name == "postgresql"
    m = sa.select(t.c.timestamp.label("ts"), t.c.level).where(
        *line_conditions(f, conn, index, t)).cte("m")
    # (two values' least and greatest: SQLite's min and max of two arguments)
    least, greatest = (sa.func.least, sa.func.greatest) if pg else (sa.func.min, sa.func.max)
    first, last = sa.func.min(m.c.ts), sa.func.max(m.c.ts)
    if pg:
        if until is not None:
            last = greatest(last, until)
        t0 = sa.func.date_trunc("milliseconds", first)
        span = sa.cast(sa.func.floor(sa.extract("epoch", last - t0) * 1000), sa.BigInteger)
    else:  # (milliseconds: models.EpochMillis)
        first, last = sa.type_coerce(first, sa.BigInteger), sa.type_coerce(last, sa.BigInteger)
        if until is not None:
            last = greatest(last, to_millis(until))
        t0, span = first, last - first
    plan = sa.select(t0.label("t0"), (span + 1).label("units")).cte("plan")
    n = least(plan.c.units, buckets)
    width = (plan.c.units + n - 1) // n
    plan = sa.select(plan.c.t0, width.label("width"), n.label("n")).cte("widths")
    if pg:  # (the bucket's start: integer arithmetic, where the offset's epoch was numeric)
        b = sa.func.date_bin(plan.c.width * sa.text("interval '1 millisecond'"), m.c.ts,
                             plan.c.t0)
    else:
        b = (sa.type_coerce(m.c.ts, sa.BigInteger) - plan.c.t0) // plan.c.width
    rows = conn.execute(sa.select(plan.c.t0, plan.c.width, plan.c.n, b, m.c.level,
                                  sa.func.count())
                        .select_from(m.join(plan, sa.true()))
                        .group_by(plan.c.t0, plan.c.width, plan.c.n, b, m.c.level)).all()
    if not rows:
        return {"buckets": [], "total": 0}
    t0, width, n = rows[0][0], timedelta(milliseconds=int(rows[0][1])), int(rows[0][2])
    if not pg:
        t0 = from_millis(t0)
    return _shape([((r[3] - t0) // width if pg else r[3], r[4], r[5]) for r in rows],
                  t0, width, n)


def _shape(rows, t0, width, n):
    counts = [dict.fromkeys(LEVELS, 0) for _ in range(n)]
    total = 0
    for b, level, c in rows:
        counts[min(max(int(b), 0), n - 1)][LEVEL_NAMES[level]] += int(c)
        total += int(c)
    return {"buckets": [{"start": _edge(t0, i, width), "end": _edge(t0, i + 1, width),
                         "counts": counts[i]} for i in range(n)], "total": total}


def _edge(t0, i, width):
    """The time ``t0 + i * width``; the last time Python can write where it would pass it
    (lines stored before timestamps were limited to 1970-2200 may be dated 9999-12-31)."""
    try:
        return iso(t0 + i * width)
    except OverflowError:
        return iso(datetime.max)


def log_histogram(engine, f, buckets=DEFAULT_BUCKETS, until=None):
    """``{"buckets": [{"start", "end", "counts": {level: n}}], "total": n}`` for the lines
    matching ``f``; ``until`` (naive UTC) stretches the buckets to it when it is later than
    the last line (a running job)."""
    if f.counted:
        with engine.connect() as conn:
            out = _from_volume(conn, f, buckets, until)
        if out is not None:
            return out
    with engine.connect() as conn:
        return _from_lines(conn, f, buckets, until)
