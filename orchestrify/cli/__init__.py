"""The ``orchestrify`` command line. One module per command group; this one wires them."""

from __future__ import annotations

import typer

from orchestrify.cli.config import config_app

app = typer.Typer(
    name="orchestrify",
    help="Keep HTTP services fast and alive on plain Docker hosts.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(config_app, name="config")


def main() -> None:
    app()
