"""The agent's only door to Docker: the SDK's calls, errors translated at this border.

Every method is async and runs the blocking SDK call in a thread. Every query filters
by the ``orchestrify.node`` label, so the agent never sees (let alone touches) a
container it did not create.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import docker
import docker.errors
from docker.types import LogConfig

from orchestrify.errors import DockerFailure, ImagePullFailed

log = logging.getLogger(__name__)

LABEL_SERVICE = "orchestrify.service"
LABEL_REPLICA = "orchestrify.replica"
LABEL_NODE = "orchestrify.node"
LABEL_GENERATION = "orchestrify.generation"
LABEL_RESTARTS = "orchestrify.restarts"
LABEL_CLUSTER = "orchestrify.cluster"  # the id of the controller's store that ordered it
LABEL_SPEC = "orchestrify.spec"  # the hash of the container spec it runs (Assignment.spec_hash)


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
    async def remove(self, container_id: str, *, grace_s: float = 0.0) -> None: ...


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
        def list_() -> list[ContainerInfo]:
            containers = self._client.containers.list(
                all=True, filters={"label": [f"{LABEL_NODE}={node_id}"]}
            )
            return [_info(c.attrs) for c in containers if c.labels.get(LABEL_REPLICA)]

        return await asyncio.to_thread(self._call, "list containers", list_)

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

    async def remove(self, container_id: str, *, grace_s: float = 0.0) -> None:
        """Stop and remove; a container already gone is fine.

        With ``grace_s`` > 0 this is ``docker stop -t``: SIGTERM (the image's STOPSIGNAL),
        SIGKILL after ``grace_s`` seconds (rounded up: the engine counts whole seconds),
        so the application can finish its in-flight work; then the container is removed.
        With 0 it is killed at once.
        """

        def remove() -> None:
            try:
                if grace_s > 0:
                    self._client.api.stop(container_id, timeout=math.ceil(grace_s))
                self._client.api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                return

        await asyncio.to_thread(self._call, f"remove {container_id[:12]}", remove)

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
