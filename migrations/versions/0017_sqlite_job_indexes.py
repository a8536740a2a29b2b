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

# (the name with the id, the name without it, the columns after job_seq, the condition:
# models.RARE_LEVEL, as 0010 made it)
_INDEXES = (("ix_log_job_id", "ix_log_job", "", ""),
            ("ix_log_job_step_id", "ix_log_job_step", ", step_name", ""),
            ("ix_log_job_level_id", "ix_log_job_level", ", level", " WHERE level >= 30"))


def _rebuild(drop_id):
    if op.get_bind().dialect.name != "sqlite":
        return
    for with_id, without, columns, where in _INDEXES:
        old, new, id_column = (with_id, without, "") if drop_id else (without, with_id, ", id")
        op.execute(f"DROP INDEX {old}")
        op.execute(f"CREATE INDEX {new} ON log_entries (job_seq{columns}{id_column}){where}")


def upgrade():
    _rebuild(drop_id=True)


def downgrade():
    _rebuild(drop_id=False)
