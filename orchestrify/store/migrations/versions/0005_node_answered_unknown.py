"""Nodes remember whether their registration answered ``known: false``.

Registration is idempotent: an agent sends the node id and node token it picked (or
saved) every time, so a retry whose first answer was lost finds the node that first try
made. ``answered_unknown`` lets that retry be answered as the first try was (``known:
false``, the agent keeps its containers as orphans) until the node's first heartbeat.
Not null, false for the nodes stored before (they were all heard from, or answered as
known on their next registration anyway).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Only when missing, as 0004 does (a store whose revision was lost has it already).
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("nodes")}
    if "answered_unknown" not in columns:
        op.add_column(
            "nodes",
            sa.Column("answered_unknown", sa.Boolean(), nullable=False, server_default=sa.false()),
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("answered_unknown")
