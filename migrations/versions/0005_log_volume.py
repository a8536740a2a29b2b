"""log volume: log_volume (lines per job, step, level and second) and log_volume_marks

Revision ID: 0005_volume
Revises: 0004_leases
Create Date: 2026-11-28 10:00:00

``GET /api/logs/histogram`` rolls lines up into ``log_volume`` when asked (up to the
job's mark in ``log_volume_marks``) and counts its buckets from those rows, not from the
lines. Existing databases start with no roll-up: the first request makes it.
"""
from alembic import op
import sqlalchemy as sa

revision = '0005_volume'
down_revision = '0004_leases'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('log_volume',
    sa.Column('key', sa.String(length=32), nullable=False),
    sa.Column('step_name', sa.String(length=200), nullable=False),
    sa.Column('level', sa.SmallInteger(), nullable=False),
    sa.Column('second', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('key', 'step_name', 'level', 'second')
    )
    op.create_table('log_volume_marks',
    sa.Column('key', sa.String(length=32), nullable=False),
    sa.Column('last_id', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )


def downgrade():
    op.drop_table('log_volume_marks')
    op.drop_table('log_volume')
