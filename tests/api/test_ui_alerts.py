"""The status page's alerts: episodes firing and resolved with the decisions they led to,
and the same decisions on a service's timeline with their alert and policy state; on
both store engines."""

from __future__ import annotations

import html
import re
from typing import Any

from fastapi.testclient import TestClient

from tests.alerting.payloads import am_alert, am_payload
from tests.api.conftest import reconcile, register, replicas_of, service_spec
from tests.api.test_ui import CSP, _browser, _signed_in
from tests.api.test_ui import api as api  # the controller without its reconciler

_VERSION = re.compile(r'data-version="([^"]+)"')


def _deploy(api: TestClient, **policy: Any) -> None:
    register(api, "w1")
    register(api, "w2")
    spec = service_spec(replicas=1, max_replicas=4, policy={"cooldown_s": 600, **policy})
    assert api.post("/v1/services", json=spec).status_code == 201
    reconcile(api)
    for replica in replicas_of(api, "web"):  # what the agent reports once it is up
        report = {"id": replica["id"], "state": "healthy", "address": "127.0.0.1:1"}
        resp = api.post(f"/v1/nodes/{replica['node']}/replicas", json={"replicas": [report]})
        assert resp.status_code == 204, resp.text


def _alert(api: TestClient, status: str = "firing", **kw: Any) -> None:
    body = am_payload(am_alert("ServiceRequestRateHigh", status=status, service="web", **kw))
    resp = api.post("/v1/alerts", json=body)
    assert resp.status_code == 200, resp.text


def _section(page: str, title: str) -> str:
    """The part of the page from the heading ``title`` to the next table's end."""
    start = page.index(f">{title}")
    return page[start : page.index("</table>", start)]


def test_an_episode_shows_with_the_decisions_it_led_to_then_moves_to_resolved(
    api: TestClient,
) -> None:
    _deploy(api)
    _alert(api)  # scale out: 1 -> 2
    # Another replica's alert of the same service, within the cooldown: refused.
    _alert(api, fingerprint="0000aaaa1111bbbb", replica="r-2")
    browser = _signed_in(api)
    page = browser.get("/ui/alerts")
    assert page.status_code == 200 and page.headers["content-security-policy"] == CSP
    assert '<a href="/ui/alerts" aria-current="page">Alerts</a>' in page.text
    firing = _section(page.text, "Firing (2)")
    assert firing.count('<tr class="episode episode-firing">') == 2
    assert "ServiceRequestRateHigh on web" in firing  # the summary annotation
    assert '<a href="/ui/services/web"' in firing
    assert '<span class="state-word">ok</span>' in firing
    assert "scale_out" in firing and "rule " in firing
    assert '<span class="decision-reason">cooldown</span>' in firing
    assert '<span class="state-word">refused</span>' in firing
    assert "No alert has resolved yet." in page.text

    _alert(api, status="resolved")
    page = browser.get("/ui/alerts")
    assert "Firing (1)" in page.text
    resolved = _section(page.text, "Resolved (the latest 100)")
    assert '<tr class="episode episode-resolved">' in resolved
    assert '<span class="state-word">resolved</span>' in resolved
    assert "scale_out" in resolved  # its decision stays with it


def test_a_decision_on_the_timeline_names_its_alert_and_the_policy_state(api: TestClient) -> None:
    _deploy(api)
    _alert(api)
    _alert(api, fingerprint="0000aaaa1111bbbb", replica="r-2")
    page = _signed_in(api).get("/ui/services/web").text
    began = "episode began 2026-11-21 21:59:30 UTC"
    assert f"ServiceRequestRateHigh firing (service web), {began}" in page
    assert "ServiceRequestRateHigh firing (service web, replica r-2)" in page
    # The refusal met the first decision's cooldown, and says until when it runs.
    assert re.search(r"cooldown 600 s, last action [0-9: -]+UTC, until [0-9: -]+UTC", page)
    assert "cooldown 600 s, no action yet" in page  # what the first decision met
    assert "baseline 1 replicas" in page


def test_hostile_labels_are_text(api: TestClient) -> None:
    body = am_payload(am_alert("<script>alert(1)</script>", service="<b>x</b>", node="n\"'><i>"))
    assert api.post("/v1/alerts", json=body).status_code == 200
    page = _signed_in(api).get("/ui/alerts").text
    assert "<script>alert(1)" not in page and "<b>x</b>" not in page and "<i>" not in page
    assert html.escape("<script>alert(1)</script>") in page
    assert '<a href="/ui/services/' not in page  # not a service name: no link


def test_the_alerts_page_and_its_live_poll_need_a_session(api: TestClient) -> None:
    browser = _browser(api)
    resp = browser.get("/ui/alerts", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/login?next=/ui/alerts"
    assert browser.get("/ui/live/alerts", params={"v": "1"}).status_code == 401


def test_the_live_poll_answers_the_lists_once_an_alert_arrives(api: TestClient) -> None:
    _deploy(api)
    browser = _signed_in(api)
    version = _VERSION.search(browser.get("/ui/alerts").text)
    assert version is not None
    _alert(api)
    resp = browser.get("/ui/live/alerts", params={"v": version.group(1)})
    assert resp.status_code == 200
    assert resp.text.lstrip().startswith('<div id="alerts-lists">')
    assert "ServiceRequestRateHigh" in resp.text and "scale_out" in resp.text
