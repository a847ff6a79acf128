"""Cluster id, registration's ``known``, orphans, adopt, prune, re-create, versions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from orchestrify import __version__
from orchestrify.controller.app import create_app
from orchestrify.models import ServiceSpec, container_spec, spec_hash
from orchestrify.protocol import PROTOCOL_VERSION
from tests.api.conftest import (
    AUTH,
    JOIN,
    bearer,
    reconcile,
    register,
    replicas_of,
    service_spec,
    settings,
)


def enroll(
    api: TestClient,
    name: str,
    node_id: str | None = None,
    node_token: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "address": "10.0.0.9", **extra}
    if node_id is not None:
        body["node_id"] = node_id
    if node_token is not None:
        body["node_token"] = node_token  # a known node id needs its own token
    resp = api.post("/v1/nodes/register", json=body, headers=bearer(JOIN))
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    return answer


def orphan(cid: str, replica: str, service: str = "web", **kw: Any) -> dict[str, Any]:
    return {
        "container_id": cid,
        "replica": replica,
        "service": service,
        "address": f"10.0.0.9:{32000 + len(cid)}",
        "image": "nginx:1.27",
        "spec_hash": kw.pop("spec_hash", None),
        "cluster_id": "lost-cluster",
        **kw,
    }


def report_orphans(api: TestClient, node: str, token: str, orphans: list[dict[str, Any]]) -> None:
    resp = api.post(
        f"/v1/nodes/{node}/replicas",
        json={"replicas": [], "full": True, "orphans": orphans},
        headers=bearer(token),
    )
    assert resp.status_code == 204, resp.text


def assignments(api: TestClient, node: str, token: str) -> dict[str, Any]:
    resp = api.get(f"/v1/nodes/{node}/assignments", headers=bearer(token))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def current_hash(api: TestClient, service: str) -> str:
    return spec_hash(container_spec(api.get(f"/v1/services/{service}").json()))


# --- cluster id and registration ------------------------------------------------------
def test_cluster_id_is_made_with_the_store_and_answered_everywhere(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    api = make_client(run_reconciler=False)
    first = enroll(api, "a")
    cluster = first["cluster_id"]
    assert cluster and first["protocol_version"] == PROTOCOL_VERSION
    assert first["controller_version"] == __version__
    assert assignments(api, first["node_id"], first["node_token"])["cluster_id"] == cluster
    # The same store, opened again: the same cluster.
    again = make_client(run_reconciler=False)
    assert enroll(again, "b")["cluster_id"] == cluster
    # Another store: another cluster.
    other = create_app(settings(tmp_path / "other"), run_reconciler=False)
    with TestClient(other, headers=AUTH) as fresh:
        assert enroll(fresh, "a")["cluster_id"] != cluster


def test_registration_says_whether_the_node_id_was_known(api: TestClient) -> None:
    new = enroll(api, "worker-1")
    assert new["known"] is False  # no id presented: a new node
    # Its agent has the answer once it reports (as it does at once after registering) or
    # heartbeats; a repeat before that is answered as the first registration was.
    report_orphans(api, new["node_id"], new["node_token"], [])
    again = enroll(api, "worker-1", node_id=new["node_id"], node_token=new["node_token"])
    assert again["known"] is True and again["node_id"] == new["node_id"]
    # An id this store never made (an agent of a wiped store, which says the cluster it
    # registered with): same id, but not "known".
    stranger = enroll(api, "worker-2", node_id="0123456789ab", cluster_id="lost-cluster")
    assert stranger["known"] is False and stranger["node_id"] == "0123456789ab"
    events = api.get("/v1/events", params={"kind": "node"}).json()
    assert any("did not know" in e["message"] and "orphans" in e["message"] for e in events)
    # An unknown id under the name of another (not ready) node: refused, not taken over.
    resp = api.post(
        "/v1/nodes/register",
        json={"name": "worker-1", "address": "x", "node_id": "fedcba987654"},
        headers=bearer(JOIN),
    )
    assert resp.status_code == 409 and "worker-1" in resp.json()["detail"]


# --- orphans --------------------------------------------------------------------------
def test_orphans_show_on_the_node_with_one_event_saying_what_to_do(api: TestClient) -> None:
    node, token = register(api, "worker-1")
    report_orphans(api, node, token, [orphan("c1", "web-1"), orphan("c2", "api-1", "api")])
    report_orphans(api, node, token, [orphan("c1", "web-1"), orphan("c2", "api-1", "api")])
    shown = api.get(f"/v1/nodes/{node}").json()
    assert [o["replica"] for o in shown["orphaned"]] == ["web-1", "api-1"]
    assert shown["orphaned"][0]["address"] == "10.0.0.9:32002"
    said = [e for e in api.get("/v1/events").json() if e["action"] == "orphans"]
    assert len(said) == 1  # said once, not at every report
    message = said[0]["message"]
    assert "2 orphaned" in message
    assert f"orchestrify node adopt {node}" in message
    assert f"orchestrify node prune {node}" in message
    report_orphans(api, node, token, [])
    assert api.get(f"/v1/nodes/{node}").json()["orphaned"] == []


def test_adopt_makes_replicas_with_the_orphans_ids_without_a_restart(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(run_reconciler=False)
    node, token = register(api, "worker-1")
    assert api.post("/v1/services", json=service_spec(replicas=2)).status_code == 201
    same = current_hash(api, "web")
    report_orphans(
        api,
        node,
        token,
        [
            orphan("c-same", "web-aaaa", spec_hash=same),
            orphan("c-old", "web-bbbb", spec_hash="0ld0ld0ld0ld0ld0", image="nginx:1.26"),
            orphan("c-ghost", "ghost-cccc", "ghost"),
        ],
    )
    resp = api.post(f"/v1/nodes/{node}/adopt")
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["adopted"] == ["web-aaaa"] and result["outdated"] == ["web-bbbb"]
    assert [o["replica"] for o in result["left"]] == ["ghost-cccc"]
    assert "no service named 'ghost'" in result["message"]

    reps = {r["id"]: r for r in replicas_of(api, "web")}
    assert set(reps) == {"web-aaaa", "web-bbbb"}
    assert reps["web-aaaa"]["container_id"] == "c-same"
    assert reps["web-aaaa"]["address"] == orphan("c-same", "x")["address"]
    svc = api.get("/v1/services/web").json()
    assert reps["web-aaaa"]["generation"] == svc["generation"]
    assert reps["web-bbbb"]["generation"] < svc["generation"]
    assert svc["update_state"] == "updating"
    # What the agent gets: its containers' own hashes, so neither is replaced in place.
    given = {a["replica"]: a for a in assignments(api, node, token)["replicas"]}
    assert given["web-aaaa"]["spec_hash"] == same
    assert given["web-bbbb"]["spec_hash"] == "0ld0ld0ld0ld0ld0"
    assert given["web-bbbb"]["image"] == "nginx:1.26"
    # The ghost stays an orphan; a late report of the adopted ones changes nothing.
    report_orphans(api, node, token, [orphan("c-same", "web-aaaa"), orphan("c-ghost", "ghost-x")])
    assert [o["container_id"] for o in api.get(f"/v1/nodes/{node}").json()["orphaned"]] == [
        "c-ghost"
    ]
    # Both count as the service's 2 replicas: nothing new is placed beside them, and
    # the outdated one is replaced by the rolling update (one extra first).
    for r in replicas_of(api, "web"):
        api.post(
            f"/v1/nodes/{node}/replicas",
            json={"replicas": [{"id": r["id"], "state": "healthy"}]},
            headers=bearer(token),
        )
    steps = reconcile(api)
    placed = [s for s in steps if type(s).__name__ == "Place"]
    assert len(placed) == 1 and "rolling update" in placed[0].reason


def test_recreating_a_service_adopts_its_orphans(make_client: Callable[..., TestClient]) -> None:
    api = make_client(run_reconciler=False)
    node, token = register(api, "worker-1")
    stored = ServiceSpec.model_validate(service_spec(replicas=2)).model_dump(mode="json")
    expected = spec_hash(container_spec(stored))  # what the agent labelled them with
    report_orphans(
        api,
        node,
        token,
        [
            orphan("c1", "web-1111", spec_hash=expected),
            orphan("c2", "web-2222", spec_hash=expected),
            orphan("c3", "api-3333", "api"),
        ],
    )
    # Before the service exists, adopting leaves them orphans, and says so.
    left = api.post(f"/v1/nodes/{node}/adopt").json()
    assert left["adopted"] == [] and len(left["left"]) == 3
    assert api.post("/v1/services", json=service_spec(replicas=2)).status_code == 201
    reps = {r["id"]: r for r in replicas_of(api, "web")}
    assert set(reps) == {"web-1111", "web-2222"}
    assert {r["container_id"] for r in reps.values()} == {"c1", "c2"}
    svc = api.get("/v1/services/web").json()
    assert svc["update_state"] == "completed" and svc["updated_replicas"] == 2
    assert [o["replica"] for o in api.get(f"/v1/nodes/{node}").json()["orphaned"]] == ["api-3333"]
    assert not [s for s in reconcile(api) if type(s).__name__ == "Place"]  # none beside them


def test_prune_lists_the_orphans_for_the_agent_until_they_are_gone(api: TestClient) -> None:
    node, token = register(api, "worker-1")
    assert api.post(f"/v1/nodes/{node}/prune").json()["pruning"] == []
    report_orphans(api, node, token, [orphan("c1", "web-1"), orphan("c2", "web-2")])
    resp = api.post(f"/v1/nodes/{node}/prune")
    assert resp.status_code == 200 and resp.json()["pruning"] == ["c1", "c2"]
    assert assignments(api, node, token)["prune"] == ["c1", "c2"]
    assert api.get(f"/v1/nodes/{node}").json()["pruning"] == ["c1", "c2"]
    report_orphans(api, node, token, [orphan("c2", "web-2")])  # the agent removed c1
    assert assignments(api, node, token)["prune"] == ["c2"]
    report_orphans(api, node, token, [])
    assert assignments(api, node, token)["prune"] == []
    assert api.post("/v1/nodes/nope/prune").status_code == 404
    assert api.post("/v1/nodes/nope/adopt").status_code == 404


# --- versions -------------------------------------------------------------------------
def test_answers_carry_the_controller_versions(api: TestClient) -> None:
    resp = api.get("/v1/nodes")
    assert resp.headers["X-Orchestrify-Version"] == __version__
    assert resp.headers["X-Orchestrify-Protocol"] == str(PROTOCOL_VERSION)
    assert api.get("/healthz").headers["X-Orchestrify-Protocol"] == str(PROTOCOL_VERSION)


def test_a_peer_of_an_older_protocol_is_refused_naming_both_versions(api: TestClient) -> None:
    node, token = register(api, "worker-1")
    resp = api.post(
        "/v1/nodes/register",
        json={"name": "worker-1", "address": "x", "node_id": node},
        headers={
            **bearer(JOIN),
            "X-Orchestrify-Protocol": "1",
            "X-Orchestrify-Version": "0.0.9",
            "X-Orchestrify-Component": "agent",
        },
    )
    assert resp.status_code == 426
    message = resp.json()["detail"]
    assert "agent (0.0.9) speaks protocol 1" in message
    assert f"{__version__} speaks protocol {PROTOCOL_VERSION}" in message
    # Refused before anything happened: the node's token still works.
    assert api.post(f"/v1/nodes/{node}/heartbeat", json={}, headers=bearer(token)).is_success


def test_an_unknown_node_brings_its_containers_as_orphans_and_nothing_is_placed_beside_them(
    make_client: Callable[..., TestClient],
) -> None:
    api = make_client(run_reconciler=False)
    assert api.post("/v1/services", json=service_spec(replicas=2)).status_code == 201
    assert not [s for s in reconcile(api) if type(s).__name__ == "Place"]  # no node yet
    resp = api.post(
        "/v1/nodes/register",
        json={
            "name": "worker-1",
            "address": "10.0.0.9",
            "node_id": "0123456789ab",
            "containers": [orphan("c1", "web-1111"), orphan("c2", "web-2222")],
        },
        headers=bearer(JOIN),
    )
    assert resp.status_code == 200 and resp.json()["known"] is False
    node, token = resp.json()["node_id"], resp.json()["node_token"]
    # Orphans from the registration on, before any report: the reconciler waits for them.
    assert len(api.get(f"/v1/nodes/{node}").json()["orphaned"]) == 2
    steps = reconcile(api)
    assert not [s for s in steps if type(s).__name__ == "Place"]
    (held,) = [s for s in steps if type(s).__name__ == "Unplaceable"]
    assert f"orchestrify node adopt {node}" in held.reason
    adopted = api.post(f"/v1/nodes/{node}/adopt").json()
    assert sorted(adopted["outdated"]) == ["web-1111", "web-2222"]  # no spec label: unknown
    assert {r["container_id"] for r in replicas_of(api, "web")} == {"c1", "c2"}
    # A known node's containers are its replicas' business, never orphans at registration
    # (known: its agent heartbeated since its first registration answered "unknown"; the
    # GET writes the heartbeats' batch).
    assert api.post(f"/v1/nodes/{node}/heartbeat", json={}, headers=bearer(token)).is_success
    assert api.get(f"/v1/nodes/{node}").is_success
    again = api.post(
        "/v1/nodes/register",
        json={
            "name": "worker-1",
            "address": "10.0.0.9",
            "node_id": node,
            "node_token": token,
            "containers": [orphan("c1", "web-1111")],
        },
        headers=bearer(JOIN),
    )
    assert again.json()["known"] is True
    assert api.get(f"/v1/nodes/{node}").json()["orphaned"] == []
