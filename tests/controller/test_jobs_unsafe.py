"""Extra vars are data, never templates: a Jinja expression sent through ``POST /v1/jobs``
or an alert label reaches a REAL playbook verbatim and runs nothing on the controller.

ansible-playbook templates every string it is handed unless the string is marked
unsafe; before the fix ``{{ lookup('pipe', ...) }}`` in a value ran a shell command on
the controller. Each test here plants a ``touch`` of a fresh file in every shape an
extra var can take (a string, a list item, a dict value; and a dict key, which
ansible-core 2.19 did not template even before, kept as a guard) and checks that no
file appears while the value arrives in the play unchanged.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.alerting.payloads import am_alert, am_payload
from tests.conftest import require_binary
from tests.controller.test_jobs_api import AUTH, events, make_app, submit, wait_for, write_lab

pytestmark = pytest.mark.integration

# Prints the values (debug) and writes them to files (copy content=): both template the
# variable, which is exactly where a value that is itself a template would run.
ECHO = """
- name: Echo the extra vars
  hosts: all
  gather_facts: false
  tasks:
    - name: Print the payload
      ansible.builtin.debug:
        msg: "payload={{ payload }}"
    - name: Write the payload to a file
      ansible.builtin.copy:
        content: "{{ payload }}"
        dest: "{{ out_dir }}/payload.txt"
        mode: "0600"
    - name: Write the nested value to a file
      ansible.builtin.copy:
        content: "{{ nested | default({}) | to_json }}"
        dest: "{{ out_dir }}/nested.json"
        mode: "0600"
    - name: Write the alert labels to a file
      ansible.builtin.copy:
        content: "{{ alert_labels | default({}) | to_json }}"
        dest: "{{ out_dir }}/labels.json"
        mode: "0600"
"""


def _pwn(tag: str) -> tuple[str, Path]:
    """A template that would create a fresh file on the controller if it were evaluated."""
    target = Path(f"/tmp/pwned-{tag}-{uuid.uuid4().hex}")
    return "{{ lookup('pipe', 'touch " + str(target) + "') }}", target


@pytest.fixture
def lab(tmp_path: Path) -> tuple[Path, Path]:
    require_binary("ansible-playbook")
    playbooks, _ = write_lab(tmp_path)
    (playbooks / "echo.yml").write_text(ECHO.lstrip())
    out = tmp_path / "out"
    out.mkdir()
    return tmp_path, out


def test_api_extra_vars_are_never_templated(lab: tuple[Path, Path]) -> None:
    root, out = lab
    payload, touched = _pwn("api")
    in_list, touched_list = _pwn("list")
    in_dict, touched_dict = _pwn("dict")
    as_key, touched_key = _pwn("key")
    nested: dict[str, Any] = {
        "items": [in_list, 1, None, True],
        "deeper": {"value": in_dict, as_key: "k"},
    }
    try:
        with TestClient(make_app(root)) as client:
            client.headers.update(AUTH)
            job = submit(
                client,
                "echo.yml",
                limit="a",
                extra_vars={"payload": payload, "nested": nested, "out_dir": str(out)},
            )
            done = wait_for(client, job["id"])
            assert done["status"] == "successful", done
            shown = [e["stdout"] for e in events(client, job["id"]) if e["event"] == "runner_on_ok"]

        for path in (touched, touched_list, touched_dict, touched_key):
            assert not path.exists(), f"{path} was created: an extra var was templated"
        # The values reached the play verbatim, scalars keeping their types.
        assert (out / "payload.txt").read_text() == payload
        assert json.loads((out / "nested.json").read_text()) == nested
        assert any(payload in line for line in shown), shown
    finally:
        for path in (touched, touched_list, touched_dict, touched_key):
            path.unlink(missing_ok=True)


RULES = {
    "rules": [
        {
            "name": "capacity",
            "matchers": ['alertname="OutOfCapacity"'],
            "action": "run_playbook",
            "playbook": "echo.yml",
            "limit": "a",
        }
    ]
}


def test_alert_labels_are_never_templated(lab: tuple[Path, Path]) -> None:
    root, out = lab
    payload, touched = _pwn("label")
    try:
        with TestClient(make_app(root)) as client:
            client.headers.update(AUTH)
            assert client.put("/v1/rules", json=RULES).status_code == 200
            alert = am_alert("OutOfCapacity", payload=payload, out_dir=str(out))
            assert client.post("/v1/alerts", json=am_payload(alert)).status_code in (200, 202)
            (job,) = client.get("/v1/jobs").json()
            done = wait_for(client, job["id"])
            assert done["status"] == "successful", done

        assert not touched.exists(), f"{touched} was created: an alert label was templated"
        assert (out / "payload.txt").read_text() == payload
        # alert_labels carries the same label a second time, nested in a dict.
        assert json.loads((out / "labels.json").read_text())["payload"] == payload
    finally:
        touched.unlink(missing_ok=True)
