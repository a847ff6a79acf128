"""The edge against real Nginx, a real controller and real demo containers."""

from __future__ import annotations

import shutil
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.edge_lab import (
    ADMIN_TOKEN,
    ControllerThread,
    EdgeThread,
    StandInAgent,
    demo_image,
    running,
)
from bench.net import free_port
from bench.wait import wait_for
from orchestrify.edge import EdgeSettings
from orchestrify.edge.render import nginx_templates_dir
from tests.conftest import require_binary, require_docker

pytestmark = pytest.mark.integration
METHODS = ("GET", "POST", "PUT", "DELETE")


@dataclass
class Lab:
    controller: ControllerThread
    agent: StandInAgent
    edge: EdgeThread
    nginx_url: str
    metrics_url: str
    templates: Path

    def via_host(self, method: str, path: str = "/", service: str = "web") -> httpx.Response:
        return httpx.request(
            method, self.nginx_url + path, headers={"Host": f"{service}.localhost"}, timeout=10
        )

    def via_path(self, method: str, path: str = "/", service: str = "web") -> httpx.Response:
        return httpx.request(method, f"{self.nginx_url}/{service}{path}", timeout=10)


def _replica_of(resp: httpx.Response) -> str:
    first = resp.text.splitlines()[0]  # "hello from <replica> (<METHOD>)"
    return first.split()[2]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_binary("nginx")
    client = require_docker()
    base = tmp_path_factory.mktemp("edge")
    templates = base / "templates"
    shutil.copytree(nginx_templates_dir(), templates)
    image = demo_image(client)
    controller = ControllerThread(base / "controller").start()
    agent = StandInAgent(controller, client, image).start()
    listen = free_port()
    metrics_port = free_port()
    edge = EdgeThread(
        EdgeSettings(
            controller_url=controller.url,
            token=ADMIN_TOKEN,
            nginx_conf_dir=base / "nginx",
            listen=f"127.0.0.1:{listen}",
            metrics_port=metrics_port,
            name="edge-test",
            templates_dir=templates,
            worker_processes="1",
        )
    ).start()
    with running(controller, agent, edge):
        r = controller.http.post(
            "/v1/services",
            json={"name": "web", "image": image, "replicas": 3, "drain_s": 4},
        )
        assert r.status_code == 201, r.text
        lab = Lab(
            controller,
            agent,
            edge,
            f"http://127.0.0.1:{listen}",
            f"http://127.0.0.1:{metrics_port}/metrics",
            templates,
        )
        wait_for("3 replicas in nginx", lambda: len(edge.served_replicas("web")) == 3)
        yield lab
    client.images.remove(image, force=True)
    client.close()


def test_requests_reach_all_replicas_by_host_and_by_path_for_every_method(lab: Lab) -> None:
    replicas = lab.edge.served_replicas("web")
    for route in (lab.via_host, lab.via_path):
        for method in METHODS:
            seen = Counter()
            for _ in range(12):
                resp = route(method, "/some/where?x=1")
                assert resp.status_code == 200, resp.text
                assert f"({method})" in resp.text
                seen[_replica_of(resp)] += 1
            assert set(seen) == replicas, (route.__name__, method, seen)
    # The /web prefix is stripped before the request reaches the replica.
    assert "path: /some/where" in lab.via_path("GET", "/some/where").text
    # Each request gets an id of its own (also on one kept-alive connection, and across
    # the workers), passed back to the client; a caller's own id is kept.
    with httpx.Client(timeout=5) as client:
        ids = [client.get(f"{lab.nginx_url}/web/").headers["x-request-id"] for _ in range(30)]
    ids += [httpx.get(f"{lab.nginx_url}/web/").headers["x-request-id"] for _ in range(10)]
    assert all(ids) and len(set(ids)) == len(ids), ids
    own = httpx.get(f"{lab.nginx_url}/web/", headers={"X-Request-Id": "trace-7"})
    assert own.headers["x-request-id"] == "trace-7"


def test_large_request_bodies_are_buffered_by_nginx_workers(lab: Lab) -> None:
    """Bodies over client_body_buffer_size go to Nginx's temp dir: its workers must be
    able to write there even when the edge's prefix sits in a private (0700) dir."""
    assert (lab.edge.settings.nginx_conf_dir.parent.stat().st_mode & 0o077) == 0
    body = b"x" * 300_000
    resp = httpx.post(f"{lab.nginx_url}/web/upload", content=body, timeout=10)
    assert resp.status_code != 500, resp.text
    assert "(POST)" in resp.text


def test_unknown_service_answers_404_and_health_names_the_config(lab: Lab) -> None:
    assert httpx.get(lab.nginx_url + "/nope/").status_code == 404
    health = httpx.get(lab.nginx_url + "/__orchestrify/health")
    assert health.status_code == 200 and health.text.startswith("ok ")


def test_latency_of_one_replica_shows_in_its_histogram(lab: Lab) -> None:
    slow = sorted(lab.edge.served_replicas("web"))[0]
    address = lab.agent.addresses[slow]

    def histogram() -> dict[str, float]:
        samples = {}
        for fam in text_string_to_metric_families(httpx.get(lab.metrics_url).text):
            if fam.name == "orchestrify_http_request_duration_seconds":
                for s in fam.samples:
                    if s.labels.get("replica") == slow:
                        key = s.name.rsplit("_", 1)[-1] + s.labels.get("le", "")
                        samples[key] = s.value
        return samples

    # Nginx buffers its log lines up to 1 s and the edge reads them every 0.25 s: let the
    # earlier tests' (fast) requests land before taking the "before" figures.
    def settled() -> tuple[dict[str, float]] | None:  # a tuple: {} (no sample yet) is settled too
        first = histogram()
        time.sleep(1.5)
        return (first,) if histogram() == first else None

    (before,) = wait_for("the edge's telemetry to catch up", settled, timeout=20)
    assert httpx.get(f"http://{address}/admin/latency?ms=150").status_code == 200
    try:
        for _ in range(24):
            assert lab.via_path("GET").status_code == 200

        def grew() -> dict[str, float] | None:
            now = histogram()
            delta = {k: v - before.get(k, 0.0) for k, v in now.items()}
            return delta if delta.get("count", 0) >= 4 else None

        h = wait_for("the slow replica's histogram", grew, timeout=10)
        assert h["sum"] / h["count"] >= 0.15
        assert h["bucket0.1"] == 0  # none of the slow replica's new requests under 100 ms
        # No upper bound on a busy machine's latency: only that every request is counted.
        assert h["bucket+Inf"] == h["count"]
        assert lab.edge.edge.metrics.dropped._value.get() == 0
        text = httpx.get(lab.metrics_url).text
        assert 'orchestrify_http_requests_total{service="web",status="200"}' in text
        assert f'node="{lab.agent.name}"' in text
    finally:
        httpx.get(f"http://{address}/admin/latency?ms=0")


def test_killed_replica_leaves_nginx_and_no_request_fails(lab: Lab) -> None:
    before = lab.edge.served_replicas("web")
    victim = sorted(before)[-1]
    lab.agent.kill(victim)
    # Even before the edge reacts, Nginx skips the dead replica (next upstream).
    for _ in range(10):
        assert lab.via_host("GET").status_code == 200
    wait_for(
        "the killed replica to leave nginx", lambda: victim not in lab.edge.served_replicas("web")
    )
    for method in METHODS * 5:
        resp = lab.via_path(method)
        assert resp.status_code == 200, resp.text
        assert _replica_of(resp) != victim
    # Replaced in place (as the agent does): healthy again, back in Nginx.
    lab.agent.revive(victim)
    wait_for("the revived replica in nginx", lambda: victim in lab.edge.served_replicas("web"))


def test_scale_in_drains_out_of_nginx_before_the_container_stops(lab: Lab) -> None:
    wait_for("3 healthy replicas", lambda: len(lab.edge.served_replicas("web")) == 3, timeout=30)
    before = lab.edge.served_replicas("web")
    r = lab.controller.http.patch("/v1/services/web", json={"replicas": 2})
    assert r.status_code == 200, r.text

    def shrunk() -> set[str] | None:
        served = lab.edge.served_replicas("web")
        return served if len(served) == 2 else None

    after = wait_for("one replica to leave nginx", shrunk)
    (gone,) = before - after
    address = lab.agent.addresses[gone]
    # Out of Nginx, still running: it answers directly, but gets no traffic through Nginx.
    trail = lab.controller.http.get("/v1/events", params={"service": "web"}).json()
    assert gone in lab.agent.containers, [e["message"] for e in trail if gone in e["message"]]
    direct = httpx.get(f"http://{address}/", timeout=5)
    assert direct.status_code == 200 and _replica_of(direct) == gone
    names = {_replica_of(lab.via_host("GET")) for _ in range(20)}
    assert gone not in names
    wait_for("the drained container to stop", lambda: gone not in lab.agent.containers, timeout=20)


def test_service_without_healthy_replica_answers_503(lab: Lab) -> None:
    image = lab.agent.image
    r = lab.controller.http.post(
        "/v1/services",
        json={"name": "empty", "image": image, "replicas": 0, "min_replicas": 0},
    )
    assert r.status_code == 201, r.text
    # By path and by host, each on a new connection. Both are waited for: just after a
    # reload, an old Nginx worker (without the service) may still take a new connection.
    by_path, by_host = wait_for(
        "the empty service in nginx, by path and by host",
        lambda: (
            (x := lab.via_path("GET", service="empty")).status_code == 503
            and (y := lab.via_host("POST", service="empty")).status_code == 503
            and (x, y)
        ),
    )
    assert "no healthy replica" in by_path.text
    assert "no healthy replica" in by_host.text


def _settled_health(lab: Lab) -> str:
    """The edge's health answer (the id of the config Nginx serves) once the edge serves
    every healthy replica of ``web`` and the answer holds for a second: a test that then
    breaks a template must not race the apply of a change an earlier test left in
    flight (a replica it scaled out turning healthy)."""
    health = lab.nginx_url + "/__orchestrify/health"

    def steady() -> str | None:
        replicas = lab.controller.http.get("/v1/replicas", params={"service": "web"}).json()
        healthy = {r["id"] for r in replicas if r["state"] == "healthy" and r["desired"] == "run"}
        if not healthy or not healthy <= lab.edge.served_replicas("web"):
            return None
        first = httpx.get(health).text
        time.sleep(1.0)
        return first if httpx.get(health).text == first else None

    answer: str = wait_for("the edge serving the current state", steady, timeout=60)
    return answer


def test_reload_nginx_cannot_take_is_rolled_back_and_an_event_says_why(lab: Lab) -> None:
    """`nginx -t` passes a listen on a port someone else holds; the reload then fails in
    the master. The edge notices the new config never serves and restores the old one."""
    good_health = _settled_health(lab)
    main = lab.templates / "nginx.conf.j2"
    original = main.read_text()
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    marker = "        listen {{ listen }} default_server;\n"
    assert marker in original
    main.write_text(original.replace(marker, f"{marker}        listen 127.0.0.1:{taken};\n"))
    try:
        r = lab.controller.http.patch("/v1/services/web", json={"replicas": 3})
        assert r.status_code == 200, r.text

        def rolled_back() -> list[dict[str, object]]:
            events = lab.controller.http.get("/v1/events", params={"kind": "config"}).json()
            return [e for e in events if "Address already in use" in str(e.get("reason"))]

        (event, *_) = wait_for("a rolled-back config event", rolled_back, timeout=30)
        assert event["data"]["stage"] == "verify" and event["data"]["rolled_back"] is True
        # The last good config is back in the files and still serves traffic.
        assert f"127.0.0.1:{taken}" not in (lab.edge.edge.prefix / "nginx.conf").read_text()
        assert httpx.get(lab.nginx_url + "/__orchestrify/health").text == good_health
        for method in METHODS:
            assert lab.via_path(method).status_code == 200
    finally:
        main.write_text(original)
        holder.close()


def test_broken_template_keeps_the_old_config_and_an_event_says_why(lab: Lab) -> None:
    good_health = _settled_health(lab)
    upstreams = lab.templates / "upstreams.conf.j2"
    original = upstreams.read_text()
    upstreams.write_text(
        original.replace("    keepalive {{", "    no_such_directive on;\n    keepalive {{")
    )
    try:
        r = lab.controller.http.patch("/v1/services/web", json={"replicas": 3})
        assert r.status_code == 200, r.text

        def refused() -> list[dict[str, object]]:
            events = lab.controller.http.get("/v1/events", params={"kind": "config"}).json()
            return [
                e
                for e in events
                if e.get("outcome") == "failed" and "no_such_directive" in str(e.get("reason"))
            ]

        events = wait_for("a config event", refused, timeout=30)
        # Refused by `nginx -t`: nothing was swapped in, so nothing to roll back.
        assert events[-1]["data"]["stage"] == "test" and not events[-1]["data"]["rolled_back"]
        assert events[-1]["data"]["edge"] == "edge-test"
        # Nginx still serves the last good config, and still serves traffic.
        assert httpx.get(lab.nginx_url + "/__orchestrify/health").text == good_health
        for method in METHODS:
            assert lab.via_path(method).status_code == 200
    finally:
        upstreams.write_text(original)
