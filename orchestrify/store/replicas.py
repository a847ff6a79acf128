"""Replicas: placement, drain, agents' reports, assignments, and orphans (containers a
node keeps that no replica accounts for)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from orchestrify.errors import InvalidSpec, NotFound
from orchestrify.models import (
    DEFAULT_LOG_DRIVER,
    DEFAULT_STOP_GRACE_S,
    Assignment,
    DesiredState,
    Node,
    Orphan,
    OrphanAdoption,
    OrphanPrune,
    Replica,
    ReplicaReport,
    ReplicaState,
    Service,
    container_spec,
    spec_hash,
)
from orchestrify.store.engine import StoreCore, WriteTx, retry_on_race
from orchestrify.store.rows import (
    node_row,
    node_view,
    replica_view,
    service_drain_s,
    service_view,
    utcnow,
)
from orchestrify.store.tables import NodeRow, ReplicaRow, ServiceRow

__all__ = [
    "ReplicasPart",
    "ReportBatchItem",
    "adopt_orphans_of",
    "drain_replica",
    "take_orphans",
]


def drain_replica(
    tx: WriteTx,
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

    ``left_upstreams_at`` is ordered with ``upstreams``' ``as_of`` (``tx.upstreams_clock``:
    the store's write lock on SQLite, the database's clock and an advisory lock on
    PostgreSQL, for every controller), so a snapshot with ``as_of`` after
    ``left_upstreams_at`` is sure to be without this replica.
    """
    if row.desired != DesiredState.RUN:
        return False
    in_upstreams = row.state == ReplicaState.HEALTHY and row.address is not None
    now = tx.upstreams_clock() if in_upstreams else utcnow()
    svc = tx.session.get(ServiceRow, row.service)
    drain_s = service_drain_s(svc.spec if svc is not None else None)
    row.desired = DesiredState.DRAIN
    row.stop_after = now + timedelta(seconds=drain_s)
    row.left_upstreams_at = now if in_upstreams else None
    if row.state != ReplicaState.FAILED:
        row.state = ReplicaState.STOPPING
    row.updated_at = now
    if not quiet:
        tx.add_event(
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


def take_orphans(tx: WriteTx, node: NodeRow, orphans: Sequence[Orphan]) -> None:
    """Store the agent's full list of orphans. One adopted meanwhile (a replica of that
    id is on the node) is no orphan any more, whatever a late report says. Said in one
    event when the set changes: how many there are and what to do about them."""
    adopted = set(tx.session.scalars(select(ReplicaRow.id).where(ReplicaRow.node == node.id)).all())
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
        tx.add_event(
            f"node {node.name} has no orphaned containers any more",
            kind="node",
            node=node.name,
            action="orphans",
            outcome="info",
            data={"orphans": 0},
        )
        return
    services = sorted({o.service for o in now_list})
    tx.add_event(
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


def adopt_orphans_of(
    tx: WriteTx, node: NodeRow, *, services: dict[str, ServiceRow], now: datetime
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
        tx.add_event(
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


class ReplicasPart(StoreCore):
    """The replicas, what the agents report of them, and orphans."""

    def list_replicas(
        self, *, service: str | None = None, node: str | None = None
    ) -> list[Replica]:
        with self.read() as s:
            q = select(ReplicaRow)
            if service:
                q = q.where(ReplicaRow.service == service)
            if node:
                q = q.where(ReplicaRow.node == node_row(s, node).id)
            names = {i: n for i, n in s.execute(select(NodeRow.id, NodeRow.name))}
            rows = s.scalars(q.order_by(ReplicaRow.service, ReplicaRow.created_at)).all()
            return [replica_view(r, names) for r in rows]

    def get_replica(self, replica_id: str) -> Replica:
        with self.read() as s:
            row = s.get(ReplicaRow, replica_id)
            if row is None:
                raise NotFound(f"no replica with id {replica_id!r}")
            names = {i: n for i, n in s.execute(select(NodeRow.id, NodeRow.name))}
            return replica_view(row, names)

    @retry_on_race
    def remove_replica(
        self, replica_id: str, *, reason: str = "removed through the API"
    ) -> Replica:
        """Drain one replica out; the reconciler replaces it unless the service shrank."""
        with self.write() as tx:
            row = tx.get(ReplicaRow, replica_id)
            if row is None:
                raise NotFound(f"no replica with id {replica_id!r}")
            drain_replica(tx, row, reason=reason, action="remove_replica")
            return replica_view(row)

    @retry_on_race
    def drain_replicas(
        self, replica_ids: Iterable[str], *, reason: str, action: str = "drain_replica"
    ) -> None:
        """Drain these replicas (scale-in, node drain, rolling update, rollback): see
        ``drain_replica``. Replicas already leaving, or gone, are left as they are."""
        with self.write() as tx:
            for rid in replica_ids:
                row = tx.get(ReplicaRow, rid)
                if row is not None:
                    drain_replica(tx, row, reason=reason, action=action)

    @retry_on_race
    def create_replicas(
        self,
        service: str,
        node_ids: Sequence[str],
        *,
        reason: str,
        up_to: int | None = None,
    ) -> list[Replica]:
        """Place one new replica (of the current generation) on each of ``node_ids``.

        ``up_to`` makes it a compare-and-set: the service's row is locked and only as
        many are placed as keep its running replicas (desired ``run``, not failed) at
        most ``up_to``. Two controllers that decided from the same snapshot then place
        the missing replicas once between them, never twice; fewer (or none) placed is
        said in an event, and the next reconcile cycle decides again."""
        now = utcnow()
        created = []
        with self.write() as tx:
            svc = tx.get(ServiceRow, service)
            if svc is None:
                raise NotFound(f"no service named {service!r}")
            names = {i: n for i, n in tx.session.execute(select(NodeRow.id, NodeRow.name))}
            if svc.spec.get("host_port") is not None:
                # One per node (the port is the node's): a node that runs one already is
                # skipped, whatever the snapshot the placement was decided on said (two
                # controllers may have placed from the same one). The service's row lock
                # orders this check with the other writers'.
                taken = set(
                    tx.session.scalars(
                        select(ReplicaRow.node).where(
                            ReplicaRow.service == service,
                            ReplicaRow.desired == DesiredState.RUN,
                            ReplicaRow.state != ReplicaState.FAILED,
                        )
                    )
                )
                free = [n for n in dict.fromkeys(node_ids) if n not in taken]
                if len(free) < len(node_ids):
                    tx.add_event(
                        f"placed none of {service} on {len(node_ids) - len(free)} node(s) "
                        f"that run one already: its host port {svc.spec['host_port']} is "
                        "taken there",
                        kind="decision",
                        service=service,
                        action="place_replica",
                        outcome="info",
                        reason="changed",
                        data={"asked": list(node_ids), "placed_on": free},
                    )
                node_ids = free
            if up_to is not None:
                running = tx.session.scalar(
                    select(func.count())
                    .select_from(ReplicaRow)
                    .where(
                        ReplicaRow.service == service,
                        ReplicaRow.desired == DesiredState.RUN,
                        ReplicaRow.state != ReplicaState.FAILED,
                    )
                )
                room = max(0, up_to - (running or 0))
                if room < len(node_ids):
                    tx.add_event(
                        f"placed {room} of {len(node_ids)} replica(s) of {service}: it has "
                        f"{running} running already, and this placement was for at most "
                        f"{up_to} (another writer placed some meanwhile)",
                        kind="decision",
                        service=service,
                        action="place_replica",
                        outcome="refused" if room == 0 else "info",
                        reason="changed",
                        data={"asked": len(node_ids), "placed": room, "running": running},
                    )
                    node_ids = list(node_ids)[:room]
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
                tx.add_event(
                    f"replica {row.id} of {service} assigned to node {names.get(node_id, node_id)}",
                    kind="action",
                    service=service,
                    node=names.get(node_id, node_id),
                    replica=row.id,
                    action="place_replica",
                    outcome="ok",
                    reason=reason,
                )
                created.append(replica_view(row, names))
            tx.changes.update({"spec", "state"})
        return created

    @retry_on_race
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
        with self.write() as tx:
            for rid in replica_ids:
                row = tx.get(ReplicaRow, rid)
                if row is None or row.desired == desired:
                    continue
                row.desired = desired
                row.updated_at = now
                if desired != DesiredState.RUN and row.state != ReplicaState.FAILED:
                    row.state = ReplicaState.STOPPING
                if not quiet:
                    tx.add_event(
                        f"replica {rid} -> {desired.value}: {reason}",
                        kind="action",
                        service=row.service,
                        replica=rid,
                        action=f"{desired.value}_replica",
                        outcome="ok",
                        reason=reason,
                    )
                tx.changes.update({"spec", "state"})

    @retry_on_race
    def delete_replicas(self, replica_ids: Iterable[str], *, reason: str) -> None:
        with self.write() as tx:
            for rid in replica_ids:
                row = tx.get(ReplicaRow, rid)
                if row is None:
                    continue
                tx.session.delete(row)
                tx.add_event(
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
        outcome = self.apply_report_batch(
            [ReportBatchItem(node_id=node_id, reports=reports, full=full, orphans=orphans)]
        )[0]
        if outcome is not None:
            raise outcome

    @retry_on_race
    def apply_report_batch(self, batch: Sequence[ReportBatchItem]) -> list[NotFound | None]:
        """Take many agents' reports (``apply_reports`` each) in one write transaction:
        the controller groups the reports that arrive while one batch is written, so a
        fleet's reports are a few writes, not one each. The outcome of each, in order:
        None, or ``NotFound`` for a node the store does not know (nothing of it is
        applied). Any other error fails the whole batch (nothing is written)."""
        now = utcnow()
        outcomes: list[NotFound | None] = []
        with self.write() as tx:
            tx.preload(NodeRow, NodeRow.id, {item.node_id for item in batch})
            for item in batch:
                node = tx.get(NodeRow, item.node_id)
                if node is None:
                    outcomes.append(NotFound(f"no node with id {item.node_id!r}; register again"))
                    continue
                _apply_report(tx, node, item, now=now)
                outcomes.append(None)
        return outcomes

    def assignments(self, node_id: str) -> list[Assignment]:
        with self.read() as s:
            if s.get(NodeRow, node_id) is None:
                raise NotFound(f"no node with id {node_id!r}; register again")
            specs = {r.name: r for r in s.scalars(select(ServiceRow)).all()}
            rows = s.scalars(
                select(ReplicaRow).where(ReplicaRow.node == node_id).order_by(ReplicaRow.id)
            )
            return [a for row in rows if (a := _assignment(row, specs)) is not None]

    def node_assignments(self, node_id: str) -> tuple[list[Assignment], list[str]] | None:
        """One node's assignments and ``prune`` list, read in one transaction (None: no
        such node): for a long-poll answered at once (an agent that just started or
        registered), where reading every node's would cost a fleet's worth per agent."""
        with self.read() as s:
            node = s.get(NodeRow, node_id)
            if node is None:
                return None
            rows = s.scalars(
                select(ReplicaRow).where(ReplicaRow.node == node_id).order_by(ReplicaRow.id)
            ).all()
            # Only this node's replicas' services, not every service of the cluster.
            names = {row.service for row in rows}
            specs = (
                {r.name: r for r in s.scalars(select(ServiceRow).where(ServiceRow.name.in_(names)))}
                if names
                else {}
            )
            mine = [a for row in rows if (a := _assignment(row, specs)) is not None]
            return mine, list(node.prune or [])

    def every_assignment(self) -> dict[str, tuple[list[Assignment], list[str]]]:
        """Every node's assignments and ``prune`` list, read in one transaction: the
        controller answers all its agents' long-polls from this, read once per change,
        not once per agent."""
        with self.read() as s:
            specs = {r.name: r for r in s.scalars(select(ServiceRow)).all()}
            out: dict[str, tuple[list[Assignment], list[str]]] = {
                node_id: ([], list(prune or []))
                for node_id, prune in s.execute(select(NodeRow.id, NodeRow.prune))
            }
            for row in s.scalars(select(ReplicaRow).order_by(ReplicaRow.node, ReplicaRow.id)):
                mine = out.get(row.node)
                assignment = _assignment(row, specs)
                if mine is not None and assignment is not None:
                    mine[0].append(assignment)
            return out

    def pruning(self, node_id: str) -> list[str]:
        """The orphan container ids the node's agent must remove (``Assignments.prune``)."""
        with self.read() as s:
            row = s.get(NodeRow, node_id)
            if row is None:
                raise NotFound(f"no node with id {node_id!r}; register again")
            return list(row.prune or [])

    def snapshot(self) -> tuple[list[Service], list[Node], list[Replica]]:
        """Everything the reconciler decides on, read in one transaction: the services
        not being removed, all nodes, all replicas (a removed service's too)."""
        plan = self.plan_nodes
        with self.read() as s:
            # Taken before the transaction's first query (see plan_nodes.py).
            before, figures_at = (plan.generation, self.nodes_generation) if plan else (0, 0)
            live = s.scalars(select(ServiceRow).where(ServiceRow.deleting.is_(False))).all()
            rows = s.scalars(select(ReplicaRow)).all()
            if plan is not None:
                nodes = plan.nodes(s, before=before, figures_at=figures_at)
            else:
                nodes = [node_view(r) for r in s.scalars(select(NodeRow)).all()]
            names = {n.id: n.name for n in nodes}
            by_service: dict[str, list[ReplicaRow]] = {}
            for r in rows:
                by_service.setdefault(r.service, []).append(r)
            reps = [replica_view(r, names) for r in rows]
            return [service_view(r, by_service.get(r.name, ())) for r in live], nodes, reps

    @retry_on_race
    def adopt_orphans(self, id_or_name: str) -> OrphanAdoption:
        """Make a node's orphans replicas again, without restarting them: each one whose
        service exists (by name) becomes a replica row with the orphan's replica id on
        the node. Orphans of services that do not exist stay orphans."""
        now = utcnow()
        with self.write() as tx:
            node = node_row(tx.session, id_or_name, lock=tx.locks_rows)
            services = {
                r.name: r
                for r in tx.session.scalars(
                    select(ServiceRow).where(ServiceRow.deleting.is_(False))
                ).all()
            }
            return adopt_orphans_of(tx, node, services=services, now=now)

    @retry_on_race
    def prune_orphans(self, id_or_name: str) -> OrphanPrune:
        """Tell the node's agent to remove its orphans (``Assignments.prune``); each one
        leaves the list once the agent no longer reports it."""
        with self.write() as tx:
            node = node_row(tx.session, id_or_name, lock=tx.locks_rows)
            ids = [str(o.get("container_id")) for o in node.orphans or []]
            node.prune = ids
            if ids:
                message = f"node {node.name}: {len(ids)} orphaned container(s) to be removed"
                tx.add_event(
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


def _assignment(row: ReplicaRow, specs: Mapping[str, ServiceRow]) -> Assignment | None:
    """What an agent is told of one replica (None: its service is gone)."""
    svc = specs.get(row.service)
    if svc is None:
        return None
    spec = row.spec  # its own: during a rolling update old replicas keep theirs
    return Assignment(
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
        log_driver=spec.get("log_driver") or DEFAULT_LOG_DRIVER,
        log_opts=spec.get("log_opts") or {},
        generation=row.generation,
        spec_hash=row.spec_hash or spec_hash(spec),
        stop_grace_s=float(svc.spec.get("stop_grace_s", DEFAULT_STOP_GRACE_S)),
    )


@dataclass(frozen=True)
class ReportBatchItem:
    """One agent's report (``POST /v1/nodes/{id}/replicas``), as ``apply_reports`` takes it."""

    node_id: str
    reports: Sequence[ReplicaReport]
    full: bool
    orphans: Sequence[Orphan] | None = None


def _apply_report(tx: WriteTx, node: NodeRow, item: ReportBatchItem, *, now: datetime) -> None:
    """What one agent's report changes, inside ``tx``."""
    node_id, reports, full, orphans = item.node_id, item.reports, item.full, item.orphans
    node.answered_unknown = False  # its agent has its registration's answer
    if orphans is not None:
        take_orphans(tx, node, orphans)
    # Every reported replica's row in one query (locked, on PostgreSQL).
    tx.preload(ReplicaRow, ReplicaRow.id, [rep.id for rep in reports])
    seen = set()
    for rep in reports:
        seen.add(rep.id)
        row = tx.get(ReplicaRow, rep.id)
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
            raise InvalidSpec(f"unknown replica state {rep.state!r}", field="state") from exc
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
                tx.add_event(
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
                tx.add_event(
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
