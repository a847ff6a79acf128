"""The roles, proven the Molecule way: apply the real playbooks over SSH to a fresh lab
host (a systemd Debian container, see lab.py), check what they set up from inside and
outside the host, then apply them again and require ``changed=0``.

One lab host serves the whole module: it plays worker, controller and edge at once, as
the single-host mode does. The orchestrify programs themselves (agent, controller, edge)
are not exercised here, only their installation: the package is installed offline from
a wheelhouse and their units are written and enabled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import require, require_binary
from tests.integration import lab

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STUB_TEMPLATES = Path(__file__).parent / "stub_templates"
# Dependencies' wheels change only with pyproject.toml: cache them across sessions.
WHEEL_CACHE = Path(os.environ.get("ORCHESTRIFY_TEST_WHEEL_CACHE", "/tmp/orchestrify-test-wheels"))
CONTROLLER_URL = "http://127.0.0.1:18080"


@dataclass(frozen=True)
class LabEnv:
    lab: lab.Lab
    host: lab.LabHost
    inventory: Path
    extra_vars: Path


@dataclass(frozen=True)
class PlaybookRun:
    rc: int
    output: str
    seconds: float

    def recap(self, host: str) -> dict[str, int]:
        match = re.search(rf"^{re.escape(host)}\s*:\s*(.*)$", self.output, re.M)
        assert match, f"no PLAY RECAP line for {host}:\n{self.output[-3000:]}"
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def run_playbook(playbook: str, env: LabEnv, *args: str) -> PlaybookRun:
    binary = require_binary("ansible-playbook")
    bindir = str(Path(sys.executable).parent)
    run_env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    started = time.monotonic()
    proc = subprocess.run(
        [binary, "-i", str(env.inventory), "-e", f"@{env.extra_vars}",
         str(REPO / "playbooks" / playbook), *args],
        cwd=REPO, env=run_env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    run = PlaybookRun(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)
    print(f"{playbook} {' '.join(args)}: rc={run.rc} in {run.seconds:.1f}s")
    return run


def build_wheelhouse(dest: Path) -> Path:
    """orchestrify's wheel, built fresh, plus its dependencies' wheels from the cache."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "wheel"]
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    deps = WHEEL_CACHE / digest
    if not deps.is_dir():
        partial = deps.with_name(deps.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run([*pip, "--wheel-dir", str(partial), str(REPO)], check=True, timeout=600)
        for own in partial.glob("orchestrify-*.whl"):
            own.unlink()
        partial.rename(deps)
    dest.mkdir(parents=True)
    for wheel in deps.glob("*.whl"):
        shutil.copy2(wheel, dest)
    # Build from a copy so no build/ or egg-info lands in the work tree.
    src = dest.parent / "src"
    shutil.copytree(REPO / "orchestrify", src / "orchestrify")
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    subprocess.run(
        [*pip, "--no-deps", "--wheel-dir", str(dest), str(src)],
        check=True, timeout=300, env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"},
    )  # fmt: skip
    return dest


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
        extra_vars = tmp / "vars.json"
        extra_vars.write_text(
            json.dumps(
                {
                    "orchestrify_agent_controller_url": CONTROLLER_URL,
                    "orchestrify_agent_join_token": "lab-join-token",
                    "orchestrify_agent_wheelhouse_src": str(wheelhouse),
                    "orchestrify_controller_token": "lab-api-token",
                    "orchestrify_controller_join_token": "lab-join-token",
                    "orchestrify_controller_wheelhouse_src": str(wheelhouse),
                    "orchestrify_edge_controller_url": CONTROLLER_URL,
                    "orchestrify_edge_token": "lab-api-token",
                    "orchestrify_edge_wheelhouse_src": str(wheelhouse),
                    "prometheus_controller_url": CONTROLLER_URL,
                    "prometheus_token": "lab-api-token",
                    "prometheus_config_template": str(
                        STUB_TEMPLATES / "prometheus/prometheus.yml.j2"
                    ),
                    "prometheus_rules_template": str(STUB_TEMPLATES / "prometheus/rules.yml.j2"),
                    "alertmanager_controller_url": CONTROLLER_URL,
                    "alertmanager_token": "lab-api-token",
                    "alertmanager_config_template": str(
                        STUB_TEMPLATES / "alertmanager/alertmanager.yml.j2"
                    ),
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
        "--join-token ${ORCHESTRIFY_JOIN_TOKEN}",
        f"--name {host.name}",
        f"--advertise-address {host.address}",
        "--state-dir /var/lib/orchestrify",
    ):
        assert flag in exec_start
    assert "lab-join-token" not in ex(host, "cat", "/etc/systemd/system/orchestrify-agent.service")
    assert ex(host, "systemctl", "is-enabled", "orchestrify-agent") == "enabled"

    second = run_playbook("workers.yml", lab_env, "--tags", "orchestrify_agent")
    assert second.rc == 0, second.output[-5000:]
    assert second.recap(host.name)["changed"] == 0, second.output[-5000:]


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
    edge_start = ex(host, "systemctl", "show", "-p", "ExecStart", "orchestrify-edge")
    assert "--nginx-conf-dir /etc/orchestrify/nginx --listen 80" in edge_start
    assert ex(host, "systemctl", "is-enabled", "nginx", check=False) == "disabled"

    second = run_playbook("control.yml", lab_env, "--skip-tags", "node_exporter")
    assert second.rc == 0, second.output[-5000:]
    assert second.recap(host.name)["changed"] == 0, second.output[-5000:]


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
    call, and a replica list that empties two polls after the drain."""

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
    assert {auth for _, _, auth in api.calls} == {"Bearer lab-api-token"}
    assert ex(host, "systemctl", "is-active", "orchestrify-agent", check=False) == "inactive"
    assert ex(host, "systemctl", "is-enabled", "orchestrify-agent", check=False) == "disabled"
    assert ex(host, "docker", "ps", "-aq", "--filter", "label=orchestrify.node") == ""
