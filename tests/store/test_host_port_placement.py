"""A service with a host port runs at most one replica per node, even when two writers
place from the same snapshot (orchestrify/store/replicas.py, create_replicas)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrify.models import NodeRegistration, ServiceSpec
from orchestrify.store import Store


@pytest.fixture
def store(tmp_path: Path, store_url: str) -> Iterator[Store]:
    opened = Store(store_url)
    yield opened
    opened.close()


def test_a_placement_on_a_node_that_runs_one_already_is_skipped(store: Store) -> None:
    nodes = [
        store.enroll_node(NodeRegistration(name=f"n{i}", address="10.0.0.1")).node.id
        for i in range(3)
    ]
    store.create_service(
        ServiceSpec(name="web", image="demo:1", replicas=1, max_replicas=4, host_port=20001)
    )
    first = store.create_replicas("web", [nodes[0]], reason="test", up_to=3)
    assert [r.node for r in first] == [nodes[0]]
    # A second writer decided from the same snapshot (nothing on n0 yet), for two more.
    second = store.create_replicas("web", [nodes[0], nodes[1]], reason="test", up_to=3)
    assert [r.node for r in second] == [nodes[1]]
    running = [r.node for r in store.list_replicas(service="web")]
    assert sorted(running) == sorted(nodes[:2])
    assert any("host port 20001 is taken" in e.message for e in store.list_events())


def test_without_a_host_port_a_node_may_run_several(store: Store) -> None:
    node = store.enroll_node(NodeRegistration(name="n0", address="10.0.0.1")).node.id
    store.create_service(ServiceSpec(name="web", image="demo:1", replicas=2, max_replicas=4))
    store.create_replicas("web", [node], reason="test")
    store.create_replicas("web", [node], reason="test")
    assert len(store.list_replicas(service="web")) == 2
