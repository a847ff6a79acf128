"""/v1/edges: edges (Nginx hosts) announce themselves and report what they did."""

from __future__ import annotations

from fastapi import Response

from orchestrify.controller.border import api_router
from orchestrify.controller.deps import Admin, State
from orchestrify.models import Edge, EdgeEvent, EdgeRegistration

router = api_router(prefix="/v1/edges", tags=["edges"], dependencies=[Admin])


@router.post("", response_model=Edge)
def register_edge(reg: EdgeRegistration, state: State) -> Edge:
    """Create or refresh an edge; its ``metrics_url`` joins Prometheus discovery. With
    ``applied_as_of`` it acknowledges the upstreams view its Nginx serves: draining
    replicas are stopped only once every recently seen edge has done so."""
    return state.store.register_edge(reg)


@router.get("", response_model=list[Edge])
def list_edges(state: State) -> list[Edge]:
    return state.store.list_edges()


@router.post("/{name}/events", status_code=204)
def record_edge_event(name: str, body: EdgeEvent, state: State) -> Response:
    """Append an edge's outcome (a refused config, a rollback) to the event trail."""
    state.store.record_event(
        body.message,
        kind=body.kind,
        service=body.service,
        action="edge_" + body.kind,
        outcome=body.outcome,
        reason=body.reason,
        data={**body.data, "edge": name},
    )
    return Response(status_code=204)
