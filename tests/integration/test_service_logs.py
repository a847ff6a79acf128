"""`orchestrify service logs` on the real Docker engine: two agents (two nodes), a
service of three replicas of the demo app, whose request lines are the log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from bench.agent_harness import (
    RunningAgent,
    RunningController,
    start_agents,
    start_controller,
    wait_ready,
)
from bench.net import free_port
from bench.outage_lab import remove_containers
from bench.wait import wait_for
from orchestrify.agent import HealSettings
from orchestrify.client import ControllerClient
from orchestrify.demo import DEFAULT_TAG, build_demo_image
from tests.conftest import require, require_docker

# beside: its own controller and agents on free ports, containers of its own labels, and
# no timing asserted: it runs beside the timed integration tests.
pytestmark = [pytest.mark.integration, pytest.mark.beside]

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "chatty"
LINES = 20


@dataclass
class Fleet:
    controller: RunningController
    api: ControllerClient
    agents: list[RunningAgent]
    names: list[str]
    docker: docker.DockerClient

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "ORCHESTRIFY_URL": self.controller.url,
            "ORCHESTRIFY_TOKEN": self.controller.admin_token,
            "COLUMNS": "200",
        }
        return subprocess.run(
            [sys.executable, "-m", "orchestrify", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ndjson(self, path: str, **params: Any) -> list[dict[str, Any]]:
        return list(self.api.stream_ndjson(path, **params))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    client = require_docker()
    try:
        build_demo_image()
    except Exception as exc:
        require(False, f"the demo image can be built ({exc})")
    run_id = uuid.uuid4().hex[:10]
    controller = start_controller(tmp_path / "controller", free_port(), reconcile_interval_s=0.2)
    api = controller.client()
    names = [f"n{i}-{run_id}" for i in (1, 2)]
    agents = start_agents(
        controller,
        tmp_path,
        names=names,
        run_id=run_id,
        heal=HealSettings(fault_interval_s=0.5, probe_timeout_s=0.4),
    )
    try:
        wait_ready(api, names)  # else the replicas may all go to the first node up
        api.request(
            "POST",
            "/v1/services",
            json={"name": SERVICE, "image": DEFAULT_TAG, "replicas": 3, "min_replicas": 0},
        )
        wait_for("3 healthy replicas", lambda: len(_healthy(api)) == 3, timeout=60)
        yield Fleet(controller, api, agents, names, client)
    finally:
        for agent in agents:
            agent.kill()
        api.close()
        controller.stop()
        remove_containers(client, run_id)
        client.close()


def _healthy(api: ControllerClient) -> list[dict[str, Any]]:
    reps: list[dict[str, Any]] = api.get("/v1/replicas", service=SERVICE)
    return [r for r in reps if r["state"] == "healthy" and r["desired"] == "run"]


def _numbered(fleet: Fleet, tag: str, count: int = LINES) -> dict[str, list[str]]:
    """``count`` numbered requests to each healthy replica (the app logs each one):
    the lines each replica must show, in order."""
    sent: dict[str, list[str]] = {}
    with httpx.Client(timeout=5) as http:
        for rep in _healthy(fleet.api):
            for n in range(1, count + 1):
                path = f"/{tag}/{rep['id']}/{n}"
                assert http.get(f"http://{rep['address']}{path}").status_code == 200
                sent.setdefault(rep["id"], []).append(f"GET {path} 200")
    return sent


def test_service_logs_merges_every_replica_once_in_order_with_prefixes(fleet: Fleet) -> None:
    reps = _healthy(fleet.api)
    assert len({r["node"] for r in reps}) == 2  # spread over both nodes
    tag = uuid.uuid4().hex[:8]
    sent = _numbered(fleet, tag)

    got = fleet.ndjson(f"/v1/services/{SERVICE}/logs", since="5m")
    assert [o for o in got if "notice" in o] == []
    ours = [o for o in got if tag in o.get("line", "")]
    node_names = {r["id"]: r["node_name"] for r in reps}
    for rid, lines in sent.items():
        mine = [o for o in ours if o["replica"] == rid]
        assert [o["line"] for o in mine] == lines  # every line exactly once, in order
        assert {(o["node"], o["stream"]) for o in mine} == {(node_names[rid], "stdout")}
    stamps = [o["ts"] for o in got]
    assert len(stamps) == len(got)
    # Merged by time across replicas and nodes: the timestamps never go back.
    keys = [_ns(ts) for ts in stamps]
    assert keys == sorted(keys)

    # The CLI: one prefixed line each, SERVICE.REPLICA@NODE as Swarm shows it.
    out = fleet.cli("service", "logs", SERVICE, "--since", "5m")
    assert out.returncode == 0, out.stderr
    printed = [line for line in out.stdout.splitlines() if tag in line]
    assert len(printed) == 3 * LINES
    for rid, lines in sent.items():
        short = rid.removeprefix(f"{SERVICE}-")
        prefix = f"{SERVICE}.{short}@{node_names[rid]} | "
        assert [p.removeprefix(prefix) for p in printed if p.startswith(prefix)] == lines
    assert "\x1b[" not in out.stdout  # no colour into a pipe

    bare = fleet.cli("service", "logs", SERVICE, "--no-prefix", "--timestamps")
    first = next(line for line in bare.stdout.splitlines() if tag in line)
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\dT[\d:.]+Z GET /{tag}/\S+ 200", first), first


def test_tail_gives_the_last_lines_of_each_replica(fleet: Fleet) -> None:
    sent = _numbered(fleet, uuid.uuid4().hex[:8], count=8)
    got = fleet.ndjson(f"/v1/services/{SERVICE}/logs", tail=5)
    per_replica: dict[str, list[str]] = {}
    for o in got:
        per_replica.setdefault(o["replica"], []).append(o["line"])
    assert {rid: len(lines) for rid, lines in per_replica.items()} == {rid: 5 for rid in sent}

    one = next(iter(sent))
    out = fleet.cli("replica", "logs", one, "--tail", "3", "--no-prefix")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 3


def test_follow_shows_new_lines_and_names_a_node_whose_agent_stops(fleet: Fleet) -> None:
    reps = _healthy(fleet.api)
    received: list[tuple[float, dict[str, Any]]] = []
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            for obj in fleet.api.stream_ndjson(
                f"/v1/services/{SERVICE}/logs", follow="true", tail=0
            ):
                received.append((time.monotonic(), obj))
        except BaseException as exc:  # the stream's end when the test is over
            errors.append(exc)

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(1.0)  # the stream is open (it started with nothing: tail 0)
    marker = uuid.uuid4().hex
    with httpx.Client(timeout=5) as http:
        sent_at = time.monotonic()
        assert http.get(f"http://{reps[0]['address']}/{marker}").status_code == 200
    arrived = wait_for(
        "the new line in the followed stream",
        lambda: next((t for t, o in received if marker in o.get("line", "")), None),
        timeout=10,
    )
    print(f"followed line arrived {arrived - sent_at:.3f} s after the request")

    # Stop the agent of one node: a notice names it, the other node's lines keep coming.
    victim_node = reps[0]["node"]
    victim = next(a for a in fleet.agents if a.node_id == victim_node)
    victim.kill()
    victim_name = reps[0]["node_name"]
    wait_for(
        f"a notice naming {victim_name}",
        lambda: any(o.get("node") == victim_name and "notice" in o for _, o in received),
        timeout=15,
    )
    survivor = next(r for r in reps if r["node"] != victim_node)
    after = uuid.uuid4().hex
    with httpx.Client(timeout=5) as http:
        assert http.get(f"http://{survivor['address']}/{after}").status_code == 200
    wait_for(
        "the other node's line after the notice",
        lambda: any(after in o.get("line", "") for _, o in received),
        timeout=10,
    )
    # A new request names the node that cannot be read, and still gives the others.
    got = fleet.ndjson(f"/v1/services/{SERVICE}/logs", since="5m")
    assert any(after in o.get("line", "") for o in got)
    # ...in a trailer, after the lines of the nodes that could be read.
    assert "notice" in got[-1] and got[-1]["node"] == victim_name, got[-3:]
    assert [o for o in got[:-1] if "notice" in o] == []
    assert errors == []


def test_a_killed_and_replaced_replicas_old_lines_are_still_shown_marked(fleet: Fleet) -> None:
    tag = uuid.uuid4().hex[:8]
    victim = _healthy(fleet.api)[0]
    sent = _numbered(fleet, tag, count=5)[victim["id"]]
    old = fleet.docker.containers.get(victim["container_id"])
    old.kill()
    wait_for(
        "the replica replaced in place",
        lambda: any(
            r["id"] == victim["id"] and r["container_id"] != old.id for r in _healthy(fleet.api)
        ),
        timeout=30,
    )
    got = fleet.ndjson(f"/v1/replicas/{victim['id']}/logs")
    mine = [o for o in got if tag in o.get("line", "")]
    assert [o["line"] for o in mine] == sent
    assert all(o.get("replaced") is True for o in mine)  # from the container that died
    assert any(not o.get("replaced") for o in got)  # the new container's own lines
    out = fleet.cli("replica", "logs", victim["id"])
    assert out.returncode == 0, out.stderr
    assert "(replaced) | GET /" in out.stdout and "no longer runs" in out.stderr


def test_logs_are_refused_without_the_admin_token_and_name_a_bad_since(fleet: Fleet) -> None:
    url = f"{fleet.controller.url}/v1/services/{SERVICE}/logs"
    assert httpx.get(url).status_code == 401
    auth = {"Authorization": f"Bearer {fleet.controller.admin_token}"}
    bad = httpx.get(url, params={"since": "yesterday"}, headers=auth)
    assert bad.status_code == 422 and "since" in bad.text
    missing = httpx.get(f"{fleet.controller.url}/v1/services/nope/logs", headers=auth)
    assert missing.status_code == 404
    # The agent's own door opens only with that node's key, never the admin token.
    node = fleet.api.get("/v1/nodes")[0]
    agent = httpx.get(f"{node['agent_url']}/v1/containers", params={"service": SERVICE})
    assert agent.status_code == 401
    agent = httpx.get(
        f"{node['agent_url']}/v1/containers", params={"service": SERVICE}, headers=auth
    )
    assert agent.status_code == 401
    cli = fleet.cli("service", "logs", SERVICE, "--since", "yesterday")
    assert cli.returncode == 2 and "since" in cli.stderr, cli.stderr
    assert json.loads(fleet.cli("service", "inspect", SERVICE, "--json").stdout)["replicas"] == 3


def _ns(ts: str) -> int:
    head, _, frac = ts.rstrip("Z").partition(".")
    return int(time.mktime(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))) * 10**9 + int(
        frac.ljust(9, "0") or 0
    )
