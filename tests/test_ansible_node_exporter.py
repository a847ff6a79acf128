"""node_exporter through the roles, with the real ansible-playbook on this machine only
(connection local, no lab host): one inventory variable sets node_exporter's port and the
controller's --node-exporter-port, and the prometheus role renders (and promtool accepts)
the node_exporter scrape job and the node alerts with the role's own variables."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import require_binary

REPO = Path(__file__).resolve().parents[1]


def _play(tmp_path: Path) -> Path:
    out = str(tmp_path)
    tasks = [
        # The prometheus role's own configure tasks: both templates, validated by promtool.
        {
            "name": "Configure Prometheus as the role does",
            "ansible.builtin.include_role": {"name": "prometheus", "tasks_from": "configure.yml"},
        },
        # node_exporter's flags and the controller's unit, from their roles' defaults.
        {
            "name": "Load the defaults of node_exporter and orchestrify_controller",
            "ansible.builtin.include_vars": {
                "file": f"{REPO}/roles/{{{{ defaults_of }}}}/defaults/main.yml"
            },
            "loop_control": {"loop_var": "defaults_of"},
            "loop": ["node_exporter", "orchestrify_controller"],
        },
        {
            "name": "Render node_exporter's flags and the controller's unit",
            "ansible.builtin.template": {"src": "{{ item.src }}", "dest": "{{ item.dest }}"},
            "loop": [
                {
                    "src": str(
                        REPO / "roles/node_exporter/templates/prometheus-node-exporter.default.j2"
                    ),
                    "dest": f"{out}/node-exporter.default",
                },
                {
                    "src": str(
                        REPO
                        / "roles/orchestrify_controller/templates/orchestrify-controller.service.j2"
                    ),
                    "dest": f"{out}/orchestrify-controller.service",
                },
            ],
        },
    ]
    variables = {
        "ansible_python_interpreter": sys.executable,
        "orchestrify_node_exporter_port": 9200,  # the one inventory variable
        "prometheus_controller_url": "http://10.0.0.1:18080",
        "prometheus_token": "t",
        "prometheus_config_file": f"{out}/prometheus.yml",
        "prometheus_rules_file": f"{out}/rules.yml",
        "prometheus_config_template": str(REPO / "templates/prometheus/prometheus.yml.j2"),
        "prometheus_rules_template": str(REPO / "templates/prometheus/rules.yml.j2"),
        "prometheus_service_state": "stopped",  # no handler touches a service here
        "prometheus_node_scrape_interval": "30s",
        "prometheus_node_disk_free_ratio": 0.05,
        "prometheus_node_memory_free_ratio": 0.2,
        "orchestrify_controller_tls": False,
        "orchestrify_controller_ansible_dir": "/opt/orchestrify/ansible",
    }
    play = {"hosts": "localhost", "connection": "local", "gather_facts": False}
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump([{**play, "vars": variables, "tasks": tasks}]))
    return path


def test_roles_render_the_node_exporter_job_rules_and_port(tmp_path: Path) -> None:
    require_binary("promtool")  # the role validates both files with it
    bindir = str(Path(sys.executable).parent)
    playbook = shutil.which("ansible-playbook", path=bindir) or require_binary("ansible-playbook")
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
    }
    proc = subprocess.run(
        [playbook, "-i", "localhost,", str(_play(tmp_path))],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    prometheus = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    jobs = {c["job_name"]: c for c in prometheus["scrape_configs"]}
    assert jobs["orchestrify-node-exporter"]["scrape_interval"] == "30s"
    rules = yaml.safe_load((tmp_path / "rules.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    # Ansible hands the ratios over as text: the template still compares numbers.
    assert ") < 0.05\n" in alerts["NodeDiskFull"]["expr"]
    assert "(alert under 20%)" in alerts["NodeMemoryPressure"]["annotations"]["description"]

    flags = (tmp_path / "node-exporter.default").read_text()
    assert 'ARGS="--web.listen-address=:9200"' in flags
    unit = (tmp_path / "orchestrify-controller.service").read_text()
    assert "--node-exporter-port 9200" in unit
