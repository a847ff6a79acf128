"""/ui/: the web status page, rendered on the server (Jinja2) with a little JavaScript
that long-polls for the fleet table.

Every route is ``async def`` and reads through the controller's cached views (their own
threads) or hands its write to a thread: a viewer never blocks the event loop the
agents' heartbeats are answered on. Nothing here is in the OpenAPI document: the router
is included with ``include_in_schema=False``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import jinja2
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from orchestrify import clock
from orchestrify.controller.deps import ControllerState, same_token
from orchestrify.controller.heartbeats import with_figures
from orchestrify.controller.routers.services import check_replica_ceiling
from orchestrify.controller.ui.fleet import NodeRow, fleet_rows
from orchestrify.controller.ui.services import (
    ServiceRow,
    event_rows,
    replica_rows,
    service_row,
    service_rows,
)
from orchestrify.controller.ui.session import (
    LOGIN_CSRF_COOKIE,
    LOGIN_PATH,
    SESSION_COOKIE,
    SESSION_PATH,
    LoginLimiter,
    Session,
    SessionSigner,
    clear_cookie,
    login_csrf_ok,
    new_login_csrf,
    set_cookie,
    usable_login_csrf,
)
from orchestrify.errors import Conflict, InvalidSpec, NotFound, StoreUnavailable
from orchestrify.models import SERVICE_NAME, FieldError, Service, ServicePatch, check_bounds
from orchestrify.rollout import healthy_counts

__all__ = ["EVENTS_SHOWN", "LIVE_WAIT_S", "VERSION_HEADER", "router"]

router = APIRouter(prefix="/ui")

HERE = Path(__file__).resolve().parent
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(HERE / "templates")),
    # Every template, fragment and string escaped: nothing a node, a service or a
    # request names can become markup.
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,  # a typo in a template is an error, not ""
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,  # the package's files do not change under a running controller
)

# Static files by name: the only files ever served, whatever a request's path says.
STATIC = {
    "ui.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
}

# Every UI answer: scripts and styles from this origin only (so no inline script can
# run, whatever gets into a page), never framed, types as declared.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# Pages carry a session's CSRF token and the fleet's state: never kept by a cache.
PAGE_HEADERS = {**SECURITY_HEADERS, "Cache-Control": "no-store"}

LIVE_KINDS = ("spec", "state", "nodes")
# What the services pages show moves with these: counts and bounds (spec), replicas'
# states (state), and the timeline (events).
SERVICE_LIVE_KINDS = ("spec", "state", "events")
EVENTS_SHOWN = 100  # a service page's timeline: its last events, newest first
LIVE_WAIT_S = 5.0
"""Longest a live poll waits for a change, seconds: the table is re-rendered at least
this often, so the heartbeat ages move."""
LIVE_WAIT_MAX_S = 25.0  # never longer, whatever LIVE_WAIT_S is set to (proxies' timeouts)
# Every live answer's versions (the fleet's and the services pages'): the name is the
# fleet's, which came first.
VERSION_HEADER = "X-Orchestrify-Fleet-Version"
_VERSION = re.compile(r"[0-9]{1,20}(?:-[0-9]{1,20}){2}")

FORM_MAX_BYTES = 16_384  # a sign-in or a button's form is well under 1 KiB
FORM_MAX_FIELDS = 16
# A replica count as a form gives it: digits, maybe signed (a negative one is refused by
# the same validation as the API's, naming the field); nothing longer than a count.
_COUNT = re.compile(r"[+-]?[0-9]{1,12}")
# Node ids as the store makes them (orchestrify.store.nodes.NODE_ID): anything else is
# no node, answered without a store read.
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
# Where a sign-in may send the browser on: a path of this page, never another site
# ("//host", "/\\host" and "https://..." all fail it).
_NEXT = re.compile(r"/ui/[A-Za-z0-9._~/?=&%+-]{0,500}")

WRONG_TOKEN = (
    "That is not the admin token. Check it and try again: it is the controller's "
    "--token (ORCHESTRIFY_TOKEN), or the admin.token file in its data directory."
)


@dataclass
class UIAccess:
    """The sign-in state of one running app: its signer (keyed by this run's admin
    token) and its limit on wrong tokens."""

    owner: ControllerState
    signer: SessionSigner
    limiter: LoginLimiter
    lifetime_s: int
    secure: bool

    def session(self, request: Request) -> Session | None:
        return self.signer.verify(request.cookies.get(SESSION_COOKIE), now=_unix_now())


def _access(request: Request) -> UIAccess:
    """This app's ``UIAccess``, made with the state of its current run (the admin token
    is known only once the app has started)."""
    state: ControllerState = request.app.state.controller
    found: UIAccess | None = getattr(request.app.state, "ui", None)
    if found is None or found.owner is not state:
        found = UIAccess(
            owner=state,
            signer=SessionSigner(state.admin_token),
            limiter=LoginLimiter(),
            lifetime_s=state.settings.ui_session_s,
            secure=state.settings.tls,
        )
        request.app.state.ui = found
    return found


def _unix_now() -> float:
    return clock.utcnow().timestamp()


# --- answers ---------------------------------------------------------------------------
def _html(
    template: str,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    body = TEMPLATES.get_template(template).render(**context)
    return HTMLResponse(body, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def _error_page(
    status: int,
    message: str,
    *,
    signed_in: bool = True,
    headers: Mapping[str, str] | None = None,
    back: tuple[str, str] | None = None,
) -> HTMLResponse:
    """The error page; ``back``: the link (path, words) back to where the user was."""
    titles = {
        400: "The form could not be read",
        401: "Not signed in",
        403: "Refused",
        404: "Not found",
        413: "Too large",
        415: "Not a form",
        422: "Not a valid value",
        429: "Too many tries",
        503: "The controller cannot answer now",
    }
    return _html(
        "error.html",
        status=status,
        headers=headers,
        title=titles.get(status, "Error"),
        code=status,
        message=message,
        signed_in=signed_in,
        back=back,
    )


def _redirect(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers=PAGE_HEADERS)


def _to_login(next_path: str = "/ui/") -> RedirectResponse:
    return _redirect(f"{LOGIN_PATH}?next={quote(next_path, safe='/')}")


def _safe_next(value: str | None) -> str | None:
    if value and _NEXT.fullmatch(value) and "//" not in value and "/.." not in value:
        return value
    return None


class FormError(Exception):
    """A form that cannot be read: its status and what to tell the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_form(request: Request, *, fields: frozenset[str]) -> dict[str, str]:
    """The URL-encoded form of a POST: the ``fields`` it gives (others ignored), read up
    to ``FORM_MAX_BYTES``. ``FormError`` when it is not such a form, too large, not
    UTF-8, or gives a field twice."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX_BYTES:
            raise FormError(413, f"The form is larger than {FORM_MAX_BYTES} bytes.")
    if kind != "application/x-www-form-urlencoded":
        if not kind and not body:
            return {}  # no form at all: every field is missing
        raise FormError(415, "Send the page's form (application/x-www-form-urlencoded).")
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            max_num_fields=FORM_MAX_FIELDS,
            encoding="utf-8",
            errors="strict",
        )
    except ValueError as exc:  # UnicodeDecodeError too
        raise FormError(400, "The form is not URL-encoded UTF-8 text.") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name not in fields:
            continue
        if name in form:
            raise FormError(400, f"The form gives the field {name!r} more than once.")
        form[name] = value
    return form


# --- sign-in ---------------------------------------------------------------------------
def _login_page(
    request: Request,
    *,
    access: UIAccess,
    status: int = 200,
    message: str | None = None,
    next_path: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """The sign-in form, with its double-submit CSRF cookie (the one the browser has,
    when it is one of ours, so two open sign-in tabs both work)."""
    csrf = usable_login_csrf(request.cookies.get(LOGIN_CSRF_COOKIE)) or new_login_csrf()
    response = _html(
        "login.html",
        status=status,
        headers=headers,
        csrf=csrf,
        next=next_path,
        message=message,
    )
    response.headers.append(
        "set-cookie",
        set_cookie(LOGIN_CSRF_COOKIE, csrf, path=LOGIN_PATH, max_age=None, secure=access.secure),
    )
    return response


@router.get("")
async def ui_root() -> RedirectResponse:
    return _redirect("/ui/")


@router.get("/login")
async def login_form(request: Request) -> Response:
    access = _access(request)
    next_path = _safe_next(request.query_params.get("next"))
    if access.session(request) is not None:
        return _redirect(next_path or "/ui/")
    return _login_page(request, access=access, next_path=next_path)


@router.post("/login")
async def login(request: Request) -> Response:
    """Sign in with the admin token. Checked in this order: the form, its CSRF cookie,
    the limit on wrong tokens from this address (a limited address is refused without
    its token being looked at), then the token itself, in constant time."""
    access = _access(request)
    try:
        form = await read_form(request, fields=frozenset({"token", "csrf", "next"}))
    except FormError as exc:
        return _login_page(request, access=access, status=exc.status, message=exc.message)
    next_path = _safe_next(form.get("next"))
    if not login_csrf_ok(request.cookies.get(LOGIN_CSRF_COOKIE), form.get("csrf")):
        return _login_page(
            request,
            access=access,
            status=403,
            next_path=next_path,
            message="This sign-in form is out of date or was not sent from this page "
            "(its CSRF check failed); it has been loaded again: sign in once more.",
        )
    # The peer address: behind a proxy, every sign-in shares the proxy's limit (the
    # safe side: a forwarded-for header is the client's to write).
    address = request.client.host if request.client is not None else "unknown"
    retry = access.limiter.retry_after(address, now=time.monotonic())
    if retry is not None:
        return _login_page(
            request,
            access=access,
            status=429,
            next_path=next_path,
            headers={"Retry-After": str(retry)},
            message=f"Too many wrong tokens from your address: try again in {retry} s.",
        )
    token = form.get("token")
    if not token:
        return _login_page(
            request,
            access=access,
            status=400,
            next_path=next_path,
            message="Enter the admin token.",
        )
    if not same_token(token, access.owner.admin_token):
        access.limiter.wrong(address, now=time.monotonic())
        return _login_page(
            request, access=access, status=401, next_path=next_path, message=WRONG_TOKEN
        )
    access.limiter.right(address)
    _, value = access.signer.issue(now=_unix_now(), lifetime_s=access.lifetime_s)
    response = _redirect(next_path or "/ui/")
    response.headers.append(
        "set-cookie",
        set_cookie(
            SESSION_COOKIE,
            value,
            path=SESSION_PATH,
            max_age=access.lifetime_s,
            secure=access.secure,
        ),
    )
    response.headers.append(
        "set-cookie", clear_cookie(LOGIN_CSRF_COOKIE, path=LOGIN_PATH, secure=access.secure)
    )
    return response


async def _signed_form(
    request: Request, access: UIAccess, session: Session, *, fields: frozenset[str]
) -> dict[str, str] | HTMLResponse:
    """The POST's form (``fields`` and its ``csrf``) when it carries this session's CSRF
    token; else the error page to answer (nothing has been done)."""
    try:
        form = await read_form(request, fields=fields | {"csrf"})
    except FormError as exc:
        return _error_page(exc.status, exc.message)
    if not access.signer.csrf_ok(session, form.get("csrf")):
        return _error_page(
            403,
            "Refused: the form's CSRF token is missing or wrong, so nothing was done. "
            "Load the page again and use its buttons.",
        )
    return form


async def _checked_form(
    request: Request, access: UIAccess, session: Session
) -> HTMLResponse | None:
    """None when the POST's form carries this session's CSRF token; else the error page
    to answer (nothing has been done)."""
    form = await _signed_form(request, access, session, fields=frozenset())
    return form if isinstance(form, HTMLResponse) else None


@router.post("/logout")
async def logout(request: Request) -> Response:
    access = _access(request)
    session = access.session(request)
    if session is not None:
        refused = await _checked_form(request, access, session)
        if refused is not None:
            return refused
    response = _redirect(LOGIN_PATH)
    response.headers.append(
        "set-cookie", clear_cookie(SESSION_COOKIE, path=SESSION_PATH, secure=access.secure)
    )
    return response


# --- the fleet -------------------------------------------------------------------------
def _encode_versions(versions: tuple[int, ...]) -> str:
    return "-".join(str(v) for v in versions)


def _decode_versions(text: str | None) -> tuple[int, ...] | None:
    if text is None or _VERSION.fullmatch(text) is None:
        return None  # none, or not one of ours: answered at once
    return tuple(int(part) for part in text.split("-"))


async def _rows(state: ControllerState) -> list[NodeRow]:
    """The table's rows as of now: the nodes as stored with the heartbeats received
    since overlaid (as ``GET /v1/nodes`` shows them), and every replica."""
    received = state.heartbeats.received()  # before the read: none is missed by both
    views = await state.views.nodes()
    replicas = await state.views.replicas()
    by_id = list(views.by_id.values())

    def build() -> list[NodeRow]:
        nodes = [
            with_figures(node, *received[node.id]) if node.id in received else node
            for node, _ in by_id
        ]
        return fleet_rows(nodes, replicas, now=clock.utcnow())

    # A worker thread, as every read of the fleet's size: a thousand replicas' rows are
    # tens of ms of Python, which the thread gives up every few ms (the GIL's switch
    # interval) while the event loop answers the agents.
    return await asyncio.to_thread(build)


def _fragment(rows: list[NodeRow], csrf: str) -> str:
    """The table's body alone, from the macro the page renders it with."""
    return TEMPLATES.get_template("fleet_body.html").render(rows=rows, csrf=csrf)


@router.get("/")
async def fleet(request: Request) -> Response:
    access = _access(request)
    session = access.session(request)
    if session is None:
        return _to_login(request.url.path)
    state = access.owner
    versions = state.feed.versions(LIVE_KINDS)  # before the read: a later change moves it
    try:
        rows = await _rows(state)
    except StoreUnavailable as exc:
        return _error_page(503, f"The store cannot be read now ({exc}). Try again shortly.")
    return await asyncio.to_thread(  # rendered off the event loop, as the rows are read
        _html,
        "fleet.html",
        page="fleet",
        rows=rows,
        csrf=access.signer.csrf(session),
        version=_encode_versions(versions),
    )


@router.get("/fleet/live")
async def fleet_live(request: Request) -> Response:
    """The table's body once any of ``spec``, ``state`` or ``nodes`` has moved past the
    versions in ``v`` (at once when ``v`` is not the current one), or after
    ``LIVE_WAIT_S`` (so the heartbeat ages move); the new versions in
    ``X-Orchestrify-Fleet-Version``. 401 without a session: the page then reloads."""

    async def render(state: ControllerState, _versions: tuple[int, ...], csrf: str) -> str:
        return await asyncio.to_thread(_fragment, await _rows(state), csrf)

    return await _live(request, LIVE_KINDS, render)


async def _set_draining(request: Request, node_id: str, *, draining: bool) -> Response:
    """What ``POST /v1/nodes/{id}/drain`` or ``/activate`` does (the same store call),
    from a signed-in form with its CSRF token; then back to the fleet."""
    access = _access(request)
    session = access.session(request)
    if session is None:
        return _to_login()
    refused = await _checked_form(request, access, session)
    if refused is not None:
        return refused
    missing = f"There is no node with id {node_id!r} (it may have been removed)."
    if _NODE_ID.fullmatch(node_id) is None:
        return _error_page(404, missing)
    store = access.owner.store
    try:
        await asyncio.to_thread(store.set_node_draining, node_id, draining=draining)
    except NotFound:
        return _error_page(404, missing)
    except StoreUnavailable as exc:
        return _error_page(503, f"The store cannot write now ({exc}); nothing was changed.")
    return _redirect("/ui/")


@router.post("/nodes/{node_id}/drain")
async def drain(request: Request, node_id: str) -> Response:
    return await _set_draining(request, node_id, draining=True)


@router.post("/nodes/{node_id}/activate")
async def activate(request: Request, node_id: str) -> Response:
    return await _set_draining(request, node_id, draining=False)


# --- services ----------------------------------------------------------------------------
async def _service_list(state: ControllerState) -> list[ServiceRow]:
    """The services table's rows as of now (``GET /v1/services`` and ``/v1/replicas``)."""
    services = (await state.views.services()).services
    return service_rows(services, await state.views.replicas())


def _find_service(services: tuple[Service, ...], name: str) -> Service | None:
    return next((s for s in services if s.name == name), None)


async def _service_parts(
    state: ControllerState, name: str, *, events_version: int
) -> dict[str, Any] | None:
    """What service ``name``'s page shows as of now (None: no such service): its
    figures, its replicas and its last ``EVENTS_SHOWN`` events, newest first."""
    found = _find_service((await state.views.services()).services, name)
    if found is None:
        return None
    replicas = [r for r in await state.views.replicas() if r.service == name]
    events = await state.views.service_events(
        name, limit=EVENTS_SHOWN, events_version=events_version
    )
    healthy = healthy_counts((r.service, str(r.state), str(r.desired)) for r in replicas)
    return {
        "svc": service_row(found, healthy.get(name, 0)),
        "replicas": replica_rows(replicas),
        "events": event_rows(events),
        "events_shown": EVENTS_SHOWN,
    }


def _no_service(name: str) -> HTMLResponse:
    return _error_page(
        404,
        f"There is no service named {name[:80]!r} (it may have been deleted).",
        back=("/ui/services", "Back to the services"),
    )


@router.get("/services")
async def services_page(request: Request) -> Response:
    access = _access(request)
    session = access.session(request)
    if session is None:
        return _to_login(request.url.path)
    state = access.owner
    versions = state.feed.versions(SERVICE_LIVE_KINDS)  # before the read
    try:
        rows = await _service_list(state)
    except StoreUnavailable as exc:
        return _error_page(503, f"The store cannot be read now ({exc}). Try again shortly.")
    return _html(
        "services.html",
        page="services",
        rows=rows,
        csrf=access.signer.csrf(session),
        version=_encode_versions(versions),
    )


@router.get("/services/{name}")
async def service_page(request: Request, name: str) -> Response:
    access = _access(request)
    session = access.session(request)
    if session is None:
        return _to_login(request.url.path)
    if SERVICE_NAME.fullmatch(name) is None:
        return _no_service(name)  # no service can have that name: no store read
    state = access.owner
    versions = state.feed.versions(SERVICE_LIVE_KINDS)  # before the read
    try:
        parts = await _service_parts(state, name, events_version=versions[2])
    except StoreUnavailable as exc:
        return _error_page(503, f"The store cannot be read now ({exc}). Try again shortly.")
    if parts is None:
        return _no_service(name)
    return _html(
        "service.html",
        page="service",
        csrf=access.signer.csrf(session),
        version=_encode_versions(versions),
        **parts,
    )


async def _live(
    request: Request,
    kinds: tuple[str, ...],
    render: Callable[[ControllerState, tuple[int, ...], str], Awaitable[str | None]],
) -> Response:
    """A live poll: ``render``'s fragment once any of ``kinds`` has moved past the
    versions in ``v`` (at once when ``v`` is not the current one), or after
    ``LIVE_WAIT_S``; the new versions in ``VERSION_HEADER``. 401 without a session (the
    page then goes to the sign-in), 404 when ``render`` finds nothing to show. Every
    live page's poll: ``render`` is given the feed's versions and the session's CSRF
    token (for the forms in the fragment)."""
    access = _access(request)
    session = access.session(request)
    if session is None:
        return _error_page(401, "Your sign-in has ended: sign in again.", signed_in=False)
    state = access.owner
    since = _decode_versions(request.query_params.get("v"))
    if since is not None and len(since) != len(kinds):
        since = None
    wait = min(LIVE_WAIT_S, LIVE_WAIT_MAX_S)
    versions = await state.feed.wait_any(kinds, since, wait)
    if state.feed.closed:
        return _error_page(503, "The controller is shutting down.", headers={"Retry-After": "2"})
    try:
        body = await render(state, versions, access.signer.csrf(session))
    except StoreUnavailable as exc:
        return _error_page(503, f"The store cannot be read now ({exc}).")
    if body is None:
        return _error_page(404, "There is no such service (it may have been deleted).")
    return HTMLResponse(body, headers={**PAGE_HEADERS, VERSION_HEADER: _encode_versions(versions)})


@router.get("/live/services")
async def services_live(request: Request) -> Response:
    """The services table's body, live (see ``_live``)."""

    async def render(state: ControllerState, _versions: tuple[int, ...], _csrf: str) -> str:
        rows = await _service_list(state)
        return TEMPLATES.get_template("services_body.html").render(rows=rows)

    return await _live(request, SERVICE_LIVE_KINDS, render)


@router.get("/live/services/{name}")
async def service_live(request: Request, name: str) -> Response:
    """Service ``name``'s figures, replicas and timeline, live (see ``_live``)."""

    async def render(state: ControllerState, versions: tuple[int, ...], _csrf: str) -> str | None:
        if SERVICE_NAME.fullmatch(name) is None:
            return None  # no service can have that name: no store read
        parts = await _service_parts(state, name, events_version=versions[2])
        if parts is None:
            return None
        return TEMPLATES.get_template("service_body.html").render(**parts)

    return await _live(request, SERVICE_LIVE_KINDS, render)


def _count(text: str | None) -> int | str:
    """The form's replica count, or what is wrong with it (naming the field)."""
    if text is None or not text.strip():
        return "replicas: enter the number of replicas."
    if _COUNT.fullmatch(text.strip()) is None:
        return f"replicas: {text[:40]!r} is not a whole number."
    return int(text.strip())


@router.post("/services/{name}/scale")
async def scale(request: Request, name: str) -> Response:
    """What ``PATCH /v1/services/{name}`` with ``{"replicas": N}`` does (the same
    checks, the same store call), from a signed-in form with its CSRF token; then back
    to the service's page, where the new count and its event show. A count that is not
    valid, or outside the service's bounds, is a 422 page naming the field."""
    access = _access(request)
    session = access.session(request)
    if session is None:
        return _to_login(f"/ui/services/{name}" if SERVICE_NAME.fullmatch(name) else "/ui/services")
    form = await _signed_form(request, access, session, fields=frozenset({"replicas"}))
    if isinstance(form, HTMLResponse):
        return form
    if SERVICE_NAME.fullmatch(name) is None:
        return _no_service(name)
    page = f"/ui/services/{name}"
    back = (page, f"Back to service {name}")

    def invalid(message: str) -> HTMLResponse:
        return _error_page(422, f"Nothing was changed. {message}", back=back)

    count = _count(form.get("replicas"))
    if isinstance(count, str):
        return invalid(count)
    state = access.owner
    try:
        patch = ServicePatch.model_validate({"replicas": count})
        check_replica_ceiling(state, patch)
    except InvalidSpec as exc:
        return invalid(str(exc))
    except ValueError as exc:  # pydantic's ValidationError: the API's 422
        return invalid(f"replicas: {count} is not a valid count ({_first_error(exc)}).")
    try:
        found = _find_service((await state.views.services()).services, name)
        if found is None:
            return _no_service(name)
        # The API's 409 for a count that clashes with the stored bounds is this page's
        # 422: here the bounds are the service's own, not another field of the request.
        check_bounds(count, found.min_replicas, found.max_replicas)
        await asyncio.to_thread(
            state.store.update_service, name, patch, reason="requested from the status page"
        )
    except FieldError as exc:
        return invalid(f"{exc.field}: {exc}.")
    except InvalidSpec as exc:
        return invalid(str(exc))
    except Conflict as exc:  # the bounds changed since the check above
        return invalid(str(exc))
    except NotFound:
        return _no_service(name)
    except StoreUnavailable as exc:
        return _error_page(
            503, f"The store cannot write now ({exc}); nothing was changed.", back=back
        )
    return _redirect(page)


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        found = errors()
        if found:
            return str(found[0].get("msg", exc))
    return str(exc)


# --- static files and the rest -----------------------------------------------------------
# Read once, at import: serving them reads no file.
_STATIC_BODIES = {name: (HERE / "static" / name).read_bytes() for name in STATIC}


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """``ui.js`` and ``ui.css`` from the package (by name from ``STATIC``: a request's
    path never names a file)."""
    media_type = STATIC.get(name)
    if media_type is None:
        return _error_page(404, "No such file.", signed_in=False)
    return Response(
        _STATIC_BODIES[name],
        media_type=media_type,
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


@router.get("/{rest:path}")
async def not_found(rest: str) -> Response:
    return _error_page(404, "There is no such page.", signed_in=False)
