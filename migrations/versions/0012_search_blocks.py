"""SQLite's search index holds a document per block of 64 lines, in generations

Revision ID: 0012_search_blocks
Revises: 0011_line_layout
Create Date: 2026-12-06 06:50:00

One trigram document per line (``log_fts``, 68 bytes a line) becomes one per block of 64
consecutive ids, the messages of its lines (10 bytes a line on this machine's system
logs: consecutive log lines share most of their trigrams), in tables of 2^20 ids each
(``log_fts_<n>``), only ever added to and emptied whole once none of their lines is left
(see ``quaero.storage.index_behind``). A search reads the lines of the blocks holding
every trigram asked, and tests each line as before.

The old index goes; the writer indexes every stored line again behind itself, a chunk at
a time while it is idle (searches scan the lines it has not reached meanwhile).
PostgreSQL is not concerned.
"""
from alembic import op

revision = '0012_search_blocks'
down_revision = '0011_line_layout'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP TRIGGER IF EXISTS log_fts_delete")
    op.execute("DROP TABLE IF EXISTS log_fts")
    op.execute("UPDATE line_counters SET value = 0 WHERE key = '__search__'")


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    names = [r[0] for r in bind.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'log_fts_[0-9]*'")
        if r[0][len("log_fts_"):].isdigit()]
    for name in names:
        op.execute(f"DROP TABLE {name}")
    op.execute("CREATE VIRTUAL TABLE log_fts USING fts5(message, content='log_entries', "
               "content_rowid='id', tokenize='trigram', detail=none, columnsize=0)")
    op.execute("CREATE TRIGGER log_fts_delete AFTER DELETE ON log_entries "
               "WHEN old.id <= (SELECT value FROM line_counters WHERE key = '__search__') BEGIN "
               "INSERT INTO log_fts(log_fts, rowid, message) VALUES ('delete', old.id, old.message); "
               "END")
    op.execute("INSERT INTO log_fts(log_fts) VALUES ('rebuild')")
    op.execute("UPDATE line_counters SET value = coalesce((SELECT max(id) FROM log_entries), 0) "
               "WHERE key = '__search__'")
