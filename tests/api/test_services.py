"""Services: create, read, list, update, scale through PATCH, delete."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import bearer, register, running, service_spec, wait_for


def test_crud(api: TestClient) -> None:
    created = api.post(
        "/v1/services",
        json=service_spec(env={"MODE": "prod"}, replicas=0, min_replicas=0, max_replicas=4),
    )
    assert created.status_code == 201, created.text
    assert created.json()["generation"] == 1
    assert api.get("/v1/services/web").json()["env"] == {"MODE": "prod"}
    assert [s["name"] for s in api.get("/v1/services").json()] == ["web"]

    patched = api.patch("/v1/services/web", json={"image": "nginx:1.28", "env": {"MODE": "dev"}})
    assert patched.status_code == 200
    body = patched.json()
    assert body["image"] == "nginx:1.28" and body["env"] == {"MODE": "dev"}
    assert body["generation"] == 2  # a spec change bumps the generation
    assert body["max_replicas"] == 4  # unset fields keep their value

    assert api.delete("/v1/services/web").status_code == 204
    assert api.get("/v1/services/web").status_code == 404
    assert api.get("/v1/services").json() == []


def test_scale_through_patch_places_and_drains(api: TestClient) -> None:
    for name in ("a", "b", "c"):
        register(api, name)
    assert api.post("/v1/services", json=service_spec(replicas=1)).status_code == 201
    wait_for(lambda: len(running(api, "web")) == 1, what="1 replica")

    scaled = api.patch("/v1/services/web", json={"replicas": 3})
    assert scaled.status_code == 200 and scaled.json()["replicas"] == 3
    assert scaled.json()["generation"] == 1  # scaling is not a spec change
    reps = wait_for(lambda: running(api, "web", count=3), what="3 replicas")
    assert len({r["node"] for r in reps}) == 3  # spread over the three nodes

    api.patch("/v1/services/web", json={"replicas": 1})
    wait_for(lambda: len(running(api, "web")) == 1, what="scale in to 1")
    events = api.get("/v1/events", params={"service": "web", "kind": "action"}).json()
    scale = [e for e in events if e["action"] == "scale"]
    assert [(e["data"]["from"], e["data"]["to"]) for e in scale] == [(1, 3), (3, 1)]


def test_deleted_service_winds_down_and_its_name_frees_up(api: TestClient) -> None:
    register(api, "a")
    api.post("/v1/services", json=service_spec(replicas=2))
    wait_for(lambda: len(running(api, "web")) == 2, what="2 replicas")
    assert api.delete("/v1/services/web").status_code == 204
    wait_for(
        lambda: all(r["desired"] == "stop" for r in api.get("/v1/replicas").json()),
        what="replicas told to stop",
    )
    assert api.post("/v1/services", json=service_spec()).status_code == 409  # still removing


def test_the_log_driver_reaches_the_assignment_and_an_update_rolls_it_out(
    api: TestClient,
) -> None:
    node_id, token = register(api, "a")
    gelf = {"gelf-address": "udp://127.0.0.1:12201", "tag": "web"}
    created = api.post(
        "/v1/services", json=service_spec(replicas=1, log_driver="gelf", log_opts=gelf)
    )
    assert created.status_code == 201, created.text
    assert (created.json()["log_driver"], created.json()["log_opts"]) == ("gelf", gelf)

    def assigned() -> list[dict[str, object]]:
        body = api.get(f"/v1/nodes/{node_id}/assignments", headers=bearer(token)).json()
        return [r for r in body["replicas"] if r["desired"] == "run"]

    first = wait_for(assigned, what="the assignment")
    assert (first[0]["log_driver"], first[0]["log_opts"]) == ("gelf", gelf)

    patched = api.patch("/v1/services/web", json={"log_driver": "json-file", "log_opts": {}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["generation"] == 2  # the driver defines the container
    newer = wait_for(
        lambda: [r for r in assigned() if r["generation"] == 2], what="a generation-2 replica"
    )
    assert (newer[0]["log_driver"], newer[0]["log_opts"]) == ("json-file", {})
    events = api.get("/v1/events", params={"service": "web"}).json()
    assert any("updated: log_driver, log_opts; rolling" in e["message"] for e in events)
    back = api.post("/v1/services/web/rollback")
    assert back.status_code == 200, back.text
    assert (back.json()["log_driver"], back.json()["log_opts"]) == ("gelf", gelf)
    events = api.get("/v1/events", params={"service": "web"}).json()
    rollback = next(e["message"] for e in events if e["action"] == "rollback")
    assert "log_driver json-file -> gelf, log_opts (gelf-address, tag)" in rollback
    assert "12201" not in rollback  # option values may be secrets: not shown
