"""PostgreSQL: a finished job's plain lines, moved from rows into compressed blocks.

A line kept as a row costs PostgreSQL about 255 bytes with its B-tree entries; kept in a
block of up to BLOCK_LINES lines of one job (a row of arrays, which PostgreSQL compresses
itself) about 27 (``bench/sealed.py``). Once a job has been finished for
``QUAERO_SEAL_AFTER`` seconds, the pruner's pass moves its lines that no index of the rows
is needed for: below warn (the level index holds warn and error), without attributes or
a trace (their indexes), and already in the search index (whose documents are by id and
stay). Each move is one statement, so a reader sees a line as a row or in a block, never
both and never neither. Readers read both (``queries.on_lines``). A job's blocks go
with the job (``ON DELETE CASCADE``); retention's other cuts move blocks back to rows
first (``unseal``). Lines sent to a job after it was sealed stay rows.

Which jobs: those finished after the sealer's cursor (a ``line_counters`` row: the
``finished_at`` in microseconds and the ``seq`` of the last job sealed), oldest first.
"""
import logging
from datetime import datetime, timedelta

import sqlalchemy as sa

from .models import FINISHED, RARE_LEVEL, SEARCH_KEY, counters_t, jobs_t, utcnow

log = logging.getLogger("quaero.sealing")

BLOCK_LINES = 256      # lines a block (bench/sealed.py: 27.4 bytes a line; 1024: 25.9, slower pages)
MOVE_BLOCKS = 64       # blocks a statement moves
SEAL_KEY = "__sealed__"
SEAL_AFTER = 3600      # seconds a job has been finished before its lines are sealed
_EPOCH, _US = datetime(1970, 1, 1), timedelta(microseconds=1)

# the lines a block may hold (the rest keep their rows and indexes)
PLAIN = (f"level < {RARE_LEVEL} AND attributes IS NULL AND trace_id IS NULL "
         "AND span_id IS NULL")

_MOVE = sa.text(f"""
WITH moved AS (
  DELETE FROM log_entries WHERE id IN (
    SELECT id FROM log_entries WHERE job_seq = :seq AND {PLAIN}
      AND id <= (SELECT value FROM line_counters WHERE key = '{SEARCH_KEY}')
    ORDER BY id LIMIT :n)
  RETURNING id, step_name, level, message, timestamp, line_number, source)
INSERT INTO log_blocks (job_seq, first_id, last_id, n, max_level, steps, ids, step_names,
                        levels, messages, timestamps, line_numbers, sources)
SELECT :seq, min(id), max(id), count(*), max(level), array_agg(DISTINCT coalesce(step_name, '')),
       array_agg(id ORDER BY id), array_agg(step_name ORDER BY id),
       array_agg(level ORDER BY id), array_agg(message ORDER BY id),
       array_agg(timestamp ORDER BY id), array_agg(line_number ORDER BY id),
       array_agg(source ORDER BY id)
FROM (SELECT *, (row_number() OVER (ORDER BY id) - 1) / :per_block AS b FROM moved) s
GROUP BY b
RETURNING n""")

# a job's blocks with a line at or below :upto, back into rows
_UNSEAL = sa.text("""
WITH back AS (DELETE FROM log_blocks
              WHERE job_seq = (SELECT seq FROM jobs WHERE id = :job) AND first_id <= :upto
              RETURNING job_seq, ids, step_names, levels, messages, timestamps,
                        line_numbers, sources)
INSERT INTO log_entries (id, job_seq, step_name, level, message, timestamp, line_number,
                         source)
SELECT u.id, back.job_seq, u.step_name, u.level, u.message, u.timestamp, u.line_number,
       u.source
FROM back, LATERAL unnest(back.ids, back.step_names, back.levels, back.messages,
                          back.timestamps, back.line_numbers, back.sources)
     AS u(id, step_name, level, message, timestamp, line_number, source)""")


def seal_job(engine, seq, per_block=BLOCK_LINES):
    """Move job ``seq``'s plain lines into blocks of ``per_block`` lines, MOVE_BLOCKS
    blocks a transaction; returns how many lines moved."""
    moved = 0
    while True:
        with engine.begin() as conn:
            blocks = conn.execute(_MOVE, {"seq": seq, "n": per_block * MOVE_BLOCKS,
                                          "per_block": per_block}).scalars().all()
        moved += sum(blocks)
        if len(blocks) < MOVE_BLOCKS:
            return moved


def unseal(conn, job_id, upto):
    """Job ``job_id``'s blocks holding a line at or below id ``upto``, back into rows, in
    the open transaction ``conn`` (retention then deletes rows); returns the lines."""
    return conn.execute(_UNSEAL, {"job": job_id, "upto": upto}).rowcount


def _cursor(conn):
    row = conn.execute(sa.select(counters_t.c.value, counters_t.c.job_seq)
                       .where(counters_t.c.key == SEAL_KEY)).first()
    if row is None:
        conn.execute(counters_t.insert().values(key=SEAL_KEY, value=0, job_seq=0))
        return 0, 0
    return row.value, row.job_seq or 0


def seal_jobs(engine, seal_after=SEAL_AFTER, most=100, per_block=BLOCK_LINES):
    """One pass: the jobs finished ``seal_after`` seconds ago or more, after the cursor,
    oldest first (at most ``most``); returns ``(jobs, lines)`` sealed."""
    if engine.dialect.name != "postgresql" or not seal_after or seal_after < 0:
        return 0, 0
    cutoff = utcnow() - timedelta(seconds=seal_after)
    with engine.begin() as conn:
        us, seq = _cursor(conn)
        after = _EPOCH + timedelta(microseconds=us)
        jobs = conn.execute(
            sa.select(jobs_t.c.seq, jobs_t.c.finished_at)
            .where(jobs_t.c.status.in_(FINISHED), jobs_t.c.finished_at <= cutoff,
                   sa.tuple_(jobs_t.c.finished_at, jobs_t.c.seq) > sa.tuple_(after, seq))
            .order_by(jobs_t.c.finished_at, jobs_t.c.seq).limit(most)).all()
    lines = 0
    for job_seq, finished_at in jobs:
        lines += seal_job(engine, job_seq, per_block)
        with engine.begin() as conn:
            conn.execute(counters_t.update().where(counters_t.c.key == SEAL_KEY)
                         .values(value=(finished_at - _EPOCH) // _US, job_seq=job_seq))
    return len(jobs), lines
