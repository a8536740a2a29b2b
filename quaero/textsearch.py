"""Text search and attribute filters as conditions of the one read query
(``queries._where``), on each database's own index over blocks of lines (the write side:
``searchindex.index_behind``), and the exact tests SQLite runs as functions."""
import functools

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from .attributes import value_matches, wanted_texts, wanted_values
from .models import ID_KEY, SEARCH_KEY, log_t
from .searchindex import ICU_ROOT, BLOCK, attr_table, attr_token, generation_table, generations

# Text search. The rule: a line matches when ``q.lower()`` is in ``message.lower()``
# (Python's str.lower: Unicode's full lowercase mapping, "İ" to "i̇" and a final "Σ" to
# "ς"; nothing more, so "ß" is not "ss"), as ``LineFilter.matches`` says for the live grep.
# The database's trigram index narrows the candidates, then the exact test decides.
# SQLite: the exact test is ``quaero_contains`` (str.lower, registered on every
# connection); the FTS5 tables hold documents lowered by str.lower (searchindex._FTS_DDL), but
# those an older Quaero made fold case by the tokenizer's own, older tables, so only the
# trigrams both surely hold as str.lower has them are asked of them (``_fts_query``).
# PostgreSQL: ``lower(message COLLATE "und-x-icu")`` is the same mapping whatever the
# database's locale (ILIKE folded by that locale: only ASCII under C); the search index
# holds each block's lines folded so, one per line, under a pg_trgm GIN index (migration
# 0018), and a block whose document contains ``q.lower()`` is one whose lines may. A
# ``q`` with no trigram (shorter than one) is a scan, newest first, that stops at the
# page's end. On both, the lines after the index's mark are scanned too.
TRIGRAM = 3
MAX_Q = 200
# a block's ids are its number * BLOCK + 0 .. BLOCK - 1 (searchindex.index_behind)
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
    tables and their shadow tables, PostgreSQL's block table, GIN indexes), as do
    PostgreSQL's sealed lines (``log_blocks``, ``quaero.sealing``): autogenerate
    must leave them be."""
    return not (reflected and name and (
        name.startswith(("log_fts", "log_attr_", "log_text_blocks", "log_blocks")) or name in (
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


def text_condition(q, dialect, index, t=log_t):
    """``index``: what ``search_index`` read (SQLite: the generations; PostgreSQL: see
    ``_pg_search_index``); ``t``: the lines read (``queries.lines_of``)."""
    folded = q.lower()
    if dialect == "postgresql":
        # (strpos, not LIKE: the planner guesses a third of the lines for it, where it took
        # a LIKE for rare and sorted every match of a common word to find the newest)
        exact = _pg_contains(t.c.message, folded)
        if index is None:  # no trigram, or too many candidates to list
            return exact
        if isinstance(index, tuple):  # a reader of every match: every block that may hold it
            mark, blocks = index
            listed = blocks.sql
            maybe = sa.or_((t.c.id // BLOCK) == sa.any_(listed), t.c.id > mark)
            return sa.case((maybe, exact), else_=sa.false())  # (in this order)
        return sa.and_(t.c.id == sa.any_(sa.bindparam(None, index, type_=_ID_ARRAY,
                                                          unique=True)), exact)
    exact = sa.func.quaero_contains(t.c.message, folded) == 1
    match = _fts_query(folded)
    if match is None:
        return exact
    return sa.and_(t.c.id.in_(_indexed_candidates(match, index)), exact)


def _pg_contains(message, folded):
    """PostgreSQL: ``folded`` (``q.lower()``) is in ``message.lower()``. A message all of
    ASCII (as many bytes as characters) lowers by the C collation's ASCII rule, which is
    str.lower's for it, at half the cost of ICU's (a scan of 980,000 lines of /var/log:
    685 -> 359 ms); the others by ICU's root locale, which is str.lower's."""
    if not folded.isascii():  # (an ASCII message lowers to ASCII: never there)
        return sa.and_(sa.func.octet_length(message) != sa.func.char_length(message),
                       sa.func.strpos(sa.func.lower(message.collate(ICU_ROOT)), folded) > 0)
    return sa.case((sa.func.octet_length(message) == sa.func.char_length(message),
                    sa.func.strpos(sa.func.lower(message.collate("C")), folded) > 0),
                   else_=sa.func.strpos(sa.func.lower(message.collate(ICU_ROOT)), folded) > 0)


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
_PG_CANDIDATES = (f"SELECT (SELECT value FROM line_counters WHERE key = '{SEARCH_KEY}'), "
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
        n = None if every else PG_IDS // BLOCK + 1
        cur.execute(_PG_CANDIDATES, (_like_pattern(folded), n), prepare=False)
        mark, newest, blocks = cur.fetchone()
    mark, newest, blocks = mark or 0, newest or 0, Blocks(blocks)  # (no mark: none indexed)
    if len(blocks) * BLOCK + max(newest - mark, 0) > PG_IDS:
        return (mark, blocks) if every else None
    ids = Candidates(b * BLOCK + i for b in blocks for i in range(BLOCK))
    ids.extend(range(mark + 1, newest + 1))
    ids.mark, ids.blocks = mark, blocks
    return ids


class Blocks(list):
    """The search index's block numbers a search read, in order; ``sql``: as an array
    literal (PostgreSQL hashes a constant array; a block of sealed lines is tested
    against it by a binary search, ``sealing._block_conds``)."""

    def __init__(self, blocks):
        super().__init__(sorted(blocks))

    @functools.cached_property
    def sql(self):
        return sa.literal_column(f"'{{{','.join(map(str, self))}}}'::bigint[]")


class Candidates(list):
    """The ids ``_pg_search_index`` lists, with the ``mark`` and the index's ``blocks``
    they come from (a reader of sealed blocks asks for those holding one of them: every
    sealed line is at or below the mark, ``quaero.sealing``)."""
    mark = 0
    blocks = ()


def search_index(conn, f, every=False):
    """What the search index says of ``f`` before its lines are read, once for every
    job a statement reads: SQLite, the index's generations (for ``q`` or attributes);
    PostgreSQL, for ``q``, ``_pg_search_index``."""
    if conn.dialect.name == "sqlite":
        return generations(conn) if (f.q is not None or f.attrs) else ()
    return _pg_search_index(conn, f.folded, every) if f.q is not None else None


def attr_condition(key, wanted, dialect, gens=()):
    """``attr.KEY=wanted``. PostgreSQL: containment of one of the values it may stand for
    (the text, the number it spells, the boolean), which the GIN index of migration 0014
    answers and which is ``value_matches`` exactly. SQLite: the lines of the blocks whose
    attribute tokens hold one of its texts (``searchindex.attr_token``), and every line not
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
