"""/v1/upstreams: the edges' side of the protocol (what Nginx may send traffic to)."""

from __future__ import annotations

from fastapi import Query, Response

from orchestrify.controller.border import api_router
from orchestrify.controller.deps import Admin, State
from orchestrify.controller.views import json_answer
from orchestrify.models import Upstreams

router = api_router(prefix="/v1/upstreams", tags=["edges"], dependencies=[Admin])


@router.get("", response_model=Upstreams)
async def watch_upstreams(
    state: State,
    version: int | None = Query(None, description="Last version seen; omit for an answer now."),
    timeout: float = Query(30.0, ge=0, le=300, description="Longest wait, seconds."),
) -> Response:
    """Long-poll every service with its running, healthy replicas that have an address.

    Answers at once if the state version differs from ``version``, otherwise when
    anything observed changes or after ``timeout`` seconds (same version, same services).
    ``as_of`` is the controller's time of the snapshot; the edge reports it back
    (``applied_as_of`` on ``POST /v1/edges``) once its Nginx serves that view.
    """
    wait = min(timeout, state.settings.watch_timeout_s)
    current = await state.feed.wait("state", version, wait)
    return json_answer(await state.views.upstreams(current))
