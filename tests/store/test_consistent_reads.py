"""A read the reconciler decides on is one transaction: ``snapshot()`` and
``upstreams()`` see one committed state even when another writer (another Store, as a
second controller or process would be) commits between their queries. On SQLite that
takes an explicit BEGIN (pysqlite starts none before a SELECT); on PostgreSQL a
REPEATABLE READ transaction. Runs on both engines (``store_url``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrify.models import NodeRegistration, ReplicaReport, ServiceSpec
from orchestrify.store import Store
from tests.store.hooks import write_during


@pytest.fixture
def stores(tmp_path: Path, store_url: str) -> Iterator[tuple[Store, Store]]:
    reader = Store.open(store_url, data_dir=tmp_path)
    writer = Store.open(store_url, data_dir=tmp_path)
    yield reader, writer
    reader.close()
    writer.close()


def test_a_snapshot_sees_one_state_whatever_commits_between_its_queries(
    stores: tuple[Store, Store],
) -> None:
    reader, writer = stores
    node, _ = writer.register_node(NodeRegistration(name="w1", address="10.0.0.1"))
    writer.create_service(ServiceSpec(name="web", image="demo:1", replicas=2, max_replicas=4))
    writer.create_replicas("web", [node.id], reason="test")

    # Between the snapshot's query of the services and of the replicas, another writer
    # places one more replica and creates a service.
    def meanwhile() -> None:
        writer.create_replicas("web", [node.id], reason="meanwhile")
        writer.create_service(ServiceSpec(name="api", image="demo:1"))

    ran = write_during(reader, "replicas", meanwhile)
    services, _nodes, replicas = reader.snapshot()
    assert ran == [True]
    assert [s.name for s in services] == ["web"]
    assert len(replicas) == 1  # as of the snapshot's start, not the later commit
    assert len(reader.snapshot()[2]) == 2  # the next snapshot sees it


def test_upstreams_are_one_state_too(stores: tuple[Store, Store]) -> None:
    reader, writer = stores
    node, _ = writer.register_node(NodeRegistration(name="w1", address="10.0.0.1"))
    writer.create_service(ServiceSpec(name="web", image="demo:1"))
    (rep,) = writer.create_replicas("web", [node.id], reason="test")

    def meanwhile() -> None:  # the replica turns healthy after its query, before services'
        writer.apply_reports(
            node.id,
            [ReplicaReport(id=rep.id, state="healthy", address="10.0.0.1:32768")],
            full=False,
        )
        writer.create_service(ServiceSpec(name="api", image="demo:1"))

    ran = write_during(reader, "services", meanwhile)
    _as_of, upstreams = reader.upstreams()
    assert ran == [True]
    # Neither the healthy replica nor the new service: both committed after it began.
    assert [(u.name, u.replicas) for u in upstreams] == [("web", [])]
