"""Alert receipts get a lane, and the index the fair decision order reads them by.

Decisions are scheduled round-robin over lanes (a service, else a node, else an alert
name: ``orchestrify.store.alerts.alert_lane``), in arrival order within one. A store the
build just before migrations made may already have both (it added them itself at
start), so each is added only when missing. Receipts stored without a lane form one
lane of their own.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

INDEX = "ix_alert_receipts_pending_lane"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    columns = {c["name"] for c in inspector.get_columns("alert_receipts")}
    indexes = {i["name"] for i in inspector.get_indexes("alert_receipts")}
    if "lane" not in columns:
        op.add_column("alert_receipts", sa.Column("lane", sa.String(length=300), nullable=True))
    if INDEX not in indexes:
        op.create_index(INDEX, "alert_receipts", ["processed_at", "lane", "id"], unique=False)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="alert_receipts")
    with op.batch_alter_table("alert_receipts", schema=None) as batch_op:
        batch_op.drop_column("lane")
