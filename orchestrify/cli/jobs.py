"""`orchestrify job`: run playbooks through the controller and watch them."""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from orchestrify.cli.common import (
    JsonOpt,
    ago,
    config,
    console,
    err_console,
    fail,
    handle_errors,
    print_fields,
    print_json,
    print_table,
)
from orchestrify.client import ControllerClient
from orchestrify.errors import NodeUnreachable

job_app = typer.Typer(
    help="Run Ansible playbooks from the controller (through ansible-runner) and follow them. "
    "Jobs on the same host run one after the other; jobs on different hosts run at once.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
_STATS = ("ok", "changed", "unreachable", "failures", "skipped", "rescued", "ignored")


def parse_extra(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that is valid JSON (3, true, [1,2], {"a":1}) keeps its type."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise fail(f"--extra {pair!r}: expected KEY=VALUE", code=2)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


@job_app.command("run")
@handle_errors
def run(
    ctx: typer.Context,
    playbook: str = typer.Argument(
        ..., help="Playbook file inside the controller's playbook directory, e.g. workers.yml."
    ),
    limit: str | None = typer.Option(
        None,
        "--limit",
        "-l",
        help="Only these hosts or groups, as ansible's --limit: a,b or web:!a.",
    ),
    extra: list[str] = typer.Option(
        [],
        "--extra",
        "-e",
        help="Extra variable KEY=VALUE (repeat for more); a JSON VALUE keeps its type.",
    ),
    reason: str | None = typer.Option(None, "--reason", help="Why; recorded in the event trail."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Print the job id and return."),
) -> None:
    """Run a playbook on the controller and follow it: one line per task and host, then
    the PLAY RECAP. Exit code 0 when it succeeds, 1 when it fails, 2 for bad input."""
    extra_vars = parse_extra(extra)
    with config(ctx).client() as api:
        job = api.request(
            "POST",
            "/v1/jobs",
            json={"playbook": playbook, "limit": limit, "extra_vars": extra_vars, "reason": reason},
        )
        target = f"on {job['limit']}" if job.get("limit") else "on all hosts"
        console.print(
            f"job {job['id']}: {job['playbook']} {target} ({job['status']})", markup=False
        )
        if detach:
            return
        try:
            follow(api, job["id"])
        except KeyboardInterrupt:
            err_console.print(
                f"stopped following; job {job['id']} keeps running "
                f"(`orchestrify job cancel {job['id']}` stops it)",
                markup=False,
            )
            raise typer.Exit(130) from None
        final = api.get(f"/v1/jobs/{job['id']}")
    show_recap(final)
    if final["status"] != "successful":
        raise typer.Exit(1)


@job_app.command("logs")
@handle_errors
def logs(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="Job id (from `orchestrify job ls`)."),
    follow_: bool = typer.Option(
        True, "--follow/--no-follow", help="Keep printing until the job finishes."
    ),
) -> None:
    """Show a job's task results, then its PLAY RECAP."""
    with config(ctx).client() as api:
        follow(api, job_id, live=follow_)
        final = api.get(f"/v1/jobs/{job_id}")
    show_recap(final)


def follow(api: ControllerClient, job_id: str, *, live: bool = True) -> None:
    """Print the job's events until it finishes, resuming after a dropped connection."""
    last, retries = 0, 0
    while True:
        try:
            for ev in api.stream_ndjson(
                f"/v1/jobs/{job_id}/events", after=last, follow=str(live).lower()
            ):
                last = ev["counter"]
                retries = 0
                line = condense(ev)
                if line:
                    console.print(line, markup=False)
            return
        except NodeUnreachable:
            retries += 1
            if retries > 5:
                raise
            time.sleep(1.0)


def condense(ev: dict[str, Any]) -> str | None:
    """One line per result, as ansible-playbook prints them, without the banners."""
    name, host, task = ev["event"], ev.get("host"), ev.get("task")
    if name == "playbook_on_play_start":
        return f"PLAY [{ev.get('play') or ''}]"
    if name == "runner_on_ok":
        return f"{'changed' if ev.get('changed') else 'ok'}: [{host}] {task}"
    if name == "runner_on_skipped":
        return f"skipping: [{host}] {task}"
    if name in ("runner_on_failed", "runner_on_unreachable"):
        detail = (ev.get("stdout") or "").strip()
        return f"{detail or 'failed: [' + str(host) + ']'}  ({task})"
    if name == "runner_item_on_failed":
        return (ev.get("stdout") or "").strip() or None
    return None


def show_recap(job: dict[str, Any]) -> None:
    stats: dict[str, dict[str, int]] = job.get("stats") or {}
    if stats:
        console.print("PLAY RECAP", markup=False)
        print_table(
            ["HOST", *(s.upper() for s in _STATS)],
            ([host, *(counts.get(s, 0) for s in _STATS)] for host, counts in sorted(stats.items())),
            empty="",
        )
    verdict = f"job {job['id']} {job['status']}"
    if job.get("rc") is not None:
        verdict += f" (rc {job['rc']})"
    if job.get("error"):
        verdict += f": {job['error']}"
    out = console if job["status"] == "successful" else err_console
    out.print(verdict, markup=False, soft_wrap=True)


@job_app.command("ls")
@handle_errors
def ls(
    ctx: typer.Context,
    status: str | None = typer.Option(
        None,
        "--status",
        help="pending, running, successful, failed, canceled or lost (its controller "
        "stopped leading while it ran).",
    ),
    limit: int = typer.Option(50, "--last", help="At most this many, newest first."),
    json_out: bool = JsonOpt,
) -> None:
    """List jobs, newest first."""
    with config(ctx).client() as api:
        jobs = api.get("/v1/jobs", status=status, limit=limit)
    if json_out:
        print_json(jobs)
        return
    print_table(
        ["ID", "PLAYBOOK", "LIMIT", "STATUS", "RC", "CONTROLLER", "CREATED", "FINISHED", "REASON"],
        (
            [
                j["id"],
                j["playbook"],
                j.get("limit") or "all",
                j["status"],
                j.get("rc"),
                j.get("controller"),
                ago(j["created_at"]),
                ago(j.get("finished_at")) if j.get("finished_at") else None,
                j.get("reason"),
            ]
            for j in jobs
        ),
        empty="no jobs",
    )


@job_app.command("inspect")
@handle_errors
def inspect(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="Job id (from `orchestrify job ls`)."),
    json_out: bool = JsonOpt,
) -> None:
    """Show one job: status, rc, hosts, extra vars, times, the controller that ran it
    (its ansible-runner artifacts are on that controller's disk) and the per-host recap."""
    with config(ctx).client() as api:
        job = api.get(f"/v1/jobs/{job_id}")
    if json_out:
        print_json(job)
        return
    print_fields(
        [
            ("id", job["id"]),
            ("playbook", job["playbook"]),
            ("limit", job.get("limit") or "all"),
            ("hosts", ", ".join(job.get("hosts") or []) or None),
            ("status", job["status"]),
            ("rc", job.get("rc")),
            ("controller", job.get("controller")),
            ("error", job.get("error")),
            ("reason", job.get("reason")),
            ("extra_vars", json.dumps(job.get("extra_vars") or {})),
            ("created", job["created_at"]),
            ("started", job.get("started_at")),
            ("finished", job.get("finished_at")),
        ]
    )
    if job.get("stats"):
        show_recap(job)


@job_app.command("cancel")
@handle_errors
def cancel(
    ctx: typer.Context,
    job_id: str = typer.Argument(..., help="Job id (from `orchestrify job ls`)."),
) -> None:
    """Cancel a pending job, or stop a running one."""
    with config(ctx).client() as api:
        job = api.request("POST", f"/v1/jobs/{job_id}/cancel")
    console.print(f"job {job['id']}: cancel requested ({job['status']})", markup=False)
