"""Nodes: registration and its tokens, heartbeats, draining, liveness marks, removal."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select

from orchestrify.errors import Conflict, NotFound, Unauthorized
from orchestrify.models import (
    Heartbeat,
    Node,
    NodeRegistration,
    NodeState,
)
from orchestrify.store.engine import StoreCore, WriteTx, retry_on_race
from orchestrify.store.node_facts import NodeFact
from orchestrify.store.replicas import take_orphans
from orchestrify.store.rows import (
    LIVE_STATES,
    SILENT_STATES,
    as_utc,
    node_row,
    node_view,
    utcnow,
)
from orchestrify.store.tables import NodeRow, ReplicaRow

__all__ = ["NodeBeat", "NodeEnrollment", "NodesPart", "hash_token", "move_address"]


@dataclass(frozen=True)
class NodeBeat:
    """What liveness is judged on: a node's id, state and stored heartbeat time."""

    id: str
    state: NodeState
    last_heartbeat: datetime | None


@dataclass(frozen=True)
class NodeEnrollment:
    """A registration's outcome: the node, its fresh token, and whether this store knew
    the node (by the id it presented, or by its name when it presented none)."""

    node: Node
    token: str
    known: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def move_address(tx: WriteTx, row: NodeRow, address: str) -> None:
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
    tx.add_event(
        f"node {row.name} moved from {old} to {address}; {moved} replica address(es) follow",
        kind="node",
        node=row.name,
        action="node_address",
        outcome="info",
        data={"from": old, "to": address, "replicas": moved},
    )
    tx.changes.update({"nodes", "state"})


class NodesPart(StoreCore):
    """The worker hosts."""

    def register_node(self, reg: NodeRegistration) -> tuple[Node, str]:
        """Register (or re-register) a node; returns it and its fresh node token."""
        enrolled = self.enroll_node(reg)
        return enrolled.node, enrolled.token

    @retry_on_race
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
        with self.write() as tx:
            # Two registrations of one name (or one id) wait for each other.
            tx.lock(f"node-name:{reg.name}")
            if reg.node_id:
                tx.lock(f"node-id:{reg.node_id}")
            row = tx.get(NodeRow, reg.node_id) if reg.node_id else None
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
                    if same_name.state not in SILENT_STATES and self._fresh(same_name, now):
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
                move_address(tx, row, reg.address)
            row.labels = reg.labels
            row.cpus = reg.cpus
            row.memory_total = reg.memory_total
            row.agent_url = reg.agent_url
            row.token_hash = hash_token(token)
            row.last_heartbeat = now
            if created or row.state in SILENT_STATES:
                row.state = NodeState.DRAINING if row.draining else NodeState.READY
            if not known and reg.containers:
                # Orphans from the start, in the same transaction: the reconciler never
                # sees this node ready without them (and places nothing beside them).
                tx.session.flush()
                take_orphans(tx, row, reg.containers)
            if created and reg.node_id:
                message = (
                    f"node {reg.name} registered with id {reg.node_id}, which this controller "
                    f"did not know (a new or wiped store, or a node removed with --force): "
                    f"the containers it already runs keep running as orphans"
                )
            else:
                what = "registered" if created else "re-registered"
                message = f"node {reg.name} {what} at {reg.address}"
            tx.add_event(
                message,
                kind="node",
                node=reg.name,
                action="register",
                outcome="ok",
                data={"known": known, "node_id": row.id},
            )
            tx.changes.update({"nodes", "state"})
            tx.session.flush()
            return NodeEnrollment(node=node_view(row), token=token, known=known)

    @retry_on_race
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
        with self.write() as tx:
            row = tx.get(NodeRow, reg.node_id)
            if row is None:
                return None  # unknown id (a wiped store): the join token is enough
            if reg.node_token and secrets.compare_digest(
                row.token_hash, hash_token(reg.node_token)
            ):
                return None
            why = "without a node token" if not reg.node_token else "with a wrong node token"
            message = (
                f"registration as node {row.id} ({row.name}) refused: presented {why}. "
                f"Only that node's agent (with its saved token) or the admin token may "
                f"re-register a known node id; if this host really is {row.name} and lost "
                f"its token, forget the node first (`orchestrify node rm {row.id} --force`)"
            )
            tx.add_event(
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
        with self.read() as s:
            row = s.get(NodeRow, node_id)
            if row is None:
                raise NotFound(f"no node with id {node_id!r}; register again")
            if not secrets.compare_digest(row.token_hash, hash_token(token)):
                raise Unauthorized("wrong node token")

    @retry_on_race
    def heartbeat(self, node_id: str, hb: Heartbeat) -> Node:
        now = utcnow()
        with self.write() as tx:
            row = tx.get(NodeRow, node_id)
            if row is None:
                raise NotFound(f"no node with id {node_id!r}; register again")
            _apply_heartbeat(tx, row, hb, now)
            return node_view(row)

    @retry_on_race
    def record_heartbeats(self, beats: Mapping[str, tuple[Heartbeat, datetime]]) -> list[str]:
        """Store many heartbeats (node id -> what it said, when it was received) in one
        write transaction, as ``heartbeat`` would one by one: the controller batches them
        so a thousand agents are not a thousand writes. A node gone meanwhile is skipped;
        the ids of those are returned."""
        gone = []
        with self.write(heartbeats_only=True) as tx:
            tx.preload(NodeRow, NodeRow.id, beats)
            for node_id in sorted(beats):
                row = tx.get(NodeRow, node_id)
                if row is None:
                    gone.append(node_id)
                    continue
                hb, at = beats[node_id]
                _apply_heartbeat(tx, row, hb, at)
        return gone

    def node_fact(self, node_id: str) -> NodeFact | None:
        """Node ``node_id`` and its token hash (None: no such node): kept in memory on
        SQLite until a write changes the node (``node_facts``), else one primary-key
        read."""
        facts = self.node_facts
        if facts is not None:
            kept = facts.get(node_id)
            if kept is not None:
                return kept
        epoch = facts.epoch if facts is not None else 0
        with self.read() as s:
            row = s.get(NodeRow, node_id)
            if row is None:
                return None
            fact = NodeFact(node=node_view(row), token_hash=row.token_hash)
        if facts is not None:
            facts.reads += 1
            facts.keep(node_id, fact, epoch=epoch)
        return fact

    def node_beats(self) -> list[NodeBeat]:
        """Every node's id, state and stored heartbeat time, in one light query: what the
        reconciler judges liveness on each cycle (a fleet's full node views are costly)."""
        with self.read() as s:
            query = select(NodeRow.id, NodeRow.state, NodeRow.last_heartbeat)
            return [
                NodeBeat(id=node_id, state=NodeState(state), last_heartbeat=as_utc(beat))
                for node_id, state, beat in s.execute(query)
            ]

    def list_nodes(self) -> list[Node]:
        with self.read() as s:
            return [node_view(r) for r in s.scalars(select(NodeRow).order_by(NodeRow.name)).all()]

    def get_node(self, id_or_name: str) -> Node:
        with self.read() as s:
            return node_view(node_row(s, id_or_name))

    @retry_on_race
    def set_node_draining(self, id_or_name: str, *, draining: bool, remove: bool = False) -> Node:
        with self.write() as tx:
            row = node_row(tx.session, id_or_name, lock=tx.locks_rows)
            row.draining = draining
            # A silent node stays silent (its next heartbeat applies the drain flag);
            # no wall-clock comparison here: liveness is the reconciler's to judge.
            fresh = row.state not in SILENT_STATES
            if draining:
                row.state = NodeState.DRAINING if fresh else row.state
                row.removing = row.removing or remove
                what = "removal requested: draining first" if remove else "draining"
            else:
                row.state = NodeState.READY if fresh else row.state
                row.removing = False
                what = "active again"
            tx.add_event(
                f"node {row.name}: {what}",
                kind="node",
                node=row.name,
                action="remove_node" if remove else ("drain" if draining else "activate"),
                outcome="ok",
            )
            tx.changes.update({"nodes", "state"})
            return node_view(row)

    @retry_on_race
    def delete_node(self, id_or_name: str, *, force: bool = False) -> Node:
        """Forget a node and its replicas now (used once it is drained, or with --force);
        the node as it was. Without ``force``, a node that still has replicas is a
        Conflict: they are drained first (``set_node_draining(remove=True)``), so that
        nothing stops a replica without that order."""
        with self.write() as tx:
            row = node_row(tx.session, id_or_name, lock=tx.locks_rows)
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
            node = node_view(row)
            tx.session.execute(delete(ReplicaRow).where(ReplicaRow.node == row.id))
            tx.session.delete(row)
            tx.add_event(
                f"node {row.name} removed",
                kind="node",
                node=row.name,
                action="remove_node",
                outcome="ok",
            )
            tx.changes.update({"spec", "state"})
            return node

    @retry_on_race
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
        with self.write() as tx:
            live_states = (NodeState.READY, NodeState.DRAINING)
            rows = tx.session.scalars(
                select(NodeRow).where(
                    NodeRow.id.in_(list(silent_s)), NodeRow.state.in_(live_states)
                )
            ).all()
            for row in rows:
                if still_silent(row.id):
                    row.state = NodeState.UNREACHABLE
                    changed.append(node_view(row))
            if changed:
                names = sorted(n.name for n in changed)
                silent = len(silent_s)
                reason = (
                    f"{silent} of {live} live nodes are silent at once, more than the "
                    f"mass-silence threshold of {threshold:.0%}: assuming a controller or "
                    "network problem"
                )
                tx.add_event(
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
                tx.changes.update({"nodes", "state"})
        return changed

    @retry_on_race
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
        with self.write() as tx:
            rows = tx.session.scalars(
                select(NodeRow).where(
                    NodeRow.id.in_(list(silent_s)), NodeRow.state.in_(list(LIVE_STATES))
                )
            ).all()
            for row in rows:
                if not still_silent(row.id):
                    continue
                was = row.state
                row.state = NodeState.NOT_READY
                tx.add_event(
                    f"node {row.name} is not ready: no heartbeat for {silent_s[row.id]:.0f}s"
                    + (" (it was unreachable)" if was == NodeState.UNREACHABLE else ""),
                    kind="node",
                    node=row.name,
                    action="node_not_ready",
                    outcome="info",
                    reason=f"missed heartbeats (timeout {timeout_s:g}s)",
                )
                changed.append(node_view(row))
            if changed:
                tx.changes.update({"nodes", "state"})
        return changed

    def _fresh(self, row: NodeRow, now: datetime) -> bool:
        last = as_utc(row.last_heartbeat)
        return last is not None and now - last <= self.node_timeout

    def node_removals_pending(self) -> list[str]:
        with self.read() as s:
            return list(s.scalars(select(NodeRow.id).where(NodeRow.removing.is_(True))).all())


def _apply_heartbeat(tx: WriteTx, row: NodeRow, hb: Heartbeat, now: datetime) -> None:
    """What a heartbeat changes on its node: the figures it carries, its address (the
    node moves), and a silent node's state (ready or draining again, with an event)."""
    row.last_heartbeat = now  # for display: liveness is judged on a monotonic clock
    for key, value in hb.model_dump(exclude_none=True, exclude={"address"}).items():
        setattr(row, key, value)
    if hb.address is not None:
        move_address(tx, row, hb.address)
    if row.state in SILENT_STATES:
        was = row.state
        row.state = NodeState.DRAINING if row.draining else NodeState.READY
        tx.add_event(
            f"node {row.name} is {row.state} again (heartbeat received; was {was})",
            kind="node",
            node=row.name,
            action="node_ready",
            outcome="info",
        )
        tx.changes.update({"nodes", "state"})
