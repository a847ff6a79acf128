"""`orchestrify service ...`: deploy, list, update, scale and remove services (Swarm's
grammar)."""

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
from orchestrify.cli.replicas import print_replicas
from orchestrify.errors import InvalidSpec
from orchestrify.models import DEFAULT_DRAIN_S, DEFAULT_STOP_GRACE_S, SERVICE_NAME
from orchestrify.rollout import healthy_counts, rollout_text

service_app = typer.Typer(
    help="Deploy and manage services (an image run as N replicas behind Nginx).",
    no_args_is_help=True,
)


def parse_env(pairs: list[str], *, sep: str, flag: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, found, value = pair.partition(sep)
        if not found or not key:
            raise InvalidSpec(f"{flag} {pair!r}: expected KEY{sep}VALUE", field="env")
        env[key] = value
    return env


def parse_log_opts(pairs: list[str]) -> dict[str, str]:
    """``--log-opt KEY=VALUE`` pairs (the controller checks them against the driver)."""
    opts: dict[str, str] = {}
    for pair in pairs:
        key, found, value = pair.partition("=")
        if not found or not key:
            raise InvalidSpec(f"--log-opt {pair!r}: expected KEY=VALUE", field="log_opts")
        opts[key] = value
    return opts


LOG_DRIVER_HELP = (
    "Docker logging driver of the replicas: json-file (default, rotated), local, journald, "
    "syslog, gelf or fluentd."
)
LOG_OPT_HELP = (
    "The driver's option as KEY=VALUE, repeatable, e.g. gelf-address=udp://HOST:12201 "
    "(docs/logs.md lists them)."
)


def parse_port(value: str) -> tuple[int | None, int]:
    """``8000`` (container port) or the seed tool's ``HOST:CONTAINER``."""
    host, sep, container = value.rpartition(":")
    try:
        return (int(host) if sep else None), int(container)
    except ValueError:
        raise InvalidSpec(
            f"--port {value!r}: expected CONTAINER_PORT or HOST:CONTAINER, both numbers",
            field="port",
        ) from None


@service_app.command("create")
@handle_errors
def create(
    ctx: typer.Context,
    image: str = typer.Argument(..., help="Docker image, e.g. orchestrify/demo:latest."),
    name: str = typer.Option(
        ..., "--name", help="Service name: lowercase letters, digits, dashes."
    ),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE, repeatable."),
    environment: list[str] = typer.Option(
        [], "--environment", help="KEY:VALUE, repeatable (the original tool's form)."
    ),
    port: str = typer.Option(
        "8000", "--port", "-p", help="Container port, or HOST:CONTAINER to fix the host port."
    ),
    replicas: int = typer.Option(1, "--replicas", help="How many replicas to run."),
    min_replicas: int | None = typer.Option(None, "--min", help="Autoscaling lower bound."),
    max_replicas: int | None = typer.Option(None, "--max", help="Autoscaling upper bound."),
    health_path: str = typer.Option("/health", "--health-path", help="Probed every second."),
    drain: float = typer.Option(
        DEFAULT_DRAIN_S, "--drain", help="Seconds to drain a replica before stopping."
    ),
    stop_grace: float = typer.Option(
        DEFAULT_STOP_GRACE_S,
        "--stop-grace",
        help="Seconds between SIGTERM and SIGKILL when a replica stops (0-3600).",
    ),
    memory_mb: int | None = typer.Option(None, "--memory", help="Memory limit per replica, MiB."),
    cpus: float | None = typer.Option(None, "--cpus", help="CPU limit per replica, cores."),
    log_driver: str = typer.Option("json-file", "--log-driver", help=LOG_DRIVER_HELP),
    log_opt: list[str] = typer.Option([], "--log-opt", help=LOG_OPT_HELP),
    json_out: bool = JsonOpt,
) -> None:
    """Create a service and start its replicas on the least busy ready nodes."""
    host_port, container_port = parse_port(port)
    spec: dict[str, Any] = {
        "name": name,
        "image": image,
        "env": parse_env(environment, sep=":", flag="--environment")
        | parse_env(env, sep="=", flag="--env"),
        "port": container_port,
        "host_port": host_port,
        "replicas": replicas,
        "min_replicas": min_replicas if min_replicas is not None else min(1, replicas),
        "max_replicas": max_replicas if max_replicas is not None else max(10, replicas),
        "health_path": health_path,
        "drain_s": drain,
        "stop_grace_s": stop_grace,
        "memory_mb": memory_mb,
        "cpus": cpus,
        "log_driver": log_driver,
        "log_opts": parse_log_opts(log_opt),
    }
    with config(ctx).client() as api:
        svc = api.request("POST", "/v1/services", json=spec)
    if json_out:
        print_json(svc)
    else:
        typer.echo(
            f"service {svc['name']} created: {svc['replicas']} replica(s) of {svc['image']}; "
            f"watch them with `orchestrify service ps {svc['name']}`"
        )


@service_app.command("ls")
@handle_errors
def ls(ctx: typer.Context, json_out: bool = JsonOpt) -> None:
    """List services with their healthy and desired replica counts."""
    with config(ctx).client() as api:
        services = api.get("/v1/services")
        replicas = api.get("/v1/replicas")
    if json_out:
        print_json(services)
        return
    healthy = healthy_counts((r["service"], r["state"], r["desired"]) for r in replicas)
    print_table(
        ["NAME", "IMAGE", "REPLICAS", "UP-TO-DATE", "MIN", "MAX", "PORT", "HEALTH", "UPDATED"],
        (
            [
                s["name"],
                s["image"],
                f"{healthy.get(s['name'], 0)}/{s['replicas']}",
                rollout(s),
                s["min_replicas"],
                s["max_replicas"],
                s["port"],
                s["health_path"],
                ago(s["updated_at"]),
            ]
            for s in services
        ),
        empty="no services yet: create one with `orchestrify service create IMAGE --name NAME`",
    )


@service_app.command("inspect")
@handle_errors
def inspect(ctx: typer.Context, name: str, json_out: bool = JsonOpt) -> None:
    """Show a service's full spec and scaling policy."""
    with config(ctx).client() as api:
        svc = api.get(f"/v1/services/{name}")
    if json_out:
        print_json(svc)
        return
    policy = svc.pop("policy", {})
    print_fields(
        [
            *svc.items(),
            ("updated", rollout(svc)),
            *((f"policy.{k}", v) for k, v in policy.items()),
        ]
    )


def rollout(svc: dict[str, Any]) -> str:
    """Updated/desired replicas, with the rolling update's state when one is under way
    (as the status page shows it: ``orchestrify.rollout``)."""
    return rollout_text(
        updated=svc.get("updated_replicas", 0),
        desired=svc["replicas"],
        state=svc.get("update_state"),
    )


@service_app.command("update")
@handle_errors
def update(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The service to update."),
    image: str | None = typer.Option(None, "--image", help="New Docker image."),
    env: list[str] = typer.Option(
        [], "--env", "-e", help="KEY=VALUE to set (others are kept), repeatable."
    ),
    health_path: str | None = typer.Option(None, "--health-path", help="New health path."),
    stop_grace: float | None = typer.Option(
        None,
        "--stop-grace",
        help="Seconds between SIGTERM and SIGKILL when a replica stops (0-3600); "
        "applies to the running replicas as they are, nothing is replaced.",
    ),
    log_driver: str | None = typer.Option(
        None,
        "--log-driver",
        help="New logging driver; the old driver's options are dropped (give its own "
        "with --log-opt).",
    ),
    log_opt: list[str] = typer.Option(
        [],
        "--log-opt",
        help="KEY=VALUE to set (the others are kept while the driver stays; KEY= removes "
        "one), repeatable.",
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Change a service's image, env, health path or logging: its replicas are replaced
    one at a time (one extra replica first, an old one drained once the new one is
    healthy). --stop-grace alone changes no container, so it replaces nothing."""
    changes: dict[str, Any] = {}
    if image is not None:
        changes["image"] = image
    if health_path is not None:
        changes["health_path"] = health_path
    if stop_grace is not None:
        changes["stop_grace_s"] = stop_grace
    if log_driver is not None:
        changes["log_driver"] = log_driver
    added = parse_env(env, sep="=", flag="--env")
    opts = parse_log_opts(log_opt)
    if not changes and not added and not opts:
        raise InvalidSpec(
            "nothing to update: give --image, --env KEY=VALUE, --health-path, --stop-grace, "
            "--log-driver or --log-opt KEY=VALUE",
            field="image",
        )
    with config(ctx).client() as api:
        if added or opts or log_driver is not None:
            current = api.get(f"/v1/services/{name}")
        if added:
            changes["env"] = {**current.get("env", {}), **added}
        if opts or log_driver is not None:
            same_driver = log_driver in (None, current.get("log_driver"))
            kept = current.get("log_opts", {}) if same_driver else {}
            changes["log_opts"] = {k: v for k, v in {**kept, **opts}.items() if v != ""}
        svc = api.request("PATCH", f"/v1/services/{name}", json=changes)
    if json_out:
        print_json(svc)
    elif set(changes) == {"stop_grace_s"}:
        typer.echo(f"service {name} updated: stop grace {svc['stop_grace_s']:g}s")
    elif svc.get("update_state") == "completed":
        typer.echo(
            f"service {name} updated (generation {svc['generation']}); "
            "no running replica to replace"
        )
    else:
        typer.echo(
            f"service {name}: rolling update to generation {svc['generation']} started, "
            f"one replica at a time; watch it with `orchestrify service ps {name}`"
        )


@service_app.command("rollback")
@handle_errors
def rollback(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The service to roll back."),
    json_out: bool = JsonOpt,
) -> None:
    """Put a service back to its spec before the last update (image, env, ports, health
    path, limits), replaced one replica at a time; rolling back twice returns to the
    update. Replica counts and the scaling policy stay as they are."""
    if not SERVICE_NAME.match(name):
        raise InvalidSpec(f"{name!r} is not a service name", field="name")
    with config(ctx).client() as api:
        svc = api.request("POST", f"/v1/services/{name}/rollback")
    if json_out:
        print_json(svc)
    elif svc.get("update_state") == "completed":
        typer.echo(
            f"service {name} rolled back to {svc['image']} (generation {svc['generation']}); "
            "no running replica to replace"
        )
    else:
        typer.echo(
            f"service {name}: rollback from generation {svc['previous_generation']} started: "
            f"generation {svc['generation']} runs {svc['image']} again, one replica at a time; "
            f"watch it with `orchestrify service ps {name}`"
        )


@service_app.command("scale")
@handle_errors
def scale(
    ctx: typer.Context,
    targets: list[str] = typer.Argument(..., help="NAME=REPLICAS, one or more."),
) -> None:
    """Set the desired replica count, e.g. `orchestrify service scale web=3`. During an
    autoscaling episode it becomes the count scale-in returns to, and alerts that began
    before it no longer act on the count."""
    parsed = []
    for target in targets:
        name, _, count = target.partition("=")
        if not name or not count.isdigit():
            raise InvalidSpec(f"{target!r}: expected NAME=REPLICAS, e.g. web=3", field="replicas")
        parsed.append((name, int(count)))
    with config(ctx).client() as api:
        for name, number in parsed:
            api.request("PATCH", f"/v1/services/{name}", json={"replicas": number})
            typer.echo(f"{name} scaled to {number}")


@service_app.command("ps")
@handle_errors
def ps(ctx: typer.Context, name: str, json_out: bool = JsonOpt) -> None:
    """List a service's replicas: node, state, address."""
    with config(ctx).client() as api:
        api.get(f"/v1/services/{name}")  # a clear 404 for an unknown service
        replicas = api.get("/v1/replicas", service=name)
    print_replicas(replicas, json_out=json_out)


@service_app.command("logs")
@handle_errors
def logs(
    ctx: typer.Context,
    name: str,
    follow: bool = FollowOpt,
    since: str | None = SinceOpt,
    tail: int | None = TailOpt,
    timestamps: bool = TimestampsOpt,
    replica: str | None = typer.Option(None, "--replica", help="Only this replica's lines."),
    no_prefix: bool = NoPrefixOpt,
) -> None:
    """Print the stdout and stderr of every replica of a service, on every node, merged by
    time, each line prefixed SERVICE.REPLICA@NODE. Containers Docker still keeps of
    replaced replicas are shown too, marked (replaced). A node that cannot be read, or a
    log driver Docker cannot read back (syslog, gelf, fluentd), is said on stderr."""
    path = f"/v1/services/{name}/logs"
    if replica is not None:
        with config(ctx).client() as api:
            rep = api.get(f"/v1/replicas/{replica}")
        if rep.get("service") != name:
            raise InvalidSpec(
                f"--replica {replica} is a replica of {rep.get('service')}, not of {name}",
                field="replica",
            )
        path = f"/v1/replicas/{replica}/logs"
    logs_command(
        ctx,
        path,
        service=name,
        follow=follow,
        since=since,
        tail=tail,
        timestamps=timestamps,
        no_prefix=no_prefix,
    )


@service_app.command("rm")
@handle_errors
def rm(ctx: typer.Context, names: list[str] = typer.Argument(..., help="Service names.")) -> None:
    """Remove services: their replicas leave Nginx, drain, then stop."""
    with config(ctx).client() as api:
        for name in names:
            api.request("DELETE", f"/v1/services/{name}")
            typer.echo(f"{name} removed (replicas drain, then stop)")
