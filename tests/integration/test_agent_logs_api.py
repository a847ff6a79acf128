"""The agent's logs API against the real Docker engine: the listing, Docker's raw log
stream passed through (history, tail, since/until, follow), what is refused, and that a
follow stream ends soon after its client goes.

Every container carries ``orchestrify.test=1`` and this run's id, and is removed at the
end by those labels.
"""

from __future__ import annotations

import calendar
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import httpx
import pytest
from docker.types import LogConfig
from prometheus_client import CollectorRegistry

from bench.labels import RUN_LABEL, TEST_LABEL
from bench.wait import wait_for
from orchestrify.agent.docker_engine import (
    LABEL_NODE,
    LABEL_REPLICA,
    LABEL_SERVICE,
    DockerEngine,
    LogStream,
)
from orchestrify.agent.logs_api import MULTIPLEXED, AgentApp, AgentServer, start_server
from orchestrify.agent.settings import DEFAULT_DOCKER_URL
from orchestrify.demo import build_demo_image, find_static_busybox
from orchestrify.errors import DockerFailure
from tests.conftest import require, require_docker

# beside: its own controller and agents on free ports, containers of its own labels, and
# no timing asserted: it runs beside the timed integration tests.
pytestmark = [pytest.mark.integration, pytest.mark.beside]

RUN = uuid.uuid4().hex[:12]
NODE = f"node-{RUN}"
KEY = uuid.uuid4().hex * 2
AUTH = {"Authorization": f"Bearer {KEY}"}
LINES = 100  # per stream: "line N" on stdout, "err N" on stderr
PRINT_LINES = (
    f"i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo line $i; echo err $i >&2; done; sleep 600"
)
DEADLINE_S = 2.0  # how soon a follow stream ends once its client is gone
TIMESTAMP = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z ")


@dataclass(frozen=True)
class Frame:
    stream: int  # 1 stdout, 2 stderr
    payload: bytes

    @property
    def text(self) -> str:
        return self.payload.split(b" ", 1)[1].decode().rstrip("\n")

    @property
    def time(self) -> tuple[int, int]:
        """(Unix seconds, nanoseconds) of the frame's timestamp."""
        match = TIMESTAMP.match(self.payload)
        assert match is not None, self.payload
        seconds = calendar.timegm(time.strptime(match[1].decode(), "%Y-%m-%dT%H:%M:%S"))
        return seconds, int((match[2] or b"0").decode().ljust(9, "0"))

    def unix(self) -> str:
        seconds, nanos = self.time
        return f"{seconds}.{nanos:09d}"


def frames(data: bytes) -> list[Frame]:
    """Docker's multiplexed stream cut into frames; every byte must belong to one."""
    out: list[Frame] = []
    while data:
        assert len(data) >= 8 and data[1:4] == b"\0\0\0", data[:16]
        length = int.from_bytes(data[4:8], "big")
        out.append(Frame(stream=data[0], payload=data[8 : 8 + length]))
        assert len(out[-1].payload) == length
        data = data[8 + length :]
    return out


class SpyEngine(DockerEngine):
    """The real engine, keeping every log stream it opened."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.streams: list[LogStream] = []

    def open_logs(self, node_id: str, container_id: str, **params: Any) -> LogStream:
        stream = super().open_logs(node_id, container_id, **params)
        self.streams.append(stream)
        return stream


@dataclass
class Lab:
    docker: docker.DockerClient
    image: str
    engine: SpyEngine
    server: AgentServer

    def run(
        self,
        service: str,
        replica: str,
        script: str,
        *,
        node: str = NODE,
        log_config: LogConfig | None = None,
    ) -> Any:
        labels = {
            LABEL_NODE: node,
            LABEL_SERVICE: service,
            LABEL_REPLICA: replica,
            TEST_LABEL: "1",
            RUN_LABEL: RUN,
        }
        return self.docker.containers.run(
            self.image,
            entrypoint=["/bin/busybox", "sh", "-c", script],
            name=f"{replica}-{RUN}",
            labels=labels,
            detach=True,
            log_config=log_config,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url(path), params=params, headers=AUTH, timeout=10)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    client = require_docker()
    try:
        find_static_busybox()
    except DockerFailure as exc:
        require(False, str(exc))
    image = f"orchestrify-test/demo:{RUN}"  # our own tag: removing it touches nobody else's
    build_demo_image(tag=image)
    engine = SpyEngine(os.environ.get("DOCKER_HOST", DEFAULT_DOCKER_URL))
    app = AgentApp(
        registry=CollectorRegistry(), engine=engine, node_id=lambda: NODE, key=lambda: KEY
    )
    server = start_server(app, address="127.0.0.1", port=0)
    try:
        yield Lab(docker=client, image=image, engine=engine, server=server)
    finally:
        server.stop()
        engine.close()
        for container in client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN}"}):
            container.remove(force=True)
        client.images.remove(image)
        client.close()


@pytest.fixture(scope="module")
def printed(lab: Lab) -> tuple[Any, Any]:
    """An exited replica of ``svc``, then a running one that printed its 2 x 100 lines."""
    exited = lab.run("svc", "svc-0", "echo bye")
    wait_for("svc-0 to exit", lambda: lab.docker.containers.get(exited.id).status == "exited")
    running = lab.run("svc", "svc-1", PRINT_LINES)
    wait_for("200 lines", lambda: running.logs().count(b"\n") == 2 * LINES, timeout=10)
    return exited, running


def test_the_listing_is_the_nodes_containers_of_the_service_oldest_first(
    lab: Lab, printed: tuple[Any, Any]
) -> None:
    exited, running = printed
    lab.run("svc", "svc-9", "sleep 600", node="node-elsewhere")  # not this node's
    resp = lab.get("/v1/containers", service="svc")
    assert resp.status_code == 200
    listed = resp.json()
    assert [c["id"] for c in listed] == [exited.id, running.id]
    exited.reload()
    assert listed[0] == {
        "id": exited.id,
        "name": f"svc-0-{RUN}",
        "replica": "svc-0",
        "service": "svc",
        "state": "exited",
        "created": exited.attrs["Created"],
        "log_driver": "json-file",
        "log_address": None,
    }
    assert listed[1]["state"] == "running"
    assert lab.get("/v1/containers", service="nosuch").json() == []


def test_the_whole_log_is_docker_frames_with_timestamps(lab: Lab, printed: tuple[Any, Any]) -> None:
    _, running = printed
    resp = lab.get(f"/v1/containers/{running.id}/logs")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == MULTIPLEXED
    got = frames(resp.content)
    assert len(got) == 2 * LINES
    assert [f.text for f in got if f.stream == 1] == [f"line {n}" for n in range(1, LINES + 1)]
    assert [f.text for f in got if f.stream == 2] == [f"err {n}" for n in range(1, LINES + 1)]
    for frame in got:
        assert TIMESTAMP.match(frame.payload), frame.payload
    # The same bytes Docker's own client reads.
    docker_lines = running.logs(stdout=True, stderr=True, timestamps=True).splitlines()
    assert [f.payload.rstrip(b"\n") for f in got] == docker_lines


def test_tail_and_a_time_window(lab: Lab, printed: tuple[Any, Any]) -> None:
    _, running = printed
    path = f"/v1/containers/{running.id}/logs"
    full = frames(lab.get(path).content)
    assert frames(lab.get(path, tail=5).content) == full[-5:]
    assert frames(lab.get(path, tail=0).content) == []

    since, until = full[50], full[150]
    window = frames(lab.get(path, since=since.unix(), until=until.unix()).content)
    # Docker's reading: skip what is before ``since``, stop at the first after ``until``.
    expected: list[Frame] = []
    for frame in full:
        if frame.time < since.time:
            continue
        if frame.time > until.time:
            break
        expected.append(frame)
    assert window == expected
    assert window[0] == since
    assert all(since.time <= f.time <= until.time for f in window)


def test_follow_delivers_a_line_printed_after_the_request(lab: Lab) -> None:
    container = lab.run("follow", "follow-1", "echo ready; sleep 600")
    wait_for("ready", lambda: b"ready" in container.logs())
    url = lab.url(f"/v1/containers/{container.id}/logs")
    with httpx.stream(
        "GET", url, params={"follow": 1, "tail": 0}, headers=AUTH, timeout=10
    ) as resp:
        assert resp.status_code == 200  # the headers come before any line
        container.exec_run(["/bin/busybox", "sh", "-c", "echo late > /proc/1/fd/1"])
        data = b""
        for chunk in resp.iter_raw():
            data += chunk
            if b"late\n" in data:
                break
    assert [(f.stream, f.text) for f in frames(data)] == [(1, "late")]


def test_a_follow_stream_ends_soon_after_its_client_goes(lab: Lab) -> None:
    container = lab.run("quiet", "quiet-1", "echo only line; sleep 600")
    wait_for("its line", lambda: b"only line" in container.logs())
    url = lab.url(f"/v1/containers/{container.id}/logs")
    opened = len(lab.engine.streams)
    with httpx.stream("GET", url, params={"follow": 1}, headers=AUTH, timeout=10) as resp:
        assert next(resp.iter_raw()).endswith(b"only line\n")
    gone = time.monotonic()
    stream = lab.engine.streams[opened]
    wait_for("the Docker stream closed", lambda: stream.closed, timeout=DEADLINE_S)
    wait_for("the request thread ended", lambda: not _request_threads(), timeout=DEADLINE_S)
    print(f"follow stream ended {time.monotonic() - gone:.2f} s after its client went")


def test_another_nodes_container_is_404(lab: Lab) -> None:
    other = lab.run("svc", "svc-7", "echo not yours; sleep 600", node="node-elsewhere")
    for cid in (other.id, other.name, "0" * 64):
        resp = lab.get(f"/v1/containers/{cid}/logs")
        assert resp.status_code == 404, resp.text
        assert "not yours" not in resp.text


def test_a_driver_docker_cannot_read_is_409_naming_it(lab: Lab) -> None:
    # UDP: nothing needs to listen. Without Docker 20.10's local cache ("dual logging"),
    # the engine cannot read syslog back.
    uncached = LogConfig(
        type="syslog", config={"syslog-address": "udp://127.0.0.1:9", "cache-disabled": "true"}
    )
    container = lab.run("sys", "sys-1", "echo gone; sleep 600", log_config=uncached)
    resp = lab.get(f"/v1/containers/{container.id}/logs")
    assert resp.status_code == 409
    assert resp.json() == {
        "detail": "configured logging driver does not support reading",
        "log_driver": "syslog",
        "log_address": "udp://127.0.0.1:9",
    }


def test_a_driver_with_dockers_local_cache_is_read_and_listed_with_its_address(
    lab: Lab,
) -> None:
    cached = LogConfig(type="syslog", config={"syslog-address": "udp://127.0.0.1:9"})
    container = lab.run("cached", "cached-1", "echo kept; sleep 600", log_config=cached)
    wait_for("its line", lambda: b"kept" in container.logs())
    [listed] = lab.get("/v1/containers", service="cached").json()
    assert (listed["log_driver"], listed["log_address"]) == ("syslog", "udp://127.0.0.1:9")
    resp = lab.get(f"/v1/containers/{container.id}/logs")
    assert resp.status_code == 200
    assert [f.text for f in frames(resp.content)] == ["kept"]


def test_the_api_needs_the_key_and_metrics_do_not(lab: Lab) -> None:
    assert httpx.get(lab.url("/v1/containers?service=svc"), timeout=5).status_code == 401
    assert httpx.get(lab.url("/metrics"), timeout=5).status_code == 200


def _request_threads() -> list[threading.Thread]:
    """The server's request threads (a stream's reader) and its client watchers."""
    return [
        t
        for t in threading.enumerate()
        if "process_request_thread" in t.name or t.name == "logs-client"
    ]
