"""/v1/upstreams (the edges' long-poll), /v1/edges and edge discovery, through the real app."""

from __future__ import annotations

from datetime import datetime

from fastapi.testclient import TestClient

from orchestrify.controller.deps import ControllerState

ADMIN = {"Authorization": "Bearer admin-token"}
JOIN = {"Authorization": "Bearer join-token"}


def _state(api: TestClient) -> ControllerState:
    state: ControllerState = api.app.state.controller  # type: ignore[attr-defined]
    return state


def _setup(api: TestClient) -> tuple[str, str, list[str]]:
    creds = api.post(
        "/v1/nodes/register", json={"name": "w1", "address": "127.0.0.1"}, headers=JOIN
    ).json()
    node_id, node_token = creds["node_id"], creds["node_token"]
    r = api.post(
        "/v1/services",
        json={"name": "web", "image": "orchestrify/demo:latest", "replicas": 3, "drain_s": 7},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    reps = _state(api).store.create_replicas("web", [node_id] * 3, reason="test")
    return node_id, node_token, sorted(r.id for r in reps)


def test_upstreams_list_only_running_healthy_replicas_with_an_address(api: TestClient) -> None:
    node_id, node_token, (r1, r2, r3) = _setup(api)
    first = api.get("/v1/upstreams", headers=ADMIN).json()
    assert first["services"] == [
        {"name": "web", "port": 8000, "drain_s": 7.0, "replicas": [], "kept_from_cluster": None}
    ]

    reports = [
        {"id": r1, "state": "healthy", "address": "127.0.0.1:30001"},
        {"id": r2, "state": "starting", "address": "127.0.0.1:30002"},
        {"id": r3, "state": "healthy"},  # no address yet: Nginx could not reach it
    ]
    r = api.post(
        f"/v1/nodes/{node_id}/replicas",
        json={"replicas": reports},
        headers={"Authorization": f"Bearer {node_token}"},
    )
    assert r.status_code == 204, r.text
    body = api.get("/v1/upstreams", params={"version": first["version"]}, headers=ADMIN).json()
    assert body["version"] != first["version"]
    assert body["services"][0]["replicas"] == [
        {"id": r1, "address": "127.0.0.1:30001", "node": node_id, "node_name": "w1"}
    ]

    # Draining (scale-in) takes it out at once, while its container still runs.
    _state(api).store.drain_replicas([r1], reason="test")
    body = api.get("/v1/upstreams", params={"version": body["version"]}, headers=ADMIN).json()
    assert body["services"][0]["replicas"] == []


def test_upstreams_long_poll_waits_then_answers_unchanged(api: TestClient) -> None:
    _setup(api)
    first = api.get("/v1/upstreams", headers=ADMIN).json()
    again = api.get(
        "/v1/upstreams", params={"version": first["version"], "timeout": 0.2}, headers=ADMIN
    ).json()
    assert {**again, "as_of": None} == {**first, "as_of": None}
    if _state(api).store.shares_changes:
        # Under several controllers each answer is a snapshot of its own, timed by the
        # database under the upstreams lock.
        assert again["as_of"] > first["as_of"]
    else:
        # One controller encodes a snapshot once per state version: nothing changed, so
        # the same snapshot, as of the same time (and the edge has nothing new to ack).
        assert again["as_of"] == first["as_of"]
        assert _state(api).views.cache.reads["upstreams"] == 1


def test_a_drained_replica_leaves_the_kept_snapshot_with_a_later_as_of(api: TestClient) -> None:
    """The snapshot kept per state version is never served after a drain: the drain
    moves the version, and the next answer is without the replica, as of a time after it
    left (what the controller waits for the edges to acknowledge before stopping it)."""
    node_id, node_token, (r1, _r2, _r3) = _setup(api)
    report = {"replicas": [{"id": r1, "state": "healthy", "address": "127.0.0.1:30001"}]}
    r = api.post(
        f"/v1/nodes/{node_id}/replicas",
        json=report,
        headers={"Authorization": f"Bearer {node_token}"},
    )
    assert r.status_code == 204, r.text
    first = api.get("/v1/upstreams", headers=ADMIN).json()
    assert [x["id"] for x in first["services"][0]["replicas"]] == [r1]
    if not _state(api).store.shares_changes:  # one controller: kept, the same snapshot
        assert api.get("/v1/upstreams", headers=ADMIN).json() == first
    _state(api).store.drain_replicas([r1], reason="test")
    again = api.get(
        "/v1/upstreams", params={"version": first["version"], "timeout": 5}, headers=ADMIN
    ).json()
    assert again["version"] != first["version"]
    assert again["services"][0]["replicas"] == []
    (left,) = [x.left_upstreams_at for x in _state(api).store.list_replicas() if x.id == r1]
    assert left is not None
    assert datetime.fromisoformat(again["as_of"]) > left


def test_upstreams_need_the_admin_token(api: TestClient) -> None:
    assert api.get("/v1/upstreams").status_code == 401
    assert api.get("/v1/upstreams", headers=JOIN).status_code == 401


def test_edges_register_and_join_prometheus_discovery(api: TestClient) -> None:
    reg = {"name": "edge-1", "metrics_url": "http://10.0.0.5:18082/metrics"}
    r = api.post("/v1/edges", json=reg, headers=ADMIN)
    assert r.status_code == 200, r.text
    api.post("/v1/edges", json=reg, headers=ADMIN)  # refresh: still one edge, one event
    assert [e["name"] for e in api.get("/v1/edges", headers=ADMIN).json()] == ["edge-1"]
    targets = api.get("/v1/discovery/prometheus", headers=ADMIN).json()
    assert {
        "targets": ["10.0.0.5:18082"],
        "labels": {"job": "orchestrify-edge", "edge": "edge-1"},
    } in targets
    registered = [
        e
        for e in api.get("/v1/events", params={"kind": "config"}, headers=ADMIN).json()
        if e["action"] == "register_edge"
    ]
    assert len(registered) == 1


def test_edge_events_land_in_the_trail(api: TestClient) -> None:
    r = api.post(
        "/v1/edges/edge-1/events",
        json={"message": "config refused", "outcome": "refused", "reason": "nginx: [emerg] x"},
        headers=ADMIN,
    )
    assert r.status_code == 204, r.text
    events = api.get("/v1/events", params={"kind": "config"}, headers=ADMIN).json()
    assert events[-1]["message"] == "config refused"
    assert events[-1]["reason"] == "nginx: [emerg] x"
    assert events[-1]["data"] == {"edge": "edge-1"}
    bad = api.post("/v1/edges/edge-1/events", json={"message": ""}, headers=ADMIN)
    assert bad.status_code == 422
