"""The agents' heartbeat, answered without the framework's per-request work.

A thousand agents heartbeat every 5 s: two hundred requests a second, most of the
controller's, on the one event loop that also wakes the long-polls and measures its own
lag. Through FastAPI a heartbeat cost about 340 µs of CPU, most of it resolving the
dependencies, matching routes and validating twice (body and answer); the work that is
the heartbeat's own (the node token checked against the kept facts, the body decoded and
validated, the node encoded) is a sixth of that.

``HeartbeatFastPath`` sits in front of the app, inside the middlewares that every answer
passes (the body limit, the version headers and the 426 refusal, the latency histogram),
and answers only the plain case: ``POST /v1/nodes/{id}/heartbeat``, no query string, a
JSON body, the node's own token, a body the border and the ``Heartbeat`` model accept.
Anything else (no token, a wrong or an admin token, a refused body, an unknown node, a
store error) goes to the app with the body it read handed on unchanged, so every error
answer is the app's own: the same 401, 404, 413, 422 and 426, in the same order.
The route stays in the app, so the OpenAPI document is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from orchestrify.controller.border import SafeJSONResponse, decode_json_body, every_route, is_json
from orchestrify.controller.deps import same_token
from orchestrify.errors import OrchestrifyError
from orchestrify.models import Heartbeat

__all__ = ["HEARTBEAT_PATH", "HeartbeatFastPath"]

HEARTBEAT_PATH = "/v1/nodes/{node_id}/heartbeat"
"""The route the fast path answers (and whose label its answers carry in the latency
histogram)."""

# A path segment as the router matches ``{node_id}``: anything but a slash.
_HEARTBEAT = re.compile(r"/v1/nodes/([^/]+)/heartbeat")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class HeartbeatFastPath:
    """Pure ASGI middleware: answers a well-formed heartbeat of a node with its own
    token itself; hands every other request to ``app`` (see the module's docstring)."""

    def __init__(self, app: ASGIApp, owner: FastAPI) -> None:
        self.app = app
        self.owner = owner
        self._route: Any = None  # the app's heartbeat route, found at the first request
        self.answered = 0  # heartbeats answered here, not by the app (for tests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope.get("query_string")
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        match = _HEARTBEAT.fullmatch(scope["path"])
        state = getattr(self.owner.state, "controller", None)
        if match is None or state is None:
            await self.app(scope, receive, send)
            return
        node_id = match.group(1)
        token = _plain_request(scope["headers"])
        # Constant time, as every check of the admin token (it only picks the path here).
        if token is None or same_token(token, state.admin_token):
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(receive)
        replay = _replaying(messages, receive)
        if not body or not await _own_token(state, node_id, token):
            await self.app(scope, replay, send)
            return
        value, errors = decode_json_body(body)
        if errors:
            await self.app(scope, replay, send)
            return
        try:
            hb = Heartbeat.model_validate(value)
        except ValidationError:
            await self.app(scope, replay, send)
            return
        # As the route does: seen first, then received (see routers/nodes.py).
        state.reconciler.liveness.seen(node_id)
        try:
            node = await state.heartbeats.receive(node_id, hb)
        except OrchestrifyError:
            # The app answers it as it answers every error (a 404: register again).
            await self.app(scope, replay, send)
            return
        scope["route"] = self._heartbeat_route()
        self.answered += 1
        answer = SafeJSONResponse(node.model_dump(mode="json", by_alias=True))
        await answer(scope, replay, send)

    def _heartbeat_route(self) -> Any:
        if self._route is None:
            for route in every_route(self.owner.router.routes):
                if getattr(route, "path", None) == HEARTBEAT_PATH:
                    self._route = route
                    break
        return self._route


async def _own_token(state: Any, node_id: str, token: str) -> bool:
    """Whether ``token`` is node ``node_id``'s (False also when the store cannot say: the
    app then answers as it answers a store error)."""
    try:
        return await state.views.node_token_ok(node_id, token) is True
    except OrchestrifyError:
        return False


def _plain_request(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of a request whose body is declared JSON (FastAPI's
    ``HTTPBearer`` and ``BorderRoute`` read the first of each header); None otherwise."""
    authorization: bytes | None = None
    content_type: bytes | None = None
    for key, value in headers:
        if key == b"authorization":
            if authorization is None:
                authorization = value
        elif key == b"content-type" and content_type is None:
            content_type = value
    # Without a Content-Type FastAPI takes the body for bytes, not JSON (a 422): the app's.
    if authorization is None or content_type is None:
        return None
    if not is_json(content_type.decode("latin-1")):
        return None
    scheme, _, credentials = authorization.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """Every message of the request body, and the body (None: the client left)."""
    messages: list[Message] = []
    parts: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, b"".join(parts)


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first gives back ``messages`` (already read), then reads on."""
    pending = list(messages)

    async def replay() -> MutableMapping[str, Any]:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
