"""A control plane of several controllers in the roles (issue 11), evaluated by the real
ansible-playbook on this machine only (connection local, no lab host): with three hosts
in group `controller` and one in `postgresql`, every controller's env file carries the
same database URL (from the inventory's password), its unit its own --controller-id and
--advertise-url, the database host listens on its own address and lets the three in,
Alertmanager clusters with the two others and Prometheus sends to all three; without
the database host, the controller role's check refuses to run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_binary

REPO = Path(__file__).resolve().parents[1]
ROLES = REPO / "roles"
PASSWORD = "s3cret/p@ss'word"
CONTROLLERS = {"control1": "10.0.0.10", "control2": "10.0.0.11", "control3": "10.0.0.12"}


def _inventory(tmp_path: Path, *, with_database: bool) -> Path:
    children: dict[str, object] = {
        "controller": {"hosts": {name: {"ansible_host": ip} for name, ip in CONTROLLERS.items()}}
    }
    if with_database:
        children["postgresql"] = {"hosts": {"db1": {"ansible_host": "10.0.0.15"}}}
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
            },
            "children": children,
        }
    }
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def _play(tmp_path: Path) -> Path:
    """On control2: the controller's checks, env file and unit; on db1: role postgresql's
    addresses; the monitoring roles' cluster and targets, all written to tmp_path."""

    def load(role: str) -> list[dict[str, object]]:
        return [
            {"name": f"Load {role}'s {kind}", "ansible.builtin.include_vars": str(path)}
            for kind in ("defaults", "vars")
            if (path := ROLES / role / kind / "main.yml").exists()
        ]

    controller_tasks = [
        *load("orchestrify_controller"),
        *load("alertmanager"),
        *load("prometheus"),
        {
            "name": "Check the controller",
            "ansible.builtin.include_tasks": str(
                ROLES / "orchestrify_controller/tasks/validate.yml"
            ),
        },
        *[
            {
                "name": f"Render {template}",
                "ansible.builtin.template": {
                    "src": str(ROLES / "orchestrify_controller/templates" / template),
                    "dest": str(tmp_path / template),
                    "mode": "0600",
                },
                "vars": {
                    "orchestrify_controller_tls": False,
                },
            }
            for template in ("controller.env.j2", "orchestrify-controller.service.j2")
        ],
        {
            "name": "Write the monitoring roles' values",
            "ansible.builtin.copy": {
                "dest": str(tmp_path / "monitoring.json"),
                "mode": "0600",
                "content": "{{ {'peers': alertmanager_cluster_peers, "
                "'advertise': alertmanager_cluster_advertise_address, "
                "'targets': prometheus_alertmanager_targets} | to_json }}",
            },
        },
    ]
    db_tasks = [
        *load("postgresql"),
        {
            "name": "Check the database role",
            "ansible.builtin.include_tasks": str(ROLES / "postgresql/tasks/validate.yml"),
        },
        {
            "name": "Render pg_hba.conf and the settings",
            "ansible.builtin.template": {
                "src": str(ROLES / "postgresql/templates" / "{{ item }}.j2"),
                "dest": str(tmp_path / "{{ item }}"),
                "mode": "0600",
            },
            "loop": ["pg_hba.conf", "orchestrify.conf"],
        },
    ]
    plays = [
        {"hosts": "control2", "gather_facts": False, "tasks": controller_tasks},
        {"hosts": "postgresql", "gather_facts": False, "tasks": db_tasks},
    ]
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    return path


def _run(tmp_path: Path, *, with_database: bool) -> subprocess.CompletedProcess[str]:
    bindir = str(Path(sys.executable).parent)
    playbook = shutil.which("ansible-playbook", path=bindir) or require_binary("ansible-playbook")
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
    }
    inventory = _inventory(tmp_path, with_database=with_database)
    # As extra vars: include_vars (the roles' defaults, loaded by the play) would take
    # precedence over inventory variables.
    secrets = {
        "postgresql_orchestrify_password": PASSWORD,
        "orchestrify_controller_token": "t",
        "orchestrify_controller_join_token": "j",
    }
    return subprocess.run(
        [playbook, "-i", str(inventory), "-e", json.dumps(secrets), str(_play(tmp_path))],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("several-controllers")
    proc = _run(tmp_path, with_database=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return tmp_path


def test_every_controller_points_at_the_shared_database(rendered: Path) -> None:
    env = (rendered / "controller.env.j2").read_text()
    assert (
        "ORCHESTRIFY_DATABASE_URL=postgresql+psycopg://orchestrify:s3cret%2Fp%40ss%27word"
        "@10.0.0.15:5432/orchestrify\n" in env
    ), env
    unit = (rendered / "orchestrify-controller.service.j2").read_text()
    assert "--controller-id control2 \\" in unit
    assert "--advertise-url http://10.0.0.11:18080" in unit
    # The status page's charts ask the Prometheus of the same host, with the rules' windows.
    assert "--alerting-profile standard \\" in unit
    assert "--prometheus-url http://127.0.0.1:9090" in unit
    assert "s3cret" not in unit and "DATABASE" not in unit.split("ExecStart=")[1]


def test_the_database_listens_for_and_admits_the_controllers_only(rendered: Path) -> None:
    settings = (rendered / "orchestrify.conf").read_text()
    assert "listen_addresses = '10.0.0.15'" in settings
    hba = [
        line.split()
        for line in (rendered / "pg_hba.conf").read_text().splitlines()
        if line.startswith("host")
    ]
    assert hba == [
        ["host", "orchestrify", "orchestrify", f"{ip}/32", "scram-sha-256"]
        for ip in CONTROLLERS.values()
    ]


def test_alertmanagers_cluster_and_prometheus_sends_to_each(rendered: Path) -> None:
    monitoring = json.loads((rendered / "monitoring.json").read_text())
    assert monitoring["peers"] == ["10.0.0.10:9094", "10.0.0.12:9094"]
    assert monitoring["advertise"] == "10.0.0.11:9094"
    assert monitoring["targets"] == [f"{ip}:9093" for ip in CONTROLLERS.values()]


def test_several_controllers_without_a_database_are_refused(tmp_path: Path) -> None:
    proc = _run(tmp_path, with_database=False)
    assert proc.returncode != 0
    assert "they must share one PostgreSQL store" in proc.stdout + proc.stderr
