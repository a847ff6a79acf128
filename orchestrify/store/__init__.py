"""The controller's state store: services, nodes, replicas and the event trail.

Every write is one transaction; after it commits, subscribers are told (the change
feed that wakes long-polling agents and edges, the metrics that count decisions).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, delete, event, func, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from orchestrify import clock
from orchestrify.errors import (
    Conflict,
    InvalidSpec,
    NotFound,
    OrchestrifyError,
    StoreUnavailable,
    Unauthorized,
)
from orchestrify.models import (
    CONTAINER_FIELDS,
    DEFAULT_DRAIN_S,
    DEFAULT_STOP_GRACE_S,
    REPLICAS_HARD_MAX,
    Assignment,
    DesiredState,
    Edge,
    EdgeRegistration,
    Event,
    FieldError,
    Heartbeat,
    Node,
    NodeRegistration,
    NodeState,
    Orphan,
    OrphanAdoption,
    OrphanPrune,
    Replica,
    ReplicaReport,
    ReplicaState,
    Service,
    ServicePatch,
    ServiceSpec,
    UpdateState,
    UpstreamReplica,
    UpstreamService,
    check_bounds,
    container_spec,
    error_location,
    spec_hash,
)
from orchestrify.store.alert_tables import ScalingStateRow  # (also creates the alert tables)
from orchestrify.store.files import DB_FILE, secure_data_dir
from orchestrify.store.tables import (
    ADDED_COLUMNS,
    Base,
    EdgeRow,
    EventRow,
    MetaRow,
    NodeRow,
    ReplicaRow,
    ServiceRow,
)

__all__ = [
    "ChangeKind",
    "NodeEnrollment",
    "Store",
    "service_drain_s",
    "translate_store_error",
    "utcnow",
]

CLUSTER_ID_KEY = "cluster_id"


@dataclass(frozen=True)
class NodeEnrollment:
    """A registration's outcome: the node, its fresh token, and whether this store knew
    the node (by the id it presented, or by its name when it presented none)."""

    node: Node
    token: str
    known: bool


# A node that went quiet: a heartbeat or a registration brings it back.
_SILENT_STATES = (NodeState.NOT_READY, NodeState.UNREACHABLE)
_LIVE_STATES = (NodeState.READY, NodeState.DRAINING, NodeState.UNREACHABLE)

ChangeKind = str  # "spec" (what agents must run) or "state" (what was observed)


def utcnow() -> datetime:
    """The wall clock, read through ``orchestrify.clock`` (the one place a test steps it)."""
    return clock.utcnow()


def _utc(dt: datetime | None) -> datetime | None:
    # SQLite hands datetimes back without a zone; everything stored is UTC.
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def service_drain_s(spec: dict[str, Any] | None) -> float:
    """A stored service spec's drain period (the default where an older spec lacks it;
    0 when the service is gone: nothing to wait for)."""
    if spec is None:
        return 0.0
    return float(spec.get("drain_s", DEFAULT_DRAIN_S))


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _service(row: ServiceRow, replicas: Iterable[ReplicaRow] = ()) -> Service:
    """The API view of a service, with its rollout progress read from ``replicas`` (its
    own replica rows)."""
    running = [r for r in replicas if r.desired == DesiredState.RUN]
    updated = sum(1 for r in running if r.generation >= row.generation)
    if updated == len(running):
        state, message = UpdateState.COMPLETED, None
    elif row.paused_generation == row.generation:
        state, message = UpdateState.PAUSED, f"{row.pause_reason}; {_way_out(row)}"
    else:
        state, message = UpdateState.UPDATING, None
    return Service.model_validate(
        {
            **row.spec,
            "created_at": _utc(row.created_at),
            "updated_at": _utc(row.updated_at),
            "generation": row.generation,
            "updated_replicas": updated,
            "update_state": state,
            "update_message": message,
            "previous_generation": row.previous_generation if row.previous_spec else None,
            "previous_spec": row.previous_spec,
        }
    )


def _way_out(row: ServiceRow) -> str:
    """What an operator can do about a paused rollout of ``row``."""
    if row.previous_spec:
        return (
            f"roll back with `orchestrify service rollback {row.name}` or change the service again"
        )
    # A store from before rollbacks: the spec before this update was never recorded.
    return "change the service again (for example back to the previous image) to roll again"


def _spec_changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The container fields that differ, for an event: ``image a -> b, env (KEY)``. Env
    values are not shown (they may be secrets), only the keys that changed."""
    parts = []
    for key in CONTAINER_FIELDS:
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if key == "env":
            old, new = old or {}, new or {}
            keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            parts.append(f"env ({', '.join(keys)})")
        else:
            parts.append(f"{key} {old} -> {new}")
    return ", ".join(parts) or "no container field differs"


def _node(row: NodeRow) -> Node:
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
        last_heartbeat=_utc(row.last_heartbeat),
        created_at=_utc(row.created_at) or utcnow(),
        orphaned=[Orphan.model_validate(o) for o in row.orphans or []],
        pruning=list(row.prune or []),
        removing=bool(row.removing),
    )


def _replica(row: ReplicaRow, node_names: dict[str, str] | None = None) -> Replica:
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
        stop_after=_utc(row.stop_after),
        left_upstreams_at=_utc(row.left_upstreams_at),
        generation=row.generation,
        created_at=_utc(row.created_at) or utcnow(),
        updated_at=_utc(row.updated_at) or utcnow(),
    )


def _edge(row: EdgeRow) -> Edge:
    return Edge(
        name=row.name,
        metrics_url=row.metrics_url,
        applied_as_of=_utc(row.applied_as_of),
        last_seen=_utc(row.last_seen) or utcnow(),
        created_at=_utc(row.created_at) or utcnow(),
    )


def _event(row: EventRow) -> Event:
    return Event(
        id=row.id,
        time=_utc(row.time) or utcnow(),
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


def translate_store_error(exc: BaseException) -> OrchestrifyError | None:
    """The orchestrify error for a database error (None: not one).

    A store that cannot write now (locked past its busy timeout, a disk I/O error, a lost
    connection) is ``StoreUnavailable`` (503, retry); a constraint is a ``Conflict``; any
    other statement the database refuses (a value it cannot hold) is ``InvalidSpec``."""
    if isinstance(exc, OrchestrifyError):
        return None
    if isinstance(exc, IntegrityError):
        return Conflict(f"conflicts with what is stored: {exc.orig}")
    if isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return StoreUnavailable(f"the store cannot be used now: {exc.orig}")
    if isinstance(exc, SQLAlchemyError):
        cause = getattr(exc, "orig", None) or exc
        return InvalidSpec(f"the store refused a value: {cause}")
    if isinstance(exc, UnicodeEncodeError):  # a lone surrogate (the API refuses them)
        return InvalidSpec(f"a text the store cannot hold (not valid Unicode): {exc.reason}")
    if isinstance(exc, OverflowError) and "SQLite" in str(exc):
        return InvalidSpec(f"a number is too large for the store: {exc}")
    return None


class _BorderSession(Session):
    """A session whose ``with`` block turns database errors into orchestrify errors, so
    nothing above the store sees an SQLAlchemy type."""

    def __exit__(self, type_: Any, value: Any, traceback: Any) -> None:
        super().__exit__(type_, value, traceback)
        translated = translate_store_error(value) if value is not None else None
        if translated is not None:
            raise translated from value


class Store:
    """Durable controller state. Thread-safe: API handlers run in a thread pool."""

    def __init__(self, url: str, *, node_timeout_s: float = 15.0) -> None:
        self.node_timeout = timedelta(seconds=node_timeout_s)
        self.engine: Engine = create_engine(url, connect_args=_connect_args(url))
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, class_=_BorderSession)
        self.cluster_id = _ensure_cluster_id(self._sessions)
        self._write_lock = threading.RLock()
        self._change_listeners: list[Callable[[set[ChangeKind]], None]] = []
        self._event_listeners: list[Callable[[Event], None]] = []

    @classmethod
    def in_data_dir(cls, data_dir: Path, *, node_timeout_s: float = 15.0) -> Store:
        """The SQLite store in ``data_dir``, which is made private first (0700, files
        0600; see :mod:`orchestrify.store.files`)."""
        secure_data_dir(data_dir)
        return cls(f"sqlite:///{data_dir / DB_FILE}", node_timeout_s=node_timeout_s)

    def close(self) -> None:
        self.engine.dispose()

    # --- subscriptions -------------------------------------------------------------
    def on_change(self, listener: Callable[[set[ChangeKind]], None]) -> None:
        self._change_listeners.append(listener)

    def on_event(self, listener: Callable[[Event], None]) -> None:
        self._event_listeners.append(listener)

    def _write(self) -> _WriteTx:
        return _WriteTx(self)

    # --- events --------------------------------------------------------------------
    def record_event(
        self,
        message: str,
        *,
        kind: str,
        service: str | None = None,
        node: str | None = None,
        replica: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        reason: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Event:
        with self._write() as tx:
            self._add_event(
                tx,
                message,
                kind=kind,
                service=service,
                node=node,
                replica=replica,
                action=action,
                outcome=outcome,
                reason=reason,
                data=data,
            )
        return tx.events[-1]

    def _add_event(self, tx: _WriteTx, message: str, **fields: Any) -> None:
        """Add an event row to ``tx``; it is written (one flush for all) at commit."""
        row = EventRow(
            time=utcnow(), message=message, **{**fields, "data": fields.get("data") or {}}
        )
        tx.session.add(row)
        tx.event_rows.append(row)

    def list_events(
        self,
        *,
        service: str | None = None,
        since: datetime | None = None,
        kind: str | None = None,
        after_id: int | None = None,
        limit: int = 500,
    ) -> list[Event]:
        with self._sessions() as s:
            q = select(EventRow)
            if service:
                q = q.where(EventRow.service == service)
            if since:
                q = q.where(EventRow.time >= since)
            if kind:
                q = q.where(EventRow.kind == kind)
            if after_id is not None:
                q = q.where(EventRow.id > after_id)
            q = q.order_by(EventRow.id.desc()).limit(limit)
            return [_event(r) for r in reversed(s.scalars(q).all())]

    # --- services ------------------------------------------------------------------
    def create_service(self, spec: ServiceSpec) -> Service:
        now = utcnow()
        with self._write() as tx:
            existing = tx.session.get(ServiceRow, spec.name)
            if existing is not None:
                if existing.deleting:
                    raise Conflict(
                        f"service {spec.name!r} is still being removed; retry in a few seconds"
                    )
                raise Conflict(f"service {spec.name!r} already exists")
            row = ServiceRow(
                name=spec.name, spec=spec.model_dump(mode="json"), created_at=now, updated_at=now
            )
            tx.session.add(row)
            self._add_event(
                tx,
                f"service {spec.name} created with {spec.replicas} replica(s) of {spec.image}",
                kind="action",
                service=spec.name,
                action="create_service",
                outcome="ok",
            )
            # Orphans of a service of this name (a store lost and the service re-created)
            # become its replicas now, before the reconciler places new ones beside them.
            for node in tx.session.scalars(select(NodeRow)).all():
                if any(o.get("service") == spec.name for o in node.orphans or []):
                    self._adopt(tx, node, services={spec.name: row}, now=now)
            tx.changes.add("spec")
            tx.session.flush()
            return _service(row, self._replicas_of(tx.session, spec.name))

    def list_services(self) -> list[Service]:
        with self._sessions() as s:
            rows = s.scalars(
                select(ServiceRow).where(ServiceRow.deleting.is_(False)).order_by(ServiceRow.name)
            ).all()
            reps = self._replicas_by_service(s)
            return [_service(r, reps.get(r.name, ())) for r in rows]

    @staticmethod
    def _replicas_by_service(s: Session) -> dict[str, list[ReplicaRow]]:
        by_service: dict[str, list[ReplicaRow]] = {}
        for rep in s.scalars(select(ReplicaRow)).all():
            by_service.setdefault(rep.service, []).append(rep)
        return by_service

    @staticmethod
    def _replicas_of(s: Session, service: str) -> list[ReplicaRow]:
        return list(s.scalars(select(ReplicaRow).where(ReplicaRow.service == service)).all())

    def get_service(self, name: str) -> Service:
        with self._sessions() as s:
            row = s.get(ServiceRow, name)
            if row is None or row.deleting:
                raise NotFound(f"no service named {name!r}")
            return _service(row, self._replicas_of(s, name))

    def update_service(
        self, name: str, patch: ServicePatch, *, reason: str = "requested through the API"
    ) -> Service:
        with self._write() as tx:
            row = tx.session.get(ServiceRow, name)
            if row is None or row.deleting:
                raise NotFound(f"no service named {name!r}")
            current = ServiceSpec.model_validate(row.spec)
            changes = patch.changes()
            merged = current.model_dump() | changes
            # Counts the patch itself gets wrong are a 422; counts that are fine on their
            # own but clash with the stored ones (replicas 50 against a stored max of 10)
            # are a 409: the same body is accepted by a service with other bounds.
            r, lo, hi = (changes.get(k) for k in ("replicas", "min_replicas", "max_replicas"))
            try:  # (a count the patch leaves out cannot clash here)
                check_bounds(
                    r if r is not None else (lo if lo is not None else 0),
                    lo if lo is not None else 0,
                    hi if hi is not None else REPLICAS_HARD_MAX,
                )
            except FieldError as exc:
                raise InvalidSpec(f"{exc.field}: {exc}", field=exc.field) from exc
            try:
                check_bounds(merged["replicas"], merged["min_replicas"], merged["max_replicas"])
            except FieldError as exc:
                raise Conflict(
                    f"{exc.field}: {exc}, with the service's stored counts; patch "
                    "replicas, min_replicas and max_replicas together"
                ) from exc
            try:
                updated = ServiceSpec.model_validate(merged)
            except ValueError as exc:  # pydantic.ValidationError is a ValueError
                raise _invalid_from(exc) from exc
            # Only a change to what the containers run is a new generation (rolled out one
            # replica at a time); counts, policy, drain_s and max_per_node apply as they are.
            spec_fields = set(changes) & set(CONTAINER_FIELDS)
            rolled = any(changes[k] != current.model_dump()[k] for k in spec_fields)
            if rolled:
                # What a rollback returns to: the spec this generation bump leaves behind.
                row.previous_spec = container_spec(row.spec)
                row.previous_generation = row.generation
                row.generation += 1
            row.spec = updated.model_dump(mode="json")
            row.updated_at = utcnow()
            if "replicas" in changes:
                self._manual_scale(tx, name, replicas=updated.replicas, now=row.updated_at)
            if "replicas" in changes and changes["replicas"] != current.replicas:
                self._add_event(
                    tx,
                    f"service {name} scaled from {current.replicas} "
                    f"to {updated.replicas}: {reason}",
                    kind="action",
                    service=name,
                    action="scale",
                    outcome="ok",
                    reason=reason,
                    data={"from": current.replicas, "to": updated.replicas},
                )
            others = sorted(set(changes) - {"replicas"})
            reps = self._replicas_of(tx.session, name)
            if others:
                live = any(r.desired == DesiredState.RUN for r in reps)
                rollout = (
                    f"; rolling update to generation {row.generation}, one replica at a time"
                    if rolled and live
                    else ""
                )
                self._add_event(
                    tx,
                    f"service {name} updated: {', '.join(others)}{rollout}",
                    kind="action",
                    service=name,
                    action="update_service",
                    outcome="ok",
                )
            tx.changes.add("spec")
            return _service(row, reps)

    def _manual_scale(self, tx: _WriteTx, name: str, *, replicas: int, now: datetime) -> None:
        """Remember that the owner set ``name``'s count by hand (even to the count it has:
        that confirms it), for the scaling policy: alert episodes that began before now
        no longer act on scale, and an open autoscaling episode's baseline (where
        scale-in stops) becomes ``replicas``."""
        state = tx.session.get(ScalingStateRow, name)
        if state is None:
            state = ScalingStateRow(service=name)
            tx.session.add(state)
        state.manual_scale_at = now
        state.manual_replicas = replicas
        if state.baseline is not None and state.baseline != replicas:
            self._add_event(
                tx,
                f"autoscaling baseline of {name} moved from {state.baseline} to {replicas}: "
                "scaled by hand during a scaling episode; scale-in returns to it",
                kind="action",
                service=name,
                action="baseline",
                outcome="ok",
                data={"from": state.baseline, "to": replicas},
            )
            state.baseline = replicas

    def rollback_service(self, name: str, *, reason: str = "requested through the API") -> Service:
        """Put the container fields back to the spec before the last update (Swarm's
        ``docker service rollback``) as a new generation, so the usual rolling update
        replaces every replica, the failed new ones included. Scaling fields, ``drain_s``
        and ``max_per_node`` keep their current values. The spec replaced becomes the
        previous one: rolling back twice returns to the update."""
        with self._write() as tx:
            row = tx.session.get(ServiceRow, name)
            if row is None or row.deleting:
                raise NotFound(f"no service named {name!r}")
            previous = row.previous_spec
            if not previous:
                raise Conflict(
                    f"service {name!r} has no previous spec to roll back to (it has not "
                    "been updated since it was created, or since the store was upgraded); "
                    f"change it with `orchestrify service update {name}` instead"
                )
            current = dict(row.spec)
            try:
                restored = ServiceSpec.model_validate(current | container_spec(previous))
            except ValueError as exc:  # pydantic.ValidationError is a ValueError
                raise _invalid_from(exc) from exc
            back_to = row.previous_generation
            row.previous_spec = container_spec(current)
            row.previous_generation = row.generation
            row.generation += 1
            row.spec = restored.model_dump(mode="json")
            # The paused rollout was of the generation just left; say so no more.
            row.paused_generation = None
            row.pause_reason = None
            row.updated_at = utcnow()
            reps = self._replicas_of(tx.session, name)
            live = any(r.desired == DesiredState.RUN for r in reps)
            rollout = (
                f"; rolling update to generation {row.generation}, one replica at a time"
                if live
                else ""
            )
            of = f" of generation {back_to}" if back_to is not None else ""
            self._add_event(
                tx,
                f"service {name} rolled back to the spec{of}: "
                f"{_spec_changes(current, row.spec)}{rollout}",
                kind="action",
                service=name,
                action="rollback",
                outcome="ok",
                reason=reason,
                data={
                    "from_generation": row.previous_generation,
                    "spec_of_generation": back_to,
                    "generation": row.generation,
                },
            )
            tx.changes.add("spec")
            return _service(row, reps)

    def scale_service(self, name: str, replicas: int, *, reason: str) -> Service:
        return self.update_service(name, ServicePatch(replicas=replicas), reason=reason)

    def delete_service(self, name: str) -> None:
        """Mark a service for removal: its replicas drain out of Nginx, then stop."""
        with self._write() as tx:
            row = tx.session.get(ServiceRow, name)
            if row is None or row.deleting:
                raise NotFound(f"no service named {name!r}")
            row.deleting = True
            drain_s = service_drain_s(row.spec)
            for rep in self._replicas_of(tx.session, name):
                # One event for the service below, not one per replica.
                self._drain(tx, rep, reason=f"service {name} removed", quiet=True)
            self._add_event(
                tx,
                f"service {name} removed; its replicas drain for {drain_s:g}s, then stop",
                kind="action",
                service=name,
                action="remove_service",
                outcome="ok",
            )
            tx.changes.update({"spec", "state"})

    def purge_deleted_services(self) -> list[str]:
        """Drop services marked for removal once none of their replicas is left."""
        with self._write() as tx:
            gone = []
            for row in tx.session.scalars(select(ServiceRow).where(ServiceRow.deleting.is_(True))):
                left = tx.session.scalars(
                    select(ReplicaRow.id).where(ReplicaRow.service == row.name).limit(1)
                ).first()
                if left is None:
                    tx.session.delete(row)
                    gone.append(row.name)
            return gone

    # --- nodes ---------------------------------------------------------------------
    def register_node(self, reg: NodeRegistration) -> tuple[Node, str]:
        """Register (or re-register) a node; returns it and its fresh node token."""
        enrolled = self.enroll_node(reg)
        return enrolled.node, enrolled.token

    def enroll_node(self, reg: NodeRegistration, *, trusted: bool = False) -> NodeEnrollment:
        """Register (or re-register) a node, saying whether this store knew it.

        An id this store does not know (a wiped or new store, a node removed with
        ``--force``) is made a node again under that same id, so the agent keeps finding
        its containers by their node label, but ``known`` is False: the agent then keeps
        every container it has as an orphan instead of removing what is not assigned.

        An id this store knows is that node's: re-registering it needs the node's own
        token (``reg.node_token``) unless the caller is ``trusted`` (the admin token).
        Without it the registration is refused (``Conflict``) and the refusal recorded as
        an event: a join token alone must not take over a node and lock its agent out."""
        self.check_node_claim(reg, trusted=trusted)
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self._write() as tx:
            row = tx.session.get(NodeRow, reg.node_id) if reg.node_id else None
            known = row is not None
            if row is not None and row.name != reg.name:
                taken = tx.session.scalars(
                    select(NodeRow).where(NodeRow.name == reg.name, NodeRow.id != row.id)
                ).first()
                if taken is not None:
                    raise Conflict(
                        f"node name {reg.name!r} belongs to node {taken.id}, not to node "
                        f"{row.id}; start the agent with another --name, or forget the "
                        f"other node (`orchestrify node rm {taken.id} --force`)"
                    )
            if row is None:
                same_name = tx.session.scalars(
                    select(NodeRow).where(NodeRow.name == reg.name)
                ).first()
                if same_name is not None:
                    if same_name.state not in _SILENT_STATES and self._fresh(same_name, now):
                        raise Conflict(
                            f"a ready node is already named {reg.name!r}; pick another --name"
                        )
                    if reg.node_id:
                        # Its containers are labelled with its own id: taking over another
                        # id would hide them from it. Refused; nothing is removed meanwhile.
                        raise Conflict(
                            f"node name {reg.name!r} belongs to node {same_name.id}, and this "
                            f"agent presents node id {reg.node_id!r}; forget the old one "
                            f"(`orchestrify node rm {same_name.id} --force`) or start the agent "
                            "with another --name"
                        )
                    row = same_name  # a host that lost its state file comes back
                    known = True
            created = row is None
            if row is None:
                row = NodeRow(
                    id=reg.node_id or secrets.token_hex(6),
                    created_at=now,
                    replica_count=0,
                )
                tx.session.add(row)
            row.name = reg.name
            if created:
                row.address = reg.address
            else:
                self._move_address(tx, row, reg.address)
            row.labels = reg.labels
            row.cpus = reg.cpus
            row.memory_total = reg.memory_total
            row.agent_url = reg.agent_url
            row.token_hash = _hash_token(token)
            row.last_heartbeat = now
            if created or row.state in _SILENT_STATES:
                row.state = NodeState.DRAINING if row.draining else NodeState.READY
            if not known and reg.containers:
                # Orphans from the start, in the same transaction: the reconciler never
                # sees this node ready without them (and places nothing beside them).
                tx.session.flush()
                self._take_orphans(tx, row, reg.containers)
            if created and reg.node_id:
                message = (
                    f"node {reg.name} registered with id {reg.node_id}, which this controller "
                    f"did not know (a new or wiped store, or a node removed with --force): "
                    f"the containers it already runs keep running as orphans"
                )
            else:
                what = "registered" if created else "re-registered"
                message = f"node {reg.name} {what} at {reg.address}"
            self._add_event(
                tx,
                message,
                kind="node",
                node=reg.name,
                action="register",
                outcome="ok",
                data={"known": known, "node_id": row.id},
            )
            tx.changes.update({"spec", "state"})
            tx.session.flush()
            return NodeEnrollment(node=_node(row), token=token, known=known)

    def check_node_claim(self, reg: NodeRegistration, *, trusted: bool = False) -> None:
        """Refuse (``Conflict``, recorded as an event) a registration that claims a node id
        this store knows without that node's token; ``trusted`` (the admin) may."""
        refusal = None if trusted else self._refuse_takeover(reg)
        if refusal is not None:
            raise Conflict(refusal)

    def _refuse_takeover(self, reg: NodeRegistration) -> str | None:
        """Why ``reg`` may not re-register a node id this store knows (None: it may).
        A refusal is recorded as an event, in its own transaction."""
        if not reg.node_id:
            return None
        with self._write() as tx:
            row = tx.session.get(NodeRow, reg.node_id)
            if row is None:
                return None  # unknown id (a wiped store): the join token is enough
            if reg.node_token and secrets.compare_digest(
                row.token_hash, _hash_token(reg.node_token)
            ):
                return None
            why = "without a node token" if not reg.node_token else "with a wrong node token"
            message = (
                f"registration as node {row.id} ({row.name}) refused: presented {why}. "
                f"Only that node's agent (with its saved token) or the admin token may "
                f"re-register a known node id; if this host really is {row.name} and lost "
                f"its token, forget the node first (`orchestrify node rm {row.id} --force`)"
            )
            self._add_event(
                tx,
                message,
                kind="node",
                node=row.name,
                action="register",
                outcome="refused",
                reason="node_token",
                data={"node_id": row.id, "name": reg.name, "address": reg.address},
            )
            return message

    def authenticate_node(self, node_id: str, token: str) -> None:
        with self._sessions() as s:
            row = s.get(NodeRow, node_id)
            if row is None:
                raise NotFound(f"no node with id {node_id!r}; register again")
            if not secrets.compare_digest(row.token_hash, _hash_token(token)):
                raise Unauthorized("wrong node token")

    def heartbeat(self, node_id: str, hb: Heartbeat) -> Node:
        now = utcnow()
        with self._write() as tx:
            row = tx.session.get(NodeRow, node_id)
            if row is None:
                raise NotFound(f"no node with id {node_id!r}; register again")
            row.last_heartbeat = now  # for display: liveness is judged on a monotonic clock
            for key, value in hb.model_dump(exclude_none=True, exclude={"address"}).items():
                setattr(row, key, value)
            if hb.address is not None:
                self._move_address(tx, row, hb.address)
            if row.state in _SILENT_STATES:
                was = row.state
                row.state = NodeState.DRAINING if row.draining else NodeState.READY
                self._add_event(
                    tx,
                    f"node {row.name} is {row.state} again (heartbeat received; was {was})",
                    kind="node",
                    node=row.name,
                    action="node_ready",
                    outcome="info",
                )
                tx.changes.update({"spec", "state"})
            return _node(row)

    def list_nodes(self) -> list[Node]:
        with self._sessions() as s:
            return [_node(r) for r in s.scalars(select(NodeRow).order_by(NodeRow.name)).all()]

    def get_node(self, id_or_name: str) -> Node:
        with self._sessions() as s:
            return _node(self._node_row(s, id_or_name))

    @staticmethod
    def _node_row(s: Session, id_or_name: str) -> NodeRow:
        row = (
            s.get(NodeRow, id_or_name)
            or s.scalars(select(NodeRow).where(NodeRow.name == id_or_name)).first()
        )
        if row is None:
            raise NotFound(f"no node with id or name {id_or_name!r}")
        return row

    def set_node_draining(self, id_or_name: str, *, draining: bool, remove: bool = False) -> Node:
        with self._write() as tx:
            row = self._node_row(tx.session, id_or_name)
            row.draining = draining
            # A silent node stays silent (its next heartbeat applies the drain flag);
            # no wall-clock comparison here: liveness is the reconciler's to judge.
            fresh = row.state not in _SILENT_STATES
            if draining:
                row.state = NodeState.DRAINING if fresh else row.state
                row.removing = row.removing or remove
                what = "removal requested: draining first" if remove else "draining"
            else:
                row.state = NodeState.READY if fresh else row.state
                row.removing = False
                what = "active again"
            self._add_event(
                tx,
                f"node {row.name}: {what}",
                kind="node",
                node=row.name,
                action="remove_node" if remove else ("drain" if draining else "activate"),
                outcome="ok",
            )
            tx.changes.update({"spec", "state"})
            return _node(row)

    def delete_node(self, id_or_name: str, *, force: bool = True) -> Node:
        """Forget a node and its replicas now (used once it is drained, or with --force);
        the node as it was. Without ``force``, a node that still has replicas is a
        Conflict: they are drained first (``set_node_draining(remove=True)``), so that
        nothing stops a replica without that order."""
        with self._write() as tx:
            row = self._node_row(tx.session, id_or_name)
            if not force:
                left = tx.session.scalar(
                    select(func.count()).select_from(ReplicaRow).where(ReplicaRow.node == row.id)
                )
                if left:
                    raise Conflict(
                        f"node {row.name} has {left} replica(s): drain it and forget it once "
                        f"they have moved (POST /v1/nodes/{row.id}/drain?remove=true, or "
                        "`orchestrify node rm`), or forget it now with force=true"
                    )
            node = _node(row)
            tx.session.execute(delete(ReplicaRow).where(ReplicaRow.node == row.id))
            tx.session.delete(row)
            self._add_event(
                tx,
                f"node {row.name} removed",
                kind="node",
                node=row.name,
                action="remove_node",
                outcome="ok",
            )
            tx.changes.update({"spec", "state"})
            return node

    def _move_address(self, tx: _WriteTx, row: NodeRow, address: str) -> None:
        """The node now answers at ``address`` (DHCP, a restarted VM): move the node, its
        agent's metrics URL and every replica's ``host:port`` (same port, new host), so
        Nginx and the probes follow at once. Said in one event."""
        old = row.address
        if address == old:
            return
        row.address = address
        if row.agent_url and f"//{old}:" in row.agent_url:
            row.agent_url = row.agent_url.replace(f"//{old}:", f"//{address}:", 1)
        moved = 0
        for rep in tx.session.scalars(select(ReplicaRow).where(ReplicaRow.node == row.id)):
            host, sep, port = (rep.address or "").rpartition(":")
            if sep and host != address:
                rep.address = f"{address}:{port}"
                rep.updated_at = utcnow()
                moved += 1
        self._add_event(
            tx,
            f"node {row.name} moved from {old} to {address}; {moved} replica address(es) follow",
            kind="node",
            node=row.name,
            action="node_address",
            outcome="info",
            data={"from": old, "to": address, "replicas": moved},
        )
        tx.changes.update({"spec", "state"})

    def mark_unreachable(
        self,
        silent_s: Mapping[str, float],
        *,
        live: int,
        threshold: float,
        still_silent: Callable[[str], bool],
    ) -> list[Node]:
        """Mass silence: the live nodes in ``silent_s`` that are not yet unreachable become
        ``unreachable`` (``still_silent`` is asked again under the write lock, so a
        heartbeat that arrived meanwhile wins). Their replicas stay where they are and in
        Nginx. Said in one event for all of them."""
        changed: list[Node] = []
        with self._write() as tx:
            live_states = (NodeState.READY, NodeState.DRAINING)
            rows = tx.session.scalars(
                select(NodeRow).where(
                    NodeRow.id.in_(list(silent_s)), NodeRow.state.in_(live_states)
                )
            ).all()
            for row in rows:
                if still_silent(row.id):
                    row.state = NodeState.UNREACHABLE
                    changed.append(_node(row))
            if changed:
                names = sorted(n.name for n in changed)
                silent = len(silent_s)
                reason = (
                    f"{silent} of {live} live nodes are silent at once, more than the "
                    f"mass-silence threshold of {threshold:.0%}: assuming a controller or "
                    "network problem"
                )
                self._add_event(
                    tx,
                    f"{len(changed)} node(s) unreachable ({', '.join(names)}): {reason}; "
                    "their replicas keep running and stay in Nginx, nothing is rescheduled",
                    kind="node",
                    action="mass_silence",
                    outcome="info",
                    reason=reason,
                    data={
                        "nodes": names,
                        "silent": silent,
                        "live": live,
                        "threshold": threshold,
                    },
                )
                tx.changes.update({"spec", "state"})
        return changed

    def mark_not_ready(
        self,
        silent_s: Mapping[str, float],
        *,
        timeout_s: float,
        still_silent: Callable[[str], bool],
    ) -> list[Node]:
        """The live nodes in ``silent_s`` (node id -> seconds this controller has not seen
        it) become ``not_ready``; their replicas are then rescheduled, at a limited rate."""
        changed: list[Node] = []
        with self._write() as tx:
            rows = tx.session.scalars(
                select(NodeRow).where(
                    NodeRow.id.in_(list(silent_s)), NodeRow.state.in_(list(_LIVE_STATES))
                )
            ).all()
            for row in rows:
                if not still_silent(row.id):
                    continue
                was = row.state
                row.state = NodeState.NOT_READY
                self._add_event(
                    tx,
                    f"node {row.name} is not ready: no heartbeat for {silent_s[row.id]:.0f}s"
                    + (" (it was unreachable)" if was == NodeState.UNREACHABLE else ""),
                    kind="node",
                    node=row.name,
                    action="node_not_ready",
                    outcome="info",
                    reason=f"missed heartbeats (timeout {timeout_s:g}s)",
                )
                changed.append(_node(row))
            if changed:
                tx.changes.update({"spec", "state"})
        return changed

    # --- replicas ------------------------------------------------------------------
    def list_replicas(
        self, *, service: str | None = None, node: str | None = None
    ) -> list[Replica]:
        with self._sessions() as s:
            q = select(ReplicaRow)
            if service:
                q = q.where(ReplicaRow.service == service)
            if node:
                q = q.where(ReplicaRow.node == self._node_row(s, node).id)
            names = {i: n for i, n in s.execute(select(NodeRow.id, NodeRow.name))}
            rows = s.scalars(q.order_by(ReplicaRow.service, ReplicaRow.created_at)).all()
            return [_replica(r, names) for r in rows]

    def get_replica(self, replica_id: str) -> Replica:
        with self._sessions() as s:
            row = s.get(ReplicaRow, replica_id)
            if row is None:
                raise NotFound(f"no replica with id {replica_id!r}")
            names = {i: n for i, n in s.execute(select(NodeRow.id, NodeRow.name))}
            return _replica(row, names)

    def remove_replica(
        self, replica_id: str, *, reason: str = "removed through the API"
    ) -> Replica:
        """Drain one replica out; the reconciler replaces it unless the service shrank."""
        with self._write() as tx:
            row = tx.session.get(ReplicaRow, replica_id)
            if row is None:
                raise NotFound(f"no replica with id {replica_id!r}")
            self._drain(tx, row, reason=reason, action="remove_replica")
            return _replica(row)

    def drain_replicas(
        self, replica_ids: Iterable[str], *, reason: str, action: str = "drain_replica"
    ) -> None:
        """Drain these replicas (scale-in, node drain, rolling update, rollback): see
        ``_drain``. Replicas already leaving, or gone, are left as they are."""
        with self._write() as tx:
            for rid in replica_ids:
                row = tx.session.get(ReplicaRow, rid)
                if row is not None:
                    self._drain(tx, row, reason=reason, action=action)

    def _drain(
        self,
        tx: _WriteTx,
        row: ReplicaRow,
        *,
        reason: str,
        action: str = "drain_replica",
        quiet: bool = False,
    ) -> bool:
        """THE one way a running replica starts to leave (scale-in, removal, node drain,
        rolling update, rollback, autoscaling): desired ``drain``, so it leaves the
        upstreams at once; ``stop_after`` = now + its service's ``drain_s``; and, when
        Nginx could send it traffic, ``left_upstreams_at`` = now, so that the reconciler
        stops it only once every edge has applied a view from after that (or after a
        bound). False (and nothing changes) when it is not running.

        ``now`` is read under the store's write lock: ``upstreams`` reads its ``as_of``
        under that lock too, so a snapshot with ``as_of`` after ``left_upstreams_at``
        is sure to be without this replica.
        """
        if row.desired != DesiredState.RUN:
            return False
        now = utcnow()
        svc = tx.session.get(ServiceRow, row.service)
        drain_s = service_drain_s(svc.spec if svc is not None else None)
        in_upstreams = row.state == ReplicaState.HEALTHY and row.address is not None
        row.desired = DesiredState.DRAIN
        row.stop_after = now + timedelta(seconds=drain_s)
        row.left_upstreams_at = now if in_upstreams else None
        if row.state != ReplicaState.FAILED:
            row.state = ReplicaState.STOPPING
        row.updated_at = now
        if not quiet:
            self._add_event(
                tx,
                f"replica {row.id} draining for {drain_s:g}s before it stops: {reason}",
                kind="action",
                service=row.service,
                replica=row.id,
                action=action,
                outcome="ok",
                reason=reason,
                data={"drain_s": drain_s},
            )
        tx.changes.update({"spec", "state"})
        return True

    def create_replicas(
        self, service: str, node_ids: Sequence[str], *, reason: str
    ) -> list[Replica]:
        now = utcnow()
        created = []
        with self._write() as tx:
            names = {i: n for i, n in tx.session.execute(select(NodeRow.id, NodeRow.name))}
            svc = tx.session.get(ServiceRow, service)
            if svc is None:
                raise NotFound(f"no service named {service!r}")
            for node_id in node_ids:
                row = ReplicaRow(
                    id=f"{service}-{secrets.token_hex(4)}",
                    service=service,
                    node=node_id,
                    state=ReplicaState.ASSIGNED,
                    desired=DesiredState.RUN,
                    restarts=0,
                    generation=svc.generation,  # a new replica always runs the newest spec
                    spec=container_spec(svc.spec),
                    created_at=now,
                    updated_at=now,
                )
                tx.session.add(row)
                self._add_event(
                    tx,
                    f"replica {row.id} of {service} assigned to node {names.get(node_id, node_id)}",
                    kind="action",
                    service=service,
                    node=names.get(node_id, node_id),
                    replica=row.id,
                    action="place_replica",
                    outcome="ok",
                    reason=reason,
                )
                created.append(_replica(row, names))
            tx.changes.update({"spec", "state"})
        return created

    def set_desired(
        self,
        replica_ids: Iterable[str],
        desired: DesiredState,
        *,
        reason: str,
        quiet: bool = False,
    ) -> None:
        """Set ``run`` or ``stop``; draining goes through ``drain_replicas`` only."""
        if desired == DesiredState.DRAIN:
            raise ValueError("drain replicas with Store.drain_replicas (the one drain path)")
        now = utcnow()
        with self._write() as tx:
            for rid in replica_ids:
                row = tx.session.get(ReplicaRow, rid)
                if row is None or row.desired == desired:
                    continue
                row.desired = desired
                row.updated_at = now
                if desired != DesiredState.RUN and row.state != ReplicaState.FAILED:
                    row.state = ReplicaState.STOPPING
                if not quiet:
                    self._add_event(
                        tx,
                        f"replica {rid} -> {desired.value}: {reason}",
                        kind="action",
                        service=row.service,
                        replica=rid,
                        action=f"{desired.value}_replica",
                        outcome="ok",
                        reason=reason,
                    )
                tx.changes.update({"spec", "state"})

    def delete_replicas(self, replica_ids: Iterable[str], *, reason: str) -> None:
        with self._write() as tx:
            for rid in replica_ids:
                row = tx.session.get(ReplicaRow, rid)
                if row is None:
                    continue
                tx.session.delete(row)
                self._add_event(
                    tx,
                    f"replica {rid} forgotten: {reason}",
                    kind="replica",
                    service=row.service,
                    replica=rid,
                    action="forget_replica",
                    outcome="info",
                    reason=reason,
                )
                tx.changes.update({"spec", "state"})

    def apply_reports(
        self,
        node_id: str,
        reports: Sequence[ReplicaReport],
        *,
        full: bool,
        orphans: Sequence[Orphan] | None = None,
    ) -> None:
        """Take what an agent observed. ``stopped`` means the container is gone.
        ``orphans`` (when given) is every orphan the agent keeps now."""
        now = utcnow()
        with self._write() as tx:
            node = tx.session.get(NodeRow, node_id)
            if node is None:
                raise NotFound(f"no node with id {node_id!r}; register again")
            if orphans is not None:
                self._take_orphans(tx, node, orphans)
            seen = set()
            for rep in reports:
                seen.add(rep.id)
                row = tx.session.get(ReplicaRow, rep.id)
                if row is None or row.node != node_id:
                    continue  # not ours (any more): the agent removes it at its next sync
                if rep.state == "stopped":
                    if row.desired == DesiredState.STOP:
                        tx.session.delete(row)
                        tx.changes.update({"spec", "state"})
                    continue
                try:
                    state = ReplicaState(rep.state)
                except ValueError as exc:
                    raise InvalidSpec(
                        f"unknown replica state {rep.state!r}", field="state"
                    ) from exc
                if row.desired != DesiredState.RUN and state != ReplicaState.FAILED:
                    state = ReplicaState.STOPPING
                before = (row.state, row.address, row.error, row.container_id, row.restarts)
                row.state = state
                if rep.address is not None:
                    row.address = rep.address
                if rep.container_id is not None:
                    row.container_id = rep.container_id
                row.error = rep.error
                if rep.restarts is not None:
                    row.restarts = rep.restarts
                after = (row.state, row.address, row.error, row.container_id, row.restarts)
                if before != after:
                    row.updated_at = now
                    tx.changes.add("state")
                    if before[0] != row.state:
                        self._add_event(
                            tx,
                            f"replica {row.id} on {node.name}: {before[0]} -> {row.state}"
                            + (f" ({row.error})" if row.error else ""),
                            kind="replica",
                            service=row.service,
                            node=node.name,
                            replica=row.id,
                            action="observe",
                            outcome="info",
                            reason=row.error,
                        )
                    elif row.error and row.error != before[2]:
                        # A new error while the state stays (an image that cannot be
                        # pulled, a container that will not start): said at once, and
                        # once per distinct error, not at every retry.
                        self._add_event(
                            tx,
                            f"replica {row.id} on {node.name} ({row.state}): {row.error}",
                            kind="replica",
                            service=row.service,
                            node=node.name,
                            replica=row.id,
                            action="observe",
                            outcome="failed",
                            reason=row.error,
                        )
            if full:
                # A replica told to stop that the agent no longer has is gone.
                for row in tx.session.scalars(
                    select(ReplicaRow).where(
                        ReplicaRow.node == node_id, ReplicaRow.desired == DesiredState.STOP
                    )
                ):
                    if row.id not in seen:
                        tx.session.delete(row)
                        tx.changes.update({"spec", "state"})

    def assignments(self, node_id: str) -> list[Assignment]:
        with self._sessions() as s:
            if s.get(NodeRow, node_id) is None:
                raise NotFound(f"no node with id {node_id!r}; register again")
            specs = {r.name: r for r in s.scalars(select(ServiceRow)).all()}
            out = []
            for row in s.scalars(
                select(ReplicaRow).where(ReplicaRow.node == node_id).order_by(ReplicaRow.id)
            ):
                svc = specs.get(row.service)
                if svc is None:
                    continue
                spec = row.spec  # its own: during a rolling update old replicas keep theirs
                out.append(
                    Assignment(
                        replica=row.id,
                        service=row.service,
                        desired=DesiredState(row.desired),
                        image=spec["image"],
                        env=spec.get("env") or {},
                        port=spec["port"],
                        host_port=spec.get("host_port"),
                        health_path=spec.get("health_path") or "/health",
                        memory_mb=spec.get("memory_mb"),
                        cpus=spec.get("cpus"),
                        generation=row.generation,
                        spec_hash=row.spec_hash or spec_hash(spec),
                        stop_grace_s=float(svc.spec.get("stop_grace_s", DEFAULT_STOP_GRACE_S)),
                    )
                )
            return out

    def pruning(self, node_id: str) -> list[str]:
        """The orphan container ids the node's agent must remove (``Assignments.prune``)."""
        with self._sessions() as s:
            row = s.get(NodeRow, node_id)
            if row is None:
                raise NotFound(f"no node with id {node_id!r}; register again")
            return list(row.prune or [])

    def upstreams(self) -> tuple[datetime, list[UpstreamService]]:
        """Every live service with the replicas Nginx may use: desired ``run``, observed
        ``healthy`` and with an address. A draining replica is absent, which is what takes
        it out of Nginx before its container stops.

        Also answers the snapshot's ``as_of``: read under the write lock before the read
        starts, so every write that ``_drain`` timed before it has committed and is in
        the snapshot (one controller process owns the store; see docs/edge.md).
        """
        with self._write_lock:
            as_of = utcnow()
        with self._sessions() as s:
            names = {i: n for i, n in s.execute(select(NodeRow.id, NodeRow.name))}
            rows = s.scalars(
                select(ReplicaRow)
                .where(
                    ReplicaRow.desired == DesiredState.RUN,
                    ReplicaRow.state == ReplicaState.HEALTHY,
                    ReplicaRow.address.is_not(None),
                )
                .order_by(ReplicaRow.id)
            ).all()
            by_service: dict[str, list[UpstreamReplica]] = {}
            for row in rows:
                if row.address:
                    by_service.setdefault(row.service, []).append(
                        UpstreamReplica(
                            id=row.id,
                            address=row.address,
                            node=row.node,
                            node_name=names.get(row.node),
                        )
                    )
            services = s.scalars(
                select(ServiceRow).where(ServiceRow.deleting.is_(False)).order_by(ServiceRow.name)
            ).all()
            return as_of, [
                UpstreamService(
                    name=svc.name,
                    port=int(svc.spec.get("port", 8000)),
                    drain_s=service_drain_s(svc.spec),
                    replicas=by_service.get(svc.name, []),
                )
                for svc in services
            ]

    # --- edges ---------------------------------------------------------------------
    def register_edge(self, reg: EdgeRegistration) -> Edge:
        """Create or refresh an edge; edges call this at start and at every resync."""
        now = utcnow()
        with self._write() as tx:
            row = tx.session.get(EdgeRow, reg.name)
            if row is None:
                row = EdgeRow(name=reg.name, created_at=now, last_seen=now)
                tx.session.add(row)
                self._add_event(
                    tx,
                    f"edge {reg.name} registered"
                    + (f" (metrics at {reg.metrics_url})" if reg.metrics_url else ""),
                    kind="config",
                    action="register_edge",
                    outcome="ok",
                    data={"edge": reg.name},
                )
            row.metrics_url = reg.metrics_url
            if reg.applied_as_of is not None:
                row.applied_as_of = reg.applied_as_of
            row.last_seen = now
            tx.session.flush()
            return _edge(row)

    def list_edges(self) -> list[Edge]:
        with self._sessions() as s:
            return [_edge(r) for r in s.scalars(select(EdgeRow).order_by(EdgeRow.name)).all()]

    def snapshot(self) -> tuple[list[Service], list[Node], list[Replica]]:
        """Everything the reconciler decides on, read in one transaction: the services
        not being removed, all nodes, all replicas (a removed service's too)."""
        with self._sessions() as s:
            live = s.scalars(select(ServiceRow).where(ServiceRow.deleting.is_(False))).all()
            nodes = [_node(r) for r in s.scalars(select(NodeRow)).all()]
            names = {n.id: n.name for n in nodes}
            rows = s.scalars(select(ReplicaRow)).all()
            by_service: dict[str, list[ReplicaRow]] = {}
            for r in rows:
                by_service.setdefault(r.service, []).append(r)
            reps = [_replica(r, names) for r in rows]
            return [_service(r, by_service.get(r.name, ())) for r in live], nodes, reps

    def _fresh(self, row: NodeRow, now: datetime) -> bool:
        last = _utc(row.last_heartbeat)
        return last is not None and now - last <= self.node_timeout

    def pause_rollout(self, service: str, *, generation: int, reason: str) -> bool:
        """Pause ``service``'s rolling update to ``generation``: no more old replicas are
        replaced until a new generation. Said once: False when already paused (or when the
        service has moved on to another generation since)."""
        with self._write() as tx:
            row = tx.session.get(ServiceRow, service)
            if row is None or row.generation != generation:
                return False
            if row.paused_generation == generation:
                return False
            row.paused_generation = generation
            row.pause_reason = reason
            self._add_event(
                tx,
                f"rolling update of {service} to generation {generation} paused: {reason}; "
                f"the old replicas keep serving. To go on: {_way_out(row)}",
                kind="decision",
                service=service,
                action="rolling_update",
                outcome="failed",
                reason=reason,
                data={"generation": generation},
            )
            tx.changes.add("state")
            return True

    def node_removals_pending(self) -> list[str]:
        with self._sessions() as s:
            return list(s.scalars(select(NodeRow.id).where(NodeRow.removing.is_(True))).all())

    # --- orphans: containers a node keeps that no replica accounts for -------------------
    def _take_orphans(self, tx: _WriteTx, node: NodeRow, orphans: Sequence[Orphan]) -> None:
        """Store the agent's full list of orphans. One adopted meanwhile (a replica of that
        id is on the node) is no orphan any more, whatever a late report says. Said in one
        event when the set changes: how many there are and what to do about them."""
        adopted = set(
            tx.session.scalars(select(ReplicaRow.id).where(ReplicaRow.node == node.id)).all()
        )
        now_list = [o for o in orphans if o.replica not in adopted]
        before = {o.get("container_id") for o in node.orphans or []}
        after = {o.container_id for o in now_list}
        node.orphans = [o.model_dump(mode="json") for o in now_list]
        pruning = [cid for cid in node.prune or [] if cid in after]
        if pruning != list(node.prune or []):
            node.prune = pruning
            tx.changes.add("spec")
        if before == after:
            return
        tx.changes.add("state")
        if not after:
            self._add_event(
                tx,
                f"node {node.name} has no orphaned containers any more",
                kind="node",
                node=node.name,
                action="orphans",
                outcome="info",
                data={"orphans": 0},
            )
            return
        services = sorted({o.service for o in now_list})
        self._add_event(
            tx,
            f"node {node.name} keeps {len(after)} orphaned container(s) running "
            f"(service(s) {', '.join(services)}) that this controller has no replica for "
            "(its store is new or was lost, or the node was unknown to it). Nothing is "
            f"removed: `orchestrify node adopt {node.id}` makes them replicas again (of the "
            f"services of those names; or re-create a service by the same name), "
            f"`orchestrify node prune {node.id}` removes them",
            kind="node",
            node=node.name,
            action="orphans",
            outcome="info",
            data={"orphans": len(after), "services": services},
        )

    def adopt_orphans(self, id_or_name: str) -> OrphanAdoption:
        """Make a node's orphans replicas again, without restarting them: each one whose
        service exists (by name) becomes a replica row with the orphan's replica id on
        the node. Orphans of services that do not exist stay orphans."""
        now = utcnow()
        with self._write() as tx:
            node = self._node_row(tx.session, id_or_name)
            services = {
                r.name: r
                for r in tx.session.scalars(
                    select(ServiceRow).where(ServiceRow.deleting.is_(False))
                ).all()
            }
            return self._adopt(tx, node, services=services, now=now)

    def _adopt(
        self, tx: _WriteTx, node: NodeRow, *, services: dict[str, ServiceRow], now: datetime
    ) -> OrphanAdoption:
        """Adopt the orphans of ``node`` whose service is in ``services``. One whose
        container spec hashes like the service's current spec joins the current
        generation; another is adopted as the generation before, with its own hash in its
        assignment (so the agent keeps it), and the rolling update replaces it gracefully."""
        adopted: list[str] = []
        outdated: list[str] = []
        left: list[Orphan] = []
        keep: list[dict[str, Any]] = []
        reasons: list[str] = []
        for raw in node.orphans or []:
            orphan = Orphan.model_validate(raw)
            svc = services.get(orphan.service)
            if svc is None:
                left.append(orphan)
                keep.append(raw)
                reasons.append(f"{orphan.replica}: no service named {orphan.service!r}")
                continue
            if tx.session.get(ReplicaRow, orphan.replica) is not None:
                left.append(orphan)
                keep.append(raw)
                reasons.append(f"{orphan.replica}: a replica of that id already exists")
                continue
            current = container_spec(svc.spec)
            same = orphan.spec_hash is not None and orphan.spec_hash == spec_hash(current)
            spec = current if same else {**current, "image": orphan.image or current["image"]}
            tx.session.add(
                ReplicaRow(
                    id=orphan.replica,
                    service=svc.name,
                    node=node.id,
                    state=ReplicaState.STARTING,
                    desired=DesiredState.RUN,
                    address=orphan.address,
                    container_id=orphan.container_id,
                    restarts=0,
                    generation=svc.generation if same else svc.generation - 1,
                    spec=spec,
                    # Unknown (an older build's container): a hash no spec has, so the
                    # agent never mistakes it for the service's current spec.
                    spec_hash=None if same else (orphan.spec_hash or "unknown"),
                    created_at=now,
                    updated_at=now,
                )
            )
            (adopted if same else outdated).append(orphan.replica)
            self._add_event(
                tx,
                f"orphan {orphan.replica} (container {orphan.container_id[:12]}) on "
                f"{node.name} adopted by service {svc.name}"
                + (
                    ""
                    if same
                    else ": it runs another spec than the service's, so the rolling update "
                    "replaces it one replica at a time"
                ),
                kind="action",
                service=svc.name,
                node=node.name,
                replica=orphan.replica,
                action="adopt_orphan",
                outcome="ok",
            )
        node.orphans = keep
        node.prune = [cid for cid in node.prune or [] if cid in {o.container_id for o in left}]
        done = len(adopted) + len(outdated)
        message = f"node {node.name}: {done} orphan(s) adopted"
        if outdated:
            message += f" ({len(outdated)} of another spec, to be replaced by a rolling update)"
        if left:
            message += (
                f"; {len(left)} still orphaned ({'; '.join(reasons)}): create the service "
                f"by that name to adopt them, or `orchestrify node prune {node.id}`"
            )
        if done or left:
            tx.changes.update({"spec", "state"})
        return OrphanAdoption(
            node=node.id, adopted=adopted, outdated=outdated, left=left, message=message
        )

    def prune_orphans(self, id_or_name: str) -> OrphanPrune:
        """Tell the node's agent to remove its orphans (``Assignments.prune``); each one
        leaves the list once the agent no longer reports it."""
        with self._write() as tx:
            node = self._node_row(tx.session, id_or_name)
            ids = [str(o.get("container_id")) for o in node.orphans or []]
            node.prune = ids
            if ids:
                message = f"node {node.name}: {len(ids)} orphaned container(s) to be removed"
                self._add_event(
                    tx,
                    message,
                    kind="action",
                    node=node.name,
                    action="prune_orphans",
                    outcome="ok",
                    data={"containers": ids},
                )
                tx.changes.update({"spec", "state"})
            else:
                message = f"node {node.name} has no orphaned containers"
            return OrphanPrune(node=node.id, pruning=ids, message=message)


def _invalid_from(exc: ValueError) -> InvalidSpec:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(error_location(first)) or None
        msg = str(first.get("msg", exc)).removeprefix("Value error, ")
        return InvalidSpec(f"{loc}: {msg}" if loc else msg, field=loc)
    return InvalidSpec(str(exc))


def _add_missing_columns(engine: Engine) -> None:
    """Bring a store made by an older build up to date: add the columns it lacks
    (``ADDED_COLUMNS``; ``create_all`` never alters a table) and say what the existing
    replicas run: the service's current generation and spec, which is what the older
    build handed them."""
    inspector = inspect(engine)
    with engine.begin() as conn:
        for table_name, columns in ADDED_COLUMNS.items():
            have = {c["name"] for c in inspector.get_columns(table_name)}
            table = Base.metadata.tables[table_name]
            for column in columns:
                if column not in have:
                    kind = table.c[column].type.compile(dialect=engine.dialect)
                    conn.execute(text(f"ALTER TABLE {table_name} ADD COLUMN {column} {kind}"))
    with Session(engine) as s, s.begin():
        services = {r.name: r for r in s.scalars(select(ServiceRow)).all()}
        for rep in s.scalars(select(ReplicaRow).where(ReplicaRow.generation.is_(None))).all():
            svc = services.get(rep.service)  # None: its service is gone; it only stops
            rep.generation = svc.generation if svc is not None else 1
            rep.spec = container_spec(svc.spec) if svc is not None else {}


def _ensure_cluster_id(sessions: sessionmaker[_BorderSession]) -> str:
    """The store's cluster id, made (random) the first time the store is opened. Agents
    label every container with it; a controller whose store has another one is a
    stranger to them, whose silence about a container is no order to remove it."""
    with sessions() as s:
        row = s.get(MetaRow, CLUSTER_ID_KEY)
        if row is not None:
            return row.value
    try:
        with sessions() as s, s.begin():
            s.add(MetaRow(key=CLUSTER_ID_KEY, value=secrets.token_hex(8)))
    except (IntegrityError, Conflict):
        pass  # another controller on the same database made it first
    with sessions() as s:
        made = s.get(MetaRow, CLUSTER_ID_KEY)
        assert made is not None
        return made.value


def _connect_args(url: str) -> dict[str, Any]:
    return {"check_same_thread": False, "timeout": 30} if url.startswith("sqlite") else {}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


_Row = TypeVar("_Row")


class _WriteTx:
    """One serialized write transaction; tells subscribers after it commits."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.session: Session
        self.changes: set[ChangeKind] = set()
        self.events: list[Event] = []
        self.event_rows: list[EventRow] = []
        # Rows loaded ahead by ``preload`` (None: known to be absent), held here because
        # the session's identity map only references them weakly.
        self._known: dict[tuple[type[Any], Any], Any] = {}

    def preload(self, model: type[Any], column: Any, keys: Iterable[Any]) -> None:
        """Load the ``model`` rows whose primary key ``column`` is in ``keys`` in one
        query, so that ``get`` answers for each of them (present or not) without one."""
        wanted = set(keys) - {k for (m, k) in self._known if m is model}
        if not wanted:
            return
        for key in wanted:
            self._known[(model, key)] = None
        for row in self.session.scalars(select(model).where(column.in_(wanted))).all():
            self._known[(model, getattr(row, column.key))] = row

    def get(self, model: type[_Row], key: Any) -> _Row | None:
        """``session.get``, answered from ``preload`` when it loaded ``key``."""
        try:
            row: _Row | None = self._known[(model, key)]
        except KeyError:
            return self.session.get(model, key)
        return row

    def add(self, row: _Row, key: Any) -> _Row:
        """``session.add`` a new row that ``get`` finds by ``key`` from now on."""
        self.session.add(row)
        self._known[(type(row), key)] = row
        return row

    def __enter__(self) -> _WriteTx:
        self.store._write_lock.acquire()
        self.session = self.store._sessions()
        self.session.begin()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                try:
                    if self.event_rows:
                        self.session.flush()  # assigns the event ids
                        self.events.extend(_event(row) for row in self.event_rows)
                    self.session.commit()
                except (SQLAlchemyError, OverflowError, UnicodeEncodeError) as err:
                    self.session.rollback()
                    translated = translate_store_error(err)
                    if translated is None:
                        raise
                    raise translated from err
            else:
                self.session.rollback()
                translated = translate_store_error(exc)
                if translated is not None:
                    raise translated from exc
        finally:
            self.session.close()
            self.store._write_lock.release()
        if exc_type is None:
            for ev in self.events:
                for listener in self.store._event_listeners:
                    listener(ev)
            if self.changes:
                for change_listener in self.store._change_listeners:
                    change_listener(self.changes)
