"""A lean HTTP/1.1 client for the simulated agents of ``bench/fleet.py``.

A thousand simulated agents share the bench's machine with the controller they measure,
so what each of their requests costs the *client* is taken from the controller. httpx
(the real agent's client) spent about 1.5 ms of CPU per request here, a whole core for
a thousand agents, and a request took several turns of a busy event loop: the latency
the bench printed was largely its own. The agents on a real fleet run on other hosts.

This client does only what the simulation needs, on asyncio's transports: one request at
a time per kept-alive connection, plain HTTP to the bench's loopback controller, the
response parsed by httptools (the C parser uvicorn uses; a runtime dependency). Each
answer becomes an ``httpx.Response``, so the checks the real agent makes
(``check_controller_protocol``, ``raise_for_status``) run unchanged, and failures are
httpx's exceptions (``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``), so the
bench counts them as before.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlencode, urlsplit

import httptools
import httpx

__all__ = ["WireClient"]


class _Connection(asyncio.Protocol):
    """One kept-alive connection; ``exchange`` sends a request and waits for its answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._answer: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._parser is None:  # nothing asked: the server has nothing to say
            self._fail(httpx.RemoteProtocolError("data received with no request pending"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"bad response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(httpx.RemoteProtocolError("server closed the connection"))

    # --- httptools callbacks ---
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() != b"transfer-encoding":  # the body is whole by the time it is read
            self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser, answer = self._parser, self._answer
        self._parser = self._answer = None
        assert parser is not None
        if not parser.should_keep_alive():
            self.close()
        if answer is not None and not answer.done():
            answer.set_result((parser.get_status_code(), self._headers, b"".join(self._body)))

    # --- the client's side ---
    def _fail(self, exc: Exception) -> None:
        answer, self._answer, self._parser = self._answer, None, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(
        self, request: bytes, timeout: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self.transport is not None and self._answer is None
        self._answer = asyncio.get_running_loop().create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._headers, self._body = [], []
        self.transport.write(request)
        try:
            return await asyncio.wait_for(self._answer, timeout)
        except TimeoutError:
            self._fail(httpx.ReadTimeout("no answer in time"))  # like httpx: drop it
            raise httpx.ReadTimeout(f"no answer within {timeout} s") from None


class WireClient:
    """Requests to one plain-HTTP base URL over kept-alive connections, as many at once as
    the caller makes (an agent makes at most three: heartbeat, watch, report)."""

    def __init__(self, base_url: str, *, headers: Mapping[str, str], timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"want http://HOST:PORT, got {base_url!r}")
        self.host, self.port = parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        fixed = {"Host": f"{self.host}:{self.port}", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port), self.timeout
            )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"cannot connect to {self.host}:{self.port}") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._all.add(conn)
        return conn

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        target = self.prefix + path + (f"?{urlencode(params)}" if params else "")
        body = b"" if json_body is None else json.dumps(json_body).encode()
        head = f"{method} {target} HTTP/1.1\r\n{self._fixed}"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        if json_body is not None:
            head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        conn = await self._connection()
        try:
            status, raw_headers, content = await conn.exchange(
                head.encode("latin-1") + body, self.timeout if timeout is None else timeout
            )
        except BaseException:  # failed, timed out or cancelled: never reused half-read
            conn.close()
            self._all.discard(conn)
            raise
        if conn.closed:
            self._all.discard(conn)
        else:
            self._idle.append(conn)
        return httpx.Response(
            status,
            headers=raw_headers,
            content=content,
            request=httpx.Request(method, f"http://{self.host}:{self.port}{target}"),
        )

    async def __aenter__(self) -> WireClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()
