"""The controller's reconcile step: desired replica counts vs the replicas that exist,
and rolling updates (replicas of an older generation replaced one at a time).

``plan_cycle`` is a pure function of a snapshot (services, nodes, replicas, time, the
not-ready nodes admitted for rescheduling) that returns steps; ``Reconciler`` judges node
liveness (``controller.liveness``), reads the snapshot, admits not-ready nodes through
the rescheduling rate limiter, plans, applies each step once and records the outcome.
One failing step never stops the others.

A draining replica is stopped (its container gets SIGTERM, then SIGKILL after its
service's ``stop_grace_s``) when its drain period is over and every edge seen in the last
``EDGE_SEEN_WINDOW_S`` has acknowledged a view of the upstreams taken after the replica
left them, so no Nginx can still send it a new request. An edge that never confirms holds
the stop for at most ``EDGE_ACK_TIMEOUT_S`` more; then it stops anyway, and says so.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from orchestrify.controller.feed import ChangeFeed
from orchestrify.controller.liveness import Beat, NodeLiveness, RescheduleLimiter
from orchestrify.models import (
    DesiredState,
    Edge,
    Node,
    NodeState,
    Replica,
    ReplicaState,
    Service,
    UpdateState,
)
from orchestrify.scheduling import NodeView, place_replicas
from orchestrify.store import Store, utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")

# An edge counts for stop gating while its last registration or acknowledgement is this
# recent. Edges re-register every ``resync_s`` (30 s) and after every apply, so three
# missed resyncs mean it is gone (or cut off), and it no longer holds stops.
EDGE_SEEN_WINDOW_S = 90.0
# How long after its drain period a replica waits at most for edges to confirm that it
# left their Nginx (an edge that is stuck, or refuses every new config) before it stops.
EDGE_ACK_TIMEOUT_S = 30.0
# How long a cycle woken by node changes alone (registrations, nodes turning ready or
# silent) waits for more of them, seconds: a fleet of agents registering at once is then
# a few cycles, not one cycle (a read of every node) per registration. A replica waits
# at most this much longer to be placed on a node that just joined.
NODES_SETTLE_S = 0.5


@dataclass(frozen=True)
class Place:
    service: str
    nodes: tuple[str, ...]
    reason: str
    # The most running replicas the service may have once these are placed (what the
    # plan saw running, plus these): the store's compare-and-set, so that a plan made
    # from a snapshot another writer has overtaken never places twice. None: no bound.
    up_to: int | None = None


@dataclass(frozen=True)
class Drain:
    """Out of the upstreams now, stopped after the service's ``drain_s``
    (``orchestrify.store.replicas.drain_replica``)."""

    replicas: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Stop:
    replicas: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Forget:
    replicas: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Unplaceable:
    service: str
    missing: int
    reason: str


@dataclass(frozen=True)
class RemoveNode:
    node: str


@dataclass(frozen=True)
class PauseRollout:
    """A replica of the new generation failed: stop replacing old ones (said once)."""

    service: str
    generation: int
    reason: str


@dataclass(frozen=True)
class FinishRollout:
    """The last replica of an older generation is on its way out."""

    service: str
    generation: int


Step = Place | Drain | Stop | Forget | Unplaceable | RemoveNode | PauseRollout | FinishRollout


@dataclass
class Snapshot:
    services: Sequence[Service]
    nodes: Sequence[Node]
    replicas: Sequence[Replica]
    removing_nodes: frozenset[str] = frozenset()
    edges: Sequence[Edge] = ()


@dataclass
class _Fleet:
    """Mutable placement counts, updated as this cycle places replicas."""

    views: dict[str, NodeView]
    by_service: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def view_list(self, service: str) -> list[NodeView]:
        return [
            NodeView(
                id=v.id,
                state=v.state,
                replicas_total=v.replicas_total,
                replicas_by_service={service: self.by_service[v.id][service]},
                memory_free=v.memory_free,
            )
            for v in self.views.values()
        ]

    def add(self, node_id: str, service: str) -> None:
        v = self.views[node_id]
        self.views[node_id] = NodeView(
            id=v.id,
            state=v.state,
            replicas_total=v.replicas_total + 1,
            memory_free=v.memory_free,
        )
        self.by_service[node_id][service] += 1


def plan_cycle(
    snap: Snapshot,
    *,
    now: datetime,
    avoid_hints: Mapping[str, frozenset[str]] | None = None,
    admitted: frozenset[str] = frozenset(),
) -> list[Step]:
    """Decide what to do so every service has its desired count of running replicas.

    ``avoid_hints`` maps a service to nodes its *new* replicas should avoid (a slow
    replica's node); it is a preference: with no other node, the same node is used.

    ``admitted`` holds the not-ready nodes whose replicas may be rescheduled now (the
    rate limiter's choice): theirs are told to stop (an explicit order, should the node
    come back; they leave Nginx at once) and replaced elsewhere. A not-ready node not
    admitted keeps its replicas as they are, counted as present. An ``unreachable`` node
    (mass silence) keeps its replicas too, for as long as it is unreachable.
    """
    avoid_hints = avoid_hints or {}
    nodes = {n.id: n for n in snap.nodes}
    names = {n.id: n.name for n in snap.nodes}
    steps: list[Step] = []

    fleet = _Fleet(
        views={
            n.id: NodeView(id=n.id, state=n.state, replicas_total=0, memory_free=n.memory_free)
            for n in snap.nodes
        }
    )
    live = {s.name: s for s in snap.services}
    fixed_port = {s.name for s in snap.services if s.host_port is not None}
    for r in snap.replicas:
        # A draining replica of a fixed-host-port service still holds the port on its
        # node until its container stops: another one placed there could not start.
        holds_port = r.desired == DesiredState.DRAIN and r.service in fixed_port
        if r.node in fleet.views and (r.desired == DesiredState.RUN or holds_port):
            fleet.add(r.node, r.service)

    by_service: dict[str, list[Replica]] = defaultdict(list)
    for r in snap.replicas:
        by_service[r.service].append(r)

    for name, reps in sorted(by_service.items()):
        if name not in live:
            # Removed service (or one never known): drain, then stop everything.
            steps.extend(
                _wind_down(reps, nodes, now, snap.edges, reason=f"service {name} was removed")
            )
    for svc in sorted(live.values(), key=lambda s: s.name):
        steps.extend(
            _plan_service(
                svc,
                by_service.get(svc.name, []),
                nodes=nodes,
                names=names,
                fleet=fleet,
                now=now,
                avoid=avoid_hints.get(svc.name, frozenset()),
                edges=snap.edges,
                admitted=admitted,
            )
        )
    for node_id in sorted(snap.removing_nodes):
        left = [r for r in snap.replicas if r.node == node_id]
        node = nodes.get(node_id)
        # A silent node being removed will never report its replicas stopped: once every
        # one of them is told to stop (and replaced), removing it deletes their rows.
        silent_done = (
            node is not None
            and node.state == NodeState.NOT_READY
            and all(r.desired == DesiredState.STOP for r in left)
        )
        if not left or silent_done:
            steps.append(RemoveNode(node=node_id))
    return steps


def _node_gone(r: Replica, nodes: Mapping[str, Node]) -> Node | None:
    node = nodes.get(r.node)
    return None if node is None or node.state == NodeState.NOT_READY else node


def _evacuating(node: Node | None, admitted: frozenset[str]) -> bool:
    """The node is not ready and the rate limiter let its replicas move."""
    return node is not None and node.state == NodeState.NOT_READY and node.id in admitted


def _wind_down(
    reps: Sequence[Replica],
    nodes: Mapping[str, Node],
    now: datetime,
    edges: Sequence[Edge],
    *,
    reason: str,
) -> list[Step]:
    steps: list[Step] = []
    forget = [r.id for r in reps if _node_gone(r, nodes) is None]
    if forget:
        steps.append(Forget(tuple(forget), reason=f"{reason}; its node is not ready"))
    rest = [r for r in reps if r.id not in forget]
    drain = [r.id for r in rest if r.desired == DesiredState.RUN]
    if drain:
        steps.append(Drain(tuple(drain), reason=reason))
    draining = [r for r in rest if r.desired == DesiredState.DRAIN]
    steps.extend(_stops(draining, now, edges, reason=f"{reason}; drain period over"))
    return steps


@dataclass(frozen=True)
class DrainCheck:
    """Whether a draining replica may stop now, and the recently seen edges that have not
    confirmed a view without it (non-empty with ``done``: stopped anyway, bound reached)."""

    done: bool
    unconfirmed: tuple[str, ...] = ()


def drain_check(r: Replica, now: datetime, edges: Sequence[Edge]) -> DrainCheck:
    """May draining replica ``r`` stop now? Pure. Its drain period must be over and every
    edge seen within ``EDGE_SEEN_WINDOW_S`` must have applied a view whose ``as_of`` is
    after ``r.left_upstreams_at``; past ``stop_after + EDGE_ACK_TIMEOUT_S`` it may stop
    whatever the edges say."""
    # The store marks a replica ``stopping`` as soon as it is told to drain, so
    # ``stopping`` with an address may still be in Nginx: it waits like a healthy one.
    serving = (
        r.left_upstreams_at is not None
        or r.state == ReplicaState.HEALTHY
        or (r.state == ReplicaState.STOPPING and r.address is not None)
    )
    if not serving:
        return DrainCheck(done=True)  # never in Nginx's upstream, nothing to drain
    if r.stop_after is not None and now < r.stop_after:
        return DrainCheck(done=False)
    left = r.left_upstreams_at
    if left is None:
        return DrainCheck(done=True)  # not in an upstream when drained: no edge to wait for
    window = timedelta(seconds=EDGE_SEEN_WINDOW_S)
    unconfirmed = tuple(
        e.name
        for e in edges
        if now - e.last_seen <= window and (e.applied_as_of is None or e.applied_as_of <= left)
    )
    if not unconfirmed:
        return DrainCheck(done=True)
    bound = (r.stop_after or left) + timedelta(seconds=EDGE_ACK_TIMEOUT_S)
    return DrainCheck(done=now >= bound, unconfirmed=unconfirmed)


def _stops(
    draining: Sequence[Replica], now: datetime, edges: Sequence[Edge], *, reason: str
) -> list[Step]:
    """Stop steps for the draining replicas whose drain is over: one for those every edge
    confirmed, one per set of edges that did not confirm in time (its reason says so)."""
    confirmed: list[str] = []
    forced: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for r in draining:
        check = drain_check(r, now, edges)
        if check.done and check.unconfirmed:
            forced[check.unconfirmed].append(r.id)
        elif check.done:
            confirmed.append(r.id)
    steps: list[Step] = []
    if confirmed:
        steps.append(Stop(tuple(confirmed), reason=reason))
    for names, ids in sorted(forced.items()):
        steps.append(
            Stop(
                tuple(ids),
                reason=f"{reason}, but edge(s) {', '.join(names)} did not confirm within "
                f"{EDGE_ACK_TIMEOUT_S:g}s that it left their Nginx; stopped anyway",
            )
        )
    return steps


def _plan_service(
    svc: Service,
    reps: Sequence[Replica],
    *,
    nodes: Mapping[str, Node],
    names: Mapping[str, str],
    fleet: _Fleet,
    now: datetime,
    avoid: frozenset[str],
    edges: Sequence[Edge] = (),
    admitted: frozenset[str] = frozenset(),
) -> list[Step]:
    steps: list[Step] = []
    forget: list[str] = []
    stop: list[str] = []
    evacuate: list[str] = []
    drain: list[str] = []
    draining: list[Replica] = []
    avoid_new = set(avoid)
    reasons: list[str] = []
    evacuated_from: list[str] = []

    active: list[Replica] = []
    for r in reps:
        node = nodes.get(r.node)
        if node is None:
            # Its node was removed from the store: nothing can be told to it any more.
            forget.append(r.id)
            if r.desired == DesiredState.RUN:
                reasons.append(f"node {r.node} is gone")
            continue
        if _evacuating(node, admitted):
            # Told to stop, not forgotten: should the node come back, its agent removes
            # the container on that order; the row goes when it reports it stopped.
            if r.desired != DesiredState.STOP:
                evacuate.append(r.id)
                evacuated_from.append(node.name)
            if r.desired == DesiredState.RUN:
                reasons.append(f"node {node.name} is not ready")
            avoid_new.add(r.node)
            continue
        if r.desired == DesiredState.RUN:
            if r.state == ReplicaState.FAILED:
                stop.append(r.id)
                avoid_new.add(r.node)
                reasons.append(f"replica {r.id} failed on {node.name}")
            elif node.state == NodeState.DRAINING:
                drain.append(r.id)
                avoid_new.add(r.node)
                reasons.append(f"node {node.name} is draining")
            else:
                active.append(r)
        elif r.desired == DesiredState.DRAIN:
            draining.append(r)

    if forget:
        steps.append(Forget(tuple(forget), reason="its node is gone (rescheduled elsewhere)"))
    if evacuate:
        where = ", ".join(dict.fromkeys(evacuated_from))
        steps.append(
            Stop(tuple(evacuate), reason=f"node {where} is not ready (rescheduled elsewhere)")
        )
    if drain:
        steps.append(Drain(tuple(drain), reason="its node is draining"))

    outdated = [r for r in active if r.generation < svc.generation]
    paused = svc.update_state == UpdateState.PAUSED
    if outdated and not paused:
        # A replica of the new generation failed during the rollout: the new spec may be
        # bad, so stop replacing the old replicas, which keep serving.
        failed_new = [
            r
            for r in reps
            if r.id in stop
            and r.state == ReplicaState.FAILED
            and r.desired == DesiredState.RUN
            and r.generation >= svc.generation
        ]
        if failed_new:
            bad = failed_new[0]
            why = f"replica {bad.id} of generation {svc.generation} failed"
            why += f" on {names.get(bad.node, bad.node)}" + (f" ({bad.error})" if bad.error else "")
            steps.append(PauseRollout(svc.name, svc.generation, reason=why))
            paused = True

    missing = svc.replicas - len(active)
    # Orphans of this service on live nodes (containers a lost store no longer accounts
    # for) may become its replicas (`node adopt`): nothing is placed in their stead.
    held = [
        n
        for n in nodes.values()
        if n.state != NodeState.NOT_READY
        for o in n.orphaned
        if o.service == svc.name
    ]
    if missing > 0 and held:
        wait = min(missing, len(held))
        missing -= wait
        holders = sorted({n.id for n in held})
        steps.append(
            Unplaceable(
                svc.name,
                wait,
                reason=f"{len(held)} orphaned container(s) of {svc.name} on node(s) "
                f"{', '.join(names.get(n, n) for n in holders)} may be its replicas: "
                + " or ".join(f"`orchestrify node adopt {n}`" for n in holders)
                + " to adopt them, `orchestrify node prune NODE` to have them removed",
            )
        )
    if missing > 0:
        reason = "; ".join(dict.fromkeys(reasons)) or f"service wants {svc.replicas} replica(s)"
        steps.extend(
            _place(
                svc,
                missing,
                fleet=fleet,
                avoid=frozenset(avoid_new),
                reason=reason,
                running=len(active),
            )
        )
    elif held and svc.replicas > len(active):
        pass  # waiting for the orphans to be adopted or pruned
    elif outdated and not paused:
        steps.extend(_roll(svc, active, fleet=fleet))
    elif missing < 0:
        victims = _pick_victims(active, -missing, fleet, svc)
        steps.append(
            Drain(
                tuple(victims),
                reason=f"service wants {svc.replicas} replica(s), has {len(active)}",
            )
        )
    if stop:
        steps.append(Stop(tuple(stop), reason="replica failed"))
    steps.extend(_stops(draining, now, edges, reason="drain period over"))
    had_outdated = any(
        r.generation < svc.generation and r.desired == DesiredState.RUN for r in reps
    )
    leaving = {rid for step in steps if isinstance(step, Drain | Stop) for rid in step.replicas}
    if had_outdated and all(r.id in leaving for r in outdated):
        steps.append(FinishRollout(svc.name, svc.generation))
    return steps


def _place(
    svc: Service,
    count: int,
    *,
    fleet: _Fleet,
    avoid: frozenset[str],
    reason: str,
    running: int,
) -> list[Step]:
    """Place ``count`` new replicas (of the current generation), spread by the scheduler;
    ``avoid`` is a preference: with no other node, the same node is used."""
    steps: list[Step] = []
    placement = place_replicas(
        service=svc.name,
        count=count,
        nodes=fleet.view_list(svc.name),
        avoid=avoid,
        max_per_node=svc.max_per_node,
        memory_per_replica=svc.memory_mb * 2**20 if svc.memory_mb else None,
    )
    chosen = list(placement.nodes)
    if placement.unplaced and avoid:
        # "On a different worker" is a preference: with no other node, use the same one.
        retry = place_replicas(
            service=svc.name,
            count=placement.unplaced,
            nodes=fleet.view_list(svc.name),
            max_per_node=svc.max_per_node,
            memory_per_replica=svc.memory_mb * 2**20 if svc.memory_mb else None,
        )
        if retry.nodes:
            reason += "; no other node was eligible, so placed on the same node"
        chosen += retry.nodes
        placement = retry
    for node_id in chosen:
        fleet.add(node_id, svc.name)
    if chosen:
        steps.append(Place(svc.name, tuple(chosen), reason=reason, up_to=running + len(chosen)))
    if placement.unplaced:
        steps.append(
            Unplaceable(svc.name, placement.unplaced, reason=placement.reason or "no node")
        )
    return steps


def _roll(svc: Service, active: Sequence[Replica], *, fleet: _Fleet) -> list[Step]:
    """One step of a rolling update, max surge 1, max unavailable 0: with no replica of the
    current generation still on its way to healthy, either start one extra (when the
    service has no more than it wants) or, once that extra one is healthy, drain one old
    replica. Scale-in during a rollout drains old replicas first, keeping the one extra."""
    steps: list[Step] = []
    rollout = f"rolling update of {svc.name} to generation {svc.generation}"
    active = list(active)
    excess = len(active) - svc.replicas
    if excess > 1:
        victims = _pick_victims(active, excess - 1, fleet, svc)
        steps.append(
            Drain(
                tuple(victims),
                reason=f"service wants {svc.replicas} replica(s), has {len(active)} "
                f"(older generation first; {rollout} in progress)",
            )
        )
        active = [r for r in active if r.id not in victims]
        excess = 1
    fresh = [r for r in active if r.generation >= svc.generation]
    if any(r.state != ReplicaState.HEALTHY for r in fresh):
        return steps  # the new replica is on its way: wait for it before going on
    outdated = [r for r in active if r.generation < svc.generation]
    if excess >= 1 and outdated:
        # The extra replica is healthy: one old one goes, an unhealthy one first.
        (old,) = _pick_victims(outdated, 1, fleet, svc)
        newest = max(fresh, key=lambda r: r.created_at, default=None)
        by = f" by {newest.id}" if newest is not None else ""
        done = svc.replicas - len(outdated) + 1
        steps.append(
            Drain(
                (old,),
                reason=f"{rollout}: replica {old} replaced{by} ({done}/{svc.replicas})",
            )
        )
    elif excess == 0:
        done = svc.replicas - len(outdated)
        reason = (
            f"{rollout}: one extra replica before replacing an old one "
            f"({done}/{svc.replicas} updated)"
        )
        placed = _place(svc, 1, fleet=fleet, avoid=frozenset(), reason=reason, running=len(active))
        no_room = next((p for p in placed if isinstance(p, Unplaceable)), None)
        if no_room is None:
            steps.extend(placed)
        else:
            # No room for one extra (a fixed host port on every node, max_per_node, memory):
            # replace stop-first, one at a time, as Swarm does by default. The old replica
            # drains out of Nginx first; its replacement is placed once it is gone from
            # the count (for a fixed host port: once its container has stopped).
            (old,) = _pick_victims(outdated, 1, fleet, svc)
            steps.append(
                Drain(
                    (old,),
                    reason=f"{rollout}: no room for one extra replica ({no_room.reason}), "
                    f"so replica {old} is replaced stop-first ({done + 1}/{svc.replicas})",
                )
            )
    return steps


def _pick_victims(active: Sequence[Replica], count: int, fleet: _Fleet, svc: Service) -> list[str]:
    """Scale in the least useful first: an older generation (during a rolling update), not
    yet healthy, then crowded nodes, then newest."""
    service = svc.name
    order = sorted(
        active,
        key=lambda r: (
            r.generation >= svc.generation,
            r.state == ReplicaState.HEALTHY,
            -fleet.by_service[r.node][service],
            -r.created_at.timestamp(),
        ),
    )
    chosen = []
    for r in order[:count]:
        chosen.append(r.id)
        fleet.by_service[r.node][service] -= 1
    return chosen


class Reconciler:
    """Runs ``plan_cycle`` on every spec change and at least every ``interval`` seconds.

    Each cycle first judges node liveness (``liveness``, this process's monotonic view of
    heartbeats), then admits not-ready nodes for rescheduling through ``limiter``.
    """

    def __init__(
        self,
        store: Store,
        feed: ChangeFeed,
        *,
        interval_s: float = 1.0,
        node_timeout_s: float = 15.0,
        liveness: NodeLiveness | None = None,
        limiter: RescheduleLimiter | None = None,
    ) -> None:
        self.store = store
        self.feed = feed
        self.interval_s = interval_s
        self.node_timeout = timedelta(seconds=node_timeout_s)
        self.liveness = liveness or NodeLiveness(
            timeout_s=node_timeout_s,
            startup_grace_s=2 * node_timeout_s,
            mass_silence_threshold=0.5,
        )
        self.limiter = limiter or RescheduleLimiter(nodes_per_minute=6.0)
        self._lock = threading.Lock()
        self._last_refusal: dict[str, str] = {}
        self._admitted: set[str] = set()
        self._waiting_said: tuple[str, ...] = ()

    def run_once(self, *, avoid: Mapping[str, frozenset[str]] | None = None) -> list[Step]:
        with self._lock:
            return self._cycle(avoid)

    def run_with(
        self, change: Callable[[], T], *, avoid: Mapping[str, frozenset[str]] | None = None
    ) -> tuple[T, list[Step]]:
        """Apply ``change`` (a store write) and run a cycle right after, under one lock.

        A scale-out then places its replica at once with ``avoid``; the background cycle
        cannot slip in between and place it without the hint.
        """
        with self._lock:
            result = change()
            return result, self._cycle(avoid)

    def judge_liveness(self, nodes: Sequence[Beat]) -> bool:
        """Mark silent nodes ``unreachable`` (mass silence) or ``not_ready``, from what
        this process saw; nothing during the startup grace. Judged on ``nodes`` (the
        cycle's snapshot). True when it marked any."""
        verdict = self.liveness.judge(nodes)
        still_silent = self._still_silent
        if verdict.unreachable:
            self.store.mark_unreachable(
                verdict.silent_s,
                live=verdict.live,
                threshold=self.liveness.threshold,
                still_silent=still_silent,
            )
        if verdict.not_ready:
            self.store.mark_not_ready(
                {i: verdict.silent_s[i] for i in verdict.not_ready},
                timeout_s=self.liveness.timeout_s,
                still_silent=still_silent,
            )
        return bool(verdict.unreachable or verdict.not_ready)

    def _still_silent(self, node_id: str) -> bool:
        return self.liveness.silent_for(node_id) > self.liveness.timeout_s

    def admit(self, nodes: Sequence[Node], replicas: Sequence[Replica]) -> frozenset[str]:
        """The not-ready nodes whose replicas may move now: those admitted before (while
        they stay not ready) and new ones as the rate limiter's tokens allow. The ones
        left waiting are said in an event, once per distinct set."""
        not_ready = {n.id: n.name for n in nodes if n.state == NodeState.NOT_READY}
        self._admitted &= set(not_ready)
        moving = (DesiredState.RUN, DesiredState.DRAIN)
        needing = {r.node for r in replicas if r.node in not_ready and r.desired in moving}
        waiting: list[str] = []
        for node_id in sorted(needing - self._admitted, key=lambda i: not_ready[i]):
            if self.limiter.try_take():
                self._admitted.add(node_id)
            else:
                waiting.append(not_ready[node_id])
        if waiting and tuple(waiting) != self._waiting_said:
            rate = self.limiter.rate_per_s * 60
            reason = f"rescheduling is limited to {rate:g} node(s) per minute"
            self.store.record_event(
                f"replicas on not-ready node(s) {', '.join(waiting)} wait for the rescheduling "
                f"rate limiter ({rate:g} node(s) per minute); they stay as they are for now",
                kind="decision",
                action="reschedule_node",
                outcome="refused",
                reason=reason,
                data={"nodes": waiting, "nodes_per_minute": rate},
            )
        self._waiting_said = tuple(waiting)
        return frozenset(self._admitted)

    def _cycle(self, avoid: Mapping[str, frozenset[str]] | None) -> list[Step]:
        services, nodes, replicas = self.store.snapshot()
        # Liveness is judged on the snapshot's nodes (a read of every node a cycle less:
        # a third of the cycle's time at 1,000 nodes); a cycle that marks any plans on a
        # snapshot taken after.
        if self.judge_liveness(nodes):
            services, nodes, replicas = self.store.snapshot()
        snap = Snapshot(
            services=services,
            nodes=nodes,
            replicas=replicas,
            removing_nodes=frozenset(self.store.node_removals_pending()),
            edges=self.store.list_edges(),
        )
        admitted = self.admit(nodes, replicas)
        steps = plan_cycle(snap, now=utcnow(), avoid_hints=avoid or {}, admitted=admitted)
        for step in steps:
            try:
                self._apply(step)
            except Exception:  # one failing step never stops the loop
                log.exception("reconcile step failed", extra={"step": repr(step)})
        self.store.purge_deleted_services()
        return steps

    def _apply(self, step: Step) -> None:
        match step:
            case Place(service, nodes, reason, up_to):
                self._last_refusal.pop(service, None)
                self.store.create_replicas(service, nodes, reason=reason, up_to=up_to)
            case Drain(replicas, reason):
                self.store.drain_replicas(replicas, reason=reason)
            case Stop(replicas, reason):
                self.store.set_desired(replicas, DesiredState.STOP, reason=reason)
            case Forget(replicas, reason):
                self.store.delete_replicas(replicas, reason=reason)
            case Unplaceable(service, missing, reason):
                # Said once per distinct reason, not every second.
                if self._last_refusal.get(service) != reason:
                    self._last_refusal[service] = reason
                    self.store.record_event(
                        f"cannot place {missing} replica(s) of {service}: {reason}",
                        kind="decision",
                        service=service,
                        action="place_replica",
                        outcome="refused",
                        reason=reason,
                    )
            case RemoveNode(node):
                # An operator asked for the removal, and the decision waited until the node
                # is empty or silent with every replica told to stop (and replaced).
                self.store.delete_node(node, force=True)
                self.liveness.forget(node)
            case PauseRollout(service, generation, reason):
                self.store.pause_rollout(service, generation=generation, reason=reason)
            case FinishRollout(service, generation):
                self.store.record_event(
                    f"rolling update of {service} to generation {generation} finished",
                    kind="action",
                    service=service,
                    action="rolling_update",
                    outcome="ok",
                    data={"generation": generation},
                )

    async def run_forever(self) -> None:
        kinds = ("spec", "nodes")
        versions = self.feed.versions(kinds)
        while True:
            try:
                await asyncio.to_thread(self.run_once)
            except Exception:
                log.exception("reconcile cycle failed; retrying")
            before = versions
            versions = await self.feed.wait_any(kinds, versions, self.interval_s)
            # Let a burst of API writes settle into one cycle; a burst of node changes
            # (a fleet's agents registering at once) longer: each cycle reads every node.
            only_nodes = versions[0] == before[0] and versions[1] != before[1]
            await asyncio.sleep(NODES_SETTLE_S if only_nodes else 0.02)
