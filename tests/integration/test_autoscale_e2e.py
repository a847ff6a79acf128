"""Latency scale-out and scale-in, end to end, with every component real.

Real Alertmanager and Prometheus (configured from the shipped templates, with short
timings), the controller, two agents registered as two nodes on the local engine, the
edge with Nginx, and demo containers. One replica is made slow and loaded through
Nginx: ServiceLatencyHigh fires, the controller adds a replica on the other node, and
Nginx serves it. Then the replica is fast again and the load stops: the alert resolves
and, after the stabilization window, the service is back to one replica.

Assertions read the controller's events and the containers (by this run's label).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.autoscale_lab import SERVICE, Fleet
from bench.wait import wait_for
from tests.conftest import require_binary, require_docker

pytestmark = pytest.mark.integration

LOAD_LIMIT_S = 90.0  # the load stops by itself after this, whatever the test does
SLOW_MS = 300


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    for binary in ("nginx", "prometheus", "prometheus-alertmanager"):
        require_binary(binary)
    require_docker().close()
    fleet = Fleet(tmp_path)
    try:
        # Re-evaluate firing alerts and pending scale-ins every second (default 5 s).
        fleet.start(alert_eval_interval_s=1.0)
        fleet.start_monitoring(
            scrape_interval="1s",
            evaluation_interval="1s",
            sd_refresh_interval="1s",
            latency_range="15s",
            for_latency="3s",
            # The request-rate alerts stay pending for the whole test: only latency
            # (and its resolution) scales here, so each decision has one cause.
            for_rate="10m",
            group_wait="1s",
            group_interval="1s",
        )
        yield fleet
    finally:
        fleet.stop()


class Load:
    """Bounded load through Nginx: a few clients in threads, stopped by ``stop()`` or
    after ``LOAD_LIMIT_S``; a short pause between requests keeps the rate modest."""

    def __init__(self, url: str, *, clients: int = 3, pause_s: float = 0.05) -> None:
        self.url = url
        self.pause_s = pause_s
        self.done = threading.Event()
        self.sent = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        deadline = time.monotonic() + LOAD_LIMIT_S
        with httpx.Client(timeout=5) as client:
            while not self.done.is_set() and time.monotonic() < deadline:
                # A failed request is still load; the test checks replicas, not answers.
                with contextlib.suppress(httpx.HTTPError):
                    client.get(self.url)
                self.sent += 1
                self.done.wait(self.pause_s)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join(10)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _healthy(fleet: Fleet, count: int) -> list[dict[str, Any]] | None:
    reps = [r for r in fleet.replicas() if r["state"] == "healthy" and r["desired"] == "run"]
    return reps if len(reps) == count else None


def test_slow_replica_scales_out_on_the_other_node_and_back_in(fleet: Fleet) -> None:
    api = fleet.api
    created = api.post(
        "/v1/services",
        json={
            "name": SERVICE,
            "image": "orchestrify/demo:latest",
            "port": 8000,
            "replicas": 1,
            "min_replicas": 1,
            "max_replicas": 2,  # one scale-out, however long the alert fires
            "drain_s": 1,
            "policy": {
                "latency_target_ms": 100,
                "cooldown_s": 3,
                "scale_down_stabilization_s": 5,
                # Keep the request-rate alerts out of this test: only latency scales.
                "requests_per_replica": 1_000_000,
            },
        },
    )
    assert created.status_code == 201, created.text
    (slow,) = wait_for("the first replica healthy", lambda: _healthy(fleet, 1), timeout=60)
    wait_for("nginx serving it", lambda: fleet.served_by() == slow["id"], timeout=30)
    (slow_container,) = fleet.containers()
    slow_node = slow_container.labels["orchestrify.node"]
    assert slow_node == slow["node"]

    # 1. Slow replica + load through Nginx -> ServiceLatencyHigh -> scale out.
    resp = httpx.get(f"http://{slow['address']}/admin/latency", params={"ms": SLOW_MS}, timeout=5)
    assert resp.status_code == 200, resp.text
    with Load(f"{fleet.nginx_url}/{SERVICE}/") as load:
        decision = wait_for(
            f"a scale_out decision (load sent {load.sent})\n{fleet.log_tails()}",
            lambda: [
                e
                for e in fleet.events("decision")
                if (e["action"], e["outcome"]) == ("scale_out", "ok")
            ],
            timeout=90,
            interval=0.5,
        )[0]
        assert decision["data"]["to"] == 2
        firing = [
            e
            for e in fleet.events("alert")
            if e["data"]["labels"].get("alertname") == "ServiceLatencyHigh"
            and e["data"]["status"] == "firing"
        ]
        assert firing and firing[0]["data"]["labels"]["replica"] == slow["id"]

        healthy = wait_for("two healthy replicas", lambda: _healthy(fleet, 2), timeout=60)
        (new,) = [r for r in healthy if r["id"] != slow["id"]]
        containers = wait_for(
            "two containers",
            lambda: len(fleet.containers()) == 2 and fleet.containers(),
            timeout=30,
        )
        (new_container,) = [c for c in containers if c.labels["orchestrify.replica"] == new["id"]]
        # On the other node: the slow replica's node is avoided.
        assert new_container.labels["orchestrify.node"] != slow_node
        assert new["node"] != slow["node"]
        # In Nginx: requests through it reach the new replica.
        wait_for(
            "nginx sending requests to the new replica",
            lambda: fleet.served_by() == new["id"],
            timeout=30,
        )

    # 2. Fast again, no load -> the alert resolves -> after stabilization, back to 1.
    httpx.get(f"http://{slow['address']}/admin/latency", params={"ms": 0}, timeout=5)
    wait_for(
        f"ServiceLatencyHigh resolved\n{fleet.log_tails()}",
        lambda: [
            e
            for e in fleet.events("alert")
            if e["data"]["labels"].get("alertname") == "ServiceLatencyHigh"
            and e["data"]["status"] == "resolved"
        ],
        timeout=90,
        interval=0.5,
    )
    scale_in = wait_for(
        "a scale_in decision",
        lambda: [
            e for e in fleet.events("decision") if (e["action"], e["outcome"]) == ("scale_in", "ok")
        ],
        timeout=60,
        interval=0.5,
    )[0]
    assert (scale_in["data"]["from"], scale_in["data"]["to"]) == (2, 1)
    assert scale_in["data"]["rule"] is None  # the resolution's scale-in, no alert rule
    assert api.get(f"/v1/services/{SERVICE}").json()["replicas"] == 1
    wait_for("one container left", lambda: len(fleet.containers()) == 1, timeout=60)
    (left,) = wait_for("one healthy replica", lambda: _healthy(fleet, 1), timeout=30)
    wait_for("nginx serving the one left", lambda: fleet.served_by() == left["id"], timeout=30)
