"""`orchestrify alert ls`: the alert episodes and the decisions they led to."""

from __future__ import annotations

from typing import Any

import typer

from orchestrify.cli.common import JsonOpt, ago, config, handle_errors, print_json, print_table

alert_app = typer.Typer(
    help="Alerts Alertmanager sent: each episode (one firing of one alert) and what the "
    "controller decided on it.",
    no_args_is_help=True,
)


def _about(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={labels[k]}" for k in ("service", "replica", "node") if k in labels)


def _decision(decisions: list[dict[str, Any]]) -> str:
    """The latest decision in a few words ("scale_out ok: rule load-scale-out"), and how
    many there were."""
    if not decisions:
        return "none"
    last = decisions[0]
    words = f"{last.get('action')} {last.get('outcome')}"
    if last.get("reason"):
        words += f": {last['reason']}"
    if len(decisions) > 1:
        words += f" (+{len(decisions) - 1} earlier)"
    return words


@alert_app.command("ls")
@handle_errors
def ls(
    ctx: typer.Context,
    status: str | None = typer.Option(
        None, "--status", help="Only 'firing' or only 'resolved' episodes (default: both)."
    ),
    limit: int = typer.Option(
        100, "--limit", help="At most this many of each status, newest first (1 to 1000)."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """List alert episodes, firing first, each with the latest decision it led to (its
    action, outcome and reason: the rule that acted, or why it was refused)."""
    with config(ctx).client() as api:
        episodes = api.get("/v1/alerts", status=status, limit=limit)
    if json_out:
        print_json(episodes)
        return
    print_table(
        ["ALERT", "ABOUT", "STATUS", "BEGAN", "RESOLVED", "LAST NOTICE", "DECISION"],
        (
            [
                e["alertname"],
                _about(e["labels"]),
                e["status"],
                ago(e["starts_at"]),
                ago(e["resolved_at"]) if e["resolved_at"] else None,
                ago(e["last_seen_at"]),
                _decision(e["decisions"]),
            ]
            for e in episodes
        ),
        empty="no alert received yet",
    )
