"""The status page's services: the list, a service's page (figures, replicas, event
timeline), scaling from it, their live long-polls and the pages' navigation; on both
store engines."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from orchestrify.controller.ui import pages
from tests.api.conftest import reconcile, register, service_spec
from tests.api.test_ui import CSP, _browser, _csrf, _signed_in
from tests.api.test_ui import api as api  # the controller without its reconciler

_VERSION = re.compile(r'data-version="([^"]+)"')


def _create(api: TestClient, name: str = "web", **kw: Any) -> dict[str, Any]:
    resp = api.post("/v1/services", json=service_spec(name, **kw))
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _service(api: TestClient, name: str = "web") -> dict[str, Any]:
    resp = api.get(f"/v1/services/{name}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _events(api: TestClient, name: str = "web") -> list[dict[str, Any]]:
    resp = api.get("/v1/events", params={"service": name})
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()
    return rows


def _version(page: httpx.Response) -> str:
    found = _VERSION.search(page.text)
    assert found is not None, page.text
    return found.group(1)


def _no_inline_code(text: str) -> None:
    assert "<script>" not in text and "style=" not in text


# --- navigation ------------------------------------------------------------------------
def test_every_page_links_the_others_and_marks_the_current_one(api: TestClient) -> None:
    _create(api)
    browser = _signed_in(api)
    fleet = browser.get("/ui/").text
    assert '<a href="/ui/" aria-current="page">Fleet</a>' in fleet
    assert '<a href="/ui/services">Services</a>' in fleet
    services = browser.get("/ui/services").text
    assert '<a href="/ui/">Fleet</a>' in services
    assert '<a href="/ui/services" aria-current="page">Services</a>' in services
    detail = browser.get("/ui/services/web").text
    assert '<a href="/ui/services" aria-current="location">Services</a>' in detail
    for text in (fleet, services, detail):
        assert '<nav class="pages" aria-label="Pages">' in text
        assert 'action="/ui/logout"' in text


# --- the list ---------------------------------------------------------------------------
def test_the_services_page_lists_each_service_with_its_figures(api: TestClient) -> None:
    register(api, "w1")
    _create(api, replicas=2, min_replicas=1, max_replicas=5, policy={"latency_target_ms": 250})
    _create(api, "api", replicas=0, min_replicas=0, max_replicas=3)
    page = _signed_in(api).get("/ui/services")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["cache-control"] == "no-store"
    text = page.text
    row = text[text.index('id="service-link-web"') :]
    row = row[: row.index("</tr>")]
    assert 'href="/ui/services/web"' in row and ">web</a>" in row
    assert '<span class="healthy">0</span> / <span class="desired">2</span>' in row
    assert '<td class="num">1</td>' in row and '<td class="num">5</td>' in row
    assert '<span class="state-word">completed</span>' in row
    assert '<td class="num up-to-date">0/2</td>' in row  # as `service ls` shows UP-TO-DATE
    assert '<td class="num latency-target">250 ms</td>' in row
    assert 'id="service-link-api"' in text
    assert 'data-live="/ui/live/services"' in text
    _no_inline_code(text)


def test_the_services_page_says_when_there_is_no_service(api: TestClient) -> None:
    text = _signed_in(api).get("/ui/services").text
    assert "No service yet" in text and 'id="service-link-' not in text


def test_the_services_pages_need_a_session(api: TestClient) -> None:
    _create(api)
    browser = _browser(api)
    for path in ("/ui/services", "/ui/services/web"):
        resp = browser.get(path, follow_redirects=False)
        assert resp.status_code == 303
        assert resp.headers["location"] == f"/ui/login?next={path}"


# --- a service's page -------------------------------------------------------------------
def test_a_service_page_shows_its_replicas_and_its_events_newest_first(
    api: TestClient,
) -> None:
    register(api, "w1")
    _create(api, replicas=2, max_replicas=5)
    reconcile(api)
    assert api.patch("/v1/services/web", json={"replicas": 3}).status_code == 200
    reconcile(api)
    replicas = api.get("/v1/replicas", params={"service": "web"}).json()
    assert len(replicas) == 3
    page = _signed_in(api).get("/ui/services/web")
    assert page.status_code == 200 and "<h1>Service web</h1>" in page.text
    assert page.headers["content-security-policy"] == CSP
    text = page.text
    assert '<span class="healthy">0</span> / <span class="desired">3</span>' in text
    table = text[text.index('<tbody id="replicas-body">') : text.index('<tbody id="events-body">')]
    for replica in replicas:
        assert f"<code>{replica['id']}</code>" in table
    assert table.count("<td>w1</td>") == 3
    assert table.count('<span class="state-word">assigned</span>') == 3
    assert table.count("<td>run</td>") == 3
    timeline = text[text.index('<tbody id="events-body">') :]
    scaled = timeline.index("service web scaled from 2 to 3")
    created = timeline.index("service web created with 2 replica(s)")
    assert scaled < created  # newest first
    ids = [
        int(i) for i in re.findall(r'<tr class="event event-[a-z_]+" id="event-(\d+)"', timeline)
    ]
    assert ids == sorted(ids, reverse=True)
    assert {e["id"] for e in _events(api)} == set(ids)
    # A scale event's data: where it went from and to.
    assert "<div><dt>from</dt><dd>2</dd></div>" in timeline
    assert "<div><dt>to</dt><dd>3</dd></div>" in timeline
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT[0-9:.]+\+00:00">', timeline)
    _no_inline_code(text)


def test_a_decision_shows_its_data_escaped(api: TestClient) -> None:
    """What explains a decision (the alert, the policy state) is the event's data: shown
    key by key, and nothing in it (an alert's labels are the sender's) is markup."""
    _create(api)
    store = api.app.state.controller.store  # type: ignore[attr-defined]
    store.record_event(
        "refused to scale out <script>alert(1)</script>",
        kind="decision",
        service="web",
        action="scale_out",
        outcome="refused",
        reason="cooldown <b>60 s</b>",
        data={
            "alert": {"name": "<img src=x onerror=alert(2)>", "status": "firing"},
            "cooldown_s": 60,
            "<i>key</i>": "<u>value</u>",
            "refusal": None,
        },
    )
    text = _signed_in(api).get("/ui/services/web").text
    timeline = text[text.index('<tbody id="events-body">') :]
    row = timeline[: timeline.index("</tr>")]  # the newest: this decision
    assert 'class="event event-decision"' in row
    assert '<span class="state-word">refused</span>' in row
    assert "refused to scale out &lt;script&gt;alert(1)&lt;/script&gt;" in row
    assert "cooldown &lt;b&gt;60 s&lt;/b&gt;" in row
    assert "<div><dt>cooldown_s</dt><dd>60</dd></div>" in row
    assert "<dt>&lt;i&gt;key&lt;/i&gt;</dt><dd>&lt;u&gt;value&lt;/u&gt;</dd>" in row
    assert "<dt>alert</dt><dd>&lt;img src=x onerror=alert(2)&gt; firing</dd>" in row
    assert "<div><dt>refusal</dt><dd>—</dd></div>" in row
    for raw in ("<script>", "<b>60", "<i>key", "<u>value", "<img"):
        assert raw not in text


def test_an_unknown_service_is_the_404_page(api: TestClient) -> None:
    browser = _signed_in(api)
    resp = browser.get("/ui/services/nope")
    assert resp.status_code == 404 and resp.headers["content-type"].startswith("text/html")
    assert "no service named &#39;nope&#39;" in resp.text
    assert resp.headers["content-security-policy"] == CSP


@pytest.mark.parametrize("name", ["Not_A_Name", "%3Cb%3Ex", "a" * 64, "-web"])
def test_a_name_no_service_can_have_is_a_404_without_a_store_read(
    api: TestClient, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    browser = _signed_in(api)
    csrf = _csrf(browser.get("/ui/"))
    views = api.app.state.controller.views  # type: ignore[attr-defined]

    async def unread(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("read the store for a name no service can have")

    for method in ("services", "replicas", "service_events"):
        monkeypatch.setattr(views, method, unread)
    resp = browser.get(f"/ui/services/{name}")
    assert resp.status_code == 404, resp.text
    assert "<b>" not in resp.text
    resp = browser.post(f"/ui/services/{name}/scale", data={"csrf": csrf, "replicas": "2"})
    assert resp.status_code == 404


# --- scaling from the page --------------------------------------------------------------
def test_scaling_from_the_form_does_what_the_api_does(api: TestClient) -> None:
    register(api, "w1")
    _create(api, replicas=1, max_replicas=5)
    browser = _signed_in(api)
    page = browser.get("/ui/services/web").text
    form = page[page.index('<form method="post" action="/ui/services/web/scale"') :]
    form = form[: form.index("</form>")]
    assert "data-confirm=" in form
    assert '<label for="replicas-input">Replicas</label>' in form
    assert 'id="replicas-input" name="replicas" type="number" min="0"' in form
    assert 'name="csrf"' in form and ">Scale</button>" in form
    resp = browser.post(
        "/ui/services/web/scale",
        data={"csrf": _csrf(browser.get("/ui/services/web")), "replicas": "3"},
        follow_redirects=False,
    )
    assert _service(api)["replicas"] == 3
    scaled = [e for e in _events(api) if e["action"] == "scale"]
    assert len(scaled) == 1 and scaled[0]["data"] == {"from": 1, "to": 3}
    location = f"/ui/services/web?done={scaled[0]['id']}"  # the page shows the scale's event
    assert resp.status_code == 303 and resp.headers["location"] == location
    assert scaled[0]["reason"] == "requested from the status page"
    page = browser.get("/ui/services/web").text
    assert '<span class="desired">3</span>' in page
    assert "service web scaled from 1 to 3: requested from the status page" in page
    reconcile(api)
    assert len(api.get("/v1/replicas", params={"service": "web"}).json()) == 3


def test_a_scale_without_the_csrf_token_does_nothing(api: TestClient) -> None:
    _create(api, replicas=1, max_replicas=5)
    browser = _signed_in(api)
    other = _signed_in(api)  # another session: its token is not this one's
    for data in (
        {"replicas": "3"},
        {"replicas": "3", "csrf": "0" * 64},
        {"replicas": "3", "csrf": _csrf(other.get("/ui/"))},
    ):
        resp = browser.post("/ui/services/web/scale", data=data, follow_redirects=False)
        assert resp.status_code == 403, data
        assert "CSRF" in resp.text
    resp = _browser(api).post(
        "/ui/services/web/scale", data={"replicas": "3"}, follow_redirects=False
    )
    assert resp.status_code == 303 and resp.headers["location"].startswith("/ui/login")
    assert _service(api)["replicas"] == 1
    assert not [e for e in _events(api) if e["action"] == "scale"]


@pytest.mark.parametrize(
    ("replicas", "says"),
    [
        ("-1", "greater than or equal to 0"),
        ("abc", "&#39;abc&#39; is not a whole number"),
        ("2.5", "is not a whole number"),
        ("", "enter the number of replicas"),
        ("6", "must be within min_replicas..max_replicas (1..5)"),
        ("0", "must be within min_replicas..max_replicas (1..5)"),
        ("99999999999", "replicas"),
        ("<b>7</b>", "&lt;b&gt;7&lt;/b&gt;"),
    ],
)
def test_a_count_that_is_not_valid_is_a_422_page_and_changes_nothing(
    api: TestClient, replicas: str, says: str
) -> None:
    _create(api, replicas=2, min_replicas=1, max_replicas=5)
    browser = _signed_in(api)
    csrf = _csrf(browser.get("/ui/services/web"))
    resp = browser.post(
        "/ui/services/web/scale",
        data={"csrf": csrf, "replicas": replicas},
        follow_redirects=False,
    )
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("text/html")
    assert "replicas" in resp.text and says in resp.text
    assert "Nothing was changed." in resp.text
    assert 'href="/ui/services/web"' in resp.text  # back to the service
    assert _service(api)["replicas"] == 2
    assert not [e for e in _events(api) if e["action"] == "scale"]


def test_a_count_above_the_controller_s_ceiling_is_a_422_page(
    make_client: Any,
) -> None:
    api = make_client(run_reconciler=False, max_replicas_per_service=4)
    _create(api, replicas=1, max_replicas=4)
    browser = _signed_in(api)
    csrf = _csrf(browser.get("/ui/services/web"))
    resp = browser.post("/ui/services/web/scale", data={"csrf": csrf, "replicas": "5"})
    assert resp.status_code == 422 and "max_replicas_per_service" in resp.text
    assert _service(api)["replicas"] == 1


def test_scaling_an_unknown_service_is_a_404_page(api: TestClient) -> None:
    browser = _signed_in(api)
    csrf = _csrf(browser.get("/ui/services"))
    resp = browser.post("/ui/services/nope/scale", data={"csrf": csrf, "replicas": "2"})
    assert resp.status_code == 404 and "no service named &#39;nope&#39;" in resp.text


# --- live -------------------------------------------------------------------------------
def _live(browser: TestClient, path: str, version: str | None) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    resp = browser.get(path, params={"v": version} if version is not None else None)
    return resp, time.monotonic() - start


def test_a_service_s_live_poll_answers_at_once_when_behind(api: TestClient) -> None:
    _create(api, replicas=2, max_replicas=5)
    browser = _signed_in(api)
    for stale in (None, "1-2-3", "garbage"):
        resp, took = _live(browser, "/ui/live/services/web", stale)
        assert resp.status_code == 200 and took < 2.0
        assert resp.text.lstrip().startswith('<dl id="service-figures"')
        assert '<div id="service-history">' in resp.text
        assert '<span class="desired">2</span>' in resp.text
        assert "<h1>" not in resp.text and 'name="csrf"' not in resp.text  # the parts only
        assert re.fullmatch(r"\d+-\d+-\d+", resp.headers[pages.VERSION_HEADER])
        assert resp.headers["content-security-policy"] == CSP
    resp, took = _live(browser, "/ui/live/services", None)
    assert resp.status_code == 200 and took < 2.0
    assert resp.text.lstrip().startswith('<tbody id="services-body">')
    assert 'id="service-link-web"' in resp.text


def test_a_service_s_live_poll_waits_when_current_and_answers_after_a_scale(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _create(api, replicas=2, max_replicas=5)
    monkeypatch.setattr(pages, "LIVE_WAIT_S", 1.5)
    browser = _signed_in(api)
    current = _version(browser.get("/ui/services/web"))
    resp, took = _live(browser, "/ui/live/services/web", current)
    assert resp.status_code == 200 and took >= 1.3  # nothing moved: at its deadline
    assert resp.headers[pages.VERSION_HEADER] == current
    # A scale through the API wakes it at once, with the new count and its event.
    monkeypatch.setattr(pages, "LIVE_WAIT_S", 20.0)
    later = threading.Timer(0.3, lambda: api.patch("/v1/services/web", json={"replicas": 4}))
    later.start()
    try:
        resp, took = _live(browser, "/ui/live/services/web", current)
    finally:
        later.join()
    assert resp.status_code == 200 and 0.2 < took < 2.0
    assert '<span class="desired">4</span>' in resp.text
    assert "service web scaled from 2 to 4" in resp.text
    assert resp.headers[pages.VERSION_HEADER] != current
    # The list's poll, current since that scale, waits for the next change too.
    listing = _version(browser.get("/ui/services"))
    later = threading.Timer(0.3, lambda: _create(api, "late"))
    later.start()
    try:
        resp, took = _live(browser, "/ui/live/services", listing)
    finally:
        later.join()
    assert resp.status_code == 200 and 0.2 < took < 2.0
    assert 'id="service-link-late"' in resp.text


def test_a_new_event_alone_wakes_a_service_s_live_poll(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _create(api)
    monkeypatch.setattr(pages, "LIVE_WAIT_S", 20.0)
    browser = _signed_in(api)
    current = _version(browser.get("/ui/services/web"))
    store = api.app.state.controller.store  # type: ignore[attr-defined]
    later = threading.Timer(
        0.3,
        lambda: store.record_event(
            "scale-out refused: cooldown", kind="decision", service="web", outcome="refused"
        ),
    )
    later.start()
    try:
        resp, took = _live(browser, "/ui/live/services/web", current)
    finally:
        later.join()
    assert resp.status_code == 200 and took < 2.0
    assert "scale-out refused: cooldown" in resp.text


def test_the_services_live_polls_need_a_session_and_a_service(api: TestClient) -> None:
    _create(api)
    for path in ("/ui/live/services", "/ui/live/services/web"):
        resp = _browser(api).get(path, params={"v": "1-2-3"}, follow_redirects=False)
        assert resp.status_code == 401, path
        assert "services-body" not in resp.text and "service-figures" not in resp.text
    browser = _signed_in(api)
    for name in ("nope", "Not_A_Name"):
        resp = browser.get(f"/ui/live/services/{name}", params={"v": "1-2-3"})
        assert resp.status_code == 404, name


def test_the_script_refreshes_every_live_page_by_its_data_attributes(api: TestClient) -> None:
    js = _browser(api).get("/ui/static/ui.js").text
    assert 'querySelector("[data-live]")' in js and "data-version" in js


def test_the_openapi_document_still_has_no_ui_path(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert paths and not [p for p in paths if p.startswith("/ui")]
    assert "/v1/services/{name}" in paths


def test_the_pages_long_polls_stay_out_of_the_api_latency_histogram(api: TestClient) -> None:
    """A live poll waits up to LIVE_WAIT_S by design: counted as API latency it would
    look like a slow API. Pages are counted; their long-polls are not."""
    browser = _signed_in(api)
    assert api.post("/v1/services", json=service_spec(name="web")).status_code == 201
    for path in ("/ui/live/services?v=bad", "/ui/live/services/web?v=bad", "/ui/fleet/live?v=bad"):
        assert browser.get(path).status_code == 200, path
    assert browser.get("/ui/services").status_code == 200
    registry = api.app.state.controller.metrics.registry  # type: ignore[attr-defined]
    routes = {
        s.labels["route"]
        for family in registry.collect()
        if family.name == "orchestrify_api_request_duration_seconds"
        for s in family.samples
    }
    assert "/ui/services" in routes
    assert not {r for r in routes if "live" in r}, routes
