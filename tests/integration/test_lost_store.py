"""Drills against the real Docker engine, a real controller and a real agent: a lost
store never deletes a container, and an agent restart never doubles a replica.

Every container carries ``orchestrify.test=1`` and the test's run id, and is removed in
teardown by those labels only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from bench.agent_harness import RunningAgent, RunningController, agent_settings, start_controller
from bench.labels import RUN_LABEL, TEST_LABEL
from bench.net import free_port
from bench.wait import wait_for
from orchestrify.agent import HealSettings
from orchestrify.client import ControllerClient
from orchestrify.demo import DEFAULT_TAG
from tests.conftest import require_docker

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0
ADMIN = "admin-" + uuid.uuid4().hex
JOIN = "join-" + uuid.uuid4().hex


@dataclass
class Drill:
    tmp: Path
    port: int
    docker: docker.DockerClient
    run_id: str
    controller: RunningController | None = None
    last_controller: RunningController | None = None  # its url and join token stay valid
    agent: RunningAgent | None = None
    apis: list[ControllerClient] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.tmp / "controller"

    def start_controller(self) -> ControllerClient:
        self.controller = start_controller(
            self.data_dir, self.port, admin_token=ADMIN, join_token=JOIN
        )
        self.last_controller = self.controller
        api = self.controller.client()
        self.apis.append(api)
        return api

    def stop_controller(self) -> None:
        assert self.controller is not None
        self.controller.stop()
        self.controller = None

    def start_agent(self) -> RunningAgent:
        assert self.last_controller is not None
        settings = agent_settings(
            self.last_controller,
            name=f"node-{self.run_id}",
            state_dir=self.tmp / "agent",
            run_id=self.run_id,
            heal=HealSettings(fault_interval_s=0.5, probe_timeout_s=0.4),
        )
        settings = dataclasses.replace(settings, controller_backoff_s=(0.2, 0.5, 1.0))
        self.agent = RunningAgent(settings).start()
        return self.agent

    def containers(self, service: str | None = None) -> list[Any]:
        labels = [f"{TEST_LABEL}=1", f"{RUN_LABEL}={self.run_id}"]
        if service:
            labels.append(f"orchestrify.service={service}")
        return self.docker.containers.list(all=True, filters={"label": labels})

    def started(self, service: str) -> dict[str, str]:
        """Container id -> StartedAt of the service's containers (a restart changes it)."""
        return {c.id: c.attrs["State"]["StartedAt"] for c in self.containers(service)}

    def cli(self, *args: str) -> str:
        env = {**os.environ, "ORCHESTRIFY_URL": f"http://127.0.0.1:{self.port}"}
        env["ORCHESTRIFY_TOKEN"] = ADMIN
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrify", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def healthy(self, api: ControllerClient, service: str, count: int) -> list[dict[str, Any]]:
        reps = api.get("/v1/replicas", service=service)
        ok = [r for r in reps if r["state"] == "healthy" and r["desired"] == "run"]
        return ok if len(ok) == count == len(reps) else []


@pytest.fixture
def drill(tmp_path: Path, demo_image: str, caplog: pytest.LogCaptureFixture) -> Iterator[Drill]:
    caplog.set_level(logging.INFO, logger="orchestrify")
    client = require_docker()
    d = Drill(tmp=tmp_path, port=free_port(), docker=client, run_id=uuid.uuid4().hex[:10])
    try:
        yield d
    finally:
        if d.agent is not None:
            d.agent.kill()
        for api in d.apis:
            api.close()
        if d.controller is not None:
            d.controller.stop()
        for container in d.containers():
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        client.close()


def deploy_two(d: Drill, api: ControllerClient) -> dict[str, str]:
    spec = {"name": "web", "image": DEFAULT_TAG, "replicas": 2, "min_replicas": 0, "drain_s": 0}
    api.request("POST", "/v1/services", json=spec)
    wait_for("2 healthy replicas", lambda: d.healthy(api, "web", 2), timeout=DEADLINE_S)
    before = d.started("web")
    assert len(before) == 2
    return before


def wipe(d: Drill) -> None:
    """The controller's data dir lost: stopped, deleted, started fresh on the same port."""
    d.stop_controller()
    shutil.rmtree(d.data_dir)


def test_wiped_store_removes_nothing_and_recreating_the_service_adopts(drill: Drill) -> None:
    """Drill 3 with the agent running throughout: 0 containers removed, the orphans
    shown (node inspect, one event), and re-creating the service adopts them without a
    restart (same container ids, same StartedAt)."""
    api = drill.start_controller()
    drill.start_agent()
    before = deploy_two(drill, api)
    node = drill.agent.node_id if drill.agent else None
    assert node is not None

    wipe(drill)
    api = drill.start_controller()
    shown = wait_for(
        "the orphans shown on the node",
        lambda: len(api.get(f"/v1/nodes/{node}")["orphaned"]) == 2 and api.get(f"/v1/nodes/{node}"),
        timeout=DEADLINE_S,
    )
    assert {o["container_id"] for o in shown["orphaned"]} == set(before)
    assert all(o["service"] == "web" and o["address"] for o in shown["orphaned"])
    inspect = drill.cli("node", "inspect", node)
    assert "2 orphaned container(s)" in inspect and f"orchestrify node adopt {node}" in inspect
    events = [e for e in api.get("/v1/events") if e.get("action") == "orphans"]
    assert len(events) == 1 and "2 orphaned" in events[0]["message"]
    time.sleep(3)  # the agent's new assignments (none) have been applied meanwhile
    assert drill.started("web") == before  # 0 containers removed or restarted

    # Nothing to adopt into yet: they stay orphans, and the CLI says why.
    out = drill.cli("node", "adopt", node)
    assert "0 orphan(s) adopted" in out and "no service named 'web'" in out
    # Re-creating the service by its name adopts them.
    spec = {"name": "web", "image": DEFAULT_TAG, "replicas": 2, "min_replicas": 0, "drain_s": 0}
    api.request("POST", "/v1/services", json=spec)
    reps = wait_for(
        "the orphans healthy replicas again", lambda: drill.healthy(api, "web", 2), timeout=60
    )
    assert {r["container_id"] for r in reps} == set(before)
    assert api.get(f"/v1/nodes/{node}")["orphaned"] == []
    assert drill.started("web") == before  # the same containers, never restarted


def test_agent_away_during_the_wipe_then_node_adopt_restores_without_restart(
    drill: Drill,
) -> None:
    """Drill 3 with the agent away: the service is re-created first (nothing to place
    it on), the agent comes back with its containers as orphans, nothing is placed
    beside them, and `orchestrify node adopt` makes them its replicas without a restart."""
    api = drill.start_controller()
    drill.start_agent()
    before = deploy_two(drill, api)
    assert drill.agent is not None
    node = drill.agent.node_id
    assert node is not None
    drill.agent.kill()

    wipe(drill)
    api = drill.start_controller()
    spec = {"name": "web", "image": DEFAULT_TAG, "replicas": 2, "min_replicas": 0, "drain_s": 0}
    api.request("POST", "/v1/services", json=spec)
    drill.start_agent()
    wait_for(
        "the orphans shown on the node",
        lambda: len(api.get(f"/v1/nodes/{node}")["orphaned"]) == 2,
        timeout=DEADLINE_S,
    )
    time.sleep(3)  # reconcile cycles ran: nothing was placed beside the orphans
    assert api.get("/v1/replicas", service="web") == []
    assert drill.started("web") == before
    assert any(
        "orphaned container(s) of web" in (e.get("message") or "") for e in api.get("/v1/events")
    )

    out = drill.cli("node", "adopt", node)
    assert "2 orphan(s) adopted" in out, out
    reps = wait_for(
        "the adopted replicas healthy", lambda: drill.healthy(api, "web", 2), timeout=DEADLINE_S
    )
    assert {r["container_id"] for r in reps} == set(before)
    # Adopted as the service's current spec (the agent labelled them with its hash):
    # no rolling update replaces them.
    assert api.get("/v1/services/web")["update_state"] == "completed"
    time.sleep(2)
    assert drill.started("web") == before


def test_agent_restart_with_the_controller_unreachable_starts_nothing(drill: Drill) -> None:
    """An agent restart never doubles: while the controller cannot be asked, the saved
    assignments only adopt (and probe) what runs; a replica without a container is not
    started, since the controller may have moved it elsewhere meanwhile."""
    api = drill.start_controller()
    drill.start_agent()
    before = deploy_two(drill, api)
    assert drill.agent is not None
    drill.agent.kill()
    drill.stop_controller()
    gone, kept = sorted(before)
    drill.docker.containers.get(gone).remove(force=True)  # its replica "moved elsewhere"

    agent = drill.start_agent()  # the controller is unreachable: its port is closed

    def adopted_and_probed() -> bool:
        rec = agent.agent.reconciler if agent.agent else None
        reps = list(rec.replicas.values()) if rec else []
        return any(
            r.container is not None and r.container.id == kept and r.state == "healthy"
            for r in reps
        )

    wait_for("the running replica adopted and probed", adopted_and_probed, timeout=DEADLINE_S)
    time.sleep(2)  # several reconcile steps later
    assert drill.started("web") == {kept: before[kept]}  # nothing new, nothing restarted


def test_node_prune_removes_the_orphans_and_only_them(drill: Drill) -> None:
    api = drill.start_controller()
    drill.start_agent()
    before = deploy_two(drill, api)
    assert drill.agent is not None
    node = drill.agent.node_id
    assert node is not None

    wipe(drill)
    api = drill.start_controller()
    wait_for(
        "the orphans shown on the node",
        lambda: len(api.get(f"/v1/nodes/{node}")["orphaned"]) == 2,
        timeout=DEADLINE_S,
    )
    spec = {"name": "api", "image": DEFAULT_TAG, "replicas": 1, "min_replicas": 0, "drain_s": 0}
    api.request("POST", "/v1/services", json=spec)  # a replica of the new cluster beside them
    (fresh,) = wait_for("a new replica", lambda: drill.healthy(api, "api", 1), timeout=60)
    assert drill.started("web") == before

    out = drill.cli("node", "prune", node)
    assert "2 orphaned container(s) to be removed" in out, out
    wait_for("the orphans removed", lambda: drill.containers("web") == [], timeout=DEADLINE_S)
    wait_for(
        "no orphans left on the node",
        lambda: api.get(f"/v1/nodes/{node}")["orphaned"] == [],
        timeout=DEADLINE_S,
    )
    assert [c.id for c in drill.containers("api")] == [fresh["container_id"]]
