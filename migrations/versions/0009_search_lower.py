"""search folds case as Python's str.lower on PostgreSQL too

Revision ID: 0009_search_lower
Revises: 0008_idempotency
Create Date: 2026-12-06 04:00:00

``q`` matches a line when ``q.lower()`` is in ``message.lower()``. SQLite tests exactly
that (``quaero_contains``). PostgreSQL's ILIKE folded by the database's own locale instead:
only ASCII under ``LC_CTYPE C`` (``école`` did not find ``ÉCOLE``), one letter for one under
a libc UTF-8 locale (``İ`` to ``i``, ``Σ`` always to ``σ``, where str.lower gives ``i̇`` and
a final ``ς``). A search now compares ``lower(message COLLATE "und-x-icu")`` with
``q.lower()``: ICU's root-locale lowercase is Unicode's full lowercase mapping with its
final-sigma rule, the one str.lower implements, whatever the database's locale. The
trigram index is on that expression; the one on ``message`` goes (no query uses it).
"""
import sqlalchemy as sa
from alembic import op

revision = '0009_search_lower'
down_revision = '0008_idempotency'
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if not bind.execute(sa.text("SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu'")).scalar():
        raise RuntimeError('Quaero needs PostgreSQL with ICU (the collation "und-x-icu") to fold '
                           "case in searches as str.lower does; this server was built without it")
    op.execute('CREATE INDEX IF NOT EXISTS ix_log_message_lower_trgm ON log_entries '
               'USING gin ((lower(message COLLATE "und-x-icu")) gin_trgm_ops)')
    op.execute("DROP INDEX IF EXISTS ix_log_message_trgm")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE INDEX IF NOT EXISTS ix_log_message_trgm ON log_entries "
               "USING gin (message gin_trgm_ops)")
    op.execute("DROP INDEX IF EXISTS ix_log_message_lower_trgm")
