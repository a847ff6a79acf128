"""`orchestrify rules ...`: the alert -> action mapping (list it, replace it from a file)."""

from __future__ import annotations

from pathlib import Path

import typer

from orchestrify.alerting.rules import AlertRule, describe, load_rules
from orchestrify.cli.common import JsonOpt, config, console, handle_errors, print_json, print_table

rules_app = typer.Typer(
    help="Alert -> action rules: which Alertmanager alert scales, replaces or reschedules.",
    no_args_is_help=True,
)


@rules_app.command("ls")
@handle_errors
def ls(ctx: typer.Context, json_out: bool = JsonOpt) -> None:
    """List the rules in order (the first matching rule wins)."""
    with config(ctx).client() as api:
        got = api.get("/v1/rules")
    if json_out:
        print_json(got)
        return
    rows = []
    for raw in got["rules"]:
        rule = AlertRule.model_validate(raw)
        rows.append(
            [
                rule.name,
                ", ".join(rule.matchers),
                rule.action.value,
                describe(rule),
                "yes" if rule.enabled else "no",
            ]
        )
    print_table(["NAME", "MATCHERS", "ACTION", "PARAMS", "ENABLED"], rows, empty="no rules")
    console.print(f"source: {got['source']}", markup=False)


@rules_app.command("apply")
@handle_errors
def apply(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="YAML file with a top-level 'rules' list."),
) -> None:
    """Validate FILE, then replace every rule of the controller with it."""
    rules = load_rules(file)  # bad input stops here with exit code 2, nothing sent
    body = rules.model_dump(mode="json", exclude_defaults=True)
    with config(ctx).client() as api:
        got = api.request("PUT", "/v1/rules", json=body)
    console.print(f"applied {len(got['rules'])} rule(s) from {file}", markup=False)
