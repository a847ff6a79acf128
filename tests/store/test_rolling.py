"""Replicas remember the spec they run: assignments during a rolling update, rollback to
the spec before the last update, and stores made before rolling updates existed."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from orchestrify.errors import Conflict, NotFound
from orchestrify.models import (
    CONTAINER_FIELDS,
    NodeRegistration,
    ReplicaReport,
    ServicePatch,
    ServiceSpec,
    UpdateState,
)
from orchestrify.store import Store


@pytest.fixture
def store(tmp_path: Path, store_url: str) -> Iterator[Store]:
    s = Store.open(store_url, data_dir=tmp_path)
    yield s
    s.close()


def _node(store: Store) -> str:
    node, _token = store.register_node(NodeRegistration(name="worker-1", address="10.0.0.1"))
    return node.id


def test_assignments_keep_the_old_spec_for_old_replicas(store: Store) -> None:
    node = _node(store)
    store.create_service(
        ServiceSpec(name="web", image="demo:1", env={"MODE": "a"}, replicas=2, max_replicas=4)
    )
    old = store.create_replicas("web", [node, node], reason="test")
    updated = store.update_service("web", ServicePatch(image="demo:2", env={"MODE": "b"}))
    assert updated.generation == 2
    assert (updated.updated_replicas, updated.update_state) == (0, UpdateState.UPDATING)
    (new,) = store.create_replicas("web", [node], reason="test")

    by_id = {a.replica: a for a in store.assignments(node)}
    for r in old:
        assert (by_id[r.id].generation, by_id[r.id].image, by_id[r.id].env) == (
            1,
            "demo:1",
            {"MODE": "a"},
        )
    assert (by_id[new.id].generation, by_id[new.id].image, by_id[new.id].env) == (
        2,
        "demo:2",
        {"MODE": "b"},
    )
    assert {r.id: r.generation for r in store.list_replicas(service="web")} == {
        old[0].id: 1,
        old[1].id: 1,
        new.id: 2,
    }
    assert store.get_service("web").updated_replicas == 1

    # Scaling and drain_s do not start a rollout; old replicas stop counting once drained.
    assert store.update_service("web", ServicePatch(replicas=3, drain_s=2)).generation == 2
    store.drain_replicas([r.id for r in old], reason="test")
    done = store.get_service("web")
    assert (done.updated_replicas, done.update_state) == (1, UpdateState.COMPLETED)


def test_a_paused_rollout_is_said_once_and_a_new_generation_clears_it(store: Store) -> None:
    node = _node(store)
    store.create_service(ServiceSpec(name="web", image="demo:1", replicas=1))
    store.create_replicas("web", [node], reason="test")
    store.update_service("web", ServicePatch(image="demo:2"))
    assert store.pause_rollout("web", generation=2, reason="replica x failed") is True
    assert store.pause_rollout("web", generation=2, reason="replica x failed") is False
    svc = store.get_service("web")
    assert svc.update_state == UpdateState.PAUSED
    assert svc.update_message is not None and svc.update_message.startswith("replica x failed")
    assert "orchestrify service rollback web" in svc.update_message
    paused = [e for e in store.list_events(service="web") if "paused" in e.message]
    assert len(paused) == 1 and "old replicas keep serving" in paused[0].message
    assert "orchestrify service rollback web" in paused[0].message

    again = store.update_service("web", ServicePatch(image="demo:1"))
    assert (again.generation, again.update_state) == (3, UpdateState.UPDATING)


def test_only_a_generation_bump_records_the_previous_spec(store: Store) -> None:
    created = store.create_service(ServiceSpec(name="web", image="demo:1", max_replicas=5))
    assert (created.previous_generation, created.previous_spec) == (None, None)
    scaled = store.update_service("web", ServicePatch(replicas=3, drain_s=2, max_per_node=2))
    assert (scaled.generation, scaled.previous_spec) == (1, None)
    same = store.update_service("web", ServicePatch(image="demo:1"))  # no actual change
    assert (same.generation, same.previous_spec) == (1, None)

    updated = store.update_service("web", ServicePatch(image="demo:2", env={"A": "1"}))
    assert updated.generation == 2 and updated.previous_generation == 1
    assert updated.previous_spec is not None
    assert (updated.previous_spec["image"], updated.previous_spec["env"]) == ("demo:1", {})
    assert set(updated.previous_spec) == set(CONTAINER_FIELDS)
    # Scaling afterwards keeps what a rollback would return to.
    rescaled = store.update_service("web", ServicePatch(replicas=4))
    assert (rescaled.previous_generation, rescaled.previous_spec) == (1, updated.previous_spec)


def test_rollback_restores_the_container_fields_but_keeps_scaling(store: Store) -> None:
    node = _node(store)
    store.create_service(
        ServiceSpec(name="web", image="demo:1", env={"MODE": "a"}, replicas=1, max_replicas=5)
    )
    store.create_replicas("web", [node], reason="test")
    store.update_service(
        "web", ServicePatch(image="demo:2", env={"MODE": "b"}, health_path="/ready")
    )
    store.pause_rollout("web", generation=2, reason="replica x failed")
    store.update_service("web", ServicePatch(replicas=3, min_replicas=2, drain_s=5, max_per_node=2))

    back = store.rollback_service("web", reason="operator")
    assert (back.image, back.env, back.health_path) == ("demo:1", {"MODE": "a"}, "/health")
    assert (back.replicas, back.min_replicas, back.max_replicas) == (3, 2, 5)
    assert (back.drain_s, back.max_per_node) == (5, 2)
    # A new generation: every replica of an older one (whatever its spec) is replaced.
    assert (back.generation, back.update_state) == (3, UpdateState.UPDATING)
    assert back.update_message is None  # the pause was generation 2's
    assert back.previous_generation == 2 and back.previous_spec is not None
    assert back.previous_spec["image"] == "demo:2"
    (a,) = store.assignments(node)
    assert (a.generation, a.image) == (1, "demo:1")  # the old replica until it is replaced

    (ev,) = [e for e in store.list_events(service="web") if e.action == "rollback"]
    assert (ev.kind, ev.outcome, ev.reason) == ("action", "ok", "operator")
    assert ev.message.startswith(
        "service web rolled back to the spec of generation 1: image demo:2 -> demo:1, "
        "env (MODE), health_path /ready -> /health"
    )
    assert "rolling update to generation 3" in ev.message
    assert ev.data == {"from_generation": 2, "spec_of_generation": 1, "generation": 3}


def test_rolling_back_twice_returns_to_the_update(store: Store) -> None:
    store.create_service(ServiceSpec(name="web", image="demo:1"))
    store.update_service("web", ServicePatch(image="demo:2"))
    assert store.rollback_service("web").image == "demo:1"
    again = store.rollback_service("web")
    assert (again.image, again.generation, again.previous_generation) == ("demo:2", 4, 3)
    assert again.previous_spec is not None and again.previous_spec["image"] == "demo:1"
    messages = [e.message for e in store.list_events(service="web") if e.action == "rollback"]
    assert messages == [
        "service web rolled back to the spec of generation 1: image demo:2 -> demo:1",
        "service web rolled back to the spec of generation 2: image demo:1 -> demo:2",
    ]


def test_rollback_without_a_previous_spec_is_a_conflict_and_changes_nothing(
    store: Store,
) -> None:
    store.create_service(ServiceSpec(name="web", image="demo:1"))
    store.update_service("web", ServicePatch(replicas=1, drain_s=3))
    with pytest.raises(Conflict, match=r"no previous spec.*orchestrify service update web"):
        store.rollback_service("web")
    svc = store.get_service("web")
    assert (svc.image, svc.generation) == ("demo:1", 1)
    assert not [e for e in store.list_events(service="web") if e.action == "rollback"]
    with pytest.raises(NotFound):
        store.rollback_service("nope")
    store.delete_service("web")
    with pytest.raises(NotFound):
        store.rollback_service("web")


# The two tables as the build before rolling updates made them (SQLAlchemy's DDL).
OLD_SERVICES = """CREATE TABLE services (
    name VARCHAR(63) NOT NULL, spec JSON NOT NULL, generation INTEGER NOT NULL,
    deleting BOOLEAN NOT NULL, created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL,
    PRIMARY KEY (name))"""
OLD_REPLICAS = """CREATE TABLE replicas (
    id VARCHAR(80) NOT NULL, service VARCHAR(63) NOT NULL, node VARCHAR(32) NOT NULL,
    state VARCHAR(16) NOT NULL, desired VARCHAR(8) NOT NULL, address VARCHAR(300),
    container_id VARCHAR(80), error TEXT, restarts INTEGER NOT NULL, stop_after DATETIME,
    created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, PRIMARY KEY (id))"""


def test_a_store_from_before_rolling_updates_opens_and_its_replicas_run_the_current_spec(
    tmp_path: Path,
) -> None:
    first = Store.in_data_dir(tmp_path)
    node = _node(first)
    first.close()
    db = sqlite3.connect(tmp_path / "orchestrify.db")
    spec = ServiceSpec(name="web", image="demo:7", env={"MODE": "old"}, replicas=1)
    with db:
        db.execute("DROP TABLE alembic_version")  # a store from before migrations
        db.execute("DROP TABLE services")
        db.execute("DROP TABLE replicas")
        db.execute(OLD_SERVICES)
        db.execute(OLD_REPLICAS)
        now = "2026-01-01 12:00:00.000000"
        db.execute(
            "INSERT INTO services VALUES (?, ?, 4, 0, ?, ?)",
            ("web", json.dumps(spec.model_dump(mode="json")), now, now),
        )
        db.execute(
            "INSERT INTO replicas VALUES ('web-old', 'web', ?, 'healthy', 'run',"
            " '10.0.0.1:32768', 'c1', NULL, 0, NULL, ?, ?)",
            (node, now, now),
        )
    db.close()

    store = Store.in_data_dir(tmp_path)
    try:
        columns = {c["name"] for c in inspect(store.engine).get_columns("replicas")}
        assert {"generation", "spec"} <= columns
        columns = {c["name"] for c in inspect(store.engine).get_columns("services")}
        assert {"previous_spec", "previous_generation"} <= columns
        (a,) = store.assignments(node)
        assert (a.replica, a.generation, a.image, a.env) == (
            "web-old",
            4,
            "demo:7",
            {"MODE": "old"},
        )
        svc = store.get_service("web")
        assert (svc.generation, svc.updated_replicas, svc.update_state) == (
            4,
            1,
            UpdateState.COMPLETED,
        )
        # The old build never recorded a previous spec: nothing to roll back to yet.
        assert (svc.previous_generation, svc.previous_spec) == (None, None)
        with pytest.raises(Conflict, match="no previous spec"):
            store.rollback_service("web")
        # It keeps working as before: reports land, and a change rolls from generation 4.
        store.apply_reports(node, [ReplicaReport(id="web-old", state="healthy")], full=False)
        store.update_service("web", ServicePatch(env={"MODE": "new"}))
        (a,) = store.assignments(node)
        assert (a.generation, a.env) == (4, {"MODE": "old"})
        back = store.rollback_service("web")  # the update above recorded one
        assert (back.generation, back.env, back.previous_generation) == (6, {"MODE": "old"}, 5)
    finally:
        store.close()
    Store.in_data_dir(tmp_path).close()  # opening it again changes nothing and does not fail
