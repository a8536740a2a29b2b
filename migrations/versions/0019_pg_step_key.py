"""PostgreSQL: a step's lines indexed by one bigint for (job, step) and the id

Revision ID: 0019_pg_step_key
Revises: 0018_pg_search_blocks
Create Date: 2026-12-06 23:30:00

``ix_log_job_step_id`` on ``(job_seq, step_name, id)`` took 72 bytes a line
(``bench/storage.py``): its entries are wider than two bigints, the most PostgreSQL's
B-tree takes for its "split after the new item" choice, so when a job's steps are
written one after another (each step's lines go into the middle of the job's entries)
every page split leaves two half-full pages. ``ix_log_step_key`` indexes
``models.step_key(job_seq, step_name)`` (the job's seq in the high bits, 20 bits of
``hashtext(step_name)`` in the low) and the id: two bigints, pages filled as the job
index's are, 33 bytes a line. Readers of a step ask for its key and its name (two steps
of a job may share a key).

The planner multiplies the two conditions' estimates (a step of 200,000 lines guessed at
110) and near a page's size prefers to collect and sort every line of the step (2.3 s for
those 200,000) to reading the index backwards to the page's end (0.2 ms). Extended
statistics (PostgreSQL 14 and later) tell it that the key decides the name. Neither the
index nor the statistics mean anything to the planner before ``ANALYZE``, which this
migration runs (a sample of the table: seconds); autovacuum keeps them.

The key holds a job's seq whole below 2**43 (jobs are numbered from 1), which readers
rely on to ask for the key alone; a check on ``jobs.seq`` makes that a rule.

A large database builds the new index once, at the first start after the upgrade.
"""
from alembic import op

revision = '0019_pg_step_key'
down_revision = '0018_pg_search_blocks'
branch_labels = None
depends_on = None

# models.step_key, as SQLAlchemy renders it (the planner matches the expression)
_KEY = "(((job_seq & 8796093022207) << 20) | (hashtext(step_name) & 1048575))"


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"CREATE INDEX IF NOT EXISTS ix_log_step_key ON log_entries ({_KEY}, id)")
    op.execute("DROP INDEX IF EXISTS ix_log_job_step_id")
    op.execute("ALTER TABLE jobs ADD CONSTRAINT ck_jobs_seq_in_step_key "
               "CHECK (seq < 8796093022208)")
    version = op.get_bind().exec_driver_sql("SHOW server_version_num").scalar()
    if int(version) >= 140000:  # statistics of an expression
        op.execute("CREATE STATISTICS IF NOT EXISTS st_log_step_key (dependencies) "
                   f"ON step_name, ({_KEY}) FROM log_entries")
    op.execute("ANALYZE log_entries")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE INDEX IF NOT EXISTS ix_log_job_step_id ON log_entries "
               "(job_seq, step_name, id)")
    op.execute("DROP STATISTICS IF EXISTS st_log_step_key")
    op.execute("ALTER TABLE jobs DROP CONSTRAINT IF EXISTS ck_jobs_seq_in_step_key")
    op.execute("DROP INDEX IF EXISTS ix_log_step_key")
