"""idempotency keys of POST /api/logs

Revision ID: 0008_idempotency
Revises: 0007_volume_write
Create Date: 2026-12-06 03:00:00

A request's ``Idempotency-Key`` is recorded with its answer in the transaction that stores
its lines (``ingest.write_lines``' caller), so a retry is answered from the record on any
worker or host, and after a restart. Records older than a day are removed by the pruner.
"""
from alembic import op
import sqlalchemy as sa

revision = '0008_idempotency'
down_revision = '0007_volume_write'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'idempotency_keys',
        sa.Column('key', sa.String(length=128), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('status', sa.SmallInteger(), nullable=False),
        sa.Column('response', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('key'),
    )
    op.create_index('ix_idempotency_keys_created_at', 'idempotency_keys', ['created_at'])


def downgrade():
    op.drop_index('ix_idempotency_keys_created_at', table_name='idempotency_keys')
    op.drop_table('idempotency_keys')
