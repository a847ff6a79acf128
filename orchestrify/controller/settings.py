"""Controller settings: flags, or ORCHESTRIFY_* environment variables."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrify.tls import check_server_pair


def default_playbook_dir() -> Path | None:
    """The checkout's top-level ``playbooks/`` when the package runs from a checkout."""
    candidate = Path(__file__).resolve().parents[2] / "playbooks"
    return candidate if candidate.is_dir() else None


def check_prometheus_url(value: str | None) -> str | None:
    """``value`` as the base URL of a Prometheus (http(s)://HOST[:PORT][/PATH], no
    trailing slash), None when unset or empty; ValueError saying what is wrong, in one
    line. A user or password in it is refused (it would show wherever the settings do)
    and never repeated in the message."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    wanted = (
        "must be Prometheus' base URL, http(s)://HOST[:PORT][/PATH] such as http://127.0.0.1:9090"
    )
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - ValueError when the port is not a number in 0-65535
    except ValueError:
        raise ValueError(f"{wanted}; got one whose host or port cannot be read") from None
    if "@" in text:  # checked first: a password is never repeated in a message
        raise ValueError("must not hold a user or password: give Prometheus' plain URL")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{wanted}; got {text[:100]!r}")
    if parts.query or parts.fragment or any(c.isspace() for c in text):
        raise ValueError(f"{wanted}, with no query, fragment or space; got {text[:100]!r}")
    return text.rstrip("/")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "orchestrify"


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCHESTRIFY_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on; loopback by default.")
    port: int = Field(18080, ge=1, le=65535, description="API port (the seed tool's 18080).")
    data_dir: Path = Field(default_factory=default_data_dir, description="SQLite and tokens.")
    # A secret like the tokens (it holds the database password): SecretStr keeps it out of
    # reprs, logs and tracebacks; ``database_url.get_secret_value()`` where it is used.
    database_url: SecretStr | None = Field(
        None,
        description="The store: sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB; "
        "unset: SQLite in data_dir.",
    )
    # repr=False: a settings object in a log line or a traceback never shows a token.
    token: str | None = Field(
        None, description="Admin bearer token; generated when unset.", repr=False
    )
    join_token: str | None = Field(
        None, description="Agents register with it; generated.", repr=False
    )
    node_timeout_s: float = Field(
        15.0, gt=0, description="Seconds without heartbeat before a node is not_ready."
    )
    node_startup_grace_s: float | None = Field(
        None,
        ge=0,
        description="Seconds after this process starts before any node may be called "
        "silent; unset: 2 x node_timeout_s, so every agent gets at least two full timeouts "
        "to reach a restarted controller (Nomad's failover heartbeat TTL, Kubernetes' "
        "node startup grace period).",
    )
    mass_silence_threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the live nodes (ready, draining, unreachable) that may be "
        "silent at once before the controller blames itself or the network: above it, the "
        "silent nodes are unreachable and keep their replicas. 0.5 as Kubernetes' "
        "unhealthy-zone threshold (0.55).",
    )
    reschedule_nodes_per_minute: float = Field(
        6.0,
        gt=0,
        description="Not-ready nodes whose replicas may be moved elsewhere per minute "
        "(a token bucket, burst 1); 6 is Kubernetes' node eviction rate of 0.1/s.",
    )
    reconcile_interval_s: float = Field(
        1.0, gt=0, description="Longest wait between reconcile cycles (they also run on change)."
    )
    watch_timeout_s: float = Field(
        30.0, gt=0, le=300, description="Longest a long-poll waits before answering unchanged."
    )
    heartbeat_flush_s: float = Field(
        1.0,
        gt=0,
        le=5,
        description="Seconds between the batched writes of the heartbeats received "
        "(one write for all of them, not one per heartbeat; liveness is judged in memory "
        "at once). At most 5 s, a third of the default node timeout: on PostgreSQL the "
        "leader sees other controllers' heartbeats through this write.",
    )
    dry_run: bool = Field(False, description="Decide and record scaling, but never act.")
    rules_file: Path | None = Field(
        None, description="Alert -> action rules (YAML) applied at start; default: shipped."
    )
    alert_eval_interval_s: float = Field(
        5.0,
        gt=0,
        description="Seconds between re-evaluations of firing alerts and pending scale-ins; "
        "short next to the default 30 s cooldown, so steps are not late by much.",
    )
    alert_stale_after_s: float = Field(
        3600.0,
        gt=0,
        description="A firing alert not re-notified for this long stops driving scaling "
        "(Alertmanager re-sends every repeat_interval; lost 'resolved' notices must not "
        "scale forever).",
    )
    public_url: str | None = Field(
        None, description="How others reach this controller (Prometheus discovery)."
    )
    node_exporter_port: int = Field(
        9100,
        ge=0,
        le=65535,
        description="Port of node_exporter on every node (role node_exporter installs it "
        "there): Prometheus discovery lists NODE_ADDRESS:PORT of each node, the address "
        "its agent advertises. 9100 is node_exporter's own default; 0 lists none.",
    )
    controller_id: str = Field(
        "",
        max_length=253,
        pattern=r"^[A-Za-z0-9._:@\[\]-]*$",
        description="This controller's name among those sharing the store (the leader "
        "lease names its holder by it): unique per controller, the same across its "
        "restarts. Empty: HOSTNAME:PORT.",
    )
    advertise_url: str = Field(
        "",
        max_length=512,
        pattern=r"^(https?://[^\s/]+(/\S*)?)?$",
        description="The URL the other controllers and operators reach this one at, as "
        "`orchestrify cluster ls` shows it. Empty: public_url, else http(s)://HOST:PORT.",
    )
    lease_s: float = Field(
        6.0,
        ge=0.3,
        le=3600,
        description="Seconds the leader lease lasts unless renewed; the leader renews it "
        "every lease_s / 3 and stops leading when a renewal fails or is late. After the "
        "leader dies another controller leads within about lease_s + lease_s / 3: 6 s "
        "keeps a failover under 10 s and rides out a database hiccup of a few seconds.",
    )
    playbook_dir: Path | None = Field(
        default_factory=default_playbook_dir,
        description="Jobs may run only playbooks inside this directory (default: the "
        "checkout's playbooks/ when present).",
    )
    inventory: Path | None = Field(
        None, description="Ansible inventory (file or directory) that jobs run against."
    )
    jobs_dir: Path | None = Field(
        None, description="Private data dirs of jobs (ansible-runner); default DATA_DIR/jobs."
    )
    job_timeout_s: float = Field(
        3600.0,
        gt=0,
        description="Seconds before a job is stopped: provisioning a fresh host takes "
        "minutes; an hour stops a hung SSH session without cutting a slow apt run.",
    )
    max_running_jobs: int = Field(
        4,
        ge=1,
        le=1000,
        description="Most jobs (ansible-playbook processes) running at once. Jobs on one "
        "host always wait for each other; this bounds jobs on disjoint hosts too, so a "
        "burst of jobs cannot start a process each and starve the controller of CPU. 4 is "
        "a few hosts' worth, each forking up to Ansible's 5 connections.",
    )
    max_pending_jobs: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Most jobs waiting to run; POST /v1/jobs answers 429 (Retry-After) "
        "beyond, so a loop of submissions cannot queue work without end.",
    )

    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest request body in bytes (413 beyond), refused on its "
        "Content-Length before it is read. 1 MiB holds a 1,000-alert webhook batch and "
        "any service spec many times over.",
    )
    max_alerts_per_batch: int = Field(
        1000,
        ge=1,
        description="Most alerts in one webhook notification (413 beyond). Set "
        "Alertmanager's receiver max_alerts to this or less: it then sends at most this "
        "many and counts the rest in truncatedAlerts.",
    )
    max_replicas_per_service: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Ceiling of replicas, min_replicas and max_replicas of a service (422 "
        "beyond): 1,000 is more than a few hundred hosts run of one service, and keeps a "
        "typo like 10**20 from making the controller plan without end.",
    )

    history_retention_days: int = Field(
        14,
        ge=0,
        description="Days of history kept: events, finished jobs (rows and their private "
        "data dirs) and resolved alert episodes older than this are deleted at start and "
        "every hour; 0 keeps everything. Two weeks is enough to look back on last week's "
        "incidents, and far longer than Alertmanager re-sends a notification (hours).",
    )

    ui_session_s: int = Field(
        28_800,
        gt=60,
        le=30 * 86_400,
        description="Seconds a sign-in to the web status page (/ui/) lasts: the session "
        "cookie's Max-Age and the expiry signed into it. 8 h is a working day; a new admin "
        "token ends every session at once.",
    )

    prometheus_url: str | None = Field(
        None,
        description="Base URL of the Prometheus that scrapes this fleet "
        "(http(s)://HOST:PORT, maybe with a path prefix): the status page then charts "
        "each service's p95 latency and request rate over the last hour against its "
        "targets, from Prometheus' query API. Unset: no charts.",
    )
    alerting_profile: Literal["standard", "fast"] = Field(
        "standard",
        description="The alerting profile that Prometheus' rules were rendered with "
        "(`orchestrify config render --profile`): the charts take the p95 and the request "
        "rate over that profile's windows (standard: 1m and 2m; fast: 3s and 10s), so a "
        "chart crosses its target line when the alert's expression does.",
    )

    tls_cert: Path | None = Field(
        None,
        description="PEM certificate (with its chain) the API serves: set with tls_key, the "
        "controller speaks HTTPS only. Checked at start against the key.",
    )
    tls_key: Path | None = Field(
        None,
        description="Unencrypted PEM private key of tls_cert (mode 0600, readable by "
        "the controller's user only).",
    )

    @field_validator("prometheus_url", mode="before")
    @classmethod
    def _prometheus_url(cls, value: object) -> str | None:
        if value is not None and not isinstance(value, str):
            raise ValueError("must be a URL (text)")
        return check_prometheus_url(value)

    @model_validator(mode="after")
    def _tls_pair(self) -> ControllerSettings:
        # At start, before anything listens: a wrong file is one line and exit 2, not a
        # traceback from inside uvicorn.
        check_server_pair(cert=self.tls_cert, key=self.tls_key)
        return self

    @model_validator(mode="after")
    def _cluster_identity(self) -> ControllerSettings:
        # Filled in here, not at each use, so every part (the lease, the jobs, the
        # cluster view) names this controller the same way.
        if not self.controller_id:
            self.controller_id = f"{socket.gethostname()}:{self.port}"
        if not self.advertise_url:
            self.advertise_url = self.public_url or self._own_url()
        return self

    def _own_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):  # every address: name the host instead
            host = socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls_cert is not None else 'http'}://{host}:{self.port}"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def resolved_node_startup_grace_s(self) -> float:
        if self.node_startup_grace_s is not None:
            return self.node_startup_grace_s
        return 2 * self.node_timeout_s

    @property
    def resolved_jobs_dir(self) -> Path:
        return self.jobs_dir or self.data_dir / "jobs"


def load_or_create_token(data_dir: Path, name: str, given: str | None) -> tuple[str, bool]:
    """Return the token and whether it was generated now (to print it once).

    A given token wins; otherwise the one stored in ``data_dir/<name>.token`` (mode 0600)
    is reused, or a new one is generated and stored.
    """
    if given:
        return given, False
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # see orchestrify.store.files
    path = data_dir / f"{name}.token"
    if path.exists():
        return path.read_text().strip(), False
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, True
