"""An alert mapped to run_playbook queues a REAL ansible-runner job with its labels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.alerting.payloads import am_alert, am_payload
from tests.conftest import require_binary
from tests.controller.test_jobs_api import AUTH, make_app, wait_for

pytestmark = pytest.mark.integration

RULES = {
    "rules": [
        {
            "name": "capacity",
            "matchers": ['alertname="OutOfCapacity"'],
            "action": "run_playbook",
            "playbook": "write.yml",
            "limit": "a",
            "extra_vars": {"who": "the standby host"},
        }
    ]
}


def _jobs(client: TestClient) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = client.get("/v1/jobs").json()
    return jobs


def test_alert_runs_playbook_once_with_its_labels(tmp_path: Path) -> None:
    require_binary("ansible-playbook")
    out = tmp_path / "out"
    out.mkdir()
    with TestClient(make_app(tmp_path)) as client:
        client.headers.update(AUTH)
        assert client.put("/v1/rules", json=RULES).status_code == 200
        body = am_payload(am_alert("OutOfCapacity", severity="critical", out_dir=str(out)))
        assert client.post("/v1/alerts", json=body).status_code in (200, 202)
        assert client.post("/v1/alerts", json=body).status_code in (200, 202)  # a retry

        (job,) = _jobs(client)  # the retry did not queue a second job
        done = wait_for(client, job["id"])
        assert done["status"] == "successful", done
        assert done["playbook"] == "write.yml" and done["limit"] == "a"
        assert done["extra_vars"]["severity"] == "critical"
        assert done["extra_vars"]["alert_labels"]["alertname"] == "OutOfCapacity"
        # The rule's own extra vars win over labels; the playbook really ran on host a.
        assert (out / "a.txt").read_text() == "hello the standby host\n"
        assert not (out / "b.txt").exists()
        time.sleep(0.1)
        decisions = client.get("/v1/events", params={"kind": "decision"}).json()
        assert any(
            e["action"] == "run_playbook" and e["outcome"] == "ok" and job["id"] in e["message"]
            for e in decisions
        ), decisions


def test_alert_label_that_is_an_ansible_variable_never_reaches_ansible(tmp_path: Path) -> None:
    require_binary("ansible-playbook")
    out = tmp_path / "out"
    out.mkdir()
    with TestClient(make_app(tmp_path)) as client:
        client.headers.update(AUTH)
        client.put("/v1/rules", json=RULES)
        sneaky = {"ansible_ssh_common_args": "-o ProxyCommand=touch /tmp/pwned"}
        client.post(
            "/v1/alerts", json=am_payload(am_alert("OutOfCapacity", out_dir=str(out), **sneaky))
        )
        (job,) = _jobs(client)
        assert "ansible_ssh_common_args" not in job["extra_vars"]
        assert wait_for(client, job["id"])["status"] == "successful"
