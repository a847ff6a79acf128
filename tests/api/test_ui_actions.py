"""The status page's actions show the event they wrote, and a service rolls back from its
page (the API's checks and store call); on both store engines."""

from __future__ import annotations

import re
import threading
from typing import Any

from fastapi.testclient import TestClient

from tests.api.conftest import register, service_spec
from tests.api.test_ui import _csrf, _signed_in
from tests.api.test_ui import api as api  # the controller without its reconciler

_DONE = re.compile(r"/ui/services/web\?done=([0-9]+)")


def _service(api: TestClient) -> dict[str, Any]:
    body: dict[str, Any] = api.get("/v1/services/web").json()
    return body


def test_a_service_never_updated_has_nothing_to_roll_back(api: TestClient) -> None:
    assert api.post("/v1/services", json=service_spec(image="demo:1")).status_code == 201
    browser = _signed_in(api)
    page = browser.get("/ui/services/web")
    assert "Nothing to roll back to" in page.text and "rollback-button" not in page.text
    resp = browser.post("/ui/services/web/rollback", data={"csrf": _csrf(page)})
    assert resp.status_code == 409
    assert "no previous spec to roll back to" in resp.text
    assert _service(api)["generation"] == 1


def test_roll_back_from_the_page_restores_the_image_and_shows_its_event(api: TestClient) -> None:
    register(api, "w1")
    assert api.post("/v1/services", json=service_spec(image="demo:1")).status_code == 201
    assert api.patch("/v1/services/web", json={"image": "demo:2"}).status_code == 200
    browser = _signed_in(api)
    page = browser.get("/ui/services/web")
    assert 'id="rollback-button">Roll back to generation 1</button>' in page.text
    assert "image <code>demo:1</code>" in page.text
    assert 'data-confirm="Roll service web back to the spec of generation 1 (demo:1)?' in page.text
    # Without the session's CSRF token: refused, nothing changed.
    forged = browser.post("/ui/services/web/rollback", data={"csrf": "x" * 43})
    assert forged.status_code == 403 and _service(api)["image"] == "demo:2"
    resp = browser.post(
        "/ui/services/web/rollback", data={"csrf": _csrf(page)}, follow_redirects=False
    )
    assert resp.status_code == 303
    found = _DONE.fullmatch(resp.headers["location"])
    assert found is not None, resp.headers["location"]
    svc = _service(api)
    assert (svc["image"], svc["generation"]) == ("demo:1", 3)
    event = next(
        e
        for e in api.get("/v1/events", params={"service": "web"}).json()
        if e["action"] == "rollback"
    )
    assert event["id"] == int(found.group(1))
    assert event["reason"] == "requested from the status page"
    shown = browser.get(resp.headers["location"]).text
    assert '<span class="done-message">service web rolled back to the spec of generation 1' in shown
    # Rolling back again returns to the update (the API's rule), offered as generation 2.
    assert 'id="rollback-button">Roll back to generation 2</button>' in shown


def test_scale_names_its_own_event_whatever_else_is_written_meanwhile(api: TestClient) -> None:
    register(api, "w1")
    assert (
        api.post("/v1/services", json=service_spec(replicas=1, max_replicas=5)).status_code == 201
    )
    store = api.app.state.controller.store  # type: ignore[attr-defined]
    stop = threading.Event()

    def other_writes() -> None:  # another writer's events, interleaved with the scale's
        while not stop.is_set():
            store.record_event("something else", kind="action", service="web", action="scale")

    writer = threading.Thread(target=other_writes)
    writer.start()
    try:
        browser = _signed_in(api)
        page = browser.get("/ui/services/web")
        resp = browser.post(
            "/ui/services/web/scale",
            data={"csrf": _csrf(page), "replicas": "3"},
            follow_redirects=False,
        )
    finally:
        stop.set()
        writer.join()
    found = _DONE.fullmatch(resp.headers["location"])
    assert found is not None, resp.headers["location"]
    shown = browser.get(resp.headers["location"]).text
    assert (
        '<span class="done-message">service web scaled from 1 to 3: '
        "requested from the status page</span>" in shown
    )


def test_a_done_parameter_that_names_nothing_shows_no_notice(api: TestClient) -> None:
    assert api.post("/v1/services", json=service_spec()).status_code == 201
    browser = _signed_in(api)
    for value in ("abc", "-1", "99999999", "1" * 40, "1 OR 1=1", ""):
        for path in ("/ui/", "/ui/services/web"):
            page = browser.get(path, params={"done": value})
            assert page.status_code == 200, (path, value)
            assert "<strong>Done:</strong>" not in page.text
