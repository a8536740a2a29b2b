"""log lines name the program that sent them: log_entries.source

Revision ID: 0003_source
Revises: 0002_search
Create Date: 2026-11-27 11:00:00

Nullable, no default: existing lines have no source. Plain ``ADD COLUMN`` on both
databases (no table rebuild), so the SQLite FTS table over ``log_entries`` is untouched.
"""
from alembic import op
import sqlalchemy as sa

revision = '0003_source'
down_revision = '0002_search'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('log_entries', sa.Column('source', sa.String(length=200), nullable=True))


def downgrade():
    with op.batch_alter_table('log_entries') as batch_op:
        batch_op.drop_column('source')
