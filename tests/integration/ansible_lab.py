"""The lab hosts the Ansible tests share: provisioned once per session, asserted on by
test_ansible_roles.py, test_ansible_tls.py, test_ansible_postgresql.py and
test_fleet_provisioning.py.

Provisioning is what costs (apt, dpkg, systemd, the wheelhouse over SSH), so each kind of
lab is set up once and every test reads what it needs from it, instead of each module
starting and provisioning hosts of its own:

- :func:`control_plane`: ``playbooks/site.yml`` with TLS on three hosts: a control host
  (controller, Prometheus, Alertmanager, edge, node_exporter), a worker (Docker engine,
  node_exporter, agent) and a database host (role postgresql, the controller's store).
  The first run and its PLAY RECAP are kept for the tests; test_ansible_tls.py runs the
  second one.
- :func:`worker_fleet`: two workers provisioned by ``playbooks/workers.yml`` twice (the
  second run must change nothing) for a real controller on this machine.

The two labs share no host, no port and no file, and provisioning them is mostly waiting
on SSH, apt and dpkg, so when a session needs both, the control plane starts the worker
fleet's provisioning in a background thread before running its own site.yml (about 2 of
the 6 minutes both take one after the other); the first test that asks for
``worker_fleet`` waits for it. Nothing either lab's tests time runs during that overlap.

The lab images, the SSH key and the wheelhouse are made once for both. The fixtures are
session-scoped and made available to every integration test through
tests/integration/conftest.py; a test that changes a lab (a playbook run with other
variables, a restarted unit) leaves it as the later tests expect, or runs last in its
module.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.conftest import require, require_binary
from tests.integration import lab
from tests.integration.provisioning import REPO, PlaybookRun, build_wheelhouse, run_playbook
from tests.integration.provisioning import venv_path as venv_path

T = TypeVar("T")

# The control plane's tokens, port and database password (the lab's own, thrown away).
API_TOKEN = "tls-lab-api-token"
JOIN_TOKEN = "tls-lab-join-token"
DATABASE_PASSWORD = "lab-db-pass'w/@rd"
PORT = 18080


def wait_for(what: str, probe: Callable[[], T | None], *, timeout: float) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    import http.client

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (OSError, ValueError, http.client.HTTPException) as exc:
            result, last = None, exc
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def unit_starts(the_lab: lab.Lab, host: lab.LabHost, unit: str) -> int:
    """How often systemd has started ``unit`` on the lab host (from its journal)."""
    journal = the_lab.exec(host, "journalctl", "--no-pager", "-o", "cat", "-u", unit, check=False)
    return sum(line.startswith(f"Started {unit}") for line in journal.splitlines())


@dataclass(frozen=True)
class Workspace:
    """What every lab of the session shares: a temp dir, the SSH key, the wheelhouse."""

    tmp: Path
    key: lab.SSHKey
    wheelhouse: Path


@pytest.fixture(scope="session")
def lab_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
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
    return Workspace(tmp=tmp, key=lab.generate_ssh_key(tmp / "ssh"), wheelhouse=wheelhouse)


# ------------------------------------------------------------------ the control plane


@dataclass(frozen=True)
class ControlPlane:
    lab: lab.Lab
    control: lab.LabHost
    worker: lab.LabHost
    db: lab.LabHost
    inventory: Path
    extra_vars: Path
    ca_file: Path  # this machine's copy of the CA certificate the roles made
    first: PlaybookRun  # site.yml's first run
    controller_starts: int  # how often each unit had started after it
    edge_starts: int

    @property
    def url(self) -> str:
        return f"https://{self.control.address}:{PORT}"

    def context(self) -> ssl.SSLContext:
        """Trusts the fleet's CA and nothing else (not the system's store)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10, context=self.context()) as response:
            return json.loads(response.read() or b"null")

    def get(self, url: str) -> tuple[int, str]:
        """GET over https (the fleet's CA) or http, retried while it cannot connect."""
        deadline = time.monotonic() + 20
        context = self.context() if url.startswith("https://") else None
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5, context=context) as response:
                    return response.status, response.read().decode(errors="replace")
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def site(self, *args: str) -> PlaybookRun:
        return run_playbook(
            "site.yml",
            inventory=self.inventory,
            extra_vars=self.extra_vars,
            args=("--skip-tags", "node_exporter", *args),
        )

    def psql(self, sql: str) -> str:
        """One query on the database host as the postgres superuser (its Unix socket)."""
        return self.lab.exec(
            self.db, "runuser", "-u", "postgres", "--", "psql", "-d", "orchestrify",
            "-XAtc", sql,
        )  # fmt: skip


@pytest.fixture(scope="session")
def control_plane(
    lab_workspace: Workspace, request: pytest.FixtureRequest
) -> Iterator[ControlPlane]:
    """site.yml with TLS and a PostgreSQL store: control host, worker, database host."""
    if any("worker_fleet" in item.fixturenames for item in request.session.items):
        # Provisioned beside this lab, in a background thread (see the module's docstring).
        request.getfixturevalue("worker_fleet_provisioning")
    tmp = lab_workspace.tmp / "control-plane"
    tmp.mkdir()
    the_lab = lab.Lab(key=lab_workspace.key)
    try:
        control, worker, db = the_lab.start(3)
        inventory = the_lab.write_inventory(
            tmp / "hosts.yml",
            groups={
                "controller": [control],
                "edge": [control],
                "workers": [worker],
                "postgresql": [db],
            },
        )
        # The controller's jobs run against the control host itself, over a local
        # connection.
        jobs_inventory = tmp / "jobs-inventory.ini"
        jobs_inventory.write_text("localhost ansible_connection=local\n")
        wheelhouse = str(lab_workspace.wheelhouse)
        url = f"https://{control.address}:{PORT}"
        extra_vars = tmp / "vars.json"
        extra_vars.write_text(
            json.dumps(
                {
                    "orchestrify_tls": True,
                    "orchestrify_controller_url": url,
                    "orchestrify_controller_token": API_TOKEN,
                    "orchestrify_controller_join_token": JOIN_TOKEN,
                    "orchestrify_controller_wheelhouse_src": wheelhouse,
                    "orchestrify_controller_inventory_src": str(jobs_inventory),
                    "orchestrify_controller_history_retention_days": 30,
                    # packed outside the work tree (the default is the repository's build/)
                    "orchestrify_controller_ansible_archive": str(tmp / "ansible.tar"),
                    "orchestrify_agent_controller_url": url,
                    "orchestrify_agent_join_token": JOIN_TOKEN,
                    "orchestrify_agent_wheelhouse_src": wheelhouse,
                    "orchestrify_edge_controller_url": url,
                    "orchestrify_edge_token": API_TOKEN,
                    "orchestrify_edge_wheelhouse_src": wheelhouse,
                    "orchestrify_edge_telemetry_max_mb": 1,  # the timer's test writes 3
                    "prometheus_controller_url": url,
                    "prometheus_token": API_TOKEN,
                    "prometheus_scrape_interval": "2s",
                    "prometheus_evaluation_interval": "2s",
                    "alertmanager_controller_url": url,
                    "alertmanager_token": API_TOKEN,
                    "alertmanager_group_wait": "1s",
                    # Only here (Vault in a real inventory): the database host gets it
                    # for its user, the controller for its URL.
                    "postgresql_orchestrify_password": DATABASE_PASSWORD,
                }
            )
        )
        # node_exporter too (its packages are preloaded in the lab image): the roles
        # test checks that the control host's Prometheus scrapes the worker's.
        first = run_playbook("site.yml", inventory=inventory, extra_vars=extra_vars)
        assert first.rc == 0, first.output[-6000:]
        ca_file = tmp / "ca.crt"
        ca_file.write_text(the_lab.exec(control, "cat", "/etc/orchestrify/ca/ca.crt") + "\n")
        yield ControlPlane(
            lab=the_lab, control=control, worker=worker, db=db, inventory=inventory,
            extra_vars=extra_vars, ca_file=ca_file, first=first,
            controller_starts=unit_starts(the_lab, control, "orchestrify-controller"),
            edge_starts=unit_starts(the_lab, control, "orchestrify-edge"),
        )  # fmt: skip
    finally:
        the_lab.teardown()


# ------------------------------------------------------------------ the worker fleet

# What the workers' engines are told they may pull from over plain HTTP.
INSECURE_REGISTRY = "172.17.0.1:5000"


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


@dataclass(frozen=True)
class Controller:
    """A real controller run on this machine (on docker0's address) for the workers."""

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
class WorkerFleet:
    lab: lab.Lab
    hosts: list[lab.LabHost]
    inventory: Path
    controller: Controller
    first: PlaybookRun  # workers.yml on the fresh hosts
    second: PlaybookRun  # the same again: must change nothing
    agent_starts_after_first: dict[str, int]
    agent_starts_after_second: dict[str, int]

    def workers(self, *args: str) -> PlaybookRun:
        return run_playbook("workers.yml", inventory=self.inventory, args=args)


@pytest.fixture(scope="session")
def worker_fleet_provisioning(lab_workspace: Workspace) -> Iterator[Future[WorkerFleet]]:
    """The worker fleet's provisioning, started in a background thread.

    At the session's end it waits for the provisioning to finish (or fail) and then
    removes the lab, whatever became of it.
    """
    stack = ExitStack()
    with ThreadPoolExecutor(1, thread_name_prefix="worker-fleet") as executor:
        future = executor.submit(stack.enter_context, provision_worker_fleet(lab_workspace))
        try:
            yield future
        finally:
            future.exception()  # waits; a failed set-up has already cleaned up after itself
            stack.close()


@pytest.fixture(scope="session")
def worker_fleet(worker_fleet_provisioning: Future[WorkerFleet]) -> WorkerFleet:
    """Two workers provisioned twice by workers.yml for a controller on this machine."""
    return worker_fleet_provisioning.result()


@contextmanager
def provision_worker_fleet(workspace: Workspace) -> Iterator[WorkerFleet]:
    """Start and provision the worker fleet; remove it on leaving."""
    tmp = workspace.tmp / "worker-fleet"
    tmp.mkdir()
    # Its own copy of the wheelhouse: the roles pack the directory into a tar beside it
    # on every run, and the control plane's playbook may be packing the shared one at the
    # same moment.
    wheelhouse = shutil.copytree(workspace.wheelhouse, tmp / "wheelhouse")
    the_lab = lab.Lab(key=workspace.key)
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
        # No orchestrify_agent_advertise_address: each agent detects its address (its
        # source address towards the controller), which must be the lab host's own.
        data["all"]["children"]["workers"]["vars"] = {
            "orchestrify_agent_controller_url": url,
            "orchestrify_agent_join_token": join_token,
            "orchestrify_agent_wheelhouse_src": str(wheelhouse),
            "docker_engine_insecure_registries": [INSECURE_REGISTRY],
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

        def starts() -> dict[str, int]:
            return {h.name: unit_starts(the_lab, h, "orchestrify-agent") for h in hosts}

        first = run_playbook("workers.yml", inventory=inventory)
        assert first.rc == 0, first.output[-5000:]
        after_first = starts()
        second = run_playbook("workers.yml", inventory=inventory)
        assert second.rc == 0, second.output[-5000:]
        yield WorkerFleet(
            lab=the_lab, hosts=hosts, inventory=inventory, controller=controller,
            first=first, second=second,
            agent_starts_after_first=after_first, agent_starts_after_second=starts(),
        )  # fmt: skip
    finally:
        if controller is not None:
            controller.process.terminate()
            try:
                controller.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                controller.process.kill()
                controller.process.wait()
        the_lab.teardown()
