"""text indexes for search: SQLite FTS5 trigram, PostgreSQL pg_trgm

Revision ID: 0002_search
Revises: 0001
Create Date: 2026-11-27 10:00:00

SQLite: ``log_fts`` is an external-content FTS5 table (trigram tokenizer) over
``log_entries.message``: it stores only the index, the text stays in ``log_entries``.
``detail=none``: no positions, half the cost per line; a search asks for all of the text's
trigrams and then tests the text itself.
The writer indexes behind itself (``quaero.ingest.index_behind``, when it has nothing to
write): ``line_counters["__search__"]`` is the last id indexed, and a search also scans the
lines after it. A trigger takes deleted lines (retention, deleted jobs) out of the index
if they were in it. PostgreSQL: a GIN trigram index on ``message``.
"""
from alembic import op

revision = '0002_search'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute("CREATE INDEX IF NOT EXISTS ix_log_message_trgm ON log_entries "
                   "USING gin (message gin_trgm_ops)")
        return
    op.execute("CREATE VIRTUAL TABLE log_fts USING fts5(message, content='log_entries', "
               "content_rowid='id', tokenize='trigram', detail=none, columnsize=0)")
    op.execute("CREATE TRIGGER log_fts_delete AFTER DELETE ON log_entries "
               "WHEN old.id <= (SELECT value FROM line_counters WHERE key = '__search__') BEGIN "
               "INSERT INTO log_fts(log_fts, rowid, message) VALUES ('delete', old.id, old.message); "
               "END")
    op.execute("INSERT INTO log_fts(log_fts) VALUES ('rebuild')")
    op.execute("INSERT INTO line_counters (key, value) "
               "SELECT '__search__', coalesce(max(id), 0) FROM log_entries")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_log_message_trgm")
        return
    op.execute("DROP TRIGGER IF EXISTS log_fts_delete")
    op.execute("DROP TABLE IF EXISTS log_fts")
    op.execute("DELETE FROM line_counters WHERE key = '__search__'")
