"""line counters keep each job's first and last line id

Revision ID: 0006_bounds
Revises: 0005_volume
Create Date: 2026-11-30 07:00:00

``line_counters.first_id`` / ``last_id``: the first and last line id of the job (or the
service log) the row counts, set by the write path in the statement that already bumps
the row. A job's tail read on PostgreSQL is bounded by them, so that an older job's tail
cannot become a primary-key scan from the table's newest line. Existing rows are filled
from the lines here (two index probes per job).
"""
from alembic import op
import sqlalchemy as sa

revision = '0006_bounds'
down_revision = '0005_volume'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('line_counters') as batch:
        batch.add_column(sa.Column('first_id', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('last_id', sa.BigInteger(), nullable=True))
    for bound, order in (("first_id", "ASC"), ("last_id", "DESC")):
        op.execute(
            f"UPDATE line_counters SET {bound} = (SELECT id FROM log_entries "
            f"WHERE log_entries.job_id = line_counters.key ORDER BY job_id {order}, id {order} "
            f"LIMIT 1) WHERE key NOT IN ('__id__', '__search__', 'service')")
        op.execute(
            f"UPDATE line_counters SET {bound} = (SELECT id FROM log_entries "
            f"WHERE log_entries.job_id IS NULL ORDER BY job_id {order}, id {order} LIMIT 1) "
            f"WHERE key = 'service'")


def downgrade():
    with op.batch_alter_table('line_counters') as batch:
        batch.drop_column('last_id')
        batch.drop_column('first_id')
