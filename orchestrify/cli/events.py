"""`orchestrify events`: the audit trail."""

from __future__ import annotations

import time

import typer

from orchestrify.cli.common import JsonOpt, config, handle_errors, print_json, print_table

# How long one wait for new events lasts, seconds: under the client's 10 s read timeout.
FOLLOW_WAIT_S = 5.0


@handle_errors
def events(
    ctx: typer.Context,
    service: str | None = typer.Option(None, "--service", "-s", help="Only this service."),
    since: str | None = typer.Option(None, "--since", help="How far back: 30s, 15m, 2h, 1d."),
    kind: str | None = typer.Option(
        None, "--kind", help="alert, decision, action, node, replica or job."
    ),
    limit: int = typer.Option(200, "--limit", help="At most this many (newest)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
    json_out: bool = JsonOpt,
) -> None:
    """Show every alert received, decision taken or refused (with its reason), and action."""
    with config(ctx).client() as api:
        rows = api.get("/v1/events", service=service, since=since, kind=kind, limit=limit)
        _show(rows, json_out=json_out, header=True)
        last = rows[-1]["id"] if rows else 0
        while follow:
            # A long-poll: the controller answers as soon as any controller writes one.
            started = time.monotonic()
            rows = api.get("/v1/events", service=service, kind=kind, after=last, wait=FOLLOW_WAIT_S)
            if not rows and time.monotonic() - started < 1.0:
                time.sleep(1.0)  # a controller that does not long-poll: poll each second
            if rows:
                _show(rows, json_out=json_out, header=False)
                last = rows[-1]["id"]


def _show(rows: list[dict[str, object]], *, json_out: bool, header: bool) -> None:
    if json_out:
        print_json(rows)
        return
    if not rows and not header:
        return
    print_table(
        ["TIME", "KIND", "SERVICE", "ACTION", "OUTCOME", "MESSAGE", "REASON"],
        (
            [
                str(e["time"])[11:19],
                e["kind"],
                e.get("service"),
                e.get("action"),
                e.get("outcome"),
                e["message"],
                e.get("reason") if e.get("reason") != e["message"] else None,
            ]
            for e in rows
        ),
        empty="no events",
    )
