"""Jobs record the controller that runs them, and the status ``lost``.

With several controllers on one database, the leader runs the jobs: ``controller`` is
the id of the controller that started a job (a new leader marks the jobs another
controller left running ``lost``; the job's private data dir is on that controller's
disk), and ``cancel_requested_at`` carries a cancel asked of any controller to the one
running the job. ``status`` is a plain string column (no CHECK constraint), so ``lost``
needs no schema change. Both columns are nullable: jobs stored before have neither.

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # The first revision, adopting a store made before migrations, adds every column the
    # models have (these included): each is added here only when missing.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("jobs")}
    if "controller" not in columns:
        op.add_column("jobs", sa.Column("controller", sa.String(length=255), nullable=True))
    if "cancel_requested_at" not in columns:
        op.add_column(
            "jobs", sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("cancel_requested_at")
        batch_op.drop_column("controller")
