"""Node liveness through the real app: a node that stops heartbeating alone becomes
not_ready and its replicas move (told to stop, replaced elsewhere); many silent at once
(a restarted controller, a partition) are unreachable and keep theirs."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from orchestrify import clock
from tests.api.conftest import (
    JOIN,
    bearer,
    reconcile,
    register,
    replicas_of,
    running,
    service_spec,
    wait_for,
)


@contextmanager
def heartbeating(api: TestClient, node_id: str, token: str) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token))
            stop.wait(0.05)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_silent_node_goes_not_ready_and_its_replicas_move(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(node_timeout_s=1.0, reconcile_interval_s=0.05)
    a, a_token = register(api, "a")
    with heartbeating(api, a, a_token):
        api.post("/v1/services", json=service_spec(replicas=1))
        (old,) = wait_for(lambda: running(api, "web"), what="replica on a")
        assert old["node"] == a
    # a falls silent from here on; b registers and keeps beating.
    b, b_token = register(api, "b")
    with heartbeating(api, b, b_token):
        wait_for(lambda: api.get(f"/v1/nodes/{a}").json()["state"] == "not_ready", what="a down")
        (new,) = wait_for(
            lambda: [r for r in running(api, "web") if r["node"] == b], what="replica on b"
        )
        assert api.get(f"/v1/nodes/{b}").json()["state"] == "ready"
    assert new["id"] != old["id"]
    # Not forgotten: told to stop (an explicit order for a's agent, should it come back),
    # out of Nginx at once; the row goes when the agent reports it stopped.
    told = api.get(f"/v1/replicas/{old['id']}").json()
    assert told["desired"] == "stop"
    upstream = api.get("/v1/upstreams").json()["services"][0]["replicas"]
    assert old["id"] not in {r["id"] for r in upstream}
    node_events = api.get("/v1/events", params={"kind": "node"}).json()
    assert any(e["action"] == "node_not_ready" and e["node"] == "a" for e in node_events)
    stops = api.get("/v1/events", params={"service": "web", "kind": "action"}).json()
    assert any(e["replica"] == old["id"] and e["action"] == "stop_replica" for e in stops)

    # Its next heartbeat makes it ready again; its agent then removes the old container
    # and reports it stopped, which drops the row.
    api.post(f"/v1/nodes/{a}/heartbeat", json={}, headers=bearer(a_token))
    assert api.get(f"/v1/nodes/{a}").json()["state"] == "ready"
    (order,) = [
        r
        for r in api.get(f"/v1/nodes/{a}/assignments", headers=bearer(a_token)).json()["replicas"]
        if r["replica"] == old["id"]
    ]
    assert order["desired"] == "stop"
    api.post(
        f"/v1/nodes/{a}/replicas",
        json={"replicas": [{"id": old["id"], "state": "stopped"}]},
        headers=bearer(a_token),
    )
    assert api.get(f"/v1/replicas/{old['id']}").status_code == 404


def test_a_cycle_judges_liveness_on_its_snapshot_and_plans_after_its_marks(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler judges liveness on the nodes of its cycle's snapshot (one read of
    every node a cycle); a cycle that marks a node not ready plans on a snapshot taken
    after, so the silent node's replica moves in that same cycle."""
    # b must stay within the timeout between its heartbeat and the cycle, a must not:
    # a whole second of margin for a busy machine.
    api = make_client(run_reconciler=False, node_timeout_s=1.0, node_startup_grace_s=0)
    state = api.app.state.controller  # type: ignore[attr-defined]
    snapshots: list[int] = []
    snapshot = state.store.snapshot
    monkeypatch.setattr(state.store, "snapshot", lambda: snapshots.append(1) or snapshot())
    a, _ = register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=1))
    reconcile(api)
    (old,) = replicas_of(api, "web")
    assert old["node"] == a
    b, b_token = register(api, "b")
    time.sleep(1.2)  # a and b fall silent; b beats again
    api.post(f"/v1/nodes/{b}/heartbeat", json={}, headers=bearer(b_token))
    snapshots.clear()
    reconcile(api)  # one cycle: a marked not ready, its replica placed on b
    assert len(snapshots) == 2  # the one judged on, and the one planned on after the mark
    assert api.get(f"/v1/nodes/{a}").json()["state"] == "not_ready"
    assert api.get(f"/v1/nodes/{b}").json()["state"] == "ready"
    placed = [r for r in replicas_of(api, "web") if r["node"] == b]
    assert len(placed) == 1, replicas_of(api, "web")
    snapshots.clear()
    reconcile(api)  # nothing to mark: one snapshot
    assert len(snapshots) == 1


def test_silent_draining_node_goes_not_ready_and_rm_completes(
    make_client: Callable[..., TestClient],
) -> None:
    """A dead host being removed must not wait forever for replicas that never report."""
    api = make_client(node_timeout_s=1.0, reconcile_interval_s=0.05)
    a, a_token = register(api, "a")
    b, b_token = register(api, "b")
    with heartbeating(api, a, a_token), heartbeating(api, b, b_token):
        api.post("/v1/services", json=service_spec(replicas=1, max_per_node=1))
        (rep,) = wait_for(lambda: running(api, "web"), what="a replica")
        gone = rep["node"]
        assert api.delete(f"/v1/nodes/{gone}").status_code == 409  # it has a replica
        removing = api.post(f"/v1/nodes/{gone}/drain", params={"remove": True})
        assert removing.status_code == 200 and removing.json()["removing"] is True
        assert api.get(f"/v1/nodes/{gone}").json()["state"] == "draining"
    # The removed node falls silent while draining (the other one keeps beating): it goes
    # not_ready, its replica is told to stop, and the pending removal completes.
    stay, stay_token = (b, b_token) if gone == a else (a, a_token)
    with heartbeating(api, stay, stay_token):
        wait_for(lambda: api.get(f"/v1/nodes/{gone}").status_code == 404, what="node removed")
    assert api.get(f"/v1/nodes/{stay}").json()["state"] == "ready"


def test_a_lone_silent_node_is_unreachable_and_keeps_draining(
    make_client: Callable[..., TestClient],
) -> None:
    """One node of one is all of the fleet silent at once: unreachable, not not_ready."""
    api = make_client(node_timeout_s=1.0, reconcile_interval_s=0.05)
    a, a_token = register(api, "a")
    api.post(f"/v1/nodes/{a}/drain")
    wait_for(lambda: api.get(f"/v1/nodes/{a}").json()["state"] == "unreachable", what="a silent")
    # Not up, for NodeDown (the reschedule action refuses an unreachable node).
    assert 'orchestrify_node_up{node="a"} 0.0' in api.get("/metrics").text
    api.post(f"/v1/nodes/{a}/heartbeat", json={}, headers=bearer(a_token))
    assert api.get(f"/v1/nodes/{a}").json()["state"] == "draining"
    assert 'orchestrify_node_up{node="a"} 1.0' in api.get("/metrics").text


def test_a_removed_node_leaves_discovery_and_node_metrics(api: TestClient) -> None:
    """What decommission.yml ends with: the node's NodeDown alert resolves because
    Prometheus no longer scrapes its agent nor sees it in orchestrify_node_up."""
    resp = api.post(
        "/v1/nodes/register",
        json={"name": "old", "address": "127.0.0.1", "agent_url": "http://127.0.0.1:18081"},
        headers=bearer(JOIN),
    )
    node_id = resp.json()["node_id"]

    def agents() -> list[str]:
        targets = api.get("/v1/discovery/prometheus").json()
        return [t["labels"]["node"] for t in targets if t["labels"]["job"] == "orchestrify-agent"]

    assert agents() == ["old"]
    assert 'orchestrify_node_up{node="old"}' in api.get("/metrics").text
    assert api.delete(f"/v1/nodes/{node_id}", params={"force": "true"}).status_code == 200
    assert agents() == []
    assert 'orchestrify_node_up{node="old"}' not in api.get("/metrics").text


def _fleet_an_hour_ago(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Three nodes and a service of 3 healthy replicas, in a store whose every heartbeat
    was an hour ago (the wall clock the code reads, moved back while they happened)."""
    real = clock.utcnow
    monkeypatch.setattr(clock, "utcnow", lambda: real() - timedelta(hours=1))
    first = make_client(node_timeout_s=1.0, reconcile_interval_s=0.05)
    tokens = dict(register(first, name) for name in ("a", "b", "c"))
    first.post("/v1/services", json=service_spec(replicas=3, max_per_node=1))
    reps = wait_for(lambda: running(first, "web", count=3), what="3 replicas")
    for r in reps:
        first.post(
            f"/v1/nodes/{r['node']}/replicas",
            json={"replicas": [{"id": r["id"], "state": "healthy", "address": "127.0.0.1:1"}]},
            headers=bearer(tokens[r["node"]]),
        )
    first.__exit__(None, None, None)  # the controller stops
    monkeypatch.setattr(clock, "utcnow", real)
    return tokens, reps


def test_restarted_controller_keeps_nodes_ready_through_the_startup_grace(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stored heartbeat is an hour old; the agents reach the new controller after
    more than node_timeout but within its grace: no node is ever marked anything but
    ready, and no replica moves."""
    tokens, reps = _fleet_an_hour_ago(make_client, monkeypatch)
    api = make_client(node_timeout_s=1.0, node_startup_grace_s=3.0, reconcile_interval_s=0.05)
    liveness = api.app.state.controller.reconciler.liveness  # type: ignore[attr-defined]
    seen_states: set[str] = set()

    def looked_until(uptime_s: float) -> bool:
        seen_states.update(n["state"] for n in api.get("/v1/nodes").json())
        return bool(liveness.uptime_s() > uptime_s)

    wait_for(lambda: looked_until(2.0), what="twice node_timeout, without a heartbeat")
    with contextlib.ExitStack() as beats:
        for node_id, token in tokens.items():
            beats.enter_context(heartbeating(api, node_id, token))
        wait_for(lambda: looked_until(5.0), what="the grace period to pass, with heartbeats")
    assert seen_states == {"ready"}
    node_events = api.get("/v1/events", params={"kind": "node"}).json()
    assert not [e for e in node_events if e["action"] in {"node_not_ready", "mass_silence"}]
    after = running(api, "web")
    assert sorted(r["id"] for r in after) == sorted(r["id"] for r in reps)


def test_restarted_controller_without_heartbeats_marks_the_fleet_unreachable_once(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agents do not come back (a partition, say): after the grace every node is
    unreachable, said in one event, and every replica stays, in Nginx too."""
    tokens, reps = _fleet_an_hour_ago(make_client, monkeypatch)
    api = make_client(node_timeout_s=1.0, node_startup_grace_s=1.5, reconcile_interval_s=0.05)
    wait_for(
        lambda: {n["state"] for n in api.get("/v1/nodes").json()} == {"unreachable"},
        what="the silent fleet to be unreachable",
    )
    events = api.get("/v1/events", params={"kind": "node"}).json()
    (mass,) = [e for e in events if e["action"] == "mass_silence"]
    assert "3 of 3" in mass["message"] and "controller or network problem" in mass["message"]
    assert not [e for e in events if e["action"] == "node_not_ready"]
    after = running(api, "web")
    assert sorted(r["id"] for r in after) == sorted(r["id"] for r in reps)
    upstream = api.get("/v1/upstreams").json()["services"][0]["replicas"]
    assert sorted(r["id"] for r in upstream) == sorted(r["id"] for r in reps)
    # One agent comes back: its node is ready again, the others stay unreachable (2 of 3
    # silent is still above half).
    node_id, token = next(iter(tokens.items()))
    api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token))
    assert api.get(f"/v1/nodes/{node_id}").json()["state"] == "ready"


def test_a_heartbeat_with_a_bad_address_is_422_naming_it(api: TestClient) -> None:
    node_id, token = register(api, "a")
    resp = api.post(
        f"/v1/nodes/{node_id}/heartbeat",
        json={"address": "10.0.0.1; include /etc/passwd"},
        headers=bearer(token),
    )
    assert resp.status_code == 422
    assert "address" in resp.json()["message"]
    assert api.get(f"/v1/nodes/{node_id}").json()["address"] == "127.0.0.1"
