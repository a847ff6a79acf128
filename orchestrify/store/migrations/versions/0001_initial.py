"""The schema of the last build without migrations (tables.py and alert_tables.py as
they were then), and the adoption of a store that build, or an older one, made.

A store made before migrations has no ``alembic_version`` table, but has tables that
``create_all`` made, some perhaps from a build older still that lacked columns added
since. So this revision creates only the tables that are missing, adds the columns an
existing table lacks, and says what the replicas of a store from before rolling updates
run (their service's generation and container fields, which is what that build handed
them). Every row stays. On an empty database it simply creates the schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# 64 bits on PostgreSQL, SQLite's INTEGER (64 bits already) there (tables.Int64).
INT64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# What a replica runs: the service spec's container fields (models.CONTAINER_FIELDS as
# of this revision; frozen here so that a later change there cannot change this step).
CONTAINER_FIELDS = ("image", "env", "port", "host_port", "health_path", "memory_mb", "cpus")

# Columns added to tables after they first shipped (the old ``ADDED_COLUMNS``): a store
# of an older build lacks them. Nullable, as SQLite's ADD COLUMN needs; the two replica
# columns become NOT NULL once filled in.
ADDED_COLUMNS: dict[str, list[Callable[[], sa.Column]]] = {
    "services": [
        lambda: sa.Column("paused_generation", sa.Integer(), nullable=True),
        lambda: sa.Column("pause_reason", sa.Text(), nullable=True),
        lambda: sa.Column("previous_spec", sa.JSON(), nullable=True),
        lambda: sa.Column("previous_generation", sa.Integer(), nullable=True),
    ],
    "replicas": [
        lambda: sa.Column("generation", sa.Integer(), nullable=True),
        lambda: sa.Column("spec", sa.JSON(), nullable=True),
        lambda: sa.Column("spec_hash", sa.String(length=64), nullable=True),
        lambda: sa.Column("left_upstreams_at", sa.DateTime(timezone=True), nullable=True),
    ],
    "nodes": [
        lambda: sa.Column("orphans", sa.JSON(), nullable=True),
        lambda: sa.Column("prune", sa.JSON(), nullable=True),
    ],
    "edges": [lambda: sa.Column("applied_as_of", sa.DateTime(timezone=True), nullable=True)],
    "scaling_states": [
        lambda: sa.Column("manual_scale_at", sa.DateTime(timezone=True), nullable=True),
        lambda: sa.Column("manual_replicas", INT64, nullable=True),
    ],
}


def _create_alert_instances() -> None:
    op.create_table(
        "alert_instances",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("alertname", sa.String(length=200), nullable=False),
        sa.Column("service", sa.String(length=63), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("alert_instances", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_instances_service"), ["service"], unique=False)
        batch_op.create_index(batch_op.f("ix_alert_instances_status"), ["status"], unique=False)


def _create_alert_receipts() -> None:
    op.create_table(
        "alert_receipts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("instance", sa.String(length=128), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("alertname", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("annotations", sa.JSON(), nullable=False),
        sa.Column("receiver", sa.String(length=200), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("generator_url", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("alert_receipts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_receipts_instance"), ["instance"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_alert_receipts_processed_at"), ["processed_at"], unique=False
        )


def _create_edges() -> None:
    op.create_table(
        "edges",
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("metrics_url", sa.String(length=512), nullable=True),
        sa.Column("applied_as_of", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def _create_events() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("service", sa.String(length=63), nullable=True),
        sa.Column("node", sa.String(length=253), nullable=True),
        sa.Column("replica", sa.String(length=80), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_service_time", ["service", "time"], unique=False)
        batch_op.create_index(batch_op.f("ix_events_time"), ["time"], unique=False)


def _create_job_events() -> None:
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("counter", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=253), nullable=True),
        sa.Column("task", sa.Text(), nullable=True),
        sa.Column("play", sa.Text(), nullable=True),
        sa.Column("changed", sa.Boolean(), nullable=True),
        sa.Column("stdout", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "counter", name="uq_job_events_counter"),
    )


def _create_jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("playbook", sa.String(length=512), nullable=False),
        sa.Column("limit", sa.String(length=2048), nullable=True),
        sa.Column("extra_vars", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("rc", INT64, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("hosts", sa.JSON(), nullable=True),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_status"), ["status"], unique=False)


def _create_meta() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def _create_nodes() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("address", sa.String(length=253), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.Column("removing", sa.Boolean(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("cpus", INT64, nullable=True),
        sa.Column("cpu_percent", sa.Float(), nullable=True),
        sa.Column("memory_total", INT64, nullable=True),
        sa.Column("memory_free", INT64, nullable=True),
        sa.Column("disk_free", INT64, nullable=True),
        sa.Column("replica_count", INT64, nullable=False),
        sa.Column("agent_url", sa.String(length=512), nullable=True),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("orphans", sa.JSON(), nullable=True),
        sa.Column("prune", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )


def _create_replicas() -> None:
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("service", sa.String(length=63), nullable=False),
        sa.Column("node", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("desired", sa.String(length=8), nullable=False),
        sa.Column("address", sa.String(length=300), nullable=True),
        sa.Column("container_id", sa.String(length=80), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("stop_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("left_upstreams_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_replicas_node"), ["node"], unique=False)
        batch_op.create_index(batch_op.f("ix_replicas_service"), ["service"], unique=False)


def _create_scaling_states() -> None:
    op.create_table(
        "scaling_states",
        sa.Column("service", sa.String(length=63), nullable=False),
        sa.Column("last_action_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_scale_out_firing_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("baseline", INT64, nullable=True),
        sa.Column("manual_scale_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("manual_replicas", INT64, nullable=True),
        sa.PrimaryKeyConstraint("service"),
    )


def _create_services() -> None:
    op.create_table(
        "services",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("deleting", sa.Boolean(), nullable=False),
        sa.Column("paused_generation", sa.Integer(), nullable=True),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.Column("previous_spec", sa.JSON(), nullable=True),
        sa.Column("previous_generation", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


CREATE: dict[str, Callable[[], None]] = {
    "alert_instances": _create_alert_instances,
    "alert_receipts": _create_alert_receipts,
    "edges": _create_edges,
    "events": _create_events,
    "job_events": _create_job_events,
    "jobs": _create_jobs,
    "meta": _create_meta,
    "nodes": _create_nodes,
    "replicas": _create_replicas,
    "scaling_states": _create_scaling_states,
    "services": _create_services,
}


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    for name, create in CREATE.items():
        if name not in existing:
            create()
            continue
        have = {c["name"] for c in sa.inspect(bind).get_columns(name)}
        for make in ADDED_COLUMNS.get(name, []):
            column = make()
            if column.name not in have:
                op.add_column(name, column)
    if "replicas" in existing:
        _fill_in_replica_generations()


def _fill_in_replica_generations() -> None:
    """Replicas of a store from before rolling updates run their service's current
    generation and container fields (a replica whose service is gone only stops)."""
    bind = op.get_bind()
    services = sa.table(
        "services",
        sa.column("name", sa.String),
        sa.column("spec", sa.JSON),
        sa.column("generation", sa.Integer),
    )
    replicas = sa.table(
        "replicas",
        sa.column("id", sa.String),
        sa.column("service", sa.String),
        sa.column("generation", sa.Integer),
        sa.column("spec", sa.JSON),
    )
    by_name = {r.name: r for r in bind.execute(sa.select(services)).all()}
    todo = bind.execute(
        sa.select(replicas.c.id, replicas.c.service).where(
            sa.or_(replicas.c.generation.is_(None), replicas.c.spec.is_(None))
        )
    ).all()
    for rep in todo:
        svc = by_name.get(rep.service)
        spec = (svc.spec or {}) if svc is not None else {}
        bind.execute(
            replicas.update()
            .where(replicas.c.id == rep.id)
            .values(
                generation=svc.generation if svc is not None else 1,
                spec={key: spec.get(key) for key in CONTAINER_FIELDS} if svc is not None else {},
            )
        )
    nullable = {c["name"]: c["nullable"] for c in sa.inspect(bind).get_columns("replicas")}
    if nullable["generation"] or nullable["spec"]:
        # SQLite cannot alter a column: batch mode copies the table, rows and indexes.
        with op.batch_alter_table("replicas") as batch:
            batch.alter_column("generation", existing_type=sa.Integer(), nullable=False)
            batch.alter_column("spec", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    for name in reversed(list(CREATE)):
        op.drop_table(name)
