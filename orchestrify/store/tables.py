"""SQLAlchemy tables, the same on SQLite and PostgreSQL.

A change here needs a migration in ``orchestrify/store/migrations/versions`` (see
:mod:`orchestrify.store.migrate`): tests/store/test_migrations.py fails until the
models and the migrations agree."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# A 64-bit integer on PostgreSQL (whose INTEGER is 32 bits: a host's memory in bytes
# does not fit), SQLite's INTEGER (64 bits already) there, as the stores made before
# PostgreSQL have it.
Int64 = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: DateTime(timezone=True),
        int: Int64,
    }


class ServiceRow(Base):
    __tablename__ = "services"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    deleting: Mapped[bool] = mapped_column(default=False)
    # The generation whose rolling update paused (a replica of it failed), and why; a new
    # generation is a new rollout, so nothing needs to clear these.
    paused_generation: Mapped[int | None] = mapped_column(Integer)
    pause_reason: Mapped[str | None] = mapped_column(Text)
    # The container fields the service had before its last generation bump and the
    # generation they belonged to: what a rollback returns to (Swarm's PreviousSpec).
    # None until the first update, and in rows from stores made before rollbacks.
    previous_spec: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    previous_generation: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class NodeRow(Base):
    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    address: Mapped[str] = mapped_column(String(253))
    state: Mapped[str] = mapped_column(String(16))
    # Draining is the operator's choice and survives the node going silent and coming back.
    draining: Mapped[bool] = mapped_column(default=False)
    removing: Mapped[bool] = mapped_column(default=False)
    token_hash: Mapped[str] = mapped_column(String(64))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cpus: Mapped[int | None]
    cpu_percent: Mapped[float | None] = mapped_column(Float)
    memory_total: Mapped[int | None]
    memory_free: Mapped[int | None]
    disk_free: Mapped[int | None]
    replica_count: Mapped[int] = mapped_column(Int64, default=0)
    agent_url: Mapped[str | None] = mapped_column(String(512))
    last_heartbeat: Mapped[datetime | None]
    created_at: Mapped[datetime]
    # Containers the agent keeps running that no replica accounts for (``Orphan`` dicts,
    # as last reported), and the container ids among them it was told to remove.
    orphans: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    prune: Mapped[list[str] | None] = mapped_column(JSON)
    # The registration that made (or last re-registered) the node answered ``known:
    # false``, and no heartbeat came since: a repeat of that registration (its answer
    # lost) is answered ``known: false`` again, so its agent keeps its containers as
    # orphans as the first answer would have had it do. See store/nodes.py.
    answered_unknown: Mapped[bool] = mapped_column(default=False, server_default=false())


class ReplicaRow(Base):
    __tablename__ = "replicas"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    service: Mapped[str] = mapped_column(String(63), index=True)
    node: Mapped[str] = mapped_column(String(32), index=True)
    state: Mapped[str] = mapped_column(String(16))
    desired: Mapped[str] = mapped_column(String(8))
    address: Mapped[str | None] = mapped_column(String(300))
    container_id: Mapped[str | None] = mapped_column(String(80))
    error: Mapped[str | None] = mapped_column(Text)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    stop_after: Mapped[datetime | None]
    # When the replica left the upstreams (drained while Nginx could send it traffic): it
    # is stopped only once every edge has applied a view taken after this time. None: it
    # was not in any upstream when drained (or the row predates edge acknowledgements).
    left_upstreams_at: Mapped[datetime | None]
    # What this replica runs: the service's generation and container fields when it was
    # created. Old replicas keep theirs during a rolling update. Stores from before
    # rolling updates have them filled in by the first migration.
    generation: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The hash the agent compares with its container's orchestrify.spec label. None: the
    # hash of ``spec``. Set only for an adopted orphan whose container runs another spec
    # than the service's (its own hash, so the agent keeps it until the rollout).
    spec_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(index=True)
    kind: Mapped[str] = mapped_column(String(16))
    service: Mapped[str | None] = mapped_column(String(63))
    node: Mapped[str | None] = mapped_column(String(253))
    replica: Mapped[str | None] = mapped_column(String(80))
    action: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_events_service_time", "service", "time"),)


class MetaRow(Base):
    """Small key/value facts about the store itself (schema version, ``cluster_id``...)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class JobRow(Base):
    """One ansible-runner run requested through /v1/jobs or by an alert rule."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    playbook: Mapped[str] = mapped_column(String(512))
    limit: Mapped[str | None] = mapped_column(String(2048))
    extra_vars: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reason: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    rc: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    hosts: Mapped[list[str] | None] = mapped_column(JSON)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The controller that started it (migration 0004): its leader marks it lost when
    # another controller leads, and only it records the outcome.
    controller: Mapped[str | None] = mapped_column(String(255))
    # Set by any controller asked to cancel the job while it runs; the one running it
    # sees it on its next poll and stops the run.
    cancel_requested_at: Mapped[datetime | None]


class JobEventRow(Base):
    """One ansible-runner event of a job, trimmed to what the event stream shows."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32))
    counter: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(64))
    host: Mapped[str | None] = mapped_column(String(253))
    task: Mapped[str | None] = mapped_column(Text)
    play: Mapped[str | None] = mapped_column(Text)
    changed: Mapped[bool | None]
    stdout: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[datetime | None]

    __table_args__ = (UniqueConstraint("job_id", "counter", name="uq_job_events_counter"),)


class EdgeRow(Base):
    """An edge (Nginx host) that announced itself, so Prometheus discovery lists it."""

    __tablename__ = "edges"
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    metrics_url: Mapped[str | None] = mapped_column(String(512))
    # The as_of of the upstreams snapshot its Nginx serves (its acknowledgement).
    applied_as_of: Mapped[datetime | None]
    last_seen: Mapped[datetime]
    created_at: Mapped[datetime]
