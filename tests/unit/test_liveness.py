"""Node liveness on a fake monotonic clock: startup grace, mass silence, the rescheduling
rate limit, and a wall-clock step that changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from orchestrify import clock
from orchestrify.controller.feed import ChangeFeed
from orchestrify.controller.liveness import NodeLiveness, RescheduleLimiter
from orchestrify.controller.reconcile import Place, Reconciler, Stop
from orchestrify.models import (
    DesiredState,
    Heartbeat,
    NodeRegistration,
    NodeState,
    ReplicaReport,
    ServiceSpec,
)
from orchestrify.store import Store

TIMEOUT = 10.0
GRACE = 20.0


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.in_data_dir(tmp_path)
    yield s
    s.close()


def reconciler(
    store: Store,
    ticks: FakeClock,
    *,
    grace: float = GRACE,
    threshold: float = 0.5,
    per_minute: float = 6.0,
) -> Reconciler:
    return Reconciler(
        store,
        ChangeFeed(),
        node_timeout_s=TIMEOUT,
        liveness=NodeLiveness(
            timeout_s=TIMEOUT,
            startup_grace_s=grace,
            mass_silence_threshold=threshold,
            clock=ticks,
        ),
        limiter=RescheduleLimiter(nodes_per_minute=per_minute, clock=ticks),
    )


def register(store: Store, *names: str) -> list[str]:
    return [store.register_node(NodeRegistration(name=n, address="127.0.0.1"))[0].id for n in names]


def states(store: Store) -> dict[str, NodeState]:
    return {n.name: n.state for n in store.list_nodes()}


def beat(rec: Reconciler, store: Store, node_id: str, *, address: str | None = None) -> None:
    """What the heartbeat route does: seen by this process, then stored."""
    rec.liveness.seen(node_id)
    store.heartbeat(node_id, Heartbeat(address=address))


def test_no_node_goes_not_ready_during_the_startup_grace(store: Store) -> None:
    ids = register(store, "a", "b", "c")
    ticks = FakeClock()
    rec = reconciler(store, ticks)
    ticks.advance(GRACE - 1)  # far beyond the timeout, within the grace
    for node_id in ids[:2]:
        beat(rec, store, node_id)
    rec.run_once()
    assert set(states(store).values()) == {NodeState.READY}
    ticks.advance(2)  # grace over: c has been silent since the start
    for node_id in ids[:2]:
        beat(rec, store, node_id)
    rec.run_once()
    assert states(store) == {"a": NodeState.READY, "b": NodeState.READY, "c": NodeState.NOT_READY}


def test_mass_silence_marks_nodes_unreachable_in_one_event_and_keeps_replicas(
    store: Store,
) -> None:
    ids = register(store, "a", "b", "c", "d")
    ticks = FakeClock()
    rec = reconciler(store, ticks)
    store.create_service(ServiceSpec(name="web", image="nginx:1.27", replicas=4, max_replicas=10))
    rec.run_once()  # places one replica per node
    before = {r.id: r.node for r in store.list_replicas()}
    assert len(before) == 4
    ticks.advance(GRACE + 1)
    beat(rec, store, ids[0])  # only a speaks: 3 of 4 silent, above 50 %
    steps = rec.run_once()
    assert states(store) == {
        "a": NodeState.READY,
        "b": NodeState.UNREACHABLE,
        "c": NodeState.UNREACHABLE,
        "d": NodeState.UNREACHABLE,
    }
    assert not [s for s in steps if isinstance(s, Place | Stop)]
    after = store.list_replicas()
    assert {r.id: r.node for r in after} == before
    assert all(r.desired == DesiredState.RUN for r in after)
    mass = [e for e in store.list_events(kind="node") if e.action == "mass_silence"]
    (event,) = mass
    assert "3 of 4" in event.message and "50%" in event.message
    assert "assuming a controller or network problem" in event.message
    assert event.data["nodes"] == ["b", "c", "d"]
    rec.run_once()  # still silent: no second event
    assert len([e for e in store.list_events(kind="node") if e.action == "mass_silence"]) == 1

    # A heartbeat brings an unreachable node back.
    beat(rec, store, ids[1])
    assert states(store)["b"] == NodeState.READY
    # 2 of 4 silent is not above 50 %: the rest are not ready now, normally.
    rec.run_once()
    assert states(store)["c"] == NodeState.NOT_READY
    assert states(store)["d"] == NodeState.NOT_READY


def test_unreachable_replicas_stay_in_the_upstreams(store: Store) -> None:
    ids = register(store, "a", "b")
    ticks = FakeClock()
    rec = reconciler(store, ticks)
    store.create_service(ServiceSpec(name="web", image="nginx:1.27", replicas=2))
    rec.run_once()
    for r in store.list_replicas():
        store.apply_reports(
            r.node,
            [ReplicaReport(id=r.id, state="healthy", address="127.0.0.1:30000")],
            full=False,
        )
    ticks.advance(GRACE + 1)
    rec.run_once()  # both silent: 2 of 2
    assert set(states(store).values()) == {NodeState.UNREACHABLE}
    _, (web,) = store.upstreams()
    assert {r.node for r in web.replicas} == set(ids), "one replica on each silent node"


def test_a_lone_node_that_goes_silent_is_unreachable(store: Store) -> None:
    register(store, "only")
    ticks = FakeClock()
    rec = reconciler(store, ticks)
    ticks.advance(GRACE + 1)
    rec.run_once()
    assert states(store) == {"only": NodeState.UNREACHABLE}


def test_threshold_one_never_calls_it_mass_silence(store: Store) -> None:
    register(store, "a", "b")
    ticks = FakeClock()
    rec = reconciler(store, ticks, threshold=1.0)
    ticks.advance(GRACE + 1)
    rec.run_once()
    assert set(states(store).values()) == {NodeState.NOT_READY}


def test_a_wall_clock_step_of_one_hour_marks_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = register(store, "a", "b", "c")
    ticks = FakeClock()
    rec = reconciler(store, ticks)
    ticks.advance(GRACE + 1)
    for node_id in ids:
        beat(rec, store, node_id)
    real = clock.utcnow
    monkeypatch.setattr(clock, "utcnow", lambda: real() + timedelta(hours=1))
    ticks.advance(1)
    rec.run_once()  # every stored heartbeat now looks an hour old
    assert set(states(store).values()) == {NodeState.READY}
    assert not [e for e in store.list_events(kind="node") if e.action == "node_not_ready"]
    # The stored heartbeat (display only) takes the stepped clock; still nothing moves.
    beat(rec, store, ids[0])
    last = store.get_node(ids[0]).last_heartbeat
    assert last is not None and last > real() + timedelta(minutes=30)
    rec.run_once()
    assert set(states(store).values()) == {NodeState.READY}


def test_a_heartbeat_stored_by_another_controller_counts_as_seen(store: Store) -> None:
    """Only a change of the stored time counts, never its value: several controllers on
    one store see each other's heartbeats, and a clock step still does nothing."""
    (a, b, _c) = register(store, "a", "b", "c")
    ticks = FakeClock()
    rec = reconciler(store, ticks)
    rec.run_once()  # this process has looked once
    ticks.advance(GRACE + 1)
    store.heartbeat(a, Heartbeat())  # through another process: not seen() here
    beat(rec, store, b)
    rec.run_once()
    assert states(store) == {"a": NodeState.READY, "b": NodeState.READY, "c": NodeState.NOT_READY}


def test_rate_limiter_admits_n_nodes_per_minute() -> None:
    for per_minute in (6, 30):
        ticks = FakeClock()
        limiter = RescheduleLimiter(nodes_per_minute=per_minute, clock=ticks)
        admitted = 0
        for _ in range(120):  # one try every 0.5 s for a minute
            admitted += limiter.try_take()
            ticks.advance(0.5)
        assert admitted == per_minute


def test_rescheduling_off_not_ready_nodes_is_rate_limited(store: Store) -> None:
    ids = register(store, "a", "b", "c", "d", "e", "f", "g")
    ticks = FakeClock()
    rec = reconciler(store, ticks, per_minute=6)
    store.create_service(ServiceSpec(name="web", image="nginx:1.27", replicas=7, max_replicas=10))
    rec.run_once()
    assert len(store.list_replicas()) == 7
    ticks.advance(GRACE + 1)
    for node_id in ids[:4]:  # e, f, g fall silent: 3 of 7, below the threshold
        beat(rec, store, node_id)
    rec.run_once()
    assert [n for n, s in states(store).items() if s == NodeState.NOT_READY] == ["e", "f", "g"]
    stopped = {r.node_name for r in store.list_replicas() if r.desired == DesiredState.STOP}
    assert stopped == {"e"}  # one node admitted; f and g wait for the limiter
    waits = [e for e in store.list_events(kind="decision") if e.action == "reschedule_node"]
    assert waits and waits[-1].data["nodes"] == ["f", "g"]
    running = [r for r in store.list_replicas() if r.desired == DesiredState.RUN]
    assert len(running) == 7  # e's replacement placed; f and g's still count
    ticks.advance(10)  # 6 per minute: one more token
    for node_id in ids[:4]:
        beat(rec, store, node_id)
    rec.run_once()
    stopped = {r.node_name for r in store.list_replicas() if r.desired == DesiredState.STOP}
    assert stopped == {"e", "f"}
    # The rows stay (an order for the agent) until it reports them stopped.
    assert {r.node_name for r in store.list_replicas()} >= {"e", "f", "g"}


def test_address_change_moves_the_node_and_its_replicas(store: Store) -> None:
    (a,) = register(store, "a")
    ticks = FakeClock()
    rec = reconciler(store, ticks)
    store.create_service(ServiceSpec(name="web", image="nginx:1.27", replicas=2))
    rec.run_once()
    for r in store.list_replicas():
        store.apply_reports(
            a,
            [ReplicaReport(id=r.id, state="healthy", address=f"127.0.0.1:3100{r.id[-1]}")],
            full=False,
        )
    beat(rec, store, a, address="127.0.0.2")
    assert store.get_node(a).address == "127.0.0.2"
    addresses = sorted(r.address or "" for r in store.list_replicas())
    assert all(x.startswith("127.0.0.2:3100") for x in addresses), addresses
    moves = [e for e in store.list_events(kind="node") if e.action == "node_address"]
    (move,) = moves
    assert move.data == {"from": "127.0.0.1", "to": "127.0.0.2", "replicas": 2}
    beat(rec, store, a, address="127.0.0.2")  # unchanged: said once
    assert len([e for e in store.list_events(kind="node") if e.action == "node_address"]) == 1
