"""PostgreSQL: the search index over blocks of lines, as SQLite's

Revision ID: 0018_pg_search_blocks
Revises: 0017_sqlite_job_indexes
Create Date: 2026-12-06 21:00:00

A pg_trgm GIN entry for every trigram of every line (migration 0009) was half the cost of
writing a line on PostgreSQL (``write_lines`` of 500-line batches: 28.8k lines/s with it,
64.0k without) and 130 of its 450 bytes (``bench/storage.py``). Now, as on SQLite since
0012, the index holds one document per block of 64 consecutive ids, its lines' messages
as searches fold them (``lower(message COLLATE "und-x-icu")``), one per line, under a
pg_trgm GIN index; consecutive log lines share most trigrams. The writer fills it behind
itself (``storage.index_behind``: ``line_counters['__search__']`` is the last id indexed,
and searches scan the lines after it); it starts from 0 here, so an existing database is
indexed again after the upgrade, a chunk at a time, while searches scan what it has not
reached. The pruner removes the documents of blocks no line is left in.

The GIN index keeps at most 256 kB of new entries in its pending list (4 MB by default):
every search reads the whole list, which after a burst of writes cost a rare word's
search about 3 ms; inserting a chunk of documents costs 10-15 % more for it.
"""
from alembic import op

revision = '0018_pg_search_blocks'
down_revision = '0017_sqlite_job_indexes'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE TABLE IF NOT EXISTS log_text_blocks (block bigint PRIMARY KEY, "
               "doc text NOT NULL)")
    op.execute("CREATE INDEX IF NOT EXISTS ix_log_text_blocks_doc ON log_text_blocks "
               "USING gin (doc gin_trgm_ops) WITH (gin_pending_list_limit = 256)")
    op.execute("INSERT INTO line_counters (key, value) VALUES ('__search__', 0) "
               "ON CONFLICT (key) DO UPDATE SET value = 0")
    op.execute("DROP INDEX IF EXISTS ix_log_message_lower_trgm")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute('CREATE INDEX IF NOT EXISTS ix_log_message_lower_trgm ON log_entries '
               'USING gin ((lower(message COLLATE "und-x-icu")) gin_trgm_ops)')
    op.execute("DELETE FROM line_counters WHERE key = '__search__'")
    op.execute("DROP TABLE IF EXISTS log_text_blocks")
