"""The ``orchestrify`` command line. One module per command group; this one wires them."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from orchestrify.cli.agent import agent
from orchestrify.cli.alerts import alert_app
from orchestrify.cli.cluster import cluster_app
from orchestrify.cli.common import CaOpt, CliConfig, checked_ca
from orchestrify.cli.config import config_app
from orchestrify.cli.controller import controller
from orchestrify.cli.demo import demo_image
from orchestrify.cli.edge import edge
from orchestrify.cli.events import events
from orchestrify.cli.jobs import job_app
from orchestrify.cli.nodes import node_app
from orchestrify.cli.replicas import ps, replica_app
from orchestrify.cli.rules import rules_app
from orchestrify.cli.services import service_app
from orchestrify.cli.up import up
from orchestrify.client import DEFAULT_URL
from orchestrify.logs import setup_logging

app = typer.Typer(
    name="orchestrify",
    help="Keep HTTP services fast and alive on plain Docker hosts: self-healing, "
    "autoscaling from Prometheus alerts, Nginx kept in step.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@app.callback()
def root(
    ctx: typer.Context,
    controller_url: str = typer.Option(
        DEFAULT_URL,
        "--controller",
        envvar="ORCHESTRIFY_URL",
        help="Controller API URL, or several separated by commas (URL1,URL2): each call "
        "goes to the one in use and fails over to the next when it does not answer.",
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="ORCHESTRIFY_TOKEN", help="Admin token of the controller."
    ),
    ca: Path | None = CaOpt,
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    log_format: str = typer.Option(
        "text", "--log-format", help="text (people) or json (machines)."
    ),
) -> None:
    setup_logging(level=log_level, fmt=log_format)
    if token is None:
        token = _token_from_default_data_dir()
    ctx.obj = CliConfig(controller=controller_url, token=token, ca=checked_ca(ca))


def _token_from_default_data_dir() -> str | None:
    """On the controller's own host, the CLI finds the admin token without being told."""
    from orchestrify.controller.settings import default_data_dir

    path = default_data_dir() / "admin.token"
    try:
        return path.read_text().strip() if os.access(path, os.R_OK) else None
    except OSError:
        return None


app.command("up")(up)
app.command("controller")(controller)
app.command("agent")(agent)
app.add_typer(service_app, name="service")
app.add_typer(node_app, name="node")
app.add_typer(replica_app, name="replica")
app.add_typer(job_app, name="job")
app.add_typer(cluster_app, name="cluster")
app.command("ps")(ps)
app.command("events")(events)
app.command("demo-image")(demo_image)
app.add_typer(config_app, name="config")
app.add_typer(rules_app, name="rules")
app.add_typer(alert_app, name="alert")
app.command("edge")(edge)


def main() -> None:
    app()
