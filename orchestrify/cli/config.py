"""``orchestrify config``: render the monitoring configuration orchestrify ships."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from orchestrify.config_render import PROFILES, TEMPLATE_DEFAULTS, render_config
from orchestrify.errors import OrchestrifyError

config_app = typer.Typer(
    help="Render the Prometheus, Alertmanager and Grafana configuration orchestrify ships.",
    no_args_is_help=True,
)

_LIST_VARIABLES = frozenset({"alertmanager_targets", "rule_files"})
_USED_BY = {
    "prometheus.yml": "Prometheus (--config.file)",
    "rules.yml": "Prometheus (keep beside prometheus.yml)",
    "alertmanager.yml": "Alertmanager (--config.file)",
    "grafana-dashboard.json": "Grafana (Dashboards > Import)",
}


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


@config_app.command("render")
def render(
    out: Path | None = typer.Option(
        None,
        "--out",
        metavar="DIR",
        help="Folder to write prometheus.yml, rules.yml, alertmanager.yml and "
        "grafana-dashboard.json into (created if missing). Required.",
        show_default=False,
    ),
    controller_url: str = typer.Option(
        "http://127.0.0.1:18080",
        "--controller-url",
        metavar="URL",
        help="Where Prometheus and Alertmanager reach the controller; several controllers "
        "separated by commas (URL1,URL2) get a webhook and a scrape target each.",
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        metavar="TOKEN",
        envvar="ORCHESTRIFY_TOKEN",
        help="The controller's bearer token (or set ORCHESTRIFY_TOKEN). Required.",
        show_default=False,
        show_envvar=True,
    ),
    alertmanager: list[str] | None = typer.Option(
        None,
        "--alertmanager",
        metavar="HOST:PORT",
        help="host:port of an Alertmanager Prometheus sends alerts to; repeat for several. "
        "[default: 127.0.0.1:9093]",
        show_default=False,
    ),
    profile: str = typer.Option(
        "standard",
        "--profile",
        metavar="|".join(PROFILES),
        help="Alerting profile: 'standard' (5 s scrapes, 1-2 min windows, `for` of 30 s: a "
        "breach reaches the controller in about a minute) or 'fast' (1 s scrapes and "
        "evaluations, 3-10 s windows, `for` of 5 s: within seconds, for about 5x the "
        "scrapes). --set values win over the profile's. See docs/monitoring.md.",
    ),
    settings: list[str] | None = typer.Option(
        None,
        "--set",
        metavar="NAME=VALUE",
        help="Override a template variable, e.g. --set for_latency=1m; repeatable. Names: "
        + ", ".join(sorted(set(TEMPLATE_DEFAULTS) - _LIST_VARIABLES))
        + ".",
        show_default=False,
    ),
) -> None:
    """Render the monitoring config into a folder.

    Example:

        orchestrify config render --out ./monitoring --token "$TOKEN"

        orchestrify config render --profile fast --out ./monitoring --token "$TOKEN"

    Then run Prometheus with --config.file=./monitoring/prometheus.yml
    and Alertmanager with --config.file=./monitoring/alertmanager.yml.
    Files that hold the token get mode 0600. See docs/monitoring.md.
    """
    if out is None:
        raise _fail("--out is required: the folder to write the config files into")
    if not token:
        raise _fail("no token: pass --token or set ORCHESTRIFY_TOKEN")
    overrides: dict[str, object] = {}
    for item in settings or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise _fail(f"--set takes NAME=VALUE, got {item!r}")
        if name in _LIST_VARIABLES:
            raise _fail(f"{name} is a list: use its own option (--alertmanager) instead of --set")
        overrides[name.strip()] = value.strip()
    if alertmanager:
        overrides["alertmanager_targets"] = list(alertmanager)
    try:
        paths = render_config(
            out_dir=out,
            controller_url=controller_url,
            token=token,
            profile=profile,
            **overrides,
        )
    except (OrchestrifyError, OSError) as exc:
        raise _fail(str(exc)) from exc

    table = Table(
        title=f"Wrote {len(paths)} files to {out} (alerting profile: {profile})",
        title_justify="left",
    )
    table.add_column("file")
    table.add_column("mode")
    table.add_column("bytes", justify="right")
    table.add_column("used by")
    for path in paths:
        stat = path.stat()
        table.add_row(
            path.name, oct(stat.st_mode & 0o777)[2:], str(stat.st_size), _USED_BY[path.name]
        )
    Console().print(table)
