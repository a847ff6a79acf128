"""`orchestrify cluster ...`: the controllers sharing one store, and which one leads."""

from __future__ import annotations

import typer

from orchestrify.cli.common import JsonOpt, ago, config, handle_errors, print_json, print_table

cluster_app = typer.Typer(
    help="The controllers that share the database, which one leads and since when.",
    no_args_is_help=True,
)


@cluster_app.command("ls")
@handle_errors
def ls(ctx: typer.Context, json_out: bool = JsonOpt) -> None:
    """List every controller that ran on the store: its role (leader, follower, or gone
    when it has not renewed or tried the lease for a lease period), when it was elected,
    when it was last seen, the leader's epoch (one more at every election) and its
    version."""
    with config(ctx).client() as api:
        view = api.get("/v1/cluster")
    if json_out:
        print_json(view)
        return
    print_table(
        ["ID", "URL", "ROLE", "LEADER SINCE", "LAST SEEN", "EPOCH", "VERSION"],
        (
            [
                c["id"],
                c.get("url"),
                c.get("state") or ("leader" if c["leader"] else "follower"),
                ago(c.get("leader_since")) if c["leader"] else "-",
                ago(c.get("last_seen")),
                view.get("epoch") if c["leader"] else None,
                c.get("version"),
            ]
            for c in view["controllers"]
        ),
        empty="no controllers have run on this store yet",
    )
