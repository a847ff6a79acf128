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
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from orchestrify import clock
from orchestrify.controller.deps import ControllerState, same_token
from orchestrify.controller.heartbeats import with_figures
from orchestrify.controller.routers.services import check_replica_ceiling
from orchestrify.controller.ui.charts import (
    LARGE,
    PAGE_WAIT_S,
    SMALL,
    ChartSize,
    ChartSource,
    ServiceCharts,
    build_charts,
    chart_source,
)
from orchestrify.controller.ui.fleet import NodeRow, fleet_rows
from orchestrify.controller.ui.pages import (
    TEMPLATES,
    FormError,
    UIAccess,
    act,
    after_action,
    checked_form,
    done_notice,
    encode_versions,
    error_page,
    first_error,
    html_page,
    live_poll,
    read_form,
    redirect,
    safe_next,
    signed_form,
    to_login,
    ui_access,
    unix_now,
)
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
    clear_cookie,
    login_csrf_ok,
    new_login_csrf,
    set_cookie,
    usable_login_csrf,
)
from orchestrify.errors import Conflict, InvalidSpec, NotFound, StoreUnavailable
from orchestrify.models import SERVICE_NAME, FieldError, Service, ServicePatch, check_bounds
from orchestrify.rollout import healthy_counts

__all__ = ["EVENTS_SHOWN", "router"]

router = APIRouter(prefix="/ui")

LIVE_KINDS = ("spec", "state", "nodes")
# What the services pages show moves with these: counts and bounds (spec), replicas'
# states (state), and the timeline (events).
SERVICE_LIVE_KINDS = ("spec", "state", "events")
FROM_THE_PAGE = "requested from the status page"  # the reason of the pages' actions
EVENTS_SHOWN = 100  # a service page's timeline: its last events, newest first
# A replica count as a form gives it: digits, maybe signed (a negative one is refused by
# the same validation as the API's, naming the field); nothing longer than a count.
_COUNT = re.compile(r"[+-]?[0-9]{1,12}")
# Node ids as the store makes them (orchestrify.store.nodes.NODE_ID): anything else is
# no node, answered without a store read.
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")

WRONG_TOKEN = (
    "That is not the admin token. Check it and try again: it is the controller's "
    "--token (ORCHESTRIFY_TOKEN), or the admin.token file in its data directory."
)


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
    response = html_page(
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
    return redirect("/ui/")


@router.get("/login")
async def login_form(request: Request) -> Response:
    access = ui_access(request)
    next_path = safe_next(request.query_params.get("next"))
    if access.session(request) is not None:
        return redirect(next_path or "/ui/")
    return _login_page(request, access=access, next_path=next_path)


@router.post("/login")
async def login(request: Request) -> Response:
    """Sign in with the admin token. Checked in this order: the form, its CSRF cookie,
    the limit on wrong tokens from this address (a limited address is refused without
    its token being looked at), then the token itself, in constant time."""
    access = ui_access(request)
    try:
        form = await read_form(request, fields=frozenset({"token", "csrf", "next"}))
    except FormError as exc:
        return _login_page(request, access=access, status=exc.status, message=exc.message)
    next_path = safe_next(form.get("next"))
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
    _, value = access.signer.issue(now=unix_now(), lifetime_s=access.lifetime_s)
    response = redirect(next_path or "/ui/")
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


@router.post("/logout")
async def logout(request: Request) -> Response:
    access = ui_access(request)
    session = access.session(request)
    if session is not None:
        refused = await checked_form(request, access, session)
        if refused is not None:
            return refused
    response = redirect(LOGIN_PATH)
    response.headers.append(
        "set-cookie", clear_cookie(SESSION_COOKIE, path=SESSION_PATH, secure=access.secure)
    )
    return response


# --- the fleet -------------------------------------------------------------------------
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
    access = ui_access(request)
    session = access.session(request)
    if session is None:
        return to_login(request.url.path)
    state = access.owner
    versions = state.feed.versions(LIVE_KINDS)  # before the read: a later change moves it
    try:
        rows = await _rows(state)
    except StoreUnavailable as exc:
        return error_page(503, f"The store cannot be read now ({exc}). Try again shortly.")
    return await asyncio.to_thread(  # rendered off the event loop, as the rows are read
        html_page,
        "fleet.html",
        page="fleet",
        rows=rows,
        csrf=access.signer.csrf(session),
        version=encode_versions(versions),
        done=await done_notice(request, state),
    )


@router.get("/fleet/live")
async def fleetlive_poll(request: Request) -> Response:
    """The table's body once any of ``spec``, ``state`` or ``nodes`` has moved past the
    versions in ``v`` (at once when ``v`` is not the current one), or after
    ``LIVE_WAIT_S`` (so the heartbeat ages move); the new versions in
    ``X-Orchestrify-Fleet-Version``. 401 without a session: the page then reloads."""

    async def render(state: ControllerState, _versions: tuple[int, ...], csrf: str) -> str:
        return await asyncio.to_thread(_fragment, await _rows(state), csrf)

    return await live_poll(request, LIVE_KINDS, render)


async def _set_draining(request: Request, node_id: str, *, draining: bool) -> Response:
    """What ``POST /v1/nodes/{id}/drain`` or ``/activate`` does (the same store call),
    from a signed-in form with its CSRF token; then back to the fleet."""
    access = ui_access(request)
    session = access.session(request)
    if session is None:
        return to_login()
    refused = await checked_form(request, access, session)
    if refused is not None:
        return refused
    missing = f"There is no node with id {node_id!r} (it may have been removed)."
    if _NODE_ID.fullmatch(node_id) is None:
        return error_page(404, missing)
    store = access.owner.store
    try:
        _, done = await asyncio.to_thread(
            act,
            store,
            lambda: store.set_node_draining(node_id, draining=draining),
            action="drain" if draining else "activate",
        )
    except NotFound:
        return error_page(404, missing)
    except StoreUnavailable as exc:
        return error_page(503, f"The store cannot write now ({exc}); nothing was changed.")
    return after_action("/ui/", done)


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


async def _charts(
    source: ChartSource | None, rows: list[ServiceRow], *, wait_s: float, size: ChartSize
) -> dict[str, ServiceCharts] | None:
    """The rows' charts (None without a Prometheus): a page waits up to ``wait_s`` for
    Prometheus, a live poll (``wait_s=0``) takes what the cache has. Drawn in a worker
    thread."""
    if source is None:
        return None
    answers = await source.fetch([row.name for row in rows], wait_s=wait_s)
    return await asyncio.to_thread(build_charts, rows, answers, size=size)


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
    return error_page(
        404,
        f"There is no service named {name[:80]!r} (it may have been deleted).",
        back=("/ui/services", "Back to the services"),
    )


@router.get("/services")
async def services_page(request: Request) -> Response:
    access = ui_access(request)
    session = access.session(request)
    if session is None:
        return to_login(request.url.path)
    state = access.owner
    versions = state.feed.versions(SERVICE_LIVE_KINDS)  # before the read
    try:
        rows = await _service_list(state)
    except StoreUnavailable as exc:
        return error_page(503, f"The store cannot be read now ({exc}). Try again shortly.")
    charts = await _charts(chart_source(request), rows, wait_s=PAGE_WAIT_S, size=SMALL)
    return await asyncio.to_thread(
        html_page,
        "services.html",
        page="services",
        rows=rows,
        charts=charts,
        csrf=access.signer.csrf(session),
        version=encode_versions(versions),
    )


@router.get("/services/{name}")
async def service_page(request: Request, name: str) -> Response:
    access = ui_access(request)
    session = access.session(request)
    if session is None:
        return to_login(request.url.path)
    if SERVICE_NAME.fullmatch(name) is None:
        return _no_service(name)  # no service can have that name: no store read
    state = access.owner
    versions = state.feed.versions(SERVICE_LIVE_KINDS)  # before the read
    try:
        parts = await _service_parts(state, name, events_version=versions[2])
    except StoreUnavailable as exc:
        return error_page(503, f"The store cannot be read now ({exc}). Try again shortly.")
    if parts is None:
        return _no_service(name)
    charts = await _charts(chart_source(request), [parts["svc"]], wait_s=PAGE_WAIT_S, size=LARGE)
    return await asyncio.to_thread(
        html_page,
        "service.html",
        page="service",
        csrf=access.signer.csrf(session),
        version=encode_versions(versions),
        done=await done_notice(request, state),
        charts=None if charts is None else charts[name],
        **parts,
    )


@router.get("/live/services")
async def serviceslive_poll(request: Request) -> Response:
    """The services table's body, live (see ``_live``), with the charts the cache has."""
    source = chart_source(request)

    async def render(state: ControllerState, _versions: tuple[int, ...], _csrf: str) -> str:
        rows = await _service_list(state)
        charts = await _charts(source, rows, wait_s=0, size=SMALL)
        return await asyncio.to_thread(
            TEMPLATES.get_template("services_body.html").render, rows=rows, charts=charts
        )

    return await live_poll(request, SERVICE_LIVE_KINDS, render)


@router.get("/live/services/{name}")
async def servicelive_poll(request: Request, name: str) -> Response:
    """Service ``name``'s figures, charts (as the cache has them), replicas and
    timeline, live (see ``_live``)."""
    source = chart_source(request)

    async def render(state: ControllerState, versions: tuple[int, ...], _csrf: str) -> str | None:
        if SERVICE_NAME.fullmatch(name) is None:
            return None  # no service can have that name: no store read
        parts = await _service_parts(state, name, events_version=versions[2])
        if parts is None:
            return None
        charts = await _charts(source, [parts["svc"]], wait_s=0, size=LARGE)
        return await asyncio.to_thread(
            TEMPLATES.get_template("service_body.html").render,
            charts=None if charts is None else charts[name],
            **parts,
        )

    return await live_poll(request, SERVICE_LIVE_KINDS, render)


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
    access = ui_access(request)
    session = access.session(request)
    if session is None:
        return to_login(f"/ui/services/{name}" if SERVICE_NAME.fullmatch(name) else "/ui/services")
    form = await signed_form(request, access, session, fields=frozenset({"replicas"}))
    if isinstance(form, HTMLResponse):
        return form
    if SERVICE_NAME.fullmatch(name) is None:
        return _no_service(name)
    page = f"/ui/services/{name}"
    back = (page, f"Back to service {name}")

    def invalid(message: str) -> HTMLResponse:
        return error_page(422, f"Nothing was changed. {message}", back=back)

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
        return invalid(f"replicas: {count} is not a valid count ({first_error(exc)}).")
    try:
        found = _find_service((await state.views.services()).services, name)
        if found is None:
            return _no_service(name)
        # The API's 409 for a count that clashes with the stored bounds is this page's
        # 422: here the bounds are the service's own, not another field of the request.
        check_bounds(count, found.min_replicas, found.max_replicas)
        _, done = await asyncio.to_thread(
            act,
            state.store,
            lambda: state.store.update_service(name, patch, reason=FROM_THE_PAGE),
            action="scale",
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
        return error_page(
            503, f"The store cannot write now ({exc}); nothing was changed.", back=back
        )
    return after_action(page, done)


@router.post("/services/{name}/rollback")
async def rollback(request: Request, name: str) -> Response:
    """What ``POST /v1/services/{name}/rollback`` does (the same store call), from a
    signed-in form with its CSRF token; then back to the service's page, where the
    rollback's event shows. A service never updated has nothing to roll back to: a 409
    page saying so, nothing changed."""
    access = ui_access(request)
    session = access.session(request)
    if session is None:
        return to_login(f"/ui/services/{name}" if SERVICE_NAME.fullmatch(name) else "/ui/services")
    refused = await checked_form(request, access, session)
    if refused is not None:
        return refused
    if SERVICE_NAME.fullmatch(name) is None:
        return _no_service(name)
    page = f"/ui/services/{name}"
    back = (page, f"Back to service {name}")
    store = access.owner.store
    try:
        _, done = await asyncio.to_thread(
            act,
            store,
            lambda: store.rollback_service(name, reason=FROM_THE_PAGE),
            action="rollback",
        )
    except NotFound:
        return _no_service(name)
    except Conflict as exc:
        return error_page(409, f"Nothing was changed: {exc}.", back=back)
    except InvalidSpec as exc:
        return error_page(422, f"Nothing was changed: {exc}", back=back)
    except StoreUnavailable as exc:
        return error_page(
            503, f"The store cannot write now ({exc}); nothing was changed.", back=back
        )
    return after_action(page, done)
