"""Values that cross a border: API bodies, store rows as seen from outside, the wire protocol.

Validation lives here, so the API, the CLI and the store agree on what a valid service is.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic import (
    Strict as StrictType,
)

from orchestrify.logdrivers import DEFAULT_LOG_DRIVER, LOG_OPTS_MAX, LogDriver, log_opts_problem

# Every pattern below is also the OpenAPI ``pattern`` of its field, so the schema is as
# narrow as the code. They are matched with ``fullmatch`` (Python's ``$`` would also let a
# trailing newline through) and use no look-around, which JSON Schema tools cannot draw.
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOST_ADDRESS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")  # IPv4, IPv6 or a DNS name
SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
HEALTH_PATH = re.compile(r"^/[!-~]*$")  # visible ASCII: percent-encode the rest
# Docker's reference grammar, simplified: [registry[:port]/]path[:tag][@digest]
IMAGE_REF = re.compile(
    # Optional registry host. As in Docker, a first component is a host only when it has
    # a dot or a port or is localhost; otherwise it is a (lowercase) path component.
    r"^(?:(?:localhost(?::[0-9]+)?|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+(?::[0-9]+)?"
    r"|[a-zA-Z0-9-]+:[0-9]+)/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"  # first path component
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"  # more path components
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # tag (ASCII, as Docker's)
    r"(?:@sha256:[a-f0-9]{64})?$"  # digest
)


# Integers a store column holds: SQLite and PostgreSQL integers are signed 64-bit, and a
# larger one in a body is a 422 here rather than an overflow in the store.
INT64_MAX = 2**63 - 1
# The largest integer an API body or query takes: JSON's interoperable range (RFC 7493,
# I-JSON: beyond 2**53 a JavaScript client or a float-based validator rounds, so
# 2**63 - 1 and 2**63 look equal to it). It fits the store's 64-bit columns with room.
JSON_INT_MAX = 2**53 - 1
IMAGE_REF_MAX = 255


def _json_integer(value: Any) -> Any:
    """A JSON integer: an int, or a number with no fraction (JSON Schema's ``integer``
    takes 5.0 too); never a string or a boolean (pydantic's lax mode would take both)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a JSON integer")
    return value


# RFC 3339's date-time, what the schema's ``format: date-time`` means: seconds and an
# offset are required.
RFC3339_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _json_text_only(value: Any) -> Any:
    """A time in a body is RFC 3339 text: a number, or a string of digits (pydantic would
    read both as Unix seconds), or a time without its offset is refused, as the schema's
    ``type: string, format: date-time`` says."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not RFC3339_DATE_TIME.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time string, e.g. 2026-11-30T12:00:00Z")
    return value


# Types of request fields that take exactly what their JSON Schema type says: pydantic's
# lax mode would also take "5" or 5.0 for an integer, 1 for a boolean and a number for a
# time, which the schema refuses (schemathesis' negative tests send exactly those).
JsonInt = Annotated[int, BeforeValidator(_json_integer)]
# Optional, with the validator around the whole union: pydantic then still writes the
# field's ge/le as minimum/maximum (around the int alone it wrote "ge"/"le" keys, which
# no JSON Schema tool reads).
JsonIntOrNone = Annotated[
    int | None, BeforeValidator(lambda v: v if v is None else _json_integer(v))
]
# An integer is a JSON number too: taken. Finite only: Python's JSON parser reads a
# number too large for a float (1e400) as infinity, which no JSON answer can carry.
JsonFloat = Annotated[float, StrictType(), AllowInfNan(False)]
JsonBool = Annotated[bool, StrictType()]
JsonTime = Annotated[datetime, BeforeValidator(_json_text_only)]
# Bounds of a service's numbers beyond its replica counts: each keeps the controller's
# time arithmetic (now + seconds) and the agents' Docker limits (cores x 1e9) in range.
CPUS_MAX = 1024.0
STABILIZATION_MAX_S = 3600.0  # Kubernetes' HPA: stabilizationWindowSeconds <= 3600
COOLDOWN_MAX_S = 86400.0
LATENCY_TARGET_MAX_MS = 3_600_000.0
# The most replicas (desired, min or max) a service may ask for in any build; a controller
# lowers it with its max_replicas_per_service setting (1,000 by default).
REPLICAS_HARD_MAX = 100_000

# The controller's defaults for how a replica leaves: ``drain_s`` seconds out of Nginx
# before it is stopped (long enough for the edge to reload and in-flight requests to end),
# then ``stop_grace_s`` seconds between SIGTERM and SIGKILL (Docker's and Kubernetes'
# default grace is 10 s as well). One constant each, used everywhere.
DEFAULT_DRAIN_S = 10.0
DEFAULT_STOP_GRACE_S = 10.0


class NodeState(StrEnum):
    """``ready`` takes new replicas; ``draining`` moves its replicas away; ``unreachable``
    went silent together with many others (the controller or the network is suspected:
    its replicas stay and keep serving); ``not_ready`` went silent alone (its replicas
    are rescheduled elsewhere, at a limited rate)."""

    READY = "ready"
    NOT_READY = "not_ready"
    DRAINING = "draining"
    UNREACHABLE = "unreachable"


class ReplicaState(StrEnum):
    ASSIGNED = "assigned"
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    FAILED = "failed"


class DesiredState(StrEnum):
    """What the controller wants of a replica; the agent acts on ``run`` and ``stop``."""

    RUN = "run"
    DRAIN = "drain"  # out of Nginx, container still running until the drain period ends
    STOP = "stop"  # the agent stops and removes the container, then reports ``stopped``


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScalingPolicy(Strict):
    """How a service reacts to alerts. Defaults follow Kubernetes' HPA and the seed tools."""

    scale_up_stabilization_s: JsonFloat = Field(
        0,
        ge=0,
        le=STABILIZATION_MAX_S,
        description="Seconds a scale-out signal must persist; 0 as in Kubernetes.",
    )
    scale_down_stabilization_s: JsonFloat = Field(
        300,
        ge=0,
        le=STABILIZATION_MAX_S,
        description="Seconds load must stay low before scaling in (Kubernetes: 300).",
    )
    cooldown_s: JsonFloat = Field(
        30, ge=0, le=COOLDOWN_MAX_S, description="Seconds after any scaling action."
    )
    max_step: JsonInt = Field(
        1, ge=1, le=100, description="Most replicas added/removed per action."
    )
    latency_target_ms: JsonFloat = Field(
        100,
        gt=0,
        le=LATENCY_TARGET_MAX_MS,
        description="p95 latency target (the first seed tool's 100 ms).",
    )
    requests_per_replica: JsonInt = Field(
        20,
        ge=1,
        le=JSON_INT_MAX,
        description="Requests per window one replica handles (the second seed: 20).",
    )
    request_window_s: JsonInt = Field(
        120, ge=10, le=JSON_INT_MAX, description="Window for requests_per_replica."
    )
    dry_run: JsonBool = Field(False, description="Decide and record, but do not act.")


_REPLICAS_DOC = (
    "At most the controller's max_replicas_per_service (1,000 by default; the schema's "
    "maximum is that of the controller serving it)."
)


# The schema of env's keys (pydantic states no propertyNames for a dict's keys).
_ENV_KEYS: dict[str, Any] = {"propertyNames": {"pattern": ENV_KEY.pattern}}


class ServiceSpec(Strict):
    """What a user deploys. Field names are the public API: keep them."""

    name: str = Field(
        pattern=SERVICE_NAME.pattern,
        description="DNS-style name: 1-63 lowercase letters, digits, dashes.",
    )
    image: str = Field(
        max_length=IMAGE_REF_MAX,
        pattern=IMAGE_REF.pattern,
        description="Docker image reference, e.g. orchestrify/demo:latest.",
    )
    env: dict[str, str] = Field(default_factory=dict, json_schema_extra=_ENV_KEYS)
    port: JsonInt = Field(
        8000, ge=1, le=65535, description="Container port the service listens on."
    )
    host_port: JsonIntOrNone = Field(
        None,
        ge=1,
        le=65535,
        description="Fixed published port (at most one replica per node); default: any.",
    )
    replicas: JsonInt = Field(1, ge=0, le=REPLICAS_HARD_MAX, description=_REPLICAS_DOC)
    min_replicas: JsonInt = Field(1, ge=0, le=REPLICAS_HARD_MAX, description=_REPLICAS_DOC)
    max_replicas: JsonInt = Field(10, ge=0, le=REPLICAS_HARD_MAX, description=_REPLICAS_DOC)
    health_path: str = Field("/health", max_length=1024, pattern=HEALTH_PATH.pattern)
    max_per_node: JsonIntOrNone = Field(
        None, ge=1, le=REPLICAS_HARD_MAX, description="Cap of replicas per node."
    )
    memory_mb: JsonIntOrNone = Field(
        None, ge=4, le=JSON_INT_MAX, description="Memory limit per container."
    )
    cpus: JsonFloat | None = Field(
        None, gt=0, le=CPUS_MAX, description="CPU limit per container (cores)."
    )
    drain_s: JsonFloat = Field(
        DEFAULT_DRAIN_S, ge=0, le=3600, description="Seconds to drain before stopping."
    )
    stop_grace_s: JsonFloat = Field(
        DEFAULT_STOP_GRACE_S,
        ge=0,
        le=3600,
        description="Seconds between SIGTERM and SIGKILL when a replica stops.",
    )
    policy: ScalingPolicy = Field(default_factory=ScalingPolicy)
    labels: dict[str, str] = Field(default_factory=dict, description="Free-form labels.")
    log_driver: LogDriver = Field(
        DEFAULT_LOG_DRIVER,
        description="Docker logging driver of the replicas (json-file: rotated by the agent's "
        "--log-max-size/--log-max-file unless log_opts set max-size/max-file).",
    )
    log_opts: dict[str, str] = Field(
        default_factory=dict,
        max_length=LOG_OPTS_MAX,
        description="The driver's --log-opt options, e.g. gelf-address: udp://HOST:12201.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not SERVICE_NAME.fullmatch(v):
            raise ValueError(
                "must be 1-63 lowercase letters, digits or dashes, "
                "not starting or ending with a dash"
            )
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if len(v) > IMAGE_REF_MAX or not IMAGE_REF.fullmatch(v):
            raise ValueError(f"not a valid image reference: {v!r}")
        return v

    @field_validator("port", "host_port")
    @classmethod
    def _port(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 65535:
            raise ValueError("must be between 1 and 65535")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not ENV_KEY.fullmatch(key):
                raise ValueError(f"env key {key!r} must match [A-Za-z_][A-Za-z0-9_]*")
        return v

    @field_validator("health_path")
    @classmethod
    def _health(cls, v: str) -> str:
        if not HEALTH_PATH.fullmatch(v):
            raise ValueError("must be a URL path starting with / and without spaces")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> ServiceSpec:
        check_bounds(self.replicas, self.min_replicas, self.max_replicas)
        if self.host_port is not None:
            self.max_per_node = 1
        problem = log_opts_problem(self.log_driver, self.log_opts)
        if problem is not None:
            raise FieldError("log_opts", problem)
        return self


class FieldError(ValueError):
    """A ValueError that knows which field it is about (model-level checks have no loc)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_bounds(replicas: int, min_replicas: int, max_replicas: int) -> None:
    if min_replicas > max_replicas:
        raise FieldError(
            "min_replicas",
            f"min_replicas ({min_replicas}) is greater than max_replicas ({max_replicas})",
        )
    if not min_replicas <= replicas <= max_replicas:
        raise FieldError(
            "replicas",
            f"replicas ({replicas}) must be within min_replicas..max_replicas "
            f"({min_replicas}..{max_replicas})",
        )


def error_location(err: dict[str, Any]) -> tuple[str, ...]:
    """Where a pydantic error is, including model-level FieldErrors' own field."""
    loc = tuple(str(p) for p in err.get("loc", ()))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc = (*loc, cause.field)
    return loc


# The fields that define a replica's container. Changing one of them is an update (a new
# generation, rolled out replica by replica); the others (replica counts, policy, drain,
# placement caps) apply to the running replicas as they are.
CONTAINER_FIELDS = (
    "image",
    "env",
    "port",
    "host_port",
    "health_path",
    "memory_mb",
    "cpus",
    "log_driver",
    "log_opts",
)
# Container fields added after specs were first stored, with the value a spec stored
# before them means. They count in a spec's hash only when they differ from it: every
# replica stored earlier keeps its hash, so an upgrade replaces no container.
_LATER_FIELDS: dict[str, Any] = {"log_driver": DEFAULT_LOG_DRIVER, "log_opts": {}}


def container_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The container-defining part of a stored service spec (what one replica runs); a
    field the spec predates has the value that means."""
    out = {key: spec.get(key) for key in CONTAINER_FIELDS}
    for key, default in _LATER_FIELDS.items():
        if out[key] is None:
            out[key] = default
    return out


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A short, stable hash of a replica's container spec (``container_spec``): equal
    specs hash equal whatever their key order, so an orphan is matched to a service."""
    fields = {
        key: value
        for key, value in container_spec(spec).items()
        if _LATER_FIELDS.get(key, _UNSET) != value
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


_UNSET = object()


class UpdateState(StrEnum):
    """Where a service's rolling update is (Swarm's UpdateStatus.State)."""

    COMPLETED = "completed"  # every running replica is of the current generation
    UPDATING = "updating"  # older replicas are being replaced one at a time
    PAUSED = "paused"  # a replica of the current generation failed; old ones keep serving


class ServicePatch(Strict):
    """A partial update (``PATCH /v1/services/{name}``); unset fields keep their value.

    ``null`` keeps the value too for a field a service cannot be without (image, port,
    counts...); for one a service may lack (memory_mb, cpus, max_per_node) it clears it."""

    def changes(self) -> dict[str, Any]:
        """The fields this patch changes, as a dict of new values."""
        given = self.model_dump(exclude_unset=True)
        return {k: v for k, v in given.items() if v is not None or k in _CLEARABLE}

    image: str | None = Field(None, max_length=IMAGE_REF_MAX, pattern=IMAGE_REF.pattern)
    env: dict[str, str] | None = Field(None, json_schema_extra=_ENV_KEYS)
    port: JsonIntOrNone = Field(None, ge=1, le=65535)
    replicas: JsonIntOrNone = Field(None, ge=0, le=REPLICAS_HARD_MAX, description=_REPLICAS_DOC)
    min_replicas: JsonIntOrNone = Field(None, ge=0, le=REPLICAS_HARD_MAX, description=_REPLICAS_DOC)
    max_replicas: JsonIntOrNone = Field(None, ge=0, le=REPLICAS_HARD_MAX, description=_REPLICAS_DOC)
    health_path: str | None = Field(None, max_length=1024, pattern=HEALTH_PATH.pattern)
    max_per_node: JsonIntOrNone = Field(None, ge=1, le=REPLICAS_HARD_MAX)
    memory_mb: JsonIntOrNone = Field(None, ge=4, le=JSON_INT_MAX)
    cpus: JsonFloat | None = Field(None, gt=0, le=CPUS_MAX)
    drain_s: JsonFloat | None = Field(None, ge=0, le=3600)
    stop_grace_s: JsonFloat | None = Field(None, ge=0, le=3600)
    policy: ScalingPolicy | None = None
    log_driver: LogDriver | None = Field(
        None, description="A new driver; log_opts are kept unless given too."
    )
    log_opts: dict[str, str] | None = Field(
        None, max_length=LOG_OPTS_MAX, description="The driver's options, all of them."
    )


_CLEARABLE = frozenset({"max_per_node", "memory_mb", "cpus"})


class Service(ServiceSpec):
    model_config = ConfigDict(extra="ignore")
    created_at: datetime
    updated_at: datetime
    generation: int = Field(
        1,
        description="Bumped when a container-defining field changes (image, env, port, "
        "host_port, health_path, memory_mb, cpus); not on scaling.",
    )
    updated_replicas: int = Field(
        0, description="Replicas meant to run that are of the current generation."
    )
    update_state: UpdateState = Field(
        UpdateState.COMPLETED, description="completed | updating | paused (rolling update)."
    )
    update_message: str | None = Field(None, description="Why the rolling update is paused.")
    previous_generation: int | None = Field(
        None,
        description="The generation a rollback returns to (POST /v1/services/{name}/rollback); "
        "None: the service has not been updated, so there is nothing to roll back to.",
    )
    previous_spec: dict[str, Any] | None = Field(
        None, description="The container fields (image, env, ...) of previous_generation."
    )


class Orphan(BaseModel):
    """A container an agent keeps running that no controller of its cluster accounts for:
    met a controller with a new store, a node id it did not know, or no cluster label."""

    container_id: str = Field(max_length=80)
    replica: str = Field(max_length=80, description="Its orchestrify.replica label.")
    service: str = Field(max_length=63, description="Its orchestrify.service label.")
    address: str | None = Field(None, max_length=300, description="host:port it answers on.")
    spec_hash: str | None = Field(
        None, max_length=64, description="Its orchestrify.spec label (None: an older build)."
    )
    image: str | None = Field(None, max_length=512)
    cluster_id: str | None = Field(
        None, max_length=64, description="Its orchestrify.cluster label (None: older build)."
    )
    running: JsonBool = True


class NodeRegistration(Strict):
    name: str = Field(min_length=1, max_length=253)
    address: str = Field(
        min_length=1,
        max_length=253,
        pattern=HOST_ADDRESS.pattern,
        description="Address replicas publish on: an IP address or a DNS name.",
    )
    node_id: str | None = Field(
        None,
        max_length=32,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$",
        description="The node's id: picked by the agent before its first registration "
        "(secrets.token_hex(6)) and saved, or given by an earlier one. A registration "
        "of an id the controller does not know makes the node under it.",
    )
    node_token: str | None = Field(
        None,
        min_length=32,
        max_length=256,
        description="The node's own token, with node_id: picked by the agent with its id "
        "(secrets.token_urlsafe(32)), or given by an earlier registration. Re-registering "
        "a node id this controller knows needs it (kept, not rotated) or the admin token; "
        "the join token alone is refused with 409. For an id the controller does not "
        "know, it becomes the node's token.",
    )
    cluster_id: str | None = Field(
        None,
        max_length=64,
        description="The cluster the agent last registered with (informative: the agent "
        "compares it with the answer's cluster_id itself).",
    )
    containers: list[Orphan] = Field(
        default_factory=list,
        max_length=10_000,
        description="The labelled containers the agent runs. When the controller does not "
        "know the node, they are its orphans from the start, so nothing is placed beside "
        "them before the agent's first report.",
    )
    labels: dict[str, str] = Field(default_factory=dict)
    cpus: JsonIntOrNone = Field(None, ge=0, le=JSON_INT_MAX)
    memory_total: JsonIntOrNone = Field(None, ge=0, le=JSON_INT_MAX, description="Bytes.")
    agent_url: str | None = Field(
        None, max_length=512, description="Where the agent's /metrics is served."
    )


class NodeCredentials(BaseModel):
    node_id: str
    node_token: str
    cluster_id: str = Field(
        "",
        description="The id of the controller's store, made with it; every container "
        "carries it (label orchestrify.cluster).",
    )
    agent_key: str | None = Field(
        None,
        description="What the controllers present to this node's agent API (its logs); "
        "the agent keeps it in memory only.",
    )
    known: bool = Field(
        False,
        description="True when the controller knew the node_id it was given (or the node by "
        "its name). False: the node is new to this store, and its existing containers are "
        "orphans to the agent, never removed without `node adopt` or `node prune`.",
    )
    controller_version: str | None = Field(None, description="The controller's package version.")
    protocol_version: int | None = Field(None, description="The controller's protocol version.")


class Heartbeat(Strict):
    address: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        pattern=HOST_ADDRESS.pattern,
        description="The agent's current address, when it detects it (not pinned with "
        "--advertise-address): a change moves the node and its replicas' addresses.",
    )
    cpu_percent: JsonFloat | None = Field(None, ge=0, le=1e6, allow_inf_nan=False)
    memory_total: JsonIntOrNone = Field(None, ge=0, le=JSON_INT_MAX, description="Bytes.")
    memory_free: JsonIntOrNone = Field(None, ge=0, le=JSON_INT_MAX, description="Bytes.")
    disk_free: JsonIntOrNone = Field(None, ge=0, le=JSON_INT_MAX, description="Bytes.")
    replica_count: JsonIntOrNone = Field(None, ge=0, le=JSON_INT_MAX)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        # It becomes the host of every replica's host:port, and so of Nginx upstreams.
        if v is not None and not HOST_ADDRESS.fullmatch(v):
            raise ValueError("must be an IP address or a DNS name")
        return v


class Node(BaseModel):
    id: str
    name: str
    address: str
    state: NodeState
    labels: dict[str, str] = Field(default_factory=dict)
    cpus: int | None = None
    cpu_percent: float | None = None
    memory_total: int | None = None
    memory_free: int | None = None
    disk_free: int | None = None
    replica_count: int = 0
    agent_url: str | None = None
    last_heartbeat: datetime | None = None
    created_at: datetime
    orphaned: list[Orphan] = Field(
        default_factory=list,
        description="Containers the node keeps running that this controller does not "
        "account for: `node adopt` makes them replicas again, `node prune` removes them.",
    )
    pruning: list[str] = Field(
        default_factory=list, description="Orphan container ids the agent was told to remove."
    )
    removing: bool = Field(
        False,
        description="Draining to be forgotten (POST /v1/nodes/{id}/drain?remove=true): the "
        "controller forgets it once no replica is left on it.",
    )


class OrphanAdoption(BaseModel):
    """What ``POST /v1/nodes/{id}/adopt`` (or re-creating a service) did with orphans."""

    node: str
    adopted: list[str] = Field(
        default_factory=list, description="Replica ids adopted as the service's current spec."
    )
    outdated: list[str] = Field(
        default_factory=list,
        description="Replica ids adopted as an older generation: their spec differs from "
        "the service's, so the rolling update replaces them one at a time.",
    )
    left: list[Orphan] = Field(
        default_factory=list, description="Orphans still orphans: no service of their name."
    )
    message: str


class OrphanPrune(BaseModel):
    """What ``POST /v1/nodes/{id}/prune`` asked the agent to remove."""

    node: str
    pruning: list[str] = Field(description="Container ids the agent removes.")
    message: str


class Replica(BaseModel):
    id: str
    service: str
    node: str = Field(description="Node id.")
    node_name: str | None = None
    state: ReplicaState
    desired: DesiredState = DesiredState.RUN
    address: str | None = Field(None, description="host:port once running.")
    container_id: str | None = None
    error: str | None = None
    restarts: int = 0
    stop_after: datetime | None = None
    left_upstreams_at: datetime | None = Field(
        None,
        description="When it was taken out of the upstreams (drained while in Nginx); its "
        "container stops once every edge has applied a view from after this time.",
    )
    generation: int = Field(1, description="The service generation this replica runs.")
    created_at: datetime
    updated_at: datetime


class ReplicaReport(Strict):
    """What an agent observed of one replica."""

    id: str
    state: ReplicaState | str = Field(description="A ReplicaState, or 'stopped' once removed.")
    address: str | None = None
    container_id: str | None = None
    error: str | None = None
    restarts: JsonIntOrNone = Field(None, ge=0, le=JSON_INT_MAX)


class ReplicaReports(Strict):
    replicas: list[ReplicaReport]
    full: JsonBool = Field(
        False, description="True when this is every replica the agent has (periodic resync)."
    )
    orphans: list[Orphan] | None = Field(
        None,
        description="Every orphan the agent keeps (replaces what the controller holds); "
        "None: unchanged since the last report that carried them.",
    )


class Assignment(BaseModel):
    """One replica a node must run (or stop), with the spec it runs: the one it was created
    with (its own generation), which is not the service's newest during a rolling update."""

    replica: str
    service: str
    desired: DesiredState
    image: str
    env: dict[str, str]
    port: int
    host_port: int | None
    health_path: str
    memory_mb: int | None
    cpus: float | None
    log_driver: str = Field(
        DEFAULT_LOG_DRIVER, description="Docker logging driver (older controllers: json-file)."
    )
    log_opts: dict[str, str] = Field(default_factory=dict, description="Its --log-opt options.")
    generation: int
    spec_hash: str | None = Field(
        None,
        description="Hash of the replica's container spec (the agent's orchestrify.spec "
        "label); a container is replaced for a spec change only when its label differs.",
    )
    stop_grace_s: float = Field(
        DEFAULT_STOP_GRACE_S, description="Seconds between SIGTERM and SIGKILL at its stop."
    )


class Assignments(BaseModel):
    version: int
    node: str
    replicas: list[Assignment]
    cluster_id: str = Field(
        "", description="The controller's cluster id: the agent checks it is still the same."
    )
    prune: list[str] = Field(
        default_factory=list,
        description="Orphan container ids the agent must remove (`orchestrify node prune`).",
    )


class Event(BaseModel):
    id: int
    time: datetime
    kind: str = Field(description="alert | decision | action | node | replica | config | job")
    service: str | None = None
    node: str | None = None
    replica: str | None = None
    action: str | None = None
    outcome: str | None = Field(None, description="ok | refused | failed | info")
    reason: str | None = None
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class AlertEpisode(BaseModel):
    """One firing of one alert (Alertmanager's fingerprint and ``startsAt``), as the
    controller stored it, with the decisions it led to."""

    id: str = Field(description="The episode: fingerprint@startsAt.")
    alertname: str
    status: str = Field(description="firing | resolved")
    labels: dict[str, str]
    summary: str | None = Field(None, description="The summary annotation of its last notice.")
    starts_at: datetime
    last_seen_at: datetime = Field(description="When its last notice arrived.")
    resolved_at: datetime | None = None
    decisions: list[Event] = Field(
        default_factory=list,
        description="The decisions taken on it, newest first (among the controller's last "
        "1,000 decisions; `GET /v1/events?kind=decision` has every one).",
    )


class NodeRemoval(BaseModel):
    """What ``DELETE /v1/nodes/{id}`` did: the node is forgotten now (a GET of it is a 404
    from then on)."""

    node: str = Field(description="Node id.")
    name: str
    removed: bool = Field(True, description="Always true: the node is forgotten now.")
    replicas_forgotten: int = Field(
        0, description="Replicas the node still had (force only); they are placed elsewhere."
    )
    message: str


class UpstreamReplica(BaseModel):
    """One replica Nginx may send traffic to: running, healthy, with an address."""

    id: str
    address: str = Field(description="host:port the replica answers on.")
    node: str = Field(description="Node id.")
    node_name: str | None = None


class UpstreamService(BaseModel):
    name: str
    port: int = Field(description="Container port (informative: replicas answer on address).")
    drain_s: float = Field(description="Seconds a replica keeps running after it leaves.")
    replicas: list[UpstreamReplica]
    kept_from_cluster: str | None = Field(
        None,
        description="Set by an edge, never by the controller: the cluster this service came "
        "from, kept in Nginx because the controller's (new) cluster does not serve it.",
    )


class Upstreams(BaseModel):
    """What an edge renders Nginx from (``GET /v1/upstreams``)."""

    version: int
    as_of: datetime | None = Field(
        None,
        description="The controller's time of this snapshot: every change written before "
        "it is in it. The edge reports it back once Nginx serves the view (applied_as_of).",
    )
    services: list[UpstreamService]
    cluster_id: str | None = Field(
        None,
        description="The controller's cluster (its store). An edge keeps serving the "
        "services of another cluster that this one does not serve: a new or wiped store "
        "never empties Nginx.",
    )


class EdgeRegistration(Strict):
    name: str = Field(min_length=1, max_length=253, description="Unique edge name (its host).")
    metrics_url: str | None = Field(
        None, max_length=512, description="Where the edge's /metrics is served, for Prometheus."
    )
    applied_as_of: JsonTime | None = Field(
        None,
        description="The as_of of the upstreams view its Nginx serves now: a draining replica "
        "stops once every recently seen edge has applied a view from after it left.",
    )


class Edge(BaseModel):
    name: str
    metrics_url: str | None = None
    applied_as_of: datetime | None = None
    last_seen: datetime
    created_at: datetime


class EdgeEvent(Strict):
    """Something an edge did or failed to do (a refused config, a rollback)."""

    message: str = Field(min_length=1, max_length=10_000)
    kind: str = Field("config", pattern=r"^[a-z_]{1,16}$")
    service: str | None = None
    outcome: str | None = Field(None, description="ok | refused | failed | info")
    reason: str | None = Field(None, max_length=10_000)
    data: dict[str, Any] = Field(default_factory=dict)
