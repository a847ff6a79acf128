"""`orchestrify node ...`: the worker hosts."""

from __future__ import annotations

import typer

from orchestrify.cli.common import (
    JsonOpt,
    ago,
    config,
    handle_errors,
    human_bytes,
    print_fields,
    print_json,
    print_table,
)

node_app = typer.Typer(help="List, inspect, drain and remove worker nodes.", no_args_is_help=True)


@node_app.command("ls")
@handle_errors
def ls(ctx: typer.Context, json_out: bool = JsonOpt) -> None:
    """List nodes with their state (ready, not_ready, draining) and load."""
    with config(ctx).client() as api:
        nodes = api.get("/v1/nodes")
    if json_out:
        print_json(nodes)
        return
    print_table(
        ["ID", "NAME", "ADDRESS", "STATE", "REPLICAS", "CPU", "MEM FREE", "HEARTBEAT"],
        (
            [
                n["id"],
                n["name"],
                n["address"],
                n["state"],
                n["replica_count"],
                f"{n['cpu_percent']:.0f}%" if n.get("cpu_percent") is not None else None,
                human_bytes(n.get("memory_free")),
                ago(n.get("last_heartbeat")),
            ]
            for n in nodes
        ),
        empty="no nodes: start an agent (`orchestrify agent --controller URL --join-token J`) "
        "or `orchestrify up`",
    )


@node_app.command("inspect")
@handle_errors
def inspect(ctx: typer.Context, node: str, json_out: bool = JsonOpt) -> None:
    """Show one node (by id or name)."""
    with config(ctx).client() as api:
        data = api.get(f"/v1/nodes/{node}")
    if json_out:
        print_json(data)
    else:
        print_fields(list(data.items()))


@node_app.command("drain")
@handle_errors
def drain(ctx: typer.Context, node: str) -> None:
    """Move a node's replicas to other nodes and place nothing new on it."""
    with config(ctx).client() as api:
        data = api.request("POST", f"/v1/nodes/{node}/drain")
    typer.echo(f"node {data['name']} draining: its replicas move to other nodes")


@node_app.command("activate")
@handle_errors
def activate(ctx: typer.Context, node: str) -> None:
    """Undo a drain: the node takes replicas again."""
    with config(ctx).client() as api:
        data = api.request("POST", f"/v1/nodes/{node}/activate")
    typer.echo(f"node {data['name']} is {data['state']}")


@node_app.command("rm")
@handle_errors
def rm(
    ctx: typer.Context,
    node: str,
    force: bool = typer.Option(False, "--force", help="Forget it now without draining."),
) -> None:
    """Remove a node: drain it first, then forget it once its replicas have moved."""
    with config(ctx).client() as api:
        api.request("DELETE", f"/v1/nodes/{node}", params={"force": force})
    typer.echo(
        f"node {node} removed"
        if force
        else f"node {node} draining; it is removed once its replicas have moved"
    )
