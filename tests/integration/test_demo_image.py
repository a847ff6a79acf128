"""The demo image against the real Docker engine: build it, run two replicas, steer them."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from bench.labels import TEST_LABEL
from orchestrify.demo import DEMO_IMAGE_LABEL, DEMO_PORT, build_demo_image, find_static_busybox
from orchestrify.errors import DockerFailure
from tests.conftest import require, require_docker

pytestmark = pytest.mark.integration

STARTUP_DEADLINE_S = 5.0  # generous for a loaded CI machine; it takes ~0.3 s here
APP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


@dataclass(frozen=True)
class Replica:
    name: str  # what the app should call itself
    url: str
    started_in_s: float


@pytest.fixture(scope="module")
def docker_client() -> Iterator[docker.DockerClient]:
    client = require_docker()
    yield client
    client.close()


@pytest.fixture(scope="module")
def demo_tag(docker_client: docker.DockerClient) -> Iterator[str]:
    # A tag of our own: removing it never touches someone else's orchestrify/demo:latest,
    # even when both name the same image id (the engine then only untags).
    try:
        find_static_busybox()
    except DockerFailure as exc:
        require(False, str(exc))
    tag = f"orchestrify-test/demo:{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    image_id = build_demo_image(tag=tag)
    print(f"demo image built in {time.monotonic() - started:.2f} s")
    assert image_id.startswith("sha256:")
    yield tag
    docker_client.images.remove(tag)


@pytest.fixture(scope="module")
def replicas(
    docker_client: docker.DockerClient, demo_tag: str, request: pytest.FixtureRequest
) -> list[Replica]:
    """Two running containers: one named by ORCHESTRIFY_REPLICA, one by its hostname."""
    started: list[Replica] = []
    for env in ({"ORCHESTRIFY_REPLICA": "demo-a"}, {}):
        began = time.monotonic()
        container = docker_client.containers.run(
            demo_tag,
            detach=True,
            environment=env,
            labels={TEST_LABEL: "1"},
            ports={f"{DEMO_PORT}/tcp": ("127.0.0.1", None)},
        )
        request.addfinalizer(functools.partial(container.remove, force=True))
        container.reload()
        host_port = container.ports[f"{DEMO_PORT}/tcp"][0]["HostPort"]
        url = f"http://127.0.0.1:{host_port}"
        _wait_until_answering(url)
        name = env.get("ORCHESTRIFY_REPLICA") or container.attrs["Config"]["Hostname"]
        started.append(Replica(name=name, url=url, started_in_s=time.monotonic() - began))
    return started


def _start_demo(
    docker_client: docker.DockerClient,
    demo_tag: str,
    request: pytest.FixtureRequest,
    env: dict[str, str],
) -> tuple[Any, str]:
    """A demo container of its own (removed after the test) once it answers; its URL."""
    container = docker_client.containers.run(
        demo_tag,
        detach=True,
        environment=env,
        labels={TEST_LABEL: "1"},
        ports={f"{DEMO_PORT}/tcp": ("127.0.0.1", None)},
    )
    request.addfinalizer(functools.partial(container.remove, force=True))
    container.reload()
    url = f"http://127.0.0.1:{container.ports[f'{DEMO_PORT}/tcp'][0]['HostPort']}"
    _wait_until_answering(url)
    return container, url


def _wait_until_answering(url: str) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"demo container at {url} did not answer within {STARTUP_DEADLINE_S} s")
        time.sleep(0.02)


def test_image_is_labelled_and_exposes_the_port(
    docker_client: docker.DockerClient, demo_tag: str
) -> None:
    config = docker_client.images.get(demo_tag).attrs["Config"]
    assert config["Labels"][DEMO_IMAGE_LABEL] == "1"
    assert f"{DEMO_PORT}/tcp" in config["ExposedPorts"]


def test_containers_answer_quickly_after_start(replicas: list[Replica]) -> None:
    for replica in replicas:
        print(f"{replica.name}: run + first answer in {replica.started_in_s:.2f} s")
        assert replica.started_in_s < 2.0


@pytest.mark.parametrize("method", APP_METHODS)
def test_root_names_replica_method_and_path(replicas: list[Replica], method: str) -> None:
    for replica in replicas:
        response = httpx.request(method, f"{replica.url}/", content=b"some=body", timeout=5)
        assert response.status_code == 200
        assert response.text == f"hello from {replica.name} ({method})\npath: /\n"
        assert response.headers["x-replica"] == replica.name


def test_any_other_path_is_the_app_and_is_echoed(replicas: list[Replica]) -> None:
    response = httpx.get(f"{replicas[0].url}/shop/cart?item=3", timeout=5)
    assert response.status_code == 200
    assert response.text == "hello from demo-a (GET)\npath: /shop/cart\n"


def test_greeting_comes_from_the_environment_and_each_request_is_a_line_of_stdout(
    docker_client: docker.DockerClient, demo_tag: str, request: pytest.FixtureRequest
) -> None:
    """What the demo's hint (``service update demo --env GREETING=hi``) relies on, and
    what ``docker logs`` (and ``orchestrify service logs``) of a replica shows."""
    container, url = _start_demo(
        docker_client, demo_tag, request, {"ORCHESTRIFY_REPLICA": "demo-greet", "GREETING": "hi"}
    )
    marker = uuid.uuid4().hex
    response = httpx.get(f"{url}/greet/{marker}?x=1", timeout=5)
    assert response.text == f"hi from demo-greet (GET)\npath: /greet/{marker}\n"

    wanted = f"GET /greet/{marker}?x=1 200"
    deadline = time.monotonic() + 5
    while True:
        stdout = container.logs(stdout=True, stderr=False).decode()
        if wanted in stdout or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert wanted in stdout.splitlines(), stdout
    assert "GET /health 200" in stdout.splitlines()  # the readiness checks, one line each
    assert wanted not in container.logs(stdout=False, stderr=True).decode()


def test_admin_log_prints_numbered_lines_on_stdout(
    docker_client: docker.DockerClient, demo_tag: str, request: pytest.FixtureRequest
) -> None:
    container, url = _start_demo(
        docker_client, demo_tag, request, {"ORCHESTRIFY_REPLICA": "demo-log"}
    )
    assert httpx.get(f"{url}/admin/log?lines=1000", timeout=30).text == "logged 1000 lines\n"

    def numbered() -> list[str]:
        lines = container.logs(stdout=True, stderr=False).decode().splitlines()
        return [line for line in lines if " line " in line]

    # Docker copies the container's stdout into its log on its own time: wait for the
    # last line (a loaded machine takes a moment), then check them all.
    deadline = time.monotonic() + 10
    while len(numbered()) < 1000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert numbered() == [f"demo-log line {i} of 1000" for i in range(1, 1001)]
    for bad in ("0", "1000001", "x", "", "99999999"):
        assert httpx.get(f"{url}/admin/log?lines={bad}", timeout=5).status_code == 400


def test_head_has_headers_but_no_body(replicas: list[Replica]) -> None:
    response = httpx.head(f"{replicas[0].url}/", timeout=5)
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) > 0


def test_large_body_is_read_before_answering(replicas: list[Replica]) -> None:
    body = b"x" * 200_000  # unread bytes at close would make the kernel reset the connection
    response = httpx.put(f"{replicas[0].url}/upload", content=body, timeout=10)
    assert response.status_code == 200
    assert "(PUT)" in response.text


def test_health_toggles_per_replica(replicas: list[Replica]) -> None:
    first, second = replicas
    assert httpx.get(f"{first.url}/health", timeout=5).text == "ok\n"

    assert httpx.get(f"{first.url}/admin/health?ok=0", timeout=5).status_code == 200
    try:
        assert httpx.get(f"{first.url}/health", timeout=5).status_code == 500
        assert httpx.get(f"{second.url}/health", timeout=5).status_code == 200
        # The app itself keeps answering: only the health endpoint reports failure.
        assert httpx.get(f"{first.url}/", timeout=5).status_code == 200
    finally:
        assert httpx.get(f"{first.url}/admin/health?ok=1", timeout=5).status_code == 200
    response = httpx.get(f"{first.url}/health", timeout=5)
    assert (response.status_code, response.text) == (200, "ok\n")


@pytest.mark.parametrize("bad", ["2", "yes", ""])
def test_health_switch_rejects_other_values(replicas: list[Replica], bad: str) -> None:
    response = httpx.get(f"{replicas[0].url}/admin/health?ok={bad}", timeout=5)
    assert response.status_code == 400


def test_latency_applies_to_app_requests_only(replicas: list[Replica]) -> None:
    first, second = replicas
    set_to = httpx.get(f"{first.url}/admin/latency?ms=300", timeout=5)
    assert (set_to.status_code, set_to.text) == (200, "latency: 300 ms\n")
    try:
        assert _timed_get(f"{first.url}/") >= 0.3
        assert _timed_get(f"{first.url}/health") < 0.3
        assert _timed_get(f"{first.url}/admin/state") < 0.3
        assert _timed_get(f"{second.url}/") < 0.3
        assert "latency: 300 ms" in httpx.get(f"{first.url}/admin/state", timeout=5).text
    finally:
        assert httpx.get(f"{first.url}/admin/latency?ms=0", timeout=5).status_code == 200
    assert _timed_get(f"{first.url}/") < 0.3


@pytest.mark.parametrize("bad", ["-1", "abc", "1.5", "60001", "999999999999", ""])
def test_latency_rejects_out_of_range_values(replicas: list[Replica], bad: str) -> None:
    response = httpx.get(f"{replicas[0].url}/admin/latency?ms={bad}", timeout=5)
    assert response.status_code == 400
    assert "0 to 60000" in response.text


def test_latency_accepts_bounds_and_leading_zeros(replicas: list[Replica]) -> None:
    url = replicas[1].url
    try:
        for given, stored in (("60000", 60000), ("0", 0), ("0042", 42)):
            response = httpx.get(f"{url}/admin/latency?ms={given}", timeout=5)
            assert (response.status_code, response.text) == (200, f"latency: {stored} ms\n")
    finally:
        httpx.get(f"{url}/admin/latency?ms=0", timeout=5)


def test_unknown_admin_path_and_wrong_health_method(replicas: list[Replica]) -> None:
    assert httpx.get(f"{replicas[0].url}/admin/nope", timeout=5).status_code == 404
    response = httpx.post(f"{replicas[0].url}/health", timeout=5)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def _timed_get(url: str) -> float:
    started = time.monotonic()
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    return time.monotonic() - started


def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones(
    docker_client: docker.DockerClient, demo_tag: str, request: pytest.FixtureRequest
) -> None:
    container, url = _start_demo(
        docker_client, demo_tag, request, {"ORCHESTRIFY_REPLICA": "demo-stop"}
    )
    assert httpx.get(f"{url}/admin/latency?ms=2000", timeout=5).status_code == 200

    with ThreadPoolExecutor(max_workers=3) as pool:
        slow = [pool.submit(httpx.get, f"{url}/slow/{n}", timeout=30) for n in range(3)]
        deadline = time.monotonic() + 10
        while b"GET /admin/latency" not in container.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the slow requests are now being answered (sleeping 2 s)
        container.kill(signal="SIGTERM")  # what `docker stop` sends first
        deadline = time.monotonic() + 10
        while b"received SIGTERM" not in container.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        # The listener is gone: a new connection is refused, while the slow ones go on.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/", timeout=2)
        answers = [f.result() for f in slow]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert all("hello from demo-stop" in r.text for r in answers)
    assert container.wait(timeout=20)["StatusCode"] == 0  # exited by itself, not killed
    logs = container.logs().decode()
    assert logs.count("received SIGTERM") == 1, logs
    assert logs.index("received SIGTERM") < logs.index("requests in flight finished"), logs
