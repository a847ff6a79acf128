"""The one drain path (``orchestrify.store.replicas.drain_replica``): every way a replica
leaves goes through it, and the edges' acknowledgements (``applied_as_of``) that let a
drained replica stop."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from orchestrify.alerting.policy import Decision
from orchestrify.models import (
    DEFAULT_DRAIN_S,
    DEFAULT_STOP_GRACE_S,
    DesiredState,
    EdgeRegistration,
    NodeRegistration,
    ReplicaReport,
    ReplicaState,
    ServicePatch,
    ServiceSpec,
)
from orchestrify.store import Store, utcnow
from orchestrify.store.alerts import AlertStore


@pytest.fixture
def store(tmp_path: Path, store_url: str) -> Iterator[Store]:
    s = Store.open(store_url, data_dir=tmp_path)
    yield s
    s.close()


def _service(store: Store, *, replicas: int = 2, **spec: object) -> tuple[str, list[str]]:
    """A service whose first replica is healthy with an address (in the upstreams) and
    whose others are still starting (never in Nginx)."""
    node, _ = store.register_node(NodeRegistration(name="w1", address="10.0.0.1"))
    store.create_service(ServiceSpec(name="web", image="demo:1", replicas=replicas, **spec))
    ids = [r.id for r in store.create_replicas("web", [node.id] * replicas, reason="test")]
    store.apply_reports(
        node.id,
        [ReplicaReport(id=ids[0], state=ReplicaState.HEALTHY, address="10.0.0.1:30001")],
        full=False,
    )
    return node.id, ids


def test_a_drained_replica_leaves_the_upstreams_with_its_drain_period(store: Store) -> None:
    _node, (serving, starting) = _service(store, drain_s=4)
    before = utcnow()
    store.drain_replicas([serving, starting], reason="scale-in")
    after = utcnow()
    by_id = {r.id: r for r in store.list_replicas(service="web")}
    for rid in (serving, starting):
        r = by_id[rid]
        assert (r.desired, r.state) == (DesiredState.DRAIN, ReplicaState.STOPPING)
        assert r.stop_after is not None
        assert before + timedelta(seconds=4) <= r.stop_after <= after + timedelta(seconds=4)
    # Only the one Nginx could send traffic to records when it left the upstreams.
    left = by_id[serving].left_upstreams_at
    assert left is not None and before <= left <= after
    assert by_id[starting].left_upstreams_at is None
    as_of, services = store.upstreams()
    assert services[0].replicas == [] and as_of > left
    events = [e for e in store.list_events(service="web") if e.action == "drain_replica"]
    assert [e.replica for e in events] == [serving, starting]
    assert "draining for 4s before it stops: scale-in" in events[0].message
    # Draining again changes nothing (and says nothing).
    store.drain_replicas([serving], reason="again")
    assert store.get_replica(serving).stop_after == by_id[serving].stop_after


def test_every_way_out_uses_the_same_drain(store: Store) -> None:
    """Removal of a replica, of a service and an autoscaling decision all set the same
    fields as ``drain_replicas`` (scale-in, node drain, rolling update, rollback)."""
    _node, (serving, _starting) = _service(store)
    store.remove_replica(serving, reason="removed by hand")
    r = store.get_replica(serving)
    assert r.desired == DesiredState.DRAIN and r.state == ReplicaState.STOPPING
    assert r.left_upstreams_at is not None and r.stop_after is not None
    assert r.stop_after - r.left_upstreams_at == timedelta(seconds=DEFAULT_DRAIN_S)

    store.delete_service("web")
    for r in store.list_replicas(service="web"):
        assert r.desired == DesiredState.DRAIN and r.state == ReplicaState.STOPPING
    messages = [e.message for e in store.list_events(service="web")]
    assert any(f"drain for {DEFAULT_DRAIN_S:g}s, then stop" in m for m in messages)


def test_an_autoscaling_scale_in_drains_through_the_same_path(store: Store) -> None:
    _node, (serving, _starting) = _service(store, drain_s=3)
    decision = Decision(action="scale_in", outcome="ok", reason="load is low", drain=(serving,))
    with store.write() as tx:
        AlertStore(store)._apply(tx, decision, utcnow())
    r = store.get_replica(serving)
    assert r.desired == DesiredState.DRAIN and r.left_upstreams_at is not None
    assert r.stop_after == r.left_upstreams_at + timedelta(seconds=3)


def test_set_desired_refuses_drain(store: Store) -> None:
    _node, (serving, _) = _service(store)
    with pytest.raises(ValueError, match="drain_replicas"):
        store.set_desired([serving], DesiredState.DRAIN, reason="no")


def test_stop_grace_reaches_the_assignments_and_does_not_roll(store: Store) -> None:
    node, _ids = _service(store)
    assert {a.stop_grace_s for a in store.assignments(node)} == {DEFAULT_STOP_GRACE_S}
    svc = store.update_service("web", ServicePatch(stop_grace_s=42))
    assert (svc.stop_grace_s, svc.generation) == (42, 1)  # no new generation: nothing rolls
    assert {a.stop_grace_s for a in store.assignments(node)} == {42}


def test_an_edge_acknowledges_the_view_it_applied(store: Store) -> None:
    as_of, _ = store.upstreams()
    store.register_edge(EdgeRegistration(name="e1", applied_as_of=as_of))
    store.register_edge(EdgeRegistration(name="e1"))  # a refresh without an ack keeps it
    (e1,) = store.list_edges()
    assert e1.applied_as_of == as_of
