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
container. The edge also acknowledges every view it applied (the snapshot's ``as_of``,
sent as ``applied_as_of`` on ``POST /v1/edges``): the controller stops a drained
replica only once every edge has applied a view from after it left.

Static stability: Nginx is not the edge's child and keeps serving its last good config
whatever happens to the edge (``stop_nginx_on_exit`` is for ``orchestrify up`` only).
After every successful apply the edge saves the upstreams it applied in the prefix
(``VIEW_FILE``); a restarted edge adopts the running Nginx and applies that saved view at
once, before (and whether or not) the controller answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import hashlib
import json
import logging
import os
import pwd
import shlex
import shutil
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrify.client import AsyncControllerClient, parse_controller_urls
from orchestrify.edge.access_log import check_access_log_path
from orchestrify.edge.apply import ApplyResult, ConfigApplier
from orchestrify.edge.debounce import Debouncer
from orchestrify.edge.nginx import NginxProcess
from orchestrify.edge.render import NginxRenderSettings, render_nginx
from orchestrify.edge.telemetry import LOG_FILE, POLL_S, AccessLogReader, EdgeMetrics
from orchestrify.edge.view import (
    AddressBook,
    EdgeView,
    build_view,
    keep_other_clusters,
    kept_services,
    removed_replicas,
)
from orchestrify.errors import InvalidSpec, OrchestrifyError
from orchestrify.models import Upstreams
from orchestrify.tls import check_ca_file, check_server_pair

log = logging.getLogger(__name__)

__all__ = [
    "VIEW_FILE",
    "Edge",
    "EdgeSettings",
    "nginx_temp_dir",
    "parse_listen",
    "remove_temp_dir",
    "run_edge",
]

# In the prefix: the last upstreams the edge applied.
VIEW_FILE = "orchestrify-view.json"
# Where a root edge puts Nginx's temp dirs (see nginx_temp_dir).
ROOT_TEMP_BASE = Path("/var/cache/orchestrify-edge")
# Who Nginx's workers run as when its master is root (Nginx's own compiled-in default).
ROOT_WORKER_USER = "nobody"
# Waits between failed watches of the controller: short and capped low, so a controller
# that comes back is noticed within ~2 s (a watch is one cheap request).
WATCH_BACKOFF_S = (0.5, 1.0, 2.0)


# How much lower the telemetry thread's CPU priority is than the rest of the edge's (and
# than Nginx's): a nice value added to it (Linux schedules each thread on its own).
TELEMETRY_NICE = 10


def _background_priority() -> None:
    """Lower the calling thread's CPU priority by ``TELEMETRY_NICE`` (best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + TELEMETRY_NICE)


def nginx_temp_dir(prefix: Path) -> Path:
    """Where Nginx's workers buffer request and response bodies that do not fit in memory.

    Normally ``PREFIX/tmp``. When the edge (and so Nginx's master) runs as root, the
    workers run as ``nobody`` and cannot reach into the prefix when it sits in a private
    (0700) data dir, which is where `orchestrify up` keeps it: every large body would get
    a 500. Then the temp dir is ``/var/cache/orchestrify-edge/<hash of the prefix>``,
    owned by the workers' user and 0700.
    """
    if os.geteuid() != 0:
        return prefix / "tmp"
    digest = hashlib.sha256(str(prefix).encode()).hexdigest()[:16]
    return ROOT_TEMP_BASE / digest


def root_worker_user() -> str | None:
    """``"USER GROUP"`` for Nginx's ``user`` directive when running as root, else None."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(ROOT_WORKER_USER)
    return f"{entry.pw_name} {grp.getgrgid(entry.pw_gid).gr_name}"


def prepare_temp_dir(path: Path) -> None:
    """Create Nginx's temp dir so that its workers, and only they, can write there."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        path.parent.chmod(0o755)  # traversable; the leaf below is private
        entry = pwd.getpwnam(ROOT_WORKER_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o700)


def remove_temp_dir(prefix: Path) -> None:
    """Remove a root edge's temp dir outside its prefix, once its Nginx has stopped."""
    if os.geteuid() == 0:
        shutil.rmtree(nginx_temp_dir(prefix.resolve()), ignore_errors=True)


class EdgeSettings(BaseModel):
    """Everything an edge needs; each field says its unit and why its default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    controller_url: str = Field(
        description="Controller API URL, or several separated by commas to fail over between."
    )
    # repr=False: a settings object in a log line or a traceback never shows it.
    token: str | None = Field(description="Admin token of the controller.", repr=False)
    nginx_conf_dir: Path = Field(description="Nginx prefix: nginx.conf, upstreams.conf, pid.")
    nginx_bin: str = Field("nginx", description="The nginx binary.")
    listen: str = Field("8080", description="Where Nginx listens: PORT or HOST:PORT.")
    domain: str = Field("localhost", pattern=r"^[A-Za-z0-9.-]{1,200}$", description="NAME.domain")
    metrics_host: str = Field("127.0.0.1", description="Address of the edge's /metrics.")
    metrics_port: int = Field(18082, ge=0, le=65535, description="0: no metrics server.")
    metrics_url: str | None = Field(
        None, description="URL Prometheus scrapes, told to the controller (default: derived)."
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
    telemetry: bool = Field(
        True,
        description="Log every proxied request to the edge for the latency metrics the "
        "alerts use. False only to measure what telemetry costs (bench/edge_hop.py).",
    )
    access_log: Path | None = Field(
        None,
        description="File Nginx writes one JSON line per request to, for ELK or Loki "
        "(orchestrify.edge.access_log); None or empty: none. Absolute, in an existing "
        "directory this user can write; checked here because it goes into nginx.conf.",
    )
    nginx_start_command: str | None = Field(
        None,
        description="Command that starts Nginx when none runs (e.g. `systemctl start "
        "orchestrify-nginx`, so it lives in its own unit); default: run it as a daemon.",
    )
    tls_cert: Path | None = Field(
        None, description="PEM certificate /metrics serves HTTPS with (needs tls_key)."
    )
    tls_key: Path | None = Field(None, description="Unencrypted PEM private key of tls_cert.")
    ca: Path | None = Field(
        None,
        description="PEM file of the CA that signed the controller's certificate (https "
        "URLs); None: the system's trust store.",
    )
    stop_nginx_on_exit: bool = Field(
        False,
        description="Stop Nginx when the edge exits. False: Nginx keeps serving its last "
        "good config without the edge; only `orchestrify up`, a one-process demo, sets it.",
    )

    @field_validator("controller_url")
    @classmethod
    def _valid_controller_urls(cls, value: str) -> str:
        try:
            return ",".join(parse_controller_urls(value))
        except InvalidSpec as exc:
            raise ValueError(str(exc)) from None

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("access_log", mode="before")
    @classmethod
    def _valid_access_log(cls, value: object) -> object:
        # Before pydantic makes it a Path: that would drop a trailing "/" and "//".
        if value is None or value == "":
            return None
        return check_access_log_path(str(value))

    @model_validator(mode="after")
    def _tls_files(self) -> EdgeSettings:
        # At start: a wrong certificate, key or CA file is one line and exit 2.
        check_server_pair(cert=self.tls_cert, key=self.tls_key)
        if self.ca is not None:
            check_ca_file(self.ca)
        return self

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
            settings.controller_url, settings.token, timeout=10.0, ca=settings.ca
        )
        self.metrics = EdgeMetrics(registry)
        self.book = AddressBook()
        self.debouncer = Debouncer(
            min_wait_s=settings.debounce_min_s, max_wait_s=settings.debounce_max_s
        )
        prefix = settings.nginx_conf_dir.resolve()
        self.prefix = prefix
        self.temp_dir = nginx_temp_dir(prefix)
        host, port = settings.listen_address()
        self.nginx = NginxProcess(
            binary=settings.nginx_bin,
            prefix=prefix,
            pid_file=prefix / "nginx.pid",
            health_url=f"http://{host}:{port}/__orchestrify/health",
            error_log=prefix / "error.log",
            start_command=(
                shlex.split(settings.nginx_start_command) if settings.nginx_start_command else None
            ),
        )
        self.applier = ConfigApplier(
            conf_dir=prefix, nginx=self.nginx, verify_timeout_s=settings.verify_timeout_s
        )
        self.upstreams: Upstreams | None = None
        self.view = EdgeView()
        # Nginx appends one line per proxied request there; the edge reads it in bulk. In
        # the temp dir: the workers reopen it themselves at a rotation, and a root Nginx's
        # workers can write only there (see nginx_temp_dir).
        self.access_log = self.temp_dir / LOG_FILE
        self.log_reader = AccessLogReader(self.access_log, metrics=self.metrics, book=self.book)
        self.last_result: ApplyResult | None = None
        self.applied = asyncio.Event()  # set after every apply (tests and `up` wait on it)
        self._last_error: str | None = None
        # The as_of of the view Nginx serves, and whether the controller has been told.
        self.applied_as_of: datetime | None = None
        self._ack_due = asyncio.Event()
        self._applying = False  # an apply is under way: Nginx's view may be changing
        self.view_file = prefix / VIEW_FILE
        self._served: Upstreams | None = None  # the saved view applied at start
        self._kept: list[str] = []  # services kept from another cluster
        self._pending_events: list[str] = []  # said to the controller by the resync

    def _render_settings(self) -> NginxRenderSettings:
        return NginxRenderSettings(
            listen=self.settings.listen,
            domain=self.settings.domain,
            pid_file=str(self.prefix / "nginx.pid"),
            error_log=str(self.prefix / "error.log"),
            temp_dir=str(self.temp_dir),
            worker_user=root_worker_user(),
            access_log=str(self.access_log) if self.settings.telemetry else "off",
            json_access_log=str(self.settings.access_log) if self.settings.access_log else None,
            connect_timeout=self.settings.connect_timeout,
            worker_processes=self.settings.worker_processes,
        )

    async def run(self) -> None:
        prepare_temp_dir(self.temp_dir)
        saved = self._load_view()
        server = None
        if self.settings.metrics_port:
            server, _thread = start_http_server(
                self.settings.metrics_port,
                self.settings.metrics_host,
                self.metrics.registry,
                # Both set: HTTPS only (prometheus_client >= 0.17 wraps the socket).
                certfile=str(self.settings.tls_cert) if self.settings.tls_cert else None,
                keyfile=str(self.settings.tls_key) if self.settings.tls_key else None,
            )
        log.info(
            "edge starting",
            extra={
                "controller": self.settings.controller_url,
                "prefix": str(self.prefix),
                "nginx_pid": self.nginx.pid(),  # set: a running Nginx is adopted
            },
        )
        try:
            if saved is not None and self.upstreams is None:
                # Before the controller answers (it may be away): what Nginx last served.
                # A no-op when the running Nginx has these files; starts it when none runs.
                log.info("applying the saved view", extra={"as_of": str(saved.as_of)})
                self._served = saved
                self._kept = kept_services(saved)
                await self.apply_once(saved)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch(), name="edge-watch")
                tasks.create_task(self._apply_loop(), name="edge-apply")
                tasks.create_task(self._resync(), name="edge-resync")
                tasks.create_task(self._acknowledge(), name="edge-ack")
                if self.settings.telemetry:
                    tasks.create_task(self._read_access_log(), name="edge-telemetry")
        finally:
            self.log_reader.close()
            if server is not None:
                server.shutdown()
                server.server_close()
            if self.settings.stop_nginx_on_exit:
                await self.nginx.stop()
                remove_temp_dir(self.prefix)
            await self.client.aclose()

    async def _read_access_log(self) -> None:
        """Ingest Nginx's access log every ``POLL_S``; keep the file small by rotating it
        (unlink, then Nginx reopens) once it has grown past the reader's limit.

        The reading and counting run in a thread of their own at a lower CPU priority
        (``TELEMETRY_NICE``): on a busy edge host they yield to Nginx's workers, so the
        bursts of work every poll do not show in the requests' tail latency."""
        reader = self.log_reader
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="edge-telemetry", initializer=_background_priority
        )
        try:
            await self._read_access_log_with(reader, loop, pool)
        finally:
            # Waits for a poll under way (milliseconds) before ``run`` closes the reader's
            # files: never a read of a closed file, nor lines counted twice, at exit.
            pool.shutdown(wait=True, cancel_futures=True)

    async def _read_access_log_with(
        self, reader: AccessLogReader, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor
    ) -> None:
        while True:
            try:
                await loop.run_in_executor(pool, reader.poll)
                if reader.rotation_due() and self.nginx.running():
                    reader.rotate()
                    await self.nginx.reopen_logs()
            except OrchestrifyError as exc:
                log.warning("could not rotate the access log", extra={"error": str(exc)})
            except Exception:  # telemetry must never stop the edge
                log.exception("reading the access log failed")
                reader.behind = False  # never a tight loop over a failing read
            # Behind (a burst bigger than one read): read on, letting other tasks run.
            await asyncio.sleep(0 if reader.behind else POLL_S)

    def _load_view(self) -> Upstreams | None:
        """The upstreams saved by the last successful apply, if readable."""
        try:
            data = json.loads(self.view_file.read_text())
            return Upstreams.model_validate(data["upstreams"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("saved view not usable, ignored", extra={"error": str(exc)})
            return None

    def _save_view(self, upstreams: Upstreams) -> None:
        """Write what Nginx now serves, atomically (temp file, fsync, rename)."""
        body = json.dumps(
            {"upstreams": upstreams.model_dump(mode="json")},
            sort_keys=True,
        )
        fd, tmp = tempfile.mkstemp(prefix=f".{VIEW_FILE}.", dir=self.prefix)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.view_file)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            log.warning("could not save the applied view", extra={"error": str(exc)})

    async def _register(self) -> bool:
        """Register (or refresh) this edge, with the as_of of the view Nginx serves."""
        url = self.settings.metrics_url
        if url is None and self.settings.metrics_port:
            scheme = "https" if self.settings.tls_cert else "http"
            host, port = self.settings.metrics_host, self.settings.metrics_port
            url = f"{scheme}://{host}:{port}/metrics"
        body: dict[str, Any] = {"name": self.settings.name, "metrics_url": url}
        if self.applied_as_of is not None:
            body["applied_as_of"] = self.applied_as_of.isoformat()
        try:
            # An upsert by name: sent twice (a failover after a timeout), it is one edge.
            await self.client.request("POST", "/v1/edges", json=body, idempotent=True)
        except OrchestrifyError as exc:
            log.warning("could not register the edge", extra={"error": str(exc)})
            return False
        return True

    def _acknowledged(self, upstreams: Upstreams) -> None:
        """Nginx serves the view of ``upstreams``: tell the controller (soon, once)."""
        if upstreams.as_of is None or upstreams.as_of == self.applied_as_of:
            return
        self.applied_as_of = upstreams.as_of
        self._ack_due.set()

    async def _acknowledge(self) -> None:
        """Send each new acknowledgement; while the controller is away, retry each second
        (only the newest matters)."""
        while True:
            await self._ack_due.wait()
            self._ack_due.clear()
            if not await self._register():
                await asyncio.sleep(1.0)
                self._ack_due.set()

    async def _resync(self) -> None:
        while True:
            await self._register()
            if self.upstreams is not None:
                self.debouncer.poke()  # re-checks the files and that Nginx runs
            await asyncio.sleep(self.settings.resync_s)

    async def _watch(self) -> None:
        version: int | None = None
        backoff = WATCH_BACKOFF_S
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
            upstreams = self._keep_other_clusters(upstreams)
            await self._flush_events()
            after = build_view(upstreams)
            ok = self.last_result is not None and self.last_result.ok
            quiet = not self._applying and not self.debouncer.pending
            if ok and quiet and after == self.view:
                # Nginx already serves this newer snapshot's view: acknowledge it as is.
                self._acknowledged(upstreams)
            if version == upstreams.version and self.upstreams is not None:
                continue
            version = upstreams.version
            before = build_view(self.upstreams) if self.upstreams else None
            self.upstreams = upstreams
            if before is None or before != after:
                self.debouncer.poke(urgent=bool(before and removed_replicas(before, after)))

    def _keep_other_clusters(self, upstreams: Upstreams) -> Upstreams:
        """Never let a new or wiped controller store empty Nginx: keep what it does not
        serve of another cluster (said once per change of the kept set)."""
        last = self.upstreams if self.upstreams is not None else self._served
        merged = keep_other_clusters(last, upstreams)
        kept = kept_services(merged)
        if kept != self._kept:
            self._kept = kept
            if kept:
                message = (
                    f"edge {self.settings.name}: the controller's cluster "
                    f"{upstreams.cluster_id} does not serve {', '.join(kept)}, which Nginx "
                    "served for another cluster (a new or wiped store?); kept with their "
                    "last replicas until this cluster serves them (re-create the services, "
                    "or `orchestrify node adopt`)"
                )
                log.warning("keeping services of another cluster", extra={"services": kept})
                self._pending_events.append(message)
            else:
                log.info("no service of another cluster kept any more")
        return merged

    async def _flush_events(self) -> None:
        """Record the edge's pending events on the controller (kept for the next try)."""
        while self._pending_events:
            try:
                await self.client.request(
                    "POST",
                    f"/v1/edges/{self.settings.name}/events",
                    json={"message": self._pending_events[0], "kind": "config", "outcome": "info"},
                )
            except OrchestrifyError as exc:
                log.warning("could not record an edge event", extra={"error": str(exc)})
                return
            self._pending_events.pop(0)

    async def _apply_loop(self) -> None:
        while True:
            await self.debouncer.settled()
            if self.upstreams is None:
                continue
            await self.apply_once(self.upstreams)

    async def apply_once(self, upstreams: Upstreams) -> ApplyResult:
        self._applying = True
        try:
            return await self._apply(upstreams)
        finally:
            self._applying = False

    async def _apply(self, upstreams: Upstreams) -> ApplyResult:
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
            self._save_view(upstreams)
            self._acknowledged(upstreams)
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
