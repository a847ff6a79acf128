"""The controller's web status page under /ui/ (sign-in, the fleet table, drain and
activate), served by the controller itself; not part of the /v1 API or its OpenAPI."""

from orchestrify.controller.ui.routes import router

__all__ = ["router"]
