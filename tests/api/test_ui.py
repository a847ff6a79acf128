"""The web status page under /ui/: sign-in, sessions, CSRF, the fleet table, drain and
activate from it, its live long-poll, its static files; on both store engines."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from orchestrify.controller.ui import pages
from orchestrify.controller.ui.session import SESSION_COOKIE, SessionSigner
from tests.api.conftest import ADMIN, reconcile, register, service_spec, wait_for

CSP = "default-src 'self'; frame-ancestors 'none'"
_CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def _browser(client: TestClient, *, https: bool = False) -> TestClient:
    """The app behind ``client`` as a browser reaches it: no bearer token, no cookies."""
    base_url = "https://testserver" if https else "http://testserver"
    browser = TestClient(client.app, base_url=base_url)  # started by ``client`` already
    browser.portal = client.portal  # type: ignore[attr-defined]
    return browser


@pytest.fixture
def api(make_client: Callable[..., TestClient]) -> TestClient:
    """A controller without its background reconciler: the tests place replicas with
    ``reconcile`` when they want them, and nothing else moves the change feed."""
    return make_client(run_reconciler=False)


def _csrf(page: httpx.Response) -> str:
    found = _CSRF_FIELD.search(page.text)
    assert found is not None, page.text
    return found.group(1)


def _login_form(browser: TestClient, next_path: str | None = None) -> str:
    page = browser.get("/ui/login", params={"next": next_path} if next_path else None)
    assert page.status_code == 200, page.text
    return _csrf(page)


def _login(browser: TestClient, token: str = ADMIN) -> httpx.Response:
    csrf = _login_form(browser)
    return browser.post("/ui/login", data={"token": token, "csrf": csrf}, follow_redirects=False)


def _signed_in(api: TestClient) -> TestClient:
    browser = _browser(api)
    resp = _login(browser)
    assert resp.status_code == 303, resp.text
    return browser


def _set_cookie(resp: httpx.Response, name: str) -> str:
    found = [c for c in resp.headers.get_list("set-cookie") if c.startswith(f"{name}=")]
    assert len(found) == 1, resp.headers.get_list("set-cookie")
    return found[0]


def _attributes(cookie: str) -> dict[str, str]:
    parts = [p.strip() for p in cookie.split(";")[1:]]
    return {p.split("=", 1)[0].lower(): (p.split("=", 1)[1] if "=" in p else "") for p in parts}


def _nodes(api: TestClient) -> dict[str, dict[str, Any]]:
    resp = api.get("/v1/nodes")
    assert resp.status_code == 200, resp.text
    return {n["name"]: n for n in resp.json()}


# --- sessions -------------------------------------------------------------------------
def test_without_a_session_every_page_redirects_to_the_login(api: TestClient) -> None:
    browser = _browser(api)
    resp = browser.get("/ui/", follow_redirects=False)
    assert resp.status_code == 303
    assert resp.headers["location"] == "/ui/login?next=/ui/"
    resp = browser.get("/ui", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/"
    # The API's bearer token is no session.
    resp = api.get("/ui/", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/ui/login")


@pytest.mark.parametrize(
    "cookie",
    [
        "forged",
        "a" * 32 + ".9999999999." + "0" * 64,  # the shape, not the signature
        SessionSigner("another-admin-token").issue(now=time.time(), lifetime_s=3600)[1],
        SessionSigner(ADMIN).issue(now=time.time() - 7200, lifetime_s=3600)[1],  # expired
        "x" * 5000,
    ],
    ids=["garbage", "unsigned", "other-token", "expired", "huge"],
)
def test_a_cookie_that_is_not_a_valid_session_redirects_to_the_login(
    api: TestClient, cookie: str
) -> None:
    browser = _browser(api)
    browser.cookies.set(SESSION_COOKIE, cookie)
    resp = browser.get("/ui/", follow_redirects=False)
    assert resp.status_code == 303
    assert resp.headers["location"] == "/ui/login?next=/ui/"


def test_a_right_token_signs_in_with_a_strict_cookie(api: TestClient) -> None:
    browser = _browser(api)
    resp = _login(browser)
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/"
    attrs = _attributes(_set_cookie(resp, SESSION_COOKIE))
    assert {"httponly", "samesite", "path", "max-age"} <= attrs.keys()
    assert attrs["samesite"] == "Strict" and attrs["path"] == "/ui"
    assert attrs["max-age"] == "28800"  # ui_session_s' default: 8 h
    assert "secure" not in attrs  # plain HTTP: a browser would drop a Secure cookie
    page = browser.get("/ui/")
    assert page.status_code == 200 and "<h1>Fleet</h1>" in page.text


def test_the_session_lasts_ui_session_s_and_is_secure_over_tls(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    from tests.tls import make_ca, make_server_pair

    pair = make_server_pair(make_ca(tmp_path), tmp_path)
    api = make_client(
        run_reconciler=False,
        ui_session_s=3600,
        tls_cert=pair.cert_file,
        tls_key=pair.key_file,
    )
    browser = _browser(api, https=True)  # a client sends a Secure cookie over HTTPS only
    login_page = browser.get("/ui/login")
    assert "secure" in _attributes(_set_cookie(login_page, "orchestrify_csrf"))
    resp = browser.post(
        "/ui/login", data={"token": ADMIN, "csrf": _csrf(login_page)}, follow_redirects=False
    )
    attrs = _attributes(_set_cookie(resp, SESSION_COOKIE))
    assert attrs["max-age"] == "3600" and "secure" in attrs


def test_the_cookie_builder_marks_secure_only_when_asked() -> None:
    from orchestrify.controller.ui.session import clear_cookie, set_cookie

    plain = set_cookie("c", "v", path="/ui", max_age=60, secure=False)
    assert plain == "c=v; Path=/ui; Max-Age=60; HttpOnly; SameSite=Strict"
    assert set_cookie("c", "v", path="/ui", max_age=60, secure=True).endswith("; Secure")
    assert "Max-Age=0" in clear_cookie("c", path="/ui", secure=False)


def test_signing_out_ends_the_session(api: TestClient) -> None:
    browser = _signed_in(api)
    csrf = _csrf(browser.get("/ui/"))
    refused = browser.post("/ui/logout", data={"csrf": "wrong"}, follow_redirects=False)
    assert refused.status_code == 403
    assert browser.get("/ui/", follow_redirects=False).status_code == 200
    resp = browser.post("/ui/logout", data={"csrf": csrf}, follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/login"
    assert _attributes(_set_cookie(resp, SESSION_COOKIE))["max-age"] == "0"
    assert browser.get("/ui/", follow_redirects=False).status_code == 303


def test_a_new_admin_token_ends_every_session(make_client: Callable[..., TestClient]) -> None:
    """A restart with another admin token (same store): the old cookie is no session."""
    first = make_client(run_reconciler=False)
    browser = _signed_in(first)
    cookie = browser.cookies.get(SESSION_COOKIE)
    assert cookie
    again = make_client(run_reconciler=False, token="a-new-admin-token")
    other = _browser(again)
    other.cookies.set(SESSION_COOKIE, cookie)
    resp = other.get("/ui/", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/ui/login")
    assert _login(_browser(again), "a-new-admin-token").status_code == 303


# --- sign-in --------------------------------------------------------------------------
def test_a_wrong_token_is_401_with_the_login_form_again(api: TestClient) -> None:
    browser = _browser(api)
    resp = _login(browser, "not-it")
    assert resp.status_code == 401
    assert "That is not the admin token." in resp.text
    assert 'name="token"' in resp.text and SESSION_COOKIE not in resp.headers.get("set-cookie", "")
    assert browser.get("/ui/", follow_redirects=False).status_code == 303


def test_the_sixth_wrong_token_in_a_minute_is_429_and_even_the_right_one_waits(
    api: TestClient,
) -> None:
    browser = _browser(api)
    csrf = _login_form(browser)
    for _ in range(5):
        resp = browser.post("/ui/login", data={"token": "guess", "csrf": csrf})
        assert resp.status_code == 401, resp.text
    resp = browser.post("/ui/login", data={"token": "guess", "csrf": csrf})
    assert resp.status_code == 429
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert "Too many wrong tokens" in resp.text
    resp = browser.post("/ui/login", data={"token": ADMIN, "csrf": csrf}, follow_redirects=False)
    assert resp.status_code == 429  # not checked while the address is limited
    assert SESSION_COOKIE not in resp.headers.get("set-cookie", "")


def test_the_login_form_needs_its_csrf_cookie_and_field(api: TestClient) -> None:
    browser = _browser(api)
    # No cookie at all (the form was not loaded from this site).
    resp = browser.post("/ui/login", data={"token": ADMIN, "csrf": "x" * 43})
    assert resp.status_code == 403 and "CSRF" in resp.text
    csrf = _login_form(browser)
    # Another first character (the last one of 43 base64 characters carries 4 bits: a
    # replaced "A" was the same token one time in 16).
    other = ("B" if csrf[0] == "A" else "A") + csrf[1:]
    for data in ({"token": ADMIN}, {"token": ADMIN, "csrf": other}):
        resp = browser.post("/ui/login", data=data, follow_redirects=False)
        assert resp.status_code == 403, data
        assert SESSION_COOKIE not in resp.headers.get("set-cookie", "")


@pytest.mark.parametrize(
    ("next_path", "location"),
    [
        ("/ui/", "/ui/"),
        ("/ui/fleet/live", "/ui/fleet/live"),
        ("https://evil.example/", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("/ui//evil.example", "/ui/"),
        ("/\\evil.example", "/ui/"),
    ],
)
def test_a_sign_in_goes_on_only_to_a_page_of_the_ui(
    api: TestClient, next_path: str, location: str
) -> None:
    browser = _browser(api)
    csrf = _login_form(browser, next_path)
    resp = browser.post(
        "/ui/login",
        data={"token": ADMIN, "csrf": csrf, "next": next_path},
        follow_redirects=False,
    )
    assert resp.status_code == 303 and resp.headers["location"] == location


def test_no_form_input_is_a_500(api: TestClient) -> None:
    browser = _browser(api)
    csrf = _login_form(browser)
    node_id, _ = register(api, "w1")
    huge = "t" * 100_000
    form = "application/x-www-form-urlencoded"
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("/ui/login", {"data": {"token": huge, "csrf": csrf}}, 413),
        ("/ui/login", {"data": {"csrf": csrf}}, 400),  # no token
        ("/ui/login", {"data": {"token": "", "csrf": csrf}}, 400),
        (
            "/ui/login",
            {"content": f"token=%ff%fe&csrf={csrf}", "headers": {"content-type": form}},
            400,
        ),
        (
            "/ui/login",
            {"content": f"csrf={csrf}&csrf={csrf}&token=x", "headers": {"content-type": form}},
            400,
        ),
        ("/ui/login", {"json": {"token": ADMIN, "csrf": csrf}}, 415),
        ("/ui/login", {"content": b"\xff\xfe\x00", "headers": {"content-type": form}}, 400),
        ("/ui/login", {"content": "&".join(["a=1"] * 100), "headers": {"content-type": form}}, 400),
        # A lone surrogate, as UTF-8 would encode it: not UTF-8.
        (
            "/ui/login",
            {"content": f"token=%ED%BF%BF&csrf={csrf}", "headers": {"content-type": form}},
            400,
        ),
    ]
    for path, kw, status in cases:
        resp = browser.post(path, follow_redirects=False, **kw)
        assert resp.status_code == status, (path, kw.keys(), resp.text[:300])
        assert resp.headers["content-type"].startswith("text/html")
    signed = _signed_in(api)
    fleet_csrf = _csrf(signed.get("/ui/"))
    long_id = "n" * 5000
    for path, kw, status in [
        (f"/ui/nodes/{node_id}/drain", {"data": {"csrf": huge}}, 413),
        (f"/ui/nodes/{node_id}/drain", {"json": {"csrf": fleet_csrf}}, 415),
        (f"/ui/nodes/{long_id}/drain", {"data": {"csrf": fleet_csrf}}, 404),
        ("/ui/nodes/%00%ff/activate", {"data": {"csrf": fleet_csrf}}, 404),
        ("/ui/fleet/live?v=" + "9" * 5000, {}, 200),
    ]:
        method = "GET" if "live" in path else "POST"
        resp = signed.request(method, path, follow_redirects=False, **kw)
        assert resp.status_code == status, (path, resp.text[:300])
    assert _nodes(api)["w1"]["state"] == "ready"


# --- the fleet ------------------------------------------------------------------------
def test_the_fleet_lists_nodes_with_their_state_and_replicas(api: TestClient) -> None:
    node_id, node_token = register(api, "w1")
    register(api, "<b>w2</b>")
    api.post(
        f"/v1/nodes/{node_id}/heartbeat",
        json={
            "cpu_percent": 12.5,
            "memory_total": 8 * 2**30,
            "memory_free": 2 * 2**30,
            "disk_free": 50 * 2**30,
        },
        headers={"Authorization": f"Bearer {node_token}"},
    ).raise_for_status()
    assert api.post("/v1/services", json=service_spec(replicas=2)).status_code == 201
    reconcile(api)
    replicas = api.get("/v1/replicas", params={"service": "web"}).json()
    assert len(replicas) == 2
    page = _signed_in(api).get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    text = page.text
    assert '<span class="node-name">w1</span>' in text
    assert '<span class="state-word">ready</span>' in text
    assert "13 %" in text or "12 %" in text  # the heartbeat's figures, not yet flushed
    assert "6 GiB / 8 GiB" in text and "50 GiB" in text
    for replica in replicas:
        short = replica["id"].removeprefix("web-")
        assert f"web · {short}" in text
    assert text.count('class="chip-state">assigned<') == 2
    assert text.count('class="chip-desired">desired run<') == 2
    # Escaped, never markup; and no inline script or style anywhere.
    assert "&lt;b&gt;w2&lt;/b&gt;" in text and "<b>w2</b>" not in text
    assert "<script>" not in text and "style=" not in text
    assert f'action="/ui/nodes/{node_id}/drain"' in text


def test_drain_and_activate_from_the_page(api: TestClient) -> None:
    node_id, _ = register(api, "w1")
    browser = _signed_in(api)
    csrf = _csrf(browser.get("/ui/"))
    resp = browser.post(f"/ui/nodes/{node_id}/drain", data={"csrf": csrf}, follow_redirects=False)
    assert resp.status_code == 303
    # Back to the fleet, naming the event the drain wrote: the page shows it at the top.
    location = resp.headers["location"]
    assert re.fullmatch(r"/ui/\?done=[0-9]+", location), location
    (event,) = [
        e for e in api.get("/v1/events", params={"kind": "node"}).json() if e["action"] == "drain"
    ]
    assert location == f"/ui/?done={event['id']}"
    assert _nodes(api)["w1"]["state"] == "draining"
    page = browser.get(location).text
    assert '<span class="done-message">node w1: draining</span>' in page
    assert "<strong>Done:</strong>" not in browser.get("/ui/").text
    assert 'class="node node-draining"' in page
    assert '<span class="state-word">draining</span>' in page
    assert f'action="/ui/nodes/{node_id}/activate"' in page
    resp = browser.post(
        f"/ui/nodes/{node_id}/activate", data={"csrf": csrf}, follow_redirects=False
    )
    assert resp.status_code == 303
    assert _nodes(api)["w1"]["state"] == "ready"
    page = browser.get(resp.headers["location"]).text
    assert '<span class="done-message">node w1: active again</span>' in page


def test_a_drain_without_the_csrf_token_does_nothing(api: TestClient) -> None:
    node_id, _ = register(api, "w1")
    browser = _signed_in(api)
    other = _signed_in(api)  # another session: its token is not this one's
    for data in ({}, {"csrf": "0" * 64}, {"csrf": _csrf(other.get("/ui/"))}):
        resp = browser.post(f"/ui/nodes/{node_id}/drain", data=data, follow_redirects=False)
        assert resp.status_code == 403, data
        assert "CSRF" in resp.text
    assert _nodes(api)["w1"]["state"] == "ready"
    # Without a session: to the sign-in page, nothing done.
    resp = _browser(api).post(f"/ui/nodes/{node_id}/drain", data={}, follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/ui/login")
    assert _nodes(api)["w1"]["state"] == "ready"


def test_draining_an_unknown_node_is_a_404_page(api: TestClient) -> None:
    browser = _signed_in(api)
    csrf = _csrf(browser.get("/ui/"))
    resp = browser.post("/ui/nodes/nope/drain", data={"csrf": csrf}, follow_redirects=False)
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("text/html")
    assert "no node with id &#39;nope&#39;" in resp.text


# --- live -----------------------------------------------------------------------------
def _live(browser: TestClient, version: str | None) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    resp = browser.get("/ui/fleet/live", params={"v": version} if version is not None else None)
    return resp, time.monotonic() - start


def test_the_live_poll_answers_at_once_when_behind(api: TestClient) -> None:
    browser = _signed_in(api)
    register(api, "w1")
    for stale in (None, "1-2-3", "garbage"):
        resp, took = _live(browser, stale)
        assert resp.status_code == 200 and took < 2.0
        assert resp.text.lstrip().startswith('<tbody id="fleet-body">')
        assert "w1" in resp.text
        assert re.fullmatch(r"\d+-\d+-\d+", resp.headers[pages.VERSION_HEADER])
        assert resp.headers["content-security-policy"] == CSP


def test_the_live_poll_waits_when_current_and_answers_after_a_change(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "LIVE_WAIT_S", 1.5)
    browser = _signed_in(api)
    page = browser.get("/ui/")
    current = re.search(r'data-version="([^"]+)"', page.text)
    assert current is not None
    resp, took = _live(browser, current.group(1))
    assert resp.status_code == 200 and took >= 1.3  # nothing moved: answered at its deadline
    assert resp.headers[pages.VERSION_HEADER] == current.group(1)
    # A node registering from elsewhere wakes it at once.
    monkeypatch.setattr(pages, "LIVE_WAIT_S", 20.0)
    later = threading.Timer(0.3, lambda: register(api, "w-late"))
    later.start()
    try:
        resp, took = _live(browser, current.group(1))
    finally:
        later.join()
    assert resp.status_code == 200 and 0.2 < took < 2.0
    assert "w-late" in resp.text
    assert resp.headers[pages.VERSION_HEADER] != current.group(1)


def test_the_live_poll_shows_a_drain_and_placed_replicas_within_two_seconds(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "LIVE_WAIT_S", 20.0)
    node_id, _ = register(api, "w1")
    assert api.post("/v1/services", json=service_spec(replicas=1)).status_code == 201
    browser = _signed_in(api)
    version = _live(browser, None)[0].headers[pages.VERSION_HEADER]
    placing = threading.Timer(0.2, lambda: reconcile(api))
    placing.start()
    try:
        resp, took = _live(browser, version)
    finally:
        placing.join()
    assert took < 2.0 and "web · " in resp.text
    version = resp.headers[pages.VERSION_HEADER]
    draining = threading.Timer(0.2, lambda: api.post(f"/v1/nodes/{node_id}/drain"))
    draining.start()
    try:
        resp, took = _live(browser, version)
    finally:
        draining.join()
    assert took < 2.0 and '<span class="state-word">draining</span>' in resp.text


def test_the_live_poll_needs_a_session(api: TestClient) -> None:
    resp = _browser(api).get("/ui/fleet/live", params={"v": "1-2-3"}, follow_redirects=False)
    assert resp.status_code == 401
    assert "fleet-body" not in resp.text


# --- static files, other paths, the API document ----------------------------------------
def test_static_files_by_name_only(api: TestClient) -> None:
    browser = _browser(api)  # no session needed: the sign-in page uses the CSS
    js = browser.get("/ui/static/ui.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "fleet/live" in js.text
    css = browser.get("/ui/static/ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert css.headers["x-content-type-options"] == "nosniff"
    for path in (
        "/ui/static/nope.js",
        "/ui/static/routes.py",
        "/ui/static/..%2Froutes.py",
        "/ui/static/../routes.py",
        "/ui/static/%2e%2e/session.py",
        "/ui/static/ui.js.bak",
        "/ui/templates/base.html",
    ):
        resp = browser.get(path)
        assert resp.status_code == 404, path
        assert "import" not in resp.text and "{%" not in resp.text


def test_the_openapi_document_has_no_ui_path(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert paths and not [p for p in paths if p.startswith("/ui")]


def test_the_fleet_page_waits_for_a_replica_placed_by_the_reconciler(
    make_client: Callable[..., TestClient],
) -> None:
    """With the background reconciler, as a controller runs: a service's replica shows
    up on the page without anyone calling a reconcile."""
    api = make_client()
    register(api, "w1")
    assert api.post("/v1/services", json=service_spec(replicas=1)).status_code == 201
    browser = _signed_in(api)
    wait_for(lambda: "web · " in browser.get("/ui/").text, what="a chip of web", timeout=10)
