"""The roles take a list of controller URLs (issue 11): the real ansible-playbook, on
this machine only (connection local), evaluates each role's checks and renders its
env file or monitoring config from a list, a comma-separated string and one URL; no
lab host is needed for that."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_binary

REPO = Path(__file__).resolve().parents[1]
ONE = "http://10.0.0.1:18080"
TWO = ["http://10.0.0.1:18080", "http://10.0.0.2:18080"]


def _task(name: str, module: str, args: object, **more: object) -> dict[str, object]:
    return {"name": name, f"ansible.builtin.{module}": args, **more}


def _play(tmp_path: Path, url: object) -> Path:
    """A playbook that runs the agent's and the edge's checks and renders their env files
    and the Alertmanager and Prometheus configs into ``tmp_path``."""
    tasks = []
    for role, template in (
        ("orchestrify_agent", "agent.env.j2"),
        ("orchestrify_edge", "edge.env.j2"),
    ):
        here = REPO / "roles" / role
        render = {"src": str(here / "templates" / template), "dest": str(tmp_path / template)}
        tasks += [
            _task(f"Load {role}'s vars", "include_vars", str(here / "vars/main.yml")),
            _task(f"Check {role}", "include_tasks", str(here / "tasks/validate.yml")),
            _task(f"Render {template}", "template", {**render, "mode": "0600"}),
        ]
    for name, template in (
        ("alertmanager.yml", "templates/alertmanager/alertmanager.yml.j2"),
        ("prometheus.yml", "templates/prometheus/prometheus.yml.j2"),
    ):
        render = {"src": str(REPO / template), "dest": str(tmp_path / name), "mode": "0600"}
        # As the roles render them: Jinja's defaults, like orchestrify.config_render.
        tasks.append(
            _task(
                f"Render {name}",
                "template",
                {**render, "trim_blocks": False},
                vars={"controller_url": url, "token": "t"},
            )
        )
    variables = {
        "ansible_python_interpreter": sys.executable,  # this test's own Python
        "orchestrify_agent_controller_url": url,
        "orchestrify_agent_join_token": "j",
        "orchestrify_agent_name": "w1",
        "orchestrify_agent_metrics_port": 18081,
        "orchestrify_agent_tls": False,
        "orchestrify_edge_controller_url": url,
        "orchestrify_edge_token": "t",
        "orchestrify_edge_listen": 80,
        "orchestrify_edge_metrics_port": 18082,
        "orchestrify_edge_telemetry_max_mb": 256,
        "orchestrify_edge_metrics_url": "",
        "orchestrify_edge_tls": False,
        "orchestrify_edge_tls_names": [],
    }
    play = {"hosts": "localhost", "connection": "local", "gather_facts": False}
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump([{**play, "vars": variables, "tasks": tasks}]))
    return path


def _run(tmp_path: Path, url: object) -> subprocess.CompletedProcess[str]:
    bindir = str(Path(sys.executable).parent)
    # The virtualenv's ansible-playbook, like tests/test_ansible_lint.py's tools.
    playbook = shutil.which("ansible-playbook", path=bindir) or require_binary("ansible-playbook")
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
    }
    return subprocess.run(
        [playbook, "-i", "localhost,", str(_play(tmp_path, url))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    "url", [TWO, ",".join(TWO), " , ".join(TWO)], ids=["list", "commas", "spaces"]
)
def test_a_list_of_controllers_reaches_the_units_and_the_monitoring(
    tmp_path: Path, url: object
) -> None:
    proc = _run(tmp_path, url)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    joined = ",".join(TWO)
    assert f"ORCHESTRIFY_URL={joined}\n" in (tmp_path / "agent.env.j2").read_text()
    assert f"ORCHESTRIFY_URL={joined}\n" in (tmp_path / "edge.env.j2").read_text()
    am = yaml.safe_load((tmp_path / "alertmanager.yml").read_text())
    assert [h["url"] for h in am["receivers"][0]["webhook_configs"]] == [
        f"{u}/v1/alerts" for u in TWO
    ]
    prom = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    controller = prom["scrape_configs"][0]
    assert controller["static_configs"][0]["targets"] == ["10.0.0.1:18080", "10.0.0.2:18080"]


def test_one_controller_renders_what_config_render_does(tmp_path: Path) -> None:
    from orchestrify.config_render import render_config

    proc = _run(tmp_path, ONE)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"ORCHESTRIFY_URL={ONE}\n" in (tmp_path / "agent.env.j2").read_text()
    render_config(out_dir=tmp_path / "py", controller_url=ONE, token="t")
    for name in ("alertmanager.yml", "prometheus.yml"):
        assert (tmp_path / name).read_text() == (tmp_path / "py" / name).read_text()


def test_a_bad_url_in_the_list_fails_the_role_check(tmp_path: Path) -> None:
    proc = _run(tmp_path, [TWO[0], "ftp://10.0.0.2:18080"])
    assert proc.returncode != 0
    assert "orchestrify_agent_controller_url" in proc.stdout + proc.stderr  # what to set
