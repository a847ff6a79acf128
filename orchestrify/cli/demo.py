"""`orchestrify demo-image`: build the demo application image on the local Docker engine."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrify.demo import DEFAULT_TAG, build_demo_image
from orchestrify.errors import OrchestrifyError


def demo_image(
    tag: Annotated[
        str, typer.Option("--tag", "-t", help="Name and tag to give the built image.")
    ] = DEFAULT_TAG,
    docker_url: Annotated[
        str | None,
        typer.Option(
            "--docker-url",
            help="Docker engine to build on, e.g. unix:///var/run/docker.sock or "
            "tcp://10.0.0.5:2375. Default: DOCKER_HOST, else the local socket.",
        ),
    ] = None,
) -> None:
    """Build the demo HTTP service image, without any registry, and print its id.

    The image is FROM scratch plus this host's static busybox (apt-get install
    busybox-static). A container of it listens on port 8000 and answers:

    \b
      ANY /...                 hello from <replica> (<METHOD>) and the path
                               ("hello" is the GREETING env var's default)
      GET /health              200 ok, or 500 once switched off
      GET /admin/health?ok=0   switch /health to 500 (ok=1 switches it back)
      GET /admin/latency?ms=N  add N ms (0-60000) to every later app request
      GET /admin/state         show both switches

    <replica> is the ORCHESTRIFY_REPLICA env var if set, else the container's hostname.
    Each request is one line of the container's log (docker logs).

    Try it: docker run --rm -p 8000:8000 orchestrify/demo:latest
    """
    try:
        image_id = build_demo_image(tag=tag, docker_url=docker_url)
    except OrchestrifyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(image_id)
