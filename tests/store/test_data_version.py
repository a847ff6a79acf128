"""Store.data_version: the version cached views are checked against moves with every
write that changes a row, on each engine, and with no other."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrify.models import Heartbeat, NodeRegistration, ServicePatch, ServiceSpec
from orchestrify.store import Store


@pytest.fixture
def store(tmp_path: Path, store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url, data_dir=tmp_path)
    yield opened
    opened.close()


def test_every_write_that_changes_a_row_moves_the_version(store: Store) -> None:
    seen = [store.data_version()]

    def moved() -> bool:
        now = store.data_version()
        changed = now != seen[-1]
        seen.append(now)
        return changed

    node, _token = store.register_node(NodeRegistration(name="w1", address="127.0.0.1"))
    assert moved()
    store.create_service(ServiceSpec(name="web", image="nginx:1.27", replicas=1))
    assert moved()
    store.update_service("web", ServicePatch(replicas=2))
    assert moved()
    store.create_replicas("web", [node.id], reason="test")
    assert moved()
    store.heartbeat(node.id, Heartbeat(cpu_percent=5.0))  # one heartbeat: a write
    assert moved()
    store.delete_service("web")
    assert moved()


def test_a_write_that_changes_nothing_moves_no_version(store: Store) -> None:
    store.register_node(NodeRegistration(name="w1", address="127.0.0.1"))
    before = store.data_version()
    with store.write():
        pass
    assert store.data_version() == before


def test_a_heartbeats_batch_moves_only_the_version_that_counts_them(store: Store) -> None:
    """The services' and assignments' views are not read again for the heartbeats'
    figures; the nodes' views (``heartbeats=True``) are."""
    node, _token = store.register_node(NodeRegistration(name="w1", address="127.0.0.1"))
    before, before_with = store.data_version(), store.data_version(heartbeats=True)
    at = datetime.now(UTC)
    assert store.record_heartbeats({node.id: (Heartbeat(cpu_percent=7.0), at)}) == []
    assert store.data_version() == before
    assert store.data_version(heartbeats=True) != before_with
    assert store.get_node(node.id).cpu_percent == 7.0


def test_a_heartbeats_batch_makes_a_silent_node_ready_and_skips_a_gone_one(
    store: Store,
) -> None:
    node, _token = store.register_node(NodeRegistration(name="w1", address="127.0.0.1"))
    store.mark_not_ready({node.id: 20.0}, timeout_s=15.0, still_silent=lambda _id: True)
    before = store.data_version()
    at = datetime.now(UTC)
    gone = store.record_heartbeats({node.id: (Heartbeat(), at), "nosuchnode": (Heartbeat(), at)})
    assert gone == ["nosuchnode"]
    assert store.get_node(node.id).state == "ready"
    assert store.data_version() != before  # a state change is a change for every view
