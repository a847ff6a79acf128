"""Replicas: list, get, delete (replaced unless scaled down), and the agent's reports."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from tests.api.conftest import (
    bearer,
    reconcile,
    register,
    replicas_of,
    running,
    service_spec,
    wait_for,
)


def test_list_and_get(api: TestClient) -> None:
    node_id, _ = register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=2))
    api.post("/v1/services", json=service_spec("api", replicas=1))
    wait_for(lambda: len(api.get("/v1/replicas").json()) == 3, what="3 replicas")
    web = replicas_of(api, "web")
    assert len(web) == 2 and {r["service"] for r in web} == {"web"}
    assert len(api.get("/v1/replicas", params={"node": "a"}).json()) == 3
    one = api.get(f"/v1/replicas/{web[0]['id']}").json()
    assert one["node"] == node_id and one["node_name"] == "a" and one["state"] == "assigned"


def test_deleted_replica_is_replaced(api: TestClient) -> None:
    register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=1))
    (old,) = wait_for(lambda: running(api, "web"), what="a replica")
    resp = api.post(f"/v1/replicas/{old['id']}/stop")
    assert resp.status_code == 202 and resp.json()["desired"] == "drain"
    (new,) = wait_for(
        lambda: [r for r in running(api, "web") if r["id"] != old["id"]], what="replacement"
    )
    assert new["id"] != old["id"]


def test_deleted_replica_is_not_replaced_after_scale_down(
    make_client: Callable[..., TestClient],
) -> None:
    # Cycles run by hand here, so nothing can place a replacement between the two calls.
    api = make_client(run_reconciler=False)
    register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=2, min_replicas=0))
    reconcile(api)
    first, second = running(api, "web")

    api.post(f"/v1/replicas/{first['id']}/stop")
    api.patch("/v1/services/web", json={"replicas": 1})
    reconcile(api)
    assert [r["id"] for r in running(api, "web")] == [second["id"]]

    api.post(f"/v1/replicas/{second['id']}/stop")  # no scale-down this time: replaced
    reconcile(api)
    (new,) = running(api, "web")
    assert new["id"] not in {first["id"], second["id"]}


def test_reports_healthy_then_stopped(api: TestClient) -> None:
    node_id, token = register(api, "a", address="10.9.8.7")
    api.post("/v1/services", json=service_spec(replicas=1, min_replicas=0))
    (rep,) = wait_for(lambda: running(api, "web"), what="a replica")
    report = {
        "replicas": [
            {"id": rep["id"], "state": "healthy", "address": "10.9.8.7:32768", "container_id": "c1"}
        ]
    }
    resp = api.post(f"/v1/nodes/{node_id}/replicas", json=report, headers=bearer(token))
    assert resp.status_code == 204
    (seen,) = replicas_of(api, "web")
    assert seen["state"] == "healthy" and seen["address"] == "10.9.8.7:32768"
    assert seen["container_id"] == "c1"

    api.patch("/v1/services/web", json={"replicas": 0})
    wait_for(
        lambda: api.get(f"/v1/replicas/{rep['id']}").json()["desired"] == "stop",
        what="told to stop after draining",
    )
    stopped = {"replicas": [{"id": rep["id"], "state": "stopped"}]}
    api.post(f"/v1/nodes/{node_id}/replicas", json=stopped, headers=bearer(token))
    assert api.get(f"/v1/replicas/{rep['id']}").status_code == 404
    assert replicas_of(api, "web") == []


def test_stopped_report_for_a_running_replica_is_ignored(api: TestClient) -> None:
    node_id, token = register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=1))
    (rep,) = wait_for(lambda: running(api, "web"), what="a replica")
    stopped = {"replicas": [{"id": rep["id"], "state": "stopped"}]}
    api.post(f"/v1/nodes/{node_id}/replicas", json=stopped, headers=bearer(token))
    assert api.get(f"/v1/replicas/{rep['id']}").status_code == 200


def test_failed_replica_is_replaced_on_another_node(api: TestClient) -> None:
    a, a_token = register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=1))
    (rep,) = wait_for(lambda: running(api, "web"), what="a replica")
    b, _ = register(api, "b")
    failed = {"replicas": [{"id": rep["id"], "state": "failed", "error": "exit 1"}]}
    api.post(f"/v1/nodes/{a}/replicas", json=failed, headers=bearer(a_token))
    # The replacement is placed and the failed one told to stop by separate steps of
    # a cycle (separate writes): a read may fall between them, so wait for both.
    (new,) = wait_for(
        lambda: (
            [r for r in running(api, "web") if r["id"] != rep["id"]]
            if api.get(f"/v1/replicas/{rep['id']}").json()["desired"] == "stop"
            else []
        ),
        what="the replacement, and the failed replica told to stop",
    )
    assert new["node"] == b
    assert [r["id"] for r in running(api, "web")] == [new["id"]]


def test_an_error_is_an_event_at_once_and_once_per_distinct_error(api: TestClient) -> None:
    node_id, token = register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=1))
    (rep,) = wait_for(lambda: running(api, "web"), what="a replica")

    def report(error: str) -> None:
        body = {"replicas": [{"id": rep["id"], "state": "starting", "error": error}]}
        resp = api.post(f"/v1/nodes/{node_id}/replicas", json=body, headers=bearer(token))
        assert resp.status_code == 204

    def errors() -> list[str]:
        events = api.get("/v1/events", params={"service": "web", "kind": "replica"}).json()
        return [e["reason"] for e in events if e["outcome"] == "failed"]

    pull = "cannot pull image nope:1: not found"
    report(pull)  # the state changes too (assigned -> starting): that event carries it
    report(pull)  # a retry with the same error: nothing new
    assert errors() == []
    assert [e["reason"] for e in api.get("/v1/events", params={"kind": "replica"}).json()] == [pull]
    report("port 8080 is already allocated")
    report("port 8080 is already allocated")
    report(pull)
    assert errors() == ["port 8080 is already allocated", pull]
