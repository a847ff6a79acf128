"""The prometheus and alertmanager roles' alerting profile (prometheus_alerting_profile,
alertmanager_alerting_profile, or the inventory's orchestrify_alerting_profile for both).

The real ansible-playbook, on this machine only (connection local), loads each role's
own defaults, runs its own checks (tasks/validate.yml) and renders the shared templates
with the variable mapping of the role's own tasks/configure.yml, into a temporary folder
instead of /etc. No lab host is needed for that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_binary

REPO = Path(__file__).resolve().parents[1]
ROLES = REPO / "roles"


def _configure_vars(role: str) -> dict[str, Any]:
    """The template variables the role's configure.yml passes (first template task)."""
    tasks = yaml.safe_load((ROLES / role / "tasks" / "configure.yml").read_text())
    return dict(next(t["vars"] for t in tasks if "vars" in t))


def _play(tmp_path: Path) -> Path:
    tasks: list[dict[str, Any]] = []
    renders = {
        "prometheus": [
            (REPO / "templates/prometheus/rules.yml.j2", "rules.yml"),
            (REPO / "templates/prometheus/prometheus.yml.j2", "prometheus.yml"),
            (ROLES / "prometheus/templates/prometheus.default.j2", "prometheus.default"),
        ],
        "alertmanager": [(REPO / "templates/alertmanager/alertmanager.yml.j2", "alertmanager.yml")],
    }
    for role, files in renders.items():
        tasks += [
            {
                "name": f"Load {role}'s defaults",
                "ansible.builtin.include_vars": str(ROLES / role / "defaults/main.yml"),
            },
            {
                "name": f"Check {role}",
                "ansible.builtin.include_tasks": str(ROLES / role / "tasks/validate.yml"),
            },
        ]
        for src, name in files:
            tasks.append(
                {
                    "name": f"Render {name}",
                    "ansible.builtin.template": {
                        "src": str(src),
                        "dest": str(tmp_path / name),
                        "mode": "0600",
                        "trim_blocks": False,
                    },
                    "vars": _configure_vars(role),
                }
            )
    variables = {"ansible_python_interpreter": sys.executable, "ansible_managed": "test"}
    play = {"hosts": "localhost", "connection": "local", "gather_facts": False}
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump([{**play, "vars": variables, "tasks": tasks}]))
    return path


def _run(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    bindir = str(Path(sys.executable).parent)
    playbook = shutil.which("ansible-playbook", path=bindir) or require_binary("ansible-playbook")
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
    }
    # Extra vars: include_vars (the role's defaults) would win over play vars.
    required = {
        "prometheus_controller_url": "http://10.0.0.1:18080",
        "prometheus_token": "t",
        "alertmanager_controller_url": "http://10.0.0.1:18080",
        "alertmanager_token": "t",
    }
    extra_args = [arg for k, v in {**required, **extra}.items() for arg in ("-e", f"{k}={v}")]
    return subprocess.run(
        [playbook, "-i", "localhost,", *extra_args, str(_play(tmp_path))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _rendered(tmp_path: Path) -> dict[str, Any]:
    prom = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    rules = yaml.safe_load((tmp_path / "rules.yml").read_text())
    am = yaml.safe_load((tmp_path / "alertmanager.yml").read_text())
    latency = rules["groups"][0]["rules"][0]
    return {
        "scrape": prom["global"]["scrape_interval"],
        "evaluation": prom["global"]["evaluation_interval"],
        "for_latency": latency["for"],
        "window": latency["expr"].split("_bucket[", 1)[1].split("]", 1)[0],
        "group_wait": am["route"]["group_wait"],
        "group_interval": am["route"]["group_interval"],
        "resend": (tmp_path / "prometheus.default").read_text().split("resend-delay=")[1][:2],
    }


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {},
            {
                "scrape": "15s",
                "evaluation": "15s",
                "for_latency": "30s",
                "window": "1m",
                "group_wait": "10s",
                "group_interval": "1m",
                "resend": "1m",
            },
        ),
        (
            {"orchestrify_alerting_profile": "fast"},
            {
                "scrape": "1s",
                "evaluation": "1s",
                "for_latency": "5s",
                "window": "3s",
                "group_wait": "0s",
                "group_interval": "1s",
                "resend": "5s",
            },
        ),
    ],
    ids=["standard-by-default", "fast-from-the-inventory"],
)
def test_the_profile_reaches_every_timing(
    tmp_path: Path, extra: dict[str, str], expected: dict[str, str]
) -> None:
    proc = _run(tmp_path, **extra)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert _rendered(tmp_path) == expected


def test_an_explicit_interval_wins_over_the_profile(tmp_path: Path) -> None:
    proc = _run(tmp_path, prometheus_alerting_profile="fast", prometheus_scrape_interval="2s")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    got = _rendered(tmp_path)
    assert (got["scrape"], got["for_latency"]) == ("2s", "5s")
    assert got["group_wait"] == "10s"  # alertmanager_alerting_profile stayed standard


@pytest.mark.parametrize("role", ["prometheus", "alertmanager"])
def test_an_unknown_profile_fails_the_role_check(tmp_path: Path, role: str) -> None:
    proc = _run(tmp_path, **{f"{role}_alerting_profile": "quick"})
    assert proc.returncode != 0
    assert f"{role}_alerting_profile must be standard or fast, got quick" in proc.stdout
    assert not (tmp_path / f"{role}.yml").exists()
