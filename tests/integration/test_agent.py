"""The agent against the real Docker engine and a real controller.

Each test runs its own controller (uvicorn in a thread, on a free port) and its own
agent (its own node name and state dir); every container carries ``orchestrify.test=1``
and the test's run id, and is removed in teardown by those labels only.
"""

from __future__ import annotations

import contextlib
import logging
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
from bench.labels import RUN_LABEL, TEST_LABEL
from bench.net import free_port
from bench.wait import wait_for
from orchestrify.agent import HealSettings
from orchestrify.client import ControllerClient
from tests.conftest import require_docker

pytestmark = pytest.mark.integration

DEADLINE_S = 30.0


def _docker() -> docker.DockerClient:
    return require_docker()


@dataclass
class Cluster:
    controller: RunningController
    api: ControllerClient
    docker: docker.DockerClient
    run_id: str
    tmp: Path
    agent: RunningAgent

    def new_agent(self) -> RunningAgent:
        settings = agent_settings(
            self.controller,
            name=f"node-{self.run_id}",
            state_dir=self.tmp / "agent",
            run_id=self.run_id,
            heal=HealSettings(fault_interval_s=0.5, probe_timeout_s=0.4),
        )
        return RunningAgent(settings).start()

    def containers(self, service: str | None = None) -> list[Any]:
        labels = [f"{TEST_LABEL}=1", f"{RUN_LABEL}={self.run_id}"]
        if service:
            labels.append(f"orchestrify.service={service}")
        return self.docker.containers.list(all=True, filters={"label": labels})

    def replicas(self, service: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api.get("/v1/replicas", service=service)
        return result

    def deploy(self, name: str, image: str, replicas: int, **extra: Any) -> None:
        spec = {
            "name": name,
            "image": image,
            "replicas": replicas,
            "min_replicas": 0,
            "drain_s": 0,
            **extra,
        }
        self.api.request("POST", "/v1/services", json=spec)

    def healthy(self, service: str, count: int) -> list[dict[str, Any]] | None:
        reps = self.replicas(service)
        ok = [r for r in reps if r["state"] == "healthy" and r["desired"] == "run"]
        running = [c for c in self.containers(service) if c.status == "running"]
        if len(ok) == count == len(reps) and len(running) == count:
            return ok
        return None


@pytest.fixture
def cluster(tmp_path: Path, demo_image: str, caplog: pytest.LogCaptureFixture) -> Iterator[Cluster]:
    caplog.set_level(logging.INFO, logger="orchestrify")  # every log line is formatted
    client = _docker()
    run_id = uuid.uuid4().hex[:10]
    controller = start_controller(tmp_path / "controller", free_port())
    api = controller.client()
    c = Cluster(controller, api, client, run_id, tmp_path, agent=None)  # type: ignore[arg-type]
    c.agent = c.new_agent()
    try:
        yield c
    finally:
        c.agent.kill()
        api.close()
        controller.stop()
        for container in c.containers():
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        client.close()


def test_deploy_three_replicas_and_heal_kill_and_failing_health(cluster: Cluster) -> None:
    cluster.deploy("web", "orchestrify/demo:latest", 3)
    reps = wait_for("3 healthy replicas", lambda: cluster.healthy("web", 3), timeout=DEADLINE_S)

    containers = cluster.containers("web")
    assert len(containers) == 3
    node_id = cluster.agent.node_id
    for container in containers:
        labels = container.labels
        assert labels["orchestrify.node"] == node_id
        assert labels["orchestrify.service"] == "web"
        assert labels["orchestrify.replica"] in {r["id"] for r in reps}
        config = container.attrs["HostConfig"]["LogConfig"]
        assert config["Type"] == "json-file" and config["Config"]["max-file"] == "3"
    for rep in reps:  # each answers with its own replica name at its reported address
        assert rep["id"] in httpx.get(f"http://{rep['address']}/").text

    # docker kill: replaced in place, same replica id, restarts + 1
    victim = reps[0]
    cluster.docker.containers.get(victim["container_id"]).kill()

    def replaced(rep: dict[str, Any]) -> bool:
        now = cluster.api.get(f"/v1/replicas/{rep['id']}")
        return bool(
            now["state"] == "healthy"
            and now["container_id"] != rep["container_id"]
            and now["restarts"] == rep["restarts"] + 1
        )

    wait_for("the killed replica replaced", lambda: replaced(victim), timeout=DEADLINE_S)
    wait_for("3 healthy again", lambda: cluster.healthy("web", 3), timeout=DEADLINE_S)

    # failing health check through its published address: replaced too
    sick = cluster.api.get(f"/v1/replicas/{reps[1]['id']}")
    httpx.get(f"http://{sick['address']}/admin/health?ok=0").raise_for_status()
    wait_for("the unhealthy replica replaced", lambda: replaced(sick), timeout=DEADLINE_S)
    wait_for("3 healthy again", lambda: cluster.healthy("web", 3), timeout=DEADLINE_S)
    # The two replaced containers are kept, stopped, for their logs (service logs).
    found = cluster.containers("web")
    running = [c for c in found if c.status == "running"]
    kept = [c for c in found if c.status != "running"]
    assert len(running) == 3 and len(kept) == 2, [(c.name, c.status) for c in found]
    assert all(c.name.endswith("-retired") for c in kept)
    assert {c.id for c in kept} == {victim["container_id"], sick["container_id"]}

    metrics = httpx.get(
        f"http://127.0.0.1:{cluster.agent.agent and cluster.agent.agent.metrics_port}/metrics"
    ).text
    assert 'orchestrify_replacements_total{service="web"} 2.0' in metrics
    assert "orchestrify_replica_healthy" in metrics
    assert "orchestrify_probe_duration_seconds_count" in metrics


def test_restarted_agent_adopts_its_containers_and_scale_in_removes(cluster: Cluster) -> None:
    cluster.deploy("api", "orchestrify/demo:latest", 3)
    wait_for("3 healthy replicas", lambda: cluster.healthy("api", 3), timeout=DEADLINE_S)
    before = {c.id for c in cluster.containers("api")}
    node_id = cluster.agent.node_id

    cluster.agent.kill()
    assert {c.id for c in cluster.containers("api") if c.status == "running"} == before
    cluster.agent = cluster.new_agent()
    wait_for("the agent re-registered", lambda: cluster.agent.node_id, timeout=DEADLINE_S)
    assert cluster.agent.node_id == node_id  # same node across restarts
    wait_for(
        "the same containers reported healthy",
        lambda: (
            cluster.healthy("api", 3)
            and {r["container_id"] for r in cluster.replicas("api")} == before
        ),
        timeout=DEADLINE_S,
    )
    assert {c.id for c in cluster.containers("api")} == before  # adopted, no duplicates
    state_file = cluster.tmp / "agent" / "node.json"
    assert state_file.stat().st_mode & 0o777 == 0o600

    cluster.api.request("PATCH", "/v1/services/api", json={"replicas": 1})
    wait_for("scaled in to 1", lambda: cluster.healthy("api", 1), timeout=DEADLINE_S)
    remaining = cluster.containers("api")
    assert len(remaining) == 1 and remaining[0].id in before


def test_missing_image_shows_the_pull_error_and_nothing_else_breaks(cluster: Cluster) -> None:
    missing = f"127.0.0.1:{free_port()}/orchestrify/missing:1"  # nothing listens there
    cluster.deploy("good", "orchestrify/demo:latest", 1)
    cluster.deploy("broken", missing, 1)

    def pull_error() -> dict[str, Any] | None:
        for rep in cluster.replicas("broken"):
            if rep["error"] and "pull" in rep["error"]:
                return rep
        return None

    rep = wait_for("the pull error reported", pull_error, timeout=DEADLINE_S)
    assert missing in rep["error"]
    assert rep["state"] in ("starting", "failed")
    wait_for("the good service healthy", lambda: cluster.healthy("good", 1), timeout=DEADLINE_S)
    # After its replacements it is reported failed, with the pull error, in the events.
    wait_for(
        "the pull error in the events",
        lambda: any("pull" in (e.get("message") or "") for e in cluster.api.get("/v1/events")),
        timeout=DEADLINE_S,
    )
    assert cluster.containers("broken") == []
