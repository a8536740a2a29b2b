"""The search index, filled behind the writer (``ingest.Ingestor``) a chunk of committed
lines at a time: SQLite's FTS5 generation tables of trigram documents and attribute
tokens, PostgreSQL's blocks under a pg_trgm GIN index; and its clearing once the lines of
a generation are gone (the pruner). Read by ``textsearch``."""
import hashlib

import orjson
import sqlalchemy as sa

from .attributes import value_text
from .models import SEARCH_KEY, counters_t, log_t

INDEX_CHUNK = 20000
MAX_UNINDEXED = 200000
INDEX_AFTER_QUIET = 0.25  # seconds without a write

# SQLite's search index (migration 0012): a trigram document per BLOCK of consecutive ids,
# the messages of the block's lines; a search reads the lines of the blocks that hold
# every trigram asked and tests them (textsearch.text_condition). Logs repeat themselves
# from line to line: a block holds a trigram once where its lines held it each, 10 bytes
# a line where one document per line took 68 (bench/storage.py). The documents of ids
# [g * GENERATION, (g + 1) * GENERATION) go to table ``log_fts_<g>``; documents are only
# ever added (a line deleted leaves its block's trigrams: a search then finds a block
# without that line, which the test drops), and a generation's table is emptied
# ('delete-all') once no line of its ids is left (``clear_generations``, the pruner).
BLOCK = 64
GENERATION = 1 << 20
_GEN_PREFIX = "log_fts_"
# A document is its lines' messages as searches fold them (str.lower), under a trigram
# tokenizer that folds nothing more: the tokenizer's own folding cost a quarter of
# indexing, and its case tables are older than Python's. (A table made by an older Quaero
# folds case itself: a lowered document in it folds to itself, and textsearch asks every
# table only trigrams that both kinds hold.)
_FTS_DDL = ("CREATE VIRTUAL TABLE IF NOT EXISTS {name} USING fts5(message, content='', "
            "tokenize='trigram case_sensitive 1', detail=none, columnsize=0)")
_INDEX_READ = ("SELECT id, message, attributes FROM log_entries WHERE id > ? AND id <= ? "
               "ORDER BY id")
# Attributes: each generation's table ``log_attr_<g>`` holds (token, block) for every
# attribute of the block's lines, the token a 64-bit hash of "key=text" (``attr_token``):
# a lookup reads the blocks of one token by its primary key, then tests their lines (a
# trigram document served a high-cardinality value, a request id, poorly: its digits'
# trigrams are in nearly every block). Emptied with its generation (clear_generations).
_ATTR_PREFIX = "log_attr_"
_ATTR_DDL = ("CREATE TABLE IF NOT EXISTS {name} (token INTEGER NOT NULL, block INTEGER NOT NULL, "
             "PRIMARY KEY (token, block)) WITHOUT ROWID")


def attr_table(g):
    return f"{_ATTR_PREFIX}{int(g)}"


def attr_token(key, text):
    """The 64-bit token of an attribute ``key`` whose value reads ``text``
    (``attributes.value_text``), as a signed integer (SQLite's)."""
    digest = hashlib.blake2b(f"{key}\x00{text}".encode("utf-8", "replace"), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


class _TokenCache(dict):
    """``attr_token`` of ``(key, text)`` pairs, each hashed once per indexing pass (up to
    ``_TOKEN_CACHE`` pairs at a time): most attributes repeat their values from line to
    line (a status code, a region), and the hash was most of indexing a line's
    attributes."""

    def __missing__(self, pair):
        if len(self) >= _TOKEN_CACHE:
            self.clear()
        token = self[pair] = attr_token(*pair)
        return token


_TOKEN_CACHE = 1 << 16
# attribute rows gathered before they go in, sorted: (token, block) is the table's key,
# and rows in key order touch each page once where a block's own order was random
_ATTR_ROWS = 1 << 17


def _add_pairs(pairs, attributes):
    """Add a line's ``(key, text)`` pairs (``attributes``: the column's JSON text) to the
    set ``pairs``. (The text, not the value: the values 1, 1.0 and True are equal keys.)"""
    for k, v in orjson.loads(attributes).items():
        pairs.add((k, v if type(v) is str else value_text(v)))


def generation_table(g):
    return f"{_GEN_PREFIX}{int(g)}"


def generations(conn):
    """The numbers of the search index's generation tables, oldest first."""
    names = conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'table' "
                                 "AND name GLOB 'log_fts_[0-9]*'")).scalars()
    return sorted(int(n[len(_GEN_PREFIX):]) for n in names if n[len(_GEN_PREFIX):].isdigit())


# PostgreSQL's search index (migration 0018): the same blocks, in one table; a block's
# document is its lines' messages as searches fold them (ICU_ROOT), one per line, under a
# pg_trgm GIN index. A trigram GIN entry per line was half the cost of writing a
# line and 130 of its 450 bytes (bench/storage.py).
ICU_ROOT = "und-x-icu"  # PostgreSQL's ICU root locale: its lowercase is str.lower's
_PG_INDEX = ("INSERT INTO log_text_blocks (block, doc) "
             f"SELECT id / {BLOCK}, string_agg(lower(message COLLATE \"{ICU_ROOT}\"), E'\\n' "
             "ORDER BY id) FROM log_entries WHERE id > %(mark)s AND id <= %(upto)s "
             f"GROUP BY id / {BLOCK} ON CONFLICT (block) DO NOTHING")


def index_behind(conn, chunk=INDEX_CHUNK):
    """Put the next (about) ``chunk`` committed lines into the search index, whole blocks
    only, in the open transaction ``conn``; returns the last id indexed (the end of a
    block: a block is indexed once every id in it is final). Indexing in the write
    transaction halves ingest (a trigram per character); behind it, in big chunks while
    the writer has been idle for a moment, it costs a third as much, and searches scan
    what it has not reached. The first statement is a write, so the transaction holds
    the mark's lock (SQLite: the write lock) before it reads it: processes never index a
    block twice. Every id up to the newest committed one is final: ids are handed out
    in commit order (``write_lines``), and on SQLite no transaction commits meanwhile."""
    mark = conn.execute(counters_t.update().where(counters_t.c.key == SEARCH_KEY)
                        .values(value=counters_t.c.value).returning(counters_t.c.value)).scalar()
    upto = conn.execute(sa.select(sa.func.max(sa.text("id"))).select_from(
        sa.select(log_t.c.id).where(log_t.c.id > mark).order_by(log_t.c.id).limit(chunk)
        .subquery())).scalar()
    if upto is None:
        return mark
    upto = (upto + 1) // BLOCK * BLOCK - 1   # the end of the last whole block
    if upto <= mark:
        return mark
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(_PG_INDEX, {"mark": mark, "upto": upto})
    else:
        _index_sqlite(conn, mark, upto)
    conn.execute(counters_t.update().where(counters_t.c.key == SEARCH_KEY).values(value=upto))
    return upto


def _index_sqlite(conn, mark, upto):
    # one block in memory at a time: the chunk's messages may be 20,000 x 64 KB
    dbapi = conn.connection.driver_connection
    read, write = dbapi.cursor(), dbapi.cursor()
    try:
        read.execute(_INDEX_READ, (mark, upto))
        tables, block, messages, pairs = set(), None, [], set()
        cache, rows = _TokenCache(), {}
        for line_id, message, attributes in read:
            if line_id // BLOCK != block:
                _index_block(write, tables, block, messages, pairs, cache, rows)
                block, messages, pairs = line_id // BLOCK, [], set()
            messages.append(message)
            if attributes is not None:
                _add_pairs(pairs, attributes)
        _index_block(write, tables, block, messages, pairs, cache, rows)
        _insert_attr_rows(write, rows, 0)
    finally:
        read.close()
        write.close()


def _index_block(cur, tables, block, messages, pairs, cache, rows):
    """Add one block's document to its generation's table (made on first use), and the
    tokens of its attributes' ``(key, text)`` ``pairs`` to ``rows`` (generation: rows),
    which go in once there are enough of them (``_insert_attr_rows``)."""
    if not messages:
        return
    g = block * BLOCK // GENERATION
    name = generation_table(g)
    if name not in tables:
        make_generation(cur, g)
        tables.add(name)
    cur.execute(f"INSERT INTO {name}(rowid, message) VALUES (?, ?)",
                (block, "\n".join(messages).lower()))
    if pairs:
        rows.setdefault(g, []).extend([(cache[p], block) for p in pairs])
        _insert_attr_rows(cur, rows, _ATTR_ROWS)


def _insert_attr_rows(cur, rows, least):
    """Insert the gathered attribute rows, in key order, once there are ``least``."""
    if sum(map(len, rows.values())) < max(least, 1):
        return
    for g, some in rows.items():
        some.sort()
        cur.executemany(f"INSERT OR IGNORE INTO {attr_table(g)}(token, block) VALUES (?, ?)",
                        some)
    rows.clear()


def make_generation(cur, g):
    """Generation ``g``'s tables, on a DB-API cursor."""
    cur.execute(_FTS_DDL.format(name=generation_table(g)))
    cur.execute(_ATTR_DDL.format(name=attr_table(g)))


def clear_generations(conn):
    """Empty the search index's generations that no line's id falls in any more (the
    pruner removed them all) in the open transaction ``conn``; returns their numbers.
    SQLite: their tables stay (a search running meanwhile names them), empty. PostgreSQL:
    the documents of the blocks before the oldest line go (and the numbers are those of
    the generations they were in). The first statement is a write, as in
    ``index_behind``: nothing is indexed while this looks, and a line committed meanwhile
    is after the mark, in no block."""
    conn.execute(counters_t.update().where(counters_t.c.key == SEARCH_KEY)
                 .values(value=counters_t.c.value))
    oldest = conn.execute(sa.select(sa.func.min(log_t.c.id))).scalar()
    if conn.dialect.name == "postgresql":  # (block b holds ids 64b .. 64b + 63)
        sealed = conn.execute(sa.text("SELECT min(first_id) FROM log_blocks")).scalar()
        if sealed is not None and (oldest is None or sealed < oldest):  # (quaero.sealing)
            oldest = sealed
        where = "true" if oldest is None else f"block < {int(oldest) // BLOCK}"
        return list(conn.execute(sa.text(
            f"WITH gone AS (DELETE FROM log_text_blocks WHERE {where} RETURNING block) "
            f"SELECT DISTINCT block * {BLOCK} / {GENERATION} AS g FROM gone ORDER BY g")).scalars())
    cleared = []
    for g in generations(conn):
        if oldest is not None and g >= oldest // GENERATION:
            break
        name = generation_table(g)
        # (``_data`` rows 1 and 10 are the table's own; anything more is documents)
        if conn.execute(sa.text(f"SELECT 1 FROM {name}_data WHERE id > 10 LIMIT 1")).first():
            conn.execute(sa.text(f"INSERT INTO {name}({name}) VALUES ('delete-all')"))
            conn.execute(sa.text(f"DELETE FROM {attr_table(g)}"))
            cleared.append(g)
    return cleared
