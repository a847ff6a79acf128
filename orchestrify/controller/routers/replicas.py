"""/v1/replicas: one container of a service on one node."""

from __future__ import annotations

from fastapi import Query

from orchestrify.controller.border import api_router, errors
from orchestrify.controller.deps import Admin, State
from orchestrify.models import Replica

router = api_router(prefix="/v1/replicas", tags=["replicas"], dependencies=[Admin])


@router.get("", response_model=list[Replica], responses=errors(404))
def list_replicas(
    state: State,
    service: str | None = Query(None, description="Only this service's replicas."),
    node: str | None = Query(None, description="Only replicas on this node (id or name)."),
) -> list[Replica]:
    return state.store.list_replicas(service=service, node=node)


@router.get("/{replica_id}", response_model=Replica)
def get_replica(replica_id: str, state: State) -> Replica:
    return state.store.get_replica(replica_id)


@router.post("/{replica_id}/stop", response_model=Replica, status_code=202)
def stop_replica(replica_id: str, state: State) -> Replica:
    """Drain and stop the replica; it is replaced unless the service was scaled down.

    An action, not a DELETE: the replica stays visible (desired ``drain``/``stop``) until
    its agent reports it stopped, and a DELETE that leaves its resource readable breaks
    what a client may assume of DELETE (schemathesis' use-after-free check)."""
    return state.store.remove_replica(replica_id)
