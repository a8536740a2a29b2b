"""runner heartbeats and job leases in their own tables (were prefixed line_counters rows)

Revision ID: 0004_leases
Revises: 0003_source
"""
from alembic import op
import sqlalchemy as sa


revision = '0004_leases'
down_revision = '0003_source'
branch_labels = None
depends_on = None

counters = sa.table('line_counters', sa.column('key', sa.String), sa.column('value', sa.BigInteger))


def upgrade():
    op.create_table('runner_heartbeats',
    sa.Column('runner_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('beat_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('runner_id')
    )
    op.create_table('job_leases',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('runner_id', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id')
    )
    # ``runner:<hex N>`` -> beat and ``lease:<job id>`` -> N move to their tables.
    conn = op.get_bind()
    jobs = set(conn.execute(sa.text("SELECT id FROM jobs")).scalars())
    rows = conn.execute(sa.select(counters.c.key, counters.c.value).where(
        counters.c.key.like('runner:%') | counters.c.key.like('lease:%'))).all()
    beats = [{'runner_id': int(k[7:], 16), 'beat_ms': v} for k, v in rows if k.startswith('runner:')]
    leases = [{'job_id': k[6:], 'runner_id': v} for k, v in rows
              if k.startswith('lease:') and k[6:] in jobs]
    if beats:
        op.bulk_insert(sa.table('runner_heartbeats', sa.column('runner_id', sa.BigInteger),
                                sa.column('beat_ms', sa.BigInteger)), beats)
    if leases:
        op.bulk_insert(sa.table('job_leases', sa.column('job_id', sa.String),
                                sa.column('runner_id', sa.BigInteger)), leases)
    conn.execute(counters.delete().where(
        counters.c.key.like('runner:%') | counters.c.key.like('lease:%')))


def downgrade():
    conn = op.get_bind()
    rows = [{'key': f'runner:{n:x}', 'value': v} for n, v in conn.execute(
        sa.text("SELECT runner_id, beat_ms FROM runner_heartbeats")).all()]
    rows += [{'key': f'lease:{j}', 'value': n} for j, n in conn.execute(
        sa.text("SELECT job_id, runner_id FROM job_leases")).all()]
    if rows:
        op.bulk_insert(counters, rows)
    op.drop_table('job_leases')
    op.drop_table('runner_heartbeats')
