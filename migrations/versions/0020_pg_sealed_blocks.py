"""PostgreSQL: a finished job's plain lines kept as compressed blocks

Revision ID: 0020_pg_sealed_blocks
Revises: 0019_pg_step_key
Create Date: 2026-12-07 02:00:00

A line kept as a row costs PostgreSQL about 255 bytes with its B-tree entries (the row
and its line pointer alone 162, ``bench/storage.py``). ``log_blocks`` keeps up to 256
lines of one job as one row of arrays (ids, step names, levels, messages, times, line
numbers, sources), which PostgreSQL compresses itself: 27 bytes a line
(``bench/sealed.py``). The sealer (``quaero.sealing``, in the pruner's pass) moves there
the lines of jobs finished a while ago that have nothing an index of the rows is needed
for: below warn, no attributes, no trace, already in the search index. Readers read the
blocks beside the rows (``queries.on_lines``); ``steps`` (the block's step names, ""
for none) and ``max_level`` let a step's or a level's reader skip blocks without it. A
job's blocks go with it.
"""
from alembic import op

revision = '0020_pg_sealed_blocks'
down_revision = '0019_pg_step_key'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE TABLE IF NOT EXISTS log_blocks ("
               "job_seq bigint NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE, "
               "first_id bigint NOT NULL, last_id bigint NOT NULL, n integer NOT NULL, "
               "max_level smallint NOT NULL, "
               "steps text[] NOT NULL, ids bigint[] NOT NULL, step_names text[] NOT NULL, "
               "levels smallint[] NOT NULL, messages text[] NOT NULL, "
               "timestamps timestamp[] NOT NULL, line_numbers integer[] NOT NULL, "
               "sources text[] NOT NULL, PRIMARY KEY (job_seq, last_id))")
    op.execute("CREATE INDEX IF NOT EXISTS ix_log_blocks_last_id ON log_blocks (last_id)")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("INSERT INTO log_entries (id, job_seq, step_name, level, message, timestamp, "
               "line_number, source) SELECT u.* FROM log_blocks b, LATERAL unnest("
               "b.ids, array_fill(b.job_seq, ARRAY[b.n]), b.step_names, b.levels, b.messages, "
               "b.timestamps, b.line_numbers, b.sources) AS u")
    op.execute("DROP TABLE IF EXISTS log_blocks")
    op.execute("DELETE FROM line_counters WHERE key = '__sealed__'")  # (quaero.sealing)
