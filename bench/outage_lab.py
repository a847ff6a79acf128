"""A small real fleet for outage drills, and the pieces every real-fleet lab is made of.

``Fleet`` is what bench/outage.py and tests/integration/test_outage.py break: the
controller and the edge are real processes (`python -m orchestrify controller|edge`) so
a drill can SIGKILL them; the agent runs in a thread of this process (its containers
carry the test labels, so they are found and removed at the end); traffic goes through
the real Nginx on new connections every 20 ms. bench/ha_lab.py builds its fleet of
several controllers from the same pieces (``Process``, ``ControllerProcess``,
``EdgeProcess``, ``RunningAgent``, ``Load``, ``DataPlane``). Runtime dependencies only:
no pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx

from bench.labels import RUN_LABEL, TEST_LABEL
from bench.net import free_port
from bench.wait import wait_for
from orchestrify.agent import Agent, AgentSettings, HealSettings
from orchestrify.edge.runner import VIEW_FILE, remove_temp_dir

REQUEST_EVERY_S = 0.02


class Process:
    """One `python -m orchestrify ...` process with its output in a log file."""

    def __init__(self, args: list[str], *, log_path: Path, env: dict[str, str] | None = None):
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrify", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


class ControllerProcess(Process):
    """`orchestrify controller` on a fixed port, so that it comes back where agents and
    edges look for it (``port``, or a free one). ``extra`` are more command-line
    arguments (a database URL...); the tokens are random unless given."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        admin_token: str | None = None,
        join_token: str | None = None,
        extra: Sequence[str] = (),
        log_path: Path | None = None,
        name: str = "the controller",
    ) -> None:
        self.name = name
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = admin_token or "admin-" + uuid.uuid4().hex
        self.join_token = join_token or "join-" + uuid.uuid4().hex
        args = ["controller", "--port", str(self.port), "--data-dir", str(data_dir)]
        args += ["--token", self.admin_token, "--join-token", self.join_token, *extra]
        log_path = log_path or data_dir.parent / f"controller-{self.port}.log"
        super().__init__(args, log_path=log_path)

    def start(self, *, timeout: float = 60.0) -> None:
        super().start()
        wait_for(f"{self.name} at {self.url}", self.healthy, timeout=timeout)

    def healthy(self) -> bool:
        if not self.running():
            raise AssertionError(f"{self.name} exited:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, *, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=timeout,
        )


class EdgeProcess(Process):
    """`orchestrify edge` with its Nginx in ``prefix``, listening on a loopback port, given
    every controller's URL (it sticks to the first that answers)."""

    def __init__(
        self, controller_urls: Sequence[str], *, token: str, prefix: Path, name: str
    ) -> None:
        self.prefix = prefix
        self.listen = free_port()
        self.url = f"http://127.0.0.1:{self.listen}"
        args = ["edge", "--controller", ",".join(controller_urls), "--token", token]
        args += ["--nginx-conf-dir", str(prefix), "--listen", f"127.0.0.1:{self.listen}"]
        args += ["--metrics-port", "0", "--name", name]
        super().__init__(args, log_path=prefix.parent / f"edge-{name}.log")

    def upstream_addresses(self) -> set[str]:
        """The replica addresses of the view Nginx serves now: the edge saves it only
        once Nginx answers with that config (upstreams.conf is swapped in before the
        reload, so it may be ahead of what Nginx serves)."""
        try:
            view = json.loads((self.prefix / VIEW_FILE).read_text())
        except (OSError, ValueError):
            return set()
        return {
            replica["address"]
            for service in view["upstreams"]["services"]
            for replica in service["replicas"]
        }

    def stop_nginx(self) -> None:
        """End the Nginx of this prefix (it outlives the edge on purpose)."""
        self._end_nginx()
        remove_temp_dir(self.prefix)

    def _end_nginx(self) -> None:
        try:
            pid = int((self.prefix / "nginx.pid").read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class RunningAgent:
    """A real agent in a thread of this process; ``kill()`` ends it as abruptly as asyncio
    allows (its containers keep running, as when an agent process dies)."""

    settings: AgentSettings
    agent: Agent | None = None
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[None] | None = None
    thread: threading.Thread | None = None
    error: list[BaseException] = field(default_factory=list)

    @classmethod
    def for_fleet(
        cls,
        controller_urls: Sequence[str],
        *,
        join_token: str,
        state_dir: Path,
        name: str,
        run_id: str,
    ) -> RunningAgent:
        """An agent of a drill's fleet: it heartbeats every second and finds a failed
        replica within about a second, so that drills are short."""
        return cls(
            AgentSettings(
                controller_url=",".join(controller_urls),
                join_token=join_token,
                name=name,
                advertise_address="127.0.0.1",
                state_dir=state_dir,
                metrics_port=None,
                heal=HealSettings(fault_interval_s=0.5, probe_timeout_s=0.4),
                heartbeat_interval_s=1.0,
                container_labels={TEST_LABEL: "1", RUN_LABEL: run_id},
            )
        )

    def start(self) -> RunningAgent:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            self.agent = Agent(self.settings)
            self.task = loop.create_task(self.agent.run())
            ready.set()
            try:
                loop.run_until_complete(self.task)
            except asyncio.CancelledError:
                pass
            except BaseException as exc:
                self.error.append(exc)
            finally:
                loop.close()

        self.thread = threading.Thread(target=main, name="agent", daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def kill(self) -> None:
        if self.loop is not None and self.task is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.task.cancel)
        if self.thread is not None:
            self.thread.join(timeout=20)

    @property
    def node_id(self) -> str | None:
        ident = self.agent.identity if self.agent else None
        return ident.node_id if ident else None


@dataclass
class Load:
    """GET ``url`` every 20 ms, each on a new connection (a keep-alive connection that a
    reload closes is not a failure of the fleet), until ``stop`` is set, for at most
    ``at_most_s``. ``replicas`` lists who answered (X-Replica), in order, and
    ``greetings`` the first word of each answer (the demo app's ``$GREETING``)."""

    url: str
    at_most_s: float = 180.0
    replicas: list[str] = field(default_factory=list)
    greetings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.at_most_s
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=5, limits=limits) as http:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    resp = http.get(self.url)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                else:
                    if resp.is_success:
                        self.replicas.append(resp.headers.get("x-replica", "?"))
                        self.greetings.append((resp.text.split() or ["?"])[0])
                    else:
                        self.failures.append(f"{resp.status_code}: {resp.text[:100]}")
                self.stop.wait(REQUEST_EVERY_S)

    def start(self) -> Load:
        """Run in a thread of its own."""
        self.thread = threading.Thread(target=self.run, name="load", daemon=True)
        self.thread.start()
        return self

    def finish(self) -> Load:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)
        return self

    @property
    def total(self) -> int:
        return len(self.replicas) + len(self.failures)


def containers(client: docker.DockerClient, run_id: str, **labels: str) -> dict[str, str]:
    """Running containers of this run (optionally of one service): id -> replica id."""
    filters = [f"{RUN_LABEL}={run_id}", *(f"orchestrify.{k}={v}" for k, v in labels.items())]
    found = client.containers.list(filters={"label": filters, "status": "running"})
    return {c.id: c.labels.get("orchestrify.replica", "") for c in found}


def remove_containers(client: docker.DockerClient, run_id: str) -> None:
    for c in client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"}):
        with contextlib.suppress(docker.errors.DockerException):
            c.remove(force=True)


class DataPlane:
    """What a drill does with a lab's data plane, the same whatever its control plane:
    deploy a service, check that it is served, send it traffic, list its containers.
    A lab provides ``api()`` (a client of a controller that answers), ``serving_edge()``,
    ``docker``, ``run_id`` and ``loads``."""

    docker: docker.DockerClient
    run_id: str
    loads: list[Load]

    def api(self) -> httpx.Client:
        raise NotImplementedError

    def serving_edge(self) -> EdgeProcess:
        raise NotImplementedError

    def deploy(self, name: str, *, image: str, replicas: int, **extra: Any) -> None:
        """Create service ``name`` (demo app on port 8000, a 2 s drain)."""
        with self.api() as api:
            resp = api.post(
                "/v1/services",
                json={
                    "name": name,
                    "image": image,
                    "port": 8000,
                    "replicas": replicas,
                    "min_replicas": 1,
                    "max_replicas": max(replicas, 10),
                    "drain_s": 2,
                    **extra,
                },
            )
            resp.raise_for_status()

    def serving(self, name: str, replicas: int) -> bool:
        """``replicas`` healthy replicas of ``name``, all of them in what Nginx serves."""
        with self.api() as api:
            reps = api.get("/v1/replicas", params={"service": name}).json()
        healthy = {r["address"] for r in reps if r["state"] == "healthy" and r["desired"] == "run"}
        return len(healthy) == replicas and healthy <= self.serving_edge().upstream_addresses()

    def containers(self, **labels: str) -> dict[str, str]:
        """Running containers of this run: id -> replica id."""
        return containers(self.docker, self.run_id, **labels)

    def load(self, name: str) -> Load:
        """Traffic to ``name`` through the edge's Nginx, until the lab closes."""
        load = Load(f"{self.serving_edge().url}/{name}/").start()
        self.loads.append(load)
        return load


@dataclass
class Fleet(DataPlane):
    """Controller process, one agent thread, edge process: the pieces a drill breaks."""

    workdir: Path
    docker: docker.DockerClient
    controller_args: list[str] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    def __post_init__(self) -> None:
        self.controller = ControllerProcess(self.workdir / "controller", extra=self.controller_args)
        self.agent = RunningAgent.for_fleet(
            [self.controller.url],
            join_token=self.controller.join_token,
            state_dir=self.workdir / "agent",
            name=f"node-{self.run_id}",
            run_id=self.run_id,
        )
        self.edge = EdgeProcess(
            [self.controller.url],
            token=self.controller.admin_token,
            prefix=self.workdir / "nginx",
            name=f"edge-{self.run_id}",
        )
        self.loads: list[Load] = []

    def start(self) -> Fleet:
        self.controller.start()
        self.agent.start()
        self.edge.start()
        with self.controller.api() as api:
            wait_for("the node to be ready", lambda: _ready_nodes(api), timeout=60)
        return self

    def api(self) -> httpx.Client:
        return self.controller.api()

    def serving_edge(self) -> EdgeProcess:
        return self.edge

    def close(self) -> None:
        for load in self.loads:
            load.finish()
        self.edge.stop()
        self.edge.stop_nginx()
        self.agent.kill()
        self.controller.stop()
        remove_containers(self.docker, self.run_id)


def _ready_nodes(api: httpx.Client) -> bool:
    nodes = api.get("/v1/nodes").json()
    return bool(nodes) and all(n["state"] == "ready" for n in nodes)


@contextlib.contextmanager
def fleet(workdir: Path, client: docker.DockerClient, **kwargs: Any) -> Iterator[Fleet]:
    """A started ``Fleet``, closed however the block ends (a failed start too)."""
    f = Fleet(workdir, client, **kwargs)
    try:
        yield f.start()
    finally:
        f.close()
