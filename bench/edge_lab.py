"""A small real fleet for the edge tests and bench/reload_under_load.py: an in-process
controller, a stand-in agent that runs demo containers on the local engine, and an edge
in a thread. Runtime dependencies only (no pytest).

The stand-in agent speaks the real protocol (register with the join token, read its
assignments, report replicas healthy with their ``host:port``), as ``orchestrify.agent``
does, so the controller and the edge are exercised exactly as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import uvicorn
from prometheus_client import CollectorRegistry

from bench.labels import RUN_LABEL, TEST_LABEL
from bench.net import free_port
from bench.wait import wait_for
from orchestrify.controller.app import create_app
from orchestrify.controller.settings import ControllerSettings
from orchestrify.demo import DEMO_PORT, build_demo_image
from orchestrify.edge import Edge, EdgeSettings
from orchestrify.edge.nginx import NginxProcess
from orchestrify.edge.runner import remove_temp_dir

ADMIN_TOKEN = "edge-test-admin"
JOIN_TOKEN = "edge-test-join"


class ControllerThread:
    """The real controller app served by uvicorn on a free loopback port."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = ControllerSettings(
            data_dir=data_dir,
            token=ADMIN_TOKEN,
            join_token=JOIN_TOKEN,
            node_timeout_s=3600,  # the stand-in agent does not heartbeat
            reconcile_interval_s=0.2,
            port=self.port,
        )
        app = create_app(settings, registry=CollectorRegistry())
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        )

    def start(self) -> ControllerThread:
        self.thread.start()
        wait_for("the controller", lambda: self.http.get("/healthz").status_code == 200)
        return self

    def stop(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(10)


def demo_image(client: docker.DockerClient) -> str:
    tag = f"orchestrify-test/edge-demo:{uuid.uuid4().hex[:8]}"
    build_demo_image(tag=tag)
    return tag


@dataclass
class StandInAgent:
    """Runs the controller's assignments for one node as demo containers (one thread)."""

    controller: ControllerThread
    docker: docker.DockerClient
    image: str
    name: str = "node-1"
    containers: dict[str, Any] = field(default_factory=dict)  # replica id -> container
    addresses: dict[str, str] = field(default_factory=dict)
    sick: set[str] = field(default_factory=set)  # replicas reported unhealthy on purpose
    _stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])  # labels our containers

    def start(self) -> StandInAgent:
        creds = self.controller.http.post(
            "/v1/nodes/register",
            json={"name": self.name, "address": "127.0.0.1"},
            headers={"Authorization": f"Bearer {JOIN_TOKEN}"},
        ).json()
        self.node_id = creds["node_id"]
        self.http = httpx.Client(
            base_url=self.controller.url,
            headers={"Authorization": f"Bearer {creds['node_token']}"},
            timeout=10,
        )
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # keep going, like an agent; tests read .errors
                self.errors.append(repr(exc))
            self._stop.wait(0.1)

    def sync(self) -> None:
        body = self.http.get(f"/v1/nodes/{self.node_id}/assignments").json()
        reports: list[dict[str, Any]] = []
        for a in body["replicas"]:
            rid = a["replica"]
            if a["desired"] == "stop":
                if rid in self.containers:
                    self._remove(rid)
                reports.append({"id": rid, "state": "stopped"})
            elif rid not in self.containers and a["desired"] == "run":
                address = self._run(rid, a["service"])
                reports.append({"id": rid, "state": "healthy", "address": address})
            elif rid in self.sick:
                reports.append({"id": rid, "state": "unhealthy"})
        if reports:
            self.http.post(f"/v1/nodes/{self.node_id}/replicas", json={"replicas": reports})

    def _run(self, rid: str, service: str) -> str:
        c = self.docker.containers.run(
            self.image,
            detach=True,
            name=f"orchestrify-edge-test-{rid}-{uuid.uuid4().hex[:4]}",
            environment={"ORCHESTRIFY_REPLICA": rid},
            ports={f"{DEMO_PORT}/tcp": ("127.0.0.1", None)},
            labels={
                TEST_LABEL: "1",
                RUN_LABEL: self.run_id,
                "orchestrify.service": service,
                "orchestrify.replica": rid,
            },
        )
        self.containers[rid] = c
        c.reload()
        port = c.ports[f"{DEMO_PORT}/tcp"][0]["HostPort"]
        address = f"127.0.0.1:{port}"
        wait_for(
            f"replica {rid} to answer",
            lambda: httpx.get(f"http://{address}/health", timeout=1).status_code == 200,
            timeout=15,
        )
        self.addresses[rid] = address
        return address

    def _remove(self, rid: str) -> None:
        c = self.containers.pop(rid)
        with contextlib.suppress(docker.errors.DockerException):
            c.remove(force=True)

    def kill(self, rid: str) -> None:
        """The container dies and the agent reports the replica unhealthy."""
        self.sick.add(rid)
        with contextlib.suppress(docker.errors.DockerException):
            self.containers[rid].kill()

    def revive(self, rid: str) -> None:
        """Replace the replica's container in place (what an agent does) and report it."""
        old = self.containers.pop(rid)
        with contextlib.suppress(docker.errors.DockerException):
            old.remove(force=True)
        service = old.labels.get("orchestrify.service", "")
        address = self._run(rid, service)
        self.sick.discard(rid)
        self.http.post(
            f"/v1/nodes/{self.node_id}/replicas",
            json={"replicas": [{"id": rid, "state": "healthy", "address": address}]},
        )

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        for rid in list(self.containers):
            self._remove(rid)
        # Anything else this run started (a container replaced mid-test, a race at exit).
        for c in self.docker.containers.list(
            all=True, filters={"label": f"{RUN_LABEL}={self.run_id}"}
        ):
            with contextlib.suppress(docker.errors.DockerException):
                c.remove(force=True)
        self.http.close()


class EdgeThread:
    """An edge on an event loop of its own. Nginx outlives an edge, so ``stop`` stops the
    Nginx it ran too (a test leaves nothing behind); ``kill`` leaves it running."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.edge = Edge(settings, registry=self.registry)
        self.loop = asyncio.new_event_loop()
        self._done: Future[None] = Future()
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.edge.run())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            self._done.set_exception(exc)
            return
        finally:
            self.loop.close()
        self._done.set_result(None)

    def start(self) -> EdgeThread:
        self.thread.start()
        return self

    def kill(self) -> None:
        """The edge process goes away; its Nginx keeps serving."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.task.cancel)
            self.thread.join(20)

    def stop(self) -> None:
        self.kill()
        stop_nginx(self.settings.nginx_conf_dir)

    def served_replicas(self, service: str) -> set[str]:
        for svc in self.edge.view.services:
            if svc.name == service:
                return {s.replica for s in svc.servers}
        return set()


def stop_nginx(prefix: Path) -> None:
    """Stop the Nginx that runs from ``prefix`` (its pid file), if any."""
    nginx = NginxProcess(
        binary="nginx",
        prefix=prefix.resolve(),
        pid_file=prefix.resolve() / "nginx.pid",
        health_url="http://127.0.0.1:1/",
    )
    asyncio.run(nginx.stop(timeout_s=5))
    remove_temp_dir(prefix)


@contextlib.contextmanager
def running(*things: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.stop()
