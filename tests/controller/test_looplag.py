"""The event-loop lag monitor records how long something blocked the controller's loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram

from orchestrify.controller.looplag import LOOP_LAG_BUCKETS, LoopLagMonitor
from orchestrify.controller.metrics import ControllerMetrics
from orchestrify.store import Store

NAME = "orchestrify_event_loop_lag_seconds"


def _count(registry: CollectorRegistry, le: str) -> float:
    return registry.get_sample_value(f"{NAME}_bucket", {"le": le}) or 0.0


def test_a_blocked_loop_shows_as_lag() -> None:
    registry = CollectorRegistry()
    histogram = Histogram(NAME, "lag", buckets=LOOP_LAG_BUCKETS, registry=registry)

    async def main() -> None:
        monitor = LoopLagMonitor(histogram, interval_s=0.01).start()
        await asyncio.sleep(0.05)  # a few unhindered wake-ups
        time.sleep(0.3)  # blocks the loop: the monitor wakes at least 0.29 s late
        await asyncio.sleep(0.05)
        await monitor.stop()
        await monitor.stop()  # stopping twice is harmless

    asyncio.run(main())
    total = _count(registry, "+Inf")
    assert total >= 2
    # The blocked wake-up lies above 0.25 s; without the block every one would be below.
    assert total - _count(registry, "0.25") >= 1


def test_stopped_monitor_records_nothing_more() -> None:
    registry = CollectorRegistry()
    histogram = Histogram(NAME, "lag", buckets=LOOP_LAG_BUCKETS, registry=registry)

    async def main() -> float:
        monitor = LoopLagMonitor(histogram, interval_s=0.01).start()
        await asyncio.sleep(0.05)
        await monitor.stop()
        after_stop = _count(registry, "+Inf")
        await asyncio.sleep(0.05)
        return after_stop

    after_stop = asyncio.run(main())
    assert after_stop >= 1
    assert _count(registry, "+Inf") == after_stop


def test_controller_metrics_declare_the_lag_histogram(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'o.db'}")
    try:
        metrics = ControllerMetrics(store, registry=CollectorRegistry())
        metrics.event_loop_lag.observe(0.012)
        assert metrics.registry.get_sample_value(f"{NAME}_bucket", {"le": "0.015"}) == 1
        assert metrics.registry.get_sample_value(f"{NAME}_bucket", {"le": "0.01"}) == 0
    finally:
        store.close()
