"""the service log's lines have an index of their own

Revision ID: 0013_service_index
Revises: 0012_search_blocks
Create Date: 2026-12-06 07:00:00

PostgreSQL read the service log's tail (``job_seq IS NULL``, newest first: the service
panel on every page) backwards along the primary key, through every job's lines after
it: ``IS NULL`` is not an equality its planner orders the (job, id) index by. With 2 % of a
million lines in the service log that took 184 ms (``bench/storage.py``). A partial index
of the service lines' ids reads them in order: 0.4 ms, at 2 % of the lines' index bytes.
"""
from alembic import op

revision = '0013_service_index'
down_revision = '0012_search_blocks'
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE INDEX ix_log_service_id ON log_entries (id) WHERE job_seq IS NULL")


def downgrade():
    op.execute("DROP INDEX ix_log_service_id")
