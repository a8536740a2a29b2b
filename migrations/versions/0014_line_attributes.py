"""lines keep their structured fields: attributes, trace and span ids

Revision ID: 0014_line_attributes
Revises: 0013_service_index
Create Date: 2026-12-06 09:10:00

Three nullable columns (a line without them costs nothing more: SQLite stores a trailing
NULL in no bytes, PostgreSQL in its null bitmap). ``attributes`` is JSON text on SQLite
and JSONB on PostgreSQL, where a partial GIN index (``jsonb_path_ops``) answers
``attr.KEY=VALUE`` filters. SQLite's search index gets a table of attribute tokens per
generation, ``log_attr_<g>`` (``storage.index_behind``), made here for the generations
that exist. Trace ids have a partial index on both.
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = '0014_line_attributes'
down_revision = '0013_service_index'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("log_entries", recreate="never") as batch:
        batch.add_column(sa.Column("attributes", sa.JSON().with_variant(JSONB(), "postgresql"),
                                   nullable=True))
        batch.add_column(sa.Column("trace_id", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("span_id", sa.LargeBinary(), nullable=True))
    op.execute("CREATE INDEX ix_log_trace_id ON log_entries (trace_id) "
               "WHERE trace_id IS NOT NULL")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("CREATE INDEX ix_log_attributes ON log_entries "
                   "USING gin (attributes jsonb_path_ops) WHERE attributes IS NOT NULL")
        return
    for g in _generations(bind):  # (a frozen copy of storage._ATTR_DDL)
        op.execute(f"CREATE TABLE IF NOT EXISTS log_attr_{g} (token INTEGER NOT NULL, "
                   "block INTEGER NOT NULL, PRIMARY KEY (token, block)) WITHOUT ROWID")


def _generations(bind):
    names = [r[0] for r in bind.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'log_fts_[0-9]*'")]
    return [int(n[len("log_fts_"):]) for n in names if n[len("log_fts_"):].isdigit()]


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP INDEX ix_log_attributes")
    else:
        for g in _generations(bind):
            op.execute(f"DROP TABLE IF EXISTS log_attr_{g}")
    op.execute("DROP INDEX ix_log_trace_id")
    with op.batch_alter_table("log_entries", recreate="never") as batch:
        batch.drop_column("span_id")
        batch.drop_column("trace_id")
        batch.drop_column("attributes")
