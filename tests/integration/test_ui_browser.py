"""The status page in a real browser: Debian's Chromium driven by Playwright, against a
real controller and two real agents on the Docker engine, the demo app as the service.

Sign-in (and a refused token), a service created from the CLI appearing on the fleet
page without a reload, a drain from the page moving its replicas, a scale from a
service's page, an alert's decision with its reason on the service's timeline and on the
alerts page, and a forged form without its CSRF token refused. With
ORCHESTRIFY_UI_SCREENSHOTS=DIR the fleet page, a service's timeline and the alerts page
are saved there (the README's pictures come from that)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench.agent_harness import RunningController, start_agents, start_controller, wait_ready
from bench.net import free_port
from bench.outage_lab import remove_containers
from bench.wait import wait_for
from orchestrify.agent import HealSettings
from orchestrify.client import ControllerClient
from orchestrify.demo import DEFAULT_TAG, build_demo_image
from tests.alerting.payloads import am_alert, am_payload
from tests.conftest import require, require_docker

# beside: its own controller and agents on free ports, containers of its own labels, and
# no timing asserted: it runs beside the timed integration tests.
pytestmark = [pytest.mark.integration, pytest.mark.beside]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SERVICE = "hello"
WAIT_MS = 30_000  # a guard against a hang, not a goal: the page is live within 2 s


@dataclass
class Fleet:
    controller: RunningController
    api: ControllerClient
    names: list[str]
    node_ids: dict[str, str]  # name -> id

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "ORCHESTRIFY_URL": self.controller.url,
            "ORCHESTRIFY_TOKEN": self.controller.admin_token,
        }
        return subprocess.run(
            [sys.executable, "-m", "orchestrify", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def replicas(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api.get("/v1/replicas", service=SERVICE)
        return [r for r in found if r["desired"] == "run"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    client = require_docker()
    try:
        build_demo_image()
    except Exception as exc:
        require(False, f"the demo image can be built ({exc})")
    tmp = tmp_path_factory.mktemp("ui")
    run_id = uuid.uuid4().hex[:10]
    controller = start_controller(tmp / "controller", free_port(), reconcile_interval_s=0.2)
    api = controller.client()
    names = [f"ui{i}-{run_id}" for i in (1, 2)]
    agents = start_agents(
        controller,
        tmp,
        names=names,
        run_id=run_id,
        heal=HealSettings(fault_interval_s=0.5, probe_timeout_s=0.4),
    )
    try:
        yield Fleet(controller, api, names, wait_ready(api, names))
    finally:
        for agent in agents:
            agent.kill()
        api.close()
        controller.stop()
        remove_containers(client, run_id)
        client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(shutil.which("chromium") is not None, "Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "Playwright for Python (the test extras: pip install -e '.[test]')")
        raise
    with sync_playwright() as p:
        # The system's browser (no download); no sandbox: the tests run as root.
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, fleet: Fleet) -> Iterator[Any]:
    context = browser.new_context(
        base_url=fleet.controller.url, viewport={"width": 1366, "height": 768}
    )
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    try:
        yield opened
    finally:
        context.close()


def sign_in(page: Any, token: str) -> None:
    page.goto("/ui/")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def row(page: Any, name: str) -> Any:
    return page.locator("#fleet-body tr", has=page.locator(".node-name", has_text=name))


def test_sign_in_refuses_a_wrong_token_then_shows_the_fleet(page: Any, fleet: Fleet) -> None:
    page.goto("/ui/")
    assert "/ui/login" in page.url  # no session: the sign-in page
    sign_in(page, "not-the-token")
    page.get_by_text("That is not the admin token").wait_for()
    assert "/ui/login" in page.url
    sign_in(page, fleet.controller.admin_token)
    page.wait_for_url("**/ui/")
    for name in fleet.names:
        # The state is a word next to the badge, not a color alone.
        row(page, name).locator(".state-word", has_text="ready").wait_for()


def test_a_service_created_from_the_cli_appears_without_a_reload(page: Any, fleet: Fleet) -> None:
    sign_in(page, fleet.controller.admin_token)
    page.wait_for_url("**/ui/")
    page.evaluate("window.__notReloaded = true")  # gone if the page were loaded again
    created = fleet.cli(
        "service", "create", DEFAULT_TAG, "--name", SERVICE, "--replicas", "2", "--drain", "0"
    )
    assert created.returncode == 0, created.stderr
    chips = page.locator("#fleet-body .chip", has_text=SERVICE)
    wait_for("both replicas placed", lambda: len(fleet.replicas()) == 2, timeout=60)
    placed = time.monotonic()
    page.wait_for_function(
        f"document.querySelectorAll('#fleet-body .chip').length >= 2 "
        f"&& [...document.querySelectorAll('#fleet-body .chip-name')]"
        f".filter(c => c.textContent.includes('{SERVICE}')).length == 2"
    )
    print(f"replicas on the page {time.monotonic() - placed:.2f} s after the API had them")
    assert chips.count() == 2
    assert page.evaluate("window.__notReloaded === true")
    shots = os.environ.get("ORCHESTRIFY_UI_SCREENSHOTS")
    if shots:
        page.locator("#fleet-body .chip-state", has_text="healthy").first.wait_for()
        page.screenshot(path=str(Path(shots) / "ui-fleet.png"), full_page=True)


def test_drain_from_the_page_moves_its_replicas(page: Any, fleet: Fleet) -> None:
    if not fleet.replicas():
        created = fleet.cli("service", "create", DEFAULT_TAG, "--name", SERVICE, "--replicas", "2")
        assert created.returncode == 0, created.stderr
    wait_for("2 replicas placed", lambda: len(fleet.replicas()) == 2, timeout=60)
    sign_in(page, fleet.controller.admin_token)
    page.wait_for_url("**/ui/")
    first, second = fleet.names
    questions: list[str] = []

    def accept(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    row(page, first).get_by_role("button", name=f"Drain node {first}").click()
    row(page, first).locator(".state-word", has_text="draining").wait_for()
    assert questions and first in questions[0]  # asked before it acted
    # The event the drain wrote, at the top of the page it returned to.
    page.locator("#done .done-message", has_text=f"node {first}: draining").wait_for()
    # Its replicas move: none left on the drained node, both on the other one.
    page.wait_for_function(
        "([a, b, svc]) => {"
        "  const rows = [...document.querySelectorAll('#fleet-body tr')];"
        "  const on = (n) => rows.filter(r => r.querySelector('.node-name')?.textContent === n)"
        "    .flatMap(r => [...r.querySelectorAll('.chip')])"
        "    .filter(c => c.textContent.includes(svc) && c.textContent.includes('desired run'));"
        "  return on(a).length === 0 && on(b).length === 2;"
        "}",
        arg=[first, second, SERVICE],
    )
    on_second = [r for r in fleet.replicas() if r["node"] == fleet.node_ids[second]]
    assert len(on_second) == 2
    row(page, first).get_by_role("button", name=f"Activate node {first}").click()
    row(page, first).locator(".state-word", has_text="ready").wait_for()


def test_scale_from_the_service_page_shows_the_change_and_its_event(
    page: Any, fleet: Fleet
) -> None:
    if not fleet.replicas():
        created = fleet.cli("service", "create", DEFAULT_TAG, "--name", SERVICE, "--replicas", "2")
        assert created.returncode == 0, created.stderr
    wait_for("2 replicas placed", lambda: len(fleet.replicas()) == 2, timeout=60)
    sign_in(page, fleet.controller.admin_token)
    page.wait_for_url("**/ui/")
    page.get_by_role("link", name="Services").click()
    page.get_by_role("link", name=SERVICE, exact=True).click()
    page.wait_for_url(f"**/ui/services/{SERVICE}")
    questions: list[str] = []

    def accept(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.get_by_role("spinbutton", name="Replicas").fill("3")
    page.get_by_role("button", name="Scale").click()
    assert questions and SERVICE in questions[0]  # asked before it acted
    page.locator("#service-figures .desired", has_text="3").wait_for()
    # The decision is on the service's timeline, and the third replica on its table.
    page.locator("#events-body .event", has_text="status page").first.wait_for()
    page.wait_for_function("document.querySelectorAll('#replicas-body tr.replica').length >= 3")
    assert len(fleet.replicas()) == 3
    page.locator("#done .done-message", has_text="scaled from 2 to 3").wait_for()
    page.get_by_role("spinbutton", name="Replicas").fill("2")
    page.get_by_role("button", name="Scale").click()
    page.locator("#service-figures .desired", has_text="2").wait_for()


def test_an_alert_shows_its_decision_and_reason_on_the_timeline(page: Any, fleet: Fleet) -> None:
    """Alertmanager's webhook as it sends it; the page, already open, shows the decision
    with its reason, its alert and the policy state without a reload."""
    if len(fleet.replicas()) != 2:
        fleet.api.request("PATCH", f"/v1/services/{SERVICE}", json={"replicas": 2})
    wait_for(
        "2 healthy replicas",
        lambda: [r["state"] for r in fleet.replicas()] == ["healthy", "healthy"],
        timeout=60,
    )
    sign_in(page, fleet.controller.admin_token)
    page.wait_for_url("**/ui/")
    page.goto(f"/ui/services/{SERVICE}")
    page.evaluate("window.__notReloaded = true")
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fingerprint = uuid.uuid4().hex[:16]
    alert = am_alert(
        "ServiceRequestRateHigh", service=SERVICE, starts_at=started, fingerprint=fingerprint
    )
    fleet.api.request("POST", "/v1/alerts", json=am_payload(alert))
    # The scale-out itself (the timer may re-evaluate the firing alert and refuse a
    # second step for its cooldown: another decision of the same episode).
    acted = f"scale {SERVICE} from 2 to 3"  # the ok decision's words, not a refusal's
    decision = page.locator("#events-body tr.event-decision", has_text=acted).first
    decision.wait_for()
    assert decision.locator(".state-word").inner_text() == "ok"
    assert "rule load-scale-out" in decision.inner_text()  # the reason: the rule that acted
    details = decision.locator(".event-data").inner_text()
    assert f"ServiceRequestRateHigh firing (service {SERVICE})" in details
    assert "cooldown" in details  # the policy state it met
    page.locator("#service-figures .desired", has_text="3").wait_for()
    assert page.evaluate("window.__notReloaded === true")
    shots = os.environ.get("ORCHESTRIFY_UI_SCREENSHOTS")
    if shots:
        page.screenshot(path=str(Path(shots) / "ui-service.png"), full_page=True)
    # The alerts page: the episode, firing, with the decision it led to.
    page.get_by_role("link", name="Alerts").click()
    episode = page.locator("#firing tr.episode", has_text="ServiceRequestRateHigh").first
    episode.locator(".decision", has_text=acted).first.wait_for()
    if shots:
        page.screenshot(path=str(Path(shots) / "ui-alerts.png"), full_page=True)
    ended = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    resolved = am_alert(
        "ServiceRequestRateHigh",
        status="resolved",
        service=SERVICE,
        starts_at=started,
        ends_at=ended,
        fingerprint=fingerprint,
    )
    fleet.api.request("POST", "/v1/alerts", json=am_payload(resolved))
    page.locator("#resolved tr.episode", has_text="ServiceRequestRateHigh").first.wait_for()
    fleet.api.request("PATCH", f"/v1/services/{SERVICE}", json={"replicas": 2})


def test_a_forged_form_without_its_csrf_token_is_refused(page: Any, fleet: Fleet) -> None:
    sign_in(page, fleet.controller.admin_token)
    page.wait_for_url("**/ui/")
    first = fleet.names[0]
    # The browser's own session cookie, but no CSRF token: what another site could send.
    resp = page.request.post(f"/ui/nodes/{fleet.node_ids[first]}/drain", form={"x": "1"})
    assert resp.status == 403
    nodes = {n["name"]: n for n in fleet.api.get("/v1/nodes")}
    assert nodes[first]["state"] != "draining"
