"""The roles, proven the Molecule way: the real playbooks applied over SSH to fresh lab
hosts (systemd Debian containers, see lab.py), checked from inside and outside the
hosts, then applied again with ``changed=0``.

The hosts are the session's shared labs (tests/integration/ansible_lab.py), provisioned
once for every Ansible test:
- the workers of ``worker_fleet`` (workers.yml, twice): the Docker engine, node_exporter
  and the agent, installed offline from the wheelhouse;
- the control host of ``control_plane`` (site.yml with TLS and a PostgreSQL store): the
  controller, Prometheus, Alertmanager and the edge. The roles render the project's real
  templates (the ones the controller renders too) and start the real programs: the
  controller's unit answers /healthz, the edge runs Nginx on port 80 and registers with
  that controller, the worker's agent registers as a node, and a job runs.

What changes a lab for good (a changed agent unit, decommission.yml) runs at the end of
test_fleet_provisioning.py, after the tests that need the lab as provisioned.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration import lab
from tests.integration.ansible_lab import (
    API_TOKEN,
    INSECURE_REGISTRY,
    JOIN_TOKEN,
    ControlPlane,
    WorkerFleet,
)
from tests.integration.provisioning import run_playbook

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]


def ps_args(the_lab: lab.Lab, host: lab.LabHost) -> str:
    """Every process's command line on the lab host, as any local user sees them."""
    return the_lab.exec(host, "ps", "-eo", "args")


def wait_for_api(plane: ControlPlane, path: str, ok: Callable[[Any], bool]) -> bool:
    """Poll the control host's controller until ``ok(answer)``; False after 90 s."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if ok(plane.call("GET", path)):
                return True
        except OSError:
            pass
        time.sleep(1)
    return False


def test_docker_engine_and_node_exporter(worker_fleet: WorkerFleet) -> None:
    """The workers' engine and node_exporter from workers.yml; the second run changes nothing."""
    for host in worker_fleet.hosts:
        assert worker_fleet.first.recap(host.name)["changed"] > 0
        ex = worker_fleet.lab.exec
        info = json.loads(ex(host, "docker", "info", "--format", "{{json .}}"))
        assert info["ServerVersion"]
        assert info["LoggingDriver"] == "json-file"
        daemon = json.loads(ex(host, "cat", "/etc/docker/daemon.json"))
        assert daemon["log-opts"] == {"max-size": "10m", "max-file": "3"}
        assert daemon["insecure-registries"] == [INSECURE_REGISTRY]
        assert ex(host, "systemctl", "is-enabled", "docker") == "enabled"
        with urllib.request.urlopen(f"http://{host.address}:9100/metrics", timeout=10) as answer:
            assert answer.status == 200
            assert "node_cpu_seconds_total" in answer.read().decode(errors="replace")
        second = worker_fleet.second
        assert second.recap(host.name)["changed"] == 0, second.output[-5000:]


def test_agent_role_installs_offline(worker_fleet: WorkerFleet) -> None:
    """The agent's part of workers.yml, from the wheelhouse; the second run changes nothing.

    (That a changed unit restarts the agent once is the end of test_fleet_provisioning.py.)
    """
    ex, url = worker_fleet.lab.exec, worker_fleet.controller.url
    join_token = worker_fleet.controller.join_token
    for host in worker_fleet.hosts:
        # the package and its dependencies import in the venv (no PyPI on the host needed)
        ex(host, "/opt/orchestrify/venv/bin/python", "-c", "import orchestrify, fastapi, docker")
        assert ex(host, "stat", "-c", "%a %U", "/etc/orchestrify/agent.env") == "600 root"
        env_file = ex(host, "cat", "/etc/orchestrify/agent.env")
        assert f"ORCHESTRIFY_URL={url}" in env_file
        assert f"ORCHESTRIFY_JOIN_TOKEN={join_token}" in env_file
        exec_start = ex(host, "systemctl", "show", "-p", "ExecStart", "orchestrify-agent")
        for flag in (
            "/opt/orchestrify/venv/bin/orchestrify agent",
            "--controller ${ORCHESTRIFY_URL}",
            f"--name {host.name}",
            "--state-dir /var/lib/orchestrify",
            "--metrics-port 18081",
        ):
            assert flag in exec_start
        assert "--advertise-address" not in exec_start  # detected by the agent unless pinned
        # the join token reaches the agent through its environment, never its command line
        assert "--join-token" not in exec_start
        assert join_token not in ps_args(worker_fleet.lab, host)
        # it runs, as root (the Docker socket)
        assert "orchestrify agent" in ps_args(worker_fleet.lab, host)
        assert ex(host, "systemctl", "show", "-p", "User", "--value", "orchestrify-agent") == ""
        unit = ex(host, "cat", "/etc/systemd/system/orchestrify-agent.service")
        assert join_token not in unit
        assert ex(host, "systemctl", "is-enabled", "orchestrify-agent") == "enabled"
        # the first install starts the agent once, not started by a task and then
        # restarted by the handler; the second run does not restart it
        assert worker_fleet.agent_starts_after_first[host.name] == 1
        assert worker_fleet.second.recap(host.name)["changed"] == 0
        assert worker_fleet.agent_starts_after_second[host.name] == 1


def test_control_playbook(control_plane: ControlPlane) -> None:
    """controller, Alertmanager, Prometheus and the edge; Prometheus and Alertmanager answer."""
    plane = control_plane
    host, ex, url = plane.control, plane.lab.exec, plane.url
    status, body = plane.get(f"http://{host.address}:9090/api/v1/status/config")
    assert status == 200 and "/etc/prometheus/orchestrify-rules.yml" in body
    status, body = plane.get(f"http://{host.address}:9090/api/v1/rules")
    assert "ServiceLatencyHigh" in body and "ControllerLeaderMissing" in body
    status, body = plane.get(f"http://{host.address}:9093/api/v2/status")
    assert status == 200 and f"{url}/v1/alerts" in body
    for unit in ("orchestrify-controller", "orchestrify-edge"):
        assert ex(host, "systemctl", "is-enabled", unit) == "enabled"
    controller_start = ex(host, "systemctl", "show", "-p", "ExecStart", "orchestrify-controller")
    assert (
        "controller --host 0.0.0.0 --port 18080 --data-dir /var/lib/orchestrify" in controller_start
    )
    assert "--history-retention-days 30 " in controller_start
    assert "--playbook-dir /opt/orchestrify/ansible/playbooks " in controller_start
    assert "--inventory /etc/orchestrify/inventory/jobs-inventory.ini" in controller_start
    controller_env = ex(host, "systemctl", "show", "-p", "Environment", "orchestrify-controller")
    assert "PATH=/opt/orchestrify/venv/bin:" in controller_env
    assert "ANSIBLE_CONFIG=/opt/orchestrify/ansible/ansible.cfg" in controller_env
    for shipped in ("ansible.cfg", "playbooks/ping.yml", "roles/orchestrify_agent/tasks/main.yml",
                    "roles/postgresql/tasks/main.yml",
                    "templates/prometheus/prometheus.yml.j2"):  # fmt: skip
        ex(host, "test", "-f", f"/opt/orchestrify/ansible/{shipped}")
    # root's, readable by the controller's user (its group) and nobody else
    inventory_mode = ex(
        host, "stat", "-c", "%a %U %G", "/etc/orchestrify/inventory/jobs-inventory.ini"
    )
    assert inventory_mode == "640 root orchestrify"
    edge_start = ex(host, "systemctl", "show", "-p", "ExecStart", "orchestrify-edge")
    assert "--nginx-conf-dir /etc/orchestrify/nginx --listen 80" in edge_start
    edge_metrics_url = f"https://{host.address}:18082/metrics"
    assert f"--metrics-host 0.0.0.0 --metrics-url {edge_metrics_url}" in edge_start
    assert ex(host, "systemctl", "is-enabled", "nginx", check=False) == "disabled"
    # the unprivileged edge cannot `systemctl start` its Nginx: a path unit does
    assert "--nginx-start-command true" in edge_start
    assert ex(host, "systemctl", "is-enabled", "orchestrify-nginx") == "enabled"
    assert ex(host, "systemctl", "is-active", "orchestrify-nginx.path") == "active"

    # The real programs run: the controller answers, the edge's Nginx serves port 80 and
    # the edge registered with the controller, and the worker's agent found its
    # controller and is a ready node.
    status, body = plane.get(f"{url}/healthz")
    assert status == 200, body
    status, body = plane.get(f"http://{host.address}:80/__orchestrify/health")
    assert status == 200, body
    assert wait_for_api(plane, "/v1/edges", lambda edges: len(edges) == 1), "edge not registered"
    # Prometheus on another host can scrape the edge at the URL it told the controller
    (edge,) = plane.call("GET", "/v1/edges")
    assert edge["metrics_url"] == edge_metrics_url, edge
    status, body = plane.get(edge_metrics_url)
    assert status == 200 and "orchestrify_edge" in body, body[:500]
    assert wait_for_api(
        plane,
        "/v1/nodes",
        lambda nodes: [(n["name"], n["state"]) for n in nodes] == [(plane.worker.name, "ready")],
    ), "the agent did not register"

    # A job runs on the role-provisioned controller: its shipped playbooks, its inventory,
    # ansible-playbook from the venv.
    job = plane.call("POST", "/v1/jobs", {"playbook": "ping.yml", "reason": "roles test"})
    deadline = time.monotonic() + 120
    while job["status"] in ("pending", "running") and time.monotonic() < deadline:
        time.sleep(1)
        job = plane.call("GET", f"/v1/jobs/{job['id']}")
    assert job["status"] == "successful", job

    # Least privilege: the controller, the edge and the edge's Nginx run as the
    # orchestrify system user, which owns their private directories; tokens reach them
    # through root-only env files, never their command lines.
    for unit, user in (
        ("orchestrify-controller", "orchestrify"),
        ("orchestrify-edge", "orchestrify-edge"),
        ("orchestrify-nginx", "orchestrify-edge"),
    ):
        assert ex(host, "systemctl", "show", "-p", "User", "--value", unit) == user, unit
    for unit in ("orchestrify-controller", "orchestrify-edge"):
        assert "--token" not in ex(host, "systemctl", "show", "-p", "ExecStart", unit)
    controller_procs = ex(host, "ps", "-o", "args=", "-u", "orchestrify")
    assert "orchestrify controller" in controller_procs, controller_procs
    edge_procs = ex(host, "ps", "-o", "args=", "-u", "orchestrify-edge")
    assert "orchestrify edge" in edge_procs, edge_procs
    assert "nginx: master process" in edge_procs and "nginx: worker process" in edge_procs
    assert "nginx: master process" not in ex(host, "ps", "-o", "args=", "-u", "root")
    # Nginx shares the edge's user, but cannot read the edge's environment (its token)
    edge_pid = ex(host, "systemctl", "show", "-p", "MainPID", "--value", "orchestrify-edge")
    as_edge_user = (
        "setpriv",
        "--reuid=orchestrify-edge",
        "--regid=orchestrify-edge",
        "--clear-groups",
    )
    peek = ex(host, *as_edge_user, "cat", f"/proc/{edge_pid}/environ", check=False)
    assert API_TOKEN not in peek, "the edge's user reads the edge's token"
    assert "orchestrify" in ex(host, *as_edge_user, "cat", f"/proc/{edge_pid}/cmdline")
    args = ps_args(plane.lab, host)
    assert API_TOKEN not in args and JOIN_TOKEN not in args, args
    for path, wanted in (
        ("/var/lib/orchestrify", "700 orchestrify"),
        ("/var/lib/orchestrify/.ssh/id_ed25519", "600 orchestrify"),
        ("/etc/orchestrify/nginx", "700 orchestrify-edge"),
        ("/etc/orchestrify/controller.env", "600 root"),
        ("/etc/orchestrify/edge.env", "600 root"),
    ):
        assert ex(host, "stat", "-c", "%a %U", path) == wanted, path
    assert ex(host, "getent", "passwd", "orchestrify").split(":")[5] == "/var/lib/orchestrify"

    # the first install started each once (not started, then restarted by the handler);
    # that the second run restarts nothing is test_ansible_tls.py's second run
    assert plane.controller_starts == 1
    assert plane.edge_starts == 1

    # Nginx runs under its own unit (the edge started it there), not in the edge's
    # cgroup: restarting the edge leaves the same Nginx serving, and the new edge adopts it.
    def nginx_main_pid() -> str:
        return ex(host, "systemctl", "show", "-p", "MainPID", "--value", "orchestrify-nginx")

    assert ex(host, "systemctl", "is-active", "orchestrify-nginx") == "active"
    master = nginx_main_pid()
    assert master == ex(host, "cat", "/etc/orchestrify/nginx/nginx.pid"), master
    ex(host, "systemctl", "restart", "orchestrify-edge")
    status, body = plane.get(f"http://{host.address}:80/__orchestrify/health")
    assert status == 200, body
    assert wait_for_api(plane, "/v1/edges", lambda edges: edges[0]["applied_as_of"] is not None)
    assert nginx_main_pid() == master
    assert ex(host, "systemctl", "is-active", "orchestrify-nginx") == "active"

    # While no edge reads the telemetry file, a timer keeps it bounded (1 MiB in this
    # lab): past the bound it is emptied in place, and Nginx serves on.
    assert ex(host, "systemctl", "is-active", "orchestrify-edge-telemetry-cap.timer") == "active"
    telemetry = "/etc/orchestrify/nginx/tmp/telemetry.log"
    ex(host, "systemctl", "stop", "orchestrify-edge")
    try:
        # As Nginx (the edge's user) appends to it; it may not exist yet without traffic.
        ex(host, *as_edge_user, "sh", "-c", f"head -c 3000000 /dev/zero >> {telemetry}")
        ex(host, "systemctl", "start", "orchestrify-edge-telemetry-cap.service")
        assert int(ex(host, "stat", "-c", "%s", telemetry)) < 1_000_000
        assert ex(host, "stat", "-c", "%U", telemetry) == "orchestrify-edge"
        status, body = plane.get(f"http://{host.address}:80/__orchestrify/health")
        assert status == 200, body
        assert nginx_main_pid() == master
    finally:
        ex(host, "systemctl", "start", "orchestrify-edge")


def test_prometheus_scrapes_the_workers_node_exporter(control_plane: ControlPlane) -> None:
    """site.yml's node_exporter on the worker, found through the controller's discovery
    (the node's address, --node-exporter-port 9100) by the role's Prometheus, is up; the
    node alerts are loaded."""
    plane = control_plane
    host, ex, worker = plane.control, plane.lab.exec, plane.worker
    controller_start = ex(host, "systemctl", "show", "-p", "ExecStart", "orchestrify-controller")
    assert "--node-exporter-port 9100" in controller_start
    assert wait_for_api(
        plane,
        "/v1/discovery/prometheus",
        lambda targets: (
            {
                "targets": [f"{worker.address}:9100"],
                "labels": {"job": "orchestrify-node-exporter", "node": worker.name},
            }
            in targets
        ),
    ), "the worker's node_exporter is not in discovery"

    def node_exporter_up() -> bool:
        status, body = plane.get(f"http://{host.address}:9090/api/v1/targets?state=active")
        assert status == 200, body
        targets = json.loads(body)["data"]["activeTargets"]
        return any(
            t["labels"].get("job") == "orchestrify-node-exporter"
            and t["labels"].get("node") == worker.name
            and t["scrapeUrl"] == f"http://{worker.address}:9100/metrics"
            and t["health"] == "up"
            for t in targets
        )

    deadline = time.monotonic() + 90
    while not node_exporter_up():
        assert time.monotonic() < deadline, "Prometheus does not see the node_exporter up"
        time.sleep(1)
    status, body = plane.get(f"http://{host.address}:9090/api/v1/rules")
    assert status == 200 and "NodeDiskFull" in body and "NodeMemoryPressure" in body


def test_invalid_rules_never_reach_prometheus(control_plane: ControlPlane, tmp_path: Path) -> None:
    """promtool rejects a broken render, and the file in place stays as it was."""
    host, ex = control_plane.control, control_plane.lab.exec
    before = ex(host, "cat", "/etc/prometheus/orchestrify-rules.yml", check=False)
    assert "ControllerLeaderMissing" in before
    broken = tmp_path / "rules.yml.j2"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: rate(\n"
    )
    run = run_playbook(
        "control.yml", inventory=control_plane.inventory, extra_vars=control_plane.extra_vars,
        args=("--tags", "prometheus", "-e", f"prometheus_rules_template={broken}"),
    )  # fmt: skip
    assert run.rc != 0
    assert "failed to validate" in run.output or "promtool" in run.output, run.output[-3000:]
    after = ex(host, "cat", "/etc/prometheus/orchestrify-rules.yml", check=False)
    assert after == before
