"""Static stability of node liveness, with a real controller and a real agent on the
Docker engine: a restarted controller and a wall-clock step replace nothing.

Each test runs its own controller (uvicorn in a thread, on a free port) and agent;
every container carries ``orchestrify.test=1`` and the test's run id, and is removed in
teardown by those labels only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from bench.agent_harness import RunningAgent, RunningController, agent_settings, start_controller
from bench.labels import RUN_LABEL, TEST_LABEL
from bench.net import free_port
from bench.wait import wait_for
from orchestrify import clock
from orchestrify.agent import HealSettings
from orchestrify.client import ControllerClient
from orchestrify.demo import DEFAULT_TAG
from tests.conftest import require_docker

pytestmark = pytest.mark.integration

NODE_TIMEOUT_S = 2.0
GRACE_S = 2 * NODE_TIMEOUT_S  # the default: 2 x node_timeout
DEADLINE_S = 60.0


@dataclass
class Fleet:
    """One controller (restartable on its data dir and port) and one agent."""

    tmp: Path
    port: int
    run_id: str
    docker: docker.DockerClient
    controller: RunningController | None = None
    agent: RunningAgent | None = None

    def start_controller(self) -> RunningController:
        self.controller = start_controller(
            self.tmp / "controller",
            self.port,
            node_timeout_s=NODE_TIMEOUT_S,
            reconcile_interval_s=0.2,
            # The join token stays across restarts (the agent may need to register again).
            join_token="join-" + self.run_id,
        )
        return self.controller

    def api(self) -> ControllerClient:
        assert self.controller is not None
        return self.controller.client()

    def start_agent(self) -> RunningAgent:
        assert self.controller is not None
        settings = agent_settings(
            self.controller,
            name=f"node-{self.run_id}",
            state_dir=self.tmp / "agent",
            run_id=self.run_id,
            heal=HealSettings(fault_interval_s=0.5, probe_timeout_s=0.4),
        )
        # Heartbeats well inside the short timeout; retries that find the controller
        # again soon after it is back.
        settings = dataclasses.replace(
            settings, heartbeat_interval_s=0.4, controller_backoff_s=(0.2, 0.5)
        )
        self.agent = RunningAgent(settings).start()
        return self.agent

    def containers(self) -> list[Any]:
        labels = [f"{TEST_LABEL}=1", f"{RUN_LABEL}={self.run_id}"]
        return self.docker.containers.list(all=True, filters={"label": labels})

    def healthy(self, count: int) -> list[dict[str, Any]] | None:
        with self.api() as api:
            reps = api.get("/v1/replicas", service="web")
        ok = [r for r in reps if r["state"] == "healthy" and r["desired"] == "run"]
        running = [c for c in self.containers() if c.status == "running"]
        return ok if len(ok) == count == len(reps) == len(running) else None

    def node_states(self) -> set[str]:
        with self.api() as api:
            return {n["state"] for n in api.get("/v1/nodes")}

    def node_events(self) -> list[dict[str, Any]]:
        with self.api() as api:
            events: list[dict[str, Any]] = api.get("/v1/events", kind="node")
        return events


@pytest.fixture
def fleet(tmp_path: Path, demo_image: str) -> Iterator[Fleet]:
    client = require_docker()
    f = Fleet(tmp=tmp_path, port=free_port(), run_id=uuid.uuid4().hex[:10], docker=client)
    f.start_controller()
    f.start_agent()
    try:
        yield f
    finally:
        if f.agent is not None:
            f.agent.kill()
        if f.controller is not None:
            f.controller.stop()
        for container in f.containers():
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        client.close()


def deploy(fleet: Fleet, replicas: int) -> set[str]:
    with fleet.api() as api:
        api.request(
            "POST",
            "/v1/services",
            json={
                "name": "web",
                "image": DEFAULT_TAG,
                "replicas": replicas,
                "min_replicas": 0,
                "drain_s": 0,
            },
        )
    wait_for(f"{replicas} healthy replicas", lambda: fleet.healthy(replicas), timeout=DEADLINE_S)
    return {c.id for c in fleet.containers()}


class StateWatch:
    """Polls the node states in a thread and keeps every state it saw."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # the controller may be away
                self.seen |= self.fleet.node_states()
            self._stop.wait(0.1)

    def __enter__(self) -> StateWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_controller_restart_after_a_long_outage_replaces_nothing(fleet: Fleet) -> None:
    """Seen in issue 9: after a restart every node was not_ready at once and every
    container was replaced. Now the restarted controller gives the agent its grace."""
    before = deploy(fleet, 2)
    assert fleet.controller is not None
    fleet.controller.stop()
    time.sleep(3 * NODE_TIMEOUT_S)  # the stored heartbeats are now older than the timeout
    fleet.start_controller()
    with StateWatch(fleet) as watch:
        # Through the grace and well past it: the agent is back, the node stays ready.
        time.sleep(GRACE_S + 3 * NODE_TIMEOUT_S)
    assert "not_ready" not in watch.seen, watch.seen
    assert fleet.node_states() == {"ready"}
    assert not [e for e in fleet.node_events() if e["action"] == "node_not_ready"]
    assert fleet.healthy(2) is not None
    assert {c.id for c in fleet.containers()} == before  # not one container replaced


def test_drill_clock_step_of_one_hour_marks_no_node_not_ready(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drill 6: the controller host's wall clock jumps an hour ahead (through the one
    clock the code reads). Every stored heartbeat suddenly looks an hour old; liveness
    is measured on the monotonic clock, so nothing happens."""
    before = deploy(fleet, 1)
    # Past the startup grace, so that the grace is not what protects the node.
    time.sleep(GRACE_S + 1)
    real = clock.utcnow
    with StateWatch(fleet) as watch:
        monkeypatch.setattr(clock, "utcnow", lambda: real() + timedelta(hours=1))
        time.sleep(4 * NODE_TIMEOUT_S)
    assert watch.seen == {"ready"}, watch.seen
    assert not [e for e in fleet.node_events() if e["action"] == "node_not_ready"]
    with fleet.api() as api:
        (node,) = api.get("/v1/nodes")
    assert node["last_heartbeat"] > (real() + timedelta(minutes=30)).isoformat()
    assert fleet.healthy(1) is not None
    assert {c.id for c in fleet.containers()} == before
