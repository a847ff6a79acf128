"""Watches across controllers: two controller apps on one PostgreSQL database. A long-poll
on controller B (assignments, upstreams, an events follower) wakes when a change is
committed through controller A; their versions agree; the listener survives a restart
of PostgreSQL; the periodic resync finds a lost notification; and an upstreams snapshot
taken on B is ordered with a drain on A (its ``as_of`` never claims a drain it lacks).

Each deadline below only guards a hang: the long-polls wait up to WATCH_S, and a wake is
told from a timeout by the version it answers with, never by how long it took."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench.net import free_port
from bench.postgres import PostgresServer, postgres_available, running_postgres
from orchestrify.controller.app import create_app
from orchestrify.controller.deps import ControllerState
from orchestrify.store import Store
from orchestrify.store.listen import SEQUENCE_KEY, ChangeListener
from orchestrify.store.replicas import drain_replica
from orchestrify.store.tables import ReplicaRow
from tests.api.conftest import AUTH, bearer, reconcile, register, service_spec, settings, wait_for
from tests.conftest import require

WATCH_S = 120.0  # the long-polls' timeout: a wake well before it is no timeout
HANG_S = 90.0  # how long a test waits for a watcher before calling it hung


def _controller(data_dir: Path, url: str) -> TestClient:
    app = create_app(
        settings(
            data_dir,
            database_url=url,
            watch_timeout_s=WATCH_S,
            controller_id=f"watch-{data_dir.name}",  # two controllers: two ids
            lease_s=60.0,
        ),
        run_reconciler=False,
    )
    client = TestClient(app, headers=AUTH)
    client.__enter__()
    return client


def _state(client: TestClient) -> ControllerState:
    state: ControllerState = client.app.state.controller  # type: ignore[attr-defined]
    return state


@pytest.fixture
def two_controllers(
    tmp_path: Path, postgres: PostgresServer
) -> Iterator[tuple[TestClient, TestClient]]:
    """Controllers A and B on one fresh database, each listening for the other's changes."""
    url = postgres.url(postgres.new_database())
    a = _controller(tmp_path / "a", url)
    b = _controller(tmp_path / "b", url)
    try:
        for c in (a, b):
            listener = _state(c).changes
            assert listener is not None
            wait_for(listener.connected.is_set, what="the change listener to connect")
        yield a, b
    finally:
        b.__exit__(None, None, None)
        a.__exit__(None, None, None)


class Watch:
    """A long-poll run in a thread: ``get()`` starts it, ``result()`` waits for it."""

    def __init__(self, client: TestClient, path: str, **params: Any) -> None:
        self.body: Any = None
        self.status = 0
        self.elapsed = 0.0
        headers = params.pop("headers", None)

        def run() -> None:
            start = time.monotonic()
            resp = client.get(path, params=params, headers=headers)
            self.elapsed = time.monotonic() - start
            self.status, self.body = resp.status_code, resp.json()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join(timeout=HANG_S)
        assert not self._thread.is_alive(), "the long-poll did not answer"
        assert self.status == 200, self.body
        # Well before its timeout: it woke on the change (its version says so too).
        assert self.elapsed < WATCH_S / 2
        return self.body


def _settle() -> None:
    time.sleep(0.3)  # let a watch start waiting (one that starts later answers at once too)


def test_assignments_on_b_wake_on_a_change_committed_through_a(
    two_controllers: tuple[TestClient, TestClient],
) -> None:
    a, b = two_controllers
    node_id, token = register(a, "w1")
    path = f"/v1/nodes/{node_id}/assignments"
    assert a.post("/v1/services", json=service_spec(replicas=1)).status_code == 201
    v = a.get(path, headers=bearer(token)).json()["version"]
    wait_for(
        lambda: b.get(path, headers=bearer(token)).json()["version"] == v,
        what="B to hear of the new service",
    )
    watch = Watch(b, path, version=v, timeout=WATCH_S, headers=bearer(token))
    _settle()
    assert watch.body is None  # nothing changed yet: it waits
    reconcile(a)  # A places the replica on w1: a change of what w1 must run
    body = watch.result()
    assert body["version"] != v
    assert [r["service"] for r in body["replicas"]] == ["web"]


def test_upstreams_on_b_wake_on_a_change_committed_through_a(
    two_controllers: tuple[TestClient, TestClient],
) -> None:
    a, b = two_controllers
    first = b.get("/v1/upstreams").json()
    assert first["services"] == []
    watch = Watch(b, "/v1/upstreams", version=first["version"], timeout=WATCH_S)
    _settle()
    assert a.post("/v1/services", json=service_spec("api")).status_code == 201
    body = watch.result()
    assert body["version"] != first["version"]
    assert [s["name"] for s in body["services"]] == ["api"]
    assert body["as_of"] >= first["as_of"]  # one clock, the database's


def test_an_events_follower_on_b_wakes_on_an_event_written_through_a(
    two_controllers: tuple[TestClient, TestClient],
) -> None:
    a, b = two_controllers
    before = b.get("/v1/events").json()
    last = before[-1]["id"] if before else 0
    watch = Watch(b, "/v1/events", after=last, wait=WATCH_S)
    _settle()
    assert a.post("/v1/services", json=service_spec("logs")).status_code == 201
    rows = watch.result()
    assert rows and all(e["id"] > last for e in rows)
    assert any(e.get("service") == "logs" for e in rows)


def test_versions_agree_across_controllers(
    two_controllers: tuple[TestClient, TestClient],
) -> None:
    """A watcher that fails over presents A's version to B: B understands it. A version
    from before a change gets the change at once; A's current version, with nothing
    changed since, waits on B (no spurious answer, no missed change)."""
    a, b = two_controllers
    old = a.get("/v1/upstreams").json()
    assert a.post("/v1/services", json=service_spec("late")).status_code == 201
    fresh = b.get("/v1/upstreams", params={"version": old["version"], "timeout": WATCH_S})
    assert [s["name"] for s in fresh.json()["services"]] == ["late"]
    current = a.get("/v1/upstreams").json()["version"]
    wait_for(
        lambda: b.get("/v1/upstreams").json()["version"] == current,
        what="B to reach A's version",
    )
    same = b.get("/v1/upstreams", params={"version": current, "timeout": 0.5}).json()
    assert same["version"] == current


def test_an_upstreams_snapshot_on_b_is_ordered_with_a_drain_on_a(
    two_controllers: tuple[TestClient, TestClient],
) -> None:
    """B reads the upstreams while A's drain is not committed yet: B's answer either
    waits for it (and lacks the replica) or has an ``as_of`` not after the replica left.
    Never both the replica and an ``as_of`` after it left: the edge would acknowledge it,
    and the replica could stop while Nginx still sends it traffic."""
    a, b = two_controllers
    node_id, token = register(a, "w1")
    assert a.post("/v1/services", json=service_spec(replicas=1)).status_code == 201
    reconcile(a)
    (replica,) = a.get("/v1/replicas", params={"service": "web"}).json()
    report = {"replicas": [{"id": replica["id"], "state": "healthy", "address": "127.0.0.1:1"}]}
    resp = a.post(f"/v1/nodes/{node_id}/replicas", json=report, headers=bearer(token))
    assert resp.status_code == 204
    (served,) = b.get("/v1/upstreams").json()["services"]
    assert [r["id"] for r in served["replicas"]] == [replica["id"]]

    store_a, store_b = _state(a).store, _state(b).store
    seen: dict[str, Any] = {}

    def read_on_b() -> None:
        as_of, services = store_b.upstreams()
        seen["as_of"] = as_of
        seen["replicas"] = [r.id for s in services for r in s.replicas]

    with store_a.write() as tx:
        row = tx.get(ReplicaRow, replica["id"])
        assert row is not None and drain_replica(tx, row, reason="test")
        left = row.left_upstreams_at
        reader = threading.Thread(target=read_on_b, daemon=True)
        reader.start()
        _settle()  # B's read is under way while the drain is uncommitted
    reader.join(timeout=HANG_S)
    assert not reader.is_alive()
    assert left is not None
    assert replica["id"] not in seen["replicas"] or seen["as_of"] <= left


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A cluster of this test's own, to stop and start."""
    why = postgres_available()
    require(why is None, why or "")
    with running_postgres(free_port()) as server:
        yield server


def _create_service(client: TestClient, name: str) -> None:
    """Create it, again while the store answers 503 (just after PostgreSQL restarted)."""
    deadline = time.monotonic() + HANG_S
    while True:
        resp = client.post("/v1/services", json=service_spec(name))
        if resp.status_code != 503 or time.monotonic() > deadline:
            assert resp.status_code == 201, resp.text
            return
        time.sleep(0.2)


def test_the_listener_survives_a_postgresql_restart(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    url = own_postgres.url(own_postgres.new_database())
    a = _controller(tmp_path / "a", url)
    b = _controller(tmp_path / "b", url)
    try:
        listener = _state(b).changes
        assert listener is not None
        wait_for(listener.connected.is_set, what="B's listener to connect")
        first = b.get("/v1/upstreams").json()
        # Waits on B's feed through the whole outage (it needs no database meanwhile).
        watch = Watch(b, "/v1/upstreams", version=first["version"], timeout=WATCH_S)
        _settle()
        own_postgres.stop_server()
        wait_for(lambda: not listener.connected.is_set(), what="B's listener to lose PostgreSQL")
        own_postgres.start_server()
        wait_for(listener.connected.is_set, what="B's listener to reconnect", timeout=HANG_S)
        assert listener.connects >= 2
        _create_service(a, "after")
        body = watch.result()
        assert body["version"] != first["version"]
        assert [s["name"] for s in body["services"]] == ["after"]
    finally:
        b.__exit__(None, None, None)
        a.__exit__(None, None, None)


def test_a_change_missed_while_not_listening_is_found_on_connect(
    two_controllers: tuple[TestClient, TestClient],
) -> None:
    """B's listener is away while A commits (its notification is lost to B): the next
    listener's resync on connect wakes B's watcher (the periodic resync is far off)."""
    a, b = two_controllers
    state = _state(b)
    first = b.get("/v1/upstreams").json()
    watch = Watch(b, "/v1/upstreams", version=first["version"], timeout=WATCH_S)
    _settle()
    assert state.changes is not None
    state.changes.stop()
    assert a.post("/v1/services", json=service_spec("missed")).status_code == 201
    _settle()
    assert watch.body is None  # nobody told B: it still waits
    state.changes = state.store.change_listener(state.feed.advance, resync_s=3600)
    state.changes.start()  # stopped by B's shutdown, like the first one
    body = watch.result()
    assert body["version"] != first["version"]
    assert [s["name"] for s in body["services"]] == ["missed"]


def test_the_periodic_resync_finds_a_lost_notification(postgres: PostgresServer) -> None:
    """A change whose notification never came (the counter moved, no NOTIFY) is found
    by the listener's periodic read of the commit sequence."""
    url = postgres.url(postgres.new_database())
    store = Store.open(url, data_dir=Path("/nonexistent"))
    told: list[tuple[set[str], int]] = []
    listener = ChangeListener(
        store.engine.url, origin="test", deliver=lambda k, v: told.append((k, v)), resync_s=0.5
    )
    listener.start()
    try:
        wait_for(listener.connected.is_set, what="the listener to connect")
        start = store.change_sequence()
        database = url.rsplit("/", 1)[1]
        with postgres.connect(database) as conn:
            conn.execute(
                "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) WHERE key = %s",
                (SEQUENCE_KEY,),
            )
        wait_for(
            lambda: any(v > start and "spec" in k for k, v in told),
            what="the resync to deliver the new sequence",
        )
    finally:
        listener.stop()
        store.close()


def test_a_write_is_announced_only_once_committed(postgres: PostgresServer) -> None:
    """NOTIFY is sent inside the write transaction: a rolled-back write sends nothing and
    moves no version; a committed one names its kinds and its origin."""
    url = postgres.url(postgres.new_database())
    store = Store.open(url, data_dir=Path("/nonexistent"))
    database = url.rsplit("/", 1)[1]
    try:
        with postgres.connect(database) as conn:
            conn.execute("LISTEN orchestrify_changes")
            before = store.change_sequence()
            with pytest.raises(RuntimeError), store.write() as tx:
                tx.add_event("never", kind="config")
                tx.changes.add("spec")
                raise RuntimeError("rolled back")
            assert list(conn.notifies(timeout=0.5)) == []
            assert store.change_sequence() == before
            with store.write() as tx:
                tx.add_event("kept", kind="config")
                tx.changes.add("spec")
            notes = list(conn.notifies(timeout=HANG_S, stop_after=1))
        assert len(notes) == 1
        assert f'"origin": "{store.origin}"' in notes[0].payload
        assert '"kinds": ["events", "spec", "state"]' in notes[0].payload
        assert tx.sequence == before + 1 == store.change_sequence()
    finally:
        store.close()


def test_sqlite_sends_nothing_and_has_no_listener(tmp_path: Path) -> None:
    client = TestClient(create_app(settings(tmp_path), run_reconciler=False), headers=AUTH)
    with client:
        assert _state(client).changes is None
        assert not _state(client).store.shares_changes
