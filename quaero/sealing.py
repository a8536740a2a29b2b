"""PostgreSQL: a finished job's plain lines, moved from rows into compressed blocks.

A line kept as a row costs PostgreSQL about 255 bytes with its B-tree entries; kept in a
block of up to BLOCK_LINES lines of one job (a row of arrays, which PostgreSQL compresses
itself) about 27 (``bench/sealed.py``). Once a job has been finished for
``QUAERO_SEAL_AFTER`` seconds, the pruner's pass moves its lines that no index of the rows
is needed for: below warn (the level index holds warn and error), without attributes or
a trace (their indexes), and already in the search index (whose documents are by id and
stay). Each move is one statement, so a reader sees a line as a row or in a block, never
both and never neither. Every read reads both (``lines_of``, below). A job's blocks go
with the job (``ON DELETE CASCADE``); retention's other cuts move blocks back to rows
first (``unseal``). Lines sent to a job after it was sealed stay rows.

Which jobs: those finished after the sealer's cursor (a ``line_counters`` row: the
``finished_at`` in microseconds and the ``seq`` of the last job sealed), oldest first.

Reading them: ``lines_of`` is what a read of the lines selects from, the table or, on
PostgreSQL, for a filter a sealed line may match, the union of the rows and the lines of
the blocks that may hold a match, named as the table; ``Windows`` keeps a page of a
sealed job to its newest (or oldest) few blocks.
"""
import dataclasses
import functools
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from .models import FINISHED, LEVELS, RARE_LEVEL, SEARCH_KEY, counters_t, jobs_t, log_t, utcnow
from .searchindex import BLOCK

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

_LOCK_JOB = sa.text("SELECT 1 FROM jobs WHERE seq = :seq FOR KEY SHARE")
# plain lines of the job not sealed for not being in the search index yet
_LEFT = sa.text(f"SELECT 1 FROM log_entries WHERE job_seq = :seq AND {PLAIN} LIMIT 1")

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
            # the job's row before its lines, as a delete of the job takes them (its
            # cascade would wait for our lines while we waited for its row: a deadlock)
            if conn.execute(_LOCK_JOB, {"seq": seq}).first() is None:
                return moved  # deleted meanwhile
            blocks = conn.execute(_MOVE, {"seq": seq, "n": per_block * MOVE_BLOCKS,
                                          "per_block": per_block}).scalars().all()
        moved += sum(blocks)
        if len(blocks) < MOVE_BLOCKS:
            return moved


def unseal(conn, job_id, upto):
    """Job ``job_id``'s blocks holding a line at or below id ``upto``, back into rows, in
    the open transaction ``conn`` (retention then deletes rows); returns the lines."""
    return conn.execute(_UNSEAL, {"job": job_id, "upto": upto}).rowcount


def sealed_lines(conn, job_id):
    """How many of job ``job_id``'s lines are in blocks (0 but on PostgreSQL)."""
    if conn.dialect.name != "postgresql":
        return 0
    return int(conn.execute(sa.text(
        "SELECT coalesce(sum(n), 0) FROM log_blocks WHERE job_seq = "
        "(SELECT seq FROM jobs WHERE id = :job)"), {"job": job_id}).scalar())


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
    lines = sealed = 0
    for job_seq, finished_at in jobs:
        lines += seal_job(engine, job_seq, per_block)
        with engine.begin() as conn:
            if conn.execute(_LEFT, {"seq": job_seq}).first() is not None:
                break  # the search index is behind: this job again next pass
            conn.execute(counters_t.update().where(counters_t.c.key == SEAL_KEY)
                         .values(value=(finished_at - _EPOCH) // _US, job_seq=job_seq))
        sealed += 1
    return sealed, lines


# --- reading them ------------------------------------------------------------------------

_TEXTS = ARRAY(sa.Text)
_IDS = ARRAY(sa.BigInteger)
blocks_t = sa.table(
    "log_blocks", sa.column("job_seq", sa.BigInteger), sa.column("first_id", sa.BigInteger),
    sa.column("last_id", sa.BigInteger), sa.column("n", sa.Integer),
    sa.column("max_level", sa.SmallInteger), sa.column("steps", _TEXTS),
    sa.column("ids", ARRAY(sa.BigInteger)), sa.column("step_names", _TEXTS),
    sa.column("levels", ARRAY(sa.SmallInteger)), sa.column("messages", _TEXTS),
    sa.column("timestamps", ARRAY(sa.DateTime)), sa.column("line_numbers", ARRAY(sa.Integer)),
    sa.column("sources", _TEXTS))
_b = blocks_t.c
# a block's arrays, by the column of log_entries each holds, with that column's type (the
# types of both parts of the union must be the same: PostgreSQL pushes a condition on it
# into each of its parts only then)
_ARRAYS = {"id": (_b.ids, sa.BigInteger), "step_name": (_b.step_names, sa.String(200)),
           "level": (_b.levels, sa.SmallInteger), "message": (_b.messages, sa.Text),
           "timestamp": (_b.timestamps, sa.DateTime),
           "line_number": (_b.line_numbers, sa.Integer), "source": (_b.sources, sa.String(200))}
_NEVER = {"attributes": JSONB, "trace_id": sa.LargeBinary, "span_id": sa.LargeBinary}


@functools.lru_cache(maxsize=None)
def _block_lines(columns):
    """A block's lines as rows of log_entries, ``(select, u)``, unpacked from the arrays of
    ``columns`` (with ``id``) and null in the others (each array unpacked is one more
    decompressed: a read of times and levels unpacked 7 of them)."""
    names = [c for c in _ARRAYS if c == "id" or c in columns]
    u = sa.func.unnest(*[_ARRAYS[c][0] for c in names]).table_valued(
        *[sa.column(c, _ARRAYS[c][0].type.item_type) for c in names]).render_derived(name="u")
    out = [_b.job_seq if c.name == "job_seq"
           else sa.cast(u.c[c.name] if c.name in names else sa.null(), _ARRAYS[c.name][1])
           if c.name in _ARRAYS else sa.cast(sa.null(), _NEVER[c.name]) for c in log_t.c]
    return sa.select(*out).select_from(blocks_t).join(u, sa.true()), u


EVERY = frozenset(_ARRAYS)
_ROWS = sa.select(*log_t.c)


def may_be_sealed(conn, f):
    """Whether lines ``f`` matches may be kept in blocks: PostgreSQL, a job's or every
    line, below warn, without an attribute or a trace."""
    return (conn.dialect.name == "postgresql" and f.min_level < RARE_LEVEL and not f.attrs
            and f.trace_id is None and (bool(f.job_ids) or f.everywhere))


def _block_conds(f, index, after=None, before=None):
    """Conditions on ``log_blocks`` of a block that may hold a line ``f`` matches (with an
    id after ``after``, before ``before``)."""
    conds = []
    if after is not None:
        conds.append(_b.last_id > after)
    if before is not None:
        conds.append(_b.first_id < before)
    if len(f.job_ids) == 1:  # (a constant to the planner: the block index's range)
        conds.append(_b.job_seq == sa.select(jobs_t.c.seq).where(
            jobs_t.c.id == f.job_ids[0]).scalar_subquery())
    elif f.job_ids:
        conds.append(_b.job_seq.in_(sa.select(jobs_t.c.seq).where(
            jobs_t.c.id.in_(list(f.job_ids)))))
    if f.step is not None:
        conds.append(sa.literal(f.step, sa.Text) == sa.any_(_b.steps))
    if f.min_level > min(LEVELS.values()):
        conds.append(_b.max_level >= f.min_level)
    if f.q is not None and index is not None:  # (mark, the index's blocks that may match)
        if not isinstance(index, tuple):  # the ids listed: those of the index's blocks and those after its mark
            index = (index.mark, index.blocks)
        mark, listed = index  # a block holding a line of one of them (a binary search),
        # none of which is older than the first listed block or the mark (the index's range)
        oldest = min(listed[0] * BLOCK if listed else mark + 1, mark + 1)
        listed = sa.bindparam(None, list(listed), type_=_IDS, unique=True)
        conds.append(_b.last_id >= oldest)
        conds.append(sa.or_(_b.last_id > mark, sa.func.width_bucket(
            _b.last_id // BLOCK, listed) > sa.func.width_bucket(_b.first_id // BLOCK - 1, listed)))
    return conds


def lines_of(conn, f, index=None, window=None, after=None, before=None, reads=EVERY):
    """What a read of the lines ``f`` may match reads from: ``log_entries``, or on
    PostgreSQL its rows and the lines of the blocks that may hold a match (those in
    ``window``: ``("lo", id)`` or ``("hi", id)``, see ``Windows``; after ``after``, before
    ``before``), one subquery named as the table, with its columns: a condition on it
    reaches both parts, and the blocks' own conditions skip those that cannot match.
    ``reads``: the columns the caller selects (a frozenset; those ``f`` tests are added),
    the only ones a block's lines have; the others are null in them."""
    if not may_be_sealed(conn, f):
        return log_t
    if reads is not EVERY:
        reads = reads | {"level", "timestamp"} | (
            {"message"} if f.q is not None else set()) | (
            {"step_name"} if f.step is not None else set()) | (
            {"source"} if f.source is not None else set())
    if index is None:  # (a poller asks for the same tail every second: built once)
        return _lines_of(f, window, after, before, reads)
    return _build_lines_of(f, index, window, after, before, reads)


@functools.lru_cache(maxsize=512)
def _lines_of(f, window, after, before, reads):
    return _build_lines_of(f, None, window, after, before, reads)


def _build_lines_of(f, index, window, after, before, reads):
    (lines, u), conds = _block_lines(reads), _block_conds(f, index, after, before)
    rows = _ROWS
    if window is not None:
        side, edge = window
        if side == "lo":
            rows = rows.where(log_t.c.id >= edge)
            conds += [_b.last_id >= edge, u.c.id >= edge]
        else:
            rows = rows.where(log_t.c.id <= edge)
            conds += [_b.first_id <= edge, u.c.id <= edge]
    return sa.union_all(rows, lines.where(*conds)).subquery("log_entries")


class Windows:
    """The ids each job's sealed blocks are read in, for a read of the newest (or, with
    ``after``, the oldest) ``need`` lines: a job with more than ``m`` blocks that may
    match has its lines read from its ``m`` newest (oldest) blocks' first (last) id on
    (a 1,000,000-line job is 4,000 blocks). A read that comes back short with a bounded
    window is run again with wider ones (``enough``): lines outside a window are older
    (newer) than every line in it, so a full page within the windows is the page."""
    START = 4

    def __init__(self, conn, f, after, before, need, index):
        self.conn, self.f, self.after, self.before, self.need = conn, f, after, before, need
        self.index = index
        self.m = max(self.START, -(-need // BLOCK_LINES) + 1)
        self.bounds = self._probe() if may_be_sealed(conn, f) else {}

    def _probe(self):
        """Each job's (or every line's) first ``m`` + 1 blocks that may match, in one
        statement; ``{key: window}`` for those with more than ``m``."""
        parts = []
        for i, key in enumerate(self.f.job_ids or (None,)):
            f = dataclasses.replace(self.f, job_ids=(key,) if key else ())
            order = _b.last_id.asc() if self.after is not None else _b.last_id.desc()
            parts.append(sa.select(sa.literal(i).label("k"), _b.first_id, _b.last_id)
                         .where(*_block_conds(f, self.index, self.after, self.before))
                         .order_by(order).limit(self.m + 1).subquery().select())
        found = {}
        for k, first, last in self.conn.execute(sa.union_all(*parts)):
            found.setdefault(k, []).append((first, last))
        out = {}
        keys = self.f.job_ids or (None,)
        for k, blocks in found.items():
            if len(blocks) > self.m:  # the first m in the read's order
                blocks = sorted(blocks, key=lambda b: b[1], reverse=self.after is None)[:self.m]
                out[keys[k]] = (("hi", max(b[1] for b in blocks)) if self.after is not None
                                else ("lo", min(b[0] for b in blocks)))
        return out

    def of(self, key):
        return self.bounds.get(key)

    def enough(self, ids, full, per_job=None):
        """Whether the read that found lines ``ids`` (``full``: all it asked for; or
        ``per_job``: how many of each job) is the answer; if not, the windows widen for
        the next try."""
        if not self.bounds:
            return True
        short = []
        for key, (side, edge) in self.bounds.items():
            if per_job is not None:
                ok = per_job.get(key, 0) >= self.need
            elif not full:
                ok = False
            else:  # every line left out is past the read's last line
                ok = min(ids) >= edge if side == "lo" else max(ids) <= edge
            if not ok:
                short.append(key)
        if not short:
            return True
        self.m *= 8
        self.bounds = self._probe()
        return False
