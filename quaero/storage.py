"""The statements of the one write path, run on the DB-API cursor of the writer's
transaction (``ingest.Ingestor``): lines, their ids and counters, the per-second volume,
idempotency records, and SQLite's search index filled behind the writer."""
import hashlib
from collections import Counter
from datetime import datetime, timedelta
from itertools import chain

import orjson
import sqlalchemy as sa

from .attributes import value_text
from .models import ID_KEY, SEARCH_KEY, SERVICE_KEY, counters_t, iso, line_dict, log_t

IDEMPOTENCY_TTL = timedelta(hours=24)


class JobGone(Exception):
    """A line's job was removed (its counter row is gone): nothing of the batch is stored."""

    def __init__(self, key):
        super().__init__(key)
        self.key = key


def line_key(line):
    return line["job_id"] or SERVICE_KEY


# The write path's statements, as the driver's own SQL: run on the DB-API cursor of the
# transaction's connection. Building, cache-keying and executing them through SQLAlchemy
# cost more than SQLite ran them (a one-line POST spent a fifth of its time there); the
# driver's errors are the writer's to sort (``driver_errors``).
_SQL = {
    # the global id counter
    'bump': 'UPDATE line_counters SET value = value + ? WHERE "key" = ? RETURNING value',
    # a job's (or the service log's) line counter, and its first and last line id; the
    # job's seq, which its lines refer to
    "bump_key": ("UPDATE line_counters SET value = value + ?, "
                 'first_id = coalesce(first_id, ?), last_id = ? WHERE "key" = ? '
                 "RETURNING value, job_seq"),
    # log_counts: lines per (job, step, level); log_volume: the same per second as well
    "counts": ('INSERT INTO log_counts ("key", step_name, level, count) VALUES (?, ?, ?, ?) '
               'ON CONFLICT ("key", step_name, level) '
               "DO UPDATE SET count = log_counts.count + excluded.count"),
    "volume": ('INSERT INTO log_volume ("key", step_name, level, second, count) '
               'VALUES (?, ?, ?, ?, ?) ON CONFLICT ("key", step_name, level, second) '
               "DO UPDATE SET count = log_volume.count + excluded.count"),
    # an idempotency record, unless the key is taken (a record older than a day is gone)
    "key_stale": 'DELETE FROM idempotency_keys WHERE "key" = ? AND created_at < ?',
    "key": ('INSERT INTO idempotency_keys ("key", digest, status, response, created_at) '
            'VALUES (?, ?, 201, ?, ?) ON CONFLICT ("key") DO NOTHING'),
    "insert": ("INSERT INTO log_entries (id, job_seq, step_name, level, message, timestamp, "
               "line_number, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
    # ... a line with structured fields
    "insert_attrs": ("INSERT INTO log_entries (id, job_seq, step_name, level, message, "
                     "timestamp, line_number, source, attributes, trace_id, span_id) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
}
_SQL = {"sqlite": _SQL, "postgresql": {k: v.replace("?", "%s") for k, v in _SQL.items()}}
_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)


def driver_errors(engine):
    """The database-unavailable errors of ``engine``'s driver, raised unwrapped by the
    statements ``write_lines`` runs on the DB-API cursor."""
    dbapi = engine.dialect.loaded_dbapi
    return (dbapi.OperationalError, dbapi.InterfaceError)


def _upsert_counts(cur, sql, volume):
    """Add a batch's lines, ``{(key, step, level, second): n}``, to ``log_volume`` and
    (summed over the seconds) to ``log_counts``: one statement each, rows in key order
    (so that concurrent writers lock them in the same order)."""
    counts = Counter()
    for (k, s, lv, _), n in volume.items():
        counts[(k, s, lv)] += n
    cur.executemany(sql["counts"], [(k, s, lv, n) for (k, s, lv), n in sorted(counts.items())])
    cur.executemany(sql["volume"], [(k, s, lv, sec, n)
                                    for (k, s, lv, sec), n in sorted(volume.items())])


_COPY = ("COPY log_entries (id, job_seq, step_name, level, message, timestamp, line_number, "
         "source, attributes, trace_id, span_id) FROM STDIN")


def attributes_json(attributes):
    """A line's attributes as the database keeps their text (None: none)."""
    return None if not attributes else orjson.dumps(attributes).decode()


def _insert(cur, sqlite, sql, plain, rich, copy_text):
    """On PostgreSQL, COPY inside the same transaction (psycopg's executemany waits on
    the socket once per row under gevent; ``copy_text``: the lines as COPY's text). On
    SQLite, tuples on the DB-API cursor (SQLAlchemy's per-row parameter processing cost
    as much as SQLite's insert): ``plain`` lines, and ``rich`` ones with attributes or
    ids, ``ROWS_PER_INSERT`` rows a statement."""
    if sqlite:
        _insert_rows(cur, sql["insert"], plain)
        _insert_rows(cur, sql["insert_attrs"], rich)
        return
    with cur.copy(_COPY) as copy:  # one buffer: psycopg's write_row was a third of a batch
        copy.write("".join(copy_text))


# sqlite3's executemany binds and steps its statement once per row, at 1.4 us a line more
# than one statement of many rows (a quarter of writing a line; bench/ingest.py's floor).
# (Up to 11 x 250 variables: SQLite allows 32766 since 3.32, and Quaero's trigram index
# needs 3.34.)
ROWS_PER_INSERT = 250


def _many_rows(sql, n):
    """``sql`` (an INSERT of one row of values) for ``n`` rows."""
    head, values = sql.split(" VALUES ")
    return f"{head} VALUES {', '.join([values] * n)}"


_MANY = {_SQL["sqlite"][k]: _many_rows(_SQL["sqlite"][k], ROWS_PER_INSERT)
         for k in ("insert", "insert_attrs")}


def _insert_rows(cur, sql, rows):
    """Insert ``rows`` (tuples for ``sql``, one row's INSERT) on SQLite."""
    many, n = _MANY[sql], len(rows)
    full = n - n % ROWS_PER_INSERT
    for i in range(0, full, ROWS_PER_INSERT):
        cur.execute(many, list(chain.from_iterable(rows[i:i + ROWS_PER_INSERT])))
    if full < n:
        cur.executemany(sql, rows[full:])


_NULL = "\\N"
_NO_FIELDS = "\\N\t\\N\t\\N"


def _copy_fields(fields, trace, span):
    """COPY text of a line's attributes (JSONB), trace and span ids (bytea as ``\\x`` hex)."""
    trace = "\\N" if trace is None else "\\\\x" + trace
    span = "\\N" if span is None else "\\\\x" + span
    return f"{_copy_text(attributes_json(fields))}\t{trace}\t{span}"


# COPY's text format: a backslash, tab, newline or carriage return in a value is escaped;
# None is \N. Most values have none (str.translate with this table cost 5x the tests).
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value):
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


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


def write_lines(conn, lines):
    """Insert ``lines`` in the open transaction ``conn``; returns the stored lines as
    they are published and read (``models.line_dict``'s shape).

    The global id counter is locked first: its row lock is held until commit, so a reader
    never sees id N+1 before id N has committed. Then each job's counter (sorted), which
    also records the job's first and last line id. Nothing else takes the id row, so
    this order cannot deadlock with a delete (which locks a job's counter, then its row).
    Last, the lines are counted into ``log_counts`` and ``log_volume`` (the histogram's
    per-second counts), so both are true at every commit.
    """
    dialect = conn.dialect.name
    sql = _SQL[dialect]
    cur = conn.connection.driver_connection.cursor()
    try:
        return _write(cur, dialect == "sqlite", sql, lines)
    finally:
        cur.close()


def record_keys(conn, keyed, now):
    """Record each ``(key, digest, response)`` of ``keyed`` in the open transaction
    ``conn``; returns the index of the first key another transaction holds, or None."""
    dialect = conn.dialect.name
    sql = _SQL[dialect]
    when = now.isoformat(" ", "microseconds") if dialect == "sqlite" else now
    stale = (now - IDEMPOTENCY_TTL).isoformat(" ", "microseconds") if dialect == "sqlite" \
        else now - IDEMPOTENCY_TTL
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.executemany(sql["key_stale"], [(key, stale) for key, _, _ in keyed])
        for i, (key, digest, response) in enumerate(keyed):
            cur.execute(sql["key"], (key, digest, response, when))
            if cur.rowcount == 0:
                return i
    finally:
        cur.close()
    return None


def _write(cur, sqlite, sql, lines):
    n = len(lines)
    cur.execute(sql["bump"], (n, ID_KEY))
    first_id = cur.fetchone()[0] - n + 1
    keys = list(map(line_key, lines))
    per_key = Counter(keys)
    last_of = {key: i for i, key in enumerate(keys)}
    first_of = {key: i for i, key in zip(range(n - 1, -1, -1), reversed(keys))}
    next_line, seqs = {}, {None: None}
    for key in sorted(per_key):
        count = per_key[key]
        cur.execute(sql["bump_key"], (count, first_id + first_of[key], first_id + last_of[key],
                                      key))
        row = cur.fetchone()
        if row is None:
            raise JobGone(key)
        next_line[key] = row[0] - count
        if key != SERVICE_KEY:
            if row[1] is None:  # a counter row that is not a job's: no line can go there
                raise JobGone(key)
            seqs[key] = row[1]
    # one pass: each line's row as the database takes it, and as it is published
    # (models.line_dict's shape); a batch's lines mostly share one timestamp object
    # (the request's) and their (key, step, level, second), counted by runs
    rows, plain, rich, copy_text = [], [], [], []
    volume = Counter()
    last = ms = when = pg_when = run = None
    n_run = 0
    for i, (key, line) in enumerate(zip(keys, lines)):
        number = next_line[key] = next_line[key] + 1
        ts, get = line["timestamp"], line.get
        if ts is not last:
            last, ms, when = ts, (ts - _EPOCH) // _MS, iso(ts)
            if not sqlite:
                pg_when = ts.isoformat(" ")
        line_id, job_id, step, level, message = (first_id + i, line["job_id"], line["step_name"],
                                                 line["level"], line["message"])
        source, fields, trace, span = (get("source"), get("attributes"), get("trace_id"),
                                       get("span_id"))
        rows.append(line_dict(line_id, job_id, step, level, message, ts, number, source,
                              fields, trace, span, when))  # (positional: ** cost twice)
        plain_line = fields is None and trace is None and span is None
        seq = seqs[job_id]
        if sqlite:
            values = (line_id, seq, step, level, message, ms, number, source)
            if plain_line:
                plain.append(values)
            else:
                rich.append(values + (orjson.dumps(fields).decode() if fields else None,
                                      None if trace is None else bytes.fromhex(trace),
                                      None if span is None else bytes.fromhex(span)))
        else:
            copy_text.append(
                f"{line_id}\t{_NULL if seq is None else seq}\t{_copy_text(step)}\t{level}\t"
                f"{_copy_text(message)}\t{pg_when}\t{number}\t{_copy_text(source)}\t"
                f"{_NO_FIELDS if plain_line else _copy_fields(fields, trace, span)}\n")
        counted = (key, step or "", level, ms // 1000)
        if counted != run:
            if n_run:
                volume[run] += n_run
            run, n_run = counted, 0
        n_run += 1
    if n_run:
        volume[run] += n_run
    _insert(cur, sqlite, sql, plain, rich, copy_text)
    _upsert_counts(cur, sql, volume)
    return rows
