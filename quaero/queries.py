"""The reads: every reader (polling API, stream backfill, ``Last-Event-ID`` resume,
search, the text download) goes through :func:`select_lines` or :func:`tail_lines` with a
:class:`LineFilter`. Counts come from ``log_counts``, kept up to date by the write path, so
that ``total_count`` and ``log_counts`` never scan a job's lines; text search uses the
databases' own trigram indexes (SQLite FTS5, PostgreSQL pg_trgm) over blocks of lines."""
import dataclasses
import functools
from dataclasses import dataclass

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from .attributes import line_matches, value_matches, wanted_texts, wanted_values
from .models import (ID_KEY, LEVEL_NAMES, LEVELS, RARE_LEVEL, SEARCH_KEY, SERVICE_KEY,
                     counters_t, counts_t, jobs_t, line_dict, log_t, of_jobs, HexBytes)
from .storage import BLOCK, attr_table, attr_token, generation_table, generations


@dataclass(frozen=True)
class LineFilter:
    """Which lines a reader wants. Hashable: streams with equal filters share work."""
    job_ids: tuple = ()          # empty: the service log (or every line, with everywhere)
    step: str | None = None
    min_level: int = LEVELS["info"]
    q: str | None = None         # literal text the message contains, any case
    everywhere: bool = False     # search: every job and the service log
    folded: str | None = dataclasses.field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self):
        if self.q is not None:  # folded once: matches() runs for every live line
            object.__setattr__(self, "folded", self.q.lower())
    source: str | None = None    # only lines this program sent
    attrs: tuple = ()            # ((key, text), ...): attribute filters, all must match
    trace_id: str | None = None  # only lines of this trace

    @property
    def scope(self):
        return "job" if self.job_ids else "all" if self.everywhere else "service"

    @property
    def counted(self):
        """Whether the kept counts (log_counts, log_volume) answer this filter: not for
        text, a source, attributes or a trace, which only the lines know."""
        return (self.q is None and self.source is None and not self.attrs
                and self.trace_id is None)

    def matches(self, line):
        if LEVELS[line["level"]] < self.min_level:
            return False
        if self.folded is not None and self.folded not in line["message"].lower():
            return False
        if self.source is not None and line.get("source") != self.source:
            return False
        if self.trace_id is not None and line.get("trace_id") != self.trace_id:
            return False
        if self.attrs and not line_matches(line.get("attributes"), self.attrs):
            return False
        if self.job_ids:
            return line["job_id"] in self.job_ids and (
                self.step is None or line["step_name"] == self.step)
        return self.everywhere or line["job_id"] is None


# Text search. The rule: a line matches when ``q.lower()`` is in ``message.lower()``
# (Python's str.lower: Unicode's full lowercase mapping, "İ" to "i̇" and a final "Σ" to
# "ς"; nothing more, so "ß" is not "ss"), as ``LineFilter.matches`` says for the live grep.
# The database's trigram index narrows the candidates, then the exact test decides.
# SQLite: the exact test is ``quaero_contains`` (str.lower, registered on every
# connection); the FTS5 table ``log_fts`` folds case by its own, older tables, so only the
# trigrams it surely holds as str.lower has them are asked of it (``_fts_query``).
# PostgreSQL: ``lower(message COLLATE "und-x-icu")`` is the same mapping whatever the
# database's locale (ILIKE folded by that locale: only ASCII under C); the search index
# holds each block's lines folded so, one per line, under a pg_trgm GIN index (migration
# 0018), and a block whose document contains ``q.lower()`` is one whose lines may. A
# ``q`` with no trigram (shorter than one) is a scan, newest first, that stops at the
# page's end. On both, the lines after the index's mark are scanned too.
TRIGRAM = 3
MAX_Q = 200
ICU_ROOT = "und-x-icu"  # PostgreSQL's ICU root locale; the search index folds by it too
# a block's ids are its number * BLOCK + 0 .. BLOCK - 1 (storage.index_behind)
_OFFSETS = "(SELECT column1 AS n FROM (VALUES " + ", ".join(f"({i})" for i in range(BLOCK)) + "))"


def sqlite_contains(message, q_folded):
    return message is not None and q_folded in message.lower()


def sqlite_attr(attributes, key, wanted):
    """SQLite's exact attribute test: ``attributes`` (the column's JSON text) has ``key``
    matching ``wanted`` (``attributes.value_matches``)."""
    if attributes is None:
        return 0
    return value_matches(orjson.loads(attributes).get(key), wanted)


def sqlite_attr_json(attributes, key):
    """SQLite: attribute ``key`` as JSON text (for a key no JSON path can name)."""
    if attributes is None:
        return None
    value = orjson.loads(attributes).get(key)
    return None if value is None else orjson.dumps(value).decode()


def register_sqlite_functions(dbapi_conn):
    dbapi_conn.create_function("quaero_contains", 2, sqlite_contains, deterministic=True)
    dbapi_conn.create_function("quaero_attr", 3, sqlite_attr, deterministic=True)
    dbapi_conn.create_function("quaero_attr_json", 2, sqlite_attr_json, deterministic=True)


def not_search_index(obj, name, type_, reflected, compare_to):
    """Alembic's ``include_object``: the text indexes live only in their migrations (FTS5
    tables and their shadow tables, PostgreSQL's block table, GIN indexes): autogenerate
    must leave them be."""
    return not (reflected and name and (
        name.startswith(("log_fts", "log_attr_", "log_text_blocks")) or name in (
            "ix_log_message_trgm", "ix_log_message_lower_trgm", "ix_log_attributes")))


def _like_pattern(q):
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


_LAST_CASED = 0x1FFFF  # no letter above has a lowercase (Unicode 15: the last is U+1E921)


@functools.cache
def _fts_folds_otherwise():
    """What the FTS5 trigram index may hold otherwise than str.lower has it, asked of the
    SQLite library itself (its case tables are its own, and older): ``(letters, pieces)``.
    ``letters``: lowercase letters x = c.lower() of a letter c the index folds to something
    else than x (Cherokee, letters newer than its tables, ...): a line with c there has not
    the trigram. ``pieces``: lowercases longer than their letter ("İ" is "i" + U+0307; the
    index keeps "İ"): a trigram that may cut one is not the index's either."""
    import sqlite3
    con = sqlite3.connect(":memory:")
    try:
        con.execute("CREATE VIRTUAL TABLE t USING fts5(m, tokenize='trigram', detail=none)")
        pairs = [(c, c.lower()) for c in map(chr, range(0x41, _LAST_CASED + 1))
                 if c.lower() != c and not 0xD800 <= ord(c) < 0xE000]
        pairs.append(("\u03a3", "\u03c2"))   # a final sigma lowers to ς
        pieces = {low for _, low in pairs if len(low) > 1}
        con.executemany("INSERT INTO t(rowid, m) VALUES (?, ?)",
                        [(i, "\x02\x02" + c) for i, (c, _) in enumerate(pairs)])
        letters = {low for i, (c, low) in enumerate(pairs) if len(low) == 1 and con.execute(
            "SELECT 1 FROM t WHERE rowid = ? AND t MATCH ?",
            (i, '"\x02\x02' + low.replace('"', '""') + '"')).fetchone() is None}
    finally:
        con.close()
    return frozenset(letters), tuple(sorted(pieces))


def _fts_trigrams(folded):
    """The trigrams of ``folded`` (``q.lower()``) that the index holds for every line whose
    ``message.lower()`` contains it."""
    letters, pieces = _fts_folds_otherwise()
    n = len(folded)
    safe = [ch not in letters for ch in folded]
    for piece in pieces:  # wherever a piece could stand, cut by q's ends or not
        k = len(piece)
        for start in range(1 - k, n):
            lo, hi = max(start, 0), min(start + k, n)
            if all(folded[p] == piece[p - start] for p in range(lo, hi)):
                safe[lo:hi] = [False] * (hi - lo)
    return list(dict.fromkeys(folded[i:i + TRIGRAM] for i in range(n - TRIGRAM + 1)
                              if all(safe[i:i + TRIGRAM])))


def _fts_query(folded, most=16):
    """Lines holding every such trigram of ``folded`` (the index keeps no positions: the
    exact test follows), or None when there is none. A long ``q`` asks for ``most`` of
    them, spread along it."""
    grams = _fts_trigrams(folded)
    if not grams:
        return None
    if len(grams) > most:
        grams = [grams[i * (len(grams) - 1) // (most - 1)] for i in range(most)]
    return " AND ".join('"' + g.replace('"', '""') + '"' for g in grams)


def _text_condition(q, dialect, index):
    """``index``: what ``search_index`` read (SQLite: the generations; PostgreSQL: see
    ``_pg_search_index``)."""
    folded = q.lower()
    if dialect == "postgresql":
        # (strpos, not LIKE: the planner guesses a third of the lines for it, where it took
        # a LIKE for rare and sorted every match of a common word to find the newest)
        exact = sa.func.strpos(sa.func.lower(log_t.c.message.collate(ICU_ROOT)), folded) > 0
        if index is None:  # no trigram, or too many candidates to list
            return exact
        if isinstance(index, tuple):  # a reader of every match: every block that may hold it
            mark, blocks = index
            listed = sa.literal_column(f"'{{{','.join(map(str, blocks))}}}'::bigint[]")
            maybe = sa.or_((log_t.c.id // BLOCK) == sa.any_(listed), log_t.c.id > mark)
            return sa.case((maybe, exact), else_=sa.false())  # (in this order)
        return sa.and_(log_t.c.id == sa.any_(sa.bindparam(None, index, type_=_ID_ARRAY,
                                                          unique=True)), exact)
    exact = sa.func.quaero_contains(log_t.c.message, folded) == 1
    match = _fts_query(folded)
    if match is None:
        return exact
    return sa.and_(log_t.c.id.in_(_indexed_candidates(match, index)), exact)


# PostgreSQL: a search first reads, in one round trip, the index's mark, the newest id,
# and the blocks whose document holds ``q`` (as many as PG_IDS ids make). When their ids
# and those after the mark are at most PG_IDS, the read takes that list: the planner,
# knowing its length, reads just those lines by the primary key. Otherwise ``q`` is
# common (or the index far behind), and the lines are read newest first, each tested,
# until the page is full. (A statement holding both steps left the planner to guess
# the blocks' number: it guessed a few, and for a word in half the blocks fetched every
# candidate and sorted them: 4 s at a million lines, where the per-line index took
# 0.5 s.) The list holds ids up to the newest read here: the read is of the lines as
# they were then, as if it had run a moment earlier.
PG_IDS = 1 << 15
_PG_INDEX = (f"SELECT (SELECT value FROM line_counters WHERE key = '{SEARCH_KEY}'), "
             f"(SELECT value FROM line_counters WHERE key = '{ID_KEY}'), "
             "ARRAY(SELECT block FROM log_text_blocks WHERE doc LIKE %s LIMIT %s)")
_ID_ARRAY = ARRAY(sa.BigInteger)


def _pg_search_index(conn, folded, every=False):
    """PostgreSQL: the ids of the lines that may hold ``q.lower()`` (``folded``), or
    None when ``q`` has no trigram or there are too many to list. ``every``: for a
    reader of every match (the histogram), ``(mark, blocks)`` instead of None, every
    block that may hold it: a line's text is tested only if it is in one of them
    (a constant array, which PostgreSQL hashes; the case keeps the order): 80 ms where
    testing every line took 180 (a word in a third of the blocks, 500,000 lines)."""
    if len(folded) < TRIGRAM:
        return None
    # never prepared: the plan of a prepared statement, made once for any pattern, read
    # every document (80 ms at 500,000 lines where the index took 2)
    with conn.connection.driver_connection.cursor() as cur:
        cur.execute(_PG_INDEX, (_like_pattern(folded), None if every else PG_IDS // BLOCK + 1),
                    prepare=False)
        mark, newest, blocks = cur.fetchone()
    mark, newest = mark or 0, newest or 0  # (no mark: nothing is indexed)
    if len(blocks) * BLOCK + max(newest - mark, 0) > PG_IDS:
        return (mark, blocks) if every else None
    ids = [b * BLOCK + i for b in blocks for i in range(BLOCK)]
    ids.extend(range(mark + 1, newest + 1))
    return ids


def search_index(conn, f, every=False):
    """What the search index says of ``f`` before its lines are read, once for every
    job a statement reads: SQLite, the index's generations (for ``q`` or attributes);
    PostgreSQL, for ``q``, ``_pg_search_index``."""
    if conn.dialect.name == "sqlite":
        return generations(conn) if (f.q is not None or f.attrs) else ()
    return _pg_search_index(conn, f.folded, every) if f.q is not None else None


def _attr_condition(key, wanted, dialect, gens=()):
    """``attr.KEY=wanted``. PostgreSQL: containment of one of the values it may stand for
    (the text, the number it spells, the boolean), which the GIN index of migration 0014
    answers and which is ``value_matches`` exactly. SQLite: the lines of the blocks whose
    attribute tokens hold one of its texts (``storage.attr_token``), and every line not
    indexed yet, each tested exactly."""
    if dialect == "postgresql":
        col = sa.type_coerce(log_t.c.attributes, JSONB)
        return sa.or_(*(col.contains({key: v}) for v in wanted_values(wanted)))
    exact = sa.func.quaero_attr(log_t.c.attributes, key, wanted) == 1
    tokens = ", ".join(str(attr_token(key, t)) for t in wanted_texts(wanted))  # integers
    parts = [f"SELECT a.block * {BLOCK} + o.n FROM {attr_table(g)} AS a, {_OFFSETS} AS o "
             f"WHERE a.token IN ({tokens})" for g in gens]
    return sa.and_(log_t.c.id.in_(_candidates(parts)), exact)


def _indexed_candidates(match, gens):
    """The ids of the lines of every block whose document holds ``match`` (an FTS5
    query), and of every line not indexed yet."""
    parts = [f"SELECT {t}.rowid * {BLOCK} + o.n FROM {t}, {_OFFSETS} AS o WHERE {t} MATCH :match"
             for t in map(generation_table, gens)]
    candidates = _candidates(parts)
    if gens:  # (unique: a statement may hold this condition once per job)
        candidates = candidates.bindparams(sa.bindparam("match", match, unique=True))
    return candidates


def _candidates(parts):
    """The ids the indexed ``parts`` (SELECTs of ids) give, and every line not indexed."""
    parts = parts + ["SELECT id FROM log_entries WHERE id > "
                     f"(SELECT value FROM line_counters WHERE key = '{SEARCH_KEY}')"]
    return sa.text(" UNION ALL ".join(parts)).columns(sa.column("id", sa.Integer))


def _where(f, conn, index=False):
    """The filter as conditions. "info and above" (the default) matches nearly every line,
    so its level test is kept out of the index choice (``level + 0``): the job's or step's
    index is then read backwards from the newest line, instead of every line at a level
    being collected and sorted. Rarer levels (warn, error) use the (job, level, id) index,
    which holds only them: its condition is stated as written (a literal), since neither
    planner proves ``level >= :bound`` implies it. ``index``: ``search_index`` when the
    caller has read it (``tail_lines``: once for every job)."""
    dialect = conn.dialect.name
    if index is False:
        index = search_index(conn, f)
    conds = []
    if f.min_level > LEVELS["info"]:  # warn or error: RARE_LEVEL and above
        conds.append(log_t.c.level >= f.min_level)
        conds.append(log_t.c.level >= sa.literal_column(str(RARE_LEVEL)))
    elif f.min_level > LEVELS["debug"]:
        conds.append((log_t.c.level + 0) >= f.min_level)
    if f.job_ids or not f.everywhere:
        conds.append(of_jobs(f.job_ids))
    if f.step is not None:
        conds.append(log_t.c.step_name == f.step)
    if f.q is not None:
        conds.append(_text_condition(f.q, dialect, index))
    if f.source is not None:
        conds.append(log_t.c.source == f.source)
    if f.trace_id is not None:
        conds.append(log_t.c.trace_id == sa.type_coerce(f.trace_id, HexBytes()))
    if f.attrs:
        conds.extend(_attr_condition(k, t, dialect, index) for k, t in f.attrs)
    return conds


# A line as line_dict takes it; its job's id from the job its ``job_seq`` refers to.
_COLS = (log_t.c.id, jobs_t.c.id.label("job_id"), log_t.c.step_name, log_t.c.level,
         log_t.c.message, log_t.c.timestamp, log_t.c.line_number, log_t.c.source,
         log_t.c.attributes, log_t.c.trace_id, log_t.c.span_id)
_FROM = log_t.outerjoin(jobs_t, jobs_t.c.seq == log_t.c.job_seq)


def _select_lines():
    return sa.select(*_COLS).select_from(_FROM)


_BOUNDS = sa.select(counters_t.c.key, counters_t.c.first_id, counters_t.c.last_id).where(
    counters_t.c.key.in_(sa.bindparam("keys", expanding=True)))


def job_bounds(conn, f):
    """``{job_id: (first line id, last line id)}`` for a tail read of ``f`` that needs
    them, else None. PostgreSQL may read an older job's tail by the primary key backwards
    from the table's newest line, through every newer job's lines (160-280 ms for 5,000
    lines behind a million); ``id BETWEEN first AND last`` starts any such scan at the
    job's own last line. Only for the filters that read the job's (job_id, id) index
    (info and below, no step, no text): a step or a rarer level has its own index, and the
    bound made the planner leave it. The bounds come from the job's counter row (a primary
    key lookup that cannot change plan), which the write path keeps. Ids are handed out
    in commit order, so a line committed after this read has a greater id: the result is
    the job as it was here, as if the read had run a moment earlier."""
    if (conn.dialect.name != "postgresql" or not f.job_ids or f.step is not None
            or f.min_level > LEVELS["info"] or f.q is not None):
        return None
    rows = conn.execute(_BOUNDS, {"keys": list(f.job_ids)}).all()
    return {key: (first, last) for key, first, last in rows if first is not None}


def select_lines(conn, f, *, after=None, before=None, limit=100):
    """Matching lines, oldest first: the first ``limit`` after ``after``, or else the
    last ``limit`` (before ``before``). Fetches one extra row to tell whether more exist.
    Returns ``(lines, more)``."""
    conds = _where(f, conn)
    bounds = job_bounds(conn, f) if after is None else None
    if bounds and len(bounds) == len(f.job_ids):
        conds.append(log_t.c.id.between(min(b[0] for b in bounds.values()),
                                        max(b[1] for b in bounds.values())))
    if after is not None:
        conds.append(log_t.c.id > after)
    if before is not None:
        conds.append(log_t.c.id < before)
    order = log_t.c.id.asc() if after is not None else log_t.c.id.desc()
    rows = conn.execute(_select_lines().where(*conds).order_by(order).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    if after is None:
        rows.reverse()
    return [line_dict(*r) for r in rows], more


_NEWEST = sa.select(counters_t.c.value).where(counters_t.c.key == ID_KEY)


def newest_id(conn):
    """The newest committed line id: the id allocator's value (ids become visible in
    commit order; a line pruned since keeps its id taken)."""
    return int(conn.execute(_NEWEST).scalar() or 0)


def all_lines_between(conn, after, before, limit=None):
    """Every line with ``after < id < before`` (any job, any level), oldest first."""
    q = _select_lines().where(log_t.c.id > after, log_t.c.id < before).order_by(log_t.c.id)
    if limit is not None:
        q = q.limit(limit)
    return [line_dict(*r) for r in conn.execute(q)]


def tail_lines(conn, f, limit):
    """The stream's backfill: the last ``limit`` lines of each job (or of the service
    log), oldest first, read in one statement so that all jobs share one snapshot."""
    if len(f.job_ids) <= 1:
        return select_lines(conn, f, limit=limit)
    bounds = job_bounds(conn, f) or {}
    index = search_index(conn, f)
    parts = []
    for job_id in f.job_ids:
        one = dataclasses.replace(f, job_ids=(job_id,))
        conds = _where(one, conn, index)
        if job_id in bounds:
            conds.append(log_t.c.id.between(*bounds[job_id]))
        parts.append(_select_lines().where(*conds)
                     .order_by(log_t.c.id.desc()).limit(limit + 1).subquery().select())
    rows = conn.execute(sa.union_all(*parts)).all()
    per_job = {}
    for r in rows:
        per_job.setdefault(r.job_id, []).append(r)
    more = any(len(v) > limit for v in per_job.values())
    keep = sorted((r for v in per_job.values() for r in sorted(v, key=lambda r: -r.id)[:limit]),
                  key=lambda r: r.id)
    return [line_dict(*r) for r in keep], more


COUNT_CAP = 10000


def count_matches(conn, f):
    """``(n, capped)``: lines matching ``f`` now. Without ``q`` from the kept counts (a
    few rows, never a scan); with ``q`` or ``source`` (not in the counts) by counting
    matches, stopping at COUNT_CAP."""
    if not f.counted:
        found = sa.select(log_t.c.id).where(*_where(f, conn)).limit(COUNT_CAP + 1)
        n = conn.execute(sa.select(sa.func.count()).select_from(found.subquery())).scalar()
        return min(n, COUNT_CAP), n > COUNT_CAP
    keys = list(f.job_ids) if f.job_ids else [SERVICE_KEY]
    if f.everywhere and not f.job_ids:
        q = sa.select(sa.func.coalesce(sa.func.sum(counts_t.c.count), 0)).where(
            counts_t.c.level >= f.min_level)
        return int(conn.execute(q).scalar()), False
    q = _COUNT_STEP if f.step is not None else _COUNT
    return int(conn.execute(q, {"keys": keys, "min_level": f.min_level,
                                "step": f.step}).scalar()), False


# count_matches's statements, built once (a polling GET asks one each time)
_COUNT = sa.select(sa.func.coalesce(sa.func.sum(counts_t.c.count), 0)).where(
    counts_t.c.level >= sa.bindparam("min_level"),
    counts_t.c.key.in_(sa.bindparam("keys", expanding=True)))
_COUNT_STEP = _COUNT.where(counts_t.c.step_name == sa.bindparam("step"))


def count_lines(conn, f):
    return count_matches(conn, f)[0]


def level_counts(conn, job_ids):
    """``{job_id: {"debug": n, ...}}`` for the given jobs."""
    out = {jid: dict.fromkeys(LEVELS, 0) for jid in job_ids}
    if not job_ids:
        return out
    q = (sa.select(counts_t.c.key, counts_t.c.level, sa.func.sum(counts_t.c.count))
         .where(counts_t.c.key.in_(list(job_ids)))
         .group_by(counts_t.c.key, counts_t.c.level))
    for key, level, n in conn.execute(q):
        out[key][LEVEL_NAMES[level]] = int(n)
    return out
