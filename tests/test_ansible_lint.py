"""The Ansible content parses and passes ansible-lint's production profile.

Both run the real tools as subprocesses from the repository root, where ansible.cfg
(roles_path, inventory plugins) and .ansible-lint live.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require, require_binary

REPO = Path(__file__).resolve().parents[1]
PLAYBOOKS = sorted((REPO / "playbooks").glob("*.yml"))


def _env() -> dict[str, str]:
    # The tools must come from the same virtualenv as the test run.
    bindir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
    }


def test_there_are_playbooks() -> None:
    names = {p.name for p in PLAYBOOKS}
    assert {"site.yml", "workers.yml", "control.yml", "decommission.yml", "ping.yml"} <= names


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda p: p.name)
def test_playbook_syntax(playbook: Path) -> None:
    ansible_playbook = require_binary("ansible-playbook")
    proc = subprocess.run(
        [ansible_playbook, "-i", "localhost,", "--syntax-check", str(playbook)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production_profile() -> None:
    require(
        subprocess.run([sys.executable, "-c", "import ansiblelint"], check=False).returncode == 0,
        "ansible-lint (pip install ansible-lint)",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ansiblelint", "--nocolor", "--profile", "production"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
