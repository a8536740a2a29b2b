"""The statements of the one write path, run on the DB-API cursor of the writer's
transaction (``ingest.Ingestor``): lines, their ids and counters, the per-second volume,
idempotency records. (The search index behind the writer: ``searchindex``.)"""
from collections import Counter
from datetime import datetime, timedelta
from itertools import chain

import orjson

from .models import ID_KEY, SERVICE_KEY, iso, line_dict

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
