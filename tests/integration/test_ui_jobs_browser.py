"""The status page's jobs in a real browser: Debian's Chromium driven by Playwright,
against a real controller running real ansible-playbook jobs on localhost
(``connection=local``); no agent, no Docker.

Run ``ping.yml`` from the page and watch its task line and its PLAY RECAP arrive without
a reload; cancel a job that is still running and see it end ``canceled``. With
ORCHESTRIFY_UI_SCREENSHOTS=DIR the finished ping job's page is saved there as
``ui-job.png`` (the README's picture comes from that)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.agent_harness import RunningController, start_controller
from bench.net import free_port
from bench.wait import wait_for
from orchestrify.client import ControllerClient
from orchestrify.controller.ui import jobs as ui_jobs
from tests.conftest import require_binary
from tests.integration.test_ui_browser import WAIT_MS, sign_in
from tests.integration.test_ui_browser import browser as browser  # Chromium, launched once

# beside: its own controller on a free port, jobs on localhost only, and no timing
# asserted: it runs beside the timed integration tests.
pytestmark = [pytest.mark.integration, pytest.mark.beside]

ROOT = Path(__file__).resolve().parents[2]
HOLD_S = 30  # hold.yml's wait: far longer than any test step, cut short by a cancel
HOLD = f"""
- name: Hold the host
  hosts: all
  gather_facts: false
  tasks:
    - name: Wait {HOLD_S} seconds
      ansible.builtin.wait_for:
        timeout: {HOLD_S}
"""


@dataclass
class Lab:
    controller: RunningController
    api: ControllerClient

    def job(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.api.get(f"/v1/jobs/{job_id}")
        return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A controller whose playbook dir holds the checkout's ping.yml and hold.yml, and
    whose inventory is this machine (connection local)."""
    require_binary("ansible-playbook")
    tmp = tmp_path_factory.mktemp("ui-jobs")
    playbooks = tmp / "playbooks"
    playbooks.mkdir()
    shutil.copy(ROOT / "playbooks" / "ping.yml", playbooks / "ping.yml")
    (playbooks / "hold.yml").write_text(HOLD.lstrip())
    inventory = tmp / "hosts.ini"
    inventory.write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    controller = start_controller(
        tmp / "controller", free_port(), playbook_dir=playbooks, inventory=inventory
    )
    api = controller.client()
    try:
        yield Lab(controller, api)
    finally:
        # Nothing of ours left running: a hold job still going is canceled.
        for job in api.get("/v1/jobs"):
            if job["status"] in ("pending", "running"):
                api.request("POST", f"/v1/jobs/{job['id']}/cancel")
        api.close()
        controller.stop()


@pytest.fixture
def page(browser: Any, lab: Lab) -> Iterator[Any]:
    context = browser.new_context(
        base_url=lab.controller.url, viewport={"width": 1366, "height": 768}
    )
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    try:
        yield opened
    finally:
        context.close()


def _accept_dialogs(page: Any) -> list[str]:
    questions: list[str] = []

    def accept(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    return questions


def _nav(page: Any, name: str) -> Any:
    """The nav bar's link to page ``name``."""
    return page.get_by_role("navigation", name="Pages").get_by_role("link", name=name)


def _run_from_the_page(page: Any, playbook: str, *, limit: str = "") -> str:
    """Run ``playbook`` with the Jobs page's form; the new job's id (its page open)."""
    _nav(page, "Jobs").click()
    page.wait_for_url("**/ui/jobs")
    page.get_by_label("Playbook", exact=True).select_option(playbook)
    page.get_by_label("Limit", exact=True).fill(limit)
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_url("**/ui/jobs/*")
    job_id: str = page.url.rsplit("/", 1)[1]
    return job_id


def _hold_localhost(lab: Lab) -> str:
    """Start a job that holds localhost: a job run next waits behind it, so its page
    surely opens before any of its output exists, and all of it comes by the live
    poll. Cancel the holder (its id) to let it start."""
    holder: dict[str, Any] = lab.api.request("POST", "/v1/jobs", json={"playbook": "hold.yml"})
    wait_for("hold.yml running", lambda: lab.job(holder["id"])["status"] == "running")
    return str(holder["id"])


def test_ping_run_from_the_page_shows_its_output_without_a_reload(page: Any, lab: Lab) -> None:
    holder = _hold_localhost(lab)
    sign_in(page, lab.controller.admin_token)
    page.wait_for_url("**/ui/")
    questions = _accept_dialogs(page)
    job_id = _run_from_the_page(page, "ping.yml", limit="localhost")
    assert questions and "Run the chosen playbook" in questions[0]  # asked before it ran
    assert page.locator("#job-status .state-word").inner_text() == "pending"
    assert page.locator("#job-live").get_attribute("data-live") == f"/ui/live/jobs/{job_id}"
    page.evaluate("window.__notReloaded = true")  # gone if the page were loaded again
    lab.api.request("POST", f"/v1/jobs/{holder}/cancel")  # ping may start now
    output = page.locator("#job-output")
    output.get_by_text("TASK [Ping the host]").wait_for()
    output.get_by_text("PLAY RECAP").wait_for()
    page.locator("#recap-body th", has_text="localhost").wait_for()
    page.locator("#job-status .state-word", has_text="successful").wait_for()
    page.get_by_text("The job has finished").wait_for()
    assert page.evaluate("window.__notReloaded === true")
    assert "ok: [localhost]" in output.inner_text()
    assert page.locator("#job-summary", has_text="localhost").count() == 1  # its hosts
    assert page.locator("#recap-body tr").count() == 1
    assert page.locator("#recap-body td").first.inner_text() == "1"  # ok=1
    assert page.get_by_role("button", name="Cancel job").count() == 0
    job = lab.job(job_id)
    assert job["status"] == "successful" and job["reason"] == "requested from the status page"
    shots = os.environ.get("ORCHESTRIFY_UI_SCREENSHOTS")
    if shots:
        page.screenshot(path=str(Path(shots) / "ui-job.png"), full_page=True)
    # The list shows it too, with its status in words.
    _nav(page, "Jobs").click()
    row = page.locator("#jobs-body tr", has=page.locator(f"#job-link-{job_id}"))
    row.locator(".state-word", has_text="successful").wait_for()


def test_cancel_a_running_job_from_its_page(page: Any, lab: Lab) -> None:
    sign_in(page, lab.controller.admin_token)
    page.wait_for_url("**/ui/")
    questions = _accept_dialogs(page)
    job_id = _run_from_the_page(page, "hold.yml")
    # Running, its task line on the page: then cancel it.
    page.locator("#job-output").get_by_text(f"TASK [Wait {HOLD_S} seconds]").wait_for()
    page.locator("#job-status .state-word", has_text="running").wait_for()
    page.get_by_role("button", name="Cancel job").click()
    assert any(job_id in q for q in questions)  # the confirmation named the job
    page.wait_for_url(f"**/ui/jobs/{job_id}?cancel=asked")
    page.locator("#job-status .state-word", has_text="canceled").wait_for()
    assert lab.job(job_id)["status"] == "canceled"
    assert page.get_by_role("button", name="Cancel job").count() == 0


def test_a_page_keeps_only_the_last_events_of_a_growing_output(
    page: Any, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two events kept instead of 2,000 (the controller runs in this process): ping's
    # output, arriving live, overflows it, and the page's script drops the oldest.
    monkeypatch.setattr(ui_jobs, "OUTPUT_SHOWN", 2)
    holder = _hold_localhost(lab)
    sign_in(page, lab.controller.admin_token)
    page.wait_for_url("**/ui/")
    _accept_dialogs(page)
    _run_from_the_page(page, "ping.yml")
    cut = page.locator("#job-output-cut")
    assert cut.is_hidden()
    lab.api.request("POST", f"/v1/jobs/{holder}/cancel")
    page.get_by_text("The job has finished").wait_for()
    cut.wait_for()  # shown once lines were dropped
    lines = page.locator("#job-output .out")
    assert lines.count() == 2
    assert lines.nth(0).inner_text() == "ok: [localhost]"
    assert lines.nth(1).inner_text().startswith("PLAY RECAP")
