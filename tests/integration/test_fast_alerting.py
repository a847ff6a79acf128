"""The fast alerting profile end to end, with every component real.

Real Alertmanager and Prometheus rendered with ``profile="fast"`` and no other timing
changed, the controller with its defaults, two agents registered as two nodes on the
local engine, the edge with Nginx, and demo containers. The demo replica is made slow
through its ``/admin/latency``:

1. for 2 s under load through Nginx, then fast again: Prometheus sees it (the alert goes
   pending) but it does not last the rule's ``for``: nothing reaches the webhook and
   nothing scales;
2. for one request with no other traffic: the same;
3. for good, under load: ServiceLatencyHigh fires, the controller adds a replica on the
   other node, and Nginx serves it.

Assertions read Prometheus' alerts, the controller's events and replicas; no timing is
asserted (the polls' deadlines only bound the test).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.autoscale_lab import SERVICE, Fleet
from bench.reaction import (
    SLOW_MS,
    Load,
    at_rest,
    blip,
    create_service,
    edge_scraped,
    event_ids,
    healthy_replicas,
    new_events,
    scale_outs,
    set_latency,
)
from bench.wait import wait_for
from tests.conftest import require_binary, require_docker

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    for binary in ("nginx", "prometheus", "prometheus-alertmanager"):
        require_binary(binary)
    require_docker().close()
    fleet = Fleet(tmp_path)
    try:
        fleet.start()
        fleet.start_monitoring(profile="fast")
        yield fleet
    finally:
        fleet.stop()


def _firing_latency_alerts(fleet: Fleet, seen: set[int]) -> list[dict[str, Any]]:
    return [
        e
        for e in new_events(fleet, "alert", seen)
        if e["data"]["labels"].get("alertname") == "ServiceLatencyHigh"
        and e["data"]["status"] == "firing"
    ]


def test_a_blip_or_one_slow_request_does_not_scale_a_sustained_breach_does(
    fleet: Fleet,
) -> None:
    create_service(fleet)
    first = at_rest(fleet, timeout=120)
    wait_for("prometheus scraping the edge", lambda: edge_scraped(fleet), timeout=60)
    url = f"{fleet.nginx_url}/{SERVICE}/"
    seen_alerts = event_ids(fleet, "alert")

    # 1. A 2 s blip under load: pending, never firing, no scale-out.
    with Load(url):
        wait_for("samples of fast traffic", lambda: fleet.served_by() == first["id"], timeout=30)
        seen = blip(fleet, seconds=2, settle_s=15)
    assert seen.went_pending, f"Prometheus never saw the blip\n{fleet.log_tails()}"
    assert not seen.fired
    assert seen.scale_outs == 0
    assert not _firing_latency_alerts(fleet, seen_alerts)

    # 2. One slow request, no other traffic: the same.
    seen = blip(fleet, seconds=0, settle_s=15)
    assert seen.went_pending, f"Prometheus never saw the slow request\n{fleet.log_tails()}"
    assert not seen.fired
    assert seen.scale_outs == 0
    assert not _firing_latency_alerts(fleet, seen_alerts)
    assert fleet.api.get(f"/v1/services/{SERVICE}").json()["replicas"] == 1

    # 3. A sustained breach under load: fires, scales out, the new replica serves.
    slow = at_rest(fleet, timeout=60)
    seen_decisions = event_ids(fleet, "decision")
    with Load(url):
        set_latency(slow, SLOW_MS)
        (decision,) = wait_for(
            f"a scale-out\n{fleet.log_tails()}",
            lambda: scale_outs(fleet, seen_decisions),
            timeout=90,
            interval=0.2,
        )
        assert (decision["data"]["from"], decision["data"]["to"]) == (1, 2)
        (alert, *_) = _firing_latency_alerts(fleet, seen_alerts)
        assert alert["data"]["labels"]["replica"] == slow["id"]
        healthy = wait_for("two healthy replicas", lambda: healthy_replicas(fleet, 2), timeout=60)
        (new,) = [r for r in healthy if r["id"] != slow["id"]]
        assert new["node"] != slow["node"]  # the slow replica's node is avoided
        wait_for(
            "nginx sending requests to the new replica",
            lambda: fleet.served_by() == new["id"],
            timeout=30,
        )
