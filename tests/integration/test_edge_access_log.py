"""The JSON access log (`--access-log`) against a real Nginx and edge.

Two replicas (small HTTP servers on loopback, each answering with its own id) and a
service without any sit behind the edge's Nginx, which writes one JSON line per request
to a file beside the telemetry log. Every request must show up there exactly once, as a
line `json.loads` parses, with the service, replica, status, method and URI it had; a
hostile URI, user agent and referer (quotes, backslashes, control characters, UTF-8)
included. Renaming the file and sending USR1 to Nginx (what logrotate's postrotate does)
loses no line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bench.edge_lab import ADMIN_TOKEN, JOIN_TOKEN, ControllerThread, EdgeThread, running
from bench.net import free_port
from bench.wait import wait_for
from orchestrify.edge import EdgeSettings
from orchestrify.edge.access_log import ACCESS_LOG_FIELDS
from tests.conftest import require_binary

# beside: its own Nginx, edge and backend on free ports, and no timing asserted.
pytestmark = [pytest.mark.integration, pytest.mark.beside]
LOG_NAME = "access.json"


@dataclass
class EchoReplica:
    """Answers every method with ``REPLICA_ID\\n``, and ``?status=N`` with status N."""

    replica: str = ""
    seen_ids: list[str] = field(default_factory=list)  # X-Request-Id of each request

    def start(self) -> EchoReplica:
        echo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Nginx's upstream pool uses

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                echo.seen_ids.append(self.headers.get("X-Request-Id", ""))
                status = int(parse_qs(urlsplit(self.path).query).get("status", ["200"])[0])
                body = f"{echo.replica}\n".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Lab:
    edge: EdgeThread
    port: int  # Nginx's
    log: Path  # the JSON access log
    replicas: dict[str, EchoReplica]  # replica id -> its server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Line:
    raw: bytes
    fields: dict[str, Any]


def read_lines(lab: Lab) -> list[Line]:
    """Every complete line of the log and of its rotated copies (``access.json*``).

    Strict UTF-8 where the bytes are UTF-8; Nginx passes other bytes of a request as
    they are, so those lines are read as log shippers do (invalid bytes replaced)."""
    found = []
    for path in sorted(lab.log.parent.glob(LOG_NAME + "*")):
        for raw in path.read_bytes().split(b"\n")[:-1]:  # the last piece is not a line yet
            try:
                fields = json.loads(raw)
            except UnicodeDecodeError:
                fields = json.loads(raw.decode("utf-8", errors="replace"))
            found.append(Line(raw, fields))
    return found


def lines_of(lab: Lab, ids: list[str]) -> dict[str, Line]:
    """The line of each request id, once Nginx has flushed them all (within a second);
    fails when one is missing or logged twice."""

    def flushed() -> list[Line] | None:
        lines = [line for line in read_lines(lab) if line.fields["request_id"] in ids]
        return lines if {line.fields["request_id"] for line in lines} == set(ids) else None

    lines = wait_for("every request's line in the access log", flushed, timeout=10)
    counts = Counter(line.fields["request_id"] for line in lines)
    assert [rid for rid, n in counts.items() if n != 1] == [], counts
    return {line.fields["request_id"]: line for line in lines}


def new_id() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_binary("nginx")
    base = tmp_path_factory.mktemp("access-log")
    # Not under pytest's private (0700) base: when these tests run as root, Nginx's
    # workers run as nobody and reopen the file themselves on USR1 (see docs/logs.md).
    log_dir = Path(tempfile.mkdtemp(prefix="orchestrify-access-log-"))
    log_dir.chmod(0o755)
    servers = [EchoReplica().start(), EchoReplica().start()]
    controller = ControllerThread(base / "controller").start()
    http = controller.http
    creds = http.post(
        "/v1/nodes/register",
        json={"name": "node-1", "address": "127.0.0.1"},
        headers={"Authorization": f"Bearer {JOIN_TOKEN}"},
    ).json()
    node = {"Authorization": f"Bearer {creds['node_token']}"}
    for name, replicas in (("web", 2), ("idle", 0)):
        r = http.post(
            "/v1/services",
            json={
                "name": name,
                "image": "orchestrify-test/none:1",
                "replicas": replicas,
                "min_replicas": 0,
            },
        )
        assert r.status_code == 201, r.text

    def assigned() -> list[str]:
        body = http.get(f"/v1/nodes/{creds['node_id']}/assignments", headers=node).json()
        ids = sorted(a["replica"] for a in body["replicas"] if a["desired"] == "run")
        return ids if len(ids) == 2 else []

    ids = wait_for("two assignments", assigned)
    for rid, server in zip(ids, servers, strict=True):
        server.replica = rid
    # This test plays the agent: each server is one replica, reported healthy.
    http.post(
        f"/v1/nodes/{creds['node_id']}/replicas",
        json={
            "replicas": [
                {"id": rid, "state": "healthy", "address": s.address}
                for rid, s in zip(ids, servers, strict=True)
            ]
        },
        headers=node,
    ).raise_for_status()
    listen = free_port()
    edge = EdgeThread(
        EdgeSettings(
            controller_url=controller.url,
            token=ADMIN_TOKEN,
            nginx_conf_dir=base / "nginx",
            listen=f"127.0.0.1:{listen}",
            metrics_port=0,
            name="edge-access-log",
            worker_processes="2",  # two workers' buffers share the file
            access_log=log_dir / LOG_NAME,
        )
    ).start()
    try:
        with running(controller, edge):
            wait_for("both replicas in nginx", lambda: len(edge.served_replicas("web")) == 2)
            wait_for(
                "the idle service in nginx",
                lambda: any(s.name == "idle" for s in edge.edge.view.services),
            )
            yield Lab(
                edge=edge,
                port=listen,
                log=log_dir / LOG_NAME,
                replicas=dict(zip(ids, servers, strict=True)),
            )
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


@dataclass(frozen=True)
class Sent:
    service: str
    method: str
    uri: str
    host: str
    response: httpx.Response


def test_each_request_is_one_json_line_with_its_fields(lab: Lab) -> None:
    sent: dict[str, Sent] = {}
    with httpx.Client(timeout=10) as client:
        for method in ("GET", "POST", "PUT", "DELETE"):
            query = "?x=1&status=" + ("404" if method == "PUT" else "200")
            for host, uri in (("127.0.0.1", "/web/some/where"), ("web.localhost", "/a/b")):
                rid = new_id()
                resp = client.request(
                    method, lab.url + uri + query, headers={"Host": host, "X-Request-Id": rid}
                )
                sent[rid] = Sent("web", method, uri + query, host, resp)
        rid = new_id()
        resp = client.get(f"{lab.url}/idle/x", headers={"X-Request-Id": rid})
        sent[rid] = Sent("idle", "GET", "/idle/x", "127.0.0.1", resp)
    lines = lines_of(lab, list(sent))
    now = datetime.now(UTC)
    addresses = {rid: s.address for rid, s in lab.replicas.items()}
    for rid, request in sent.items():
        line, resp = lines[rid].fields, request.response
        assert tuple(line) == ACCESS_LOG_FIELDS
        assert (line["service"], line["method"], line["uri"], line["host"]) == (
            request.service,
            request.method,
            request.uri,
            request.host,
        )
        assert line["status"] == resp.status_code
        assert resp.status_code == (404 if request.method == "PUT" else 200) or (
            request.service == "idle" and resp.status_code == 503
        )
        assert (line["protocol"], line["client_ip"]) == ("HTTP/1.1", "127.0.0.1")
        assert line["bytes_sent"] == len(resp.content)
        assert isinstance(line["request_time"], float) and 0 <= line["request_time"] < 10
        stamp = datetime.fromisoformat(line["@timestamp"])
        assert abs(stamp - now) < timedelta(minutes=1)
        assert len(line["@timestamp"]) == len("2024-05-01T12:00:00.123+00:00")
        assert line["user_agent"].startswith("python-httpx/") and line["referer"] == ""
        if request.service == "idle":  # answered by Nginx: no replica, no upstream
            assert [line["replica"], line["upstream_addr"], line["upstream_status"]] == [""] * 3
            continue
        replica = resp.text.strip()  # the replica that answered says who it is
        assert line["replica"] == replica
        assert line["upstream_addr"] == addresses[replica]
        assert line["upstream_status"] == str(resp.status_code)
        assert float(line["upstream_response_time"]) >= 0
        assert rid in lab.replicas[replica].seen_ids  # the id the replica got


def raw_request(lab: Lab, request: bytes) -> bytes:
    """Send ``request`` as it is (an HTTP client would refuse to) and return the answer."""
    with socket.create_connection(("127.0.0.1", lab.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_hostile_request_is_still_one_line_json_parses(lab: Lab) -> None:
    rid = new_id()
    uri = '/web/a"b\\c%01%22/\u00e9t\u00e9?q="\\\u20ac'
    agent = 'ev"il \\ \x01\x1f\x7f \u00fc\u20ac {"x": 1}'
    referer = 'http://r.example/"\\\x02\u00e9'
    request = (
        f"GET {uri} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {agent}\r\n"
        f"Referer: {referer}\r\nX-Request-Id: {rid}\r\nConnection: close\r\n\r\n"
    ).encode()
    assert raw_request(lab, request).startswith(b"HTTP/1.1 200 ")
    line = lines_of(lab, [rid])[rid]
    assert b"\n" not in line.raw and b"\x01" not in line.raw  # escaped by Nginx
    fields = json.loads(line.raw)  # strict: the bytes are UTF-8
    assert (fields["uri"], fields["user_agent"], fields["referer"]) == (uri, agent, referer)
    assert (fields["service"], fields["status"], fields["method"]) == ("web", 200, "GET")


def test_bytes_that_are_not_utf8_are_passed_as_they_are(lab: Lab) -> None:
    """Nginx's JSON escaping leaves bytes over 127 alone: a line stays one valid JSON
    object once decoded the way log shippers decode (invalid UTF-8 replaced)."""
    rid = new_id()
    request = (
        b'GET /web/\xff HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: \xfe\xff"\r\n'
        b"X-Request-Id: " + rid.encode() + b"\r\nConnection: close\r\n\r\n"
    )
    assert raw_request(lab, request).startswith(b"HTTP/1.1 200 ")
    line = lines_of(lab, [rid])[rid]
    with pytest.raises(UnicodeDecodeError):
        json.loads(line.raw)
    assert line.fields["uri"] == "/web/\ufffd"
    assert line.fields["user_agent"] == '\ufffd\ufffd"'


def test_the_telemetry_counts_the_same_requests(lab: Lab) -> None:
    def counted() -> float:
        value = lab.edge.registry.get_sample_value(
            "orchestrify_http_requests_total", {"service": "web", "status": "200"}
        )
        return value or 0.0

    def steady() -> tuple[float] | None:  # earlier tests' lines may still be on their way
        first = counted()
        time.sleep(1.5)
        return (first,) if counted() == first else None

    (before,) = wait_for("the telemetry to catch up", steady, timeout=20)
    ids = [new_id() for _ in range(20)]
    with httpx.Client(timeout=10) as client:
        for rid in ids:
            assert client.get(f"{lab.url}/web/", headers={"X-Request-Id": rid}).is_success
    assert len(lines_of(lab, ids)) == len(ids)
    wait_for("the telemetry's count", lambda: counted() - before == len(ids), timeout=10)
    assert lab.edge.edge.metrics.dropped._value.get() == 0


def test_rename_and_usr1_rotate_the_log_without_losing_a_line(lab: Lab) -> None:
    """What logrotate does: rename the file, then USR1 to Nginx's master (its pid file):
    the workers write what they buffered to the renamed file and go on in a new one."""
    rotated = lab.log.with_name(LOG_NAME + ".1")
    lab.log.rename(rotated)
    before = [new_id() for _ in range(10)]
    with httpx.Client(timeout=10) as client:
        for rid in before:
            assert client.get(f"{lab.url}/web/", headers={"X-Request-Id": rid}).is_success
        pid = int((lab.edge.edge.prefix / "nginx.pid").read_text())
        os.kill(pid, signal.SIGUSR1)
        wait_for("Nginx to reopen its access log", lab.log.exists, timeout=10)
        time.sleep(0.5)  # each worker reopens it when the master passes the signal on
        after = [new_id() for _ in range(10)]
        for rid in after:
            assert client.get(f"{lab.url}/web/", headers={"X-Request-Id": rid}).is_success
    lines = lines_of(lab, before + after)  # each once, in one file or the other
    assert set(before) <= request_ids(rotated) and set(after) <= request_ids(lab.log)
    assert len(lines) == 20


def request_ids(path: Path) -> set[str]:
    return {
        json.loads(raw.decode("utf-8", errors="replace"))["request_id"]
        for raw in path.read_bytes().splitlines()
    }
