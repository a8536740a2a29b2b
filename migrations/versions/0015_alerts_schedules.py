"""alerts and schedules: the evaluator's lease and checkpoint, events and deliveries,
claimed schedule ticks

Revision ID: 0015_alerts_schedules
Revises: 0014_line_attributes
Create Date: 2026-12-06 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0015_alerts_schedules'
down_revision = '0014_line_attributes'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "alert_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.BigInteger(), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False))
    op.create_table(
        "alert_state",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False))
    op.create_table(
        "alert_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(400), nullable=False, unique=True),
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False))
    op.create_index("ix_alert_events_rule", "alert_events", ["rule", "id"])
    op.create_index("ix_alert_events_created_at", "alert_events", ["created_at"])
    op.create_table(
        "alert_deliveries",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", BigId, sa.ForeignKey("alert_events.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("destination", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("event_id", "destination"))
    op.create_index("ix_alert_deliveries_status", "alert_deliveries", ["status", "next_ms"])
    op.create_table(
        "schedule_ticks",
        sa.Column("definition", sa.String(200), primary_key=True),
        sa.Column("tick_at", sa.DateTime(), primary_key=True),
        sa.Column("schedule", sa.String(300), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("claimed_at", sa.DateTime(), nullable=False))


def downgrade():
    op.drop_table("schedule_ticks")
    op.drop_index("ix_alert_deliveries_status", "alert_deliveries")
    op.drop_table("alert_deliveries")
    op.drop_index("ix_alert_events_created_at", "alert_events")
    op.drop_index("ix_alert_events_rule", "alert_events")
    op.drop_table("alert_events")
    op.drop_table("alert_state")
    op.drop_table("alert_leases")
