"""A real fleet, end to end: a real controller on this machine, two lab hosts provisioned
by ``playbooks/workers.yml`` over SSH (the session's ``worker_fleet``, see
ansible_lab.py: it runs the playbook twice), their agents (systemd units) registered and
ready, a service placed on them and answering at the lab hosts' addresses, and the same
playbook run again by the controller itself through ``POST /v1/jobs``. Then what changes
the fleet for good, last: a changed agent unit restarts the agent once, and
decommission.yml takes a worker out.

The controller listens on docker0's address, the one address of this machine the lab
hosts reach. No registry is reachable, so the demo image is copied into each lab host's
engine with ``docker save | docker load``: the agent pulls only images its engine lacks
(see ``DockerEngine.ensure_image``), so a loaded image is what a pulled one would be,
and the 2 MB copy costs a second where a registry (package, config, the engines'
``insecure-registries``, a push) would add moving parts the test is not about.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from orchestrify.demo import DEFAULT_TAG, build_demo_image
from tests.integration.ansible_lab import Controller, WorkerFleet, unit_starts, wait_for
from tests.integration.provisioning import run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]


@pytest.fixture
def fleet(worker_fleet: WorkerFleet) -> WorkerFleet:
    return worker_fleet


def load_demo_image(fleet: WorkerFleet) -> None:
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


def test_provision_register_deploy_and_rerun_as_a_job(fleet: WorkerFleet) -> None:
    ctl, names = fleet.controller, [h.name for h in fleet.hosts]

    # 1. workers.yml over SSH (the fixture's first run): engine, node_exporter, the agent
    #    as a systemd unit.
    first = fleet.first
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

    # 2. Idempotence: the same playbook again (the fixture's second run) changes nothing.
    second = fleet.second
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


def test_a_changed_agent_unit_restarts_the_agent_once(fleet: WorkerFleet) -> None:
    """After the job above (which must find the units as workers.yml left them)."""
    host, ex = fleet.hosts[0], fleet.lab.exec
    assert unit_starts(fleet.lab, host, "orchestrify-agent") == 1
    # a changed unit (an extra argument, set to its default value) restarts it once
    third = run_playbook(
        "workers.yml", inventory=fleet.inventory,
        args=("--tags", "orchestrify_agent", "--limit", host.name,
              "-e", '{"orchestrify_agent_extra_args": ["--unhealthy-threshold", "3"]}'),
    )  # fmt: skip
    assert third.rc == 0, third.output[-5000:]
    assert unit_starts(fleet.lab, host, "orchestrify-agent") == 2
    assert ex(host, "systemctl", "is-active", "orchestrify-agent") == "active"


class FakeControllerAPI(ThreadingHTTPServer):
    """Just enough of the controller's API for decommission.yml: the node list, the drain
    call, a replica list that empties two polls after the drain, and the node's removal."""

    node_name: str
    calls: list[tuple[str, str, str | None]]
    polls_after_drain: int
    drained: bool


class FakeControllerHandler(BaseHTTPRequestHandler):
    server: FakeControllerAPI

    def _reply(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> None:
        self.server.calls.append((self.command, self.path, self.headers.get("Authorization")))

    def do_GET(self) -> None:
        self._record()
        srv = self.server
        if self.path == "/v1/nodes":
            state = "Draining" if srv.drained else "Ready"
            self._reply(200, [
                {"id": "n-other", "name": "someone-else", "address": "10.0.0.9", "state": "Ready"},
                {"id": "n-lab", "name": srv.node_name, "address": "10.0.0.8", "state": state},
            ])  # fmt: skip
        elif self.path == "/v1/replicas":
            if srv.drained:
                srv.polls_after_drain += 1
            left_on_node = not srv.drained or srv.polls_after_drain < 3
            replicas = [{"id": "r-1", "service": "web", "node": "n-other"}]
            if left_on_node:
                replicas.append({"id": "r-2", "service": "web", "node": "n-lab"})
            self._reply(200, replicas)
        else:
            self._reply(404, {"detail": "not found"})

    def do_DELETE(self) -> None:
        self._record()
        if self.path == "/v1/nodes/n-lab?force=true":
            # As the controller answers: 200 with the node as it was (it is gone now).
            self._reply(200, {"id": "n-lab", "name": self.server.node_name, "state": "Draining"})
        else:
            self._reply(404, {"detail": "not found"})

    def do_POST(self) -> None:
        self._record()
        if self.path == "/v1/nodes/n-lab/drain":
            self.server.drained = True
            self._reply(202, {"id": "n-lab", "state": "Draining"})
        else:
            self._reply(404, {"detail": "not found"})

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_decommission_drains_then_stops_the_agent(fleet: WorkerFleet) -> None:
    """Last: takes the first worker out of the fleet (against a stand-in controller API)."""
    host, ex = fleet.hosts[0], fleet.lab.exec
    # A container of the agent's (labelled orchestrify.node) on the host's own engine,
    # from an empty imported image: `docker create` needs no runnable command.
    ex(host, "sh", "-c",
       "tar -cf - -T /dev/null | docker import - orchestrify-test/empty:1 >/dev/null && "
       "docker create --label orchestrify.node=n-lab orchestrify-test/empty:1 /none")  # fmt: skip
    api = FakeControllerAPI(("127.0.0.1", 0), FakeControllerHandler)
    api.node_name, api.calls, api.polls_after_drain, api.drained = host.name, [], 0, False
    threading.Thread(target=api.serve_forever, daemon=True).start()
    try:
        run = run_playbook(
            "decommission.yml", inventory=fleet.inventory,
            args=("--limit", host.name,
                  "-e", f"orchestrify_controller_url=http://127.0.0.1:{api.server_address[1]}",
                  "-e", "orchestrify_token=lab-api-token",
                  "-e", '{"decommission_poll_delay": 1}'),
        )  # fmt: skip
    finally:
        api.shutdown()
        api.server_close()
    assert run.rc == 0, run.output[-5000:]
    paths = [(method, path) for method, path, _ in api.calls]
    assert paths[:2] == [("GET", "/v1/nodes"), ("POST", "/v1/nodes/n-lab/drain")]
    assert paths.count(("GET", "/v1/replicas")) == 3
    # Last, once the agent is stopped: the node leaves the store (and Prometheus' targets).
    assert paths[-1] == ("DELETE", "/v1/nodes/n-lab?force=true")
    assert {auth for _, _, auth in api.calls} == {"Bearer lab-api-token"}
    assert ex(host, "systemctl", "is-active", "orchestrify-agent", check=False) == "inactive"
    assert ex(host, "systemctl", "is-enabled", "orchestrify-agent", check=False) == "disabled"
    assert ex(host, "docker", "ps", "-aq", "--filter", "label=orchestrify.node") == ""
