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

node_app = typer.Typer(
    help="List, inspect, drain and remove worker nodes; adopt or prune their orphans.",
    no_args_is_help=True,
)


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
        return
    orphans = data.pop("orphaned", None) or []
    pruning = set(data.pop("pruning", None) or [])
    print_fields([*data.items(), ("orphaned", len(orphans))])
    if orphans:
        typer.echo(
            f"\n{len(orphans)} orphaned container(s): running, but no replica of this "
            f"controller accounts for them. `orchestrify node adopt {data['id']}` makes them "
            f"replicas again (services of the same name); `orchestrify node prune "
            f"{data['id']}` removes them."
        )
        print_table(
            ["CONTAINER", "REPLICA", "SERVICE", "ADDRESS", "IMAGE", "SPEC", "STATE"],
            (
                [
                    o["container_id"][:12],
                    o["replica"],
                    o["service"],
                    o.get("address"),
                    o.get("image"),
                    o.get("spec_hash"),
                    "pruning" if o["container_id"] in pruning else "orphaned",
                ]
                for o in orphans
            ),
            empty="",
        )


@node_app.command("adopt")
@handle_errors
def adopt(ctx: typer.Context, node: str, json_out: bool = JsonOpt) -> None:
    """Make a node's orphaned containers replicas again, without restarting them.

    Each orphan whose service exists (by name) becomes a replica of it; one whose spec
    differs from the service's is replaced by a rolling update. Orphans of services
    that do not exist stay orphans."""
    with config(ctx).client() as api:
        data = api.request("POST", f"/v1/nodes/{node}/adopt")
    if json_out:
        print_json(data)
    else:
        typer.echo(data["message"])


@node_app.command("prune")
@handle_errors
def prune(ctx: typer.Context, node: str, json_out: bool = JsonOpt) -> None:
    """Remove a node's orphaned containers (the agent stops and removes them)."""
    with config(ctx).client() as api:
        data = api.request("POST", f"/v1/nodes/{node}/prune")
    if json_out:
        print_json(data)
    else:
        typer.echo(data["message"])


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
        if force:
            api.request("DELETE", f"/v1/nodes/{node}", params={"force": True})
        else:
            api.request("POST", f"/v1/nodes/{node}/drain", params={"remove": True})
    typer.echo(
        f"node {node} removed"
        if force
        else f"node {node} draining; it is removed once its replicas have moved"
    )
