"""Nodes: register with the join token, heartbeat, drain, activate, remove."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import AUTH, JOIN, bearer, register, running, service_spec, wait_for


def test_register_with_join_or_admin_token_and_heartbeat(api: TestClient) -> None:
    node_id, token = register(api, "worker-1", address="10.1.2.3")
    assert token not in {JOIN, "admin-secret"}
    other_id, _ = register(api, "worker-2", token="admin-secret")
    assert other_id != node_id
    assert (
        api.post(
            "/v1/nodes/register", json={"name": "x", "address": "y"}, headers=bearer("nope")
        ).status_code
        == 401
    )

    hb = api.post(
        f"/v1/nodes/{node_id}/heartbeat",
        json={"cpu_percent": 12.5, "memory_free": 2**30, "replica_count": 0},
        headers=bearer(token),
    )
    assert hb.status_code == 200
    node = api.get(f"/v1/nodes/{node_id}").json()
    assert node["state"] == "ready" and node["cpu_percent"] == 12.5
    assert node["address"] == "10.1.2.3" and node["memory_free"] == 2**30
    assert api.get("/v1/nodes/worker-1").json()["id"] == node_id  # by name too
    assert [n["name"] for n in api.get("/v1/nodes").json()] == ["worker-1", "worker-2"]


def test_reregistering_with_node_id_keeps_the_node(api: TestClient) -> None:
    node_id, old_token = register(api, "worker-1")
    resp = api.post(
        "/v1/nodes/register",
        json={
            "name": "worker-1",
            "address": "10.0.0.2",
            "node_id": node_id,
            "node_token": old_token,  # the agent presents its saved token
        },
        headers=bearer(JOIN),
    )
    assert resp.json()["node_id"] == node_id
    # Its token is kept, not rotated: a retry of this registration whose answer was lost
    # presents the same token and is answered the same.
    assert resp.json()["node_token"] == old_token
    assert api.get(f"/v1/nodes/{node_id}").json()["address"] == "10.0.0.2"
    assert api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(old_token)).is_success
    # The admin re-registering it issues a fresh token; the old one is refused from then on.
    resp = api.post(
        "/v1/nodes/register",
        json={"name": "worker-1", "address": "10.0.0.2", "node_id": node_id},
        headers=AUTH,
    )
    new_token = resp.json()["node_token"]
    assert resp.json()["node_id"] == node_id and new_token != old_token
    assert api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(new_token)).is_success
    assert (
        api.post(f"/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(old_token)).status_code
        == 401
    )


def test_drain_moves_replicas_and_activate_takes_them_again(api: TestClient) -> None:
    a, _ = register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=2))
    wait_for(lambda: len(running(api, "web")) == 2, what="2 replicas on a")
    b, _ = register(api, "b")

    drained = api.post(f"/v1/nodes/{a}/drain")
    assert drained.status_code == 200 and drained.json()["state"] == "draining"
    wait_for(
        lambda: {r["node"] for r in running(api, "web")} == {b} and len(running(api, "web")) == 2,
        what="replicas moved to b",
    )
    assert all(r["desired"] != "run" for r in api.get("/v1/replicas", params={"node": a}).json())

    activated = api.post(f"/v1/nodes/{a}/activate")
    assert activated.status_code == 200 and activated.json()["state"] == "ready"
    api.patch("/v1/services/web", json={"replicas": 3})
    wait_for(lambda: any(r["node"] == a for r in running(api, "web")), what="a placed on again")


def test_rm_drains_first_and_the_node_goes_once_empty(api: TestClient) -> None:
    a, a_token = register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=1))
    (rep,) = wait_for(lambda: running(api, "web"), what="a replica")
    b, _ = register(api, "b")

    refused = api.delete(f"/v1/nodes/{a}")  # it has a replica: DELETE never drains
    assert refused.status_code == 409 and "drain" in refused.json()["message"], refused.text
    assert api.get(f"/v1/nodes/{a}").json()["state"] == "ready"
    assert api.post(f"/v1/nodes/{a}/drain", params={"remove": True}).json()["removing"] is True
    assert api.get(f"/v1/nodes/{a}").json()["state"] == "draining"
    wait_for(lambda: [r["node"] for r in running(api, "web")] == [b], what="moved to b")
    wait_for(
        lambda: api.get(f"/v1/replicas/{rep['id']}").json()["desired"] == "stop",
        what="old replica told to stop",
    )
    assert api.get(f"/v1/nodes/{a}").status_code == 200  # still there: not empty yet
    report = {"replicas": [{"id": rep["id"], "state": "stopped"}]}
    assert (
        api.post(f"/v1/nodes/{a}/replicas", json=report, headers=bearer(a_token)).status_code == 204
    )
    wait_for(lambda: api.get(f"/v1/nodes/{a}").status_code == 404, what="node a removed")
    assert [n["id"] for n in api.get("/v1/nodes", headers=AUTH).json()] == [b]


def test_force_rm_forgets_at_once(api: TestClient) -> None:
    a, _ = register(api, "a")
    assert api.delete(f"/v1/nodes/{a}", params={"force": True}).status_code == 200
    assert api.get(f"/v1/nodes/{a}").status_code == 404


def test_force_rm_of_a_node_with_replicas_says_how_many_it_forgot(api: TestClient) -> None:
    a, _ = register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=1))
    wait_for(lambda: running(api, "web"), what="a replica")
    resp = api.delete(f"/v1/nodes/{a}", params={"force": True})
    assert resp.status_code == 200, resp.text
    assert resp.json()["removed"] is True and resp.json()["replicas_forgotten"] == 1
    assert api.get(f"/v1/nodes/{a}").status_code == 404
