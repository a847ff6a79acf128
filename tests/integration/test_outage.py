"""Outage drills against the real components: the controller (a real process, killed with
SIGKILL), the agent on the real Docker engine, the edge with the real Nginx, and traffic
through Nginx every 20 ms on new connections. The data plane must not notice.

Drill numbers follow issue 9. Drill 3 is here with traffic (its orphan and adoption
details are in test_lost_store.py), drill 4 in test_edge_restart.py, drill 6 in
test_liveness.py and drill 7 in test_graceful_stop.py.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from bench.outage_lab import Fleet, containers, fleet
from bench.wait import wait_for
from orchestrify.demo import DEFAULT_TAG
from tests.conftest import require, require_binary, require_docker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OUTAGE_S = 60.0  # the drill: the controller away for a minute
NODE_TIMEOUT = ["--node-timeout", "3"]  # a minute is 20 node timeouts


@pytest.fixture
def engine(demo_image: str) -> Iterator[docker.DockerClient]:
    require_binary("nginx")
    client = require_docker()
    yield client
    client.close()


def _port_of(client: docker.DockerClient, container_id: str) -> str:
    c = client.containers.get(container_id)
    return str(c.ports["8000/tcp"][0]["HostPort"])


def _whole(f: Fleet, **services: int) -> bool:
    return all(f.serving(name, count) for name, count in services.items())


def test_controller_killed_mid_deploy_the_deploy_completes_without_duplicates(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Drill 1: SIGKILL the controller while a deploy is under way, start it again: the
    deploy completes, no replica has two containers, and the running service serves on."""
    with fleet(tmp_path, engine, controller_args=NODE_TIMEOUT) as f:
        f.deploy("steady", image=DEFAULT_TAG, replicas=2)
        wait_for("steady to be served", lambda: _whole(f, steady=2), timeout=90)
        steady = containers(engine, f.run_id, service="steady")
        load = f.load("steady")
        f.deploy("fresh", image=DEFAULT_TAG, replicas=3)
        wait_for(
            "the first container of the deploy",
            lambda: containers(engine, f.run_id, service="fresh"),
            timeout=30,
        )
        f.controller.kill()
        time.sleep(2)
        f.controller.start()
        wait_for("the deploy to complete", lambda: _whole(f, steady=2, fresh=3), timeout=90)
        load.finish()

        with f.controller.api() as api:
            listed = api.get("/v1/replicas", params={"service": "fresh"}).json()
        replicas = {r["id"] for r in listed}
        labels = [f"orchestrify.test.run={f.run_id}", "orchestrify.service=fresh"]
        fresh = engine.containers.list(all=True, filters={"label": labels})
        by_replica = [c.labels["orchestrify.replica"] for c in fresh]
        assert sorted(by_replica) == sorted(replicas), "one container per replica, no duplicate"
        assert len(replicas) == 3
        assert containers(engine, f.run_id, service="steady") == steady, "steady was replaced"
        assert load.total > 100
        assert load.failures == [], load.failures[:5]


def test_controller_away_a_minute_replaces_nothing_and_catches_up(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Drill 2 and the catch-up: the controller is away for 60 s (20 node timeouts). No
    container is replaced, no request fails. A replica killed meanwhile is healed by the
    agent on a new port; once the controller is back the edge serves that port and no
    longer the old one."""
    with fleet(tmp_path, engine, controller_args=NODE_TIMEOUT) as f:
        f.deploy("steady", image=DEFAULT_TAG, replicas=2)
        f.deploy("healed", image=DEFAULT_TAG, replicas=2)
        wait_for("both services served", lambda: _whole(f, steady=2, healed=2), timeout=90)
        steady = containers(engine, f.run_id, service="steady")
        healed = containers(engine, f.run_id, service="healed")
        loads = [f.load("steady"), f.load("healed")]

        f.controller.kill()
        down_at = time.monotonic()
        victim, victim_replica = sorted(healed.items())[0]
        old_address = f"127.0.0.1:{_port_of(engine, victim)}"
        engine.containers.get(victim).kill()

        def replacement() -> str | None:
            now = containers(engine, f.run_id, service="healed")
            return next((cid for cid, rid in now.items() if rid == victim_replica), None)

        new_container = wait_for("the agent to heal the killed replica", replacement, timeout=30)
        new_address = f"127.0.0.1:{_port_of(engine, new_container)}"
        assert new_address != old_address
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))

        f.controller.start()
        back_at = time.monotonic()

        def caught_up() -> bool:
            served = f.edge.upstream_addresses()
            return new_address in served and old_address not in served

        wait_for("the edge to serve the healed replica's new port", caught_up, timeout=30)
        print(f"catch-up after the controller returned: {time.monotonic() - back_at:.1f}s")
        wait_for("the fleet whole again", lambda: _whole(f, steady=2, healed=2), timeout=30)
        for load in loads:
            load.finish()

        assert containers(engine, f.run_id, service="steady") == steady, "a container replaced"
        after = containers(engine, f.run_id, service="healed")
        assert set(after) == (set(healed) - {victim}) | {new_container}, "more than the victim"
        with f.controller.api() as api:
            nodes = api.get("/v1/nodes").json()
            kinds = [e["action"] for e in api.get("/v1/events", params={"since": "10m"}).json()]
        assert [n["state"] for n in nodes] == ["ready"]
        assert "node_not_ready" not in kinds
        for load in loads:
            assert load.total > 1000
            assert load.failures == [], load.failures[:5]


def test_controller_store_wiped_under_traffic_nginx_keeps_serving(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Drill 3 with traffic: the controller's data dir is wiped and a fresh controller
    starts (another cluster). No container is removed, the agent reports them as orphans,
    the edge keeps them in Nginx (no request fails), and re-creating the service adopts
    them without a restart."""
    with fleet(tmp_path, engine, controller_args=NODE_TIMEOUT) as f:
        f.deploy("web", image=DEFAULT_TAG, replicas=2)
        wait_for("web to be served", lambda: _whole(f, web=2), timeout=90)
        before = containers(engine, f.run_id, service="web")
        served = f.edge.upstream_addresses()
        load = f.load("web")

        f.controller.kill()
        shutil.rmtree(f.controller.data_dir)
        f.controller.start()

        def orphans() -> int:
            with f.controller.api() as api:
                return sum(len(n["orphaned"]) for n in api.get("/v1/nodes").json())

        wait_for("the agent to report its containers as orphans", lambda: orphans() == 2)
        time.sleep(3)  # traffic goes on while the controller knows no service at all
        assert f.edge.upstream_addresses() == served, "the edge emptied an upstream"
        f.deploy("web", image=DEFAULT_TAG, replicas=2)  # re-created by name: adopts them
        wait_for("web adopted and served", lambda: _whole(f, web=2), timeout=60)
        load.finish()

        assert containers(engine, f.run_id, service="web") == before, "a container changed"
        assert f.edge.upstream_addresses() == served
        assert orphans() == 0
        assert load.total > 100  # requests flowed throughout (a busy machine slows them)
        assert load.failures == [], load.failures[:5]


def test_docker_engine_restarted_under_the_agent_replicas_come_back(
    tmp_path: Path, engine: docker.DockerClient
) -> None:
    """Drill 5: the Docker engine restarts under a running agent (its containers stop with
    it): the agent reconnects, reconciles, and the service is whole again."""
    with fleet(tmp_path, engine, controller_args=NODE_TIMEOUT) as f:
        f.deploy("web", image=DEFAULT_TAG, replicas=2)
        wait_for("web to be served", lambda: _whole(f, web=2), timeout=90)
        _restart_docker_engine()
        wait_for("web served again", lambda: _whole(f, web=2), timeout=180)
        assert len(containers(engine, f.run_id, service="web")) == 2


def _restart_docker_engine() -> None:
    """Stop the dockerd that scripts/ensure-docker.sh started (by the pid it wrote) and
    start it again the same way."""
    pid_file = Path("/var/run/docker.pid")
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        require(False, "a dockerd started by scripts/ensure-docker.sh (/var/run/docker.pid)")
        return
    subprocess.run(["kill", "-TERM", str(pid)], check=True)
    wait_for("dockerd to stop", lambda: not Path(f"/proc/{pid}").exists(), timeout=60)
    subprocess.run(["bash", str(ROOT / "scripts/ensure-docker.sh")], check=True, timeout=120)
