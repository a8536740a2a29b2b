"""the (job, level, id) index holds only warn and error lines

Revision ID: 0010_level_partial
Revises: 0009_search_lower
Create Date: 2026-12-06 06:30:00

Only a filter for ``warn`` or ``error`` and above reads this index ("info and above", the
default, matches nearly every line and reads the job's (job, id) index, see
``queries._where``). Holding every line, it cost 35 bytes per line on SQLite and 85 on
PostgreSQL (``bench/storage.py``); holding the rare levels only, it costs what they are.
"""
from alembic import op

revision = '0010_level_partial'
down_revision = '0009_search_lower'
branch_labels = None
depends_on = None


def upgrade():
    op.drop_index("ix_log_job_level_id", table_name="log_entries")
    op.execute("CREATE INDEX ix_log_job_level_id ON log_entries (job_id, level, id) "
               "WHERE level >= 30")


def downgrade():
    op.drop_index("ix_log_job_level_id", table_name="log_entries")
    op.create_index("ix_log_job_level_id", "log_entries", ["job_id", "level", "id"])
