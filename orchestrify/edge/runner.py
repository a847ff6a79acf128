"""The edge's reconcile loop: watch the controller's upstreams, keep Nginx in step.

Two tasks share the latest upstream list: the watcher long-polls ``/v1/upstreams`` and
pokes the debouncer; the applier waits for a burst to settle, renders and applies.
A failed apply is recorded as a ``config`` event and retried at the next change or
resync; Nginx keeps serving its last good config meanwhile.

Drain ordering: the controller drops a replica from ``/v1/upstreams`` the moment it is
set to ``drain`` and stops its container only ``drain_s`` later. The edge applies a
removal ``debounce_min_s`` after it sees it (without waiting out a burst), and Nginx's
graceful reload lets old workers finish their in-flight requests. So as long as
``drain_s`` exceeds the edge's reaction (long-poll wake-up + debounce_min_s + reload,
well under a second on a LAN) plus the longest request, no request reaches a stopped
container.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrify.client import AsyncControllerClient
from orchestrify.edge.apply import ApplyResult, ConfigApplier
from orchestrify.edge.debounce import Debouncer
from orchestrify.edge.nginx import NginxProcess
from orchestrify.edge.render import NginxRenderSettings, render_nginx
from orchestrify.edge.telemetry import EdgeMetrics, LogReceiver
from orchestrify.edge.view import AddressBook, EdgeView, build_view, removed_replicas
from orchestrify.errors import InvalidSpec, OrchestrifyError
from orchestrify.models import Upstreams

log = logging.getLogger(__name__)

__all__ = ["Edge", "EdgeSettings", "parse_listen", "run_edge"]


class EdgeSettings(BaseModel):
    """Everything an edge needs; each field says its unit and why its default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    controller_url: str = Field(description="Controller API URL.")
    token: str | None = Field(description="Admin token of the controller.")
    nginx_conf_dir: Path = Field(description="Nginx prefix: nginx.conf, upstreams.conf, pid.")
    nginx_bin: str = Field("nginx", description="The nginx binary.")
    listen: str = Field("8080", description="Where Nginx listens: PORT or HOST:PORT.")
    domain: str = Field("localhost", pattern=r"^[A-Za-z0-9.-]{1,200}$", description="NAME.domain")
    metrics_host: str = Field("127.0.0.1", description="Address of the edge's /metrics.")
    metrics_port: int = Field(18082, ge=0, le=65535, description="0: no metrics server.")
    metrics_url: str | None = Field(
        None, description="URL Prometheus scrapes, told to the controller (default: derived)."
    )
    log_port: int = Field(
        0, ge=0, le=65535, description="UDP port Nginx sends access logs to (0: any free port)."
    )
    name: str = Field(default_factory=socket.gethostname, description="Edge name (unique).")
    templates_dir: Path | None = Field(None, description="Folder of nginx.conf.j2 and co.")
    debounce_min_s: float = Field(0.2, ge=0, description="Quiet time that ends a burst.")
    debounce_max_s: float = Field(2.0, gt=0, description="Longest a burst delays a reload.")
    resync_s: float = Field(30.0, gt=0, description="Re-register and re-check this often.")
    watch_timeout_s: float = Field(30.0, gt=0, le=300, description="Long-poll wait.")
    verify_timeout_s: float = Field(5.0, gt=0, description="Wait for Nginx to serve a config.")
    connect_timeout: str = Field("500ms", description="proxy_connect_timeout (skip dead fast).")
    worker_processes: str = Field("auto", description="Nginx worker_processes.")

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    def listen_address(self) -> tuple[str, int]:
        """Where to reach Nginx from this host (a wildcard address becomes loopback)."""
        return parse_listen(self.listen)


def parse_listen(value: str) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (``[v6]:PORT``) -> (host to reach it on, port); a
    ValueError says what is wrong."""
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"listen {value!r}: want PORT or HOST:PORT, PORT from 1 to 65535")
    if host in ("", "0.0.0.0", "*", "[::]"):
        host = "127.0.0.1"
    return host.strip("[]"), int(port)


class Edge:
    def __init__(
        self,
        settings: EdgeSettings,
        *,
        client: AsyncControllerClient | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.client = client or AsyncControllerClient(
            settings.controller_url, settings.token, timeout=10.0
        )
        self.metrics = EdgeMetrics(registry)
        self.book = AddressBook()
        self.debouncer = Debouncer(
            min_wait_s=settings.debounce_min_s, max_wait_s=settings.debounce_max_s
        )
        prefix = settings.nginx_conf_dir.resolve()
        self.prefix = prefix
        host, port = settings.listen_address()
        self.nginx = NginxProcess(
            binary=settings.nginx_bin,
            prefix=prefix,
            pid_file=prefix / "nginx.pid",
            health_url=f"http://{host}:{port}/__orchestrify/health",
            error_log=prefix / "error.log",
        )
        self.applier = ConfigApplier(
            conf_dir=prefix, nginx=self.nginx, verify_timeout_s=settings.verify_timeout_s
        )
        self.upstreams: Upstreams | None = None
        self.view = EdgeView()
        self.log_port = settings.log_port
        self.last_result: ApplyResult | None = None
        self.applied = asyncio.Event()  # set after every apply (tests and `up` wait on it)
        self._last_error: str | None = None

    def _render_settings(self) -> NginxRenderSettings:
        return NginxRenderSettings(
            listen=self.settings.listen,
            domain=self.settings.domain,
            pid_file=str(self.prefix / "nginx.pid"),
            error_log=str(self.prefix / "error.log"),
            temp_dir=str(self.prefix / "tmp"),
            access_log=f"syslog:server=127.0.0.1:{self.log_port},tag=orchestrify,nohostname",
            connect_timeout=self.settings.connect_timeout,
            worker_processes=self.settings.worker_processes,
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: LogReceiver(self.metrics, self.book),
            local_addr=("127.0.0.1", self.settings.log_port),
        )
        self.log_port = transport.get_extra_info("sockname")[1]
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        server = None
        if self.settings.metrics_port:
            server, _thread = start_http_server(
                self.settings.metrics_port, self.settings.metrics_host, self.metrics.registry
            )
        log.info(
            "edge starting",
            extra={"controller": self.settings.controller_url, "prefix": str(self.prefix)},
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch(), name="edge-watch")
                tasks.create_task(self._apply_loop(), name="edge-apply")
                tasks.create_task(self._resync(), name="edge-resync")
        finally:
            transport.close()
            if server is not None:
                server.shutdown()
                server.server_close()
            await self.nginx.stop()
            await self.client.aclose()

    async def _register(self) -> None:
        url = self.settings.metrics_url
        if url is None and self.settings.metrics_port:
            url = f"http://{self.settings.metrics_host}:{self.settings.metrics_port}/metrics"
        try:
            await self.client.request(
                "POST", "/v1/edges", json={"name": self.settings.name, "metrics_url": url}
            )
        except OrchestrifyError as exc:
            log.warning("could not register the edge", extra={"error": str(exc)})

    async def _resync(self) -> None:
        while True:
            await self._register()
            if self.upstreams is not None:
                self.debouncer.poke()  # re-checks the files and that Nginx runs
            await asyncio.sleep(self.settings.resync_s)

    async def _watch(self) -> None:
        version: int | None = None
        backoff = (0.5, 1.0, 2.0, 5.0)
        failures = 0
        while True:
            params: dict[str, Any] = {"timeout": self.settings.watch_timeout_s}
            if version is not None:
                params["version"] = version
            try:
                body = await self.client.request(
                    "GET",
                    "/v1/upstreams",
                    params=params,
                    timeout=self.settings.watch_timeout_s + 10,
                )
                upstreams = Upstreams.model_validate(body)
            except (OrchestrifyError, ValueError) as exc:
                delay = backoff[min(failures, len(backoff) - 1)]
                failures += 1
                log.warning(
                    "watching upstreams failed", extra={"error": str(exc), "retry_s": delay}
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            if version == upstreams.version and self.upstreams is not None:
                continue
            version = upstreams.version
            before = build_view(self.upstreams) if self.upstreams else None
            self.upstreams = upstreams
            after = build_view(upstreams)
            if before is None or before != after:
                self.debouncer.poke(urgent=bool(before and removed_replicas(before, after)))

    async def _apply_loop(self) -> None:
        while True:
            await self.debouncer.settled()
            if self.upstreams is None:
                continue
            await self.apply_once(self.upstreams)

    async def apply_once(self, upstreams: Upstreams) -> ApplyResult:
        view = build_view(upstreams)
        self.book.update(view)  # before the reload: the first requests must resolve
        try:
            rendered = render_nginx(
                view, self._render_settings(), templates_dir=self.settings.templates_dir
            )
            result = await self.applier.apply(rendered.files, config_id=rendered.config_id)
        except InvalidSpec as exc:
            result = ApplyResult(changed=False, ok=False, error=str(exc), stage="render")
        except OrchestrifyError as exc:
            result = ApplyResult(changed=False, ok=False, error=str(exc), stage="apply")
        except OSError as exc:
            result = ApplyResult(
                changed=False, ok=False, error=f"writing config: {exc}", stage="write"
            )
        self.last_result = result
        if result.ok:
            self.view = view
            self._last_error = None
            if result.changed:
                self.metrics.reloads.labels("ok").inc()
                log.info(
                    "nginx config applied",
                    extra={
                        "services": len(view.services),
                        "replicas": sum(len(s.servers) for s in view.services),
                    },
                )
        else:
            outcome = "rolled_back" if result.rolled_back else "refused"
            self.metrics.reloads.labels(outcome).inc()
            await self._report_failure(result)
        self.applied.set()
        return result

    async def _report_failure(self, result: ApplyResult) -> None:
        log.error("nginx config not applied", extra={"stage": result.stage, "error": result.error})
        if result.error == self._last_error:
            return  # the same failure again: one event is enough
        self._last_error = result.error
        what = (
            "rolled back to the last good config"
            if result.rolled_back
            else "kept the last good config"
        )
        try:
            await self.client.request(
                "POST",
                f"/v1/edges/{self.settings.name}/events",
                json={
                    "message": f"edge {self.settings.name}: new nginx config failed at "
                    f"{result.stage}; {what}",
                    "kind": "config",
                    "outcome": "failed",
                    "reason": result.error,
                    "data": {"stage": result.stage, "rolled_back": result.rolled_back},
                },
            )
        except OrchestrifyError as exc:
            self._last_error = None  # retry the report next time
            log.warning("could not record the config event", extra={"error": str(exc)})


async def run_edge(settings: EdgeSettings, *, registry: CollectorRegistry | None = None) -> None:
    """Run an edge until cancelled (``orchestrify edge``; one more task in ``up``)."""
    await Edge(settings, registry=registry).run()
