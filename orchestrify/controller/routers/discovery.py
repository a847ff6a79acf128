"""/v1/discovery/prometheus: Prometheus HTTP service discovery of controller, agents, edges."""

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


@router.get("/prometheus")
def prometheus_targets(state: State, request: Request) -> list[dict[str, Any]]:
    """Targets in Prometheus' http_sd format; the ``job`` label says which program."""
    own = state.settings.public_url or str(request.base_url)
    targets: list[dict[str, Any]] = []
    if hp := _hostport(own):
        targets.append({"targets": [hp], "labels": {"job": "orchestrify-controller"}})
    for node in state.store.list_nodes():
        if node.agent_url and (hp := _hostport(node.agent_url)):
            targets.append(
                {"targets": [hp], "labels": {"job": "orchestrify-agent", "node": node.name}}
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
