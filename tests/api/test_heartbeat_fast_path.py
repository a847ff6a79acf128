"""The heartbeat fast path (orchestrify/controller/fastpath.py) answers every request as
the framework's route does: the same status, headers and body, with and without it, on
each store engine; and it does answer the plain heartbeats itself."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from orchestrify.controller.app import create_app
from orchestrify.controller.fastpath import HeartbeatFastPath
from orchestrify.protocol import HEADER_PROTOCOL
from tests.api.conftest import AUTH, bearer, register, settings

Apps = Callable[[bool], TestClient]


@pytest.fixture
def apps(request: pytest.FixtureRequest, tmp_path: Path, store_url: str) -> Iterator[Apps]:
    """``apps(fast)``: a controller app with or without the fast path, each on an empty
    store of the engine under test (the one before is closed first)."""
    opened: list[TestClient] = []

    def make(fast: bool) -> TestClient:
        for client in opened:
            client.__exit__(None, None, None)
        opened.clear()
        data_dir = tmp_path / ("fast" if fast else "framework")
        data_dir.mkdir(exist_ok=True)
        if store_url.startswith("sqlite"):
            url = f"sqlite:///{data_dir / 'orchestrify.db'}"
        else:
            server = request.getfixturevalue("postgres")
            url = server.url(server.emptied_database())
        app = create_app(
            settings(data_dir, database_url=url),
            run_reconciler=False,
            fast_heartbeats=fast,
        )
        client = TestClient(app, headers=AUTH)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def _fast_path(client: TestClient) -> HeartbeatFastPath:
    app: FastAPI = client.app  # type: ignore[assignment]
    stack = app.middleware_stack
    while stack is not None and not isinstance(stack, HeartbeatFastPath):
        stack = getattr(stack, "app", None)
    assert stack is not None, "the fast path is not in the app's middleware stack"
    return stack


# Each case: a request relative to a registered node ("{id}": its id, "{other}": another
# node's id; token "node", "other", "admin", "wrong" or None).
Case = dict[str, Any]
CASES: list[tuple[str, Case, bool]] = [
    ("plain", {"json": {"cpu_percent": 12.5, "memory_free": 2**30}}, True),
    ("empty object", {"json": {}}, True),
    ("address moves", {"json": {"address": "10.1.2.3"}}, True),
    ("json with charset", {"content": b"{}", "type": "application/json; charset=utf-8"}, True),
    ("no content type", {"content": b"{}", "type": None}, False),
    ("+json type", {"content": b"{}", "type": "application/x+json"}, True),
    ("admin token", {"json": {}, "token": "admin"}, False),
    ("no token", {"json": {}, "token": None}, False),
    ("wrong token", {"json": {}, "token": "wrong"}, False),
    ("another node's token", {"json": {}, "token": "other"}, False),
    ("basic scheme", {"json": {}, "auth": "Basic bm9kZTpub2Rl"}, False),
    ("unknown node", {"json": {}, "path": "/v1/nodes/n-unknown/heartbeat"}, False),
    ("out of range", {"json": {"cpu_percent": 1e300}}, False),
    ("unknown field", {"json": {"cpu": 1}}, False),
    ("bad address", {"json": {"address": "a b"}}, False),
    ("not json", {"content": b"{nope", "type": "application/json"}, False),
    ("a list", {"json": [1, 2]}, False),
    ("empty body", {"content": b"", "type": "application/json"}, False),
    ("NaN", {"content": b'{"cpu_percent": NaN}', "type": "application/json"}, False),
    ("lone surrogate", {"content": b'{"address": "\\udfff"}', "type": "application/json"}, False),
    ("text body", {"content": b"{}", "type": "text/plain"}, False),
    ("query string", {"json": {}, "query": "x=1"}, False),
    ("old protocol", {"json": {}, "headers": {HEADER_PROTOCOL: "0"}}, False),
    ("too large", {"content": b"{" + b" " * (2 * 2**20) + b"}", "type": "application/json"}, False),
    ("GET", {"method": "GET"}, False),
]


def _send(client: TestClient, case: Case) -> httpx.Response:
    node_id, node_token = register(client, "w1")
    other_id, other_token = register(client, "w2")
    tokens = {"node": node_token, "other": other_token, "admin": AUTH["Authorization"][7:]}
    tokens["wrong"] = "not-a-token"
    path = case.get("path", "/v1/nodes/{id}/heartbeat").format(id=node_id, other=other_id)
    if case.get("query"):
        path += "?" + case["query"]
    headers: dict[str, str] = {"Authorization": ""}  # the client's default (admin) removed
    token = case.get("token", "node")
    if "auth" in case:
        headers["Authorization"] = case["auth"]
    elif token is not None:
        headers.update(bearer(tokens[token]))
    headers.update(case.get("headers", {}))
    kwargs: dict[str, Any] = {}
    if "json" in case:
        kwargs["json"] = case["json"]
    elif "content" in case:
        kwargs["content"] = case["content"]
        if case.get("type") is not None:
            headers["Content-Type"] = case["type"]
    request = client.build_request(case.get("method", "POST"), path, headers=headers, **kwargs)
    if not headers["Authorization"]:
        del request.headers["Authorization"]
    if "content" in case and case.get("type") is None:
        request.headers.pop("Content-Type", None)
    return client.send(request)


_VOLATILE = re.compile(rb'"(id|last_heartbeat|created_at)":"[^"]*"|n-[0-9a-f]{6,}')


def _comparable(resp: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [(k, v) for k, v in resp.headers.multi_items() if k not in ("date", "server")]
    if resp.status_code != 200:
        return resp.status_code, headers, _VOLATILE.sub(b"X", resp.content)
    # Same length: the node's id, times and the other node's ids only move characters.
    body = _VOLATILE.sub(b"X", resp.content)
    return resp.status_code, [(k, v) for k, v in headers if k != "content-length"], body


@pytest.mark.parametrize(
    ("case", "fast"), [(c, f) for _, c, f in CASES], ids=[n for n, _, _ in CASES]
)
def test_every_answer_is_the_routes_own(apps: Apps, case: Case, fast: bool) -> None:
    framework = _comparable(_send(apps(False), case))
    client = apps(True)
    path = _fast_path(client)
    before = path.answered
    assert _comparable(_send(client, case)) == framework
    # Answered by the fast path only in the plain cases; the others went to the app.
    assert path.answered - before == (1 if fast else 0)


def test_a_fast_heartbeat_is_in_the_node_list_and_the_latency_histogram(apps: Apps) -> None:
    client = apps(True)
    node_id, token = register(client, "w1")
    resp = client.post(
        f"/v1/nodes/{node_id}/heartbeat", json={"replica_count": 7}, headers=bearer(token)
    )
    assert resp.status_code == 200, resp.text
    assert _fast_path(client).answered == 1
    assert resp.json()["replica_count"] == 7
    listed = {n["id"]: n for n in client.get("/v1/nodes").json()}
    assert listed[node_id]["replica_count"] == 7
    state = client.app.state.controller  # type: ignore[attr-defined]
    seen = state.metrics.registry.get_sample_value(
        "orchestrify_api_request_duration_seconds_count",
        {"method": "POST", "route": "/v1/nodes/{node_id}/heartbeat", "status": "200"},
    )
    assert seen == 1
