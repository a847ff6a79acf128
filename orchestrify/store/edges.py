"""Edges (Nginx hosts) and the upstreams they render."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from orchestrify.models import (
    DesiredState,
    Edge,
    EdgeRegistration,
    ReplicaState,
    UpstreamReplica,
    UpstreamService,
)
from orchestrify.store.engine import StoreCore, retry_on_race
from orchestrify.store.listen import upstreams_as_of
from orchestrify.store.rows import (
    edge_view,
    service_drain_s,
    utcnow,
)
from orchestrify.store.tables import EdgeRow, NodeRow, ReplicaRow, ServiceRow

__all__ = ["EdgesPart"]


class EdgesPart(StoreCore):
    """The edges and the view they serve."""

    @retry_on_race
    def register_edge(self, reg: EdgeRegistration) -> Edge:
        """Create or refresh an edge; edges call this at start and at every resync."""
        now = utcnow()
        with self.write() as tx:
            tx.lock(f"edge:{reg.name}")
            row = tx.get(EdgeRow, reg.name)
            if row is None:
                row = EdgeRow(name=reg.name, created_at=now, last_seen=now)
                tx.session.add(row)
                tx.add_event(
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
            return edge_view(row)

    def list_edges(self) -> list[Edge]:
        with self.read() as s:
            return [edge_view(r) for r in s.scalars(select(EdgeRow).order_by(EdgeRow.name)).all()]

    def upstreams(self) -> tuple[datetime, list[UpstreamService]]:
        """Every live service with the replicas Nginx may use: desired ``run``, observed
        ``healthy`` and with an address. A draining replica is absent, which is what takes
        it out of Nginx before its container stops.

        Also answers the snapshot's ``as_of``, read before the snapshot so that every
        write that ``drain_replica`` timed before it has committed and is in the
        snapshot: under the write lock on SQLite (one controller process owns the store);
        on PostgreSQL, the database's clock under the upstreams clock lock, which orders
        it with the drains of every controller (``listen.upstreams_as_of``; see
        docs/protocol.md). So ``as_of`` never goes backwards when an edge moves from one
        controller to another.
        """
        if self.shares_changes:
            with self._sessions() as clock, clock.begin():  # its lock ends with it
                as_of = upstreams_as_of(clock.connection())
        else:
            with self._write_lock:
                as_of = utcnow()
        with self.read() as s:
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
