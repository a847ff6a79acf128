"""The controller's FastAPI application: routers, error mapping, metrics, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from orchestrify import __version__
from orchestrify.controller.alerts import AlertProcessor
from orchestrify.controller.batching import GroupCommit
from orchestrify.controller.border import (
    BodyLimit,
    SafeJSONResponse,
    body_validation_errors,
    errors,
    every_route,
    too_large,
)
from orchestrify.controller.deps import ControllerState
from orchestrify.controller.fastpath import HeartbeatFastPath
from orchestrify.controller.feed import connect_feed
from orchestrify.controller.heartbeats import HeartbeatBuffer
from orchestrify.controller.leadership import Leadership
from orchestrify.controller.liveness import NodeLiveness, RescheduleLimiter
from orchestrify.controller.looplag import LoopLagMonitor
from orchestrify.controller.metrics import ControllerMetrics
from orchestrify.controller.reconcile import Reconciler
from orchestrify.controller.retention import HistoryPruner
from orchestrify.controller.routers import (
    alerts,
    cluster,
    discovery,
    edges,
    events,
    jobs,
    logs,
    nodes,
    replicas,
    services,
    upstreams,
)
from orchestrify.controller.settings import ControllerSettings, load_or_create_token
from orchestrify.controller.ui import router as ui_router
from orchestrify.controller.ui.errors import method_not_allowed, ui_error, under_ui
from orchestrify.controller.views import ReadViews
from orchestrify.controller.watch import AssignmentWatch
from orchestrify.errors import (
    Busy,
    Conflict,
    InvalidSpec,
    NotFound,
    OrchestrifyError,
    StoreUnavailable,
    TooLarge,
    Unauthorized,
)
from orchestrify.heap import settle_heap
from orchestrify.jobs.runner import JobRunner
from orchestrify.jobs.validation import list_playbooks
from orchestrify.models import error_location
from orchestrify.protocol import (
    HEADER_COMPONENT,
    HEADER_PROTOCOL,
    HEADER_VERSION,
    PROTOCOL_VERSION,
    peer_protocol,
    refusal,
)
from orchestrify.store import Store, stalls, translate_store_error
from orchestrify.store.engine import Fence, fenced

log = logging.getLogger(__name__)

Startup = Callable[[FastAPI, ControllerState], Awaitable[None]]


def create_app(
    settings: ControllerSettings,
    *,
    registry: CollectorRegistry | None = None,
    run_reconciler: bool = True,
    extra_startup: list[Startup] | None = None,
    fast_heartbeats: bool = True,
) -> FastAPI:
    """Build the app. State is opened in ``lifespan`` so a test can build many apps.
    ``fast_heartbeats=False`` leaves every heartbeat to the framework's route (tests
    compare the two answers)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = open_state(settings, registry=registry)
        state.feed.bind(asyncio.get_running_loop())
        if state.changes is not None:
            state.changes.start()  # changes committed by the other controllers
        app.state.controller = state
        loop_lag = LoopLagMonitor(state.metrics.event_loop_lag).start()
        state.alerts.load_rules(settings.rules_file)
        loops = LeaderLoops(state, run_reconciler=run_reconciler)
        leadership = state.leadership
        leadership.on_elected = loops.start
        leadership.on_deposed = loops.stop
        # The first attempt is made before the API serves: alone on its store (SQLite,
        # or the first of several), this controller leads at once.
        await leadership.start()
        # Every controller writes the heartbeats it received, leader or not.
        flusher = asyncio.create_task(state.heartbeats.run_forever(), name="heartbeats")
        watch = asyncio.create_task(state.watch.run_forever(), name="assignments")
        # PostgreSQL: a session of any controller cut off mid-message holds its locks
        # until this ends it (as long as a transaction of ours may idle, then blocking).
        stall_watch = asyncio.create_task(
            stalls.run_forever(
                state.store,
                interval_s=settings.lease_s / 3,
                after_s=IDLE_IN_TRANSACTION_SHARE * settings.lease_s,
            ),
            name="stalled-sessions",
        )
        try:
            # Alerts stored before a crash but not yet decided on are decided now, before
            # the API serves, when this controller leads.
            await loops.first_decisions()
            for hook in extra_startup or []:
                await hook(app, state)
            log.info(
                "controller ready",
                extra={
                    "data_dir": str(settings.data_dir),
                    "version": __version__,
                    "controller_id": settings.controller_id,
                    "leader": leadership.is_leader,
                },
            )
            yield
        finally:
            await loop_lag.stop()
            await leadership.stop()  # the leader's loops end first, then the lease
            for task in (flusher, watch, stall_watch):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.heartbeats.flush()  # the last ones received, before the store closes
            state.views.cache.close()
            await asyncio.to_thread(state.jobs.close)
            if state.changes is not None:
                await asyncio.to_thread(state.changes.stop)
            state.store.close()

    app = FastAPI(
        title="orchestrify controller",
        version=__version__,
        description="Services, nodes, replicas and the event trail of an orchestrify fleet.",
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
    )
    # The nodes' router first: the agents' requests, most of a fleet's, are matched
    # against fewer routes (a request is matched against them in order).
    for router in (
        nodes.router,
        cluster.router,
        services.router,
        replicas.router,
        events.router,
        discovery.router,
        jobs.router,
        alerts.router,
        upstreams.router,
        edges.router,
        logs.router,
    ):
        app.include_router(router)
    # The web status page last (the API's requests never test its routes), and not in
    # the OpenAPI: it is pages for a browser, not the API.
    app.include_router(ui_router, include_in_schema=False)
    _install_error_handlers(app)
    if fast_heartbeats:
        # Innermost of ours: its answers pass the latency histogram, the version headers
        # and the body limit as the app's do.
        app.add_middleware(HeartbeatFastPath, owner=app)
    _install_metrics(app)
    _document_limits(app, settings)
    # Outermost of ours: an oversized body is refused before anything reads it.
    app.add_middleware(BodyLimit, max_bytes=lambda: settings.max_body_bytes, answer=_body_too_large)
    return app


def _body_too_large(scope: MutableMapping[str, Any], limit: int) -> Response:
    """The 413 of a body over ``max_body_bytes``: the status page's HTML page under /ui,
    the API's JSON elsewhere."""
    if under_ui(scope.get("path", "")):
        return ui_error(
            413,
            f"The request's body is larger than {limit} bytes "
            "(the controller's max_body_bytes): nothing was done.",
        )
    return too_large(limit)


class ControllerServer(uvicorn.Server):
    """uvicorn that first answers open long-polls, so shutting down never waits on them."""

    def __init__(self, config: uvicorn.Config, *, handle_signals: bool = True) -> None:
        super().__init__(config)
        self.handle_signals = handle_signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if self.handle_signals:
            with super().capture_signals():
                yield
        else:
            yield  # the embedding program owns SIGINT/SIGTERM

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        settle_heap()  # started: what lives now lives on (see orchestrify.heap)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.loaded_app if self.config.loaded else self.config.app
        for candidate in (app, getattr(app, "app", None)):
            state = getattr(getattr(candidate, "state", None), "controller", None)
            if isinstance(state, ControllerState):
                await state.feed.close()
        await super().shutdown(sockets)


# Seconds an idle client connection stays open (Nginx's default keepalive_timeout).
KEEP_ALIVE_S = 75


def serve_controller(settings: ControllerSettings) -> None:
    """Run the controller in the foreground until SIGINT/SIGTERM."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # Agents heartbeat every 5 s on a kept-alive connection: uvicorn's default of 5 s
        # closed it just as the next heartbeat was sent (a ReadError for the agent, and a
        # new TCP connection per heartbeat). Longer than any heartbeat interval.
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=5,
        # HTTPS only when set: no plain-HTTP listener beside it
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
    )
    ControllerServer(config).run()


class LeaderLoops:
    """The loops only the leader runs: the reconciler (with node liveness and
    rescheduling), alert decisions and scaling, history pruning, and the job runner's
    leading part. Started when this controller is elected, each under the term's fence
    (their tasks copy the context the fence is set in, and so do the threads they hand
    work to), and cancelled when it stops leading; followers serve the API only."""

    def __init__(self, state: ControllerState, *, run_reconciler: bool) -> None:
        self.state = state
        self.run_reconciler = run_reconciler
        self.tasks: list[asyncio.Task[None]] = []
        self._pending: asyncio.Task[None] | None = None

    async def start(self, fence: Fence) -> None:
        state = self.state
        # A new leader starts like a restarted controller: every node gets the startup
        # grace before it may be called silent, so a failover moves no replica.
        state.reconciler.liveness.restart()
        state.history.resume()
        with fenced(fence):
            # The job runner's dispatcher is a thread of its own (which copies no
            # context): it enters this term's fence around each of its writes.
            await asyncio.to_thread(functools.partial(state.jobs.lead, fence=lambda: fenced(fence)))
            self._pending = asyncio.create_task(self._decide_pending(), name="alerts-pending")
            self.tasks = [
                self._pending,
                asyncio.create_task(state.history.run_forever(), name="history"),
            ]
            if self.run_reconciler:
                self.tasks.append(
                    asyncio.create_task(state.reconciler.run_forever(), name="reconciler")
                )
                self.tasks.append(
                    asyncio.create_task(
                        state.alerts.run_forever(state.settings.alert_eval_interval_s),
                        name="alerts",
                    )
                )

    async def _decide_pending(self) -> None:
        """Alerts stored but not yet decided on (before a crash, or by a leader that
        stopped) are decided now."""
        try:
            await asyncio.to_thread(self.state.alerts.process_pending)
        except Exception:
            log.exception("deciding on pending alerts failed; the alert loop retries")

    async def first_decisions(self) -> None:
        """Wait for the decisions on pending alerts of the term that began at start."""
        if self._pending is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._pending)

    async def stop(self, fence: Fence) -> None:
        state = self.state
        state.history.stop()  # a prune in its thread ends after its current batch
        tasks, self.tasks, self._pending = self.tasks, [], None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(state.jobs.step_down)


# A share of the lease (see ``open_state``): below one, so that a stalled transaction of a
# partitioned leader ends before a follower may take the lease over; not much below, so a
# busy machine that pauses a thread between two statements does not lose its transaction.
IDLE_IN_TRANSACTION_SHARE = 0.8


def open_state(
    settings: ControllerSettings, *, registry: CollectorRegistry | None = None
) -> ControllerState:
    store = Store.open(
        settings.database_url.get_secret_value() if settings.database_url else None,
        data_dir=settings.data_dir,
        node_timeout_s=settings.node_timeout_s,
        # A transaction stalled by a partition ends before the lease does, so the lock it
        # holds on the lease row never keeps the next leader from being elected.
        idle_in_transaction_s=IDLE_IN_TRANSACTION_SHARE * settings.lease_s,
    )
    log.info("store opened", extra={"store": store.url})  # the password hidden
    feed, changes = connect_feed(store)
    admin, _ = load_or_create_token(settings.data_dir, "admin", settings.token)
    join, _ = load_or_create_token(settings.data_dir, "join", settings.join_token)
    reconciler = Reconciler(
        store,
        feed,
        interval_s=settings.reconcile_interval_s,
        node_timeout_s=settings.node_timeout_s,
        # Liveness starts now, with the store: every known node counts as seen now.
        liveness=NodeLiveness(
            timeout_s=settings.node_timeout_s,
            startup_grace_s=settings.resolved_node_startup_grace_s,
            mass_silence_threshold=settings.mass_silence_threshold,
        ),
        limiter=RescheduleLimiter(nodes_per_minute=settings.reschedule_nodes_per_minute),
    )
    jobs = JobRunner(
        store,
        playbook_dir=settings.playbook_dir,
        inventory=settings.inventory,
        jobs_dir=settings.resolved_jobs_dir,
        job_timeout_s=settings.job_timeout_s,
        max_running=settings.max_running_jobs,
        max_pending=settings.max_pending_jobs,
        controller_id=settings.controller_id,
    )
    metrics = ControllerMetrics(store, registry)
    leadership = Leadership(
        store,
        controller_id=settings.controller_id,
        url=settings.advertise_url,
        lease_s=settings.lease_s,
        # SQLite is one host and one controller: whatever held the lease before ran on
        # this host and is gone, so the lease is taken at start without waiting.
        take_over_at_start=store.dialect == "sqlite",
    )
    metrics.track_leadership(leading=lambda: leadership.is_leader, epoch=lambda: leadership.epoch)
    # A follower's webhook stores alerts and leaves the decisions to the leader; the
    # leader's webhook decides under its term's fence.
    alerts = AlertProcessor(
        store,
        reconciler,
        dry_run=settings.dry_run,
        stale_after_s=settings.alert_stale_after_s,
        jobs=jobs,
        leading=lambda: leadership.is_leader,
        fence=leadership.fence,
    )
    feed.on_events(alerts.wake)  # alerts stored through another controller
    views = ReadViews(store)
    return ControllerState(
        settings=settings,
        store=store,
        feed=feed,
        changes=changes,
        reconciler=reconciler,
        metrics=metrics,
        admin_token=admin,
        join_token=join,
        jobs=jobs,
        alerts=alerts,
        history=HistoryPruner(
            store,
            retention_days=settings.history_retention_days,
            jobs_dir=settings.resolved_jobs_dir,
            metrics=metrics,
        ),
        leadership=leadership,
        views=views,
        heartbeats=HeartbeatBuffer(store, views, flush_s=settings.heartbeat_flush_s),
        reports=GroupCommit(store.apply_report_batch),
        watch=AssignmentWatch(feed, views),
    )


STORE_RETRY_AFTER_S = 1  # a locked SQLite store frees up within its 30 s busy timeout


def _document_limits(app: FastAPI, settings: ControllerSettings) -> None:
    """The OpenAPI states this controller's own replica ceiling as the schema's maximum
    (the models carry the hard maximum of any build), and the playbooks a job may name
    now as the ``playbook`` field's enum (read at each request: files come and go)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = _openapi_with_ceilings()
        playbooks = (
            list_playbooks(settings.playbook_dir)
            if settings.playbook_dir is not None and settings.playbook_dir.is_dir()
            else []
        )
        if not playbooks:
            return schema  # no job can run: POST /v1/jobs is a 409 (or a 422 naming it)
        schema = copy.deepcopy(schema)
        prop = schema["components"]["schemas"]["JobRequest"]["properties"]["playbook"]
        prop["enum"] = playbooks
        return schema

    def _openapi_with_ceilings() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.get("components", {}).get("schemas", {})
            for name in ("ServiceSpec", "ServicePatch"):
                props = components.get(name, {}).get("properties", {})
                for field in ("replicas", "min_replicas", "max_replicas"):
                    prop = props.get(field)
                    for branch in [prop, *(prop or {}).get("anyOf", [])]:
                        if isinstance(branch, dict) and "maximum" in branch:
                            branch["maximum"] = settings.max_replicas_per_service
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _error(
    status: int,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    path: str = "",
) -> Response:
    """The answer to a refused request: the API's JSON (``detail`` and ``message``; a
    ``field``'s error located in ``detail``), or under /ui (``path``) the status page's
    HTML error page with the same status, message and headers."""
    if under_ui(path):
        return ui_error(status, f"{field}: {message}" if field else message, headers=headers)
    body: dict[str, Any] = {"detail": message, "message": message}
    if field is not None:
        body["detail"] = [
            {"loc": ["body", *field.split(".")], "msg": message, "type": "value_error"}
        ]
    return SafeJSONResponse(status_code=status, content=body, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    statuses: list[tuple[type[OrchestrifyError], int]] = [
        (NotFound, 404),
        (Conflict, 409),
        (Unauthorized, 401),
        (TooLarge, 413),
    ]

    @app.exception_handler(OrchestrifyError)
    async def orchestrify_error(request: Request, exc: Exception) -> Response:
        path = request.url.path
        if isinstance(exc, InvalidSpec):
            return _error(422, str(exc), field=exc.field, path=path)
        if isinstance(exc, Busy):
            retry = {"Retry-After": str(exc.retry_after_s)}
            return _error(429, str(exc), headers=retry, path=path)
        if isinstance(exc, StoreUnavailable):
            log.warning("store unavailable", extra={"error": str(exc)})
            retry = {"Retry-After": str(STORE_RETRY_AFTER_S)}
            return _error(503, str(exc), headers=retry, path=path)
        for cls, status in statuses:
            if isinstance(exc, cls):
                return _error(status, str(exc), path=path)
        log.error("request failed", extra={"error": str(exc), "type": type(exc).__name__})
        return _error(500, str(exc), path=path)

    @app.exception_handler(Exception)
    async def last_resort(request: Request, exc: Exception) -> Response:
        """A genuine bug (or a store error that escaped its border): logged with its
        traceback, answered with JSON, never a dropped connection."""
        translated = translate_store_error(exc)
        if translated is not None:
            return await orchestrify_error(request, translated)
        log.error(
            "request failed: unexpected error",
            exc_info=exc,
            extra={"path": request.url.path, "method": request.method},
        )
        message = f"internal error ({type(exc).__name__}); the controller's log has the details"
        return _error(500, message, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: Exception) -> Response:
        """FastAPI's answer to an HTTPException, with ``message`` beside ``detail``, and a
        405's ``Allow`` listing every method of the path: Starlette lists only those of
        the first route that matched it (GET /v1/services and POST /v1/services are two
        routes), which RFC 9110 and schemathesis' allow_header_conformance refuse."""
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        allowed: list[str] = []
        if exc.status_code == 405:
            allowed = allowed_methods(request.app, request.scope)
            headers["Allow"] = ", ".join(allowed)
        if under_ui(request.url.path):
            message = (
                method_not_allowed(request.method, allowed)
                if exc.status_code == 405
                else str(exc.detail)
            )
            return ui_error(exc.status_code, message, headers=headers)
        body: dict[str, Any] = {"detail": exc.detail}
        if isinstance(exc.detail, str):
            body["message"] = exc.detail
        return SafeJSONResponse(status_code=exc.status_code, content=body, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = body_validation_errors(request, exc)
        parts = []
        detail = []
        for err in errors:
            full = error_location(err)
            detail.append({"loc": list(full), "msg": err.get("msg"), "type": err.get("type")})
            loc = ".".join(p for p in full if p not in ("body", "query", "path"))
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        # Logged: a rejected webhook notification would otherwise vanish unnoticed
        # (Alertmanager does not retry a 4xx).
        log.warning(
            "request rejected",
            extra={"path": request.url.path, "method": request.method, "error": "; ".join(parts)},
        )
        if under_ui(request.url.path):
            return ui_error(422, "Not a valid value: " + "; ".join(parts) + ".")
        return SafeJSONResponse(
            status_code=422, content={"detail": detail, "message": "; ".join(parts)}
        )


def allowed_methods(app: FastAPI, scope: MutableMapping[str, Any]) -> list[str]:
    """Every method some route serves at this request's path (HEAD with GET, as served)."""
    literal: set[str] = set()  # routes whose path has no parameter: /v1/nodes/register
    templated: set[str] = set()  # /v1/nodes/{node_id}, which "register" matches too
    for route in every_route(app.router.routes):
        match, _ = route.matches(scope)
        if match != Match.NONE:
            route = getattr(route, "original_route", route)
            found = set(getattr(route, "methods", None) or ())
            (templated if "{" in getattr(route, "path", "") else literal).update(found)
    # As OpenAPI matches paths: a concrete path wins over a template that also fits it.
    return sorted(literal or templated)


class _MeasureLatency:
    """Pure ASGI middleware: the API latency histogram by method, route and status.

    (Not ``@app.middleware("http")``: that wraps every request in extra tasks and
    streams, which cost about a millisecond per call on a small host.)"""

    def __init__(self, app: Callable[..., Awaitable[None]], owner: FastAPI) -> None:
        self.app = app
        self.owner = owner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            state: ControllerState | None = getattr(self.owner.state, "controller", None)
            # Long-polls (the agents', the edges', the status page's): waits would skew it.
            long_poll = path.endswith(("/assignments", "/upstreams")) or path.startswith(
                ("/ui/fleet/live", "/ui/live/")
            )
            if state is not None and not long_poll:
                state.metrics.api_latency.labels(scope["method"], path, str(status)).observe(
                    time.perf_counter() - start
                )


class _AnnounceVersion:
    """Pure ASGI middleware: every answer carries the controller's package and protocol
    versions, and a request that names a protocol this build cannot serve is refused
    with 426 and a message naming both versions, before any handler runs."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app
        self.headers = [
            (HEADER_VERSION.lower().encode(), __version__.encode()),
            (HEADER_PROTOCOL.lower().encode(), str(PROTOCOL_VERSION).encode()),
        ]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        proto = peer_protocol({HEADER_PROTOCOL: request.get(HEADER_PROTOCOL.lower(), "")})
        component = request.get(HEADER_COMPONENT.lower()) or "client"
        why = (
            refusal(
                peer=component,
                peer_version=request.get(HEADER_VERSION.lower()),
                peer_protocol=proto,
            )
            if proto is not None
            else None
        )

        async def announce(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        if why is not None:
            log.warning("request refused", extra={"path": scope.get("path"), "error": why})
            refused: Response = (
                ui_error(426, why)
                if under_ui(scope.get("path", ""))
                else JSONResponse(status_code=426, content={"detail": why, "message": why})
            )
            await refused(scope, receive, announce)
            return
        await self.app(scope, receive, announce)


def _install_metrics(app: FastAPI) -> None:
    app.add_middleware(_MeasureLatency, owner=app)
    app.add_middleware(_AnnounceVersion)

    # async: answered on the event loop, never queued behind the worker threads.
    @app.get("/healthz", tags=["health"], responses=errors(426))
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", tags=["health"], response_class=Response, responses=errors(426))
    def metrics(request: Request) -> Response:
        state: ControllerState = request.app.state.controller
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
