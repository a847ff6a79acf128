"""Log drivers on the real Docker engine: a service created with ``--log-driver gelf``
or ``syslog`` sends its replicas' lines to a receiver the test listens with."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from bench.agent_harness import RunningAgent, RunningController, agent_settings, start_controller
from bench.net import free_port
from bench.outage_lab import remove_containers
from bench.wait import wait_for
from orchestrify.client import ControllerClient
from orchestrify.demo import DEFAULT_TAG, build_demo_image
from tests.conftest import require, require_docker

# beside: its own controller and agents on free ports, containers of its own labels, and
# no timing asserted: it runs beside the timed integration tests.
pytestmark = [pytest.mark.integration, pytest.mark.beside]


@dataclass
class Fleet:
    controller: RunningController
    api: ControllerClient
    docker: docker.DockerClient
    run_id: str


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    client = require_docker()
    try:
        build_demo_image()
    except Exception as exc:
        require(False, f"the demo image can be built ({exc})")
    run_id = uuid.uuid4().hex[:10]
    controller = start_controller(tmp_path / "controller", free_port(), reconcile_interval_s=0.2)
    api = controller.client()
    agent = RunningAgent(
        agent_settings(
            controller, name=f"node-{run_id}", state_dir=tmp_path / "agent", run_id=run_id
        )
    ).start()
    try:
        yield Fleet(controller, api, client, run_id)
    finally:
        agent.kill()
        api.close()
        controller.stop()
        remove_containers(client, run_id)
        client.close()


@dataclass
class UdpReceiver:
    """A UDP socket on loopback that keeps every datagram, decoded by ``decode``."""

    port: int = 0
    received: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def decode(self, data: bytes) -> Any:
        return data.decode("utf-8", "replace")

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            try:
                self.received.append(self.decode(data))
            except Exception as exc:  # a malformed datagram is a finding, not a crash
                self.errors.append(f"{exc!r}: {data[:80]!r}")

    def __enter__(self) -> UdpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


class GelfReceiver(UdpReceiver):
    """GELF over UDP as Docker sends it: gzip (the default), zlib or plain JSON."""

    def decode(self, data: bytes) -> Any:
        if data[:2] == b"\x1e\x0f":
            raise ValueError("a chunked GELF message: no line of this test is that long")
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        elif data[:1] == b"\x78":
            data = zlib.decompress(data)
        return json.loads(data)


def _start(fleet: Fleet, name: str, driver: str, opts: dict[str, str]) -> str:
    """Create the one-replica service; the URL of its healthy replica."""
    fleet.api.request(
        "POST",
        "/v1/services",
        json={
            "name": name,
            "image": DEFAULT_TAG,
            "replicas": 1,
            "min_replicas": 0,
            "log_driver": driver,
            "log_opts": opts,
        },
    )

    def healthy() -> str | None:
        reps = fleet.api.get("/v1/replicas", service=name)
        ok = [r for r in reps if r["state"] == "healthy"]
        return f"http://{ok[0]['address']}" if ok else None

    url: str = wait_for(f"a healthy replica of {name}", healthy, timeout=30)
    return url


def _container_log_config(fleet: Fleet, service: str) -> dict[str, Any]:
    found = fleet.docker.containers.list(filters={"label": f"orchestrify.service={service}"})
    assert len(found) == 1
    config: dict[str, Any] = found[0].attrs["HostConfig"]["LogConfig"]
    return config


def test_a_gelf_service_sends_its_lines_to_the_gelf_receiver(fleet: Fleet) -> None:
    with GelfReceiver() as gelf:
        opts = {"gelf-address": f"udp://127.0.0.1:{gelf.port}", "tag": "shipped"}
        url = _start(fleet, "gelfed", "gelf", opts)
        assert _container_log_config(fleet, "gelfed") == {"Type": "gelf", "Config": opts}
        marker = uuid.uuid4().hex
        assert httpx.get(f"{url}/{marker}", timeout=5).status_code == 200

        def arrived() -> list[dict[str, Any]]:
            return [m for m in gelf.received if marker in m.get("short_message", "")]

        messages = wait_for("the request's line over GELF", arrived, timeout=10)
    assert gelf.errors == []
    line = messages[0]
    assert line["short_message"] == f"GET /{marker} 200"
    assert (line["version"], line["_tag"]) == ("1.1", "shipped")
    print(line)
    assert line["_container_name"].startswith("orchestrify-gelfed-"), line


def test_a_syslog_service_sends_its_lines_to_the_syslog_receiver(fleet: Fleet) -> None:
    with UdpReceiver() as syslog:
        opts = {
            "syslog-address": f"udp://127.0.0.1:{syslog.port}",
            "syslog-format": "rfc5424",
            "syslog-facility": "local3",
            "tag": "orchestrify/{{.Name}}",
        }
        url = _start(fleet, "logged", "syslog", opts)
        marker = uuid.uuid4().hex
        assert httpx.get(f"{url}/{marker}", timeout=5).status_code == 200

        def arrived() -> list[str]:
            return [m for m in syslog.received if marker in m]

        lines = wait_for("the request's line over syslog", arrived, timeout=10)
    # RFC 5424: <PRI>1 TIMESTAMP HOST APP-NAME PROCID MSGID SD MSG; local3 is facility 19.
    pri, _, rest = lines[0].partition(">")
    assert int(pri.lstrip("<")) // 8 == 19, lines[0]
    assert rest.startswith("1 ") and "orchestrify/orchestrify-logged-" in rest, lines[0]
    print(lines[0])
    assert rest.endswith(f"GET /{marker} 200") or rest.endswith(f"GET /{marker} 200\n")


def test_docker_refusing_a_driver_at_start_is_shown_on_the_replica(
    fleet: Fleet,
) -> None:
    """An address Docker cannot reach when the container starts (a TCP syslog with no one
    listening) fails that replica with Docker's reason, shown on the replica."""
    port = free_port()
    fleet.api.request(
        "POST",
        "/v1/services",
        json={
            "name": "unheard",
            "image": DEFAULT_TAG,
            "replicas": 1,
            "min_replicas": 0,
            "log_driver": "syslog",
            "log_opts": {"syslog-address": f"tcp://127.0.0.1:{port}"},
        },
    )

    def failed() -> str | None:
        reps = fleet.api.get("/v1/replicas", service="unheard")
        errors = [r.get("error") or "" for r in reps]
        return next((e for e in errors if "syslog" in e or "connection refused" in e), None)

    error = wait_for("the replica's error", failed, timeout=30)
    print(error)
    assert "refused" in error or "syslog" in error, error
