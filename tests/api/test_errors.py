"""401, 404, 409 and 422 across the API; a rejected request changes nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from orchestrify.controller.app import create_app
from tests.api.conftest import AUTH, JOIN, bearer, register, service_spec, settings

OPEN = {"/healthz", "/metrics"}
# FastAPI's own documentation pages. docs/protocol.md says only /healthz and /metrics are
# open; these are open too (reported, not changed here: the CLI advertises /docs).
FASTAPI_DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _api_routes() -> list[tuple[str, str]]:
    app = create_app(settings(Path("/nonexistent")), run_reconciler=False)
    return sorted(
        (method.upper(), path)
        for path, methods in app.openapi()["paths"].items()
        for method in methods
    )


ROUTES = _api_routes()
PROTECTED = [(m, p) for m, p in ROUTES if p not in OPEN]


def test_routes_were_found() -> None:
    assert ("POST", "/v1/services") in PROTECTED and ("GET", "/healthz") in ROUTES
    assert len(PROTECTED) >= 15


AUTH_CASES = [
    (method, path, token)
    for method, path in PROTECTED
    for token in (None, "wrong-token", JOIN)
    if not (token == JOIN and path == "/v1/nodes/register")  # the join token is valid there
]


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for the many read-only auth checks (an app per case is slow)."""
    app = create_app(settings(tmp_path_factory.mktemp("auth")), run_reconciler=False)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path", "token"), AUTH_CASES, ids=[f"{m} {p} {t}" for m, p, t in AUTH_CASES]
)
def test_protected_endpoints_need_a_valid_token(
    shared_api: TestClient, method: str, path: str, token: str | None
) -> None:
    url = re.sub(r"\{[^}]+\}", "x", path)
    headers = {"Authorization": ""} if token is None else bearer(token)
    kw: dict[str, Any] = {"json": {}} if method in {"POST", "PATCH"} else {}
    resp = shared_api.request(method, url, headers=headers, **kw)
    assert resp.status_code == 401, resp.text
    assert resp.headers.get("www-authenticate") == "Bearer"


def test_only_health_metrics_and_docs_are_open(api: TestClient) -> None:
    for path in OPEN:
        assert api.get(path, headers={"Authorization": ""}).status_code == 200
    open_paths = {
        getattr(r, "path", None)
        for r in api.app.routes  # type: ignore[attr-defined]
    } - {None}
    assert not (open_paths - FASTAPI_DOCS - {p for _, p in ROUTES})


def test_node_token_only_works_for_its_own_node(api: TestClient) -> None:
    a_id, a_token = register(api, "a")
    b_id, _ = register(api, "b")
    assert api.post(f"/v1/nodes/{a_id}/heartbeat", json={}, headers=bearer(a_token)).is_success
    assert (
        api.post(f"/v1/nodes/{b_id}/heartbeat", json={}, headers=bearer(a_token)).status_code == 401
    )
    assert api.get(f"/v1/nodes/{b_id}/assignments", headers=bearer(a_token)).status_code == 401
    assert api.get("/v1/services", headers=bearer(a_token)).status_code == 401
    # The admin token works for any node.
    assert api.post(f"/v1/nodes/{b_id}/heartbeat", json={}, headers=AUTH).is_success


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/services/nope"),
        ("PATCH", "/v1/services/nope"),
        ("DELETE", "/v1/services/nope"),
        ("GET", "/v1/nodes/nope"),
        ("POST", "/v1/nodes/nope/drain"),
        ("POST", "/v1/nodes/nope/activate"),
        ("DELETE", "/v1/nodes/nope"),
        ("POST", "/v1/nodes/nope/heartbeat"),
        ("GET", "/v1/nodes/nope/assignments"),
        ("POST", "/v1/nodes/nope/replicas"),
        ("GET", "/v1/replicas/nope"),
        ("POST", "/v1/replicas/nope/stop"),
        ("GET", "/v1/replicas?node=nope"),
    ],
)
def test_unknown_id_or_name_is_404(api: TestClient, method: str, path: str) -> None:
    body: dict[str, Any] = (
        {"replicas": []} if path.endswith("/replicas") and method == "POST" else {}
    )
    kw: dict[str, Any] = {"json": body} if method in {"POST", "PATCH"} else {}
    resp = api.request(method, path, **kw)
    assert resp.status_code == 404, resp.text
    assert "nope" in resp.json()["detail"]


def test_name_conflict_is_409_and_keeps_the_first(api: TestClient) -> None:
    assert (
        api.post("/v1/services", json=service_spec(replicas=0, min_replicas=0)).status_code == 201
    )
    resp = api.post("/v1/services", json=service_spec(image="redis:7"))
    assert resp.status_code == 409
    assert "already exists" in resp.json()["detail"]
    assert api.get("/v1/services/web").json()["image"] == "nginx:1.27"


def test_node_name_taken_by_a_live_node_is_409(api: TestClient) -> None:
    register(api, "worker-1")
    resp = api.post(
        "/v1/nodes/register", json={"name": "worker-1", "address": "10.0.0.9"}, headers=AUTH
    )
    assert resp.status_code == 409


INVALID = [
    ("image", {"image": "Not A/Valid::image"}),
    ("image", {"image": "UPPER/case"}),
    ("port", {"port": 0}),
    ("port", {"port": 65536}),
    ("host_port", {"host_port": 70000}),
    ("env", {"env": {"1BAD": "x"}}),
    ("env", {"env": {"has-dash": "x"}}),
    ("replicas", {"replicas": 11, "max_replicas": 10}),
    ("replicas", {"replicas": 0, "min_replicas": 1}),
    ("min_replicas", {"replicas": 3, "min_replicas": 5, "max_replicas": 4}),
    ("name", {"name": "Bad_Name"}),
    ("stop_grace_s", {"stop_grace_s": -1}),
    ("stop_grace_s", {"stop_grace_s": 3601}),
    ("log_driver", {"log_driver": "splunk"}),
    ("log_opts", {"log_opts": {"max-szie": "10m"}}),
    ("log_opts", {"log_driver": "gelf"}),  # gelf needs gelf-address
    ("log_opts", {"log_opts": {f"k{n}": "v" for n in range(33)}}),
    ("log_opts", {"log_opts": {"tag": 5}}),
]


def _assert_names_field(resp: Any, field: str) -> None:
    assert resp.status_code == 422, resp.text
    body = resp.json()
    locs = [d["loc"] for d in body["detail"]]
    assert any(field in loc for loc in locs), locs
    assert field in body["message"]


@pytest.mark.parametrize(
    ("field", "bad"), INVALID, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID)]
)
def test_invalid_spec_is_422_naming_the_field_and_stores_nothing(
    api: TestClient, field: str, bad: dict[str, Any]
) -> None:
    resp = api.post("/v1/services", json=service_spec(**bad))
    _assert_names_field(resp, field)
    assert api.get("/v1/services").json() == []
    assert api.get("/v1/events", params={"kind": "action"}).json() == []


PATCHES = [
    ("image", {"image": "bad image"}),
    ("port", {"port": 70000}),
    ("env", {"env": {"9X": "1"}}),
    ("replicas", {"replicas": 50, "max_replicas": 10}),
    ("min_replicas", {"min_replicas": 20, "max_replicas": 10}),
    ("max_replicas", {"max_replicas": -1}),
    ("stop_grace_s", {"stop_grace_s": 4000}),
    ("log_driver", {"log_driver": "none"}),
    ("log_opts", {"log_driver": "syslog", "log_opts": {"gelf-address": "udp://h:1"}}),
]


@pytest.mark.parametrize(("field", "bad"), PATCHES, ids=[f for f, _ in PATCHES])
def test_rejected_patch_changes_nothing(api: TestClient, field: str, bad: dict[str, Any]) -> None:
    assert (
        api.post("/v1/services", json=service_spec(replicas=0, min_replicas=0)).status_code == 201
    )
    before = api.get("/v1/services/web").json()
    events_before = api.get("/v1/events").json()
    resp = api.patch("/v1/services/web", json=bad)
    _assert_names_field(resp, field)
    assert api.get("/v1/services/web").json() == before
    assert api.get("/v1/events").json() == events_before


@pytest.mark.parametrize(
    ("field", "patch"), [("replicas", {"replicas": 50}), ("min_replicas", {"min_replicas": 20})]
)
def test_a_patch_clashing_with_the_stored_counts_is_409_naming_the_field(
    api: TestClient, field: str, patch: dict[str, Any]
) -> None:
    """The body is valid on its own (a service with max_replicas 100 takes it): it clashes
    with what is stored, a 409, not a 422 for a request the schema allows."""
    api.post("/v1/services", json=service_spec(replicas=1))  # max_replicas 10
    before = api.get("/v1/services/web").json()
    resp = api.patch("/v1/services/web", json=patch)
    assert resp.status_code == 409, resp.text
    assert resp.json()["message"].startswith(f"{field}:")
    assert api.get("/v1/services/web").json() == before


def test_unknown_field_is_rejected_by_name(api: TestClient) -> None:
    resp = api.post("/v1/services", json=service_spec(replica=3))
    _assert_names_field(resp, "replica")
