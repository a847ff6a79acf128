"""The agent's only door to Docker: the SDK's calls, errors translated at this border.

Every method is async and runs the blocking SDK call in a thread, except the two the
logs API calls from its own request threads (``replica_containers``, ``open_logs``).
Every query filters by the ``orchestrify.node`` label, so the agent never sees (let
alone touches) a container it did not create.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import docker
import docker.errors
from docker.types import LogConfig

from orchestrify.errors import DockerFailure, ImagePullFailed, LogsUnreadable, NotFound

log = logging.getLogger(__name__)

LABEL_SERVICE = "orchestrify.service"
LABEL_REPLICA = "orchestrify.replica"
LABEL_NODE = "orchestrify.node"
LABEL_GENERATION = "orchestrify.generation"
LABEL_RESTARTS = "orchestrify.restarts"
LABEL_CLUSTER = "orchestrify.cluster"  # the id of the controller's store that ordered it
RETIRED_SUFFIX = "-retired"  # a replaced container kept (stopped) for its logs
LABEL_SPEC = "orchestrify.spec"  # the hash of the container spec it runs (Assignment.spec_hash)

LOG_CHUNK_BYTES = 64 * 1024  # the most read from a log stream at once (and handed on)
# The log options that say where a driver that Docker cannot read back sends the logs.
LOG_ADDRESS_OPTS = ("gelf-address", "syslog-address", "fluentd-address")


@dataclass(frozen=True, kw_only=True)
class ContainerSpec:
    """What the agent asks the engine to run for one replica."""

    name: str
    image: str
    env: dict[str, str]
    port: int
    host_port: int | None
    bind_address: str
    labels: dict[str, str]
    memory_mb: int | None = None
    cpus: float | None = None
    log_max_size: str = "10m"
    log_max_file: int = 3
    log_driver: str = "json-file"
    log_opts: dict[str, str] = field(default_factory=dict)

    def log_config(self) -> LogConfig:
        """The container's logging: the service's driver and options; json-file is
        rotated at ``log_max_size`` x ``log_max_file`` unless the options say otherwise."""
        config = dict(self.log_opts)
        if self.log_driver == "json-file":
            config = {"max-size": self.log_max_size, "max-file": str(self.log_max_file)} | config
        return LogConfig(type=self.log_driver, config=config)


@dataclass(frozen=True, kw_only=True)
class ContainerInfo:
    """A labelled container as the engine sees it (a view, never an SDK object)."""

    id: str
    replica: str
    service: str
    running: bool
    status: str
    host_port: int | None = None
    exit_code: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""

    @property
    def generation(self) -> int | None:
        value = self.labels.get(LABEL_GENERATION)
        return int(value) if value and value.isdigit() else None

    @property
    def restarts(self) -> int:
        value = self.labels.get(LABEL_RESTARTS, "0")
        return int(value) if value.isdigit() else 0


@dataclass(frozen=True, kw_only=True)
class ReplicaContainer:
    """One of a service's containers on this node as the logs API lists it: which
    replica it ran, its state, and where its logs are (``log_driver``, ``log_address``)."""

    id: str
    name: str
    replica: str
    service: str
    state: str  # Docker's State.Status: running, exited, created...
    created: str  # Docker's Created, RFC 3339 with nanoseconds
    log_driver: str
    log_address: str | None


class LogStream:
    """A container's log stream as Docker sends it (the raw multiplexed bytes).

    Iterating yields byte chunks of at most ``LOG_CHUNK_BYTES`` as soon as the engine
    sends them (Docker sends its stream chunked, one HTTP chunk per log message).
    ``close()`` may be called from any thread: it shuts the connection's socket down,
    which wakes a read blocked on a quiet container, so the iteration ends at once and
    the connection is released (never reused: it may be mid-stream).
    """

    def __init__(self, response: Any, sock: Any, *, container_id: str) -> None:
        self.container_id = container_id
        self._response = response
        self._socket = getattr(sock, "_sock", sock)  # the socket under http.client's SocketIO
        self._lock = threading.Lock()
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._response.raw.stream(LOG_CHUNK_BYTES, decode_content=False):
                if chunk:
                    yield chunk
        except Exception as exc:  # urllib3 or the socket: the stream is over either way
            if not self.closed:
                log.warning(
                    "docker log stream broke",
                    extra={"container": self.container_id[:12], "error": str(exc)},
                )
        finally:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._response.close()


@dataclass(frozen=True, kw_only=True)
class ContainerEvent:
    """A lifecycle event of one of the node's containers (``die``, ``start``, ``destroy``…)."""

    container_id: str
    replica: str | None
    action: str
    exit_code: int | None = None


class Engine(Protocol):
    """What the agent needs of a container engine (the real one, or a fake in unit tests)."""

    async def list_containers(self, node_id: str) -> list[ContainerInfo]: ...
    async def ensure_image(self, image: str) -> None: ...
    async def run(self, spec: ContainerSpec) -> ContainerInfo: ...
    async def remove(
        self, container_id: str, *, grace_s: float = 0.0, keep_logs: bool = False
    ) -> None: ...
    async def retired_containers(self, node_id: str) -> list[ContainerInfo]: ...


class DockerEngine:
    """The real engine, through the Docker SDK."""

    def __init__(self, url: str, *, timeout_s: float = 60.0) -> None:
        self.url = url
        try:
            self._client = docker.DockerClient(base_url=url, timeout=int(timeout_s))
        except docker.errors.DockerException as exc:
            raise DockerFailure(f"cannot use the Docker engine at {url}: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    async def ping(self) -> None:
        await asyncio.to_thread(self._call, "ping", self._client.ping)

    async def list_containers(self, node_id: str) -> list[ContainerInfo]:
        """The node's replica containers, the retired ones (kept for their logs) aside."""

        def list_() -> list[ContainerInfo]:
            containers = self._client.containers.list(
                all=True, filters={"label": [f"{LABEL_NODE}={node_id}"]}
            )
            return [
                _info(c.attrs)
                for c in containers
                if c.labels.get(LABEL_REPLICA) and not c.name.endswith(RETIRED_SUFFIX)
            ]

        return await asyncio.to_thread(self._call, "list containers", list_)

    async def retired_containers(self, node_id: str) -> list[ContainerInfo]:
        """The node's stopped containers kept for their logs (``remove(keep_logs=True)``).

        One call to the engine's list (its summaries carry names, labels and state): the
        SDK's ``containers.list`` would inspect every container again, every resync."""

        def list_() -> list[ContainerInfo]:
            found = self._client.api.containers(
                all=True,
                filters={"label": [f"{LABEL_NODE}={node_id}"], "status": ["exited", "dead"]},
            )
            return [
                ContainerInfo(
                    id=c["Id"],
                    replica=labels[LABEL_REPLICA],
                    service=labels.get(LABEL_SERVICE, ""),
                    running=False,
                    status=str(c.get("State", "exited")),
                    labels=labels,
                )
                for c in found
                if (labels := c.get("Labels") or {}).get(LABEL_REPLICA)
                and any(str(n).endswith(RETIRED_SUFFIX) for n in c.get("Names") or [])
            ]

        return await asyncio.to_thread(self._call, "list retired containers", list_)

    async def ensure_image(self, image: str) -> None:
        """Pull ``image`` unless the engine already has it."""

        def ensure() -> None:
            try:
                self._client.images.get(image)
                return
            except docker.errors.ImageNotFound:
                pass
            repo, tag = _split_tag(image)
            log.info("pulling image", extra={"image": image})
            try:
                self._client.images.pull(repo, tag=tag)
            except docker.errors.DockerException as exc:
                raise ImagePullFailed(f"cannot pull image {image}: {_explain(exc)}") from exc

        await asyncio.to_thread(self._call, f"inspect image {image}", ensure)

    async def run(self, spec: ContainerSpec) -> ContainerInfo:
        """Create and start the container; answer with its published port."""

        def run() -> ContainerInfo:
            kwargs: dict[str, Any] = {
                "name": spec.name,
                "environment": spec.env,
                "labels": spec.labels,
                "ports": {f"{spec.port}/tcp": (spec.bind_address, spec.host_port)},
                "detach": True,
                "log_config": spec.log_config(),
            }
            if spec.memory_mb:
                kwargs["mem_limit"] = f"{spec.memory_mb}m"
            if spec.cpus:
                kwargs["nano_cpus"] = int(spec.cpus * 1e9)
            container = self._client.containers.create(spec.image, **kwargs)
            try:
                container.start()
                container.reload()
            except docker.errors.DockerException:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
                raise
            return _info(container.attrs, port=spec.port)

        return await asyncio.to_thread(self._call, f"run {spec.name}", run)

    async def remove(
        self, container_id: str, *, grace_s: float = 0.0, keep_logs: bool = False
    ) -> None:
        """Stop and remove; a container already gone is fine.

        With ``grace_s`` > 0 this is ``docker stop -t``: SIGTERM (the image's STOPSIGNAL),
        SIGKILL after ``grace_s`` seconds (rounded up: the engine counts whole seconds),
        so the application can finish its in-flight work; then the container is removed.
        With 0 it is killed at once.

        With ``keep_logs`` (a replica's container replaced in place) the stopped container
        is kept, renamed ``…-retired``, so that ``service logs`` still shows what it wrote
        before it died: ``list_containers`` no longer lists it, ``retired_containers``
        does, and the reconciler removes it later (``NodeReconciler.retired_to_remove``).
        """

        def remove() -> None:
            api = self._client.api
            try:
                if keep_logs:
                    api.stop(container_id, timeout=math.ceil(grace_s))  # stopped: a no-op
                    name = str(api.inspect_container(container_id)["Name"]).lstrip("/")
                    if name.endswith(RETIRED_SUFFIX):
                        return
                    try:
                        api.rename(container_id, name + RETIRED_SUFFIX)
                        return
                    except docker.errors.APIError as exc:
                        log.warning(
                            "cannot keep a replaced container for its logs; removing it",
                            extra={"container": container_id[:12], "error": _explain(exc)},
                        )
                elif grace_s > 0:
                    api.stop(container_id, timeout=math.ceil(grace_s))
                api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                return

        await asyncio.to_thread(self._call, f"remove {container_id[:12]}", remove)

    def replica_containers(self, node_id: str, service: str) -> list[ReplicaContainer]:
        """The node's containers of ``service``, running or not, oldest first.

        Synchronous: the logs API calls it from its own request threads.
        """

        def list_() -> list[ReplicaContainer]:
            containers = self._client.containers.list(
                all=True,
                filters={"label": [f"{LABEL_NODE}={node_id}", f"{LABEL_SERVICE}={service}"]},
                ignore_removed=True,  # removed between the listing and its inspection
            )
            found = [_replica_container(c.attrs) for c in containers]
            return sorted(found, key=lambda c: (_created_order(c.created), c.id))

        result: list[ReplicaContainer] = self._call(f"list containers of {service}", list_)
        return result

    def open_logs(
        self,
        node_id: str,
        container_id: str,
        *,
        follow: bool,
        since: str | None = None,
        until: str | None = None,
        tail: str = "all",
    ) -> LogStream:
        """Open ``GET /containers/{id}/logs`` (stdout, stderr, timestamps) of one of the
        node's containers; ``since``/``until`` are Unix seconds, ``tail`` a count or
        ``all``, all passed to Docker as they are.

        Synchronous, for the logs API's request threads. Raises ``NotFound`` for a
        container that is not this node's (or none), ``LogsUnreadable`` when its logging
        driver cannot be read back, ``DockerFailure`` when the engine fails.
        """
        api = self._client.api

        def open_() -> LogStream:
            try:
                attrs = api.inspect_container(container_id)
            except docker.errors.APIError as exc:
                if exc.is_client_error():  # none, or a prefix naming several
                    raise NotFound(f"no container {container_id} on this node") from exc
                raise
            labels = (attrs.get("Config") or {}).get("Labels") or {}
            if labels.get(LABEL_NODE) != node_id:  # not ours to show, nor to confirm
                raise NotFound(f"no container {container_id} on this node")
            full_id = str(attrs["Id"])
            params: dict[str, Any] = {
                "stdout": 1,
                "stderr": 1,
                "timestamps": 1,
                "follow": int(follow),
                "tail": tail,
            }
            if since is not None:
                params["since"] = since
            if until is not None:
                params["until"] = until
            response = api._get(
                api._url("/containers/{0}/logs", full_id), params=params, stream=True
            )
            try:
                api._raise_for_status(response)
            except docker.errors.APIError as exc:
                response.close()
                if exc.status_code == 404:
                    raise NotFound(f"no container {container_id} on this node") from exc
                if _cannot_read_logs(exc):
                    driver, address = _log_config(attrs)
                    raise LogsUnreadable(
                        _explain(exc), log_driver=driver, log_address=address
                    ) from exc
                raise
            sock = api._get_raw_response_socket(response)
            if follow:
                # A quiet container may send nothing for hours: only close() ends it.
                api._disable_socket_timeout(sock)
            return LogStream(response, sock, container_id=full_id)

        stream: LogStream = self._call(f"logs of {container_id[:12]}", open_)
        return stream

    def watch_events(
        self, node_id: str, on_event: Callable[[ContainerEvent], None]
    ) -> Callable[[], None]:
        """Follow the engine's event stream in a thread; returns a function that stops it.

        ``on_event`` runs in that thread: hand the event to asyncio with
        ``loop.call_soon_threadsafe``. A broken stream is reopened after a second.
        """
        stopping = threading.Event()
        current: list[Any] = []

        def follow() -> None:
            while not stopping.is_set():
                try:
                    stream = self._client.events(
                        decode=True,
                        filters={"type": "container", "label": [f"{LABEL_NODE}={node_id}"]},
                    )
                    current[:] = [stream]
                    for raw in _iter(stream):
                        event = _event(raw)
                        if event is not None:
                            on_event(event)
                except Exception as exc:  # the stream must outlive any hiccup
                    if not stopping.is_set():
                        log.warning("docker event stream broke; reopening", extra={"error": exc})
                if not stopping.wait(1.0):
                    continue

        thread = threading.Thread(target=follow, name="docker-events", daemon=True)
        thread.start()

        def stop() -> None:
            stopping.set()
            for stream in current:
                with contextlib.suppress(Exception):
                    stream.close()

        return stop

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (DockerFailure, ImagePullFailed):
            raise
        except docker.errors.ImageNotFound as exc:
            raise ImagePullFailed(f"{what}: {_explain(exc)}") from exc
        except docker.errors.DockerException as exc:
            raise DockerFailure(f"{what}: {_explain(exc)}") from exc
        except OSError as exc:  # the socket itself
            raise DockerFailure(f"{what}: Docker engine at {self.url}: {exc}") from exc


def _iter(stream: Any) -> Iterator[dict[str, Any]]:
    yield from stream


def _event(raw: dict[str, Any]) -> ContainerEvent | None:
    actor = raw.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    action = str(raw.get("Action") or raw.get("status") or "")
    cid = actor.get("ID") or raw.get("id")
    if not cid or action.startswith(("exec_", "health_status")):
        return None
    code = attrs.get("exitCode")
    return ContainerEvent(
        container_id=str(cid),
        replica=attrs.get(LABEL_REPLICA),
        action=action,
        exit_code=int(code) if isinstance(code, str) and code.isdigit() else None,
    )


def _info(attrs: dict[str, Any], *, port: int | None = None) -> ContainerInfo:
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    state = attrs.get("State") or {}
    return ContainerInfo(
        id=attrs["Id"],
        replica=labels.get(LABEL_REPLICA, ""),
        service=labels.get(LABEL_SERVICE, ""),
        running=bool(state.get("Running")),
        status=str(state.get("Status", "unknown")),
        exit_code=state.get("ExitCode"),
        host_port=_published_port(attrs, port),
        labels=dict(labels),
        image=str((attrs.get("Config") or {}).get("Image") or ""),
    )


def _replica_container(attrs: dict[str, Any]) -> ReplicaContainer:
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    driver, address = _log_config(attrs)
    return ReplicaContainer(
        id=str(attrs["Id"]),
        name=str(attrs.get("Name") or "").lstrip("/"),
        replica=labels.get(LABEL_REPLICA, ""),
        service=labels.get(LABEL_SERVICE, ""),
        state=str((attrs.get("State") or {}).get("Status", "unknown")),
        created=str(attrs.get("Created") or ""),
        log_driver=driver,
        log_address=address,
    )


def _log_config(attrs: dict[str, Any]) -> tuple[str, str | None]:
    """The container's logging driver, and where it sends the logs when it says so."""
    config = (attrs.get("HostConfig") or {}).get("LogConfig") or {}
    opts = config.get("Config") or {}
    address = next((opts[key] for key in LOG_ADDRESS_OPTS if opts.get(key)), None)
    return str(config.get("Type") or ""), address


def _created_order(created: str) -> tuple[str, str]:
    """A sort key for Docker's ``Created`` (UTC, RFC 3339 with up to 9 fraction digits,
    trailing zeros dropped): as strings, ``.5Z`` would sort after ``.51Z``."""
    stamp = created.removesuffix("Z")
    whole, _, fraction = stamp.partition(".")
    return whole, fraction.ljust(9, "0")


def _cannot_read_logs(exc: docker.errors.APIError) -> bool:
    """Docker's answer for a logging driver it cannot read back: 501, "configured logging
    driver does not support reading"."""
    return exc.status_code == 501 or "does not support reading" in str(exc.explanation or "")


def _published_port(attrs: dict[str, Any], port: int | None) -> int | None:
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    keys = [f"{port}/tcp"] if port else list(ports)
    for key in keys:
        for binding in ports.get(key) or []:
            if binding.get("HostPort"):
                return int(binding["HostPort"])
    return None


def _split_tag(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image, None
    name, _, tag = image.rpartition(":")
    if name and "/" not in tag:
        return name, tag
    return image, "latest"


def _explain(exc: docker.errors.DockerException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)
