"""Drift events: server defaults, so an outside writer inserts only model, source, payload.

The production profile's outside writer role may INSERT those three columns and nothing else
(``driftline events grant-writer``); status starts ``new`` and the timestamps are the
database's clock.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("drift_events") as table:
        table.alter_column("status", server_default="new", existing_type=sa.String(16))
        for column in ("created_at", "updated_at"):
            table.alter_column(
                column,
                server_default=sa.func.current_timestamp(),
                existing_type=sa.DateTime(timezone=True),
                existing_nullable=False,
            )


def downgrade() -> None:
    with op.batch_alter_table("drift_events") as table:
        for column in ("status", "created_at", "updated_at"):
            table.alter_column(column, server_default=None)
