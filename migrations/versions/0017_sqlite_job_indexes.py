"""SQLite: the job indexes without their trailing id

Revision ID: 0017_sqlite_job_indexes
Revises: 0016_access_keys
Create Date: 2026-12-06 13:00:00

Every entry of a SQLite index ends with the row's rowid, which is the line's id: an index
on ``(job_seq, id)`` holds the id twice, in the same order as one on ``(job_seq)``. The
planner reads the shorter ones alike (a job's tail, "after id X", one step's lines, its
errors: ``SEARCH ... USING INDEX ix_log_job (job_seq=? AND rowid<?)``, no sort), and they
are 8.8 bytes a line smaller (``bench/storage.py``: 158.2 bytes a line before). PostgreSQL
keeps ``(job_seq, id)``: its index entries do not carry the id.

A large database rebuilds the two indexes once, at the first start after the upgrade.
"""
from alembic import op

revision = '0017_sqlite_job_indexes'
down_revision = '0016_access_keys'
branch_labels = None
depends_on = None

_LEVEL = "WHERE level >= 30"   # models.RARE_LEVEL, as 0010 made it


def upgrade():
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP INDEX ix_log_job_id")
    op.execute("CREATE INDEX ix_log_job ON log_entries (job_seq)")
    op.execute("DROP INDEX ix_log_job_step_id")
    op.execute("CREATE INDEX ix_log_job_step ON log_entries (job_seq, step_name)")
    op.execute("DROP INDEX ix_log_job_level_id")
    op.execute(f"CREATE INDEX ix_log_job_level ON log_entries (job_seq, level) {_LEVEL}")


def downgrade():
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP INDEX ix_log_job")
    op.execute("CREATE INDEX ix_log_job_id ON log_entries (job_seq, id)")
    op.execute("DROP INDEX ix_log_job_step")
    op.execute("CREATE INDEX ix_log_job_step_id ON log_entries (job_seq, step_name, id)")
    op.execute("DROP INDEX ix_log_job_level")
    op.execute(f"CREATE INDEX ix_log_job_level_id ON log_entries (job_seq, level, id) {_LEVEL}")
