"""Reads answered from views cached per store version, heartbeats written in batches, and
long-polls that wake only the agents whose assignments changed: through the real app, on
each store engine."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from orchestrify.controller.deps import ControllerState
from orchestrify.controller.views import ViewCache
from orchestrify.models import NodeState
from tests.api.conftest import bearer, reconcile, register, service_spec, wait_for


def _state(client: TestClient) -> ControllerState:
    state: ControllerState = client.app.state.controller  # type: ignore[attr-defined]
    return state


def test_every_write_is_in_the_next_read(make_client: Callable[..., TestClient]) -> None:
    """A read never answers a view older than a write the same client saw committed:
    create, scale, update, remove, each followed at once by a read of the list and of
    the one service."""
    api = make_client(run_reconciler=False)
    assert api.get("/v1/services").json() == []
    assert api.post("/v1/services", json=service_spec(replicas=1)).status_code == 201
    assert [s["name"] for s in api.get("/v1/services").json()] == ["web"]
    for count in (2, 3, 1, 4):
        assert api.patch("/v1/services/web", json={"replicas": count}).status_code == 200
        assert api.get("/v1/services/web").json()["replicas"] == count
        assert api.get("/v1/services").json()[0]["replicas"] == count
    api.patch("/v1/services/web", json={"image": "nginx:1.28"})
    assert api.get("/v1/services/web").json()["image"] == "nginx:1.28"
    assert api.delete("/v1/services/web").status_code == 204
    assert api.get("/v1/services/web").status_code == 404
    assert api.get("/v1/services").json() == []


def test_a_write_made_beside_the_api_is_seen(make_client: Callable[..., TestClient]) -> None:
    """The reconciler's and the store's own writes (not through a route) move the
    version too: the placed replicas show in the service's view at once."""
    api = make_client(run_reconciler=False)
    register(api, "w1")
    api.post("/v1/services", json=service_spec(replicas=2))
    before = api.get("/v1/services/web").json()
    reconcile(api)
    after = api.get("/v1/services/web").json()
    assert before != after
    assert len(api.get("/v1/replicas", params={"service": "web"}).json()) == 2


def test_a_view_is_read_once_per_version(make_client: Callable[..., TestClient]) -> None:
    api = make_client(run_reconciler=False)
    api.post("/v1/services", json=service_spec())
    cache = _state(api).views.cache
    api.get("/v1/services")
    reads = cache.reads["services"]
    for _ in range(5):
        assert api.get("/v1/services/web").status_code == 200
        assert api.get("/v1/services").status_code == 200
    assert cache.reads["services"] == reads
    api.patch("/v1/services/web", json={"replicas": 2})
    api.get("/v1/services")
    assert cache.reads["services"] == reads + 1


def test_heartbeats_are_written_in_one_batch(make_client: Callable[..., TestClient]) -> None:
    api = make_client(run_reconciler=False)
    state = _state(api)
    _stop_flushing(api)  # flushed by hand here
    nodes = [register(api, f"w{i}") for i in range(3)]
    for node_id, token in nodes:
        # A new node's first heartbeat is written at once (its agent has the answer to
        # its registration, ``known=false``: a retry of it must now hear ``known``).
        assert api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token)).is_success
    assert state.heartbeats.pending == 0
    for i, (node_id, token) in enumerate(nodes):
        r = api.post(
            f"/v1/nodes/{node_id}/heartbeat",
            json={"cpu_percent": 10.0 + i, "replica_count": i},
            headers=bearer(token),
        )
        assert r.status_code == 200, r.text
        assert r.json()["cpu_percent"] == 10.0 + i  # answered with what it said
    assert state.heartbeats.pending == 3
    assert all(n.cpu_percent is None for n in state.store.list_nodes())  # not yet written
    batches = state.heartbeats.batches
    # A read shows what was received, written or not, and writes nothing itself.
    shown = {n["id"]: n for n in api.get("/v1/nodes").json()}
    one = api.get(f"/v1/nodes/{nodes[1][0]}").json()
    assert state.heartbeats.batches == batches
    assert state.heartbeats.pending == 3
    for i, (node_id, _token) in enumerate(nodes):
        assert shown[node_id]["cpu_percent"] == 10.0 + i
        assert shown[node_id]["replica_count"] == i
    assert one["cpu_percent"] == 11.0
    # The batched write: all three in one transaction.
    api.portal.call(state.heartbeats.flush)
    assert state.heartbeats.batches == batches + 1
    assert state.heartbeats.pending == 0
    stored = {n.id: n for n in state.store.list_nodes()}
    for i, (node_id, _token) in enumerate(nodes):
        assert stored[node_id].cpu_percent == 10.0 + i
    assert {n["id"]: n["cpu_percent"] for n in api.get("/v1/nodes").json()} == {
        node_id: 10.0 + i for i, (node_id, _token) in enumerate(nodes)
    }


def test_a_silent_nodes_heartbeat_is_written_at_once(
    make_client: Callable[..., TestClient],
) -> None:
    """A heartbeat that changes the node's state is not kept for the batch: the node is
    ready again in the answer and in the store, with its event."""
    api = make_client(run_reconciler=False)
    state = _state(api)
    _stop_flushing(api)
    node_id, token = register(api, "w1")
    state.store.mark_not_ready({node_id: 20.0}, timeout_s=15.0, still_silent=lambda _id: True)
    assert api.get(f"/v1/nodes/{node_id}").json()["state"] == NodeState.NOT_READY
    r = api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token))
    assert r.json()["state"] == NodeState.READY
    assert state.heartbeats.pending == 0
    assert api.get(f"/v1/nodes/{node_id}").json()["state"] == NodeState.READY


def test_a_heartbeat_written_at_once_is_written_alone(
    make_client: Callable[..., TestClient],
) -> None:
    """A heartbeat that cannot wait (here: a silent node's) is written before its answer
    without the heartbeats pending for the batch: while a fleet joins, each new agent's
    first heartbeat waited for a write of the whole fleet's, twice (2-10 s), and some
    timed out. The others stay pending, shown by reads, for the next batch."""
    api = make_client(run_reconciler=False)
    state = _state(api)
    _stop_flushing(api)
    nodes = [register(api, f"w{i}") for i in range(3)]
    for node_id, token in nodes:  # first heartbeats: written at once
        assert api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token)).is_success
    for node_id, token in nodes[1:]:
        r = api.post(
            f"/v1/nodes/{node_id}/heartbeat", json={"cpu_percent": 50.0}, headers=bearer(token)
        )
        assert r.status_code == 200, r.text
    assert state.heartbeats.pending == 2
    silent_id, silent_token = nodes[0]
    state.store.mark_not_ready({silent_id: 20.0}, timeout_s=15.0, still_silent=lambda _id: True)
    r = api.post(
        f"/v1/nodes/{silent_id}/heartbeat", json={"cpu_percent": 7.0}, headers=bearer(silent_token)
    )
    assert r.json()["state"] == NodeState.READY
    assert state.heartbeats.pending == 2  # the others were not written with it
    stored = {n.id: n for n in state.store.list_nodes()}
    assert stored[silent_id].state == NodeState.READY
    assert stored[silent_id].cpu_percent == 7.0
    assert [stored[n].cpu_percent for n, _ in nodes[1:]] == [None, None]
    shown = {n["id"]: n["cpu_percent"] for n in api.get("/v1/nodes").json()}
    assert [shown[n] for n, _ in nodes[1:]] == [50.0, 50.0]


def test_a_wrong_or_unknown_node_token_is_refused(make_client: Callable[..., TestClient]) -> None:
    api = make_client(run_reconciler=False)
    node_id, token = register(api, "w1")
    other_id, _other_token = register(api, "w2")
    assert api.get(f"/v1/nodes/{node_id}/assignments", headers=bearer(token)).status_code == 200
    assert api.get(f"/v1/nodes/{other_id}/assignments", headers=bearer(token)).status_code == 401
    r = api.get("/v1/nodes/nosuchnode/assignments", headers=bearer(token))
    assert r.status_code == 401
    assert "register again" in r.json()["detail"]
    api.delete(f"/v1/nodes/{node_id}")
    assert api.get(f"/v1/nodes/{node_id}/assignments", headers=bearer(token)).status_code == 401


def test_a_long_poll_wakes_only_for_its_own_node(make_client: Callable[..., TestClient]) -> None:
    """A change of another node's assignments does not answer this node's long-poll; a
    change of its own does."""
    # Never a timing assertion: a poll that wrongly answered is over, at once or not;
    # 10 s only bounds a poll that fails to answer at all.
    api = make_client(run_reconciler=False, watch_timeout_s=10)
    store = _state(api).store
    a_id, a_token = register(api, "a")
    b_id, _ = register(api, "b")
    api.post("/v1/services", json=service_spec(replicas=1))
    first = api.get(f"/v1/nodes/{a_id}/assignments", headers=bearer(a_token)).json()

    answer: dict[str, Any] = {}

    def poll() -> None:
        answer.update(
            api.get(
                f"/v1/nodes/{a_id}/assignments",
                params={"version": first["version"], "timeout": 10},
                headers=bearer(a_token),
            ).json()
        )

    poller = threading.Thread(target=poll)
    poller.start()
    store.create_replicas("web", [b_id], reason="test")  # another node's change
    poller.join(1.0)
    assert poller.is_alive(), f"answered for another node's change: {answer}"
    (mine,) = store.create_replicas("web", [a_id], reason="test")
    poller.join(30)
    assert not poller.is_alive()
    assert [r["replica"] for r in answer["replicas"]] == [mine.id]
    assert answer["version"] != first["version"]


def test_a_change_wakes_only_the_long_poll_of_the_node_it_is_for(
    make_client: Callable[..., TestClient],
) -> None:
    """Five agents wait; a replica placed on one node wakes that node's long-poll alone:
    the others are not woken to compare (AssignmentWatch compares for them once)."""
    api = make_client(run_reconciler=False, watch_timeout_s=30)
    state = _state(api)
    nodes = [register(api, f"n{i}") for i in range(5)]
    api.post("/v1/services", json=service_spec(replicas=1))
    answers: dict[str, dict[str, Any]] = {}

    def poll(node_id: str, token: str) -> None:
        first = api.get(f"/v1/nodes/{node_id}/assignments", headers=bearer(token)).json()
        answers[node_id] = api.get(
            f"/v1/nodes/{node_id}/assignments",
            params={"version": first["version"], "timeout": 30},
            headers=bearer(token),
        ).json()

    pollers = [threading.Thread(target=poll, args=node, daemon=True) for node in nodes]
    for poller in pollers:
        poller.start()
    wait_for(lambda: state.watch.waiting == 5, what="five long-polls waiting")
    woken = state.watch.woken
    (placed,) = state.store.create_replicas("web", [nodes[2][0]], reason="test")
    pollers[2].join(20)
    assert not pollers[2].is_alive()
    assert [r["replica"] for r in answers[nodes[2][0]]["replicas"]] == [placed.id]
    assert state.watch.woken == woken + 1
    assert state.watch.waiting == 4
    assert len(answers) == 1
    # The others end at their own deadline; the feed closing at shutdown would too.
    state.store.delete_node(nodes[0][0], force=True)  # a removed node's poll: a 404
    pollers[0].join(20)
    assert "register again" in answers[nodes[0][0]]["detail"]
    api.portal.call(state.feed.close)
    for poller in pollers:
        poller.join(20)
        assert not poller.is_alive()


def test_a_version_this_controller_did_not_answer_is_answered_at_once(
    make_client: Callable[..., TestClient],
) -> None:
    """An agent that comes from another controller (or from before a restart) presents a
    version this one never answered it: it is answered at once if the version moved."""
    api = make_client(run_reconciler=False, watch_timeout_s=60)
    a_id, a_token = register(api, "a")
    first = api.get(f"/v1/nodes/{a_id}/assignments", headers=bearer(a_token)).json()
    api.post("/v1/services", json=service_spec(replicas=1))  # moves the version
    _state(api).answered.forget(a_id)
    body = api.get(
        f"/v1/nodes/{a_id}/assignments",
        params={"version": first["version"], "timeout": 60},
        headers=bearer(a_token),
    ).json()
    assert body["version"] != first["version"]


def test_concurrent_misses_read_the_view_once() -> None:
    """Requests that miss the same version together share one read (single flight)."""
    version = [1]
    cache = ViewCache(lambda: version[0], version_costs_io=False)
    started = threading.Event()
    release = threading.Event()

    def build() -> str:
        started.set()
        release.wait(10)
        return f"view at {version[0]}"

    async def main() -> list[str]:
        tasks = [asyncio.create_task(cache.get("k", build)) for _ in range(20)]
        await asyncio.to_thread(started.wait, 10)
        release.set()
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(main()) == ["view at 1"] * 20
    assert cache.reads["k"] == 1
    version[0] = 2
    assert asyncio.run(cache.get("k", lambda: "view at 2")) == "view at 2"
    assert cache.reads["k"] == 2
    cache.close()


def _loop(client: TestClient) -> asyncio.AbstractEventLoop:
    """The event loop the TestClient runs the app on (its portal's)."""
    loop = _state(client).feed._loop
    assert loop is not None
    return loop


def _stop_flushing(client: TestClient) -> None:
    """Cancel the app's periodic heartbeat flush: the test flushes by hand."""

    async def cancel() -> None:
        for task in asyncio.all_tasks():
            if task.get_name() == "heartbeats":
                task.cancel()

    asyncio.run_coroutine_threadsafe(cancel(), _loop(client)).result(10)


def test_a_registration_moves_the_nodes_version_not_the_agents(
    make_client: Callable[..., TestClient],
) -> None:
    """A node joining changes no agent's assignments: it wakes the scheduler (``nodes``),
    not every agent's long-poll (``spec``); the edges' ``state`` moves too."""
    api = make_client(run_reconciler=False)
    feed = _state(api).feed
    register(api, "a")
    spec, nodes, state = feed.version("spec"), feed.version("nodes"), feed.version("state")
    register(api, "b")
    assert feed.version("spec") == spec
    assert feed.version("nodes") > nodes
    assert feed.version("state") > state
    api.post("/v1/services", json=service_spec(replicas=1))
    assert feed.version("spec") > spec


def test_a_node_joining_gets_replicas_placed(make_client: Callable[..., TestClient]) -> None:
    """The reconciler wakes for node changes too: a service waiting for a node gets its
    replica on the node that registers (the loop runs; no manual cycle)."""
    api = make_client(reconcile_interval_s=60)  # only a wake-up can place it in time
    api.post("/v1/services", json=service_spec(replicas=1))
    node_id, _ = register(api, "late")

    def placed() -> bool:
        reps = api.get("/v1/replicas", params={"service": "web"}).json()
        return bool(reps) and reps[0]["node"] in (node_id, "late")

    wait_for(placed, what="a replica placed on the node that joined", timeout=30)


def test_node_facts_are_read_once_and_forgotten_on_change(
    make_client: Callable[..., TestClient],
) -> None:
    """Each node's token, state and address are read once and kept (SQLite): heartbeats
    read nothing more. A write that changes them (a token rotated by a re-registration,
    a node removed) is seen by the very next request."""
    api = make_client(run_reconciler=False)
    facts = _state(api).store.node_facts
    if facts is None:  # PostgreSQL: read per request, nothing kept
        return
    node_id, token = register(api, "w1")
    hb = {"cpu_percent": 1.0}
    assert api.post(f"/v1/nodes/{node_id}/heartbeat", json=hb, headers=bearer(token)).is_success
    reads = facts.reads
    for _ in range(5):
        r = api.post(f"/v1/nodes/{node_id}/heartbeat", json=hb, headers=bearer(token))
        assert r.status_code == 200
    assert facts.reads == reads
    # The admin re-registers it: a new token; the old one is refused at once.
    again = api.post(
        "/v1/nodes/register",
        json={"name": "w1", "address": "127.0.0.1", "node_id": node_id},
    ).json()
    assert again["node_token"] != token
    r = api.post(f"/v1/nodes/{node_id}/heartbeat", json=hb, headers=bearer(token))
    assert r.status_code == 401
    new = bearer(again["node_token"])
    assert api.post(f"/v1/nodes/{node_id}/heartbeat", json=hb, headers=new).status_code == 200
    api.delete(f"/v1/nodes/{node_id}")
    r = api.post(f"/v1/nodes/{node_id}/heartbeat", json=hb, headers=new)
    assert r.status_code == 401
    assert "register again" in r.json()["detail"]


def test_reports_that_arrive_together_are_one_write(
    make_client: Callable[..., TestClient],
) -> None:
    """Replica reports sent at the same time are stored together (group commit), and
    each is answered only once stored; one of an unknown node is refused alone."""
    api = make_client(run_reconciler=False)
    state = _state(api)
    nodes = [register(api, f"w{i}") for i in range(6)]
    api.post("/v1/services", json=service_spec(replicas=1))
    replicas = {
        node_id: state.store.create_replicas("web", [node_id], reason="test")[0].id
        for node_id, _ in nodes
    }
    before = state.reports.batches
    answers: dict[str, int] = {}

    def report(node_id: str, token: str) -> None:
        body = {"replicas": [{"id": replicas[node_id], "state": "healthy"}], "full": False}
        answers[node_id] = api.post(
            f"/v1/nodes/{node_id}/replicas", json=body, headers=bearer(token)
        ).status_code

    threads = [threading.Thread(target=report, args=node) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == {node_id: 204 for node_id, _ in nodes}
    states = {r["node"]: r["state"] for r in api.get("/v1/replicas").json()}
    assert set(states.values()) == {"healthy"}, states
    assert 1 <= state.reports.batches - before <= len(nodes)


def test_every_nodes_assignments_are_read_once_per_spec_version(
    make_client: Callable[..., TestClient],
) -> None:
    """Writes that change no assignment (a report, a registration) do not make the woken
    long-polls read every node's assignments again; a change of what must run does. A
    node that joined after the view was read still gets its own."""
    api = make_client(run_reconciler=False)
    state = _state(api)
    a_id, a_token = register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=1))
    (rep,) = state.store.create_replicas("web", [a_id], reason="test")
    views, feed = state.views, state.feed

    def every(version: int) -> dict[str, Any]:  # on the app's loop, beside AssignmentWatch
        found: dict[str, Any] = api.portal.call(views.assignments, version)
        return found

    spec = feed.version("spec")
    wait_for(lambda: state.watch.version == spec, what="the watch to read the assignments")
    first = every(spec)
    reads = views.cache.reads["assignments"]
    body = {"replicas": [{"id": rep.id, "state": "healthy"}], "full": False}
    assert api.post(f"/v1/nodes/{a_id}/replicas", json=body, headers=bearer(a_token)).is_success
    b_id, b_token = register(api, "b")
    assert feed.version("spec") == spec
    assert every(feed.version("spec")) is first
    assert views.cache.reads["assignments"] == reads
    assert b_id not in first
    # b's long-poll, answered from a view without it, reads its own.
    r = api.get(f"/v1/nodes/{b_id}/assignments", headers=bearer(b_token))
    assert r.status_code == 200 and r.json()["replicas"] == []
    state.store.create_replicas("web", [b_id], reason="test")
    assert feed.version("spec") != spec
    again = every(feed.version("spec"))
    assert views.cache.reads["assignments"] == reads + 1
    assert [x.replica for x in again[b_id].replicas]


def test_the_node_list_is_read_again_only_when_a_node_changed(
    make_client: Callable[..., TestClient],
) -> None:
    """Services placed and replicas reported change no node row: a client polling the
    node list of a busy fleet is answered from the view (SQLite; PostgreSQL, where
    other controllers write too, reads it afresh). A heartbeat batch, which changes
    the nodes' figures, makes it read again."""
    api = make_client(run_reconciler=False)
    state = _state(api)
    _stop_flushing(api)
    node_id, token = register(api, "w1")
    assert api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token)).is_success
    cache = state.views.cache
    api.get("/v1/nodes")
    reads = cache.reads["nodes"]
    api.post("/v1/services", json=service_spec(replicas=1))
    reconcile(api)
    (replica,) = api.get("/v1/replicas", params={"service": "web"}).json()
    report = {"replicas": [{"id": replica["id"], "state": "healthy", "address": "127.0.0.1:8080"}]}
    r = api.post(f"/v1/nodes/{node_id}/replicas", json=report, headers=bearer(token))
    assert r.status_code == 204, r.text
    api.get("/v1/nodes")
    if state.store.shares_changes:
        assert cache.reads["nodes"] > reads
        return
    assert cache.reads["nodes"] == reads
    hb = {"cpu_percent": 42.0}
    assert api.post(f"/v1/nodes/{node_id}/heartbeat", json=hb, headers=bearer(token)).is_success
    api.portal.call(state.heartbeats.flush)
    (shown,) = api.get("/v1/nodes").json()
    assert cache.reads["nodes"] == reads + 1
    assert shown["cpu_percent"] == 42.0


def test_a_node_list_encodes_only_the_nodes_that_changed(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll of the node list encodes the heartbeats received since the last poll, not
    every node with one; a batch's write makes the view encode the nodes it changed
    (SQLite, where the store keeps the others' views; every node on PostgreSQL). What is
    answered is what a fresh encoding of each node gives."""
    from orchestrify.controller import heartbeats, views

    encoded: list[str] = []

    def counting(module: Any) -> None:
        real = module.encode

        def encode(value: Any, adapter: Any) -> bytes:
            encoded.append(getattr(value, "id", "?"))
            return real(value, adapter)

        monkeypatch.setattr(module, "encode", encode)

    api = make_client(run_reconciler=False)
    state = _state(api)
    _stop_flushing(api)
    nodes = [register(api, f"w{i}") for i in range(4)]
    for node_id, token in nodes:
        assert api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token)).is_success
    api.get("/v1/nodes")
    counting(views)
    counting(heartbeats)

    def beat(i: int, cpu: float) -> None:
        node_id, token = nodes[i]
        hb = {"cpu_percent": cpu}
        assert api.post(f"/v1/nodes/{node_id}/heartbeat", json=hb, headers=bearer(token)).is_success

    def listing() -> dict[str, float | None]:
        return {n["id"]: n["cpu_percent"] for n in api.get("/v1/nodes").json()}

    # On PostgreSQL each read reads the nodes again (other controllers write them too),
    # so only what is answered is checked there.
    kept = not state.store.shares_changes
    expected = {node_id: None for node_id, _ in nodes}
    beat(0, 42.0)
    expected[nodes[0][0]] = 42.0
    assert listing() == expected
    assert encoded == [nodes[0][0]] or not kept  # the new heartbeat's node alone
    beat(1, 7.0)
    expected[nodes[1][0]] = 7.0
    assert listing() == expected
    assert encoded == [nodes[0][0], nodes[1][0]] or not kept  # node 0's JSON was kept
    encoded.clear()
    api.portal.call(state.heartbeats.flush)
    assert listing() == expected
    assert sorted(encoded) == sorted([nodes[0][0], nodes[1][0]]) or not kept
    fresh = {n.id: json.loads(views.encode(n, views.NODE)) for n in state.store.list_nodes()}
    assert {n["id"]: n for n in api.get("/v1/nodes").json()} == fresh


def test_a_heartbeat_batch_leaves_no_cyclic_garbage(make_client: Callable[..., TestClient]) -> None:
    """Telling which nodes a write changed must not inspect every column of each row
    (``inspect(row).attrs`` makes an AttributeState per column, in reference cycles):
    at a thousand heartbeats a second, that garbage made the collector's longest pauses."""
    import gc

    from sqlalchemy.orm.state import AttributeState

    api = make_client(run_reconciler=False)
    state = _state(api)
    _stop_flushing(api)
    nodes = [register(api, f"w{i}") for i in range(20)]
    for node_id, token in nodes:
        assert api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token)).is_success
    for node_id, token in nodes:
        hb = {"cpu_percent": 5.0}
        assert api.post(f"/v1/nodes/{node_id}/heartbeat", json=hb, headers=bearer(token)).is_success
    gc.collect()
    gc.disable()
    try:
        api.portal.call(state.heartbeats.flush)
        left = sum(1 for o in gc.get_objects() if isinstance(o, AttributeState))
    finally:
        gc.enable()
    assert state.store.list_nodes()[0].cpu_percent == 5.0
    assert left == 0
