"""What the app refuses around the status page's own routes (a method no page takes, a
body over max_body_bytes, a value FastAPI's validation refuses, an old protocol, an
error escaping a page's route) is answered under /ui with the page's HTML error page,
its security headers and a message naming what was wrong; the same refusals of /v1
stay the API's JSON. On both store engines."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from orchestrify.controller.ui import routes
from orchestrify.errors import Conflict, InvalidSpec
from orchestrify.protocol import HEADER_PROTOCOL, PROTOCOL_VERSION
from tests.api.conftest import register
from tests.api.test_ui import CSP, _browser, _csrf, _signed_in
from tests.api.test_ui import api as api  # the controller without its reconciler

MIB = 1024 * 1024  # the app's max_body_bytes by default


def _html_error(resp: httpx.Response, status: int, *words: str) -> str:
    """``resp`` is the status page's error page for ``status``, saying ``words``."""
    assert resp.status_code == status, resp.text[:300]
    assert resp.headers["content-type"].startswith("text/html"), resp.headers
    assert resp.headers["content-security-policy"] == CSP
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["cache-control"] == "no-store"
    text = resp.text
    assert text.startswith("<!doctype html>") and f"HTTP status {status}." in text, text
    assert '<p class="notice" role="alert">' in text and '"detail"' not in text, text
    for word in words:
        assert word in text, (word, text)
    # Linked back to the page, signed in or not.
    assert 'href="/ui/login"' in text and 'href="/ui/"' in text
    return text


def _json_error(resp: httpx.Response, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text[:300]
    assert resp.headers["content-type"] == "application/json", resp.headers
    assert "content-security-policy" not in resp.headers
    body: dict[str, object] = resp.json()
    assert "detail" in body
    return body


# --- 405 ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/ui/", "GET"),
        ("POST", "/ui/", "GET"),
        ("DELETE", "/ui", "GET"),
        ("PATCH", "/ui/login", "GET, POST"),
        ("DELETE", "/ui/services/web", "GET"),
        ("PUT", "/ui/nodes/n1/drain", "GET, POST"),  # GET: the catch-all 404's
        ("PUT", "/ui/no/such/page", "GET"),
    ],
)
def test_a_method_no_page_takes_is_a_405_page_with_allow(
    api: TestClient, method: str, path: str, allow: str
) -> None:
    resp = _browser(api).request(method, path, follow_redirects=False)
    _html_error(resp, 405, f"does not take a {method} request", f"it takes {allow}")
    assert resp.headers["allow"] == allow


def test_the_api_405_stays_json(api: TestClient) -> None:
    resp = api.put("/v1/nodes")
    body = _json_error(resp, 405)
    assert body == {"detail": "Method Not Allowed", "message": "Method Not Allowed"}
    assert resp.headers["allow"] == "GET"
    # A path that only begins like the page's is not the page's.
    assert _json_error(api.get("/uix"), 404) == {"detail": "Not Found", "message": "Not Found"}


# --- 413 ------------------------------------------------------------------------------
def _chunks(total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"a" * 65536
        sent += 65536


def test_a_body_over_max_body_bytes_is_a_413_page(api: TestClient) -> None:
    browser = _browser(api)
    csrf = _csrf(browser.get("/ui/login"))
    form = {"content-type": "application/x-www-form-urlencoded"}
    # Refused on its Content-Length, before it is read...
    resp = browser.post("/ui/login", content=f"csrf={csrf}&token=" + "t" * (MIB + 1), headers=form)
    _html_error(resp, 413, f"larger than {MIB} bytes", "max_body_bytes", "nothing was done")
    # ...and without one (chunked), as soon as what streamed in passes the cap.
    signed = _signed_in(api)
    resp = signed.post("/ui/nodes/n1/drain", content=_chunks(2 * MIB), headers=form)
    assert "content-length" not in resp.request.headers
    _html_error(resp, 413, f"larger than {MIB} bytes")


def test_the_api_413_stays_json(api: TestClient) -> None:
    resp = api.post(
        "/v1/services", content=b"[" + b" " * MIB + b"]", headers={"content-type": "text/x"}
    )
    body = _json_error(resp, 413)
    message = f"request body larger than {MIB} bytes (the controller's max_body_bytes)"
    assert body == {"detail": message, "message": message}


# --- 422 from FastAPI's validation -------------------------------------------------------
def test_a_value_the_validation_refuses_is_a_422_page_naming_it(api: TestClient) -> None:
    """No page's route takes a typed parameter today (they read their forms with
    read_form): a probe route under /ui stands for the first one that will. POST, so
    the catch-all GET route does not take its path first."""

    async def probe(count: int) -> dict[str, int]:
        return {"count": count}

    app = api.app
    assert isinstance(app, FastAPI)
    app.add_api_route("/ui/probe-422", probe, methods=["POST"], include_in_schema=False)
    resp = _browser(api).post("/ui/probe-422", params={"count": "many"})
    _html_error(resp, 422, "Not a valid value: count: ", "valid integer")
    resp = _browser(api).post("/ui/probe-422", params={"count": "3"})
    assert resp.status_code == 200 and resp.json() == {"count": 3}


def test_the_api_422_stays_json(api: TestClient) -> None:
    resp = api.get("/v1/events", params={"limit": "many"})
    body = _json_error(resp, 422)
    assert body["message"] == "limit: Input should be a valid integer, written as one"


# --- 426 ------------------------------------------------------------------------------
def test_an_old_protocol_is_a_426_page_naming_both_versions(api: TestClient) -> None:
    old = {HEADER_PROTOCOL: "1", "X-Orchestrify-Version": "0.0.9"}
    resp = _browser(api).get("/ui/login", headers=old)
    _html_error(
        resp, 426, "client (0.0.9) speaks protocol 1", f"speaks protocol {PROTOCOL_VERSION}"
    )
    assert resp.headers[HEADER_PROTOCOL] == str(PROTOCOL_VERSION)
    body = _json_error(api.get("/v1/nodes", headers=old), 426)
    assert "client (0.0.9) speaks protocol 1" in str(body["message"])


# --- an error escaping a page's route -----------------------------------------------------
@pytest.mark.parametrize(
    ("error", "status", "words"),
    [
        (Conflict("node w1 is being removed"), 409, ("node w1 is being removed",)),
        (InvalidSpec("must be a node", field="node_id"), 422, ("node_id: must be a node",)),
    ],
    ids=["conflict", "invalid"],
)
def test_an_orchestrify_error_from_a_page_is_its_status_as_a_page(
    api: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    status: int,
    words: tuple[str, ...],
) -> None:
    node_id, _ = register(api, "w1")
    signed = _signed_in(api)
    csrf = _csrf(signed.get("/ui/"))
    store = api.app.state.controller.store  # type: ignore[attr-defined]

    def refuse(*_args: object, **_kw: object) -> None:
        raise error

    monkeypatch.setattr(store, "set_node_draining", refuse)
    resp = signed.post(f"/ui/nodes/{node_id}/drain", data={"csrf": csrf}, follow_redirects=False)
    _html_error(resp, status, *words)
    # The API's route, on the same store call, answers its JSON.
    body = _json_error(api.post(f"/v1/nodes/{node_id}/drain"), status)
    assert str(error) in str(body["detail"]) or body["message"] == str(error)


def test_a_bug_in_a_page_is_a_500_page(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kw: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(routes, "fleet_rows", broken)
    signed = _signed_in(api)
    # As a server answers: the error is logged and answered, not raised to the client.
    browser = TestClient(api.app, raise_server_exceptions=False)
    browser.portal = api.portal  # type: ignore[attr-defined]
    browser.cookies = signed.cookies
    text = _html_error(browser.get("/ui/"), 500, "internal error (RuntimeError)")
    assert "a bug" not in text  # the log has the details, not the page
