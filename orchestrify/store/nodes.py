"""Nodes: registration and its tokens, heartbeats, draining, liveness marks, removal."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from operator import attrgetter
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from orchestrify.errors import Conflict, InvalidSpec, NotFound, StoreUnavailable, Unauthorized
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

__all__ = [
    "MIN_NODE_TOKEN_LENGTH",
    "REFUSAL_EVENT_INTERVAL_S",
    "NodeEnrollment",
    "NodesPart",
    "RefusalLog",
    "hash_token",
    "move_address",
]

log = logging.getLogger(__name__)

# A node token an agent proposes is at least this long: the agent picks it with
# secrets.token_urlsafe(32) (43 characters), as the controller does for the others.
MIN_NODE_TOKEN_LENGTH = 32
# A node id an agent proposes: what fits the id column and a URL path segment (the
# agent picks secrets.token_hex(6), as the controller does).
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
# A refused registration is recorded at most once per node name this often: an agent
# retrying every few seconds (or a fleet of them) writes one event a minute, not one each.
REFUSAL_EVENT_INTERVAL_S = 60.0


@dataclass(frozen=True)
class NodeEnrollment:
    """A registration's outcome: the node, its node token (the one presented or proposed
    by its agent, or a fresh one), and whether this store knew the node (by the id it
    presented, or by its name when it took a silent node over)."""

    node: Node
    token: str
    known: bool


@dataclass(frozen=True)
class Refusal:
    """Why a registration is refused (a 409), and what its event says."""

    message: str
    name: str  # the node name the event is about (and is rate-limited by)
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


class RefusalLog:
    """When a refused registration was last recorded, per node name (this process's
    monotonic clock), so a retry storm records one event per name per interval."""

    def __init__(self, *, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # name -> (recorded at, refused since)

    def due(self, name: str) -> int | None:
        """None: one was recorded less than ``interval_s`` ago (this one is counted).
        Otherwise record this one: how many refusals of ``name`` went unrecorded since."""
        now = self._clock()
        with self._lock:
            last = self._last.get(name)
            if last is not None and now - last[0] < self.interval_s:
                self._last[name] = (last[0], last[1] + 1)
                return None
            if len(self._last) >= 4096:  # names refused long ago: forget them
                old = [n for n, (at, _) in self._last.items() if now - at >= self.interval_s]
                for stale in old:
                    del self._last[stale]
            self._last[name] = (now, 0)
            return last[1] if last is not None else 0

    def forget(self, name: str) -> None:
        """The record of ``name`` was not written after all: the next refusal records."""
        with self._lock:
            self._last.pop(name, None)


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

    @cached_property
    def _refusals(self) -> RefusalLog:
        return RefusalLog(interval_s=REFUSAL_EVENT_INTERVAL_S)

    def register_node(self, reg: NodeRegistration) -> tuple[Node, str]:
        """Register (or re-register) a node; returns it and its node token."""
        enrolled = self.enroll_node(reg)
        return enrolled.node, enrolled.token

    @retry_on_race
    def enroll_node(
        self, reg: NodeRegistration, *, trusted: bool = False, checked: bool = False
    ) -> NodeEnrollment:
        """Register (or re-register) a node, saying whether this store knew it.

        Idempotent: the agent sends the node id and node token it picked before its first
        registration (or saved from an earlier one) every time, so a retry whose first
        answer was lost gets the same node, token and ``known`` again. An id this store
        does not know is made a node under that id with the proposed token (a new agent;
        or a wiped store, a node removed with ``--force``: the agent keeps finding its
        containers by their node label). Such a node answers ``known: false`` (the agent
        then keeps every container it has as an orphan) until its first heartbeat.

        An id this store knows is that node's: re-registering it needs the node's own
        token (``reg.node_token``, which is kept, not rotated) unless the caller is
        ``trusted`` (the admin token, which gets a fresh token). Without it the
        registration is refused (``Conflict``; see ``check_node_claim``): a join token
        alone must not take over a node and lock its agent out.

        ``checked``: the caller ran ``check_node_claim`` already and it answered None."""
        if not checked:
            repeat = self.check_node_claim(reg, trusted=trusted)
            if repeat is not None:
                return repeat
        now = utcnow()
        with self.write() as tx:
            # Two registrations of one name or id wait for each other, also when one's
            # name is the other's id (one namespace: the CLI takes either), in one order.
            for key in sorted({reg.name, reg.node_id or reg.name}):
                tx.lock(f"node-key:{key}")
            row = tx.get(NodeRow, reg.node_id) if reg.node_id else None
            # The token the agent presented, when it is this node's own (a restart, or a
            # retry whose answer was lost): kept, so repeating the registration is harmless.
            own = _own_token(row, reg.node_token) if row is not None else None
            taken_over = False
            if row is not None:
                if own is None and not trusted:
                    raise Conflict(_token_refusal(row, reg).message)  # changed meanwhile
                if row.name != reg.name:
                    taken = _named(tx.session, reg.name, other_than=row.id)
                    if taken is not None:
                        raise Conflict(_name_owned_refusal(taken, row.id).message)
            else:
                same_name = _named(tx.session, reg.name)
                if same_name is not None:
                    own = _own_token(same_name, reg.node_token)  # our own takeover, repeated
                    refusal = None if own else self._takeover_refusal(same_name, reg, now)
                    if refusal is not None:
                        raise Conflict(refusal.message)
                    row = same_name  # a host that lost its state file comes back
                    taken_over = own is None
            crossed = _crossed_refusal(tx.session, reg, row.id if row is not None else reg.node_id)
            if crossed is not None:
                raise Conflict(crossed.message)
            created = row is None
            if row is None:
                _check_proposal(reg)
                row = NodeRow(
                    id=reg.node_id or secrets.token_hex(6),
                    created_at=now,
                    replica_count=0,
                )
                tx.session.add(row)
            # A created node is new to this store; a taken-over one was known by its name;
            # one whose agent presented its token is as known as it was last answered.
            known = not created and not (own is not None and row.answered_unknown)
            if own is not None:
                token = own
            elif reg.node_token and ((created and reg.node_id) or taken_over):
                _check_proposal(reg)
                token = reg.node_token  # the agent's own pick: its retry is the same
            else:
                token = secrets.token_urlsafe(32)  # the admin's, or an agent of an older build
            if own is None:
                row.token_hash = hash_token(token)
            row.name = reg.name
            if created:
                row.address = reg.address
            else:
                move_address(tx, row, reg.address)
            row.labels = reg.labels
            row.cpus = reg.cpus
            row.memory_total = reg.memory_total
            row.agent_url = reg.agent_url
            row.answered_unknown = not known
            row.last_heartbeat = now
            if created or row.state in SILENT_STATES:
                row.state = NodeState.DRAINING if row.draining else NodeState.READY
            if not known and reg.containers:
                # Orphans from the start, in the same transaction: the reconciler never
                # sees this node ready without them (and places nothing beside them).
                tx.session.flush()
                take_orphans(tx, row, reg.containers)
            if created and reg.node_id and (reg.containers or reg.cluster_id):
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
    def check_node_claim(
        self, reg: NodeRegistration, *, trusted: bool = False
    ) -> NodeEnrollment | None:
        """Judge a registration on a read, before any write.

        Refused (``Conflict``): a node id this store knows without that node's token
        (``trusted``, the admin, may), a name another node holds. A refusal is recorded
        as an event at most once per node name per ``REFUSAL_EVENT_INTERVAL_S`` (an agent
        retrying in a loop, or a fleet of them, writes no more than that).

        A repeat (the node's own token, and nothing it would change: a retry whose answer
        was lost, or a restart with the same settings, while the node is live) is
        answered from this read: the node, the same token, the same ``known``; nothing is
        written and no event recorded. None: ``enroll_node`` writes the registration.

        ``InvalidSpec`` (a 422) for a proposed node token shorter than
        ``MIN_NODE_TOKEN_LENGTH``."""
        _check_token_length(reg)  # none shorter was ever issued or accepted
        with self.read() as s:
            verdict = self._judge_claim(s, reg, trusted=trusted, now=utcnow())
        if isinstance(verdict, Refusal):
            self._record_refusal(verdict)
            raise Conflict(verdict.message)
        return verdict

    def _judge_claim(
        self, s: Session, reg: NodeRegistration, *, trusted: bool, now: datetime
    ) -> Refusal | NodeEnrollment | None:
        """What ``check_node_claim`` answers, read in ``s``: the same decisions as
        ``enroll_node`` makes again under its locks."""
        row = s.get(NodeRow, reg.node_id) if reg.node_id else None
        if row is not None:
            own = _own_token(row, reg.node_token)
            if own is None and not trusted:
                return _token_refusal(row, reg)
            if row.name != reg.name:
                taken = _named(s, reg.name, other_than=row.id)
                if taken is not None:
                    return _name_owned_refusal(taken, row.id)
        else:
            row = _named(s, reg.name)
            if row is None:
                if reg.node_id:
                    _check_proposal(reg)  # a new node under the proposed id
                return _crossed_refusal(s, reg, reg.node_id)
            own = _own_token(row, reg.node_token)
            if own is None:
                return self._takeover_refusal(row, reg, now)
        if own is not None and _unchanged(row, reg):
            return NodeEnrollment(node=node_view(row), token=own, known=not row.answered_unknown)
        return _crossed_refusal(s, reg, row.id)

    def _takeover_refusal(
        self, same_name: NodeRow, reg: NodeRegistration, now: datetime
    ) -> Refusal | None:
        """Why ``reg``, which presents no token of the node named ``reg.name``, may not
        take that node over by its name (None: it may, the node is silent)."""
        if same_name.state not in SILENT_STATES and self._fresh(same_name, now):
            return Refusal(
                message=f"a ready node is already named {reg.name!r}; pick another --name",
                name=same_name.name,
                reason="name_taken",
                data={"node_id": same_name.id, "address": reg.address},
            )
        if reg.node_id and not _newly_picked(reg):
            # Its containers are labelled with its own id: taking over another id would
            # hide them from it. Refused; nothing is removed meanwhile.
            return _name_owned_refusal(same_name, reg.node_id)
        return None

    def _record_refusal(self, refusal: Refusal) -> None:
        """The refusal as an event, unless one for the same name was recorded less than
        ``REFUSAL_EVENT_INTERVAL_S`` ago (then it is only counted, for the next one)."""
        unrecorded = self._refusals.due(refusal.name)
        if unrecorded is None:
            return
        try:
            with self.write() as tx:
                tx.add_event(
                    refusal.message,
                    kind="node",
                    node=refusal.name,
                    action="register",
                    outcome="refused",
                    reason=refusal.reason,
                    data={**refusal.data, "unrecorded_before": unrecorded},
                )
        except StoreUnavailable as exc:  # the refusal stands; its record waits for the next
            self._refusals.forget(refusal.name)
            log.warning("registration refusal not recorded", extra={"error": str(exc)})

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
            fact = NodeFact(
                node=node_view(row),
                token_hash=row.token_hash,
                answered_unknown=bool(row.answered_unknown),
            )
        if facts is not None:
            facts.reads += 1
            facts.keep(node_id, fact, epoch=epoch)
        return fact

    def list_nodes(self) -> list[Node]:
        """Every node, by name. On SQLite from the views kept for the reconciler's
        snapshot (``plan_nodes``): a read of the figures, not of every node."""
        plan = self.plan_nodes
        with self.read() as s:
            if plan is None:
                query = select(NodeRow).order_by(NodeRow.name)
                return [node_view(r) for r in s.scalars(query).all()]
            # Taken before the transaction's first query (see plan_nodes.py).
            before, figures_at = plan.generation, self.nodes_generation
            return sorted(
                plan.nodes(s, before=before, figures_at=figures_at), key=attrgetter("name")
            )

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
    row.answered_unknown = False  # its agent has its registration's answer
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


def _own_token(row: NodeRow, token: str | None) -> str | None:
    """``token`` when it is ``row``'s node token, else None."""
    if token and secrets.compare_digest(row.token_hash, hash_token(token)):
        return token
    return None


def _named(s: Session, name: str, *, other_than: str | None = None) -> NodeRow | None:
    query = select(NodeRow).where(NodeRow.name == name)
    if other_than is not None:
        query = query.where(NodeRow.id != other_than)
    return s.scalars(query).first()


def _unchanged(row: NodeRow, reg: NodeRegistration) -> bool:
    """Registering ``reg`` again would change nothing of the live node ``row``."""
    return (
        row.state not in SILENT_STATES
        and row.name == reg.name
        and row.address == reg.address
        and row.labels == reg.labels
        and row.cpus == reg.cpus
        and row.memory_total == reg.memory_total
        and row.agent_url == reg.agent_url
    )


def _newly_picked(reg: NodeRegistration) -> bool:
    """``reg``'s node id was picked by its agent for this registration: it has no cluster
    yet and no container labelled with it (an agent that lost its state file, or new)."""
    return reg.cluster_id is None and not reg.containers


def _check_proposal(reg: NodeRegistration) -> None:
    """A node is made under the id (and token) its agent proposed: refuse what cannot
    serve as one (``InvalidSpec``: a 422 naming the field)."""
    if reg.node_id is not None and not NODE_ID.fullmatch(reg.node_id):
        raise InvalidSpec(
            "node_id: 1 to 32 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit (an agent picks it with secrets.token_hex(6)); got {reg.node_id!r}",
            field="node_id",
        )
    _check_token_length(reg)


def _check_token_length(reg: NodeRegistration) -> None:
    if reg.node_token is not None and len(reg.node_token) < MIN_NODE_TOKEN_LENGTH:
        raise InvalidSpec(
            f"node_token: at least {MIN_NODE_TOKEN_LENGTH} characters (an agent picks it "
            f"with secrets.token_urlsafe(32)); got {len(reg.node_token)}",
            field="node_token",
        )


def _token_refusal(row: NodeRow, reg: NodeRegistration) -> Refusal:
    why = "without a node token" if not reg.node_token else "with a wrong node token"
    return Refusal(
        message=(
            f"registration as node {row.id} ({row.name}) refused: presented {why}. "
            f"Only that node's agent (with its saved token) or the admin token may "
            f"re-register a known node id; if this host really is {row.name} and lost "
            f"its token, forget the node first (`orchestrify node rm {row.id} --force`)"
        ),
        name=row.name,
        reason="node_token",
        data={"node_id": row.id, "name": reg.name, "address": reg.address},
    )


def _crossed_refusal(s: Session, reg: NodeRegistration, node_id: str | None) -> Refusal | None:
    """Why ``reg``, for node ``node_id`` (None: an id yet to be made), may not register:
    its name is another node's id, or its id another node's name. Every command takes
    a node by id or by name, so either would make one of the two nodes unreachable by
    its name, or a command (drain, rm) meant for one act on the other."""
    other = s.get(NodeRow, reg.name)
    if other is not None and other.id != node_id:
        return Refusal(
            message=(
                f"node name {reg.name!r} is the id of another node (named {other.name!r}); "
                "a command could not tell them apart: start the agent with another --name"
            ),
            name=reg.name,
            reason="name_is_an_id",
            data={"node_id": other.id},
        )
    if node_id is not None and node_id != reg.name:
        named = _named(s, node_id, other_than=node_id)
        if named is not None:
            return Refusal(
                message=(
                    f"node id {node_id!r} is the name of another node ({named.id}); a command "
                    "could not tell them apart: remove node.json from this agent's state dir "
                    "so that it picks a new id, or rename that node"
                ),
                name=reg.name,
                reason="id_is_a_name",
                data={"node_id": named.id, "presented_node_id": node_id},
            )
    return None


def _name_owned_refusal(owner: NodeRow, node_id: str) -> Refusal:
    return Refusal(
        message=(
            f"node name {owner.name!r} belongs to node {owner.id}, and this agent presents "
            f"node id {node_id!r}; forget the old one (`orchestrify node rm {owner.id} "
            "--force`) or start the agent with another --name"
        ),
        name=owner.name,
        reason="name_owned",
        data={"node_id": owner.id, "presented_node_id": node_id},
    )
