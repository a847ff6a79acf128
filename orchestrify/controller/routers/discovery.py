"""/v1/discovery/prometheus: Prometheus HTTP service discovery of controller, agents, edges
and each node's node_exporter."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from fastapi import Request

from orchestrify.controller.border import api_router
from orchestrify.controller.deps import Admin, State

router = api_router(prefix="/v1/discovery", tags=["discovery"], dependencies=[Admin])


def _hostport(url: str) -> str | None:
    parsed = urlparse(url)
    if not parsed.hostname:
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{parsed.hostname}:{port}"


def _node_exporter(address: str, port: int) -> str:
    """host:port of a node's node_exporter: the node's address (what its agent
    advertises, followed when it moves) and the fleet-wide port."""
    host = f"[{address}]" if ":" in address else address  # an IPv6 literal
    return f"{host}:{port}"


@router.get("/prometheus")
def prometheus_targets(state: State, request: Request) -> list[dict[str, Any]]:
    """Targets in Prometheus' http_sd format; the ``job`` label says which program."""
    own = state.settings.public_url or str(request.base_url)
    targets: list[dict[str, Any]] = []
    if hp := _hostport(own):
        targets.append({"targets": [hp], "labels": {"job": "orchestrify-controller"}})
    nodes = state.store.list_nodes()
    for node in nodes:
        if node.agent_url and (hp := _hostport(node.agent_url)):
            targets.append(
                {"targets": [hp], "labels": {"job": "orchestrify-agent", "node": node.name}}
            )
    # node_exporter (role node_exporter, on every host of the fleet): no registration of
    # its own, so nothing more to keep in sync; its `node` label is what the node alerts
    # name the node by, as the agent's is for NodeDown.
    if state.settings.node_exporter_port:
        for node in nodes:
            targets.append(
                {
                    "targets": [_node_exporter(node.address, state.settings.node_exporter_port)],
                    "labels": {"job": "orchestrify-node-exporter", "node": node.name},
                }
            )
    for edge in state.store.list_edges():
        if edge.metrics_url and (hp := _hostport(edge.metrics_url)):
            targets.append(
                {"targets": [hp], "labels": {"job": "orchestrify-edge", "edge": edge.name}}
            )
    extra = getattr(request.app.state, "extra_discovery", None)
    if extra is not None:
        targets.extend(extra())
    return targets
