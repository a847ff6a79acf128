"""Drill 4 (issue 9): the edge is SIGKILLed and restarted, once with the controller up and
once with it down, while requests go through Nginx every 20 ms on new connections.

Real Docker engine, real agent, real controller, real Nginx, and the edge as a real
`python -m orchestrify edge` process. Nginx outlives the killed edge (it is not its
child), the restarted edge adopts it through its pid file (no second Nginx) and applies
the view it saved last before the controller answers. Not one request fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from bench.agent_harness import RunningAgent, RunningController, agent_settings, start_controller
from bench.edge_lab import stop_nginx
from bench.labels import RUN_LABEL, TEST_LABEL
from bench.net import free_port
from bench.wait import wait_for
from orchestrify.agent import HealSettings
from orchestrify.client import ControllerClient
from orchestrify.demo import DEFAULT_TAG, build_demo_image
from tests.conftest import require, require_binary, require_docker
from tests.integration.test_rolling import Load
from tests.processes import stop_process

pytestmark = pytest.mark.integration


@dataclass
class EdgeProcess:
    """`python -m orchestrify edge` in a process of its own, logging to a file."""

    controller_url: str
    token: str
    prefix: Path
    listen: int
    name: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EdgeProcess:
        cmd = [sys.executable, "-m", "orchestrify", "edge", "--controller", self.controller_url]
        cmd += ["--token", self.token, "--nginx-conf-dir", str(self.prefix)]
        cmd += ["--listen", f"127.0.0.1:{self.listen}", "--metrics-port", "0"]
        cmd += ["--name", self.name]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        return self

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def nginx_master(self) -> int:
        return int((self.prefix / "nginx.pid").read_text())


@dataclass
class Drill:
    data_dir: Path
    port: int
    controller: RunningController
    api: ControllerClient
    agent: RunningAgent
    edge: EdgeProcess
    nginx_url: str

    def stop_controller(self) -> None:
        self.api.close()
        self.controller.stop()

    def start_controller(self) -> None:
        self.controller = start_controller(
            self.data_dir,
            self.port,
            token=self.controller.admin_token,
            join_token=self.controller.join_token,
            reconcile_interval_s=0.2,
            node_timeout_s=120,
        )
        self.api = self.controller.client()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def drill(tmp_path: Path) -> Iterator[Drill]:
    require_binary("nginx")
    client = require_docker()
    try:
        build_demo_image()
    except Exception as exc:
        require(False, f"the demo image can be built ({exc})")
    run_id = uuid.uuid4().hex[:10]
    port = free_port()
    # Liveness is not this drill's subject: a long node timeout keeps the controller's
    # outage from ever making the node not ready.
    controller = start_controller(
        tmp_path / "controller", port, reconcile_interval_s=0.2, node_timeout_s=120
    )
    agent = RunningAgent(
        agent_settings(
            controller,
            name=f"node-{run_id}",
            state_dir=tmp_path / "agent",
            run_id=run_id,
            heal=HealSettings(fault_interval_s=0.5, probe_timeout_s=0.4),
        )
    ).start()
    listen = free_port()
    edge = EdgeProcess(
        controller.url,
        controller.admin_token,
        tmp_path / "nginx",
        listen,
        f"edge-{run_id}",
        tmp_path / "edge.log",
    ).start()
    found = Drill(
        tmp_path / "controller",
        port,
        controller,
        controller.client(),
        agent,
        edge,
        f"http://127.0.0.1:{listen}",
    )
    try:
        yield found
    finally:
        edge.stop()
        stop_nginx(tmp_path / "nginx")  # it outlives the edge: ours to stop here
        agent.kill()
        with contextlib.suppress(Exception):
            found.api.close()
        found.controller.stop()
        labels = [f"{TEST_LABEL}=1", f"{RUN_LABEL}={run_id}"]
        for container in client.containers.list(all=True, filters={"label": labels}):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        client.close()


def _served_by(url: str, *, tries: int = 20) -> set[str]:
    got = set()
    for _ in range(tries):
        with contextlib.suppress(httpx.HTTPError):
            resp = httpx.get(url, timeout=5)
            if resp.is_success:
                got.add(resp.headers.get("x-replica", "?"))
    return got


def _healthy(api: ControllerClient) -> set[str]:
    reps: list[dict[str, Any]] = api.get("/v1/replicas", service="drill")
    return {r["id"] for r in reps if r["state"] == "healthy" and r["desired"] == "run"}


@pytest.mark.parametrize("controller_up", [True, False], ids=["controller-up", "controller-down"])
def test_edge_sigkill_and_restart_fails_no_request(drill: Drill, controller_up: bool) -> None:
    drill.api.request(
        "POST",
        "/v1/services",
        json={"name": "drill", "image": DEFAULT_TAG, "replicas": 2, "min_replicas": 0},
    )
    url = f"{drill.nginx_url}/drill/"
    ids = wait_for("2 healthy replicas", lambda: len(h := _healthy(drill.api)) == 2 and h)
    wait_for("both replicas through nginx", lambda: _served_by(url) == ids, timeout=30)
    master = drill.edge.nginx_master()

    load = Load(url)
    sender = threading.Thread(target=load.run, daemon=True)
    sender.start()
    try:
        wait_for("requests flowing", lambda: len(load.replicas) >= 10, timeout=10)
        if not controller_up:
            drill.stop_controller()
        drill.edge.sigkill()
        served = len(load.replicas)
        wait_for("requests served with no edge", lambda: len(load.replicas) >= served + 25)
        assert _alive(master), "nginx died with its edge"

        drill.edge.start()
        wait_for(
            "the restarted edge to apply its saved view",
            lambda: drill.edge.log.read_text().count("applying the saved view") == 1,
            timeout=30,
        )
        served = len(load.replicas)
        wait_for("requests served after the restart", lambda: len(load.replicas) >= served + 25)
        if not controller_up:
            drill.start_controller()
        # The controller hears from the new edge, and a change reaches Nginx through it.
        wait_for(
            "the edge's acknowledgement",
            lambda: drill.api.get("/v1/edges")[0]["applied_as_of"] is not None,
            timeout=30,
        )
        drill.api.request("PATCH", "/v1/services/drill", json={"replicas": 3})
        more = wait_for("3 healthy replicas", lambda: len(h := _healthy(drill.api)) == 3 and h)
        wait_for("3 replicas through nginx", lambda: _served_by(url, tries=30) == more, timeout=30)
        # A clean stop (SIGTERM, as for an upgrade) leaves Nginx serving as well.
        drill.edge.stop()
        served = len(load.replicas)
        wait_for("requests served after a clean stop", lambda: len(load.replicas) >= served + 25)
    finally:
        load.stop.set()
        sender.join(10)

    assert load.failures == [], load.failures[:5]
    # Adopted, not replaced: the same master, and no other Nginx runs from this prefix.
    assert drill.edge.nginx_master() == master and _alive(master)
    masters = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit()
        and _cmdline(int(pid)).startswith(b"nginx: master process")
        and str(drill.edge.prefix) in _cmdline(int(pid)).decode(errors="replace")
    ]
    assert masters == [str(master)], masters


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").strip()
    except OSError:
        return b""
