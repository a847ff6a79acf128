"""Row lookups and the API views of rows (services, nodes, replicas, edges, events),
shared by every part of the store."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrify import clock
from orchestrify.errors import NotFound
from orchestrify.models import (
    DEFAULT_DRAIN_S,
    DesiredState,
    Edge,
    Event,
    Node,
    NodeState,
    Orphan,
    Replica,
    ReplicaState,
    Service,
    UpdateState,
)
from orchestrify.store.tables import EdgeRow, EventRow, NodeRow, ReplicaRow, ServiceRow

__all__ = [
    "LIVE_STATES",
    "SILENT_STATES",
    "as_utc",
    "edge_view",
    "event_view",
    "node_row",
    "node_view",
    "replica_view",
    "replicas_by_service",
    "replicas_of",
    "service_drain_s",
    "service_view",
    "utcnow",
    "way_out",
]

# A node that went quiet: a heartbeat or a registration brings it back.
SILENT_STATES = (NodeState.NOT_READY, NodeState.UNREACHABLE)
LIVE_STATES = (NodeState.READY, NodeState.DRAINING, NodeState.UNREACHABLE)


def utcnow() -> datetime:
    """The wall clock, read through ``orchestrify.clock`` (the one place a test steps it)."""
    return clock.utcnow()


def as_utc(dt: datetime | None) -> datetime | None:
    """``dt`` with its zone: SQLite hands datetimes back without one; all stored is UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def service_drain_s(spec: dict[str, Any] | None) -> float:
    """A stored service spec's drain period (the default where an older spec lacks it;
    0 when the service is gone: nothing to wait for)."""
    if spec is None:
        return 0.0
    return float(spec.get("drain_s", DEFAULT_DRAIN_S))


def service_view(row: ServiceRow, replicas: Iterable[ReplicaRow] = ()) -> Service:
    """The API view of a service, with its rollout progress read from ``replicas`` (its
    own replica rows)."""
    running = [r for r in replicas if r.desired == DesiredState.RUN]
    updated = sum(1 for r in running if r.generation >= row.generation)
    if updated == len(running):
        state, message = UpdateState.COMPLETED, None
    elif row.paused_generation == row.generation:
        state, message = UpdateState.PAUSED, f"{row.pause_reason}; {way_out(row)}"
    else:
        state, message = UpdateState.UPDATING, None
    return Service.model_validate(
        {
            **row.spec,
            "created_at": as_utc(row.created_at),
            "updated_at": as_utc(row.updated_at),
            "generation": row.generation,
            "updated_replicas": updated,
            "update_state": state,
            "update_message": message,
            "previous_generation": row.previous_generation if row.previous_spec else None,
            "previous_spec": row.previous_spec,
        }
    )


def way_out(row: ServiceRow) -> str:
    """What an operator can do about a paused rollout of ``row``."""
    if row.previous_spec:
        return (
            f"roll back with `orchestrify service rollback {row.name}` or change the service again"
        )
    # A store from before rollbacks: the spec before this update was never recorded.
    return "change the service again (for example back to the previous image) to roll again"


def node_view(row: NodeRow) -> Node:
    return Node(
        id=row.id,
        name=row.name,
        address=row.address,
        state=NodeState(row.state),
        labels=row.labels or {},
        cpus=row.cpus,
        cpu_percent=row.cpu_percent,
        memory_total=row.memory_total,
        memory_free=row.memory_free,
        disk_free=row.disk_free,
        replica_count=row.replica_count,
        agent_url=row.agent_url,
        last_heartbeat=as_utc(row.last_heartbeat),
        created_at=as_utc(row.created_at) or utcnow(),
        orphaned=[Orphan.model_validate(o) for o in row.orphans or []],
        pruning=list(row.prune or []),
        removing=bool(row.removing),
    )


def replica_view(row: ReplicaRow, node_names: dict[str, str] | None = None) -> Replica:
    return Replica(
        id=row.id,
        service=row.service,
        node=row.node,
        node_name=(node_names or {}).get(row.node),
        state=ReplicaState(row.state),
        desired=DesiredState(row.desired),
        address=row.address,
        container_id=row.container_id,
        error=row.error,
        restarts=row.restarts,
        stop_after=as_utc(row.stop_after),
        left_upstreams_at=as_utc(row.left_upstreams_at),
        generation=row.generation,
        created_at=as_utc(row.created_at) or utcnow(),
        updated_at=as_utc(row.updated_at) or utcnow(),
    )


def edge_view(row: EdgeRow) -> Edge:
    return Edge(
        name=row.name,
        metrics_url=row.metrics_url,
        applied_as_of=as_utc(row.applied_as_of),
        last_seen=as_utc(row.last_seen) or utcnow(),
        created_at=as_utc(row.created_at) or utcnow(),
    )


def event_view(row: EventRow) -> Event:
    return Event(
        id=row.id,
        time=as_utc(row.time) or utcnow(),
        kind=row.kind,
        service=row.service,
        node=row.node,
        replica=row.replica,
        action=row.action,
        outcome=row.outcome,
        reason=row.reason,
        message=row.message,
        data=row.data or {},
    )


def replicas_by_service(s: Session) -> dict[str, list[ReplicaRow]]:
    by_service: dict[str, list[ReplicaRow]] = {}
    for rep in s.scalars(select(ReplicaRow)).all():
        by_service.setdefault(rep.service, []).append(rep)
    return by_service


def replicas_of(s: Session, service: str) -> list[ReplicaRow]:
    return list(s.scalars(select(ReplicaRow).where(ReplicaRow.service == service)).all())


def node_row(s: Session, id_or_name: str, *, lock: bool = False) -> NodeRow:
    """The node of that id, else of that name (``NotFound``: neither); ``lock``: FOR
    UPDATE, for a write that decides on it (PostgreSQL)."""
    by_name = select(NodeRow).where(NodeRow.name == id_or_name)
    row = (
        s.get(NodeRow, id_or_name, with_for_update=lock or None, populate_existing=lock)
        or s.scalars(by_name.with_for_update() if lock else by_name).first()
    )
    if row is None:
        raise NotFound(f"no node with id or name {id_or_name!r}")
    return row
