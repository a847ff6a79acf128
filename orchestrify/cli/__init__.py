"""The ``orchestrify`` command line. One module per command group; this one wires them."""

from __future__ import annotations

import typer

from orchestrify.cli.demo import demo_image

app = typer.Typer(
    name="orchestrify",
    help="Keep HTTP services fast and alive on plain Docker hosts.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("demo-image")(demo_image)


def main() -> None:
    app()
