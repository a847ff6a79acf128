"""/v1/services: what users deploy."""

from __future__ import annotations

from typing import Any

from fastapi import Response

from orchestrify.controller.border import api_router
from orchestrify.controller.deps import Admin, State
from orchestrify.controller.views import json_answer
from orchestrify.errors import InvalidSpec
from orchestrify.models import Service, ServicePatch, ServiceSpec

router = api_router(prefix="/v1/services", tags=["services"], dependencies=[Admin])


def check_replica_ceiling(state: State, spec: ServiceSpec | ServicePatch) -> None:
    """Replica counts at most this controller's ``max_replicas_per_service`` (422 naming
    the field): placing and tracking replicas costs memory and time per replica."""
    ceiling = state.settings.max_replicas_per_service
    for field in ("replicas", "min_replicas", "max_replicas"):
        value = getattr(spec, field)
        if value is not None and value > ceiling:
            raise InvalidSpec(
                f"{field}: {value} is above this controller's ceiling of {ceiling} "
                "replicas per service (its max_replicas_per_service setting)",
                field=field,
            )


def _links(*operations: str) -> dict[str, Any]:
    """OpenAPI links from an answer holding a service to operations on it by name (a
    client, or schemathesis' stateful phase, follows them)."""
    return {
        op: {"operationId": op_id, "parameters": {"name": "$response.body#/name"}}
        for op, op_id in (
            ("GetService", "get_service_v1_services__name__get"),
            ("UpdateService", "update_service_v1_services__name__patch"),
            ("RollbackService", "rollback_service_v1_services__name__rollback_post"),
            ("DeleteService", "delete_service_v1_services__name__delete"),
        )
        if op in operations
    }


@router.post(
    "",
    status_code=201,
    response_model=Service,
    responses={
        201: {
            "description": "Created",
            "links": _links("GetService", "UpdateService", "RollbackService", "DeleteService"),
        }
    },
)
def create_service(spec: ServiceSpec, state: State) -> Service:
    check_replica_ceiling(state, spec)
    svc = state.store.create_service(spec)
    return svc


# The reads answer from the views cached per store version (``ReadViews``), JSON
# encoded once per change: no thread, no query and no serialization per request.
@router.get("", response_model=list[Service])
async def list_services(state: State) -> Response:
    return json_answer((await state.views.services()).listing)


@router.get("/{name}", response_model=Service)
async def get_service(name: str, state: State) -> Response:
    return json_answer(await state.views.service(name))


@router.patch(
    "/{name}",
    response_model=Service,
    responses={200: {"description": "Updated", "links": _links("RollbackService", "GetService")}},
)
def update_service(name: str, patch: ServicePatch, state: State) -> Service:
    check_replica_ceiling(state, patch)
    return state.store.update_service(name, patch)


@router.post("/{name}/rollback", response_model=Service)
def rollback_service(name: str, state: State) -> Service:
    """Back to the spec before the last update, rolled out as a new generation (409 when
    the service has never been updated)."""
    return state.store.rollback_service(name)


@router.delete("/{name}", status_code=204)
def delete_service(name: str, state: State) -> Response:
    state.store.delete_service(name)
    return Response(status_code=204)
