"""/v1/jobs against REAL ansible-runner runs on a local inventory (connection=local)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from bench.postgres import PostgresServer
from orchestrify.controller.app import create_app
from orchestrify.controller.settings import ControllerSettings
from orchestrify.jobs.models import JobStatus
from orchestrify.jobs.runner import JobRunner
from orchestrify.store import Store
from orchestrify.store.jobs import JobStore
from tests.conftest import require_binary

pytestmark = pytest.mark.integration
TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

PLAYBOOKS = {
    "hello.yml": """
- name: Greet
  hosts: all
  gather_facts: false
  tasks:
    - name: Say hello
      ansible.builtin.debug:
        msg: "hello {{ who | default('world') }}"
""",
    "fail.yml": """
- name: Break
  hosts: all
  gather_facts: false
  tasks:
    - name: Say hello first
      ansible.builtin.debug:
        msg: hello
    - name: Fail on purpose
      ansible.builtin.fail:
        msg: broken on purpose
""",
    "write.yml": """
- name: Write
  hosts: all
  gather_facts: false
  tasks:
    - name: Remember the greeting
      ansible.builtin.set_fact:
        greeting: "hello {{ who }}"
    - name: Write the greeting to a file
      ansible.builtin.copy:
        content: "{{ greeting }}\\n"
        dest: "{{ out_dir }}/{{ inventory_hostname }}.txt"
        mode: "0644"
""",
    "slow.yml": """
- name: Hold the host
  hosts: all
  gather_facts: false
  tasks:
    - name: Wait a while
      ansible.builtin.wait_for:
        timeout: "{{ seconds | default(2) | int }}"
""",
}


def write_lab(root: Path) -> tuple[Path, Path]:
    """A playbook dir and an inventory of two local hosts, a and b."""
    playbooks = root / "playbooks"
    playbooks.mkdir()
    for name, text in PLAYBOOKS.items():
        (playbooks / name).write_text(text.lstrip())
    (root / "secret.yml").write_text("- hosts: all\n")
    (playbooks / "escape.yml").symlink_to(root / "secret.yml")
    inventory = root / "hosts.ini"
    py = sys.executable
    inventory.write_text(
        "[web]\n"
        f"a ansible_connection=local ansible_python_interpreter={py}\n"
        f"b ansible_connection=local ansible_python_interpreter={py}\n"
    )
    return playbooks, inventory


def make_app(root: Path) -> Any:
    playbooks, inventory = (
        write_lab(root)
        if not (root / "playbooks").exists()
        else (
            root / "playbooks",
            root / "hosts.ini",
        )
    )
    settings = ControllerSettings(
        data_dir=root / "data",
        token=TOKEN,
        join_token="join",
        playbook_dir=playbooks,
        inventory=inventory,
    )
    return create_app(settings, registry=CollectorRegistry(), run_reconciler=False)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    require_binary("ansible-playbook")
    with TestClient(make_app(tmp_path)) as c:
        c.headers.update(AUTH)
        yield c


def submit(client: TestClient, playbook: str, **body: Any) -> dict[str, Any]:
    resp = client.post("/v1/jobs", json={"playbook": playbook, **body})
    assert resp.status_code == 202, resp.text
    job: dict[str, Any] = resp.json()
    assert job["status"] == "pending"
    return job


def wait_for(
    client: TestClient, job_id: str, *statuses: str, timeout: float = 120
) -> dict[str, Any]:
    wanted = set(statuses) or {"successful", "failed", "canceled", "lost"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in wanted:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {wanted}: {job}")


def at(job: dict[str, Any], field: str) -> datetime:
    return datetime.fromisoformat(job[field])


def events(client: TestClient, job_id: str, **params: Any) -> list[dict[str, Any]]:
    resp = client.get(f"/v1/jobs/{job_id}/events", params=params)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def test_successful_job_reports_status_rc_stats_and_events(client: TestClient) -> None:
    job = submit(client, "hello.yml", limit="a", extra_vars={"who": "orchestrify"})
    done = wait_for(client, job["id"])
    assert done["status"] == "successful"
    assert done["rc"] == 0
    assert done["hosts"] == ["a"]
    assert done["stats"] == {
        "a": {
            "ok": 1,
            "changed": 0,
            "failures": 0,
            "unreachable": 0,
            "skipped": 0,
            "rescued": 0,
            "ignored": 0,
        }
    }
    assert done["extra_vars"] == {"who": "orchestrify"}
    assert isinstance(done["controller"], str) and done["controller"]  # who ran it
    assert at(done, "created_at") <= at(done, "started_at") <= at(done, "finished_at")

    evs = events(client, job["id"])
    counters = [e["counter"] for e in evs]
    assert counters == sorted(counters)
    ok = [e for e in evs if e["event"] == "runner_on_ok"]
    assert [(e["host"], e["task"]) for e in ok] == [("a", "Say hello")]
    assert "hello orchestrify" in ok[0]["stdout"]
    assert evs[-1]["event"] == "playbook_on_stats"

    later = events(client, job["id"], after=counters[2])
    assert [e["counter"] for e in later] == counters[3:]

    listed = client.get("/v1/jobs").json()
    assert [j["id"] for j in listed] == [job["id"]]


def test_failing_task_fails_the_job_with_the_reason(client: TestClient) -> None:
    job = submit(client, "fail.yml", limit="a,b")
    done = wait_for(client, job["id"])
    assert done["status"] == "failed"
    assert done["rc"] == 2
    assert "Fail on purpose" in done["error"] and "broken on purpose" in done["error"]
    for host in ("a", "b"):
        assert done["stats"][host]["ok"] == 1
        assert done["stats"][host]["failures"] == 1
    tasks = {(e["event"], e["task"]) for e in events(client, job["id"])}
    assert ("runner_on_failed", "Fail on purpose") in tasks
    assert ("runner_on_ok", "Say hello first") in tasks


def test_extra_vars_reach_the_playbook_and_change_a_file(
    client: TestClient, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    job = submit(
        client, "write.yml", limit="b", extra_vars={"who": "it's $(me)", "out_dir": str(out)}
    )
    done = wait_for(client, job["id"])
    assert done["status"] == "successful", done
    assert done["stats"]["b"]["changed"] == 1
    assert done["stats"]["b"]["ok"] == 2
    # The value went through as data, shell characters and all.
    assert (out / "b.txt").read_text() == "hello it's $(me)\n"
    assert not (out / "a.txt").exists()

    again = wait_for(
        client,
        submit(
            client, "write.yml", limit="b", extra_vars={"who": "it's $(me)", "out_dir": str(out)}
        )["id"],
    )
    assert again["stats"]["b"]["changed"] == 0  # idempotent


def test_jobs_on_the_same_host_run_one_after_the_other(client: TestClient) -> None:
    first = submit(client, "slow.yml", limit="a", extra_vars={"seconds": 2})
    second = submit(client, "hello.yml", limit="web:!b")  # resolves to a as well
    wait_for(client, first["id"], "running")
    assert client.get(f"/v1/jobs/{second['id']}").json()["status"] == "pending"
    one = wait_for(client, first["id"])
    two = wait_for(client, second["id"])
    assert one["status"] == two["status"] == "successful"
    assert two["hosts"] == ["a"]
    assert at(one, "finished_at") <= at(two, "started_at")


def test_jobs_on_different_hosts_run_at_the_same_time(client: TestClient) -> None:
    on_a = submit(client, "slow.yml", limit="a", extra_vars={"seconds": 3})
    on_b = submit(client, "slow.yml", limit="b", extra_vars={"seconds": 3})
    one = wait_for(client, on_a["id"])
    two = wait_for(client, on_b["id"])
    assert one["status"] == two["status"] == "successful"
    assert at(one, "started_at") < at(two, "finished_at")
    assert at(two, "started_at") < at(one, "finished_at")


def test_a_job_without_limit_waits_for_every_other_job(client: TestClient) -> None:
    on_a = submit(client, "slow.yml", limit="a", extra_vars={"seconds": 2})
    everywhere = submit(client, "hello.yml")
    one = wait_for(client, on_a["id"])
    two = wait_for(client, everywhere["id"])
    assert two["hosts"] == ["*"]
    assert at(one, "finished_at") <= at(two, "started_at")
    assert set(two["stats"]) == {"a", "b"}


def test_cancel_running_and_pending_jobs(client: TestClient) -> None:
    running = submit(client, "slow.yml", limit="a", extra_vars={"seconds": 120})
    queued = submit(client, "hello.yml", limit="a")
    wait_for(client, running["id"], "running")

    resp = client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert resp.status_code == 202
    assert resp.json()["status"] == "canceled"
    assert resp.json()["started_at"] is None

    # Cancel once the long task is under way, so the kill happens mid-task.
    deadline = time.monotonic() + 60
    while not any(e["task"] == "Wait a while" for e in events(client, running["id"], follow=False)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.post(f"/v1/jobs/{running['id']}/cancel").status_code == 202
    done = wait_for(client, running["id"])
    assert done["status"] == "canceled"
    assert done["error"] == "canceled"

    again = client.post(f"/v1/jobs/{running['id']}/cancel")
    assert again.status_code == 409


def test_job_start_and_finish_are_in_the_event_trail(client: TestClient) -> None:
    job = submit(client, "hello.yml", limit="a", reason="alert CapacityLow")
    wait_for(client, job["id"])
    trail = client.get("/v1/events", params={"kind": "job"}).json()
    actions = [(e["action"], e["outcome"], e["data"]["job"]) for e in trail]
    assert actions == [("job_start", "ok", job["id"]), ("job_finish", "ok", job["id"])]
    assert trail[0]["reason"] == "alert CapacityLow"


def test_python_api_for_alert_actions(client: TestClient) -> None:
    runner = client.app.state.controller.jobs  # type: ignore[attr-defined]
    labels = {"alertname": "OutOfCapacity", "service": "web", "severity": "page"}
    job = runner.submit(
        playbook="hello.yml", limit="b", extra_vars=labels, reason="alert OutOfCapacity"
    )
    assert job.status == JobStatus.PENDING
    done = wait_for(client, job.id)
    assert done["status"] == "successful"
    assert done["extra_vars"] == labels


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"playbook": "../secret.yml"}, "playbook"),
        ({"playbook": "/etc/hosts"}, "playbook"),
        ({"playbook": "escape.yml"}, "playbook"),
        ({"playbook": "nope.yml"}, "playbook"),
        ({"playbook": "hello.yml", "limit": "all; rm -rf /"}, "limit"),
        ({"playbook": "hello.yml", "extra_vars": {"a b": 1}}, "extra_vars"),
        ({"playbook": "hello.yml", "extra_vars": []}, "extra_vars"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_stores_nothing(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 422, resp.text
    loc = resp.json()["detail"][0]["loc"]
    assert field in loc or any(str(p).startswith(field) for p in loc)
    assert client.get("/v1/jobs").json() == []


def test_every_job_endpoint_needs_the_admin_token(client: TestClient) -> None:
    job = submit(client, "hello.yml", limit="a")
    wait_for(client, job["id"])
    client.headers.pop("Authorization")
    for method, path in [
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", f"/v1/jobs/{job['id']}"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
    ]:
        resp = client.request(method, path, json={"playbook": "hello.yml"})
        assert resp.status_code == 401, (method, path)


def test_unknown_job_is_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.get("/v1/jobs/nope/events").status_code == 404


def test_a_job_running_at_restart_is_marked_failed(tmp_path: Path) -> None:
    require_binary("ansible-playbook")
    write_lab(tmp_path)
    store = Store.in_data_dir(tmp_path / "data")
    jobs = JobStore(store)
    jobs.create(job_id="left1", playbook="hello.yml", limit="a", extra_vars={}, reason=None)
    jobs.mark_running("left1")
    jobs.create(job_id="queued1", playbook="hello.yml", limit="b", extra_vars={}, reason=None)
    store.close()

    with TestClient(make_app(tmp_path)) as c:
        c.headers.update(AUTH)
        left = c.get("/v1/jobs/left1").json()
        assert left["status"] == "failed"
        assert "controller stopped" in left["error"]
        assert left["finished_at"] is not None
        # A job accepted but never started is still owed a run.
        assert wait_for(c, "queued1")["status"] == "successful"


def test_a_job_submitted_to_one_controller_is_run_by_the_leader_on_postgresql(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """Two controllers on one PostgreSQL: A only takes the job, leader B runs it with
    ansible-runner, and A reads its outcome and events from the store."""
    require_binary("ansible-playbook")
    playbooks, inventory = write_lab(tmp_path)
    url = postgres.url(postgres.emptied_database())
    store_a, store_b = Store(url), Store(url)
    a = JobRunner(
        store_a,
        playbook_dir=playbooks,
        inventory=inventory,
        jobs_dir=tmp_path / "jobs-a",
        controller_id="ctl-a",
    )
    b = JobRunner(
        store_b,
        playbook_dir=playbooks,
        inventory=inventory,
        jobs_dir=tmp_path / "jobs-b",
        controller_id="ctl-b",
    )
    try:
        b.lead()
        job = a.submit(playbook="hello.yml", limit="a", extra_vars={"who": "failover"})
        deadline = time.monotonic() + 120
        while not a.get(job.id).status.finished and time.monotonic() < deadline:
            time.sleep(0.1)
        done = a.get(job.id)
        assert done.status == JobStatus.SUCCESSFUL, done.error
        assert done.controller == "ctl-b"
        ok = [e for e in a.events(job.id) if e.event == "runner_on_ok"]
        assert "hello failover" in ok[0].stdout  # events are in the store: A reads them
        # ansible-runner's own artifacts are on the controller that ran the job only.
        assert (tmp_path / "jobs-b" / job.id / "artifacts").is_dir()
        assert not (tmp_path / "jobs-a" / job.id).exists()
    finally:
        a.close()
        b.close()
        store_a.close()
        store_b.close()
