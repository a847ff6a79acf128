"""`orchestrify edge`: keep a local Nginx pointed at the healthy replicas."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import typer

from orchestrify.cli.common import build_settings, config, fail
from orchestrify.process_privacy import forbid_same_user_inspection


def edge(
    ctx: typer.Context,
    controller_url: str | None = typer.Option(
        None,
        "--controller",
        envvar="ORCHESTRIFY_URL",
        help="Controller API URL, or several separated by commas to fail over between "
        "(default: the global --controller).",
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="ORCHESTRIFY_TOKEN",
        help="Admin token of the controller (default: the global --token).",
    ),
    nginx_conf_dir: Path = typer.Option(
        ...,
        "--nginx-conf-dir",
        help="Folder the edge owns: it writes nginx.conf and upstreams.conf there and "
        "runs Nginx with it as prefix (pid, error.log, temp files).",
    ),
    nginx_bin: str = typer.Option("nginx", "--nginx-bin", help="The nginx binary to run."),
    listen: str = typer.Option(
        "8080", "--listen", help="Where Nginx takes traffic: PORT or HOST:PORT."
    ),
    domain: str = typer.Option(
        "localhost", "--domain", help="Service NAME answers on Host NAME.<domain> (and /NAME/)."
    ),
    metrics_port: int = typer.Option(
        18082, "--metrics-port", help="Port of the edge's Prometheus /metrics (0: off)."
    ),
    metrics_host: str = typer.Option(
        "127.0.0.1", "--metrics-host", help="Address /metrics listens on."
    ),
    metrics_url: str | None = typer.Option(
        None,
        "--metrics-url",
        help="URL Prometheus scrapes this edge at, told to the controller for discovery "
        "(default: http://<metrics-host>:<metrics-port>/metrics).",
    ),
    name: str | None = typer.Option(
        None, "--name", help="Name this edge registers under (default: the host name)."
    ),
    templates_dir: Path | None = typer.Option(
        None, "--templates-dir", help="Use these nginx.conf.j2/upstreams.conf.j2 instead."
    ),
    nginx_start_command: str | None = typer.Option(
        None,
        "--nginx-start-command",
        help="Command that starts Nginx when none runs from --nginx-conf-dir, e.g. "
        "'systemctl start orchestrify-nginx' so that it lives in its own unit "
        "(default: the edge starts it as a daemon of its own).",
    ),
    telemetry: str = typer.Option(
        "on",
        "--telemetry",
        help="on: per-request latency metrics for the alerts; off: none (only to "
        "measure what they cost).",
    ),
    access_log: str | None = typer.Option(
        None,
        "--access-log",
        envvar="ORCHESTRIFY_ACCESS_LOG",
        metavar="PATH",
        show_default=False,
        help="Also write every request to a service through the edge to this file, one "
        "JSON line each (time, service, replica, client, method, URI, status, timings, "
        "user agent, request id), for ELK, Loki or any log shipper. Nginx writes it "
        "itself, buffered (lines appear within a second), so requests are not slowed. "
        "Off by default. An absolute path in an existing directory the edge's user can "
        "write; rotate it with logrotate (docs/logs.md).",
    ),
    tls_cert: Path | None = typer.Option(
        None,
        "--tls-cert",
        envvar="ORCHESTRIFY_EDGE_TLS_CERT",
        help="PEM certificate the edge's /metrics serves HTTPS with (needs --tls-key).",
    ),
    tls_key: Path | None = typer.Option(
        None,
        "--tls-key",
        envvar="ORCHESTRIFY_EDGE_TLS_KEY",
        help="Unencrypted PEM private key of --tls-cert.",
    ),
    ca: Path | None = typer.Option(
        None,
        "--ca",
        envvar="ORCHESTRIFY_CA",
        help="PEM file of the CA that signed the controller's certificate "
        "(default: the global --ca, else the system's trust store).",
    ),
) -> None:
    """Run an edge: render Nginx from the controller's healthy replicas, reload it safely,
    and export request metrics.

    Every service NAME becomes reachable through Nginx at http://NAME.<domain>:<listen>/
    and at http://<host>:<listen>/NAME/. The edge starts Nginx (or adopts the one
    already running from --nginx-conf-dir) and reloads it only after `nginx -t` accepted
    the new config; a bad config never replaces a good one. Nginx outlives the edge: it
    keeps serving when the edge stops or restarts, and a restarted edge applies the view
    it saved last, even while the controller is away.
    """
    from orchestrify.edge import EdgeSettings, nginx_available, run_edge

    root = config(ctx)
    if telemetry not in ("on", "off"):
        raise fail(f"--telemetry must be on or off, not {telemetry!r}", code=2)
    if not nginx_available(nginx_bin):
        raise fail(f"{nginx_bin!r} not found on PATH; install nginx or pass --nginx-bin", code=2)
    settings = build_settings(
        EdgeSettings,
        controller_url=controller_url or root.controller,
        token=token or root.token,
        nginx_conf_dir=nginx_conf_dir,
        nginx_bin=nginx_bin,
        listen=listen,
        domain=domain,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        metrics_url=metrics_url,
        templates_dir=templates_dir,
        nginx_start_command=nginx_start_command,
        telemetry=telemetry == "on",
        access_log=access_log,
        tls_cert=tls_cert,
        tls_key=tls_key,
        ca=ca or root.ca,
        **({"name": name} if name else {}),
    )
    # The token is in this process's environment and memory; its Nginx may run as the
    # same user (roles/orchestrify_edge) and must not be able to read them.
    forbid_same_user_inspection()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_edge(settings))
