"""The reconciler snapshot's node views, kept between snapshots on SQLite
(``orchestrify/store/plan_nodes.py``): every snapshot's nodes are what a fresh read gives,
whatever was written before or during it, and a batch of heartbeats reads only figures."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from orchestrify.models import Heartbeat, Node, NodeRegistration, NodeState, ServiceSpec
from orchestrify.store import Store
from orchestrify.store.rows import node_view
from orchestrify.store.tables import NodeRow
from tests.store.hooks import write_during


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.in_data_dir(tmp_path)
    yield opened
    opened.close()


def _fresh(store: Store) -> dict[str, Node]:
    """Every node read from its row now (``list_nodes`` uses the kept views too)."""
    with store.read() as s:
        return {row.id: node_view(row) for row in s.scalars(select(NodeRow)).all()}


def _snapshot_nodes(store: Store) -> dict[str, Node]:
    return {n.id: n for n in store.snapshot()[1]}


def _register(store: Store, name: str) -> Node:
    node, _ = store.register_node(NodeRegistration(name=name, address="127.0.0.1"))
    return node


def _beats(store: Store, node_ids: list[str], memory_free: int) -> None:
    at = datetime.now(UTC)
    store.record_heartbeats(
        {
            i: (Heartbeat(memory_free=memory_free + k, cpu_percent=1.5), at)
            for k, i in enumerate(node_ids)
        }
    )


def test_heartbeat_figures_are_read_alone_and_applied(store: Store) -> None:
    ids = [_register(store, f"w{i}").id for i in range(5)]
    _beats(store, ids, 100)  # the first heartbeats: they change more than figures
    assert _snapshot_nodes(store) == _fresh(store)
    assert [n.name for n in store.list_nodes()] == [f"w{i}" for i in range(5)]
    plan = store.plan_nodes
    assert plan is not None
    reads = plan.reads

    _beats(store, ids[:2], 5_000)
    got = _snapshot_nodes(store)
    assert got == _fresh(store)
    assert got[ids[0]].memory_free == 5_000 and got[ids[4]].memory_free == 104
    assert plan.reads == reads  # the figures alone were read

    store.set_node_draining(ids[3], draining=True)  # more than figures: read again
    got = _snapshot_nodes(store)
    assert got[ids[3]].state == NodeState.DRAINING
    assert got == _fresh(store)
    assert plan.reads == reads + 1


def test_any_mix_of_writes_leaves_snapshots_equal_to_a_fresh_read(store: Store) -> None:
    rng = random.Random(7)
    store.create_service(ServiceSpec(name="web", image="demo:1", replicas=1))
    nodes = [_register(store, f"w{i}").id for i in range(6)]
    made = len(nodes)
    for step in range(120):
        choice = rng.randrange(6)
        if choice == 0:
            nodes.append(_register(store, f"w{made}").id)
            made += 1
        elif choice == 1 and len(nodes) > 2:
            store.delete_node(nodes.pop(rng.randrange(len(nodes))), force=True)
        elif choice == 2:
            store.set_node_draining(rng.choice(nodes), draining=rng.random() < 0.5)
        elif choice == 3:
            silent = {rng.choice(nodes): 30.0}
            store.mark_not_ready(silent, timeout_s=15.0, still_silent=lambda _id: True)
        elif choice == 4:
            store.create_replicas("web", [rng.choice(nodes)], reason="test")
        else:
            _beats(store, rng.sample(nodes, k=min(3, len(nodes))), step * 10)
        if rng.random() < 0.6:
            assert _snapshot_nodes(store) == _fresh(store), f"after step {step}"
    assert _snapshot_nodes(store) == _fresh(store)


def test_a_node_write_during_a_snapshot_is_in_the_next_one(store: Store) -> None:
    """The snapshot is one transaction: a drain committed between its queries is not in
    its nodes, as it is not in its replicas; the kept views are not used after it."""
    node = _register(store, "w1")
    store.create_service(ServiceSpec(name="web", image="demo:1", replicas=1))
    assert _snapshot_nodes(store)[node.id].state == NodeState.READY  # kept now

    ran = write_during(store, "replicas", lambda: store.set_node_draining(node.id, draining=True))
    assert _snapshot_nodes(store)[node.id].state == NodeState.READY  # as of its start
    assert ran == [True]
    assert _snapshot_nodes(store)[node.id].state == NodeState.DRAINING


def test_a_removed_node_and_its_replicas_leave_one_snapshot_together(store: Store) -> None:
    keep, gone = _register(store, "w1"), _register(store, "w2")
    store.create_service(ServiceSpec(name="web", image="demo:1", replicas=2))
    store.create_replicas("web", [keep.id, gone.id], reason="test")
    _snapshot_nodes(store)

    # Removed just before the snapshot's first query (its transaction begun): in neither.
    write_during(store, "services", lambda: store.delete_node(gone.id, force=True))
    _services, nodes, replicas = store.snapshot()
    assert [n.id for n in nodes] == [keep.id]
    assert gone.id not in {r.node for r in replicas}

    # Removed between its queries: in both.
    gone = _register(store, "w3")
    store.create_replicas("web", [gone.id], reason="test")
    _snapshot_nodes(store)
    write_during(store, "replicas", lambda: store.delete_node(gone.id, force=True))
    _services, nodes, replicas = store.snapshot()
    assert {n.id for n in nodes} == {keep.id, gone.id}
    assert gone.id in {r.node for r in replicas}
    _services, nodes, replicas = store.snapshot()
    assert [n.id for n in nodes] == [keep.id]
    assert gone.id not in {r.node for r in replicas}


def test_an_old_heartbeat_time_is_applied_too(store: Store) -> None:
    node = _register(store, "w1")
    _beats(store, [node.id], 1)
    _snapshot_nodes(store)
    at = datetime.now(UTC) + timedelta(seconds=3)
    store.record_heartbeats({node.id: (Heartbeat(cpu_percent=9.0), at)})
    got = _snapshot_nodes(store)[node.id]
    assert got.last_heartbeat == at and got.cpu_percent == 9.0


def test_a_snapshot_between_a_commit_and_its_count_reads_the_nodes(store: Store) -> None:
    """A snapshot taken after a node write committed but before the write lock is let go
    (the write's generation not yet even again) sees that write, not the kept views."""
    node = _register(store, "w1")
    _snapshot_nodes(store)
    seen: list[NodeState] = []
    asked: list[bool] = []

    def after_commit(_session: Session) -> None:
        if not asked:  # once: the snapshot's own read commits too
            asked.append(True)
            seen.append(_snapshot_nodes(store)[node.id].state)

    event.listen(Session, "after_commit", after_commit)
    try:
        store.set_node_draining(node.id, draining=True)
    finally:
        event.remove(Session, "after_commit", after_commit)
    assert seen == [NodeState.DRAINING]
    assert _snapshot_nodes(store)[node.id].state == NodeState.DRAINING


def test_node_facts_are_forgotten_whatever_the_kept_views(store: Store) -> None:
    """Which nodes a write changed is told to the node facts on its own, not only when
    the snapshot's views are kept too (a store without them still forgets facts)."""
    node = _register(store, "w1")
    fact = store.node_fact(node.id)
    assert fact is not None and fact.state == NodeState.READY
    store.plan_nodes = None
    store.set_node_draining(node.id, draining=True)
    fact = store.node_fact(node.id)
    assert fact is not None and fact.state == NodeState.DRAINING
