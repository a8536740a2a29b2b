"""Facets: the most frequent values of one field among the lines a filter matches
(``GET /api/logs/facets``), counted by the database over the newest FACET_SCAN matching
lines, in one GROUP BY (a line's attribute read as JSON, turned into its text here)."""
import sqlite3

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from .attributes import value_text
from .models import LEVEL_NAMES
from .queries import _key, _where
from .sealing import Windows, lines_of
from .textsearch import search_index


FACET_COLUMNS = ("source", "level", "step")
FACET_SCAN = 100_000  # facets count the newest this many matching lines ("sampled" beyond)
_JSON_ARROW = sqlite3.sqlite_version_info >= (3, 38)


def _facet_value(key, dialect, t):
    """The SQL value of ``key`` of a line of ``t`` (``queries.lines_of``): a column, or
    its attribute as JSON (text on SQLite), which ``_facet_text`` reads."""
    if key in FACET_COLUMNS:
        return t.c["step_name" if key == "step" else key]
    if dialect == "postgresql":
        return sa.type_coerce(t.c.attributes, JSONB)[key]
    if '"' in key or "\\" in key or not _JSON_ARROW:  # a key no JSON path names: Python's
        return sa.func.quaero_attr_json(t.c.attributes, key)
    return t.c.attributes.op("->", return_type=sa.Text)(sa.literal_column("'$.\"" + key.replace("'", "''") + "\"'"))


def _facet_text(key, value, dialect):
    if key == "level":
        return LEVEL_NAMES[value]
    if key in FACET_COLUMNS:
        return value
    return value_text(orjson.loads(value) if dialect == "sqlite" else value)


def facet_counts(conn, f, key, limit):
    """``(values, total, sampled)``: the ``limit`` most frequent values of ``key`` (an
    attribute, or ``source``, ``level``, ``step``) among the newest FACET_SCAN lines
    matching ``f`` (``sampled``: there were more), as ``[{"value": text, "count": n}]``,
    most frequent first, then by value; ``total``: those lines that have the key."""
    dialect = conn.dialect.name
    index = search_index(conn, f)
    # (one job's or every line's newest blocks; several jobs' blocks are read whole)
    windows = Windows(conn, f, None, None, FACET_SCAN, index) if len(f.job_ids) <= 1 else None
    while True:
        t = lines_of(conn, f, index, windows and windows.of(_key(f)))
        conds = _where(f, conn, index, t)
        if key not in FACET_COLUMNS:
            conds.append(t.c.attributes.isnot(None))
        newest = (sa.select(t.c.id, _facet_value(key, dialect, t).label("v")).where(*conds)
                  .order_by(t.c.id.desc()).limit(FACET_SCAN).subquery())
        rows = conn.execute(sa.select(newest.c.v, sa.func.count(), sa.func.min(newest.c.id),
                                      sa.func.max(newest.c.id)).group_by(newest.c.v)).all()
        seen = sum(count for _, count, _, _ in rows)
        ends = [min(r[2] for r in rows), max(r[3] for r in rows)] if rows else []
        if windows is None or windows.enough(ends, seen == FACET_SCAN):
            break
    counts = {}
    for v, count, _, _ in rows:   # one text may come from two kinds (the number 5, "5")
        if v is not None:
            text = _facet_text(key, v, dialect)
            counts[text] = counts.get(text, 0) + count
    sampled = False
    if seen == FACET_SCAN:  # older matching lines left?
        oldest = min(first for _, _, first, _ in rows)
        t = lines_of(conn, f, index, None, None, oldest)
        conds = _where(f, conn, index, t)
        if key not in FACET_COLUMNS:
            conds.append(t.c.attributes.isnot(None))
        sampled = conn.execute(sa.select(t.c.id).where(*conds, t.c.id < oldest)
                               .limit(1)).first() is not None
    values = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [{"value": v, "count": c} for v, c in values], sum(counts.values()), sampled
