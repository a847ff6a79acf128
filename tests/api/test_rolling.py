"""Rolling updates through the API: PATCH a service, replicas are replaced one at a time,
GET /v1/services/{name} shows the progress, a failing new replica pauses the rollout, and
POST /v1/services/{name}/rollback returns to the spec before the update."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from tests.api.conftest import bearer, reconcile, register, service_spec


class Agents:
    """Stand-in agents: each reports every assignment as an agent would have acted on it."""

    def __init__(self, api: TestClient, names: list[str]) -> None:
        self.api = api
        self.nodes = [register(api, name) for name in names]
        self.fail: set[str] = set()  # replicas to report failed

    def report(self) -> None:
        for node_id, token in self.nodes:
            body = self.api.get(f"/v1/nodes/{node_id}/assignments", headers=bearer(token)).json()
            reports: list[dict[str, Any]] = []
            for i, a in enumerate(body["replicas"]):
                if a["desired"] == "stop":
                    reports.append({"id": a["replica"], "state": "stopped"})
                elif a["replica"] in self.fail:
                    reports.append({"id": a["replica"], "state": "failed", "error": "exit 1"})
                elif a["desired"] == "run":
                    address = f"127.0.0.1:{30000 + i}"
                    reports.append({"id": a["replica"], "state": "healthy", "address": address})
            resp = self.api.post(
                f"/v1/nodes/{node_id}/replicas",
                json={"replicas": reports, "full": True},
                headers=bearer(token),
            )
            assert resp.status_code == 204 or resp.is_success, resp.text

    def assignments(self) -> dict[str, dict[str, Any]]:
        out = {}
        for node_id, token in self.nodes:
            body = self.api.get(f"/v1/nodes/{node_id}/assignments", headers=bearer(token)).json()
            out.update({a["replica"]: a for a in body["replicas"]})
        return out


def _serving(api: TestClient) -> list[dict[str, Any]]:
    reps: list[dict[str, Any]] = api.get("/v1/replicas", params={"service": "web"}).json()
    return [r for r in reps if r["desired"] == "run" and r["state"] == "healthy"]


def _cycle(api: TestClient, agents: Agents, check: Callable[[], None]) -> None:
    reconcile(api)
    check()
    agents.report()
    check()


def test_patch_rolls_replicas_one_at_a_time_and_get_shows_progress(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(run_reconciler=False)
    agents = Agents(api, ["a", "b", "c"])
    spec = service_spec(replicas=2, env={"MODE": "one"})
    assert api.post("/v1/services", json=spec).status_code == 201
    reconcile(api)
    agents.report()
    assert len(_serving(api)) == 2
    old = {r["id"] for r in _serving(api)}

    patched = api.patch("/v1/services/web", json={"env": {"MODE": "two"}})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["generation"], body["updated_replicas"], body["update_state"]) == (
        2,
        0,
        "updating",
    )

    def never_below_two_serving() -> None:
        assert len(_serving(api)) >= 2
        running = [r for r in api.get("/v1/replicas").json() if r["desired"] == "run"]
        assert len(running) <= 3  # at most one extra

    _cycle(api, agents, never_below_two_serving)  # one extra replica of generation 2
    progress = api.get("/v1/services/web").json()
    assert (progress["updated_replicas"], progress["update_state"]) == (1, "updating")
    by_id = agents.assignments()
    assert {by_id[r]["env"]["MODE"] for r in old} == {"one"}  # old replicas untouched
    assert {by_id[r]["generation"] for r in old} == {1}
    (new,) = [a for r, a in by_id.items() if r not in old]
    assert (new["env"], new["generation"]) == ({"MODE": "two"}, 2)

    for _ in range(12):
        _cycle(api, agents, never_below_two_serving)
        if api.get("/v1/services/web").json()["update_state"] == "completed":
            break
    final = api.get("/v1/services/web").json()
    assert (final["updated_replicas"], final["update_state"]) == (2, "completed")
    assert not old & {r["id"] for r in _serving(api)}
    messages = [e["message"] for e in api.get("/v1/events", params={"service": "web"}).json()]
    assert any("rolling update to generation 2" in m for m in messages)  # the PATCH's event
    assert sum("rolling update of web to generation 2: replica" in m for m in messages) == 2
    assert messages.count("rolling update of web to generation 2 finished") == 1


def _fail_the_new_replica(api: TestClient, agents: Agents, old: set[str]) -> str:
    """After a PATCH: the extra replica of the new generation is placed, fails at every
    start, and the agents report it until the rollout has paused. Its id."""
    reconcile(api)
    (bad,) = set(agents.assignments()) - old
    agents.fail.add(bad)
    for _ in range(4):
        agents.report()
        reconcile(api)
    return bad


def test_a_failing_new_replica_pauses_until_the_service_changes_again(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(run_reconciler=False)
    agents = Agents(api, ["a", "b", "c"])
    assert api.post("/v1/services", json=service_spec(replicas=2)).status_code == 201
    reconcile(api)
    agents.report()
    old = {r["id"] for r in _serving(api)}

    api.patch("/v1/services/web", json={"image": "nginx:broken"})
    bad = _fail_the_new_replica(api, agents, old)
    svc = api.get("/v1/services/web").json()
    assert svc["update_state"] == "paused" and bad in svc["update_message"]
    assert {r["id"] for r in _serving(api)} == old  # the old replicas keep serving
    events = api.get("/v1/events", params={"service": "web"}).json()
    assert sum("paused" in e["message"] for e in events) == 1  # said once, not every cycle

    back = api.patch("/v1/services/web", json={"image": "nginx:1.27"}).json()
    assert (back["generation"], back["update_state"]) == (3, "updating")
    reconcile(api)
    fresh = [a for r, a in agents.assignments().items() if r not in old and r != bad]
    assert [(a["image"], a["generation"]) for a in fresh] == [("nginx:1.27", 3)]


def test_rollback_of_a_paused_rollout_replaces_every_replica_with_the_old_spec(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(run_reconciler=False)
    agents = Agents(api, ["a", "b", "c"])
    assert api.post("/v1/services", json=service_spec(replicas=2)).status_code == 201
    created = api.get("/v1/services/web").json()
    assert (created["previous_generation"], created["previous_spec"]) == (None, None)
    refused = api.post("/v1/services/web/rollback")
    assert refused.status_code == 409, refused.text
    assert "no previous spec" in refused.json()["detail"]
    assert api.post("/v1/services/nope/rollback").status_code == 404
    reconcile(api)
    agents.report()
    old = {r["id"] for r in _serving(api)}

    patched = api.patch("/v1/services/web", json={"image": "nginx:broken"}).json()
    assert (patched["previous_generation"], patched["previous_spec"]["image"]) == (1, "nginx:1.27")
    bad = _fail_the_new_replica(api, agents, old)
    paused = api.get("/v1/services/web").json()
    assert paused["update_state"] == "paused"
    assert "orchestrify service rollback web" in paused["update_message"]

    resp = api.post("/v1/services/web/rollback")
    assert resp.status_code == 200, resp.text
    back = resp.json()
    assert (back["image"], back["generation"], back["update_state"]) == (
        "nginx:1.27",
        3,
        "updating",
    )
    assert (back["previous_generation"], back["previous_spec"]["image"]) == (2, "nginx:broken")
    assert back["replicas"] == 2 and back["update_message"] is None

    def never_below_two_serving() -> None:
        assert len(_serving(api)) >= 2

    for _ in range(12):
        _cycle(api, agents, never_below_two_serving)
        if api.get("/v1/services/web").json()["update_state"] == "completed":
            break
    final = api.get("/v1/services/web").json()
    assert (final["updated_replicas"], final["update_state"]) == (2, "completed")
    serving = _serving(api)
    assert len(serving) == 2 and not old & {r["id"] for r in serving}
    assert {r["generation"] for r in serving} == {3}
    by_id = agents.assignments()
    assert {by_id[r["id"]]["image"] for r in serving} == {"nginx:1.27"}
    assert bad not in by_id  # the failed replica of generation 2 is gone
    events = api.get("/v1/events", params={"service": "web"}).json()
    (rolled_back,) = [e for e in events if e["action"] == "rollback"]
    assert rolled_back["message"].startswith(
        "service web rolled back to the spec of generation 1: image nginx:broken -> nginx:1.27"
    )
    assert any(e["message"] == "rolling update of web to generation 3 finished" for e in events)


def test_rollback_needs_the_admin_token(make_client: Callable[..., TestClient]) -> None:
    api = make_client(run_reconciler=False)
    api.post("/v1/services", json=service_spec())
    api.patch("/v1/services/web", json={"image": "nginx:1.28"})
    refused = api.post("/v1/services/web/rollback", headers=bearer("wrong"))
    assert refused.status_code == 401
    assert api.get("/v1/services/web").json()["image"] == "nginx:1.28"
