"""A whole orchestrify fleet on this host, for the autoscaling end-to-end test and the
reaction benchmark: the real controller (uvicorn, free port, token), two real agents
registered as two nodes on the local Docker engine, the edge with real Nginx and,
optionally, the real Alertmanager and Prometheus configured from the shipped templates.

Everything it starts it stops, by handle or PID: ``Fleet.stop()`` ends the processes
and threads and removes the containers carrying this run's label.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx

from bench.agent_harness import RunningAgent, RunningController, agent_settings
from bench.agent_harness import start_controller as harness_start_controller
from bench.edge_lab import EdgeThread
from bench.labels import RUN_LABEL
from bench.net import free_port
from bench.processes import stop_process
from bench.wait import wait_for
from orchestrify.agent import HealSettings
from orchestrify.config_render import render_config
from orchestrify.demo import DEFAULT_TAG, build_demo_image
from orchestrify.edge import EdgeSettings

SERVICE = "web"


def start_controller(data_dir: Path, **overrides: Any) -> RunningController:
    """The real controller app on uvicorn in a thread, on a free loopback port."""
    return harness_start_controller(data_dir, free_port(), **overrides)


@dataclass
class Fleet:
    """Controller + two agents (two nodes) + edge/Nginx (+ Alertmanager and Prometheus)."""

    base: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    controller: RunningController | None = None
    agents: list[RunningAgent] = field(default_factory=list)
    edge: EdgeThread | None = None
    nginx_url: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    prometheus_url: str = ""
    alertmanager_url: str = ""
    _api: httpx.Client | None = None

    # -------------------------------------------------------------- start
    def start(self, **controller_overrides: Any) -> Fleet:
        build_demo_image(tag=DEFAULT_TAG)  # idempotent: the layers are cached
        self.controller = start_controller(self.base / "controller", **controller_overrides)
        heal = HealSettings(startup_probe_interval_s=0.05)
        for name in ("node-a", "node-b"):
            settings = agent_settings(
                self.controller,
                name=f"{name}-{self.run_id}",
                state_dir=self.base / name,
                run_id=self.run_id,
                heal=heal,
            )
            # A real /metrics on a free port: Prometheus scrapes it (an unscrapable agent
            # would fire NodeDown).
            self.agents.append(RunningAgent(dataclasses.replace(settings, metrics_port=0)).start())
        listen = free_port()
        self.edge = EdgeThread(
            EdgeSettings(
                controller_url=self.controller.url,
                token=self.controller.admin_token,
                nginx_conf_dir=self.base / "nginx",
                listen=f"127.0.0.1:{listen}",
                metrics_port=free_port(),
                name=f"edge-{self.run_id}",
                worker_processes="2",
            )
        ).start()
        self.nginx_url = f"http://127.0.0.1:{listen}"
        wait_for(
            "both nodes ready",
            lambda: (
                len([n for n in self.api.get("/v1/nodes").json() if n["state"] == "ready"]) == 2
            ),
            timeout=30,
        )
        wait_for(
            "nginx up",
            lambda: (
                httpx.get(f"{self.nginx_url}/__orchestrify/health", timeout=2).status_code == 200
            ),
            timeout=30,
        )
        return self

    def start_monitoring(self, **render_overrides: Any) -> None:
        """Alertmanager, then Prometheus (it drops alerts evaluated before it found one)."""
        assert self.controller is not None
        out = self.base / "monitoring"
        am_port = free_port()
        render_config(
            out_dir=out,
            controller_url=self.controller.url,
            token=self.controller.admin_token,
            alertmanager_targets=[f"127.0.0.1:{am_port}"],
            **render_overrides,
        )
        self.alertmanager_url = f"http://127.0.0.1:{am_port}"
        self._spawn(
            "alertmanager",
            [
                "prometheus-alertmanager",
                f"--config.file={out / 'alertmanager.yml'}",
                f"--storage.path={out / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
        )
        wait_for("alertmanager ready", lambda: self._ready(self.alertmanager_url), timeout=30)
        prom_port = free_port()
        self.prometheus_url = f"http://127.0.0.1:{prom_port}"
        self._spawn(
            "prometheus",
            [
                "prometheus",
                f"--config.file={out / 'prometheus.yml'}",
                f"--storage.tsdb.path={out / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                # Alerts evaluated before Alertmanager was found are resent only after
                # this delay (1 m by default).
                "--rules.alert.resend-delay=2s",
            ],
        )
        wait_for("prometheus ready", lambda: self._ready(self.prometheus_url), timeout=30)

    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.base / f"{name}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.processes.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT))

    @staticmethod
    def _ready(url: str) -> bool:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200

    # -------------------------------------------------------------- views
    @property
    def api(self) -> httpx.Client:
        if self._api is None:
            assert self.controller is not None
            self._api = httpx.Client(
                base_url=self.controller.url,
                headers={"Authorization": f"Bearer {self.controller.admin_token}"},
                timeout=10,
            )
        return self._api

    def containers(self, service: str = SERVICE) -> list[Any]:
        """Running containers of this run's ``service`` (by label, never anyone else's)."""
        with contextlib.closing(docker.from_env()) as client:
            found = client.containers.list(
                filters={
                    "label": [f"{RUN_LABEL}={self.run_id}", f"orchestrify.service={service}"],
                    "status": "running",
                }
            )
        return list(found)

    def replicas(self, service: str = SERVICE) -> list[dict[str, Any]]:
        return list(self.api.get("/v1/replicas", params={"service": service}).json())

    def events(self, kind: str, service: str = SERVICE) -> list[dict[str, Any]]:
        got = self.api.get("/v1/events", params={"service": service, "kind": kind})
        return list(got.json())

    def served_by(self, path: str = "/", service: str = SERVICE, timeout: float = 10) -> str:
        """One request through Nginx; the replica id that answered it."""
        resp = httpx.get(f"{self.nginx_url}/{service}{path}", timeout=timeout)
        resp.raise_for_status()
        return resp.text.splitlines()[0].split()[2]  # "hello from <replica> (GET)"

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
            for log in self.logs
            if log.exists()
        )

    # -------------------------------------------------------------- stop
    def stop(self) -> None:
        """Stop everything this fleet started, whatever state it is in."""
        for proc in reversed(self.processes):
            stop_process(proc)
        if self.edge is not None:
            with contextlib.suppress(Exception):
                self.edge.stop()
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.kill()
        if self._api is not None:
            self._api.close()
        if self.controller is not None:
            with contextlib.suppress(Exception):
                self.controller.stop()
        with contextlib.closing(docker.from_env()) as client:
            for c in client.containers.list(
                all=True, filters={"label": f"{RUN_LABEL}={self.run_id}"}
            ):
                with contextlib.suppress(docker.errors.DockerException):
                    c.remove(force=True)
