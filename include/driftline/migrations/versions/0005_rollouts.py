"""Canary rollouts: one row per rollout, its step, share and the change in flight.

A rollout is open while ``ended_at`` is null; a partial unique index keeps at most one open
rollout per model. ``pending_action`` names a change that spans this store and MLflow (the
``candidate`` alias, the ``rollout_share`` tag) while it is in flight.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("candidate_version", sa.String(32), nullable=False),
        sa.Column("champion_version", sa.String(32), nullable=True),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("step_minutes", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("share", sa.Float, nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pending_action", sa.String(32), nullable=True),
        sa.Column("pending", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("dag_id", sa.String(250), nullable=True),
        sa.Column("run_id", sa.String(250), nullable=True),
    )
    op.create_index(
        "ux_rollouts_open_per_model",
        "rollouts",
        ["model"],
        unique=True,
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ux_rollouts_open_per_model", table_name="rollouts")
    op.drop_table("rollouts")
