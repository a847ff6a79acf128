"""Prometheus discovery of each node's node_exporter: at the node's address (the one its
agent advertises, followed when it moves) and the controller's node_exporter_port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from tests.api.conftest import JOIN, bearer, register


def _node_exporters(api: TestClient) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = api.get("/v1/discovery/prometheus").json()
    return [t for t in targets if t["labels"]["job"] == "orchestrify-node-exporter"]


def test_every_node_exporter_is_listed_with_its_node(api: TestClient) -> None:
    register(api, "a", address="10.0.0.1")
    register(api, "b", address="10.0.0.2")
    assert sorted(_node_exporters(api), key=lambda t: t["labels"]["node"]) == [
        {"targets": ["10.0.0.1:9100"], "labels": {"job": "orchestrify-node-exporter", "node": "a"}},
        {"targets": ["10.0.0.2:9100"], "labels": {"job": "orchestrify-node-exporter", "node": "b"}},
    ]


def test_the_target_follows_a_node_that_moves_and_leaves_with_it(api: TestClient) -> None:
    node_id, token = register(api, "a", address="10.0.0.1")
    resp = api.post(
        f"/v1/nodes/{node_id}/heartbeat", json={"address": "10.0.0.7"}, headers=bearer(token)
    )
    assert resp.status_code == 200, resp.text
    assert [t["targets"] for t in _node_exporters(api)] == [["10.0.0.7:9100"]]
    assert api.delete(f"/v1/nodes/{node_id}", params={"force": "true"}).status_code == 200
    assert _node_exporters(api) == []


def test_the_port_is_a_setting_and_zero_lists_none(
    make_client: Callable[..., TestClient],
) -> None:
    other = make_client(node_exporter_port=9200)
    resp = other.post(
        "/v1/nodes/register",
        json={"name": "a", "address": "10.0.0.1", "agent_url": "http://10.0.0.1:18081"},
        headers=bearer(JOIN),
    )
    assert resp.status_code == 200, resp.text
    register(other, "v6", address="fd00::5")
    assert sorted(t["targets"][0] for t in _node_exporters(other)) == [
        "10.0.0.1:9200",
        "[fd00::5]:9200",
    ]
    none = make_client(node_exporter_port=0)  # the same store, restarted without them
    assert _node_exporters(none) == []
    # the agent stays listed: only node_exporter is left out
    targets = none.get("/v1/discovery/prometheus").json()
    assert {t["labels"]["job"] for t in targets} == {"orchestrify-controller", "orchestrify-agent"}
