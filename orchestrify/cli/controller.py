"""`orchestrify controller`: run the API, state store and reconciler."""

from __future__ import annotations

from pathlib import Path

import typer

from orchestrify.cli.common import (
    DatabaseUrlOpt,
    PrometheusUrlOpt,
    TlsCertOpt,
    TlsKeyOpt,
    build_settings,
    err_console,
    open_store_or_exit,
)
from orchestrify.controller.settings import (
    ControllerSettings,
    default_data_dir,
    default_playbook_dir,
    load_or_create_token,
)


def resolve_tokens(settings: ControllerSettings) -> ControllerSettings:
    """Load or generate both tokens now, printing any generated one once."""
    admin, new_admin = load_or_create_token(settings.data_dir, "admin", settings.token)
    join, new_join = load_or_create_token(settings.data_dir, "join", settings.join_token)
    for label, token, new, name in (
        ("admin token", admin, new_admin, "admin"),
        ("join token", join, new_join, "join"),
    ):
        if new:
            err_console.print(
                f"{label} generated and stored in {settings.data_dir / (name + '.token')}: {token}",
                markup=False,
            )
    return settings.model_copy(update={"token": admin, "join_token": join})


def controller(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(18080, "--port", help="Port of the REST API."),
    data_dir: Path = typer.Option(
        default_data_dir(), "--data-dir", help="Where the SQLite store and tokens live."
    ),
    database_url: str | None = DatabaseUrlOpt,
    token: str | None = typer.Option(
        None, "--token", envvar="ORCHESTRIFY_TOKEN", help="Admin bearer token (generated if unset)."
    ),
    join_token: str | None = typer.Option(
        None,
        "--join-token",
        envvar="ORCHESTRIFY_JOIN_TOKEN",
        help="Token agents register with (generated if unset).",
    ),
    node_timeout: float = typer.Option(
        15.0, "--node-timeout", help="Seconds without heartbeat before a node is not_ready."
    ),
    node_startup_grace: float | None = typer.Option(
        None,
        "--node-startup-grace",
        envvar="ORCHESTRIFY_NODE_STARTUP_GRACE_S",
        help="Seconds after start before any node may be called silent "
        "(default: 2 x --node-timeout).",
    ),
    mass_silence_threshold: float | None = typer.Option(
        None,
        "--mass-silence-threshold",
        envvar="ORCHESTRIFY_MASS_SILENCE_THRESHOLD",
        help="Share (0-1] of the live nodes silent at once above which they are "
        "unreachable and keep their replicas, instead of not_ready (default 0.5).",
    ),
    reschedule_nodes_per_minute: float | None = typer.Option(
        None,
        "--reschedule-nodes-per-minute",
        envvar="ORCHESTRIFY_RESCHEDULE_NODES_PER_MINUTE",
        help="Not-ready nodes whose replicas may move elsewhere per minute (default 6).",
    ),
    public_url: str | None = typer.Option(
        None, "--public-url", help="URL others reach this controller at (for discovery)."
    ),
    node_exporter_port: int | None = typer.Option(
        None,
        "--node-exporter-port",
        envvar="ORCHESTRIFY_NODE_EXPORTER_PORT",
        min=0,
        max=65535,
        help="Port of node_exporter on every node: Prometheus discovery lists each node's "
        "address with it (default 9100; 0 lists no node_exporter).",
    ),
    controller_id: str | None = typer.Option(
        None,
        "--controller-id",
        envvar="ORCHESTRIFY_CONTROLLER_ID",
        help="This controller's name among several sharing one database (the leader "
        "lease and `orchestrify cluster ls` show it). Give each controller its own, and "
        "keep it across restarts (default: HOSTNAME:PORT).",
    ),
    advertise_url: str | None = typer.Option(
        None,
        "--advertise-url",
        envvar="ORCHESTRIFY_ADVERTISE_URL",
        help="The URL other controllers and operators reach this one at, as `orchestrify "
        "cluster ls` lists it (default: --public-url, else http(s)://HOST:PORT).",
    ),
    lease_s: float | None = typer.Option(
        None,
        "--lease-s",
        envvar="ORCHESTRIFY_LEASE_S",
        help="Seconds the leader's lease lasts (default 6). With several controllers on "
        "one PostgreSQL database, one leads and runs the reconciler, alert decisions and "
        "jobs; it renews its lease every third of this, and when it dies another one "
        "takes over within about this plus a third. Alone on SQLite it leads at once.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Decide scaling, record it, never act."),
    playbook_dir: Path | None = typer.Option(
        None,
        "--playbook-dir",
        envvar="ORCHESTRIFY_PLAYBOOK_DIR",
        help="Directory of the playbooks jobs may run (default: the checkout's playbooks/).",
    ),
    inventory: Path | None = typer.Option(
        None,
        "--inventory",
        envvar="ORCHESTRIFY_INVENTORY",
        help="Ansible inventory file or directory that jobs run against.",
    ),
    jobs_dir: Path | None = typer.Option(
        None,
        "--jobs-dir",
        envvar="ORCHESTRIFY_JOBS_DIR",
        help="Where each job's ansible-runner directory goes (default: DATA_DIR/jobs).",
    ),
    history_retention_days: int = typer.Option(
        14,
        "--history-retention-days",
        envvar="ORCHESTRIFY_HISTORY_RETENTION_DAYS",
        min=0,
        help="Days of history to keep: older events, finished jobs (with their "
        "ansible-runner dirs) and resolved alerts are deleted at start and every hour. "
        "0 keeps everything.",
    ),
    rules: Path | None = typer.Option(
        None,
        "--rules",
        help="Alert -> action rules (YAML), applied at every start; default: the shipped ones.",
    ),
    prometheus_url: str | None = PrometheusUrlOpt,
    alerting_profile: str | None = typer.Option(
        None,
        "--alerting-profile",
        envvar="ORCHESTRIFY_ALERTING_PROFILE",
        help="The profile Prometheus' rules were rendered with (`config render --profile`): "
        "'standard' (the default) or 'fast'. The status page's charts take the p95 and the "
        "request rate over its windows, as the alerts do.",
    ),
    ui_session_s: int | None = typer.Option(
        None,
        "--ui-session-s",
        envvar="ORCHESTRIFY_UI_SESSION_S",
        help="Seconds a sign-in to the status page (/ui/) lasts (default 28800, 8 h; "
        "61 to 2592000). Restarting with a new admin token ends every session at once.",
    ),
    tls_cert: Path | None = TlsCertOpt,
    tls_key: Path | None = TlsKeyOpt,
) -> None:
    """Run the controller: REST API under /v1 (docs at /docs), state store and reconciler."""
    from orchestrify.alerting.rules import load_rules
    from orchestrify.controller.app import serve_controller
    from orchestrify.errors import InvalidSpec

    if rules is not None:
        try:
            load_rules(rules)  # fail before listening, with a clear message and exit 2
        except InvalidSpec as exc:
            err_console.print(f"error: {exc}", markup=False, soft_wrap=True)
            raise typer.Exit(2) from None

    given = build_settings(
        ControllerSettings,
        host=host,
        port=port,
        data_dir=data_dir,
        **({"database_url": database_url} if database_url is not None else {}),
        token=token,
        join_token=join_token,
        node_timeout_s=node_timeout,
        **{
            key: value
            for key, value in {
                "node_startup_grace_s": node_startup_grace,
                "mass_silence_threshold": mass_silence_threshold,
                "reschedule_nodes_per_minute": reschedule_nodes_per_minute,
                "node_exporter_port": node_exporter_port,
                "controller_id": controller_id,
                "advertise_url": advertise_url,
                "lease_s": lease_s,
                "prometheus_url": prometheus_url,
                "alerting_profile": alerting_profile,
                "ui_session_s": ui_session_s,
            }.items()
            if value is not None  # unset: the settings' own default
        },
        public_url=public_url,
        dry_run=dry_run,
        playbook_dir=playbook_dir or default_playbook_dir(),
        inventory=inventory,
        jobs_dir=jobs_dir,
        history_retention_days=history_retention_days,
        rules_file=rules,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    open_store_or_exit(given)  # before a token is generated or a port taken
    serve_controller(resolve_tokens(given))
