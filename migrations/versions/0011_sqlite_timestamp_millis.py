"""SQLite keeps a line's timestamp as whole milliseconds since 1970

Revision ID: 0011_sqlite_ms
Revises: 0010_level_partial
Create Date: 2026-12-06 06:45:00

The text form (``2026-12-06 05:43:31.123456``) took 26 bytes of every row; the integer
takes 6 (``models.EpochMillis``). Every answer already wrote milliseconds, so nothing a
client sees changes. SQLite cannot change a column's type: the table is copied (same ids,
so the search index, which points at them, stays right), and its indexes and the trigger
that keeps the search index are made again. PostgreSQL keeps ``timestamp`` (8 bytes).
"""
from alembic import op

revision = '0011_sqlite_ms'
down_revision = '0010_level_partial'
branch_labels = None
depends_on = None

_TABLE = """CREATE TABLE log_entries_new (
	id INTEGER NOT NULL,
	job_id VARCHAR(32),
	step_name VARCHAR(200),
	level SMALLINT NOT NULL,
	message TEXT NOT NULL,
	timestamp {type} NOT NULL,
	line_number INTEGER NOT NULL,
	source VARCHAR(200),
	PRIMARY KEY (id),
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
)"""
_INDEXES = (
    "CREATE INDEX ix_log_job_id ON log_entries (job_id, id)",
    "CREATE INDEX ix_log_job_step_id ON log_entries (job_id, step_name, id)",
    "CREATE INDEX ix_log_job_level_id ON log_entries (job_id, level, id) WHERE level >= 30",
    "CREATE TRIGGER log_fts_delete AFTER DELETE ON log_entries "
    "WHEN old.id <= (SELECT value FROM line_counters WHERE key = '__search__') BEGIN "
    "INSERT INTO log_fts(log_fts, rowid, message) VALUES ('delete', old.id, old.message); END",
)
# 'YYYY-MM-DD HH:MM:SS[.ffffff]' -> milliseconds, exactly (julianday's float could be 1 off)
_TO_MS = ("CAST(strftime('%s', timestamp) AS INTEGER) * 1000 "
          "+ CAST(substr(timestamp || '.000', 21, 3) AS INTEGER)")
_FROM_MS = ("strftime('%Y-%m-%d %H:%M:%S', timestamp / 1000, 'unixepoch') "
            "|| printf('.%03d000', timestamp % 1000)")


def _copy(column_type, timestamp_expr):
    op.execute(_TABLE.format(type=column_type))
    op.execute("INSERT INTO log_entries_new (id, job_id, step_name, level, message, timestamp, "
               f"line_number, source) SELECT id, job_id, step_name, level, message, "
               f"{timestamp_expr}, line_number, source FROM log_entries ORDER BY id")
    op.execute("DROP TRIGGER IF EXISTS log_fts_delete")
    op.execute("DROP TABLE log_entries")
    op.execute("ALTER TABLE log_entries_new RENAME TO log_entries")
    for statement in _INDEXES:
        op.execute(statement)


def upgrade():
    if op.get_bind().dialect.name == "sqlite":
        _copy("BIGINT", _TO_MS)


def downgrade():
    if op.get_bind().dialect.name == "sqlite":
        _copy("DATETIME", _FROM_MS)
