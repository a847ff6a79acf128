"""`orchestrify up`, the single-host main job, through the real entry point.

Controller, agent and edge in one process against the real Docker engine and a real
Nginx: deploy, serve through Nginx, stop with Ctrl-C (containers keep running), start
again (the same containers are adopted, no duplicates).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker
import httpx
import pytest

from bench.net import free_port
from orchestrify.demo import build_demo_image
from tests.conftest import require_binary, require_docker

pytestmark = pytest.mark.integration
T = TypeVar("T")


def wait_for(check: Callable[[], T], *, what: str, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


class Up:
    """One `orchestrify up` process with its own data dir and ports."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port, self.listen = free_port(), free_port()
        self.metrics, self.edge_metrics = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / "up.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "orchestrify", "up", "--data-dir", str(self.data_dir)]
        cmd += ["--port", str(self.port), "--listen", str(self.listen)]
        cmd += ["--metrics-port", str(self.metrics), "--edge-metrics-port", str(self.edge_metrics)]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(lambda: httpx.get(f"{self.url}/healthz").is_success, what="controller up")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("orchestrify up did not stop within 30 s of Ctrl-C") from None
        finally:
            self.proc = None

    def api(self) -> httpx.Client:
        token = (self.data_dir / "admin.token").read_text().strip()
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"})

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        token = (self.data_dir / "admin.token").read_text().strip()
        env = {**os.environ, "ORCHESTRIFY_URL": self.url, "ORCHESTRIFY_TOKEN": token}
        return subprocess.run(
            [sys.executable, "-m", "orchestrify", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = require_docker()
    require_binary("nginx")
    build_demo_image()
    yield client
    client.close()


@pytest.fixture
def up(tmp_path: Path, engine: docker.DockerClient) -> Iterator[Up]:
    runner = Up(tmp_path / "data")
    node_ids: set[str] = set()
    try:
        yield runner
        with runner.api() as api:
            node_ids = {n["id"] for n in api.get("/v1/nodes").json()}
    finally:
        if runner.proc is not None:
            runner.stop()
        for node_id in node_ids:
            for c in engine.containers.list(
                all=True, filters={"label": f"orchestrify.node={node_id}"}
            ):
                c.remove(force=True)


def _healthy(api: httpx.Client, service: str) -> list[dict[str, Any]]:
    reps: list[dict[str, Any]] = api.get("/v1/replicas", params={"service": service}).json()
    return [r for r in reps if r["state"] == "healthy" and r["desired"] == "run"]


def _containers(engine: docker.DockerClient, node_id: str) -> set[str]:
    return {c.id for c in engine.containers.list(filters={"label": f"orchestrify.node={node_id}"})}


def test_up_deploys_serves_through_nginx_and_adopts_after_restart(
    up: Up, engine: docker.DockerClient
) -> None:
    up.start()
    created = up.cli(
        "service", "create", "orchestrify/demo:latest", "--name", "upweb", "--replicas", "2"
    )
    assert created.returncode == 0, created.stderr
    with up.api() as api:
        (node,) = wait_for(lambda: api.get("/v1/nodes").json(), what="the node")
        healthy = wait_for(
            lambda: len(_healthy(api, "upweb")) == 2 and _healthy(api, "upweb"), what="2 healthy"
        )
    names = {r["id"] for r in healthy}

    # Through Nginx, by path: both replicas answer.
    def seen() -> set[str]:
        got = set()
        for _ in range(10):
            resp = httpx.get(f"http://127.0.0.1:{up.listen}/upweb/", timeout=5)
            if resp.is_success:
                got.add(resp.text.split()[2])
        return got

    wait_for(lambda: seen() == names, what="both replicas through nginx")
    ps = up.cli("ps", "--service", "upweb")
    assert ps.returncode == 0 and all(n in ps.stdout for n in names), ps.stdout

    before = _containers(engine, node["id"])
    assert len(before) == 2
    nginx_pid = int((up.data_dir / "nginx" / "nginx.pid").read_text())
    assert up.stop() == 0
    assert _containers(engine, node["id"]) == before  # Ctrl-C leaves the containers running
    # ...but `up`, a demo in one process, stops the Nginx it ran (an edge alone does not).
    assert (
        not Path(f"/proc/{nginx_pid}").exists()
        or b"nginx" not in Path(f"/proc/{nginx_pid}/cmdline").read_bytes()
    )

    up.start()
    with up.api() as api:
        wait_for(
            lambda: api.get(f"/v1/nodes/{node['id']}").json()["state"] == "ready", what="ready"
        )
        again = wait_for(
            lambda: len(_healthy(api, "upweb")) == 2 and _healthy(api, "upweb"), what="healthy"
        )
    assert {r["id"] for r in again} == names
    time.sleep(2)  # a duplicate, if one were started, would show up within the agent's sync
    assert _containers(engine, node["id"]) == before  # adopted, no duplicates
    wait_for(
        lambda: httpx.get(f"http://127.0.0.1:{up.listen}/upweb/", timeout=5).is_success,
        what="serving",
    )

    # Secrets: the generated tokens were printed once, at the first start, and the
    # second start and everything the three programs logged meanwhile hold neither.
    log = up.log.read_text()
    for name in ("admin", "join"):
        token = (up.data_dir / f"{name}.token").read_text().strip()
        assert log.count(token) == 1, f"the {name} token is in up's output {log.count(token)}x"
    assert log.count(f"in {up.data_dir / 'admin.token'}") == 2  # where to find it, each start
