"""plan_cycle: the pure reconcile decision, on hand-built snapshots."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrify.controller.reconcile import (
    EDGE_ACK_TIMEOUT_S,
    EDGE_SEEN_WINDOW_S,
    Drain,
    FinishRollout,
    Forget,
    PauseRollout,
    Place,
    RemoveNode,
    Snapshot,
    Step,
    Stop,
    Unplaceable,
    plan_cycle,
)
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

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def svc(name: str = "web", replicas: int = 1, **kw: Any) -> Service:
    return Service(
        name=name,
        image="nginx:1.27",
        replicas=replicas,
        min_replicas=0,
        max_replicas=100,
        created_at=NOW,
        updated_at=NOW,
        **kw,
    )


def nd(node_id: str, state: NodeState = NodeState.READY) -> Node:
    return Node(id=node_id, name=f"host-{node_id}", address="10.0.0.1", state=state, created_at=NOW)


def rep(
    rid: str,
    node: str,
    *,
    service: str = "web",
    state: ReplicaState = ReplicaState.HEALTHY,
    desired: DesiredState = DesiredState.RUN,
    age_s: float = 100,
    stop_after: datetime | None = None,
    left_upstreams_at: datetime | None = None,
    generation: int = 1,
) -> Replica:
    t = NOW - timedelta(seconds=age_s)
    return Replica(
        id=rid,
        service=service,
        node=node,
        state=state,
        desired=desired,
        stop_after=stop_after,
        left_upstreams_at=left_upstreams_at,
        generation=generation,
        created_at=t,
        updated_at=t,
    )


def plan(
    services: list[Service],
    nodes: list[Node],
    replicas: list[Replica],
    *,
    removing: frozenset[str] = frozenset(),
    now: datetime = NOW,
    edges: list[Edge] | None = None,
    admitted: frozenset[str] = frozenset(),
) -> list[Step]:
    snap = Snapshot(
        services=services,
        nodes=nodes,
        replicas=replicas,
        removing_nodes=removing,
        edges=edges or [],
    )
    return plan_cycle(snap, now=now, admitted=admitted)


def of(steps: list[Step], kind: type) -> list[Any]:
    return [s for s in steps if isinstance(s, kind)]


def test_steady_state_does_nothing() -> None:
    steps = plan([svc(replicas=2)], [nd("a"), nd("b")], [rep("r1", "a"), rep("r2", "b")])
    assert steps == []


def test_deficit_is_placed_spread_over_nodes() -> None:
    steps = plan([svc(replicas=3)], [nd("a"), nd("b"), nd("c")], [rep("r1", "a")])
    (place,) = of(steps, Place)
    assert place.service == "web"
    assert sorted(place.nodes) == ["b", "c"]


def test_deficit_with_no_node_is_unplaceable_with_reason() -> None:
    steps = plan([svc(replicas=2)], [nd("a", NodeState.DRAINING)], [])
    assert of(steps, Place) == []
    (refusal,) = of(steps, Unplaceable)
    assert refusal.missing == 2 and "no node is ready" in refusal.reason


def test_surplus_drains_unhealthy_first() -> None:
    reps = [
        rep("old-ok", "a", age_s=300),
        rep("sick", "b", state=ReplicaState.UNHEALTHY, age_s=500),
        rep("new-ok", "c", age_s=10),
    ]
    steps = plan([svc(replicas=2)], [nd("a"), nd("b"), nd("c")], reps)
    (drain,) = of(steps, Drain)
    assert drain.replicas == ("sick",)
    assert of(steps, Place) == []


def test_surplus_drains_from_crowded_node_first() -> None:
    reps = [rep("a1", "a", age_s=1), rep("b1", "b", age_s=300), rep("b2", "b", age_s=200)]
    steps = plan([svc(replicas=2)], [nd("a"), nd("b")], reps)
    (drain,) = of(steps, Drain)
    assert drain.replicas[0] in {"b1", "b2"}


def test_surplus_drains_newest_when_otherwise_equal() -> None:
    reps = [rep("old", "a", age_s=300), rep("new", "b", age_s=5), rep("mid", "c", age_s=100)]
    steps = plan([svc(replicas=1, drain_s=7)], [nd("a"), nd("b"), nd("c")], reps)
    (drain,) = of(steps, Drain)
    assert drain.replicas == ("new", "mid")


def test_drain_becomes_stop_only_after_the_drain_period() -> None:
    draining = rep("r2", "b", desired=DesiredState.DRAIN, stop_after=NOW + timedelta(seconds=10))
    services, nodes = [svc(replicas=1)], [nd("a"), nd("b")]
    early = plan(services, nodes, [rep("r1", "a"), draining])
    assert of(early, Stop) == []
    late = plan(services, nodes, [rep("r1", "a"), draining], now=NOW + timedelta(seconds=11))
    (stop,) = of(late, Stop)
    assert stop.replicas == ("r2",)


def edge(name: str, *, applied_s: float | None, seen_s: float = 1) -> Edge:
    """An edge seen ``seen_s`` ago whose Nginx serves a view taken ``applied_s`` after NOW
    (None: it never acknowledged one)."""
    return Edge(
        name=name,
        applied_as_of=None if applied_s is None else NOW + timedelta(seconds=applied_s),
        last_seen=NOW - timedelta(seconds=seen_s),
        created_at=NOW - timedelta(hours=1),
    )


def _gated(left_s: float = 0, drain_s: float = 10) -> Replica:
    """A replica that left the upstreams at NOW + left_s and drains for drain_s."""
    left = NOW + timedelta(seconds=left_s)
    return rep(
        "r2",
        "b",
        state=ReplicaState.STOPPING,
        desired=DesiredState.DRAIN,
        stop_after=left + timedelta(seconds=drain_s),
        left_upstreams_at=left,
    )


def test_drained_replica_stops_only_once_every_edge_applied_a_view_without_it() -> None:
    services, nodes = [svc(replicas=1)], [nd("a"), nd("b")]
    after = NOW + timedelta(seconds=11)  # the drain period is over
    lagging = [edge("e1", applied_s=0.5), edge("e2", applied_s=-3)]  # e2: a view from before
    assert (
        of(plan(services, nodes, [rep("r1", "a"), _gated()], now=after, edges=lagging), Stop) == []
    )
    caught_up = [edge("e1", applied_s=0.5), edge("e2", applied_s=2)]
    (stop,) = of(
        plan(services, nodes, [rep("r1", "a"), _gated()], now=after, edges=caught_up), Stop
    )
    assert stop.replicas == ("r2",) and "did not confirm" not in stop.reason
    # Acknowledged early does not cut the drain period short.
    early = plan(
        services, nodes, [rep("r1", "a"), _gated()], now=NOW + timedelta(seconds=5), edges=caught_up
    )
    assert of(early, Stop) == []


def test_an_edge_not_seen_recently_does_not_hold_a_stop() -> None:
    services, nodes = [svc(replicas=1)], [nd("a"), nd("b")]
    gone = [edge("old", applied_s=None, seen_s=EDGE_SEEN_WINDOW_S + 5)]
    steps = plan(
        services, nodes, [rep("r1", "a"), _gated()], now=NOW + timedelta(seconds=11), edges=gone
    )
    (stop,) = of(steps, Stop)
    assert stop.replicas == ("r2",)


def test_an_edge_that_never_confirms_holds_the_stop_until_the_bound_then_it_is_said() -> None:
    services, nodes = [svc(replicas=1)], [nd("a"), nd("b")]
    stuck = [edge("e1", applied_s=5), edge("stuck", applied_s=-60)]
    bound = NOW + timedelta(seconds=10 + EDGE_ACK_TIMEOUT_S)
    before = plan(
        services, nodes, [rep("r1", "a"), _gated()], now=bound - timedelta(seconds=1), edges=stuck
    )
    assert of(before, Stop) == []
    (stop,) = of(plan(services, nodes, [rep("r1", "a"), _gated()], now=bound, edges=stuck), Stop)
    assert stop.replicas == ("r2",)
    assert "stuck" in stop.reason and "e1" not in stop.reason and "stopped anyway" in stop.reason


def test_a_replica_drained_while_not_in_nginx_waits_for_no_edge() -> None:
    services, nodes = [svc(replicas=1)], [nd("a"), nd("b")]
    never = rep(
        "r2",
        "b",
        state=ReplicaState.STARTING,
        desired=DesiredState.DRAIN,
        stop_after=NOW + timedelta(seconds=10),
    )
    steps = plan(services, nodes, [rep("r1", "a"), never], edges=[edge("e1", applied_s=None)])
    (stop,) = of(steps, Stop)
    assert stop.replicas == ("r2",)


def test_failed_replica_is_stopped_and_replaced_on_another_node() -> None:
    reps = [rep("bad", "a", state=ReplicaState.FAILED), rep("ok", "b")]
    steps = plan([svc(replicas=2)], [nd("a"), nd("b"), nd("c")], reps)
    (stop,) = of(steps, Stop)
    assert stop.replicas == ("bad",)
    (place,) = of(steps, Place)
    assert place.nodes == ("c",)  # b has one already, a is where it failed
    assert "failed" in place.reason


def test_failed_replica_with_no_other_node_is_replaced_on_the_same_one() -> None:
    steps = plan([svc(replicas=1)], [nd("a")], [rep("bad", "a", state=ReplicaState.FAILED)])
    (place,) = of(steps, Place)
    assert place.nodes == ("a",) and "same node" in place.reason


def test_admitted_not_ready_node_replicas_are_told_to_stop_and_replaced_elsewhere() -> None:
    """Not forgotten: the row stays with desired=stop, an explicit order to its agent
    should the node come back (and it leaves Nginx at once)."""
    reps = [rep("lost", "a"), rep("ok", "b")]
    nodes = [nd("a", NodeState.NOT_READY), nd("b"), nd("c")]
    steps = plan([svc(replicas=2)], nodes, reps, admitted=frozenset({"a"}))
    assert of(steps, Forget) == []
    (stop,) = of(steps, Stop)
    assert stop.replicas == ("lost",) and "host-a is not ready" in stop.reason
    (place,) = of(steps, Place)
    assert place.nodes == ("c",)
    assert "host-a is not ready" in place.reason


def test_not_ready_node_waiting_for_the_limiter_keeps_its_replicas_counted() -> None:
    reps = [rep("waiting", "a"), rep("ok", "b")]
    nodes = [nd("a", NodeState.NOT_READY), nd("b"), nd("c")]
    assert plan([svc(replicas=2)], nodes, reps) == []  # not admitted: nothing moves yet


def test_stopped_replica_on_a_not_ready_node_is_not_placed_again() -> None:
    """Once told to stop, the row stays until its agent reports it or the node goes; it
    is not counted, and it is not told again."""
    reps = [rep("told", "a", desired=DesiredState.STOP), rep("new", "c")]
    nodes = [nd("a", NodeState.NOT_READY), nd("b"), nd("c")]
    steps = plan([svc(replicas=1)], nodes, reps, admitted=frozenset({"a"}))
    assert steps == []


def test_unreachable_node_keeps_its_replicas() -> None:
    """Mass silence: its replicas count as running; nothing is stopped or placed."""
    reps = [rep("r1", "a"), rep("r2", "b")]
    nodes = [nd("a", NodeState.UNREACHABLE), nd("b", NodeState.UNREACHABLE), nd("c")]
    assert plan([svc(replicas=2)], nodes, reps, admitted=frozenset({"a", "b"})) == []


def test_silent_node_being_removed_goes_once_its_replicas_are_told_to_stop() -> None:
    nodes = [nd("a", NodeState.NOT_READY), nd("b")]
    first = plan(
        [svc(replicas=1)],
        nodes,
        [rep("r", "a")],
        removing=frozenset({"a"}),
        admitted=frozenset({"a"}),
    )
    assert of(first, RemoveNode) == [] and of(first, Stop)[0].replicas == ("r",)
    told = [rep("r", "a", desired=DesiredState.STOP), rep("n", "b")]
    later = plan([svc(replicas=1)], nodes, told, removing=frozenset({"a"}))
    assert of(later, RemoveNode) == [RemoveNode(node="a")]


def test_draining_node_replicas_are_drained_and_replaced_elsewhere() -> None:
    reps = [rep("moving", "a"), rep("ok", "b")]
    steps = plan(
        [svc(replicas=2, drain_s=5)], [nd("a", NodeState.DRAINING), nd("b"), nd("c")], reps
    )
    (drain,) = of(steps, Drain)
    assert drain.replicas == ("moving",)
    (place,) = of(steps, Place)
    assert place.nodes == ("c",)


def test_removed_service_winds_down() -> None:
    reps = [
        rep("running", "a", service="gone"),
        rep("drained", "a", service="gone", desired=DesiredState.DRAIN, stop_after=NOW),
        rep("lost", "x", service="gone"),  # its node is unknown
    ]
    steps = plan([], [nd("a")], reps)
    (forget,) = of(steps, Forget)
    assert forget.replicas == ("lost",)
    (drain,) = of(steps, Drain)
    assert drain.replicas == ("running",)
    (stop,) = of(steps, Stop)
    assert stop.replicas == ("drained",)
    assert of(steps, Place) == []


def test_node_is_removed_only_once_empty() -> None:
    nodes = [nd("a", NodeState.DRAINING), nd("b")]
    busy = plan([svc(replicas=1)], nodes, [rep("r", "a")], removing=frozenset({"a"}))
    assert of(busy, RemoveNode) == []
    empty = plan([svc(replicas=1)], nodes, [rep("r", "b")], removing=frozenset({"a"}))
    assert of(empty, RemoveNode) == [RemoveNode(node="a")]


def test_several_services_share_the_fleet_counts() -> None:
    """Placements made earlier in a cycle count for later services (spread overall)."""
    steps = plan([svc("api", replicas=2), svc("web", replicas=2)], [nd("a"), nd("b")], [])
    placed = Counter(n for p in of(steps, Place) for n in p.nodes)
    assert placed == {"a": 2, "b": 2}


def test_max_per_node_is_respected_by_the_plan() -> None:
    steps = plan([svc(replicas=3, max_per_node=1)], [nd("a"), nd("b")], [])
    (place,) = of(steps, Place)
    assert sorted(place.nodes) == ["a", "b"]
    (refusal,) = of(steps, Unplaceable)
    assert refusal.missing == 1 and "max_per_node=1" in refusal.reason


def test_drain_period_holds_once_the_store_marks_the_replica_stopping() -> None:
    """The store turns a drained replica's state into ``stopping`` at once; a replica that
    was serving (it has an address) must still get its full drain period."""
    draining = rep(
        "r2",
        "b",
        state=ReplicaState.STOPPING,
        desired=DesiredState.DRAIN,
        stop_after=NOW + timedelta(seconds=10),
    ).model_copy(update={"address": "10.0.0.2:32768"})
    steps = plan([svc(replicas=1)], [nd("a"), nd("b")], [rep("r1", "a"), draining])
    assert of(steps, Stop) == []


def test_never_served_replica_is_stopped_without_waiting() -> None:
    starting = rep(
        "r2",
        "b",
        state=ReplicaState.STOPPING,
        desired=DesiredState.DRAIN,
        stop_after=NOW + timedelta(seconds=10),
    )
    steps = plan([svc(replicas=1)], [nd("a"), nd("b")], [rep("r1", "a"), starting])
    (stop,) = of(steps, Stop)
    assert stop.replicas == ("r2",)


# --- rolling updates: max surge 1, max unavailable 0 --------------------------------
def test_rollout_starts_one_extra_replica_of_the_new_generation() -> None:
    reps = [rep("old1", "a"), rep("old2", "b")]
    steps = plan([svc(replicas=2, generation=2)], [nd("a"), nd("b"), nd("c")], reps)
    (place,) = of(steps, Place)
    assert place.nodes == ("c",)  # spread: the node without a replica of web
    assert "rolling update of web to generation 2" in place.reason
    assert of(steps, Drain) == [] and of(steps, Stop) == []


def test_rollout_waits_while_the_new_replica_is_not_healthy() -> None:
    reps = [
        rep("old1", "a"),
        rep("old2", "b"),
        rep("new1", "c", state=ReplicaState.STARTING, generation=2, age_s=1),
    ]
    assert plan([svc(replicas=2, generation=2)], [nd("a"), nd("b"), nd("c")], reps) == []


def test_rollout_drains_one_old_replica_once_the_new_one_is_healthy_unhealthy_first() -> None:
    reps = [
        rep("old1", "a"),
        rep("old2", "b", state=ReplicaState.UNHEALTHY),
        rep("new1", "c", generation=2, age_s=1),
    ]
    steps = plan([svc(replicas=2, generation=2, drain_s=3)], [nd("a"), nd("b"), nd("c")], reps)
    (drain,) = of(steps, Drain)
    assert drain.replicas == ("old2",)
    assert "replica old2 replaced by new1" in drain.reason
    assert of(steps, Place) == [] and of(steps, FinishRollout) == []


def _simulate_rollout(
    service: Service, nodes: list[Node], reps: list[Replica], *, cycles: int = 40
) -> list[Step]:
    """Apply each cycle's steps the way the store and an agent would: a placed replica is
    starting, then healthy one cycle later; a drained one is gone at once. Checks at
    every cycle that the service never has fewer healthy replicas than it wants nor more
    than one extra."""
    all_steps: list[Step] = []
    for cycle in range(cycles):
        running = [r for r in reps if r.desired == DesiredState.RUN]
        healthy = [r for r in running if r.state == ReplicaState.HEALTHY]
        assert len(healthy) >= service.replicas, (cycle, reps)
        assert len(running) <= service.replicas + 1, (cycle, reps)
        reps = [
            r.model_copy(update={"state": ReplicaState.HEALTHY})
            if r.state == ReplicaState.STARTING
            else r
            for r in reps
        ]
        steps = plan([service], nodes, reps)
        all_steps += steps
        for step in steps:
            if isinstance(step, Place):
                reps += [
                    rep(f"new{cycle}-{i}", n, state=ReplicaState.STARTING, generation=2, age_s=0)
                    for i, n in enumerate(step.nodes)
                ]
            elif isinstance(step, Drain):
                reps = [r for r in reps if r.id not in step.replicas]
        if not steps:
            break
    assert all(r.generation == 2 for r in reps) and len(reps) == service.replicas
    return all_steps


def test_rollout_replaces_every_old_replica_never_below_desired_healthy() -> None:
    service = svc(replicas=3, generation=2)
    nodes = [nd("a"), nd("b"), nd("c")]
    steps = _simulate_rollout(service, nodes, [rep(f"old{i}", n) for i, n in enumerate("abc")])
    assert sum(len(p.nodes) for p in of(steps, Place)) == 3
    assert sorted(r for d in of(steps, Drain) for r in d.replicas) == ["old0", "old1", "old2"]
    assert of(steps, FinishRollout) == [FinishRollout("web", 2)]  # said once, at the end


def test_failed_new_replica_pauses_the_rollout_and_old_ones_keep_serving() -> None:
    reps = [
        rep("old1", "a"),
        rep("old2", "b"),
        rep("new1", "c", state=ReplicaState.FAILED, generation=2, age_s=1),
    ]
    nodes = [nd("a"), nd("b"), nd("c")]
    steps = plan([svc(replicas=2, generation=2)], nodes, reps)
    (pause,) = of(steps, PauseRollout)
    assert pause.generation == 2 and "replica new1 of generation 2 failed" in pause.reason
    (stop,) = of(steps, Stop)
    assert stop.replicas == ("new1",)
    assert of(steps, Place) == [] and of(steps, Drain) == []

    # Once paused (the store says so), nothing more happens and the pause is not repeated.
    paused = svc(replicas=2, generation=2, update_state=UpdateState.PAUSED)
    assert plan([paused], nodes, [rep("old1", "a"), rep("old2", "b")]) == []


def test_a_new_generation_restarts_a_paused_rollout_with_every_older_replica_outdated() -> None:
    # Generation 2 paused with one replica of it in service; generation 3 (e.g. back to
    # the old image) replaces both the generation-1 and the generation-2 replicas.
    reps = [rep("old1", "a"), rep("mid", "b", generation=2), rep("old2", "c")]
    service = svc(replicas=3, generation=3)
    steps = plan([service], [nd("a"), nd("b"), nd("c")], reps)
    (place,) = of(steps, Place)
    assert len(place.nodes) == 1 and "generation 3" in place.reason
    assert of(steps, PauseRollout) == []


def test_scale_in_during_a_rollout_drains_old_replicas_first() -> None:
    reps = [
        rep("new1", "a", generation=2, age_s=1),
        rep("old1", "b", age_s=300),
        rep("old2", "c", age_s=200),
    ]
    steps = plan([svc(replicas=1, generation=2)], [nd("a"), nd("b"), nd("c")], reps)
    drained = {r for d in of(steps, Drain) for r in d.replicas}
    assert drained == {"old1", "old2"}
    assert of(steps, Place) == []
    assert of(steps, FinishRollout) == [FinishRollout("web", 2)]


def test_scale_out_during_a_rollout_places_new_generation_replicas() -> None:
    reps = [rep("old1", "a"), rep("old2", "b")]
    steps = plan([svc(replicas=4, generation=2)], [nd("a"), nd("b"), nd("c")], reps)
    (place,) = of(steps, Place)
    assert len(place.nodes) == 2 and "rolling update" not in place.reason
    assert of(steps, Drain) == []


def test_rollout_with_no_room_for_one_extra_replica_replaces_stop_first() -> None:
    nodes = [nd("a"), nd("b")]
    service = svc(replicas=2, generation=2, max_per_node=1)
    reps = [rep("old1", "a"), rep("old2", "b")]
    steps = plan([service], nodes, reps)
    (drain,) = of(steps, Drain)
    assert len(drain.replicas) == 1 and "stop-first" in drain.reason
    assert of(steps, Place) == [] and of(steps, Unplaceable) == []
    # Next cycle: the drained one no longer counts, so its replacement is placed there.
    (gone,) = drain.replicas
    later = NOW + timedelta(seconds=5)
    reps = [
        r
        if r.id != gone
        else r.model_copy(update={"desired": DesiredState.DRAIN, "stop_after": later})
        for r in reps
    ]
    (place,) = of(plan([service], nodes, reps), Place)
    assert place.nodes == (next(r.node for r in reps if r.id == gone),)


def test_a_draining_fixed_port_replica_keeps_its_node_until_it_stops() -> None:
    """Its container holds the host port: a replacement there could not start yet."""
    service = svc(replicas=1, generation=2, host_port=8080, max_per_node=1)
    later = NOW + timedelta(seconds=5)
    draining = rep("old", "a", desired=DesiredState.DRAIN, stop_after=later)
    steps = plan([service], [nd("a")], [draining])
    assert of(steps, Place) == [] and len(of(steps, Unplaceable)) == 1
    stopped = rep("old", "a", desired=DesiredState.STOP)
    (place,) = of(plan([service], [nd("a")], [stopped]), Place)
    assert place.nodes == ("a",)
