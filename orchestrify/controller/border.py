"""The controller's HTTP border: what every request body must be before a router sees it.

One place, for every route, instead of a check per field:

- a body is at most ``max_body_bytes`` (413, refused on its Content-Length before it is
  read, or as soon as the bytes streamed in pass the cap);
- a JSON body is UTF-8, at most ``MAX_JSON_DEPTH`` deep, without NaN/Infinity, and holds
  no string (value or key) that cannot be encoded as UTF-8 (a lone surrogate such as
  ``"\\udfff"`` is valid JSON but no database, log or JSON encoder downstream takes it):
  422 naming the field. The error is raised only after the route's credentials were
  checked, so a malformed body without a token is a 401;
- a query parameter is given at most once, and an integer one is written as an integer
  (``5``, not ``5.0``, `` 5`` or ``1_000``, which Python's int parsing would take): 422
  naming it, also raised after the credentials were checked;
- an answer never fails to encode: a string stored by an older build with a surrogate
  in it is rendered with the surrogate escaped (``\\udfff`` as text).
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_JSON_DEPTH = 64  # nesting of objects/arrays; the deepest real body (a rule set) is ~6
_BODY_ERRORS = "orchestrify.body_errors"  # request.state attribute: deferred body errors


def escape_surrogates(text: str) -> str:
    """``text`` with every lone surrogate written as its escape (``\\udfff``), so that it
    encodes as UTF-8; other text is returned unchanged."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _sanitized(value: Any) -> Any:
    """``value`` (JSON-like) with every string, keys included, made UTF-8 encodable."""
    if isinstance(value, str):
        return escape_surrogates(value)
    if isinstance(value, dict):
        return {_sanitized(k): _sanitized(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitized(v) for v in value]
    return value


def body_problem(value: Any) -> tuple[tuple[str | int, ...], str] | None:
    """The first place in a decoded JSON body that the border refuses, with why: a string
    (value or key) that cannot be encoded as UTF-8, or nesting deeper than
    ``MAX_JSON_DEPTH``. Iterative, so a deep body cannot exhaust the stack."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if len(path) > MAX_JSON_DEPTH:
            return path[:MAX_JSON_DEPTH], f"nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, str):
            if not _encodable(item):
                return path, "not valid Unicode: holds a lone surrogate (e.g. \\udfff)"
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _encodable(key):
                    return (*path, escape_surrogates(key)), (
                        "key is not valid Unicode: holds a lone surrogate (e.g. \\udfff)"
                    )
                stack.append((child, (*path, key)))
        elif isinstance(item, list):
            stack.extend((child, (*path, i)) for i, child in enumerate(item))
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_json_body(raw: bytes) -> tuple[Any, list[dict[str, Any]]]:
    """Decode a request body as the border allows it: the value, or the validation
    errors (pydantic's shape, ``loc`` starting at ``body``) that refuse it."""

    def error(loc: tuple[str | int, ...], msg: str, kind: str) -> list[dict[str, Any]]:
        return [{"type": kind, "loc": ("body", *loc), "msg": msg, "input": None}]

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, error((), f"body is not valid UTF-8 (byte {exc.start})", "unicode_invalid")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        return None, error((), f"JSON decode error: {exc.msg} at {exc.pos}", "json_invalid")
    except ValueError as exc:  # NaN / Infinity
        return None, error((), f"JSON decode error: {exc}", "json_invalid")
    except RecursionError:
        return None, error((), f"nested deeper than {MAX_JSON_DEPTH} levels", "json_too_deep")
    problem = body_problem(value)
    if problem is not None:
        loc, msg = problem
        return None, error(loc, msg, "unicode_invalid" if "Unicode" in msg else "json_too_deep")
    return value, []


def deferred_body_errors(request: Request) -> list[dict[str, Any]] | None:
    """The body errors the border found for this request (None: the body was fine)."""
    errors: list[dict[str, Any]] | None = getattr(request.state, _BODY_ERRORS, None)
    return errors


def is_json(content_type: str | None) -> bool:
    """Whether the border reads a body of this Content-Type as JSON."""
    if not content_type:
        # Checked as JSON too: older FastAPI read such a body as JSON; 0.165 takes it
        # for bytes and refuses it (422), and a body the border refuses is named first.
        return True
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes: strings a store kept from an older build with a lone
    surrogate in them are rendered with it escaped, instead of a 500 on every listing."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return super().render(_sanitized(content))


class ErrorAnswer(BaseModel):
    """Every error answer: ``detail`` (a text, or pydantic's list of located errors for a
    422) and, for most, ``message``, one line naming the field."""

    detail: str | list[dict[str, Any]]
    message: str | None = Field(None, description="One line; for a 422 it names the field.")


def _answer(description: str) -> dict[str, Any]:
    return {"model": ErrorAnswer, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    401: _answer("No token, a wrong one, or one of another kind (admin, join, node)."),
    404: _answer("No such resource (the path names one that does not exist)."),
    409: _answer("The request clashes with what is stored (a name taken, a node id held)."),
    413: _answer("The body passes max_body_bytes, or the batch max_alerts_per_batch."),
    422: _answer("Invalid input; detail[].loc and message name the field."),
    426: _answer(
        "The request names a protocol version (X-Orchestrify-Protocol) this controller "
        "cannot serve; the message names both versions."
    ),
    429: _answer("Too much queued work of this kind (jobs); retry after Retry-After."),
    503: _answer("The store cannot write now (locked, I/O error); retry after Retry-After."),
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of these error statuses."""
    return {status: ERRORS[status] for status in statuses}


_INTEGER_LITERAL = re.compile(r"-?[0-9]+")


def _takes_int(annotation: Any) -> bool:
    """Whether a query parameter's type is ``int`` or ``int | None`` (not bool)."""
    if annotation is int:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_int(arg) for arg in typing.get_args(annotation))
    return False


def _query_params(dependant: Dependant) -> list[Any]:
    """The query parameters of a route and of its dependencies."""
    params = list(dependant.query_params)
    for sub in dependant.dependencies:
        params.extend(_query_params(sub))
    return params


async def query_problems(request: Request) -> None:
    """Refuse a query parameter given twice (``?timeout=1&timeout=2``: which one?) and an
    integer parameter not written as one. A route dependency, added last, so it runs
    after the route's credentials are checked. ``async``: it does no I/O, and a plain
    ``def`` dependency costs a hop to FastAPI's thread pool on every request."""
    route = request.scope.get("route")
    problems: list[dict[str, Any]] = []
    # Worked out once per route, when it is made (BorderRoute), not on every request.
    for param in getattr(route, "query_fields", ()):
        name = param.alias
        values = request.query_params.getlist(name)
        if len(values) > 1:
            problems.append(
                {
                    "loc": ("query", name),
                    "msg": f"given {len(values)} times; give it once",
                    "type": "duplicate_parameter",
                    "input": values,
                }
            )
        elif (
            values
            and _takes_int(param.field_info.annotation)
            and not _INTEGER_LITERAL.fullmatch(values[0])
        ):
            problems.append(
                {
                    "loc": ("query", name),
                    "msg": "Input should be a valid integer, written as one",
                    "type": "int_parsing",
                    "input": values[0],
                }
            )
    if problems:
        raise RequestValidationError(problems)


_QUERY_CHECK = Depends(query_problems)


class BorderRoute(APIRoute):
    """Every route's body passes ``decode_json_body`` before FastAPI validates it.

    A refused body does not fail at once: FastAPI would answer 422 before the route's
    credentials are checked. Its errors are kept on the request and the body is handed
    on as missing; the dependencies (the token) run first, then the validation error
    handler reports the border's errors instead of 'missing'."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        # An explicit class, not FastAPI's default: with the default, FastAPI serializes
        # straight to bytes in pydantic, and a stored lone surrogate raises there.
        if isinstance(kwargs.get("response_class"), DefaultPlaceholder | None):
            kwargs["response_class"] = SafeJSONResponse
        # The statuses every route of its kind can answer, documented where it is: a
        # path naming a resource can be a 404, any write can clash with the store (409).
        documented = dict(kwargs.get("responses") or {})
        if "{" in path:
            documented.setdefault(404, ERRORS[404])
        if set(kwargs.get("methods") or ()) - {"GET", "HEAD"}:
            documented.setdefault(409, ERRORS[409])
        kwargs["responses"] = documented
        # Last, after the credentials (a router's dependencies come first); once, also
        # when include_router makes the route again from this one's dependencies.
        dependencies = list(kwargs.get("dependencies") or [])
        if not any(d.dependency is query_problems for d in dependencies):
            dependencies.append(_QUERY_CHECK)
        else:  # keep it last
            dependencies = [d for d in dependencies if d.dependency is not query_problems]
            dependencies.append(_QUERY_CHECK)
        kwargs["dependencies"] = dependencies
        super().__init__(path, endpoint, **kwargs)
        self.query_fields = _query_params(self.dependant)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None
        # Deferring works by handing the body on as missing, which only a required body
        # refuses; an optional one would run the route without it, so it fails at once.
        defer = (
            takes_body and self.body_field is not None and self.body_field.field_info.is_required()
        )

        async def border(request: Request) -> Response:
            if takes_body and is_json(request.headers.get("content-type")):
                raw = await request.body()
                if raw:
                    value, errors = decode_json_body(raw)
                    if errors and not defer:
                        raise RequestValidationError(errors)
                    if errors:
                        setattr(request.state, _BODY_ERRORS, errors)
                    request._json = value  # what FastAPI's request.json() returns
            return await handler(request)

        return border


def api_router(*, auth: bool = True, **kwargs: Any) -> APIRouter:
    """A resource's router: every route passes the border (``BorderRoute``) and documents
    the errors any route can answer (401 when ``auth``, 413, 422, 426, 503)."""
    common = errors(401, 413, 422, 426, 503) if auth else errors(413, 422, 426, 503)
    return APIRouter(route_class=BorderRoute, responses=common, **kwargs)


def every_route(routes: list[Any]) -> Iterator[Any]:
    """The routes themselves: FastAPI (0.13x on) wraps each included router in one route
    object whose ``effective_route_contexts`` are its routes, prefix applied."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            yield from contexts()
        else:
            yield route


def body_validation_errors(request: Request, exc: RequestValidationError) -> list[Any]:
    """The errors to report for a refused request: the border's, when it refused the body
    (FastAPI then only saw it as missing), else FastAPI's own."""
    return deferred_body_errors(request) or list(exc.errors())


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a body passes the cap; answered 413 by ``BodyLimit``."""


class BodyLimit:
    """Pure ASGI middleware: a request body larger than ``max_bytes`` is a 413.

    Checked on the Content-Length before anything is read, and on the bytes as they
    stream in (a chunked body has no length), so no more than the cap is ever held.
    ``answer`` makes the 413 for a request (its scope and the cap): the API's JSON
    unless given (the app answers its status page's paths with an HTML page)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: Callable[[], int],
        answer: Callable[[Scope, int], Response] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.answer = answer or (lambda _scope, limit: too_large(limit))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        length = _content_length(scope)
        if length is not None and length > limit:
            await self.answer(scope, limit)(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def watch_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watch_send)
        except BodyTooLarge:
            if started:
                raise
            await self.answer(scope, limit)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def too_large(limit: int) -> JSONResponse:
    """The API's 413 for a body over ``limit`` bytes."""
    message = f"request body larger than {limit} bytes (the controller's max_body_bytes)"
    return JSONResponse(status_code=413, content={"detail": message, "message": message})
