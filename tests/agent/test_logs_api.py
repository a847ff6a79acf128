"""The agent's logs API with a fake engine: who may read, what is refused, and that a
log stream is passed on unchanged, chunk by chunk, and closed when its client goes."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from orchestrify.agent import Agent, logs_api
from orchestrify.agent.docker_engine import ReplicaContainer
from orchestrify.agent.logs_api import MULTIPLEXED, AgentApp, AgentServer, start_server
from orchestrify.agent.state import IDENTITY_FILE
from orchestrify.client import AsyncControllerClient
from orchestrify.errors import DockerFailure, LogsUnreadable, NotFound
from tests.agent.test_reconcile import FakeEngine
from tests.agent.test_registration import PROTOCOL, credentials, settings

NODE = "node-a"
KEY = "5f" * 32
CID = "c0ffee" + "0" * 58
DEADLINE_S = 2.0  # how soon a stream must end once its client is gone


def frame(stream: int, text: str) -> bytes:
    """One frame of Docker's multiplexed stream."""
    payload = f"2026-01-02T03:04:05.123456789Z {text}\n".encode()
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


class FakeStream:
    """A log stream whose chunks the test hands out: ``gates`` hold a chunk back until
    set; after the last chunk it follows (waits) until closed, when ``follow``."""

    def __init__(
        self, chunks: list[bytes], *, gates: dict[int, threading.Event] | None = None
    ) -> None:
        self.container_id = CID
        self.chunks = chunks
        self.gates = gates or {}
        self.follow = False
        self.closed = threading.Event()
        self.finished = threading.Event()  # the iteration (the reading thread) ended

    def __iter__(self) -> Iterator[bytes]:
        try:
            for n, chunk in enumerate(self.chunks):
                gate = self.gates.get(n)
                if gate is not None:
                    gate.wait(10)
                if self.closed.is_set():
                    return
                yield chunk
            if self.follow:
                self.closed.wait(30)
        finally:
            self.finished.set()

    def close(self) -> None:
        self.closed.set()


class FakeLogsEngine:
    """The engine's logs side: containers by id with their node, a stream per id."""

    def __init__(self) -> None:
        self.listed: list[tuple[str, str]] = []
        self.opened: list[dict[str, Any]] = []
        self.nodes = {CID: NODE, "f" * 64: "node-b"}
        self.stream = FakeStream([frame(1, "out 1"), frame(2, "err 1")])
        self.failure: Exception | None = None

    def replica_containers(self, node_id: str, service: str) -> list[ReplicaContainer]:
        self.listed.append((node_id, service))
        if self.failure is not None:
            raise self.failure
        return [
            ReplicaContainer(
                id=CID,
                name=f"{service}-1",
                replica=f"{service}-1",
                service=service,
                state="exited",
                created="2026-01-02T03:04:05.1Z",
                log_driver="gelf",
                log_address="udp://10.0.0.9:12201",
            )
        ]

    def open_logs(self, node_id: str, container_id: str, **params: Any) -> Any:
        self.opened.append({"node_id": node_id, "container_id": container_id, **params})
        if self.failure is not None:
            raise self.failure
        if self.nodes.get(container_id) != node_id:
            raise NotFound(f"no container {container_id} on this node")
        return self.stream


class Key:
    """The agent key as the agent holds it: None until registered, replaced on re-registering."""

    def __init__(self, value: str | None = KEY) -> None:
        self.value = value

    def __call__(self) -> str | None:
        return self.value


def make_app(engine: FakeLogsEngine | None = None, key: Key | None = None) -> AgentApp:
    registry = CollectorRegistry()
    Counter("orchestrify_test_things", "A metric to find.", registry=registry).inc()
    return AgentApp(
        registry=registry,
        engine=engine if engine is not None else FakeLogsEngine(),
        node_id=lambda: NODE,
        key=key or Key(),
    )


def call(
    app: AgentApp, path: str, *, query: str = "", key: str | None = KEY, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One request straight through WSGI: status, headers and the whole body."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "wsgi.input": io.BytesIO(),
    }
    if key is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    setup_testing_defaults(environ)
    started: list[Any] = []
    body = app(environ, lambda status, headers, exc_info=None: started.extend([status, headers]))
    data = b"".join(body)
    getattr(body, "close", lambda: None)()
    return int(started[0].split()[0]), dict(started[1]), data


# --- metrics: as before, for anyone ---
@pytest.mark.parametrize("path", ["/metrics", "/"])
def test_metrics_are_served_without_a_key(path: str) -> None:
    status, headers, body = call(make_app(), path, key=None)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert b"orchestrify_test_things_total 1.0" in body


# --- who may read ---
def test_without_a_key_from_the_controller_the_api_is_unavailable() -> None:
    status, _, body = call(make_app(key=Key(None)), "/v1/containers", query="service=web")
    assert status == 503
    assert json.loads(body) == {"detail": "not registered with a controller yet"}


@pytest.mark.parametrize("sent", [None, "", "wrong", KEY.upper(), KEY + "0", "é"])
def test_a_missing_or_wrong_key_is_401_with_a_bearer_challenge(sent: str | None) -> None:
    engine = FakeLogsEngine()
    status, headers, body = call(
        make_app(engine), f"/v1/containers/{CID}/logs", key=sent, query="follow=1"
    )
    assert status == 401
    assert headers["WWW-Authenticate"] == "Bearer"
    assert "detail" in json.loads(body)
    assert engine.opened == []


def test_the_key_is_read_at_every_request() -> None:
    key = Key()
    app = make_app(key=key)
    assert call(app, "/v1/containers", query="service=web")[0] == 200
    key.value = "ab" * 32  # registered again: a new key
    assert call(app, "/v1/containers", query="service=web")[0] == 401
    assert call(app, "/v1/containers", query="service=web", key="ab" * 32)[0] == 200


def test_the_scheme_is_case_insensitive() -> None:
    app = make_app()
    environ: dict[str, Any] = {"PATH_INFO": "/v1/containers", "QUERY_STRING": "service=web"}
    environ["HTTP_AUTHORIZATION"] = f"bearer {KEY}"
    setup_testing_defaults(environ)
    started: list[str] = []
    app(environ, lambda status, headers: started.append(status))
    assert started == ["200 OK"]


# --- the listing ---
def test_the_listing_is_the_engines_containers_of_the_service_on_this_node() -> None:
    engine = FakeLogsEngine()
    status, headers, body = call(make_app(engine), "/v1/containers", query="service=web")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == [
        {
            "id": CID,
            "name": "web-1",
            "replica": "web-1",
            "service": "web",
            "state": "exited",
            "created": "2026-01-02T03:04:05.1Z",
            "log_driver": "gelf",
            "log_address": "udp://10.0.0.9:12201",
        }
    ]
    assert engine.listed == [(NODE, "web")]


@pytest.mark.parametrize("query", ["", "service=", "service=Web", "service=-web", "service=a/b"])
def test_a_bad_service_name_is_422(query: str) -> None:
    engine = FakeLogsEngine()
    status, _, body = call(make_app(engine), "/v1/containers", query=query)
    assert status == 422
    assert "service" in json.loads(body)["detail"]
    assert engine.listed == []


# --- the logs: parameters ---
def test_defaults_are_all_lines_not_followed() -> None:
    engine = FakeLogsEngine()
    status, headers, _ = call(make_app(engine), f"/v1/containers/{CID}/logs")
    assert status == 200
    assert headers["Content-Type"] == MULTIPLEXED
    assert engine.opened == [
        {
            "node_id": NODE,
            "container_id": CID,
            "follow": False,
            "since": None,
            "until": None,
            "tail": "all",
        }
    ]


def test_parameters_pass_through_normalised() -> None:
    engine = FakeLogsEngine()
    query = "follow=1&since=1796173822.503000000999&until=1796173900&tail=007"
    assert call(make_app(engine), f"/v1/containers/{CID}/logs", query=query)[0] == 200
    opened = engine.opened[0]
    assert (opened["follow"], opened["since"], opened["until"], opened["tail"]) == (
        True,
        "1796173822.503000000",  # Docker counts nanoseconds at most
        "1796173900",
        "7",
    )


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("follow=2", "follow"),
        ("follow=true", "follow"),
        ("since=-1", "since"),
        ("since=1e9", "since"),
        ("since=abc", "since"),
        ("since=.5", "since"),
        ("until=1.", "until"),
        ("tail=-1", "tail"),
        ("tail=some", "tail"),
        ("tail=1.5", "tail"),
    ],
)
def test_a_bad_parameter_is_422_naming_it(query: str, name: str) -> None:
    engine = FakeLogsEngine()
    status, _, body = call(make_app(engine), f"/v1/containers/{CID}/logs", query=query)
    assert status == 422
    assert json.loads(body)["detail"].startswith(name)
    assert engine.opened == []


# --- the logs: refusals ---
@pytest.mark.parametrize("cid", ["f" * 64, "nosuch", "a%2Fb"])
def test_another_nodes_container_or_none_is_404(cid: str) -> None:
    status, _, body = call(make_app(), f"/v1/containers/{cid}/logs")
    assert status == 404
    assert "detail" in json.loads(body)


def test_a_driver_docker_cannot_read_is_409_saying_where_the_logs_went() -> None:
    engine = FakeLogsEngine()
    engine.failure = LogsUnreadable(
        "configured logging driver does not support reading",
        log_driver="syslog",
        log_address="udp://10.0.0.9:514",
    )
    status, _, body = call(make_app(engine), f"/v1/containers/{CID}/logs")
    assert status == 409
    assert json.loads(body) == {
        "detail": "configured logging driver does not support reading",
        "log_driver": "syslog",
        "log_address": "udp://10.0.0.9:514",
    }


@pytest.mark.parametrize("path", ["/v1/containers", f"/v1/containers/{CID}/logs"])
def test_docker_not_answering_is_503(path: str) -> None:
    engine = FakeLogsEngine()
    engine.failure = DockerFailure("Docker engine at unix:///x: connection refused")
    status, _, body = call(make_app(engine), path, query="service=web")
    assert status == 503
    assert "connection refused" in json.loads(body)["detail"]


def test_no_engine_is_503() -> None:
    app = AgentApp(registry=CollectorRegistry(), engine=None, node_id=lambda: NODE, key=lambda: KEY)
    assert call(app, "/v1/containers", query="service=web")[0] == 503


def test_other_paths_and_methods_under_v1() -> None:
    app = make_app()
    assert call(app, "/v1/nodes")[0] == 404
    assert call(app, f"/v1/containers/{CID}")[0] == 404
    status, headers, _ = call(app, "/v1/containers", query="service=web", method="POST")
    assert (status, headers["Allow"]) == (405, "GET")


# --- the logs: streaming over a real socket ---
@pytest.fixture
def served() -> Iterator[tuple[FakeLogsEngine, AgentServer]]:
    engine = FakeLogsEngine()
    server = start_server(make_app(engine), address="127.0.0.1", port=0)
    yield engine, server
    server.stop()


def logs_url(server: AgentServer, query: str = "") -> str:
    return f"http://127.0.0.1:{server.port}/v1/containers/{CID}/logs?{query}"


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_the_bytes_pass_through_unchanged_chunk_by_chunk(
    served: tuple[FakeLogsEngine, AgentServer],
) -> None:
    engine, server = served
    chunks = [frame(1, "out 1"), frame(2, "err 1") + frame(1, "out 2"), b"\x01\x00\x00\x00"]
    second = threading.Event()  # the second chunk waits until the first was received
    engine.stream = FakeStream(chunks, gates={1: second})
    received: list[bytes] = []
    with httpx.stream("GET", logs_url(server), headers=AUTH, timeout=5) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"] == MULTIPLEXED
        for data in resp.iter_raw():
            received.append(data)
            second.set()  # only now: the first came alone, unbuffered
    assert received[0] == chunks[0]
    assert b"".join(received) == b"".join(chunks)
    assert engine.stream.closed.is_set()


def test_a_follow_stream_sends_its_headers_before_any_line(
    served: tuple[FakeLogsEngine, AgentServer],
) -> None:
    engine, server = served
    engine.stream = FakeStream([])
    engine.stream.follow = True
    with httpx.stream("GET", logs_url(server, "follow=1"), headers=AUTH, timeout=5) as resp:
        assert resp.status_code == 200


def test_a_quiet_follow_stream_is_closed_soon_after_its_client_goes(
    served: tuple[FakeLogsEngine, AgentServer],
) -> None:
    engine, server = served
    engine.stream = FakeStream([frame(1, "out 1")])
    engine.stream.follow = True
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(
            f"GET /v1/containers/{CID}/logs?follow=1 HTTP/1.1\r\nHost: agent\r\n"
            f"Authorization: Bearer {KEY}\r\n\r\n".encode()
        )
        assert _read_until(conn, b"out 1\n").startswith(b"HTTP/1.0 200 OK\r\n")
    gone = time.monotonic()
    assert engine.stream.closed.wait(DEADLINE_S)
    assert engine.stream.finished.wait(DEADLINE_S)
    assert time.monotonic() - gone < DEADLINE_S
    _wait_for_no_thread("logs-client")


def test_a_client_gone_mid_write_closes_the_stream(
    served: tuple[FakeLogsEngine, AgentServer],
) -> None:
    engine, server = served
    engine.stream = FakeStream([frame(1, f"line {n}" + "x" * 4000) for n in range(10_000)])
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(
            f"GET /v1/containers/{CID}/logs HTTP/1.1\r\nHost: agent\r\n"
            f"Authorization: Bearer {KEY}\r\n\r\n".encode()
        )
        _read_until(conn, b"line 0")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    assert engine.stream.closed.wait(DEADLINE_S)
    assert engine.stream.finished.wait(DEADLINE_S)


def test_stopping_the_server_ends_its_streams() -> None:
    engine = FakeLogsEngine()
    engine.stream = FakeStream([frame(1, "out 1")])
    engine.stream.follow = True
    server = start_server(make_app(engine), address="127.0.0.1", port=0)
    try:
        with httpx.stream("GET", logs_url(server, "follow=1"), headers=AUTH, timeout=5) as resp:
            next(resp.iter_raw())
            server.stop()
            assert engine.stream.closed.is_set()
            assert engine.stream.finished.wait(DEADLINE_S)
    finally:
        server.stop()


def test_the_server_answers_metrics_too(served: tuple[FakeLogsEngine, AgentServer]) -> None:
    _, server = served
    resp = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
    assert resp.status_code == 200
    assert "orchestrify_test_things_total 1.0" in resp.text


def _read_until(conn: socket.socket, marker: bytes) -> bytes:
    conn.settimeout(5)
    data = b""
    while marker not in data:
        more = conn.recv(65536)
        assert more, f"connection closed before {marker!r}: {data[:300]!r}"
        data += more
    return data


def _wait_for_no_thread(name: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while any(t.name == name for t in threading.enumerate()):
        assert time.monotonic() < deadline, f"thread {name} still running"
        time.sleep(0.02)


# --- the agent keeps the key the controller gives ---
def test_the_agent_keeps_the_key_from_its_registration_answer(tmp_path: Path) -> None:
    def controller(request: httpx.Request) -> httpx.Response:
        body = credentials(json.loads(request.content)) | {"agent_key": KEY}
        return httpx.Response(200, json=body, headers=PROTOCOL)

    async def register() -> Agent:
        agent = Agent(
            settings(tmp_path / "agent", "http://controller.invalid"), engine=FakeEngine()
        )
        client = AsyncControllerClient(
            "http://controller.invalid", "join", component="agent", min_protocol=2
        )
        client._http._transport = httpx.MockTransport(controller)
        try:
            await agent._register(client)
        finally:
            await client.aclose()
        return agent

    agent = asyncio.run(register())
    assert agent.agent_key == KEY
    assert KEY not in (tmp_path / "agent" / IDENTITY_FILE).read_text()


def test_streams_beyond_the_cap_are_503_until_one_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs_api, "MAX_STREAMS", 3)
    app = make_app()
    path = f"/v1/containers/{CID}/logs"

    def open_one() -> tuple[str, Any]:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "wsgi.input": io.BytesIO(),
            "HTTP_AUTHORIZATION": f"Bearer {KEY}",
        }
        setup_testing_defaults(environ)
        started: list[Any] = []
        body = app(environ, lambda status, headers, exc_info=None: started.append(status))
        return started[0], body

    opened = [open_one() for _ in range(3)]
    assert [status for status, _ in opened] == ["200 OK"] * 3
    status, body = open_one()
    assert status.startswith("503") and b"3 log streams are open" in b"".join(body)
    opened[0][1].close()
    status, body = open_one()
    assert status == "200 OK"
    for _, open_body in [*opened[1:], (status, body)]:
        open_body.close()
