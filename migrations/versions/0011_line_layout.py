"""a line refers to its job by number; SQLite keeps its timestamp as milliseconds

Revision ID: 0011_line_layout
Revises: 0010_level_partial
Create Date: 2026-12-06 06:45:00

Bytes per stored line (``bench/storage.py``):

- ``jobs.seq``: each job gets a number, in creation order (``line_counters['__jobs__']``
  hands out the next ones). A line keeps its job as that number (``log_entries.job_seq``)
  instead of the job's 16-character id: 1 to 3 bytes where the id took 17 in the row and
  in each of its indexes. The job's counter row carries it too (``line_counters.job_seq``),
  so the write path learns it from the statement it already runs.
- SQLite: the timestamp as whole milliseconds since 1970 (``models.EpochMillis``), 6 bytes
  where the text form (``2026-12-06 05:43:31.123456``) took 26. Every answer already wrote
  milliseconds. PostgreSQL keeps its 8-byte ``timestamp``.

SQLite cannot change a column: the table is copied with the same ids (the search index
points at them), then its indexes and the search index's trigger are made again.
PostgreSQL rewrites the table in place (an UPDATE of every row): its old row versions are
space that autovacuum lets new lines reuse; ``VACUUM FULL log_entries`` gives it back to
the disk at once, if that matters.
"""
from alembic import op

revision = '0011_line_layout'
down_revision = '0010_level_partial'
branch_labels = None
depends_on = None

_SQLITE_TABLE = """CREATE TABLE log_entries_new (
	id INTEGER NOT NULL,
	{job} {job_type},
	step_name VARCHAR(200),
	level SMALLINT NOT NULL,
	message TEXT NOT NULL,
	timestamp {ts_type} NOT NULL,
	line_number INTEGER NOT NULL,
	source VARCHAR(200),
	PRIMARY KEY (id),
	FOREIGN KEY({job}) REFERENCES jobs ({parent}) ON DELETE CASCADE
)"""
_INDEXES = (
    "CREATE INDEX ix_log_job_id ON log_entries ({job}, id)",
    "CREATE INDEX ix_log_job_step_id ON log_entries ({job}, step_name, id)",
    "CREATE INDEX ix_log_job_level_id ON log_entries ({job}, level, id) WHERE level >= 30",
)
_FTS_TRIGGER = (
    "CREATE TRIGGER log_fts_delete AFTER DELETE ON log_entries "
    "WHEN old.id <= (SELECT value FROM line_counters WHERE key = '__search__') BEGIN "
    "INSERT INTO log_fts(log_fts, rowid, message) VALUES ('delete', old.id, old.message); END")
# 'YYYY-MM-DD HH:MM:SS[.ffffff]' -> milliseconds, exactly (julianday's float could be 1 off)
_TO_MS = ("CAST(strftime('%s', l.timestamp) AS INTEGER) * 1000 "
          "+ CAST(substr(l.timestamp || '.000', 21, 3) AS INTEGER)")
_FROM_MS = ("strftime('%Y-%m-%d %H:%M:%S', l.timestamp / 1000, 'unixepoch') "
            "|| printf('.%03d000', l.timestamp % 1000)")


def _sqlite_copy(job, job_type, parent, ts_type, job_expr, join, ts_expr):
    op.execute(_SQLITE_TABLE.format(job=job, job_type=job_type, parent=parent, ts_type=ts_type))
    op.execute(f"INSERT INTO log_entries_new (id, {job}, step_name, level, message, timestamp, "
               f"line_number, source) SELECT l.id, {job_expr}, l.step_name, l.level, l.message, "
               f"{ts_expr}, l.line_number, l.source FROM log_entries l {join} ORDER BY l.id")
    op.execute("DROP TRIGGER IF EXISTS log_fts_delete")
    op.execute("DROP TABLE log_entries")
    op.execute("ALTER TABLE log_entries_new RENAME TO log_entries")
    for statement in _INDEXES:
        op.execute(statement.format(job=job))
    op.execute(_FTS_TRIGGER)


def upgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    # every job's number, in creation order
    op.execute("ALTER TABLE jobs ADD COLUMN seq BIGINT" + (" NOT NULL DEFAULT 0" if sqlite else ""))
    op.execute("UPDATE jobs SET seq = t.n FROM (SELECT id, row_number() OVER "
               "(ORDER BY created_at, id) AS n FROM jobs) AS t WHERE t.id = jobs.id")
    if not sqlite:
        op.execute("ALTER TABLE jobs ALTER COLUMN seq SET NOT NULL")
    op.execute("CREATE UNIQUE INDEX ix_jobs_seq ON jobs (seq)")
    op.execute("ALTER TABLE line_counters ADD COLUMN job_seq BIGINT")
    op.execute("UPDATE line_counters SET job_seq = jobs.seq FROM jobs "
               "WHERE jobs.id = line_counters.key")
    if sqlite:
        _sqlite_copy("job_seq", "INTEGER", "seq", "BIGINT", "j.seq",
                     "LEFT JOIN jobs j ON j.id = l.job_id", _TO_MS)
        return
    op.execute("ALTER TABLE log_entries ADD COLUMN job_seq BIGINT")
    op.execute("UPDATE log_entries SET job_seq = jobs.seq FROM jobs "
               "WHERE jobs.id = log_entries.job_id")
    for name in ("ix_log_job_id", "ix_log_job_step_id", "ix_log_job_level_id"):
        op.execute(f"DROP INDEX {name}")
    op.execute("ALTER TABLE log_entries DROP COLUMN job_id")  # and its foreign key
    op.execute("ALTER TABLE log_entries ADD FOREIGN KEY (job_seq) REFERENCES jobs (seq) "
               "ON DELETE CASCADE")
    for statement in _INDEXES:
        op.execute(statement.format(job="job_seq"))


def downgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        _sqlite_copy("job_id", "VARCHAR(32)", "id", "DATETIME", "j.id",
                     "LEFT JOIN jobs j ON j.seq = l.job_seq", _FROM_MS)
    else:
        op.execute("ALTER TABLE log_entries ADD COLUMN job_id VARCHAR(32)")
        op.execute("UPDATE log_entries SET job_id = jobs.id FROM jobs "
                   "WHERE jobs.seq = log_entries.job_seq")
        for name in ("ix_log_job_id", "ix_log_job_step_id", "ix_log_job_level_id"):
            op.execute(f"DROP INDEX {name}")
        op.execute("ALTER TABLE log_entries DROP COLUMN job_seq")
        op.execute("ALTER TABLE log_entries ADD FOREIGN KEY (job_id) REFERENCES jobs (id) "
                   "ON DELETE CASCADE")
        for statement in _INDEXES:
            op.execute(statement.format(job="job_id"))
    op.execute("ALTER TABLE line_counters DROP COLUMN job_seq")
    op.execute("DROP INDEX ix_jobs_seq")
    op.execute("ALTER TABLE jobs DROP COLUMN seq")
    op.execute("DELETE FROM line_counters WHERE key = '__jobs__'")
