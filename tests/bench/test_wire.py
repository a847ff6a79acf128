"""bench/wire.py, the simulated agents' lean HTTP/1.1 client, against a real uvicorn
server on loopback: what it sends, what it reads back, when it reuses a connection, and
how it fails (as httpx's exceptions, which the fleet bench counts)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from bench.wire import WireClient


class _Server:
    """A uvicorn server in a thread; it records each request's client port."""

    def __init__(self) -> None:
        self.client_ports: list[int] = []
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="error", interface="asgi3"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.client_ports.append(scope["client"][1])
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        headers = [(b"content-type", b"application/json")]
        if path == "/slow":
            await asyncio.sleep(1.0)
        if path == "/close":
            headers.append((b"connection", b"close"))
        echo = {
            "method": scope["method"],
            "path": path,
            "query": scope["query_string"].decode(),
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            "body": body.decode(),
        }
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        if path == "/chunked":  # no content-length: sent chunked
            await send({"type": "http.response.body", "body": b'{"part": ', "more_body": True})
            await send({"type": "http.response.body", "body": b"1}"})
            return
        await send({"type": "http.response.body", "body": json.dumps(echo).encode()})

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[tuple[_Server, str]]:
    srv = _Server()
    with srv as url:
        yield srv, url


def test_a_request_carries_its_headers_query_and_json_and_the_answer_is_read(
    server: tuple[_Server, str],
) -> None:
    _, url = server

    async def go() -> httpx.Response:
        async with WireClient(
            url, headers={"X-Orchestrify-Component": "agent"}, timeout=5
        ) as client:
            return await client.request(
                "POST", "/v1/x", headers={"Authorization": "Bearer t"},
                params={"version": 3, "timeout": 30}, json_body={"a": [1, "é"]},
            )  # fmt: skip

    resp = asyncio.run(go())
    assert resp.status_code == 201
    assert resp.headers["content-type"] == "application/json"
    echo = resp.json()
    assert (echo["method"], echo["path"]) == ("POST", "/v1/x")
    assert echo["query"] == "version=3&timeout=30"
    assert echo["headers"]["authorization"] == "Bearer t"
    assert echo["headers"]["x-orchestrify-component"] == "agent"
    assert echo["headers"]["content-type"] == "application/json"
    assert json.loads(echo["body"]) == {"a": [1, "é"]}


def test_requests_one_after_another_share_a_connection_and_concurrent_ones_do_not(
    server: tuple[_Server, str],
) -> None:
    srv, url = server

    async def go() -> None:
        async with WireClient(url, headers={}, timeout=5) as client:
            for _ in range(5):
                assert (await client.request("GET", "/")).status_code == 201
            sequential = set(srv.client_ports)
            assert len(sequential) == 1, srv.client_ports
            answers = await asyncio.gather(*(client.request("GET", "/slow") for _ in range(3)))
            assert [a.status_code for a in answers] == [201] * 3
            concurrent = srv.client_ports[5:]
            assert len(set(concurrent)) == 3, concurrent  # the idle one and two new ones

    asyncio.run(go())


def test_a_late_answer_is_a_read_timeout_and_the_next_request_gets_through(
    server: tuple[_Server, str],
) -> None:
    srv, url = server

    async def go() -> None:
        async with WireClient(url, headers={}, timeout=5) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.request("GET", "/slow", timeout=0.2)
            # the timed-out connection is dropped, never read half-way by the next request
            assert (await client.request("GET", "/after")).json()["path"] == "/after"
            assert len(set(srv.client_ports)) == 2

    asyncio.run(go())


def test_connection_close_and_a_chunked_body(server: tuple[_Server, str]) -> None:
    srv, url = server

    async def go() -> None:
        async with WireClient(url, headers={}, timeout=5) as client:
            assert (await client.request("GET", "/close")).status_code == 201
            assert (await client.request("GET", "/chunked")).json() == {"part": 1}
            assert len(set(srv.client_ports)) == 2  # the closed one was not reused

    asyncio.run(go())


def test_nothing_listening_is_a_connect_error() -> None:
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go() -> None:
        client = WireClient(f"http://127.0.0.1:{port}", headers={}, timeout=5)
        with pytest.raises(httpx.ConnectError):
            await client.request("GET", "/")

    asyncio.run(go())


def test_only_a_plain_http_url_with_a_port_is_taken() -> None:
    for url in ("https://127.0.0.1:1", "http://127.0.0.1", "ftp://x:1"):
        with pytest.raises(ValueError, match="want http://HOST:PORT"):
            WireClient(url, headers={}, timeout=1)
