"""`orchestrify agent`: run the agent of one worker host."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import typer

from orchestrify.agent import Agent, AgentSettings, HealSettings, default_node_name
from orchestrify.agent.log_collector import parse_log_collector
from orchestrify.agent.settings import DEFAULT_DOCKER_URL, DEFAULT_METRICS_PORT, default_state_dir
from orchestrify.cli.common import CaOpt, checked_ca, fail
from orchestrify.cli.lifecycle import run_until_signalled
from orchestrify.client import parse_controller_urls
from orchestrify.errors import InvalidSpec


def agent(
    controller_url: str = typer.Option(
        ...,
        "--controller",
        envvar="ORCHESTRIFY_URL",
        help="URL of the controller, e.g. http://10.0.0.1:18080, or several separated by "
        "commas (URL1,URL2) to fail over between; --ca applies to all of them.",
    ),
    join_token: str = typer.Option(
        ...,
        "--join-token",
        envvar="ORCHESTRIFY_JOIN_TOKEN",
        help="The controller's join token (in its DATA_DIR/join.token).",
    ),
    name: str = typer.Option(
        default_node_name(), "--name", help="Node name shown in `orchestrify node ls`."
    ),
    advertise_address: str | None = typer.Option(
        None,
        "--advertise-address",
        help="Pin the address of this host that Nginx and the controller reach replicas "
        "at. Default: detected at start and at every heartbeat (the source address towards "
        "the controller), so a host whose address changes takes its replicas along.",
    ),
    docker_url: str = typer.Option(
        DEFAULT_DOCKER_URL, "--docker-url", help="Docker engine to run the containers on."
    ),
    fault_interval: float = typer.Option(
        1.0, "--fault-interval", min=0.05, help="Seconds between health probes of a replica."
    ),
    unhealthy_threshold: int = typer.Option(
        3, "--unhealthy-threshold", min=1, help="Failed probes in a row before replacing."
    ),
    max_replacements: int = typer.Option(
        5,
        "--max-replacements",
        min=1,
        help="Replacements within --replacement-window before the replica is reported "
        "failed (the controller then moves it to another node).",
    ),
    replacement_window: float = typer.Option(
        120.0, "--replacement-window", min=1, help="Seconds, for --max-replacements."
    ),
    state_dir: Path = typer.Option(
        default_state_dir(),
        "--state-dir",
        help="Where the node id and token are kept, so a restart is the same node.",
    ),
    metrics_port: int = typer.Option(
        DEFAULT_METRICS_PORT, "--metrics-port", help="Port of the agent's Prometheus /metrics."
    ),
    log_collector: str | None = typer.Option(
        None,
        "--log-collector",
        envvar="ORCHESTRIFY_LOG_COLLECTOR",
        metavar="ADDRESS",
        help="Send the logs of services that chose no log driver of their own to this "
        "syslog collector (the control host's rsyslog, role log_collector): "
        "udp://HOST:PORT, e.g. udp://10.0.0.10:514 (UDP only: a TCP collector that is "
        "down would keep replicas from starting). Their containers "
        "then use Docker's syslog driver (RFC 5424, tag = the service's name); "
        "`orchestrify service logs` still reads Docker's local copy. New containers only: "
        "running ones are not replaced. Default: none (logs stay on this node).",
    ),
    ca: Path | None = CaOpt,
) -> None:
    """Run the agent of this host: register with the controller, run the replicas it
    assigns here on the local Docker engine, probe their health and replace sick ones.

    Containers keep running when the agent stops; the next start adopts them.
    """
    try:
        urls = parse_controller_urls(controller_url)
        collector = parse_log_collector(log_collector) if log_collector else None
    except InvalidSpec as exc:
        raise fail(str(exc), code=2) from None
    settings = AgentSettings(
        controller_url=",".join(urls),
        join_token=join_token,
        name=name,
        advertise_address=advertise_address,
        docker_url=docker_url,
        state_dir=state_dir,
        metrics_port=metrics_port,
        ca=checked_ca(ca),
        log_collector=collector,
        heal=HealSettings(
            fault_interval_s=fault_interval,
            probe_timeout_s=min(0.8, fault_interval * 0.8),
            unhealthy_threshold=unhealthy_threshold,
            max_replacements=max_replacements,
            replacement_window_s=replacement_window,
        ),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_until_signalled([Agent(settings).run()]))
