"""Facets: the most frequent values of one field among the lines a filter matches
(``GET /api/logs/facets``), counted by the database over the newest FACET_SCAN matching
lines, in one GROUP BY (a line's attribute read as JSON, turned into its text here)."""
import sqlite3

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from .attributes import value_text
from .models import LEVEL_NAMES, log_t
from .queries import _where


FACET_COLUMNS = {"source": log_t.c.source, "level": log_t.c.level, "step": log_t.c.step_name}
FACET_SCAN = 100_000  # facets count the newest this many matching lines ("sampled" beyond)
_JSON_ARROW = sqlite3.sqlite_version_info >= (3, 38)


def _facet_value(key, dialect):
    """The SQL value of ``key`` of a line: a column, or its attribute as JSON (text on
    SQLite), which ``_facet_text`` reads."""
    if key in FACET_COLUMNS:
        return FACET_COLUMNS[key]
    if dialect == "postgresql":
        return sa.type_coerce(log_t.c.attributes, JSONB)[key]
    if '"' in key or "\\" in key or not _JSON_ARROW:  # a key no JSON path names: Python's
        return sa.func.quaero_attr_json(log_t.c.attributes, key)
    return log_t.c.attributes.op("->", return_type=sa.Text)(sa.literal_column("'$.\"" + key.replace("'", "''") + "\"'"))


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
    value = _facet_value(key, dialect)
    conds = _where(f, conn)
    if key not in FACET_COLUMNS:
        conds.append(log_t.c.attributes.isnot(None))
    newest = (sa.select(log_t.c.id, value.label("v")).where(*conds)
              .order_by(log_t.c.id.desc()).limit(FACET_SCAN).subquery())
    rows = conn.execute(sa.select(newest.c.v, sa.func.count(), sa.func.min(newest.c.id))
                        .group_by(newest.c.v)).all()
    counts = {}
    for v, count, _ in rows:   # one text may come from two kinds (the number 5, "5")
        if v is not None:
            text = _facet_text(key, v, dialect)
            counts[text] = counts.get(text, 0) + count
    sampled = False
    if sum(count for _, count, _ in rows) == FACET_SCAN:  # older matching lines left?
        oldest = min(first for _, _, first in rows)
        sampled = conn.execute(sa.select(log_t.c.id).where(*conds, log_t.c.id < oldest)
                               .limit(1)).first() is not None
    values = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [{"value": v, "count": c} for v, c in values], sum(counts.values()), sampled
