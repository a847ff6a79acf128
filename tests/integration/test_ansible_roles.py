"""The roles, proven the Molecule way: apply the real playbooks over SSH to a fresh lab
host (a systemd Debian container, see lab.py), check what they set up from inside and
outside the host, then apply them again and require ``changed=0``.

One lab host serves the whole module: it plays worker, controller and edge at once, as
the single-host mode does. The roles render the project's real templates (the ones the
controller renders too) and start the real programs: the controller's unit answers
/healthz, the edge runs Nginx on port 80 and registers with that controller, and the
agent registers as a node. A fleet of several workers is test_fleet_provisioning.py.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require, require_binary
from tests.integration import lab
from tests.integration.provisioning import PlaybookRun, build_wheelhouse
from tests.integration.provisioning import run_playbook as run_ansible_playbook

pytestmark = pytest.mark.integration

# The controller the roles set up on the lab host itself (the agent and the edge there
# reach it over loopback).
CONTROLLER_URL = "http://127.0.0.1:18080"
API_TOKEN = "lab-api-token"


@dataclass(frozen=True)
class LabEnv:
    lab: lab.Lab
    host: lab.LabHost
    inventory: Path
    extra_vars: Path


def run_playbook(playbook: str, env: LabEnv, *args: str) -> PlaybookRun:
    return run_ansible_playbook(
        playbook, inventory=env.inventory, extra_vars=env.extra_vars, args=args
    )


@pytest.fixture(scope="module")
def lab_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabEnv]:
    require_binary("docker")
    require_binary("ssh")
    require_binary("ansible-playbook")
    require(lab.docker_available(), "a running Docker engine (see shared/ENVIRONMENT.md)")
    require(
        shutil.which("debootstrap") is not None or lab.image_label(lab.HOST_IMAGE, "x") is not None,
        "debootstrap (apt-get install debootstrap) to build the lab image",
    )
    tmp = tmp_path_factory.mktemp("ansible-lab")
    started = time.monotonic()
    lab.ensure_images()
    print(f"lab images ready in {time.monotonic() - started:.1f}s")
    started = time.monotonic()
    wheelhouse = build_wheelhouse(tmp / "wheelhouse")
    print(f"wheelhouse ready in {time.monotonic() - started:.1f}s")

    the_lab = lab.Lab(key=lab.generate_ssh_key(tmp / "ssh"))
    try:
        started = time.monotonic()
        (host,) = the_lab.start(1)
        print(f"lab host up (sshd answering) in {time.monotonic() - started:.1f}s")
        inventory = the_lab.write_inventory(
            tmp / "hosts.yml", groups={"workers": [host], "controller": [host], "edge": [host]}
        )
        # The controller's jobs run against the lab host itself, over a local connection.
        jobs_inventory = tmp / "jobs-inventory.ini"
        jobs_inventory.write_text("localhost ansible_connection=local\n")
        extra_vars = tmp / "vars.json"
        extra_vars.write_text(
            json.dumps(
                {
                    "orchestrify_agent_controller_url": CONTROLLER_URL,
                    "orchestrify_agent_join_token": "lab-join-token",
                    "orchestrify_agent_wheelhouse_src": str(wheelhouse),
                    "orchestrify_controller_token": API_TOKEN,
                    "orchestrify_controller_join_token": "lab-join-token",
                    "orchestrify_controller_wheelhouse_src": str(wheelhouse),
                    "orchestrify_controller_inventory_src": str(jobs_inventory),
                    "orchestrify_controller_history_retention_days": 30,
                    # packed outside the work tree (the default is the repository's build/)
                    "orchestrify_controller_ansible_archive": str(tmp / "ansible.tar"),
                    "orchestrify_edge_controller_url": CONTROLLER_URL,
                    "orchestrify_edge_token": API_TOKEN,
                    "orchestrify_edge_wheelhouse_src": str(wheelhouse),
                    "prometheus_controller_url": CONTROLLER_URL,
                    "prometheus_token": API_TOKEN,
                    "alertmanager_controller_url": CONTROLLER_URL,
                    "alertmanager_token": API_TOKEN,
                    "docker_engine_insecure_registries": ["172.17.0.1:5000"],
                }
            )
        )
        yield LabEnv(lab=the_lab, host=host, inventory=inventory, extra_vars=extra_vars)
    finally:
        the_lab.teardown()


def http_get(url: str) -> tuple[int, str]:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return response.status, response.read().decode(errors="replace")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_for_api(host: lab.LabHost, path: str, ok: Callable[[Any], bool]) -> bool:
    """Poll the lab host's controller until ``ok(answer)``; False after 90 s."""
    request = urllib.request.Request(
        f"http://{host.address}:18080{path}", headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if ok(json.loads(response.read())):
                    return True
        except OSError:
            pass
        time.sleep(1)
    return False


def unit_starts(env: LabEnv, unit: str) -> int:
    """How often systemd has started ``unit`` on the lab host (from its journal)."""
    journal = env.lab.exec(
        env.host, "journalctl", "--no-pager", "-o", "cat", "-u", unit, check=False
    )
    return sum(line.startswith(f"Started {unit}") for line in journal.splitlines())


def ps_args(env: LabEnv) -> str:
    """Every process's command line on the lab host, as any local user sees them."""
    return env.lab.exec(env.host, "ps", "-eo", "args")


def api_call(host: lab.LabHost, method: str, path: str, body: object = None) -> Any:
    """One call to the lab host's controller API with the admin token."""
    request = urllib.request.Request(
        f"http://{host.address}:18080{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_docker_engine_and_node_exporter(lab_env: LabEnv) -> None:
    """The brief's core case: workers.yml without the agent, then again with no change."""
    first = run_playbook("workers.yml", lab_env, "--skip-tags", "orchestrify_agent")
    assert first.rc == 0, first.output[-5000:]
    assert first.recap(lab_env.host.name)["changed"] > 0

    host = lab_env.host
    info = json.loads(lab_env.lab.exec(host, "docker", "info", "--format", "{{json .}}"))
    assert info["ServerVersion"]
    assert info["LoggingDriver"] == "json-file"
    daemon = json.loads(lab_env.lab.exec(host, "cat", "/etc/docker/daemon.json"))
    assert daemon["log-opts"] == {"max-size": "10m", "max-file": "3"}
    assert daemon["insecure-registries"] == ["172.17.0.1:5000"]
    assert lab_env.lab.exec(host, "systemctl", "is-enabled", "docker") == "enabled"
    status, body = http_get(f"http://{host.address}:9100/metrics")
    assert status == 200 and "node_cpu_seconds_total" in body

    second = run_playbook("workers.yml", lab_env, "--skip-tags", "orchestrify_agent")
    assert second.rc == 0, second.output[-5000:]
    assert second.recap(host.name)["changed"] == 0, second.output[-5000:]


def test_agent_role_installs_offline(lab_env: LabEnv) -> None:
    """The agent's part of workers.yml, from the wheelhouse; then no change."""
    first = run_playbook("workers.yml", lab_env, "--tags", "orchestrify_agent")
    assert first.rc == 0, first.output[-5000:]

    host, ex = lab_env.host, lab_env.lab.exec
    # the package and its dependencies import in the venv (no PyPI on the host needed)
    ex(host, "/opt/orchestrify/venv/bin/python", "-c", "import orchestrify, fastapi, docker")
    assert ex(host, "stat", "-c", "%a %U", "/etc/orchestrify/agent.env") == "600 root"
    env_file = ex(host, "cat", "/etc/orchestrify/agent.env")
    assert f"ORCHESTRIFY_URL={CONTROLLER_URL}" in env_file
    assert "ORCHESTRIFY_JOIN_TOKEN=lab-join-token" in env_file
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
    assert "lab-join-token" not in ps_args(lab_env)
    assert "orchestrify agent" in ps_args(lab_env)  # it runs, as root (the Docker socket)
    assert ex(host, "systemctl", "show", "-p", "User", "--value", "orchestrify-agent") == ""
    assert "lab-join-token" not in ex(host, "cat", "/etc/systemd/system/orchestrify-agent.service")
    assert ex(host, "systemctl", "is-enabled", "orchestrify-agent") == "enabled"
    # the first install starts the agent once, not started by a task and then restarted
    # by the handler
    assert unit_starts(lab_env, "orchestrify-agent") == 1

    second = run_playbook("workers.yml", lab_env, "--tags", "orchestrify_agent")
    assert second.rc == 0, second.output[-5000:]
    assert second.recap(host.name)["changed"] == 0, second.output[-5000:]
    assert unit_starts(lab_env, "orchestrify-agent") == 1

    # a changed unit (an extra argument, set to its default value) restarts it once
    third = run_playbook(
        "workers.yml", lab_env, "--tags", "orchestrify_agent",
        "-e", '{"orchestrify_agent_extra_args": ["--unhealthy-threshold", "3"]}',
    )  # fmt: skip
    assert third.rc == 0, third.output[-5000:]
    assert unit_starts(lab_env, "orchestrify-agent") == 2
    assert ex(host, "systemctl", "is-active", "orchestrify-agent") == "active"


def test_control_playbook(lab_env: LabEnv) -> None:
    """controller, Alertmanager, Prometheus and the edge; Prometheus and Alertmanager answer."""
    # node_exporter is proven by the workers' test on this very host
    first = run_playbook("control.yml", lab_env, "--skip-tags", "node_exporter")
    assert first.rc == 0, first.output[-5000:]

    host, ex = lab_env.host, lab_env.lab.exec
    status, body = http_get(f"http://{host.address}:9090/api/v1/status/config")
    assert status == 200 and "/etc/prometheus/orchestrify-rules.yml" in body
    status, body = http_get(f"http://{host.address}:9090/api/v1/rules")
    assert "ServiceLatencyHigh" in body
    status, body = http_get(f"http://{host.address}:9093/api/v2/status")
    assert status == 200 and "http://127.0.0.1:18080/v1/alerts" in body
    for unit in ("orchestrify-controller", "orchestrify-edge"):
        assert ex(host, "systemctl", "is-enabled", unit) == "enabled"
    controller_start = ex(host, "systemctl", "show", "-p", "ExecStart", "orchestrify-controller")
    assert (
        "controller --host 0.0.0.0 --port 18080 --data-dir /var/lib/orchestrify" in controller_start
    )
    assert "--history-retention-days 30 " in controller_start
    assert (
        "--playbook-dir /opt/orchestrify/ansible/playbooks"
        " --inventory /etc/orchestrify/inventory/jobs-inventory.ini" in controller_start
    )
    controller_env = ex(host, "systemctl", "show", "-p", "Environment", "orchestrify-controller")
    assert "PATH=/opt/orchestrify/venv/bin:" in controller_env
    assert "ANSIBLE_CONFIG=/opt/orchestrify/ansible/ansible.cfg" in controller_env
    for shipped in ("ansible.cfg", "playbooks/ping.yml", "roles/orchestrify_agent/tasks/main.yml",
                    "templates/prometheus/prometheus.yml.j2"):  # fmt: skip
        ex(host, "test", "-f", f"/opt/orchestrify/ansible/{shipped}")
    # root's, readable by the controller's user (its group) and nobody else
    inventory_mode = ex(
        host, "stat", "-c", "%a %U %G", "/etc/orchestrify/inventory/jobs-inventory.ini"
    )
    assert inventory_mode == "640 root orchestrify"
    edge_start = ex(host, "systemctl", "show", "-p", "ExecStart", "orchestrify-edge")
    assert "--nginx-conf-dir /etc/orchestrify/nginx --listen 80" in edge_start
    edge_metrics_url = f"http://{host.address}:18082/metrics"
    assert f"--metrics-host 0.0.0.0 --metrics-url {edge_metrics_url}" in edge_start
    assert ex(host, "systemctl", "is-enabled", "nginx", check=False) == "disabled"
    # the unprivileged edge cannot `systemctl start` its Nginx: a path unit does
    assert "--nginx-start-command true" in edge_start
    assert ex(host, "systemctl", "is-enabled", "orchestrify-nginx") == "enabled"
    assert ex(host, "systemctl", "is-active", "orchestrify-nginx.path") == "active"

    # The real programs run: the controller answers, the edge's Nginx serves port 80 and
    # the edge registered with the controller, and the agent installed by the previous
    # test (same host) found its controller and is a ready node.
    status, body = http_get(f"http://{host.address}:18080/healthz")
    assert status == 200, body
    status, body = http_get(f"http://{host.address}:80/__orchestrify/health")
    assert status == 200, body
    assert wait_for_api(host, "/v1/edges", lambda edges: len(edges) == 1), "edge not registered"
    # Prometheus on another host can scrape the edge at the URL it told the controller
    (edge,) = api_call(host, "GET", "/v1/edges")
    assert edge["metrics_url"] == edge_metrics_url, edge
    status, body = http_get(edge_metrics_url)
    assert status == 200 and "orchestrify_edge" in body, body[:500]
    assert wait_for_api(
        host,
        "/v1/nodes",
        lambda nodes: [(n["name"], n["state"]) for n in nodes] == [(host.name, "ready")],
    ), "the agent did not register"

    # A job runs on the role-provisioned controller: its shipped playbooks, its inventory,
    # ansible-playbook from the venv.
    job = api_call(host, "POST", "/v1/jobs", {"playbook": "ping.yml", "reason": "roles test"})
    deadline = time.monotonic() + 120
    while job["status"] in ("pending", "running") and time.monotonic() < deadline:
        time.sleep(1)
        job = api_call(host, "GET", f"/v1/jobs/{job['id']}")
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
    args = ps_args(lab_env)
    assert API_TOKEN not in args and "lab-join-token" not in args, args
    for path, wanted in (
        ("/var/lib/orchestrify", "700 orchestrify"),
        ("/var/lib/orchestrify/.ssh/id_ed25519", "600 orchestrify"),
        ("/etc/orchestrify/nginx", "700 orchestrify-edge"),
        ("/etc/orchestrify/controller.env", "600 root"),
        ("/etc/orchestrify/edge.env", "600 root"),
    ):
        assert ex(host, "stat", "-c", "%a %U", path) == wanted, path
    assert ex(host, "getent", "passwd", "orchestrify").split(":")[5] == "/var/lib/orchestrify"

    # the first install started each once (not started, then restarted by the handler)
    for unit in ("orchestrify-controller", "orchestrify-edge"):
        assert unit_starts(lab_env, unit) == 1, unit

    second = run_playbook("control.yml", lab_env, "--skip-tags", "node_exporter")
    assert second.rc == 0, second.output[-5000:]
    assert second.recap(host.name)["changed"] == 0, second.output[-5000:]
    for unit in ("orchestrify-controller", "orchestrify-edge"):
        assert unit_starts(lab_env, unit) == 1, unit

    # Nginx runs under its own unit (the edge started it there), not in the edge's
    # cgroup: restarting the edge leaves the same Nginx serving, and the new edge adopts it.
    def nginx_main_pid() -> str:
        return ex(host, "systemctl", "show", "-p", "MainPID", "--value", "orchestrify-nginx")

    assert ex(host, "systemctl", "is-active", "orchestrify-nginx") == "active"
    master = nginx_main_pid()
    assert master == ex(host, "cat", "/etc/orchestrify/nginx/nginx.pid"), master
    ex(host, "systemctl", "restart", "orchestrify-edge")
    status, body = http_get(f"http://{host.address}:80/__orchestrify/health")
    assert status == 200, body
    assert wait_for_api(host, "/v1/edges", lambda edges: edges[0]["applied_as_of"] is not None)
    assert nginx_main_pid() == master
    assert ex(host, "systemctl", "is-active", "orchestrify-nginx") == "active"


def test_invalid_rules_never_reach_prometheus(lab_env: LabEnv, tmp_path: Path) -> None:
    """promtool rejects a broken render, and the file in place stays as it was."""
    host = lab_env.host
    before = lab_env.lab.exec(host, "cat", "/etc/prometheus/orchestrify-rules.yml", check=False)
    broken = tmp_path / "rules.yml.j2"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: rate(\n"
    )
    run = run_playbook(
        "control.yml", lab_env, "--tags", "prometheus", "-e", f"prometheus_rules_template={broken}"
    )
    assert run.rc != 0
    assert "failed to validate" in run.output or "promtool" in run.output, run.output[-3000:]
    after = lab_env.lab.exec(host, "cat", "/etc/prometheus/orchestrify-rules.yml", check=False)
    assert after == before


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


def test_decommission_drains_then_stops_the_agent(lab_env: LabEnv, tmp_path: Path) -> None:
    host, ex = lab_env.host, lab_env.lab.exec
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
            "decommission.yml", lab_env,
            "-e", f"orchestrify_controller_url=http://127.0.0.1:{api.server_address[1]}",
            "-e", "orchestrify_token=lab-api-token",
            "-e", '{"decommission_poll_delay": 1}',
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
