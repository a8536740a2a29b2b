"""SQLite: the step index holds only lines that have a step

Revision ID: 0021_sqlite_step_index_partial
Revises: 0020_pg_sealed_blocks
Create Date: 2026-12-07 05:00:00

``ix_log_job_step`` serves "the lines of step S of job J" (``step_name = ?``, which a
partial index ``WHERE step_name IS NOT NULL`` serves alike). A line without a step (most
lines a producer posts to a job, every service line) had an entry nobody reads: an
eighth of the cost of writing it (``bench/ingest.py``'s floor, 5.8 to 5.2 µs a line) and
its bytes. PostgreSQL's step index is ``ix_log_step_key`` (0019), unchanged.

A large database rebuilds the index once, at the first start after the upgrade.

The same release makes the search index's new generation tables case-sensitive, with
documents lowered as searches fold them (``searchindex._FTS_DDL``; no migration: a table
made before folds case itself and takes lowered documents as well). An older release
would write its documents as sent into such a table and miss their upper-case lines, so
the downgrade drops those tables, with their attribute tables, and sets the index's mark
back to before their first id: the older release indexes those lines again.
"""
from alembic import op

GENERATION = 1 << 20  # searchindex.GENERATION: the ids of a search index table

revision = '0021_sqlite_step_index_partial'
down_revision = '0020_pg_sealed_blocks'
branch_labels = None
depends_on = None


def _rebuild(where):
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP INDEX ix_log_job_step")
    op.execute(f"CREATE INDEX ix_log_job_step ON log_entries (job_seq, step_name){where}")


def upgrade():
    _rebuild(" WHERE step_name IS NOT NULL")


def downgrade():
    _rebuild("")
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    made = [int(name[len("log_fts_"):]) for name, sql in bind.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name GLOB 'log_fts_[0-9]*'")
        if name[len("log_fts_"):].isdigit() and "case_sensitive 1" in sql]
    if not made:
        return
    for g in made:
        op.execute(f"DROP TABLE log_fts_{g}")
        op.execute(f"DROP TABLE IF EXISTS log_attr_{g}")
    first = min(made) * GENERATION  # (a multiple of the index's block: a block's end before)
    op.execute(f"UPDATE line_counters SET value = min(value, {first - 1}) "
               "WHERE key = '__search__'")
