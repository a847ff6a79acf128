"""`orchestrify up`: the whole system on this host, in one process.

The controller (uvicorn inside this asyncio loop) and an agent on the local Docker
engine. More programs (the edge) join as one more entry in ``EXTRA_PROGRAMS``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import uvicorn

from orchestrify.agent import Agent, AgentSettings, default_node_name
from orchestrify.agent.settings import DEFAULT_METRICS_PORT
from orchestrify.cli.common import (
    CaOpt,
    DatabaseUrlOpt,
    PrometheusUrlOpt,
    TlsCertOpt,
    TlsKeyOpt,
    build_settings,
    checked_ca,
    err_console,
    fail,
    open_store_or_exit,
)
from orchestrify.cli.controller import resolve_tokens
from orchestrify.cli.lifecycle import run_until_signalled
from orchestrify.controller.settings import ControllerSettings, default_data_dir
from orchestrify.edge import EdgeSettings, nginx_available, run_edge
from orchestrify.edge.runner import parse_listen


@dataclass(frozen=True)
class UpContext:
    """What every program started by `up` may need."""

    controller_url: str
    admin_token: str
    join_token: str
    data_dir: Path
    listen: str | None = "8080"
    edge_metrics_port: int = 18082
    ca: Path | None = None


def edge_program(ctx: UpContext) -> Coroutine[Any, Any, Any] | None:
    """The edge, with its own Nginx in DATA_DIR/nginx, when Nginx is installed."""
    if ctx.listen is None or not nginx_available():
        return None
    return run_edge(
        build_settings(
            EdgeSettings,
            controller_url=ctx.controller_url,
            token=ctx.admin_token,
            nginx_conf_dir=ctx.data_dir / "nginx",
            listen=ctx.listen,
            metrics_port=ctx.edge_metrics_port,
            name="edge",
            ca=ctx.ca,
            # `up` is a demo in one process: Ctrl-C stops everything it started, Nginx
            # too. A provisioned edge leaves Nginx serving (its own systemd unit).
            stop_nginx_on_exit=True,
        )
    )


# Each entry builds one more long-running coroutine from the context (or None to skip);
# `up` runs it next to the controller and the agent, and cancels it on Ctrl-C.
EXTRA_PROGRAMS: list[Callable[[UpContext], Coroutine[Any, Any, Any] | None]] = [edge_program]


def up(
    data_dir: Path = typer.Option(
        default_data_dir(), "--data-dir", help="Where the store, tokens and agent state live."
    ),
    database_url: str | None = DatabaseUrlOpt,
    port: int = typer.Option(18080, "--port", help="Port of the controller's REST API."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the API listens on."),
    metrics_port: int = typer.Option(
        DEFAULT_METRICS_PORT, "--metrics-port", help="Port of the agent's Prometheus /metrics."
    ),
    listen: str = typer.Option(
        "8080", "--listen", help="Where Nginx serves the services: PORT or HOST:PORT."
    ),
    edge_metrics_port: int = typer.Option(
        18082, "--edge-metrics-port", help="Port of the edge's Prometheus /metrics."
    ),
    no_edge: bool = typer.Option(False, "--no-edge", help="Do not run the edge and Nginx."),
    prometheus_url: str | None = PrometheusUrlOpt,
    tls_cert: Path | None = TlsCertOpt,
    tls_key: Path | None = TlsKeyOpt,
    ca: Path | None = CaOpt,  # with --tls-cert: what this agent and edge verify it with
) -> None:
    """Run everything on this host in one process: the controller and an agent that runs
    replicas on the local Docker engine. The quickest way to start.

    Ctrl-C stops orchestrify but leaves the containers running; the next `up` adopts them.
    """
    if not no_edge:
        try:
            parse_listen(listen)  # before anything starts
        except ValueError as exc:
            raise fail(f"--{exc}", code=2) from None
    given = build_settings(
        ControllerSettings,
        host=host,
        port=port,
        data_dir=data_dir,
        **({"database_url": database_url} if database_url is not None else {}),
        **({"prometheus_url": prometheus_url} if prometheus_url is not None else {}),
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    ca = checked_ca(ca)
    admin_source = _token_source(given.token, data_dir / "admin.token", "ORCHESTRIFY_TOKEN")
    join_source = _token_source(given.join_token, data_dir / "join.token", "ORCHESTRIFY_JOIN_TOKEN")
    open_store_or_exit(given)  # before a token is generated or a port taken
    settings = resolve_tokens(given)
    assert settings.token is not None and settings.join_token is not None
    connect = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in connect:  # an IPv6 literal goes in brackets in a URL (the clients check it)
        connect = f"[{connect}]"
    scheme = "https" if settings.tls else "http"
    ctx = UpContext(
        controller_url=f"{scheme}://{connect}:{port}",
        admin_token=settings.token,
        join_token=settings.join_token,
        data_dir=data_dir,
        listen=None if no_edge else listen,
        edge_metrics_port=edge_metrics_port,
        ca=ca,
    )
    agent_settings = AgentSettings(
        controller_url=ctx.controller_url,
        join_token=ctx.join_token,
        name=default_node_name(),
        advertise_address="127.0.0.1",
        state_dir=data_dir / "agent",
        metrics_port=metrics_port,
        ca=ca,
    )
    # The tokens themselves are printed once, by resolve_tokens, when they are generated;
    # every later start says where they are, so a log of `up` holds no secret.
    err_console.print(
        f"orchestrify is starting: API {ctx.controller_url} (docs at /docs), data in {data_dir}\n"
        f"  admin token: {admin_source}\n"
        f"  join token:  {join_source}  (for `orchestrify agent` on other hosts)\n"
        "Next steps, in another shell:\n"
        "  orchestrify demo-image\n"
        "  orchestrify service create orchestrify/demo:latest --name web --replicas 3\n"
        "  orchestrify ps\n"
        + (
            f"  curl http://127.0.0.1:{ctx.listen.rsplit(':', 1)[-1]}/web/   (through Nginx)\n"
            if ctx.listen and nginx_available()
            else "  (Nginx is not installed: no edge; `apt-get install nginx` to get one)\n"
        )
        + "Ctrl-C stops orchestrify; the containers keep running.",
        markup=False,
        soft_wrap=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_up(settings, agent_settings, ctx))


def _token_source(given: str | None, path: Path, env: str) -> str:
    """Where a token is found, never the token: the variable it came from, or its file."""
    return f"from {env}" if given else f"in {path}"


async def run_up(
    settings: ControllerSettings, agent_settings: AgentSettings, ctx: UpContext
) -> None:
    """The controller, the agent and any extra program, until a signal."""
    from orchestrify.controller.app import KEEP_ALIVE_S, ControllerServer, create_app

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,  # as `orchestrify controller`: above the heartbeat
        timeout_graceful_shutdown=2,  # agents' long-polls would hold shut-down for 30 s
        # HTTPS only when set: no plain-HTTP listener beside it
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
    )
    # `up` owns SIGINT/SIGTERM for every program it runs.
    server = ControllerServer(config, handle_signals=False)
    serving = asyncio.create_task(server.serve(), name="controller")
    while not server.started:
        if serving.done():
            serving.result()  # its error, e.g. the port in use
            raise fail(f"the controller stopped while starting on port {settings.port}")
        await asyncio.sleep(0.05)
    extra = [make(ctx) for make in EXTRA_PROGRAMS]
    programs = [Agent(agent_settings).run(), *(p for p in extra if p is not None)]
    try:
        await run_until_signalled([*programs, _wait(serving)])
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving


async def _wait(task: asyncio.Task[Any]) -> None:
    await asyncio.shield(task)
