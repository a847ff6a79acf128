"""A real fleet, end to end: a real controller on this machine, two lab hosts provisioned
by ``playbooks/workers.yml`` over SSH, their agents (systemd units) registered and ready,
a service placed on them and answering at the lab hosts' addresses, and the same
playbook run again by the controller itself through ``POST /v1/jobs``.

The controller listens on docker0's address, the one address of this machine the lab
hosts reach. No registry is reachable, so the demo image is copied into each lab host's
engine with ``docker save | docker load``: the agent pulls only images its engine lacks
(see ``DockerEngine.ensure_image``), so a loaded image is what a pulled one would be,
and the 2 MB copy costs a second where a registry (package, config, the engines'
``insecure-registries``, a push) would add moving parts the test is not about.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from orchestrify.demo import DEFAULT_TAG, build_demo_image
from tests.conftest import require, require_binary
from tests.integration import lab
from tests.integration.provisioning import REPO, build_wheelhouse, run_playbook, venv_path

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

T = TypeVar("T")


def docker0_address(the_lab: lab.Lab, host: lab.LabHost) -> str:
    """This machine's address on docker0, as a lab host sees it: its default gateway.

    (The bridge network's IPAM config leaves Gateway empty on this engine.)
    """
    route = the_lab.exec(host, "ip", "-4", "route", "show", "default")
    gateway = route.split()[2] if route.startswith("default via ") else ""
    assert gateway and not gateway.startswith("192.0.2."), route
    return gateway


def free_port_on(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], *, timeout: float) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (OSError, ValueError) as exc:
            result, last = None, exc
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass(frozen=True)
class Controller:
    url: str
    token: str
    join_token: str
    process: subprocess.Popen[bytes]
    log: Path

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass(frozen=True)
class Fleet:
    lab: lab.Lab
    hosts: list[lab.LabHost]
    inventory: Path
    controller: Controller


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_binary("docker")
    require_binary("ssh")
    require_binary("ansible-playbook")
    require(lab.docker_available(), "a running Docker engine (see shared/ENVIRONMENT.md)")
    tmp = tmp_path_factory.mktemp("fleet")
    lab.ensure_images()
    wheelhouse = build_wheelhouse(tmp / "wheelhouse")

    the_lab = lab.Lab(key=lab.generate_ssh_key(tmp / "ssh"))
    controller: Controller | None = None
    try:
        hosts = the_lab.start(2)
        address = docker0_address(the_lab, hosts[0])
        port = free_port_on(address)
        url = f"http://{address}:{port}"
        token, join_token = secrets.token_hex(16), secrets.token_hex(16)

        # The lab inventory, which the controller's jobs use too: everything the
        # workers need is in it, so a job needs no extra vars.
        inventory = the_lab.write_inventory(tmp / "lab.yml", groups={"workers": hosts})
        data = yaml.safe_load(inventory.read_text())
        workers = data["all"]["children"]["workers"]
        # No orchestrify_agent_advertise_address: each agent detects its address (its
        # source address towards the controller), which must be the lab host's own.
        workers["vars"] = {
            "orchestrify_agent_controller_url": url,
            "orchestrify_agent_join_token": join_token,
            "orchestrify_agent_wheelhouse_src": str(wheelhouse),
        }
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))

        log = tmp / "controller.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "orchestrify", "controller",
                 "--host", address, "--port", str(port), "--data-dir", str(tmp / "data"),
                 "--token", token, "--join-token", join_token,
                 "--playbook-dir", str(REPO / "playbooks"), "--inventory", str(inventory)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PATH": venv_path(), "PYTHONPATH": str(REPO)},
            )  # fmt: skip
        controller = Controller(url, token, join_token, process, log)

        def healthy() -> bool:
            assert process.poll() is None, f"controller exited:\n{controller.log_tail()}"
            with urllib.request.urlopen(f"{url}/healthz", timeout=3) as response:
                return response.status == 200

        wait_for("the controller's /healthz", healthy, timeout=60)
        yield Fleet(the_lab, hosts, inventory, controller)
    finally:
        if controller is not None:
            controller.process.terminate()
            try:
                controller.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                controller.process.kill()
                controller.process.wait()
        the_lab.teardown()


def load_demo_image(fleet: Fleet) -> None:
    """Copy the demo image into each lab host's engine (no registry is reachable)."""
    build_demo_image()
    for host in fleet.hosts:
        save = subprocess.Popen(["docker", "save", DEFAULT_TAG], stdout=subprocess.PIPE)
        try:
            loaded = subprocess.run(
                ["docker", "exec", "-i", host.name, "docker", "load"],
                stdin=save.stdout, capture_output=True, timeout=120, check=False,
            )  # fmt: skip
        finally:
            assert save.stdout is not None
            save.stdout.close()
            save.wait()
        assert loaded.returncode == 0 and save.returncode == 0, loaded.stderr


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return response.read().decode(errors="replace")


def test_provision_register_deploy_and_rerun_as_a_job(fleet: Fleet) -> None:
    ctl, names = fleet.controller, [h.name for h in fleet.hosts]

    # 1. workers.yml over SSH: engine, node_exporter, the agent as a systemd unit.
    first = run_playbook("workers.yml", inventory=fleet.inventory)
    assert first.rc == 0, first.output[-5000:]
    for host in fleet.hosts:
        assert first.recap(host.name)["changed"] > 0
        assert fleet.lab.exec(host, "docker", "info", "--format", "{{.ServerVersion}}")
        assert fleet.lab.exec(host, "systemctl", "is-active", "orchestrify-agent") == "active"

    def nodes_ready() -> list[dict[str, Any]] | None:
        nodes = [n for n in ctl.call("GET", "/v1/nodes") if n["name"] in names]
        ready = len(nodes) == len(names) and all(n["state"] == "ready" for n in nodes)
        return nodes if ready else None

    nodes = wait_for("both agents registered and ready", nodes_ready, timeout=120)
    by_name = {n["name"]: n for n in nodes}
    for host in fleet.hosts:
        assert by_name[host.name]["address"] == host.address
        # the unit's --metrics-port, reachable from the control side for Prometheus
        metrics = wait_for(
            f"the agent's /metrics on {host.name}",
            lambda h=host: http_get(f"http://{h.address}:18081/metrics"),
            timeout=60,
        )
        assert "orchestrify_" in metrics

    # 2. Idempotence: the same playbook again changes nothing (agents keep running).
    second = run_playbook("workers.yml", inventory=fleet.inventory)
    assert second.rc == 0, second.output[-5000:]
    for name in names:
        assert second.recap(name)["changed"] == 0, second.output[-5000:]

    # 3. Deploy: replicas land on the lab hosts and answer at their addresses.
    load_demo_image(fleet)
    ctl.call("POST", "/v1/services", {
        "name": "demo", "image": DEFAULT_TAG, "port": 8000, "replicas": 2,
        "min_replicas": 1, "max_replicas": 4, "health_path": "/health",
    })  # fmt: skip

    def replicas_healthy() -> list[dict[str, Any]] | None:
        replicas = ctl.call("GET", "/v1/replicas?service=demo")
        healthy = [r for r in replicas if r["state"] == "healthy" and r["address"]]
        return healthy if len(healthy) == 2 else None

    try:
        replicas = wait_for("2 healthy demo replicas", replicas_healthy, timeout=180)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nreplicas: {ctl.call('GET', '/v1/replicas?service=demo')}"
        ) from None
    node_ids = {n["id"]: n for n in nodes}
    # spread first: one replica on each lab host
    assert {r["node"] for r in replicas} == set(node_ids)
    for replica in replicas:
        host_address = replica["address"].rsplit(":", 1)[0]
        assert host_address == node_ids[replica["node"]]["address"]
        body = wait_for(
            f"replica {replica['id']} at {replica['address']}",
            lambda r=replica: http_get(f"http://{r['address']}/"),
            timeout=30,
        )
        assert "hello from" in body

    # 4. The controller runs the same playbook itself: the third run, still no change.
    job = ctl.call("POST", "/v1/jobs", {"playbook": "workers.yml", "reason": "fleet test"})

    def job_finished() -> dict[str, Any] | None:
        current = ctl.call("GET", f"/v1/jobs/{job['id']}")
        return current if current["status"] in {"successful", "failed", "canceled"} else None

    done = wait_for("the workers.yml job", job_finished, timeout=600)
    assert done["status"] == "successful", (done, ctl.log_tail())
    assert set(done["stats"]) == set(names), done["stats"]
    for name in names:
        stats = done["stats"][name]
        assert stats["ok"] > 0 and stats["failures"] == 0 and stats["unreachable"] == 0, stats
        assert stats["changed"] == 0, (stats, job_events(ctl, job["id"]))


def job_events(ctl: Controller, job_id: str) -> str:
    """The changed tasks of a job, for an assertion message."""
    request = urllib.request.Request(
        f"{ctl.url}/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {ctl.token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            lines = response.read().decode(errors="replace").splitlines()
    except urllib.error.URLError as exc:
        return f"(events unavailable: {exc})"
    return "\n".join(line for line in lines if '"changed": true' in line)[-3000:]
