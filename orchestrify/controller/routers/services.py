"""/v1/services: what users deploy."""

from __future__ import annotations

from fastapi import APIRouter, Response

from orchestrify.controller.deps import Admin, State
from orchestrify.models import Service, ServicePatch, ServiceSpec

router = APIRouter(prefix="/v1/services", tags=["services"], dependencies=[Admin])


@router.post("", status_code=201, response_model=Service)
def create_service(spec: ServiceSpec, state: State) -> Service:
    svc = state.store.create_service(spec)
    return svc


@router.get("", response_model=list[Service])
def list_services(state: State) -> list[Service]:
    return state.store.list_services()


@router.get("/{name}", response_model=Service)
def get_service(name: str, state: State) -> Service:
    return state.store.get_service(name)


@router.patch("/{name}", response_model=Service)
def update_service(name: str, patch: ServicePatch, state: State) -> Service:
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
