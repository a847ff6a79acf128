"""Drill 7 (issue 9): a scale-in drains a replica out of Nginx, then stops it gracefully.

Real Docker engine, real agent, real controller and a real Nginx edge, with requests
through Nginx every 20 ms on new connections. The drained demo container gets SIGTERM
(it logs so) only after the edge confirmed it left Nginx, and slow requests
(``/admin/latency?ms=2000``) sent to it before the stop all finish with 200, because
the agent now stops with SIGTERM and waits ``stop_grace_s`` before SIGKILL.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest

from bench.wait import wait_for
from orchestrify.demo import DEFAULT_TAG
from tests.conftest import require_docker
from tests.integration.test_rolling import Fleet, Load, fleet  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

SLOW_MS = 2000


class LogFollower:
    """Follows a container's log (with the engine's timestamps) until it is removed, so
    its last lines can be read after the agent removed it."""

    def __init__(self, container_id: str) -> None:
        self.lines: list[tuple[float, str]] = []
        self.client = require_docker()
        self.container = self.client.containers.get(container_id)
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        stream = self.container.logs(stream=True, follow=True, timestamps=True)
        buffer = b""
        for chunk in stream:
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                stamp, _, text = raw.decode(errors="replace").partition(" ")
                # RFC 3339 with nanoseconds: keep microseconds for fromisoformat.
                head, _, frac = stamp.rstrip("Z").partition(".")
                when = datetime.fromisoformat(f"{head}.{frac[:6]:0<6}+00:00").timestamp()
                self.lines.append((when, text))

    def first(self, needle: str) -> float | None:
        return next((t for t, text in self.lines if needle in text), None)

    def close(self) -> None:
        self.thread.join(30)
        self.client.close()


def _slow(url: str) -> tuple[float, float, int | str]:
    """One slow request: (sent at, answered at, status or the error)."""
    sent = time.time()
    try:
        resp = httpx.get(url, timeout=30)
    except httpx.HTTPError as exc:
        return sent, time.time(), f"{type(exc).__name__}: {exc}"
    return sent, time.time(), resp.status_code


def test_scale_in_stops_the_drained_replica_gracefully(fleet: Fleet) -> None:  # noqa: F811
    fleet.api.request(
        "POST",
        "/v1/services",
        json={
            "name": "grace",
            "image": DEFAULT_TAG,
            "replicas": 2,
            "min_replicas": 0,
            "drain_s": 3,  # long enough to get slow requests going before the stop
            "stop_grace_s": 30,  # far longer than the slow requests take
        },
    )

    def healthy() -> dict[str, dict[str, Any]]:
        reps: list[dict[str, Any]] = fleet.api.get("/v1/replicas", service="grace")
        return {r["id"]: r for r in reps if r["state"] == "healthy" and r["desired"] == "run"}

    both = wait_for("2 healthy replicas", lambda: len(h := healthy()) == 2 and h, timeout=60)
    wait_for("both in nginx", lambda: fleet.edge.served_replicas("grace") == set(both))

    load = Load(f"{fleet.nginx_url}/grace/")
    sender = threading.Thread(target=load.run, daemon=True)
    sender.start()
    slow: list[Future[tuple[float, float, int | str]]] = []
    try:
        wait_for("requests flowing", lambda: len(load.replicas) >= 10, timeout=10)
        fleet.api.request("PATCH", "/v1/services/grace", json={"replicas": 1})

        def drained() -> dict[str, Any] | None:
            reps: list[dict[str, Any]] = fleet.api.get("/v1/replicas", service="grace")
            return next((r for r in reps if r["desired"] != "run"), None)

        victim = wait_for("a replica drained", drained, timeout=10)
        assert victim["left_upstreams_at"] is not None  # it was in Nginx when drained
        logs = LogFollower(victim["container_id"])
        address = both[victim["id"]]["address"]
        assert httpx.get(f"http://{address}/admin/latency?ms={SLOW_MS}").status_code == 200

        # Slow requests straight to the drained replica (it is out of Nginx, still up),
        # one every 0.3 s, until it says it got SIGTERM: some are in flight then.
        with ThreadPoolExecutor(max_workers=16) as pool:
            deadline = time.monotonic() + 60
            while logs.first("received SIGTERM") is None and time.monotonic() < deadline:
                slow.append(pool.submit(_slow, f"http://{address}/slow"))
                time.sleep(0.3)
            results = [f.result() for f in slow]
        wait_for("the container removed", lambda: not logs.thread.is_alive(), timeout=60)
        logs.close()
        served = len(load.replicas)
        wait_for("requests still served", lambda: len(load.replicas) >= served + 10)
    finally:
        load.stop.set()
        sender.join(10)

    term = logs.first("received SIGTERM")
    assert term is not None, [text for _, text in logs.lines]  # SIGTERM, not SIGKILL
    done = logs.first("requests in flight finished")
    assert done is not None and done >= term, [text for _, text in logs.lines]
    # Every slow request sent well before the SIGTERM finished with 200, and some were
    # still in flight when it came (answered after it).
    before = [r for r in results if r[0] < term - 0.5]
    assert before and all(status == 200 for _, _, status in before), results
    assert any(answered > term for _, answered, _ in before), (term, results)
    assert load.failures == [], load.failures[:5]
    # The stop waited for the edge: nothing says it was stopped without its confirmation.
    events = fleet.api.get("/v1/events", service="grace")
    stops = [e for e in events if e["replica"] == victim["id"] and e["action"] == "stop_replica"]
    assert stops and all("did not confirm" not in e["message"] for e in stops), stops
