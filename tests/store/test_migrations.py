"""Schema migrations: the store upgrades itself on open, the models and the migrations
agree on both engines, and a SQLite store made before migrations (by the last build
without them, or by an older one lacking columns) is upgraded without losing a row."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from bench.postgres import PostgresServer
from orchestrify.errors import StoreUnavailable
from orchestrify.models import NodeRegistration, ReplicaReport, ServicePatch, ServiceSpec
from orchestrify.store import Store, migrate
from orchestrify.store.alerts import AlertStore
from orchestrify.store.jobs import JobStore
from orchestrify.store.tables import Base


def _differences(store: Store) -> list[object]:
    with store.engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def test_models_and_migrations_agree_on_sqlite(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        assert _differences(store) == []
        with store.engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
    finally:
        store.close()


def test_models_and_migrations_agree_on_postgresql(postgres: PostgresServer) -> None:
    name = postgres.new_database(migrated=False)  # empty: the migrations make everything
    try:
        store = Store(postgres.url(name))
        try:
            assert _differences(store) == []
            with store.engine.connect() as conn:
                assert migrate.current_revision(conn) == migrate.head_revision()
            svc = store.create_service(ServiceSpec(name="web", image="demo:1", replicas=2))
            assert svc.generation == 1
        finally:
            store.close()
    finally:
        postgres.drop_database(name)


# The tables as a build from before rolling updates, orphans, edges' acknowledgements and
# manual scales made them (SQLAlchemy's create_all DDL of that time, no alembic_version):
# the columns those features added are missing, and so are the tables of jobs and edges.
OLD_SCHEMA = """
CREATE TABLE services (
    name VARCHAR(63) NOT NULL, spec JSON NOT NULL, generation INTEGER NOT NULL,
    deleting BOOLEAN NOT NULL, created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL,
    PRIMARY KEY (name));
CREATE TABLE nodes (
    id VARCHAR(32) NOT NULL, name VARCHAR(253) NOT NULL, address VARCHAR(253) NOT NULL,
    state VARCHAR(16) NOT NULL, draining BOOLEAN NOT NULL, removing BOOLEAN NOT NULL,
    token_hash VARCHAR(64) NOT NULL, labels JSON NOT NULL, cpus INTEGER, cpu_percent FLOAT,
    memory_total INTEGER, memory_free INTEGER, disk_free INTEGER,
    replica_count INTEGER NOT NULL, agent_url VARCHAR(512), last_heartbeat DATETIME,
    created_at DATETIME NOT NULL, PRIMARY KEY (id), UNIQUE (name));
CREATE TABLE replicas (
    id VARCHAR(80) NOT NULL, service VARCHAR(63) NOT NULL, node VARCHAR(32) NOT NULL,
    state VARCHAR(16) NOT NULL, desired VARCHAR(8) NOT NULL, address VARCHAR(300),
    container_id VARCHAR(80), error TEXT, restarts INTEGER NOT NULL, stop_after DATETIME,
    created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, PRIMARY KEY (id));
CREATE INDEX ix_replicas_service ON replicas (service);
CREATE INDEX ix_replicas_node ON replicas (node);
CREATE TABLE events (
    id INTEGER NOT NULL, time DATETIME NOT NULL, kind VARCHAR(16) NOT NULL,
    service VARCHAR(63), node VARCHAR(253), replica VARCHAR(80), action VARCHAR(32),
    outcome VARCHAR(16), reason TEXT, message TEXT NOT NULL, data JSON NOT NULL,
    PRIMARY KEY (id));
CREATE INDEX ix_events_time ON events (time);
CREATE INDEX ix_events_service_time ON events (service, time);
CREATE TABLE meta ("key" VARCHAR(64) NOT NULL, value TEXT NOT NULL, PRIMARY KEY ("key"));
CREATE TABLE scaling_states (
    service VARCHAR(63) NOT NULL, last_action_at DATETIME, last_scale_out_firing_at DATETIME,
    baseline INTEGER, PRIMARY KEY (service));
"""
NOW = "2026-01-01 12:00:00.000000"


def _old_store(data_dir: Path) -> None:
    """An old build's store, with a service, a node, two replicas, events and its
    cluster id, written with sqlite3 as that build left it."""
    data_dir.mkdir(mode=0o700)
    db = sqlite3.connect(data_dir / "orchestrify.db")
    spec = ServiceSpec(name="web", image="demo:7", env={"MODE": "old"}, replicas=2)
    with db:
        db.executescript(OLD_SCHEMA)
        db.execute(
            "INSERT INTO services VALUES ('web', ?, 3, 0, ?, ?)",
            (json.dumps(spec.model_dump(mode="json")), NOW, NOW),
        )
        db.execute(
            "INSERT INTO nodes VALUES ('n1', 'worker-1', '10.0.0.1', 'ready', 0, 0, ?, '{}',"
            " 2, NULL, NULL, NULL, NULL, 2, NULL, ?, ?)",
            ("0" * 64, NOW, NOW),
        )
        for rid, port in (("web-a", 32768), ("web-b", 32769)):
            db.execute(
                "INSERT INTO replicas VALUES (?, 'web', 'n1', 'healthy', 'run', ?, ?, NULL,"
                " 0, NULL, ?, ?)",
                (rid, f"10.0.0.1:{port}", f"c-{rid}", NOW, NOW),
            )
        for n in range(5):
            db.execute(
                "INSERT INTO events (time, kind, message, data) VALUES (?, 'action', ?, '{}')",
                (NOW, f"old event {n}"),
            )
        db.execute("INSERT INTO meta VALUES ('cluster_id', 'c0ffee0123456789')")
        db.execute("INSERT INTO scaling_states VALUES ('web', ?, NULL, 2)", (NOW,))
    db.close()


def test_an_old_sqlite_store_is_upgraded_by_the_migrations_without_losing_a_row(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    _old_store(data_dir)
    store = Store.in_data_dir(data_dir)
    try:
        with store.engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
        # The schema is now exactly the models', new columns and tables included.
        assert _differences(store) == []
        columns = {c["name"] for c in inspect(store.engine).get_columns("replicas")}
        assert {"generation", "spec", "spec_hash", "left_upstreams_at"} <= columns
        assert {"jobs", "job_events", "edges", "alert_receipts"} <= set(
            inspect(store.engine).get_table_names()
        )
        # Every row is still there, and reads as before.
        assert store.cluster_id == "c0ffee0123456789"
        assert [n.name for n in store.list_nodes()] == ["worker-1"]
        svc = store.get_service("web")
        assert (svc.generation, svc.image, svc.updated_replicas) == (3, "demo:7", 2)
        reps = store.list_replicas(service="web")
        assert sorted(r.id for r in reps) == ["web-a", "web-b"]
        assert {r.address for r in reps} == {"10.0.0.1:32768", "10.0.0.1:32769"}
        # The replicas run what the old build handed them: the service's spec of then.
        for a in store.assignments("n1"):
            assert (a.generation, a.image, a.env) == (3, "demo:7", {"MODE": "old"})
        assert [e.message for e in store.list_events()][:5] == [f"old event {n}" for n in range(5)]
        assert AlertStore(store).policy_state("web").baseline == 2
        # And it works on: reports land, a job can be stored, a change rolls.
        store.apply_reports("n1", [ReplicaReport(id="web-a", state="healthy")], full=False)
        JobStore(store).create(
            job_id="j1", playbook="site.yml", limit=None, extra_vars={}, reason="test"
        )
        assert store.update_service("web", ServicePatch(env={"MODE": "new"})).generation == 4
    finally:
        store.close()
    again = Store.in_data_dir(data_dir)  # opening it again changes nothing
    try:
        assert len(again.list_replicas()) == 2
        assert again.cluster_id == "c0ffee0123456789"
    finally:
        again.close()


def test_a_store_made_by_the_last_build_without_migrations_is_adopted(tmp_path: Path) -> None:
    """The last build's store has every column already: the first revision only records
    that it is at that revision (and keeps every row)."""
    data_dir = tmp_path / "data"
    first = Store.in_data_dir(data_dir)
    node, _ = first.register_node(NodeRegistration(name="w1", address="10.0.0.1"))
    first.create_service(ServiceSpec(name="web", image="demo:1", replicas=1))
    first.create_replicas("web", [node.id], reason="test")
    cluster = first.cluster_id
    first.close()
    db = sqlite3.connect(data_dir / "orchestrify.db")
    with db:
        db.execute("DROP TABLE alembic_version")  # what the last build's store lacks
    db.close()
    store = Store.in_data_dir(data_dir)
    try:
        with store.engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
        assert _differences(store) == []
        assert store.cluster_id == cluster
        assert [r.service for r in store.list_replicas()] == ["web"]
    finally:
        store.close()


def test_a_store_from_a_newer_build_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    Store.in_data_dir(data_dir).close()
    db = sqlite3.connect(data_dir / "orchestrify.db")
    with db:
        db.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    db.close()
    with pytest.raises(StoreUnavailable, match=r"9999_from_the_future.*newer build"):
        Store.in_data_dir(data_dir)


def test_service_numbers_an_older_build_stored_are_brought_within_bounds(
    tmp_path: Path,
) -> None:
    """Revision 0006: an older build stored ``1e400`` as infinity (and every listing of
    the services failed) or a huge cooldown. Upgrading brings each to its bound, keeps
    every other field, and the services list again."""
    data_dir = tmp_path / "data"
    first = Store.in_data_dir(data_dir)
    first.create_service(ServiceSpec(name="web", image="demo:1", replicas=2, env={"A": "1"}))
    first.create_service(ServiceSpec(name="ok", image="demo:1", cpus=0.5))
    first.update_service("web", ServicePatch(image="demo:2"))  # a previous spec to keep
    first.close()
    db = sqlite3.connect(data_dir / "orchestrify.db")
    with db:
        spec, previous = db.execute(
            "SELECT spec, previous_spec FROM services WHERE name = 'web'"
        ).fetchone()
        spec = json.loads(spec)
        spec["cpus"] = float("inf")
        spec["policy"]["cooldown_s"] = 1e308
        spec["policy"]["scale_down_stabilization_s"] = float("nan")
        previous = json.loads(previous)
        previous["cpus"] = float("inf")
        db.execute(
            "UPDATE services SET spec = ?, previous_spec = ? WHERE name = 'web'",
            (json.dumps(spec), json.dumps(previous)),  # Infinity and NaN, as json wrote them
        )
        db.execute("UPDATE alembic_version SET version_num = '0005'")
    db.close()
    store = Store.in_data_dir(data_dir)
    try:
        with store.engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
        web, ok = sorted(store.list_services(), key=lambda s: s.name != "web")
        assert web.cpus == 1024
        assert web.policy.cooldown_s == 86400
        assert web.policy.scale_down_stabilization_s == 300  # NaN: the default
        assert (web.image, web.env, web.replicas) == ("demo:2", {"A": "1"}, 2)
        assert ok.cpus == 0.5  # within bounds: untouched
        rolled = store.rollback_service("web")
        assert (rolled.image, rolled.cpus) == ("demo:1", 1024)
    finally:
        store.close()
