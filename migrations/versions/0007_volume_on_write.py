"""log volume kept by the write path: log_volume_marks goes, log_volume is counted afresh

Revision ID: 0007_volume_write
Revises: 0006_bounds
Create Date: 2026-12-01 09:00:00

``storage.write_lines`` now counts every batch into ``log_volume`` in the transaction that
stores it (and retention takes deleted lines off), so the histogram no longer rolls lines
up on its first request and needs no marks. A database rolled up only in part (or not at
all) gets its counts here from the lines: one ``GROUP BY`` over them.
"""
from alembic import op
import sqlalchemy as sa

revision = '0007_volume_write'
down_revision = '0006_bounds'
branch_labels = None
depends_on = None


def upgrade():
    pg = op.get_bind().dialect.name == "postgresql"
    second = ("CAST(floor(extract(epoch FROM timestamp)) AS BIGINT)" if pg
              else "CAST(strftime('%s', timestamp) AS INTEGER)")
    op.execute("DELETE FROM log_volume")
    op.execute(
        "INSERT INTO log_volume (key, step_name, level, second, count) "
        f"SELECT COALESCE(job_id, 'service'), COALESCE(step_name, ''), level, {second}, "
        f"count(*) FROM log_entries GROUP BY job_id, step_name, level, {second}")
    op.drop_table('log_volume_marks')


def downgrade():
    op.create_table('log_volume_marks',
    sa.Column('key', sa.String(length=32), nullable=False),
    sa.Column('last_id', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    # log_volume holds every line: the lazy roll-up carries on after them
    op.execute("INSERT INTO log_volume_marks (key, last_id) SELECT COALESCE(job_id, 'service'), "
               "max(id) FROM log_entries GROUP BY job_id")
