"""`orchestrify ps` and `orchestrify replica ...`: the containers behind services."""

from __future__ import annotations

from typing import Any

import typer

from orchestrify.cli.common import (
    JsonOpt,
    ago,
    config,
    handle_errors,
    print_fields,
    print_json,
    print_table,
)
from orchestrify.cli.logs import (
    FollowOpt,
    NoPrefixOpt,
    SinceOpt,
    TailOpt,
    TimestampsOpt,
    logs_command,
)

replica_app = typer.Typer(help="Inspect or remove single replicas.", no_args_is_help=True)


def print_replicas(replicas: list[dict[str, Any]], *, json_out: bool) -> None:
    if json_out:
        print_json(replicas)
        return
    print_table(
        [
            "ID",
            "SERVICE",
            "NODE",
            "STATE",
            "DESIRED",
            "GEN",
            "ADDRESS",
            "RESTARTS",
            "UPDATED",
            "ERROR",
        ],
        (
            [
                r["id"],
                r["service"],
                r.get("node_name") or r["node"],
                r["state"],
                r["desired"],
                r.get("generation", 1),
                r.get("address"),
                r.get("restarts", 0),
                ago(r.get("updated_at")),
                (r.get("error") or "")[:80],
            ]
            for r in replicas
        ),
        empty="no replicas",
    )


@handle_errors
def ps(
    ctx: typer.Context,
    service: str | None = typer.Option(None, "--service", "-s", help="Only this service."),
    node: str | None = typer.Option(None, "--node", "-n", help="Only this node (id or name)."),
    json_out: bool = JsonOpt,
) -> None:
    """List all replicas with their node, state and address."""
    with config(ctx).client() as api:
        replicas = api.get("/v1/replicas", service=service, node=node)
    print_replicas(replicas, json_out=json_out)


@replica_app.command("inspect")
@handle_errors
def inspect(ctx: typer.Context, replica_id: str, json_out: bool = JsonOpt) -> None:
    """Show one replica: state, address, container, last error."""
    with config(ctx).client() as api:
        rep = api.get(f"/v1/replicas/{replica_id}")
    if json_out:
        print_json(rep)
    else:
        print_fields(list(rep.items()))


@replica_app.command("logs")
@handle_errors
def logs(
    ctx: typer.Context,
    replica_id: str,
    follow: bool = FollowOpt,
    since: str | None = SinceOpt,
    tail: int | None = TailOpt,
    timestamps: bool = TimestampsOpt,
    no_prefix: bool = NoPrefixOpt,
) -> None:
    """Print one replica's stdout and stderr (its earlier containers' too, while Docker
    keeps them), as `orchestrify service logs` does."""
    with config(ctx).client() as api:
        rep = api.get(f"/v1/replicas/{replica_id}")
    logs_command(
        ctx,
        f"/v1/replicas/{replica_id}/logs",
        service=rep.get("service"),
        follow=follow,
        since=since,
        tail=tail,
        timestamps=timestamps,
        no_prefix=no_prefix,
    )


@replica_app.command("rm")
@handle_errors
def rm(
    ctx: typer.Context, replica_ids: list[str] = typer.Argument(..., help="Replica ids.")
) -> None:
    """Remove replicas; each is replaced unless its service was scaled down."""
    with config(ctx).client() as api:
        for rid in replica_ids:
            api.request("POST", f"/v1/replicas/{rid}/stop")
            typer.echo(f"{rid} draining, then stopping (a replacement is placed)")
