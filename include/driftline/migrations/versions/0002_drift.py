"""Drift reports and drift events.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drift_reports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(128), nullable=False, index=True),
        sa.Column("champion_version", sa.String(32), nullable=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("current_rows", sa.Integer, nullable=False),
        sa.Column("reference_rows", sa.Integer, nullable=False),
        sa.Column("share_drifted", sa.Float, nullable=False),
        sa.Column("columns", sa.JSON, nullable=False),
        sa.Column("prediction", sa.JSON, nullable=False),
        sa.Column("performance", sa.JSON, nullable=False),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("reasons", sa.JSON, nullable=False),
        sa.Column("report_uri", sa.Text, nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=True),
        sa.Column("run_id", sa.String(250), nullable=True),
    )
    op.create_table(
        "drift_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("report_id", sa.Integer, sa.ForeignKey("drift_reports.id"), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("consumed_by_dag_id", sa.String(250), nullable=True),
        sa.Column("consumed_by_run_id", sa.String(250), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_drift_events_model_status", "drift_events", ["model", "status"])


def downgrade() -> None:
    op.drop_index("ix_drift_events_model_status", table_name="drift_events")
    op.drop_table("drift_events")
    op.drop_table("drift_reports")
