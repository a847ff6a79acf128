"""The controller's web status page under /ui/ (sign-in, the fleet, services, jobs and
alerts), served by the controller itself; not part of the /v1 API or its OpenAPI.

``router`` is every page module's routes, then the static files and the catch-all 404
(which must come last: it would hide any route after it)."""

from fastapi import APIRouter

from orchestrify.controller.ui import alerts, jobs, routes, static_files

router = APIRouter()
for part in (routes.router, alerts.router, jobs.router, static_files.router):
    router.include_router(part)

__all__ = ["router"]
