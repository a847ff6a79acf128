"""GET /v1/services/{name}/logs against agents that misbehave: what a node's agent
answers is data from another host, and nothing it sends yields a 500 or a broken
NDJSON line. (The real agent and engine: tests/integration/test_service_logs.py.)"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from orchestrify.controller.logs import agent_key
from tests.api.conftest import JOIN, bearer, service_spec, wait_for

GOOD_ID = "a" * 64


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxI", kind, len(payload)) + payload


class FakeAgent:
    """An agent's /v1/ answering what the test says, checking the node's key."""

    def __init__(self) -> None:
        self.listing: Any = []
        self.body = b""
        self.status = 200
        self.keys: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.keys.append(self.headers.get("Authorization", ""))
                if self.path.startswith("/v1/containers?"):
                    data = json.dumps(fake.listing).encode()
                    ctype = "application/json"
                    status = 200
                else:
                    data, ctype, status = fake.body, "application/octet-stream", fake.status
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    fake = FakeAgent()
    yield fake
    fake.close()


def _node_with_a_replica(api: TestClient, agent_url: str) -> str:
    reg = api.post(
        "/v1/nodes/register",
        json={"name": "w1", "address": "127.0.0.1", "agent_url": agent_url},
        headers=bearer(JOIN),
    )
    assert reg.status_code == 200, reg.text
    assert api.post("/v1/services", json=service_spec(replicas=1)).status_code == 201
    wait_for(lambda: api.get("/v1/replicas").json(), what="the replica placed")
    node_id: str = reg.json()["node_id"]
    assert reg.json()["agent_key"] == agent_key(
        api.app.state.controller.store.agent_secret, node_id
    )  # type: ignore[attr-defined]
    return node_id


def _key(api: TestClient, node_id: str) -> str:
    return agent_key(api.app.state.controller.store.agent_secret, node_id)  # type: ignore[attr-defined]


def _ndjson(api: TestClient, path: str = "/v1/services/web/logs", **params: Any) -> list[Any]:
    resp = api.get(path, params=params)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in resp.text.splitlines()]


def test_lines_come_escaped_and_the_node_key_is_sent(api: TestClient, agent: FakeAgent) -> None:
    node_id = _node_with_a_replica(api, agent.url)
    agent.listing = [
        {"id": GOOD_ID, "replica": "web-x", "state": "exited", "log_driver": "json-file"},
        {"id": "../../etc", "replica": "evil"},  # not a container id: ignored
        "not an object",
        {"id": 5},
    ]
    agent.body = (
        frame(1, b'2026-12-02T01:00:00.1Z plain "quoted" \xff\xfe\n')
        + frame(2, b"2026-12-02T01:00:00.2Z on stderr\n")
        + frame(1, b"2026-12-02T01:00:00.3Z cut off")[:-3]  # the stream ends mid-frame
    )
    got = _ndjson(api)
    assert [(o["stream"], o["line"]) for o in got] == [
        ("stdout", 'plain "quoted" \\xff\\xfe'),
        ("stderr", "on stderr"),
    ]
    assert all(o["replica"] == "web-x" and o["replaced"] is True for o in got)
    assert set(agent.keys) == {
        f"Bearer {_key(api, node_id)}"
    }  # the node's key, never the admin token


@pytest.mark.parametrize(
    ("listing", "body", "status", "says"),
    [
        ({"not": "a list"}, b"", 200, "not a list"),
        ([{"id": GOOD_ID, "replica": "web-x"}], b'{"detail": "nope"}', 503, "nope"),
        (
            [{"id": GOOD_ID, "replica": "web-x", "log_driver": "gelf"}],
            b'{"detail": "no reading", "log_driver": "gelf", "log_address": "udp://h:1"}',
            409,
            "udp://h:1",
        ),
    ],
)
def test_what_cannot_be_read_is_a_notice_never_a_500(
    api: TestClient, agent: FakeAgent, listing: Any, body: bytes, status: int, says: str
) -> None:
    _node_with_a_replica(api, agent.url)
    agent.listing, agent.body, agent.status = listing, body, status
    got = _ndjson(api)
    assert any(says in o.get("notice", "") for o in got), got


@pytest.mark.parametrize(
    "agent_url", ["http://user:pw@127.0.0.1:1", "ftp://127.0.0.1:1", "http://127.0.0.1:1/x?y"]
)
def test_an_odd_agent_url_is_named_and_not_called(api: TestClient, agent_url: str) -> None:
    _node_with_a_replica(api, agent_url)
    got = _ndjson(api)
    assert len(got) == 1 and "not http://HOST:PORT" in got[0]["notice"], got


def test_an_unreachable_node_is_named(api: TestClient) -> None:
    _node_with_a_replica(api, "http://127.0.0.1:1")
    got = _ndjson(api, follow="true")
    assert len(got) == 1 and "w1" in got[0]["notice"] and "not reachable" in got[0]["notice"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"since": "yesterday"}, "since"), ({"tail": -1}, "tail"), ({"follow": "maybe"}, "follow")],
)
def test_bad_parameters_are_422_naming_them(
    api: TestClient, params: dict[str, Any], field: str
) -> None:
    assert (
        api.post("/v1/services", json=service_spec(replicas=0, min_replicas=0)).status_code == 201
    )
    resp = api.get("/v1/services/web/logs", params=params)
    assert resp.status_code == 422 and field in resp.text, resp.text


def test_logs_need_the_admin_token_and_a_known_service(api: TestClient) -> None:
    assert api.get("/v1/services/nope/logs").status_code == 404
    assert api.get("/v1/replicas/nope/logs").status_code == 404
    assert api.get("/v1/services/nope/logs", headers=bearer(JOIN)).status_code == 401
