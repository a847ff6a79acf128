"""The edge role's access log (orchestrify_edge_access_log): the real ansible-playbook, on
this machine only (connection local), runs the role's checks and renders its env file
and logrotate file, set and unset; no lab host is needed for that."""

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
ROLE = REPO / "roles" / "orchestrify_edge"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
LOG = "/var/log/orchestrify-edge/access.log"


def _task(name: str, module: str, args: object) -> dict[str, object]:
    return {"name": name, f"ansible.builtin.{module}": args}


def _run(tmp_path: Path, **variables: object) -> subprocess.CompletedProcess[str]:
    """Run the role's checks and render its env and logrotate files into ``tmp_path``."""
    tasks = [
        _task("Load the role's vars", "include_vars", str(ROLE / "vars" / "main.yml")),
        _task("Check the role's variables", "include_tasks", str(ROLE / "tasks/validate.yml")),
    ]
    for template in ("edge.env.j2", "orchestrify-edge-access-log.logrotate.j2"):
        render = {"src": str(ROLE / "templates" / template), "dest": str(tmp_path / template)}
        tasks.append(_task(f"Render {template}", "template", {**render, "mode": "0600"}))
    play_vars = {
        "ansible_python_interpreter": sys.executable,  # this test's own Python
        **{
            name: DEFAULTS[name]
            for name in (
                "orchestrify_edge_access_log",
                "orchestrify_edge_nginx_conf_dir",
                "orchestrify_edge_user",
                "orchestrify_edge_listen",
                "orchestrify_edge_metrics_port",
                "orchestrify_edge_telemetry_max_mb",
            )
        },
        "orchestrify_edge_controller_url": "http://10.0.0.1:18080",
        "orchestrify_edge_token": "t",
        "orchestrify_edge_metrics_url": "",
        "orchestrify_edge_tls": False,
        "orchestrify_edge_tls_names": [],
        **variables,
    }
    play = {"hosts": "localhost", "connection": "local", "gather_facts": False}
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump([{**play, "vars": play_vars, "tasks": tasks}]))
    bindir = str(Path(sys.executable).parent)
    playbook = shutil.which("ansible-playbook", path=bindir) or require_binary("ansible-playbook")
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
    }
    return subprocess.run(
        [playbook, "-i", "localhost,", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_off_by_default() -> None:
    assert DEFAULTS["orchestrify_edge_access_log"] == ""


def test_unset_the_env_file_has_no_access_log(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "ORCHESTRIFY_ACCESS_LOG" not in (tmp_path / "edge.env.j2").read_text()


def test_set_it_reaches_the_env_file_and_a_daily_logrotate_file(tmp_path: Path) -> None:
    proc = _run(tmp_path, orchestrify_edge_access_log=LOG)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    env = (tmp_path / "edge.env.j2").read_text()
    assert f"\nORCHESTRIFY_ACCESS_LOG={LOG}\n" in env
    rotate = (tmp_path / "orchestrify-edge-access-log.logrotate.j2").read_text()
    body = rotate[rotate.index(f"{LOG} {{\n") :]
    directives = [line.strip() for line in body.splitlines()[1:] if line.strip()]
    directives = [d for d in directives if not d.startswith("#")]
    assert directives[:8] == [
        "daily",
        "rotate 7",
        "compress",
        "delaycompress",
        "missingok",
        "notifempty",
        "nocreate",
        "su orchestrify-edge orchestrify-edge",
    ]
    assert directives[8] == "postrotate" and directives[-2:] == ["endscript", "}"]
    # USR1 to the master named by the pid file of the role's Nginx, sent as its user.
    pid_file = f"{DEFAULTS['orchestrify_edge_nginx_conf_dir']}/nginx.pid"
    assert directives[9] == (
        "/usr/sbin/runuser -u orchestrify-edge -- /bin/sh -c "
        f"'[ ! -s {pid_file} ] || kill -USR1 \"$(cat {pid_file})\"'"
    )
    unit = (ROLE / "templates" / "orchestrify-nginx.service.j2").read_text()
    assert "PIDFile={{ orchestrify_edge_nginx_conf_dir }}/nginx.pid" in unit  # the same


@pytest.mark.parametrize("path", ["access.log", "/var/log/a b.log", "/var/log/x;y", "/var/log/"])
def test_a_path_nginx_cannot_take_fails_the_role_check(tmp_path: Path, path: str) -> None:
    proc = _run(tmp_path, orchestrify_edge_access_log=path)
    assert proc.returncode != 0
    assert "orchestrify_edge_access_log must be" in proc.stdout + proc.stderr
