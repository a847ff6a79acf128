"""The agent's HTTP endpoint: its Prometheus metrics, and the Docker logs of its replicas.

One threaded WSGI server (wsgiref, a daemon thread per request) on ``--metrics-port``,
so the controller reaches an agent at the one URL it is told (``agent_url``):

- ``GET /metrics`` (and any path outside ``/v1/``): prometheus_client's app, open as
  it always was;
- ``GET /v1/containers?service=NAME``: the node's containers of that service, running
  or not, oldest first (JSON);
- ``GET /v1/containers/{id}/logs?follow=0|1&since=S&until=U&tail=N|all``: Docker's raw
  multiplexed log stream of one of them, passed on chunk by chunk as it comes.

``/v1/`` needs ``Authorization: Bearer <agent key>``, the key the controller gave at
registration (read through a callable, so a new registration takes effect at once).
Errors are JSON ``{"detail": ...}``: 401 wrong or no key, 503 no key yet or Docker not
answering, 404 not this node's container, 409 a logging driver Docker cannot read
back, 422 a bad query value.

A log stream ends when the container's log does (not following), when the client goes
away (a write fails, or a watcher sees the connection closed while the container is
quiet), or when the server stops; each way closes the Docker connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import select
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from orchestrify.agent.docker_engine import LogStream, ReplicaContainer
from orchestrify.errors import DockerFailure, LogsUnreadable, NotFound

__all__ = ["AgentApp", "AgentServer", "LogsEngine", "start_server"]

log = logging.getLogger(__name__)

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Docker's container names ([a-zA-Z0-9][a-zA-Z0-9_.-]+) include its ids and id prefixes.
LOGS_PATH = re.compile(r"/v1/containers/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})/logs")
UNIX_SECONDS = re.compile(r"([0-9]{1,18})(?:\.([0-9]{1,64}))?")
TAIL = re.compile(r"all|[0-9]{1,18}")
CLIENT_SOCKET = "orchestrify.client_socket"  # environ key: the request's connection
MAX_STREAMS = 64
"""Log streams open at once (each holds a thread and a Docker connection): far more than
`service logs` clients of one fleet; beyond it, 503 rather than an agent out of threads."""


@runtime_checkable
class LogsEngine(Protocol):
    """What the logs API needs of the engine (``DockerEngine``, or a fake in tests)."""

    def replica_containers(self, node_id: str, service: str) -> list[ReplicaContainer]: ...

    def open_logs(
        self,
        node_id: str,
        container_id: str,
        *,
        follow: bool,
        since: str | None = None,
        until: str | None = None,
        tail: str = "all",
    ) -> LogStream: ...


class BadQuery(ValueError):
    """A query parameter with a value the endpoint cannot take (HTTP 422)."""


StartResponse = Callable[..., Any]


class AgentApp:
    """The WSGI app: metrics for anyone, the logs API for the bearer of the agent key.

    ``engine`` None (an agent without Docker, in tests) answers 503 on ``/v1/``;
    ``node_id`` and ``key`` are read at every request and None until registered.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        engine: LogsEngine | None,
        node_id: Callable[[], str | None],
        key: Callable[[], str | None],
    ) -> None:
        self._metrics = make_wsgi_app(registry)
        self._engine = engine
        self._node_id = node_id
        self._key = key
        self._lock = threading.Lock()
        self._streams: set[_LogResponse] = set()
        self._stopping = False

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path != "/v1" and not path.startswith("/v1/"):
            result: Iterable[bytes] = self._metrics(environ, start_response)
            return result
        if environ.get("REQUEST_METHOD") != "GET":
            return _error(start_response, 405, "use GET", headers=[("Allow", "GET")])
        refused = self._refuse(environ, start_response)
        if refused is not None:
            return refused
        if self._engine is None:
            return _error(start_response, 503, "this agent has no Docker engine to read")
        node_id = self._node_id()
        if node_id is None:
            return _error(start_response, 503, "not registered with a controller yet")
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        try:
            if path == "/v1/containers":
                return self._list(self._engine, node_id, query, start_response)
            match = LOGS_PATH.fullmatch(path)
            if match is None:
                return _error(start_response, 404, f"no such endpoint: {path[:100]}")
            return self._logs(self._engine, node_id, match[1], query, environ, start_response)
        except BadQuery as exc:
            return _error(start_response, 422, str(exc))
        except NotFound as exc:
            return _error(start_response, 404, str(exc))
        except LogsUnreadable as exc:
            body = {"log_driver": exc.log_driver, "log_address": exc.log_address}
            return _error(start_response, 409, str(exc), extra=body)
        except DockerFailure as exc:
            return _error(start_response, 503, str(exc))

    def close_streams(self) -> None:
        """End every log stream, and refuse new ones: the server is stopping."""
        with self._lock:
            self._stopping = True
            streams = list(self._streams)
        for stream in streams:
            stream.abort()

    def _refuse(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        """The answer to a request without the agent key, or None to serve it."""
        key = self._key()
        if not key:
            return _error(start_response, 503, "not registered with a controller yet")
        scheme, _, token = (environ.get("HTTP_AUTHORIZATION") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized(start_response, "a bearer token is required")
        # WSGI hands headers over as latin-1 strings: these are the bytes the client sent.
        sent = token.strip().encode("latin-1", "replace")
        if not secrets.compare_digest(sent, key.encode()):
            return _unauthorized(start_response, "wrong bearer token")
        return None

    def _list(
        self,
        engine: LogsEngine,
        node_id: str,
        query: dict[str, list[str]],
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        service = _last(query, "service")
        if service is None or not SERVICE_NAME.fullmatch(service):
            raise BadQuery(f"service must be a service name ({SERVICE_NAME.pattern})")
        found = engine.replica_containers(node_id, service)
        return _json(start_response, 200, [asdict(c) for c in found])

    def _logs(
        self,
        engine: LogsEngine,
        node_id: str,
        container_id: str,
        query: dict[str, list[str]],
        environ: dict[str, Any],
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        follow = _last(query, "follow") or "0"
        if follow not in ("0", "1"):
            raise BadQuery("follow must be 0 or 1")
        tail = _last(query, "tail") or "all"
        if not TAIL.fullmatch(tail):
            raise BadQuery("tail must be a number of lines or all")
        stream = engine.open_logs(
            node_id,
            container_id,
            follow=follow == "1",
            since=_unix_seconds(query, "since"),
            until=_unix_seconds(query, "until"),
            tail=tail if tail == "all" else str(int(tail)),
        )
        response = _LogResponse(stream, environ.get(CLIENT_SOCKET), forget=self._forget)
        with self._lock:
            stopping = self._stopping
            crowded = len(self._streams) >= MAX_STREAMS
            if not stopping and not crowded:
                self._streams.add(response)
        if stopping or crowded:
            response.close()
            why = "the agent is stopping" if stopping else f"{MAX_STREAMS} log streams are open"
            return _error(start_response, 503, why)
        response.watch()
        start_response("200 OK", [("Content-Type", MULTIPLEXED), ("Cache-Control", "no-store")])
        return response

    def _forget(self, response: _LogResponse) -> None:
        with self._lock:
            self._streams.discard(response)


class _LogResponse:
    """The body of one log response: the engine's chunks, written by wsgiref one by one
    (each write is flushed). wsgiref calls ``close()`` at the end, or when a write fails
    because the client went away. A follow stream of a quiet container writes nothing,
    so a watcher thread also waits for the client's connection to close and then ends
    the stream; it is woken through a pipe when the stream ends first."""

    def __init__(
        self,
        stream: LogStream,
        client: socket.socket | None,
        *,
        forget: Callable[[_LogResponse], None],
    ) -> None:
        self._stream = stream
        self._client = client
        self._forget = forget
        self._lock = threading.Lock()
        self._closed = False
        self._watcher: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[bytes]:
        # wsgiref sends the headers with the first write: an empty one sends them now, as
        # a follow of a quiet container may have nothing else to send for hours.
        yield b""
        yield from self._stream

    def watch(self) -> None:
        """Start watching the client's connection (when the server handed it over)."""
        if self._client is None:
            return
        with self._lock:  # not once closed (the server may be stopping meanwhile)
            if self._closed:
                return
            self._wake = os.pipe()
            self._watcher = threading.Thread(
                target=self._watch, args=(self._client, self._wake[0]), name="logs-client"
            )
            self._watcher.daemon = True
            self._watcher.start()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watcher, wake = self._watcher, self._wake
        self._stream.close()
        if watcher is not None and wake is not None:
            os.write(wake[1], b"x")
            if watcher is not threading.current_thread():
                watcher.join()  # before wsgiref closes (and the OS reuses) the client's socket
            for fd in wake:
                os.close(fd)
        self._forget(self)

    def abort(self) -> None:
        """End the stream and the client's connection: a write blocked on a client that
        stopped reading fails too, so its request thread ends."""
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.shutdown(socket.SHUT_RDWR)
        self.close()

    def _watch(self, client: socket.socket, wake: int) -> None:
        # poll, not select: no limit on the descriptors' numbers.
        poller = select.poll()
        poller.register(client, select.POLLIN)
        poller.register(wake, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if wake in ready:
                return
            try:
                more = client.recv(1, socket.MSG_PEEK)  # b"": the client closed
            except OSError:
                more = b""
            if more:  # the client sent more (a GET never does): wait for the end only
                poller.unregister(client)
                continue
            log.debug(
                "log stream client went away", extra={"container": self._stream.container_id[:12]}
            )
            self.close()
            return


@dataclass(frozen=True)
class AgentServer:
    """A running server: the port it listens on (the one asked for, or the one the OS
    picked for 0) and ``stop()``, which ends its log streams and its thread."""

    port: int
    stop: Callable[[], None]


class _Handler(WSGIRequestHandler):
    """Logs no request line (like prometheus_client's), and hands the request's
    connection to the app so that a log stream can watch it."""

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing."""

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ[CLIENT_SOCKET] = self.connection
        return environ


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # Daemon threads, never joined: a follow stream may last as long as the agent.
    daemon_threads = True


def start_server(app: AgentApp, *, address: str, port: int) -> AgentServer:
    """Serve ``app`` on ``address``:``port`` (0: a free port) from a daemon thread."""

    class Server(_ThreadingServer):
        pass

    # IPv4 or IPv6 as the address says (WSGIServer binds AF_INET only).
    infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    Server.address_family = family
    server = make_server(str(sockaddr[0]), port, app, Server, handler_class=_Handler)
    thread = threading.Thread(target=server.serve_forever, name="agent-http", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        app.close_streams()
        server.server_close()
        thread.join(timeout=2)

    return AgentServer(port=int(server.server_port), stop=stop)


def _last(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _unix_seconds(query: dict[str, list[str]], name: str) -> str | None:
    """A non-negative decimal number of Unix seconds, as Docker takes it (at most
    nanoseconds: further digits are dropped), or None when not given."""
    value = _last(query, name)
    if value is None or value == "":
        return None
    match = UNIX_SECONDS.fullmatch(value)
    if match is None:
        raise BadQuery(f"{name} must be Unix seconds, a non-negative decimal number")
    whole, fraction = match[1], match[2]
    return f"{whole}.{fraction[:9]}" if fraction else whole


def _json(
    start_response: StartResponse,
    status: int,
    body: Any,
    *,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            *(headers or []),
        ],
    )
    return [data]


def _error(
    start_response: StartResponse,
    status: int,
    detail: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> list[bytes]:
    return _json(start_response, status, {"detail": detail, **(extra or {})}, headers=headers)


def _unauthorized(start_response: StartResponse, detail: str) -> list[bytes]:
    return _error(start_response, 401, detail, headers=[("WWW-Authenticate", "Bearer")])
