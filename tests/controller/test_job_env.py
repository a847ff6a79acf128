"""A job never sees the controller's tokens: ansible-runner copies the environment it
runs with into the job's artifacts (``artifacts/<job>/command``) and hands it to every
module, so the controller gives it a small one of its own.

A REAL ansible-runner job runs while the controller's environment holds the admin and
join tokens (``ORCHESTRIFY_TOKEN``, ``ORCHESTRIFY_JOIN_TOKEN``, as systemd or a shell
would set them); then every file of the job's private data dir is searched for them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from orchestrify.controller.app import create_app
from orchestrify.controller.settings import ControllerSettings
from tests.conftest import require_binary
from tests.controller.test_jobs_api import events, submit, wait_for, write_lab

pytestmark = pytest.mark.integration

# The playbook looks for the tokens itself, the way a task or a module would.
SNOOP = """
- name: Look for the controller's tokens
  hosts: all
  gather_facts: false
  tasks:
    - name: Read the environment
      ansible.builtin.debug:
        msg: >-
          token=[{{ lookup('env', 'ORCHESTRIFY_TOKEN') }}]
          join=[{{ lookup('env', 'ORCHESTRIFY_JOIN_TOKEN') }}]
          home=[{{ lookup('env', 'HOME') }}]
"""


def _files_holding(root: Path, needles: list[str]) -> list[str]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path} holds {n[:12]}…" for n in needles if n.encode() in data]
    return found


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    admin = "admin-" + secrets.token_hex(16)
    join = "join-" + secrets.token_hex(16)
    monkeypatch.setenv("ORCHESTRIFY_TOKEN", admin)
    monkeypatch.setenv("ORCHESTRIFY_JOIN_TOKEN", join)
    yield admin, join


def test_job_artifacts_and_environment_hold_no_token(
    tmp_path: Path, tokens: tuple[str, str]
) -> None:
    require_binary("ansible-playbook")
    admin, join = tokens
    playbooks, inventory = write_lab(tmp_path)
    (playbooks / "snoop.yml").write_text(SNOOP.lstrip())
    # As the CLI builds them: the tokens come from ORCHESTRIFY_* in the environment.
    settings = ControllerSettings(
        data_dir=tmp_path / "data", playbook_dir=playbooks, inventory=inventory
    )
    assert (settings.token, settings.join_token) == (admin, join)
    app = create_app(settings, registry=CollectorRegistry(), run_reconciler=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {admin}"
        job = submit(client, "snoop.yml", limit="a", extra_vars={"who": "me"})
        done = wait_for(client, job["id"])
        assert done["status"] == "successful", done
        (shown,) = [e["stdout"] for e in events(client, job["id"]) if e["event"] == "runner_on_ok"]

    private = settings.resolved_jobs_dir / job["id"]
    # The job ran with an environment, just not the controller's secrets.
    command = json.loads((private / "artifacts" / job["id"] / "command").read_text())
    assert command["env"]["PATH"] and "HOME" in command["env"]
    assert not {k for k in command["env"] if k.startswith("ORCHESTRIFY_")}
    assert "token=[] join=[] home=[/" in shown, shown
    assert _files_holding(private, [admin, join]) == []
    assert any(private.rglob("job_events/*.json"))  # the search did cover the run's events
